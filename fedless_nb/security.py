"""Invocation tokens and result signatures: HMAC-SHA256 with a key per client and run.

Each provider has one secret, which the controller holds: the local provider makes a fresh
one for each run and hands it to its workers; a remote function gets a secret at deploy time
in `FEDLESS_RUN_SECRET` (or a file named by `FEDLESS_RUN_SECRET_FILE`, for platforms that
mount secrets as files). Nobody uses a secret itself: each client's secret is derived from
the provider's and the client id (`client_secret`), and each run's key from that and the run
id (`client_key`), so a token or signature is worthless for another client or another run.

Two ways to deploy. A function shared by all of a provider's clients holds the provider's
secret and derives the key of whichever client a task names: compromised, it can speak for
every client of its provider. A function deployed for one client (FedLess deploys one per
client) holds only that client's secret (`fedless-nb client-secret`) and names its client in
`FEDLESS_CLIENT_ID`: it refuses tasks for other clients, and compromised, it can sign
results in its own client's name only (README, "Threat model").

A token binds one task: its run, round, client, update key, deadline, a random nonce and
a digest of every other field of the task (so a token cannot carry an altered task). The
function checks it before it touches any data, and that the task's keys are its client's own
in its run (store/keys.task_keys_problem): a key signs tasks of any run and key it likes. A result is signed over all of its
fields, including the SHA-256 of the update bytes the function wrote; the controller
checks the signature and that the bytes in the store still have that digest.

Replays. A token is valid only until its round deadline. Within that window a warm
process refuses a nonce it has already spent (`SPENT_TOKENS`, for client and aggregator tasks alike), and `client.handle` refuses
a task whose update is already in the store, which catches a replay to another
process after the first run finished. Limits: a replay to another, cold process while
the first is still running is not caught (it recomputes the same task, and the
controller then refuses the update if the replay overwrote it with different bytes);
a retry after the function wrote its update but its reply was lost is refused as a
replay, so that invocation counts as failed. Secrets are never logged, recorded or bundled.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

from .store.keys import task_keys_problem
from .wire import CANNOT_AGGREGATE

SECRET_VARIABLE = "FEDLESS_RUN_SECRET"
SECRET_FILE_VARIABLE = "FEDLESS_RUN_SECRET_FILE"
CLIENT_ID_VARIABLE = "FEDLESS_CLIENT_ID"  # set: the function serves this client only, its secret is the client's
ALLOW_UNSIGNED_VARIABLE = "FEDLESS_ALLOW_UNSIGNED"
CLOCK_SKEW = 30.0  # seconds a remote function's clock may run ahead of the controller's
_TOKEN_VERSION = "v1"
_CLAIMS = ("run_id", "round", "client_id", "update")
NO_TOKEN = "the task has no token; this function accepts signed tasks only"


class AuthError(Exception):
    """The task's token is missing (`status` 401) or refused: forged, expired, replayed (403)."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


class MisconfiguredError(AuthError):
    """The function's own settings are wrong (500). Checked before a task's token is, so its caller may hold no
    secret: the reply says only `PUBLIC_MESSAGE`, the message itself (a path, a setting's value) goes to the log."""

    PUBLIC_MESSAGE = "this function is misconfigured where it is deployed; its log says what to fix"

    def __init__(self, message: str) -> None:
        super().__init__(message, status=500)


class AggregatorTaskRefused(AuthError):
    """A function deployed for one client refuses an aggregator's task (403), declaring why in its reply (`cause`)."""

    cause = CANNOT_AGGREGATE


class ResultSignatureError(Exception):
    """A result's signature does not match, or its update bytes are not the ones the function signed."""


def new_secret() -> str:
    """A fresh random secret (256 bits), e.g. for `FEDLESS_RUN_SECRET` or a local provider's run."""
    return secrets.token_urlsafe(32)


def client_secret(secret: str, client_id: str) -> str:
    """The secret of one client, derived from its provider's: what a function deployed for that client alone holds."""
    digest = hmac.new(secret.encode(), b"fedless-nb client secret\0" + client_id.encode(), hashlib.sha256).digest()
    return _b64(digest)


def client_key(secret: str, run_id: str, client_id: str) -> "RunKey":
    """The key that signs `client_id`'s tokens and results in run `run_id`, from its provider's secret."""
    return RunKey(client_secret(secret, client_id), run_id)


