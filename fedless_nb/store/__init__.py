"""Parameter stores: a local directory now, S3-compatible object stores through the same interface."""

from __future__ import annotations

from typing import Any

from .base import MissingKeyError, Store, StoreError, check_key
from .codec import CodecError, decode_arrays, encode_arrays
from .local import LocalStore

__all__ = [
    "CodecError", "LocalStore", "MissingKeyError", "Store", "StoreError",
    "check_key", "decode_arrays", "encode_arrays", "store_from_descriptor",
]


def store_from_descriptor(descriptor: dict[str, Any]) -> Store:
    """Rebuild the store a task names; this is how a function reaches the controller's store."""
    kind = descriptor.get("kind") if isinstance(descriptor, dict) else None
    if kind == "local":
        return LocalStore(descriptor["root"])
    raise StoreError(f"unknown store kind {kind!r} in the task; this function supports: local")
