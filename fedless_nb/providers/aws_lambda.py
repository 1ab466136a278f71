"""AWS Lambda behind the Provider interface, through aiobotocore.

`invoke` makes one synchronous (RequestResponse) invocation per task and returns the
function's result; `deploy` creates the function from a container image (`LambdaImage`, the
way TensorFlow fits) or a zip bundle, or updates its code and configuration when it exists,
waits until it is active and sets its reserved concurrency when one is given. One client per provider, at most `concurrency`
invocations in flight, throttling and transient failures retried with backoff (the
shared policy in `retry.py`), rejected requests never. The run secret, when given,
reaches the function as an environment variable and appears nowhere else.
"""

from __future__ import annotations

import asyncio
import json
import os
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError

from ..security import SECRET_VARIABLE, AggregatorTaskRefused, AuthError, new_secret
from ..state_secret import STATE_SECRET_VARIABLE
from ..wire import PayloadError
from .base import InvocationError, Provider, ProviderSetupError, reply_json
from .retry import TRANSIENT_STATUSES, RetryPolicy, call_with_retries

DEFAULT_HANDLER = "lambda_function.lambda_handler"
DEFAULT_RUNTIME = "python3.11"
_THROTTLING = frozenset({"TooManyRequestsException", "ThrottlingException", "Throttling"})
_CAUSE_OF_TYPE = {AuthError.__name__: "auth", AggregatorTaskRefused.__name__: AggregatorTaskRefused.cause,
                  PayloadError.__name__: PayloadError.cause}
_REPLY_GRACE = 30.0  # seconds past the function's own timeout before a silent reply counts as lost


def _code(error: ClientError) -> str | None:
    return error.response.get("Error", {}).get("Code")


def _state_secret_of(configuration: dict[str, Any] | None) -> str:
    """The state secret a deployed function has (kept on update, so a secure round in flight still opens its sealed
    state), or a fresh one for a new function."""
    variables = ((configuration or {}).get("Environment") or {}).get("Variables") or {}
    return variables.get(STATE_SECRET_VARIABLE) or new_secret()


# A value this long is replaced in Lambda's errors by its name; a shorter one ("1", "true") may be any word of the message.
_SHOWN_VALUE_LENGTH = 8


def _without_values(message: str, variables: dict[str, str]) -> str:
    """Lambda's error `message` with each of the function's environment `variables`' values written as its name: Lambda
    quotes them (an environment over 4 KB: 'String measured: {...}', the whole JSON), and the run and state secrets are
    among them, where the error reaches a terminal, a notebook's saved output or a CI log."""
    for name, value in variables.items():
        if len(str(value)) >= _SHOWN_VALUE_LENGTH:
            for written in {str(value), json.dumps(str(value))[1:-1]}:
                message = message.replace(written, f"<{name}>")
    return message


def _status(error: ClientError) -> int | None:
    return error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def _is_throttling(error: BaseException) -> bool:
    return isinstance(error, ClientError) and (_code(error) in _THROTTLING or _status(error) == 429)


def is_transient(error: BaseException) -> bool:
    """Throttling, Lambda's own failures and dropped connections (a repeated task rewrites the same update key)."""
    if isinstance(error, ClientError):
        return _is_throttling(error) or _status(error) in TRANSIENT_STATUSES
    return isinstance(error, (EndpointConnectionError, ConnectTimeoutError, ConnectionClosedError))


@dataclass(frozen=True)
class LambdaImage:
    """A container image already pushed to ECR, deployed with --package-type Image."""

    uri: str


def _zip_bytes(bundle: Any) -> bytes:
    """A bundle is a zip archive: its bytes, or the path of its file."""
    if isinstance(bundle, (bytes, bytearray)):
        return bytes(bundle)
    if isinstance(bundle, (str, os.PathLike)):
        try:
            return Path(bundle).read_bytes()
        except FileNotFoundError:
            raise ProviderSetupError(f"the bundle {bundle} does not exist; build it with the packager first") from None
    raise TypeError(f"a Lambda bundle is a zip's bytes or path, not {type(bundle).__name__}")


