"""One invocation from a request body to an HTTP status and a JSON reply: what every function template shares.

The templates in function_templates/ only translate their platform's event into a body
and this module's (status, reply) back into their platform's response. The status says
who must act, which is what a provider's retry policy needs to know:

- 400: the task is malformed or not for this function (asking again cannot help);
- 401 / 403: the token is missing, or forged, expired, replayed (see security.py); a body over 1 MiB is parsed only
  once the token in its text checks;
- 408: the request body did not arrive within FEDLESS_BODY_SECONDS (a streamed body: body_deadline.py);
- 413: the request body is longer than any task (MAX_TASK_BYTES), refused before it is read whole;
- 424: the parameter store refused (a missing key, an expired or foreign grant), so the
  task cannot succeed as given; a retry would train again for nothing;
- 500: anything else, a failure inside the function or a dropped connection to the store
  (its traceback goes to the platform's log); providers retry 5xx.

A failed reply is `{"error": {"status", "type", "message"}}`, never a traceback or a secret, with a `"cause"` when
the function declares why it refused (wire.DECLARED_CAUSES: one deployed for one client cannot aggregate).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from typing import Any, BinaryIO

from ..wire import REFUSED, PayloadError, declared_cause
from .body_deadline import BODY_SECONDS_VARIABLE, BodyDeadline, body_seconds
from .handler import handle
from ..errors import UserError
from ..model import ModelModules
from ..security import AuthError, MisconfiguredError, check_body_token
from ..store import CodecError, StoreError

JSON_HEADERS = {"Content-Type": "application/json"}
# A task carries store keys, URLs and a model's architecture, never weights: a few MB for the largest rounds. A
# longer body is refused before it is read, since parsing one costs several times its size in memory.
MAX_TASK_BYTES = 64 * 2**20
# A body longer than this is parsed only once the token in its text checks (security.check_body_token): parsing costs up
# to twenty times a body's size, which someone without the secret must not make a function spend. Tasks are far smaller.
PARSED_UNSIGNED_BYTES = 2**20
NESTED_TOO_DEEPLY = "the request body nests too deeply to be a task"  # JSON past Python's stack (RecursionError)
_log = logging.getLogger("fedless_nb.function")
# One task at a time per process, like a FaaS instance with concurrency 1: the warm model and
# its traced step are shared state. Threaded servers (gunicorn under the Functions Framework,
# Azure's worker) queue here; scale out with instances, not threads.
_ONE_AT_A_TIME = threading.Lock()


def error_reply(status: int, error: BaseException) -> dict[str, Any]:
    """The reply to a refused or failed task; a misconfigured function's detail stays in its log (see invoke)."""
    message = error.PUBLIC_MESSAGE if isinstance(error, MisconfiguredError) else str(error)
    reply = {"status": status, "type": type(error).__name__, "message": message}
    if cause := declared_cause(getattr(error, "cause", None)):
        reply["cause"] = cause
    return {"error": reply}


def status_of(error: BaseException) -> int:
    """The HTTP status for an exception raised by the client step."""
    if isinstance(error, AuthError):
        return error.status
    if isinstance(error, (PayloadError, CodecError, UserError)):
        return 400
    if isinstance(error, StoreError):
        return 424
    return 500


def refused_unparsed(body: bytes | bytearray | str, secret: str | None) -> tuple[int, dict[str, Any]] | None:
    """The (status, reply) refusing, before it is parsed, a body over PARSED_UNSIGNED_BYTES whose token does not check
    (security.check_body_token); None when it may be parsed. A misconfigured function's detail goes to its log."""
    if len(body) <= PARSED_UNSIGNED_BYTES:
        return None
    try:
        check_body_token(body, secret)
    except AuthError as error:
        if isinstance(error, MisconfiguredError):
            _log.error("the function is misconfigured: %s", error)
        return error.status, error_reply(error.status, error)
    return None


