"""The parameter store interface: where weights, updates and client data live.

Functions and the controller share nothing but a store. Keys are POSIX-style paths
namespaced by run, round and client (see `keys.py`), so a late writer can never
overwrite another round's object. Local backends are synchronous; remote ones
(S3) add async twins, as DESIGN.md says.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Any, Sequence

_KEY = re.compile(r"^[A-Za-z0-9_.=-]+(/[A-Za-z0-9_.=-]+)*$")



class StoreError(Exception):
    """A store operation failed for a reason the user can act on."""


class MissingKeyError(StoreError, KeyError):
    """The key is not in the store."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


def check_key(key: str) -> str:
    """Refuse keys that could escape the store's namespace ('..', absolute paths, odd characters)."""
    if not isinstance(key, str) or not _KEY.fullmatch(key) or any(part in (".", "..") for part in key.split("/")):
        raise StoreError(f"invalid store key {key!r}: use relative paths of letters, digits, '._=-'")
    return key


def check_write_size(key: str, size: int, max_write_bytes: int | None) -> None:
    """Refuse a write longer than a task's limit (the update of this model is smaller), before it is sent."""
    if max_write_bytes is not None and size > max_write_bytes:
        raise StoreError(f"{key!r} is {size} bytes, more than the {max_write_bytes} this task may write "
                         "(an update of this model is smaller); nothing was written")


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
        """How to reach this store again, with no secrets (for the history and local rebuilds)."""

    def task_descriptor(self, reads: Sequence[str], writes: Sequence[str], expires_at: float, *,
                        max_write_bytes: int | None = None) -> dict[str, Any]:
        """One task's "store" field: access to `reads` and `writes` only, until `expires_at` (epoch seconds),
        each write at most `max_write_bytes` long.

        A remote store grants exactly these keys (presigned URLs, the size limit enforced by the object
        store); a local directory is shared with local functions as a whole, so it returns its plain
        descriptor with the limit, which the function's store checks before it writes.
        """
        descriptor = self.descriptor()
        return descriptor if max_write_bytes is None else {**descriptor, "max_write_bytes": max_write_bytes}

    def delete_prefix(self, prefix: str) -> None:
        """Remove every key under the folder `prefix` (a round that is to run again from scratch)."""
        raise StoreError(f"this {self.kind} store cannot delete the keys under {prefix!r}")

    # Async twins for callers on an event loop. A local store's I/O is quick and stays
    # synchronous; a remote store overrides these so the loop never waits on the network.
    async def aput(self, key: str, data: bytes | bytearray | memoryview) -> None:
        self.put(key, data)

    async def aget(self, key: str) -> bytes:
        return self.get(key)

    async def aexists(self, key: str) -> bool:
        return self.exists(key)

    def size(self, key: str) -> int:
        """The blob's size in bytes; stores that can (a file's stat, S3's HEAD) answer without reading it."""
        return len(self.get(key))

    async def asize(self, key: str) -> int:
        return self.size(key)

    async def adelete(self, key: str) -> None:
        self.delete(key)

    def close(self) -> None:
        """Release the connections and threads the store holds; a later call opens them again."""
