"""What S3 does with a presigned POST and moto 5 does not: moto stores any body a form POST carries, whatever
its policy says (checked: a body over the policy's content-length-range is stored). This WSGI layer in front
of moto's own server applies S3's documented checks to a browser-form POST before moto sees it: the policy's
SigV4 signature with the test credentials (so a function cannot widen its policy), its expiry, its
content-length-range and its exact-match and starts-with conditions on the form's fields and the bucket (so a
function cannot point its grant at another key), answering with S3's error codes. Everything else goes to moto
unchanged.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import io
import json
import threading
from typing import Any, Callable, Iterable

from werkzeug.wrappers import Request


def _error(start_response: Callable[..., Any], status: str, code: str, message: str) -> Iterable[bytes]:
    body = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
    start_response(status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
    return [body.encode()]


def _signature(secret: str, credential: str, policy: str) -> str:
    _, date, region, service, _ = credential.split("/")
    key = f"AWS4{secret}".encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, policy.encode(), hashlib.sha256).hexdigest()


class PostPolicyChecks:
    """WSGI middleware: refuse a form POST whose policy is unsigned, expired, or rules out its file's size."""

    def __init__(self, app: Callable[..., Any], secret: str) -> None:
        self.app, self.secret = app, secret

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ["REQUEST_METHOD"] != "POST" or not environ.get("CONTENT_TYPE", "").startswith("multipart/form-data"):
            return self.app(environ, start_response)
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        request = Request({**environ, "wsgi.input": io.BytesIO(body)})
        form, upload = request.form, request.files.get("file")
        policy = form.get("policy", "")
        if _signature(self.secret, form.get("x-amz-credential", "///s3/"), policy) != form.get("x-amz-signature"):
            return _error(start_response, "403 Forbidden", "SignatureDoesNotMatch",
                          "The request signature we calculated does not match the signature you provided.")
        document = json.loads(base64.b64decode(policy))
        expiration = datetime.datetime.fromisoformat(document["expiration"].replace("Z", "+00:00"))
        if expiration < datetime.datetime.now(datetime.timezone.utc):
            return _error(start_response, "403 Forbidden", "AccessDenied", "Invalid according to Policy: Policy expired.")
        size = len(upload.read()) if upload is not None else 0
        for condition in document["conditions"]:
            if isinstance(condition, list) and condition[0] == "content-length-range":
                if size > condition[2]:
                    return _error(start_response, "400 Bad Request", "EntityTooLarge",
                                  "Your proposed upload exceeds the maximum allowed size")
                if size < condition[1]:
                    return _error(start_response, "400 Bad Request", "EntityTooSmall",
                                  "Your proposed upload is smaller than the minimum allowed size")
        fields = {**form.to_dict(), "bucket": environ.get("PATH_INFO", "/").strip("/").split("/")[0]}
        for condition in document["conditions"]:
            if failed := _unmet(condition, fields):
                return _error(start_response, "403 Forbidden", "AccessDenied",
                              f"Invalid according to Policy: Policy Condition failed: {failed}")
        environ["wsgi.input"] = io.BytesIO(body)
        return self.app(environ, start_response)


def _unmet(condition: Any, fields: dict[str, str]) -> str | None:
    """The condition as S3 names it when the form's `fields` break it ({"key": k}, ["eq", "$key", k],
    ["starts-with", "$key", prefix]), else None; content-length-range is checked on the file above."""
    if isinstance(condition, dict):
        (name, value), = condition.items()
        return None if fields.get(name.lower()) == value else json.dumps(["eq", f"${name}", value])
    operator, name, value = condition
    if operator == "eq" and fields.get(name.lstrip("$").lower()) != value:
        return json.dumps(condition)
    if operator == "starts-with" and not fields.get(name.lstrip("$").lower(), "").startswith(value):
        return json.dumps(condition)
    return None


class PolicedMotoServer:
    """moto's S3 server on 127.0.0.1 behind PostPolicyChecks (moto's backends are shared in-process)."""

    def __init__(self, secret: str) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        app = PostPolicyChecks(DomainDispatcherApplication(create_backend_app), secret)
        self.server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join()