def invoke(body: bytes | str | dict[str, Any] | None, *, secret: str | None = None, state_secret: str | None = None,
           data: Any = None, model_modules: ModelModules | None = None) -> tuple[int, dict[str, Any]]:
    """Run the client step on a request body (JSON text or an already parsed task); `secret`, `state_secret`, `data`
    and `model_modules` as in handle."""
    if isinstance(body, (bytes, bytearray, str)) and (refusal := refused_unparsed(body, secret)) is not None:
        return refusal
    try:
        payload = json.loads(body) if isinstance(body, (bytes, bytearray, str)) else body
    except ValueError as error:
        return 400, error_reply(400, PayloadError(f"the request body is not JSON: {error}"))
    except RecursionError:
        return 400, error_reply(400, PayloadError(NESTED_TOO_DEEPLY))
    try:
        with _ONE_AT_A_TIME:
            return 200, handle(payload, secret=secret, state_secret=state_secret, data=data,
                               model_modules=model_modules)
    except Exception as error:  # the platform gets a status and a message, never a crashed worker
        status = status_of(error)
        if status == 500:
            _log.exception("the client step failed")
        return status, error_reply(status, error)


def handle_direct(task: dict[str, Any]) -> dict[str, Any]:
    """The client step for a platform's direct invocation, which passes on only an exception's type and message
    (Lambda's Invoke): a task refused before training for another reason than PayloadError (its model, its
    weights' bytes) is raised as a PayloadError, the type that declares REFUSED there, its own type leading the
    message."""
    try:
        return handle(task)
    except Exception as error:
        if declared_cause(getattr(error, "cause", None)) == REFUSED and not isinstance(error, PayloadError):
            raise PayloadError(f"{type(error).__name__}: {error}") from error
        raise


def read_body(stream: BinaryIO, length: int | None) -> bytes | None:
    """A request's body from its `stream`, or None when it is longer than MAX_TASK_BYTES (its declared `length`
    says so before anything is read; a body without one is read no further than one byte past the limit)."""
    if length is not None and length > MAX_TASK_BYTES:
        return None
    body = bytearray()
    while len(body) <= MAX_TASK_BYTES and (chunk := stream.read(min(2**20, MAX_TASK_BYTES + 1 - len(body)))):
        body += chunk
    return bytes(body) if len(body) <= MAX_TASK_BYTES else None


def invoke_stream(stream: BinaryIO, length: int | None, connection: socket.socket | None = None) -> tuple[int, str]:
    """`invoke_json` on a web request's body (`read_body`); 413 without running anything when it is too long, 408 when
    it has not arrived within FEDLESS_BODY_SECONDS (body_deadline.py: `connection` is the request's socket)."""
    try:
        seconds = body_seconds()
    except MisconfiguredError as error:
        _log.error("the function is misconfigured: %s", error)
        return 500, json.dumps(error_reply(500, error))
    deadline = BodyDeadline(connection, seconds)
    try:
        with deadline:
            body = read_body(stream, length)
    except Exception:  # the server's own error for a body cut short, when the deadline cut it
        if not deadline.expired:
            raise
    if deadline.expired:
        late = PayloadError(f"the request body did not arrive within {seconds:g} s ({BODY_SECONDS_VARIABLE})")
        return 408, json.dumps(error_reply(408, late))
    return _too_long() if body is None else invoke_json(body)


def invoke_json(body: bytes | str | dict[str, Any] | None) -> tuple[int, str]:
    """`invoke`, with the reply as JSON text; 413 without parsing a body longer than MAX_TASK_BYTES (the platforms
    that hand their adapter a body already read whole, OpenFaaS and Azure Functions, let one of 64 MiB through)."""
    if isinstance(body, (bytes, bytearray, str)) and len(body) > MAX_TASK_BYTES:
        return _too_long()
    status, reply = invoke(body)
    return status, json.dumps(reply)


def _too_long() -> tuple[int, str]:
    refused = PayloadError(f"the request body is longer than the {MAX_TASK_BYTES} bytes a task can have")
    return 413, json.dumps(error_reply(413, refused))