def _plain(value: Any) -> Any:
    """NumPy scalars and arrays as the plain values JSON carries (a result may hold them before it is sent)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"a {type(value).__name__} cannot be signed: results must be JSON data")


def canonical(value: Any) -> bytes:
    """The JSON bytes both sides sign: sorted keys, no spaces (floats survive a JSON round trip exactly)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True, default=_plain).encode()


def update_digest(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class RunKey:
    """The HMAC key of one run, derived from the shared secret; its repr never shows either."""

    def __init__(self, secret: str, run_id: str) -> None:
        self.run_id = run_id
        self._key = hmac.new(secret.encode(), b"fedless-nb run key\0" + run_id.encode(), hashlib.sha256).digest()

    def _mac(self, purpose: bytes, message: bytes) -> bytes:
        return hmac.new(self._key, purpose + b"\0" + message, hashlib.sha256).digest()

    def __repr__(self) -> str:
        return f"RunKey(run_id={self.run_id!r})"

    # -- controller side ------------------------------------------------------------------

    def issue_token(self, task: Mapping[str, Any]) -> str:
        """A token for exactly this task (its "token" field is ignored), valid until its deadline."""
        claims = {name: task[name] for name in _CLAIMS}
        claims.update(exp=float(task["deadline"]), nonce=secrets.token_hex(16), task=_task_digest(task))
        body = canonical(claims)
        return ".".join((_TOKEN_VERSION, _b64(body), _b64(self._mac(b"token", body))))

    def verify_result(self, result: Mapping[str, Any], update: bytes) -> None:
        """Raise ResultSignatureError unless the function signed `result` and `update` has the signed digest."""
        signature = result.get("signature")
        if not isinstance(signature, str) or not signature:
            raise ResultSignatureError("the result is unsigned: the function runs without a run secret; "
                                       f"deploy it with {SECRET_VARIABLE} set to the controller's")
        unsigned = {name: value for name, value in result.items() if name != "signature"}
        if not hmac.compare_digest(signature.encode(), _b64(self._mac(b"result", canonical(unsigned))).encode()):
            raise ResultSignatureError("the result's signature does not match: it was forged or altered on the way")
        if result.get("update_sha256") != update_digest(update):
            raise ResultSignatureError("the update in the store is not the one the function signed: it was tampered with")

    # -- function side --------------------------------------------------------------------

    def verify_token(self, task: Mapping[str, Any], nonces: "NonceCache", now: float | None = None) -> tuple[str, float]:
        """The token's nonce and expiry, if the task carries a valid, unexpired, unspent token for itself; AuthError otherwise."""
        token = task.get("token")
        if not token:
            raise AuthError(NO_TOKEN, status=401)
        claims = self.token_claims(str(token))
        if any(claims.get(name) != task.get(name) for name in _CLAIMS) or claims.get("task") != _task_digest(task):
            raise AuthError("the task's token was issued for another task")
        now = time.time() if now is None else now
        if now > float(claims["exp"]) + CLOCK_SKEW:
            raise AuthError("the task's token expired with its round deadline")
        nonces.check(str(claims["nonce"]), now)
        return str(claims["nonce"]), float(claims["exp"]) + CLOCK_SKEW

    def token_claims(self, token: str) -> dict[str, Any]:
        """The claims of `token` if this key signed it; AuthError (403) otherwise."""
        body, mac = _token_parts(token)
        if not hmac.compare_digest(mac, self._mac(b"token", body)):
            raise AuthError("the task's token is forged or signed with another secret (check FEDLESS_RUN_SECRET)")
        return json.loads(body)

    def sign_result(self, result: dict[str, Any], update: bytes) -> dict[str, Any]:
        """`result` with the update's digest and the signature over every field."""
        signed = {name: value for name, value in result.items() if name != "signature"}
        signed["update_sha256"] = update_digest(update)
        # Sign what the controller will parse, so a float's JSON form is the one both sides hash (canonical JSON
        # parsed and written again is the same bytes, so these are what the controller hashes).
        body = canonical(signed)
        return {**json.loads(body), "signature": _b64(self._mac(b"result", body))}


def _token_parts(token: str) -> tuple[bytes, bytes]:
    """A token's claims (JSON bytes) and MAC, not yet verified; AuthError when it is not a token of this version."""
    try:
        version, body_text, mac_text = token.split(".")
        body, mac = _unb64(body_text), _unb64(mac_text)
    except (ValueError, binascii.Error):
        raise AuthError("the task's token is malformed") from None
    if version != _TOKEN_VERSION:
        raise AuthError("the task's token is forged or signed with another secret (check FEDLESS_RUN_SECRET)")
    return body, mac


# A token as the controller's JSON writes it (its characters need no escapes; its claims are a few hundred bytes), found
# in a body before it is parsed.
_RAW_TOKEN = re.compile(rb'"token"\s*:\s*"(' + _TOKEN_VERSION.encode() + rb'\.[A-Za-z0-9_-]{1,4096}\.[A-Za-z0-9_-]{1,64})"')


def check_body_token(body: bytes | bytearray | str, secret: str | None = None) -> None:
    """AuthError unless `body`, a task's JSON text not parsed yet, carries an unexpired, unspent token signed with this
    function's key (`secret` as in TaskGuard.admit) for exactly this text. Parsing costs up to twenty times a body's size
    in memory (64 MiB of empty objects: 1.5 GB), so a large body is parsed only when it is the task its token was issued
    for, sent once: the controller sends a task as `canonical` JSON, so the body without its token member is the JSON the
    token's task digest hashes. The parsed task is checked again after."""
    secret = secret or function_secret()
    if secret is None:
        return  # unsigned: TaskGuard.admit refuses or allows the parsed task
    raw = body.encode() if isinstance(body, str) else bytes(body)
    refusal = AuthError(NO_TOKEN, status=401)
    for found in _RAW_TOKEN.finditer(raw):
        token = found.group(1).decode()
        try:
            claimed = json.loads(_token_parts(token)[0])
            claims = _function_key(secret, str(claimed["run_id"]), str(claimed["client_id"])).token_claims(token)
        except AuthError as error:
            refusal = error
            continue
        except (ValueError, TypeError, KeyError, RecursionError):  # claims nested past Python's stack, from anyone
            refusal = AuthError("the task's token is malformed")
            continue
        # The first token signed with this key decides: the body is hashed once, however often a token repeats in it.
        _check_unparsed_claims(claims, raw, found.start(), found.end())
        return
    raise refusal


def _check_unparsed_claims(claims: Mapping[str, Any], raw: bytes, start: int, end: int) -> None:
    """AuthError unless the verified `claims` of the token at `raw[start:end]` are unexpired, unspent and for `raw`."""
    try:
        now = time.time()
        if now > float(claims["exp"]) + CLOCK_SKEW:
            raise AuthError("the task's token expired with its round deadline")
        SPENT_TOKENS.check(str(claims["nonce"]), now)
        task_digest = claims["task"]
    except (ValueError, TypeError, KeyError):
        raise AuthError("the task's token is malformed") from None
    if _digest_without(raw, start, end) != task_digest:
        raise AuthError("the task's token was issued for another task (a body over 1 MiB is checked byte for byte as "
                        "the controller sends it)")


def _digest_without(raw: bytes, start: int, end: int) -> str:
    """The task digest of the JSON text `raw` with its member `raw[start:end]` (and the comma that joins it) taken out:
    `_task_digest` of the task, when `raw` is its `canonical` JSON."""
    if raw[start - 1:start] == b",":
        start -= 1
    elif raw[end:end + 1] == b",":
        end += 1
    view = memoryview(raw)
    digest = hashlib.sha256(view[:start])
    digest.update(view[end:])
    return digest.hexdigest()


def _task_digest(task: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical({name: value for name, value in task.items() if name != "token"})).hexdigest()


class NonceCache:
    """The nonces a warm process has spent, each until its token expires (so the cache is bounded by the deadlines).

    A nonce is spent when its task has written its update: a later arrival of the same
    token is a replay. A task that failed before that leaves its nonce unspent, so a retry
    of a transient failure can run.
    """

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._expiry: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()  # web servers (Functions Framework, Azure) may call in threads

    def check(self, nonce: str, now: float) -> None:
        with self._lock:
            for old in [n for n, expiry in self._expiry.items() if expiry < now]:
                del self._expiry[old]
            if nonce in self._expiry:
                raise AuthError("the task's token was already used: a replayed invocation")

    def spend(self, nonce: str, expires_at: float) -> None:
        with self._lock:
            while len(self._expiry) >= self.limit:
                self._expiry.popitem(last=False)
            self._expiry[nonce] = expires_at


SPENT_TOKENS = NonceCache()  # the tokens this process has spent as a function: a replayed task is refused


class TaskGuard:
    """The function side of one invocation: admitted before any data is read, signs the result at the end."""

    def __init__(self, key: RunKey | None, nonce: str | None, nonces: NonceCache, expires_at: float) -> None:
        self.key, self.nonce, self.nonces, self.expires_at = key, nonce, nonces, expires_at

    @classmethod
    def admit(cls, task: Mapping[str, Any], store: Any, secret: str | None = None) -> "TaskGuard":
        """Check the task's token and that its update does not exist yet; AuthError otherwise. `secret`: one
        the platform's adapter was given (OpenWhisk's bound parameter), else the deployment's (function_secret)."""
        nonces = SPENT_TOKENS
        secret = secret or function_secret()
        if secret is None:
            if unsigned_allowed():
                return cls(None, None, nonces, 0.0)
            raise AuthError(f"this function has no run secret, so it refuses every task: set {SECRET_VARIABLE} "
                            f"when deploying it (or {ALLOW_UNSIGNED_VARIABLE}=1 for an open test function)")
        key = _function_key(secret, str(task["run_id"]), str(task["client_id"]))
        nonce, expires_at = key.verify_token(task, nonces)
        if problem := task_keys_problem(task):
            raise AuthError(f"{problem}: a function reads and writes only the keys the controller names for its run")
        if store.exists(task["update"]):
            raise AuthError("this task's update already exists: a replayed invocation")
        return cls(key, nonce, nonces, expires_at)

    def sign(self, result: dict[str, Any], update: bytes) -> dict[str, Any]:
        """Spend the token and sign `result` (unchanged when the function runs unsigned)."""
        if self.key is None or self.nonce is None:
            return result
        self.nonces.spend(self.nonce, self.expires_at)
        return self.key.sign_result(result, update)


def check_may_aggregate(environment: Mapping[str, str] | None = None) -> None:
    """AggregatorTaskRefused for a function deployed for one client: it holds no other client's key, so it can check
    none of the updates an aggregator sums (its own task would be refused as another client's, naming the wrong
    remedy). Its cause, not its words, tells `where: auto` to sum in the controller (rounds/tree.py)."""
    environment = os.environ if environment is None else environment
    if own := environment.get(CLIENT_ID_VARIABLE):
        raise AggregatorTaskRefused(
            f"this function serves {own} only, so it cannot aggregate: aggregate in the controller (aggregation: "
            f"{{where: controller}}), or give the aggregators the provider's shared function (its secret, without "
            f"{CLIENT_ID_VARIABLE})")


def _function_key(secret: str, run_id: str, client_id: str, environment: Mapping[str, str] | None = None) -> RunKey:
    """The key this function signs `client_id`'s task with: its own client's, or derived from its provider's secret."""
    environment = os.environ if environment is None else environment
    own = environment.get(CLIENT_ID_VARIABLE)
    if not own:
        return client_key(secret, run_id, client_id)
    if own != client_id:
        raise AuthError(f"this function serves {own} only, not {client_id}: invoke {client_id}'s own function")
    return RunKey(secret, run_id)


def function_secret(environment: Mapping[str, str] | None = None) -> str | None:
    """The secret a function was deployed with: `FEDLESS_RUN_SECRET`, or the file `FEDLESS_RUN_SECRET_FILE` names."""
    return deployed_secret(SECRET_VARIABLE, SECRET_FILE_VARIABLE, "the run secret", environment)


def deployed_secret(variable: str, file_variable: str, what: str, environment: Mapping[str, str] | None = None) -> str | None:
    """A secret a function was deployed with: the environment's `variable`, or the file `file_variable` names (for
    platforms that mount secrets as files); MisconfiguredError, naming `what`, when that file cannot be read."""
    environment = os.environ if environment is None else environment
    if environment.get(variable):
        return environment[variable]
    path = environment.get(file_variable)
    if path:
        try:
            return Path(path).read_text().strip() or None
        except OSError as error:
            raise MisconfiguredError(f"cannot read {what} from {file_variable}={path}: {error.strerror}") from None
    return None


def unsigned_allowed(environment: Mapping[str, str] | None = None) -> bool:
    """Whether a function without a secret may run unsigned tasks (an explicit opt-out, for open test setups)."""
    environment = os.environ if environment is None else environment
    return environment.get(ALLOW_UNSIGNED_VARIABLE, "").lower() in ("1", "true", "yes")
