"""The function side of a remote store: plain HTTP GETs and form POSTs on the presigned URLs its task carries.

A function holds no credentials. Its task grants a URL per key, so it can read only the
global weights and its own data and write only its own update; asking for any other key
fails here, before a request is made, and the object store refuses tampered or expired
URLs on its side. It follows no redirect: the roots a deployer allows (store/roots.py) are checked on
the task's URLs, and a server under them could otherwise send the function anywhere; S3 has no need
of one (a presigned URL names the bucket's regional endpoint, and its signature covers the host). A write is a presigned POST (S3's browser-upload form): its signed policy
carries a content-length-range, so the object store refuses a body over the task's
`max_write_bytes` even from a function that skips the check made here first. The standard
library makes the requests; urllib3 (installed with tensorflow's requests) encodes the form.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ElementTree
from typing import Any, Mapping

from .base import MissingKeyError, Store, StoreError, check_key, check_write_size


def _s3_error(body: bytes) -> str:
    """'Code: Message' from an S3 XML error body, or '' when the body is something else."""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return ""
    return ": ".join(part for part in (root.findtext("Code"), root.findtext("Message")) if part)


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx stays the response (an HTTPError), never a request to its Location."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's signature
        return None


_OPENER = urllib.request.build_opener(_RefuseRedirects)


class PresignedStore(Store):
    """Reads and writes exactly the keys a task grants, until the task's access expires.

    `get` maps each readable key to its presigned GET URL, `post` each writable key to its presigned
    POST ({"url": ..., "fields": {...}}, the form fields the signed policy expects).
    """

    kind = "presigned"

    def __init__(
        self, get: Mapping[str, str], post: Mapping[str, Mapping[str, Any]], expires_at: float, *,
        max_write_bytes: int | None = None, timeout: float = 60.0,
    ) -> None:
        self.reads = dict(get)
        self.writes = {key: {"url": str(grant["url"]), "fields": dict(grant["fields"])} for key, grant in post.items()}
        self.expires_at = float(expires_at)
        self.max_write_bytes = None if max_write_bytes is None else int(max_write_bytes)
        self.timeout = timeout

    @classmethod
    def from_descriptor(cls, descriptor: Mapping[str, Any]) -> "PresignedStore":
        try:
            return cls(descriptor["get"], descriptor["post"], descriptor["expires_at"],
                       max_write_bytes=descriptor.get("max_write_bytes"))
        except (KeyError, TypeError, ValueError) as error:
            raise StoreError(f"malformed presigned store descriptor in the task: {error!r}") from None

    def _url(self, grants: Mapping[str, str], key: str, access: str) -> str:
        check_key(key)
        if key not in grants:
            allowed = ", ".join(sorted(grants)) or "nothing"
            raise StoreError(f"this task grants no {access} access to {key!r}; it may {access} only: {allowed}")
        if urllib.parse.urlsplit(grants[key]).scheme not in ("http", "https"):
            raise StoreError(f"the task's URL for {key!r} is not http(s); a function fetches nothing else")
        if not grants[key].isascii() or any(char.isspace() or not char.isprintable() for char in grants[key]):
            raise StoreError(f"the task's URL for {key!r} holds characters a request cannot carry (past ASCII, spaces or "
                             "control characters): percent-encode them, as a presigned URL is")
        if time.time() >= self.expires_at:
            expired = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.expires_at))
            raise StoreError(f"the task's store access expired at {expired} (its round deadline)")
        return grants[key]

    def _request(self, request: urllib.request.Request, key: str, tolerated: tuple[int, ...] = (),
                 headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """(status, body); an HTTP error becomes a StoreError unless its status is `tolerated`. `headers`, when
        given, receives the response's headers."""
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                if headers is not None:
                    headers.update(response.headers.items())
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            if error.code in tolerated:
                return error.code, b""
            if 300 <= error.code < 400:
                where = urllib.parse.urlsplit(error.headers.get("Location") or "").netloc or "nowhere named"
                raise StoreError(f"the store answered {request.get_method()} {key!r} with a redirect (HTTP {error.code} "
                                 f"to {where}), which a function does not follow: give it URLs that need none (an S3 "
                                 "bucket's regional endpoint, https://BUCKET.s3.REGION.amazonaws.com/)") from None
            detail = _s3_error(error.read()) or error.reason
            if error.code == 404:
                raise MissingKeyError(f"store has no key {key!r} ({detail})") from None
            raise StoreError(f"the store refused {request.get_method()} {key!r}: HTTP {error.code} {detail}") from None

    def get(self, key: str) -> bytes:
        return self._request(urllib.request.Request(self._url(self.reads, key, "read")), key)[1]

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        """A multipart form POST: the policy's fields, then the file (S3 reads fields after the file as none)."""
        from urllib3 import encode_multipart_formdata

        url = self._url({k: grant["url"] for k, grant in self.writes.items()}, key, "write")
        check_write_size(key, memoryview(data).nbytes, self.max_write_bytes)
        fields = [*self.writes[key]["fields"].items(), ("file", ("update", bytes(data), "application/octet-stream"))]
        body, content_type = encode_multipart_formdata(fields)
        self._request(urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type}), key)

    def exists(self, key: str) -> bool:
        """A one-byte ranged GET: a presigned GET URL is valid for GET only, not HEAD."""
        return self._first_byte(key, {}) != 404

    def size(self, key: str) -> int:
        """The object's size from a one-byte ranged GET's Content-Range ("bytes 0-0/SIZE"), without reading it."""
        headers: dict[str, str] = {}
        status = self._first_byte(key, headers)
        if status == 404:
            raise MissingKeyError(f"store has no key {key!r}")
        if status == 416:  # an empty object has no byte 0
            return 0
        ranged = {name.lower(): value for name, value in headers.items()}
        total = ranged.get("content-range", "").rpartition("/")[2] if status == 206 else ranged.get("content-length", "")
        if not total.isdigit():
            raise StoreError(f"the store did not say how large {key!r} is (HTTP {status})")
        return int(total)

    def _first_byte(self, key: str, headers: dict[str, str]) -> int:
        request = urllib.request.Request(self._url(self.reads, key, "read"), headers={"Range": "bytes=0-0"})
        return self._request(request, key, tolerated=(404, 416), headers=headers)[0]

    def delete(self, key: str) -> None:
        raise StoreError(f"a function may not delete {key!r}: a task grants reads and its own update only")

    def descriptor(self) -> dict[str, Any]:
        return {"kind": self.kind, "get": dict(self.reads), "post": dict(self.writes),
                "max_write_bytes": self.max_write_bytes, "expires_at": self.expires_at}

    def __repr__(self) -> str:  # the URLs are capabilities: keep them out of logs and tracebacks
        return f"PresignedStore(reads={sorted(self.reads)}, writes={sorted(self.writes)})"
