"""Parameter stores: a local directory or an S3-compatible bucket, and the presigned view functions get of one.

`S3Store` lives in `store.s3` and is imported only when a config asks for it, so a
function bundle (which sees local or presigned stores only) needs no AWS library. Both sides use it;
it imports nothing else of fedless_nb.
"""

from __future__ import annotations

from typing import Any

from .base import MissingKeyError, Store, StoreError, check_key
from .codec import CodecError, decode_arrays, encode_arrays
from .local import LocalStore
from .presigned import PresignedStore

__all__ = [
    "CodecError", "LocalStore", "MissingKeyError", "PresignedStore", "STORE_KINDS", "Store", "StoreError",
    "check_key", "decode_arrays", "encode_arrays", "make_store", "store_from_descriptor",
]

STORE_KINDS = ("local", "s3")


def store_from_descriptor(descriptor: dict[str, Any]) -> Store:
    """Rebuild the store a task names; this is how a function reaches the controller's store."""
    kind = descriptor.get("kind") if isinstance(descriptor, dict) else None
    if kind == "local":
        return LocalStore.from_descriptor(descriptor)
    if kind == "presigned":
        return PresignedStore.from_descriptor(descriptor)
    raise StoreError(f"unknown store kind {kind!r} in the task; this function supports: local, presigned")


def make_store(config: Any) -> Store:
    """The controller's store from a `StoreConfig`."""
    if config.kind == "local":
        return LocalStore(config.path)
    if config.kind == "s3":
        from .s3 import S3Store

        return S3Store(config.bucket, config.prefix, endpoint_url=config.endpoint_url, region=config.region)
    raise StoreError(f"unknown store kind {config.kind!r}; choose one of {', '.join(STORE_KINDS)}")