def _function_failure(reply: bytes, function_error: str) -> InvocationError:
    """The function raised (or Lambda stopped it): its errorType and errorMessage, as Lambda reports them. The
    type is the only field of a function's error that Lambda passes on, so it carries the cause, a declared one too."""
    try:
        details = reply_json(reply)
    except ValueError:
        details = None
    if not isinstance(details, dict):
        details = {"errorMessage": reply.decode(errors="replace")}
    message, error_type = str(details.get("errorMessage", "")), details.get("errorType", function_error)
    cause = "timeout" if "Task timed out" in message else _CAUSE_OF_TYPE.get(error_type, "error")
    return InvocationError(f"{error_type}: {message}", cause)


class LambdaProvider(Provider):
    """Client functions as one AWS Lambda function (or any endpoint speaking the Lambda API)."""

    kind = "lambda"

    def __init__(
        self,
        name: str = "lambda",
        *,
        function_name: str,
        region: str | None = None,
        endpoint_url: str | None = None,
        memory_mb: int = 1024,
        timeout: float = 120.0,
        concurrency: int = 16,
        role: str | None = None,
        handler: str | None = None,
        runtime: str = DEFAULT_RUNTIME,
        environment: dict[str, str] | None = None,
        secret: str | None = None,
        reserved_concurrency: int | None = None,
        retry: RetryPolicy = RetryPolicy(),
    ) -> None:
        self._session = get_session()
        self.region = region or self._session.get_config_variable("region")
        if not self.region:
            raise ProviderSetupError(f"provider {name!r}: set its region, or AWS_DEFAULT_REGION")
        self.name, self.function_name, self.endpoint_url = name, function_name, endpoint_url
        self.memory_mb, self.timeout, self.concurrency = memory_mb, timeout, concurrency
        self.role, self.handler, self.runtime, self.retry = role, handler or DEFAULT_HANDLER, runtime, retry
        self.secret, self.reserved_concurrency = secret, reserved_concurrency
        self._environment = {**(environment or {}), **({SECRET_VARIABLE: secret} if secret else {})}
        self._slots = asyncio.Semaphore(concurrency)
        self._exit_stack: AsyncExitStack | None = None
        self._client_ready: asyncio.Future[Any] | None = None

    async def _client(self) -> Any:
        """The provider's one client, opened on first use (concurrent first calls share it)."""
        if self._client_ready is None:
            self._client_ready = asyncio.ensure_future(self._open())
        return await asyncio.shield(self._client_ready)

    async def _open(self) -> Any:
        config = Config(
            connect_timeout=10, read_timeout=self.timeout + _REPLY_GRACE,
            retries={"total_max_attempts": 1},  # one retry policy, ours
            max_pool_connections=self.concurrency,
        )
        self._exit_stack = AsyncExitStack()
        return await self._exit_stack.enter_async_context(self._session.create_client(
            "lambda", region_name=self.region, endpoint_url=self.endpoint_url, config=config))

    async def _call(self, operation: str, **parameters: Any) -> Any:
        """One control-plane call, retried while Lambda throttles or fails on its side."""
        client = await self._client()
        return await call_with_retries(lambda: getattr(client, operation)(**parameters), is_transient, self.retry)

    # -- invoke ---------------------------------------------------------------------------

    async def invoke(self, task: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(task).encode()
        async with self._slots:
            try:
                reply, function_error = await call_with_retries(lambda: self._invoke_once(body), is_transient, self.retry)
            except ClientError as error:
                cause = "throttled" if _is_throttling(error) else "error"
                raise InvocationError(f"Lambda refused the invocation: {error}", cause) from None
            except ReadTimeoutError:
                raise InvocationError(f"no reply within {self.timeout + _REPLY_GRACE:g}s", "timeout") from None
            except (EndpointConnectionError, ConnectTimeoutError, ConnectionClosedError) as error:
                raise InvocationError(f"cannot reach Lambda: {error}", "network") from None
        if function_error:
            raise _function_failure(reply, function_error)
        try:
            return reply_json(reply)
        except ValueError as error:
            raise InvocationError(f"the function replied with non-JSON ({error}): {reply[:80]!r}", "invalid") from None

    async def _invoke_once(self, body: bytes) -> tuple[bytes, str | None]:
        client = await self._client()
        response = await client.invoke(FunctionName=self.function_name, InvocationType="RequestResponse", Payload=body)
        async with response["Payload"] as payload:
            return await payload.read(), response.get("FunctionError")

    # -- deploy ---------------------------------------------------------------------------

    async def deploy(self, bundle: Any = None) -> None:
        """Create or update the function from `bundle` (a LambdaImage, or a zip's bytes or path), wait until
        it is active and updated, then reserve its concurrency if asked; without a bundle, check it exists. Its
        state secret (fedless_nb/state_secret.py) is the one it has, or a fresh one: never this provider's."""
        configuration = await self._configuration()
        exists = configuration is not None
        if bundle is None:
            if not exists:
                raise ProviderSetupError(
                    f"Lambda function {self.function_name!r} does not exist in {self.region}: "
                    "deploy a bundle first or fix the provider's function_name")
            return
        image = isinstance(bundle, LambdaImage)
        code = {"ImageUri": bundle.uri} if image else {"ZipFile": _zip_bytes(bundle)}
        settings: dict[str, Any] = {
            "FunctionName": self.function_name, "MemorySize": self.memory_mb, "Timeout": max(1, round(self.timeout)),
            "Environment": {"Variables": {STATE_SECRET_VARIABLE: _state_secret_of(configuration), **self._environment}},
            **({} if image else {"Handler": self.handler, "Runtime": self.runtime}),
        }
        if self.role:
            settings["Role"] = self.role
        try:
            if exists:
                await self._call("update_function_code", FunctionName=self.function_name, **code)
                await self._wait("function_updated_v2")
                await self._call("update_function_configuration", **settings)
            elif not self.role:
                raise ProviderSetupError(f"provider {self.name!r}: creating {self.function_name!r} needs a role (an IAM role ARN)")
            else:
                await self._call("create_function", Code=code, PackageType="Image" if image else "Zip", **settings)
                await self._wait("function_active_v2")
            await self._wait("function_updated_v2")
            if self.reserved_concurrency is not None:
                await self._call("put_function_concurrency", FunctionName=self.function_name,
                                 ReservedConcurrentExecutions=self.reserved_concurrency)
        except ClientError as error:
            shown = _without_values(str(error), settings["Environment"]["Variables"])
            raise ProviderSetupError(f"Lambda rejected the deployment of {self.function_name!r}: {shown}") from None

    async def _configuration(self) -> dict[str, Any] | None:
        """The function's configuration, or None when it does not exist."""
        try:
            return await self._call("get_function_configuration", FunctionName=self.function_name)
        except ClientError as error:
            if _code(error) == "ResourceNotFoundException":
                return None
            raise

    async def _wait(self, waiter: str) -> None:
        await (await self._client()).get_waiter(waiter).wait(FunctionName=self.function_name)

    async def close(self) -> None:
        """Close the client; the provider opens a new one (on the caller's loop) if used again."""
        ready, self._client_ready = self._client_ready, None
        if ready is not None:
            await asyncio.gather(ready, return_exceptions=True)
        stack, self._exit_stack = self._exit_stack, None
        if stack is not None:
            await stack.aclose()
        self._slots = asyncio.Semaphore(self.concurrency)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "function_name": self.function_name, "region": self.region,
                "memory_mb": self.memory_mb, "timeout": self.timeout, "concurrency": self.concurrency}
