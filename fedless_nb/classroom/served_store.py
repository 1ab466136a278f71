"""The teacher's local store, reachable by students through URLs signed for one key, one method and one deadline.

A student's function is a remote function: it must not see the teacher's disk, only the
global weights, its share of the data and its own update key. `ServedStore` grants exactly
those, as the S3 store does with presigned URLs, but the URLs point at the join service
(`service.py`), which checks each signature before it reads or writes the local directory.
On the student's side the task's store is the ordinary `PresignedStore`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import urllib.parse
from pathlib import Path
from typing import Any, Sequence

from ..store import LocalStore

STORE_PATH = "/store/"


class ServedStore(LocalStore):
    """A LocalStore whose tasks get signed URLs under `base_url` instead of its directory."""

    def __init__(self, root: str, base_url: str) -> None:
        super().__init__(root)
        self.base_url = base_url.rstrip("/")
        self._secret = secrets.token_bytes(32)

    def _signature(self, method: str, key: str, expires: int, limit: str) -> str:
        message = f"{method}\0{key}\0{expires}\0{limit}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def signed_url(self, method: str, key: str, expires_at: float, max_bytes: int | None = None) -> str:
        """A URL for `method` on `key` until `expires_at`; a POST's size limit is signed with it (as S3's POST
        policy signs its content-length-range), so a student cannot raise it."""
        expires, limit = int(expires_at) + 1, "" if max_bytes is None else str(int(max_bytes))
        query = {"expires": expires, **({"limit": limit} if limit else {}),
                 "signature": self._signature(method, key, expires, limit)}
        return f"{self.base_url}{STORE_PATH}{urllib.parse.quote(key)}?{urllib.parse.urlencode(query)}"

    def task_descriptor(self, reads: Sequence[str], writes: Sequence[str], expires_at: float, *,
                        max_write_bytes: int | None = None) -> dict[str, Any]:
        """The store a student's function gets: signed GETs for `reads`, signed POSTs (the presigned store's
        form upload, no fields) for `writes`, each at most `max_write_bytes`."""
        return {"kind": "presigned", "expires_at": expires_at, "max_write_bytes": max_write_bytes,
                "get": {key: self.signed_url("GET", key, expires_at) for key in reads},
                "post": {key: {"url": self.signed_url("POST", key, expires_at, max_write_bytes), "fields": {}}
                         for key in writes}}

    def file(self, key: str) -> Path:
        """Where `key`'s bytes lie on disk: the service streams a GET from there, never holding them whole."""
        return self._path(key)

    def allows(self, method: str, key: str, expires: str, signature: str, limit: str = "") -> str | None:
        """Why a request for `key` is refused, or None when its URL was signed for it and is still valid."""
        try:
            deadline = int(expires)
        except ValueError:
            return "the URL's expiry is not a number"
        if not hmac.compare_digest(signature.encode(), self._signature(method, key, deadline, limit).encode()):
            return f"the URL was not signed for {method} {key}" + (f" up to {limit} bytes" if limit else "")
        if time.time() > deadline:
            return "the URL expired with its round deadline"
        return None
