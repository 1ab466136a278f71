"""The parameter store interface: where weights, updates and client data live.

Functions and the controller share nothing but a store. Keys are POSIX-style paths
namespaced by run, round and client (see `keys.py`), so a late writer can never
overwrite another round's object. Local backends are synchronous; remote ones
(S3) add async twins, as DESIGN.md says.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Any

_KEY = re.compile(r"^[A-Za-z0-9_.=-]+(/[A-Za-z0-9_.=-]+)*$")


class StoreError(Exception):
    """A store operation failed for a reason the user can act on."""


class MissingKeyError(StoreError, KeyError):
    """The key is not in the store."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


def check_key(key: str) -> str:
    """Refuse keys that could escape the store's namespace ('..', absolute paths, odd characters)."""
    if not isinstance(key, str) or not _KEY.match(key) or any(part in (".", "..") for part in key.split("/")):
        raise StoreError(f"invalid store key {key!r}: use relative paths of letters, digits, '._=-'")
    return key


class Store(ABC):
    """put/get/exists/delete on byte blobs, plus a descriptor a function can rebuild the store from."""

    kind: str

    @abstractmethod
    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        """Write `data` under `key`, atomically: readers see the old or the new blob, never half."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The blob under `key`; MissingKeyError if there is none."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether `key` holds a blob."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; removing a missing key is not an error."""

    @abstractmethod
    def descriptor(self) -> dict[str, Any]:
        """The task's "store" field: enough for a function to reach this store, and no secrets."""
