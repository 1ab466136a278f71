"""A store in a local directory: the embedded default, shared by the controller and local workers."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

from .base import MissingKeyError, Store, StoreError, check_key, check_write_size


class LocalStore(Store):
    """Blobs as files under `root`; writes go to a temporary file and are renamed into place.

    `max_write_bytes` limits each write (a task's store: a function writes one update of a known size).
    """

    kind = "local"

    def __init__(self, root: str | os.PathLike[str], *, max_write_bytes: int | None = None) -> None:
        self.root = Path(root).resolve()  # created by the first put, so a run that fails early leaves nothing
        self.max_write_bytes = max_write_bytes

    @classmethod
    def from_descriptor(cls, descriptor: Mapping[str, Any]) -> "LocalStore":
        """The store a task's descriptor names; StoreError when it names no folder (read before any token, so from
        anyone: a root that is no path, or holds a NUL byte, was a 500 with a traceback in the deployer's log)."""
        try:
            return cls(descriptor["root"], max_write_bytes=descriptor.get("max_write_bytes"))
        except (KeyError, TypeError, ValueError) as error:
            raise StoreError(f"malformed local store descriptor in the task: {error!r}") from None

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        path = self._path(key)
        check_write_size(key, memoryview(data).nbytes, self.max_write_bytes)
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".put-")
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise MissingKeyError(f"store {self.root} has no key {key!r}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise MissingKeyError(f"store {self.root} has no key {key!r}") from None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)

    def descriptor(self) -> dict[str, Any]:
        return {"kind": self.kind, "root": str(self.root)}

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"
