"""HTTP-triggered client functions behind the Provider interface.

One provider speaks to every platform that runs a function behind an HTTPS endpoint:
the Functions Framework, Google Cloud Functions and Cloud Run, Knative, the OpenFaaS
gateway, an Azure Functions HTTP trigger (`auth: function_key`, sent as x-functions-key),
and OpenWhisk, both as a web action and through the blocking invoke API
(`.../actions/NAME?blocking=true&result=true` with `auth: basic`). Each task is POSTed as
JSON; the reply is the function's result. When OpenWhisk's blocking wait (at most 60 s)
ends before the action does, it answers 202 with an activation id, and the provider polls
that activation's record until the result is there or the call's timeout passes.

One aiohttp session per provider, at most `concurrency` calls in flight, a timeout per
call, and retries (the shared policy in `retry.py`) on throttling, server-side failures
and dropped connections only. A function's adapter reports its own failures as
`{"error": {"status", "type", "message"}}`; that status wins over the transport's (an
OpenWhisk action's error arrives as a 502, but a refused token inside it is a 403 and is
not retried), and the `cause` it declares, if any, is the invocation's. Keys and passwords come from the environment, never from the config, and
are kept out of `describe()` and every message.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import urllib.parse
from typing import Any

import aiohttp

from ..security import canonical
from ..wire import declared_cause
from .base import REPLY_LIMIT, InvocationError, Provider, ProviderSetupError, reply_json, reply_limit_for
from .retry import TRANSIENT_STATUSES, RetryPolicy, call_with_retries

AUTH_STYLES = ("none", "function_key", "basic", "bearer")
_CAUSES = {202: "timeout", 401: "auth", 403: "auth", 429: "throttled", 504: "timeout"}
_OPENWHISK_ACTION = re.compile(r"^(/api/v1/namespaces/[^/]+)/actions/")
_ACTIVATION_ID = re.compile(r"[0-9A-Za-z]{1,64}")  # OpenWhisk's are 32 hex digits; never a path or a query


class HttpCallError(Exception):
    """A reply that is not a result: the function's (or the platform's) status and message, and the cause the
    function declared (wire.DECLARED_CAUSES), if any."""

    def __init__(self, status: int, message: str, cause: str | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.cause = status, cause


def is_transient(error: BaseException) -> bool:
    """Throttling, server-side failures and lost connections; never a 4xx (asking again cannot help)."""
    if isinstance(error, HttpCallError):
        return error.status in TRANSIENT_STATUSES
    return isinstance(error, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)) and not isinstance(
        error, aiohttp.ServerTimeoutError)


def _failure(status: int, body: bytes) -> HttpCallError | None:
    """The error a reply carries, or None when it is a result."""
    try:
        reply = reply_json(body)
    except ValueError:
        reply = None
    error = reply.get("error") if isinstance(reply, dict) else None
    if isinstance(error, dict):  # a fedless adapter's envelope: its status is the function's own, if it is one
        claimed = error.get("status")
        own = claimed if type(claimed) is int and 100 <= claimed <= 599 else status
        return HttpCallError(own, f"{error.get('type', 'Error')}: {error.get('message', '')}",
                             declared_cause(error.get("cause")))
    if isinstance(error, str):  # OpenWhisk's own errors (an action that raised, a missing action)
        return HttpCallError(status if status >= 400 else 502, error)
    if status >= 400:
        return HttpCallError(status, body[:300].decode(errors="replace").strip() or "no body")
    if status == 202:  # accepted, still running: asking again would run it twice
        return HttpCallError(202, "the platform accepted the call but returned no result and no activation to wait for")
    return None


def activation_url(url: str, activation: str) -> str | None:
    """The OpenWhisk activation record's URL for an action's invoke URL, or None for other URLs."""
    parts = urllib.parse.urlsplit(url)
    match = _OPENWHISK_ACTION.match(parts.path)
    if match is None:
        return None
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, f"{match.group(1)}/activations/{activation}", "", ""))


def public_url(url: str) -> str:
    """The URL without its query string and credentials, fit for the history."""
    parts = urllib.parse.urlsplit(url)  # the host as written: an IPv6 address keeps its brackets
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


class HttpProvider(Provider):
    """Client functions behind one HTTP endpoint."""

    kind = "http"

    def __init__(
        self,
        name: str = "http",
        *,
        url: str,
        auth: str = "none",
        key: str | None = None,
        timeout: float = 120.0,
        concurrency: int = 16,
        secret: str | None = None,
        retry: RetryPolicy = RetryPolicy(),
        poll_interval: float = 1.0,
        reply_limit: int = REPLY_LIMIT,
    ) -> None:
        if auth not in AUTH_STYLES:
            raise ProviderSetupError(f"provider {name!r}: unknown auth {auth!r}; choose one of {', '.join(AUTH_STYLES)}")
        if auth != "none" and not key:
            raise ProviderSetupError(f"provider {name!r}: auth {auth!r} needs a key")
        if auth == "basic" and ":" not in (key or ""):
            raise ProviderSetupError(f"provider {name!r}: a basic-auth key is 'user:password' (OpenWhisk's AUTH)")
        self.name, self.url, self.auth, self.timeout, self.concurrency = name, url, auth, timeout, concurrency
        self.secret, self.retry, self.poll_interval, self.reply_limit = secret, retry, poll_interval, reply_limit
        self._key = key
        self._slots = asyncio.Semaphore(concurrency)
        self._session: aiohttp.ClientSession | None = None

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.auth == "function_key":
            headers["x-functions-key"] = self._key or ""
        elif self.auth == "bearer":
            headers["Authorization"] = f"Bearer {self._key}"
        elif self.auth == "basic":
            headers["Authorization"] = "Basic " + base64.b64encode((self._key or "").encode()).decode()
        return headers

    def _client(self) -> aiohttp.ClientSession:
        """The provider's one session, opened on first use on the caller's loop."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers(), connector=aiohttp.TCPConnector(limit=self.concurrency),
                timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self._session

    async def _post(self, body: bytes, limit: int) -> dict[str, Any]:
        async with self._client().post(self.url, data=body, allow_redirects=False) as response:
            reply = await self._read(response, limit)
            failure = _failure(response.status, reply)
            if failure is not None:
                if failure.status == 202 and (record := self._activation(reply)) is not None:
                    return await self._wait_for_activation(record)
                raise failure
        try:
            return reply_json(reply)
        except ValueError as error:
            raise InvocationError(f"the function replied with non-JSON ({error}): {reply[:80]!r}", "invalid") from None

    async def _read(self, response: aiohttp.ClientResponse, limit: int) -> bytes:
        """The reply's body, refusing a redirect (it would carry the task, its token and the function key to
        another origin) and a body over `limit` bytes (read in chunks, never whole)."""
        if 300 <= response.status < 400:
            raise InvocationError(f"{public_url(self.url)} answered a redirect ({response.status}), which is never "
                                  "followed: point the provider's url at the function itself", "invalid")
        if (response.content_length or 0) > limit:
            raise InvocationError(f"the reply exceeded {limit} bytes", "invalid")
        body = bytearray()
        async for chunk in response.content.iter_chunked(2**16):
            body += chunk
            if len(body) > limit:
                raise InvocationError(f"the reply exceeded {limit} bytes", "invalid")
        return bytes(body)

    def _activation(self, reply: bytes) -> str | None:
        try:
            activation = reply_json(reply).get("activationId")
        except (ValueError, AttributeError):
            return None
        if not isinstance(activation, str) or not _ACTIVATION_ID.fullmatch(activation):
            return None  # a reply's "id" that walks out of /activations/ would be fetched with the platform's key
        return activation_url(self.url, activation)

    async def _wait_for_activation(self, record_url: str) -> dict[str, Any]:
        """Poll an OpenWhisk activation record until it holds the result; transient failures only delay it."""
        async with asyncio.timeout(self.timeout):
            while True:
                await asyncio.sleep(self.poll_interval)
                try:
                    async with self._client().get(record_url, allow_redirects=False) as response:
                        if response.status == 404 or response.status in TRANSIENT_STATUSES:
                            continue  # not finished yet, or the platform is briefly unavailable
                        record = await self._read(response, self.reply_limit)  # with the action's logs
                        if response.status != 200:
                            raise HttpCallError(response.status, record[:300].decode(errors="replace"))
                except aiohttp.ClientConnectionError:
                    continue
                try:
                    outcome = reply_json(record).get("response", {})
                    result, succeeded = outcome.get("result"), outcome.get("success")
                except (ValueError, AttributeError):
                    raise InvocationError(f"the activation record is not one: {record[:80]!r}", "invalid") from None
                failure = _failure(200 if succeeded else 502, json.dumps(result).encode())
                if failure is not None:
                    raise failure
                return result

    async def invoke(self, task: dict[str, Any]) -> dict[str, Any]:
        body = canonical(task)  # as its token's digest hashes it: a body over 1 MiB is checked unparsed (security.py)
        async with self._slots:
            try:
                limit = reply_limit_for(task, self.reply_limit)
                return await call_with_retries(lambda: self._post(body, limit), is_transient, self.retry)
            except HttpCallError as error:
                raise InvocationError(f"{public_url(self.url)} answered {error}",
                                      error.cause or _CAUSES.get(error.status, "error")) from None
            except asyncio.TimeoutError:
                raise InvocationError(f"no reply from {public_url(self.url)} within {self.timeout:g}s", "timeout") from None
            except aiohttp.ClientError as error:
                raise InvocationError(f"cannot reach {public_url(self.url)}: {type(error).__name__}: {error}", "error") from None

    async def close(self) -> None:
        """Close the session; the provider opens a new one (on the caller's loop) if used again."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        self._slots = asyncio.Semaphore(self.concurrency)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "url": public_url(self.url), "auth": self.auth,
                "timeout": self.timeout, "concurrency": self.concurrency, "signed": self.secret is not None}
