"""A store in an S3-compatible bucket (AWS S3, MinIO, Ceph) through aiobotocore.

Credentials come from the standard AWS chain (environment, profile, instance role) and
are never part of the config, a descriptor or the history. Functions never see them
either: `task_descriptor` hands each task presigned URLs for exactly its keys (a size-limited
presigned POST for what it writes).

The store owns one aiobotocore client on an event loop of its own, in one daemon thread.
That is what lets the same client serve the sync methods (called by plain code, even from
inside a running loop, as the runner does while writing client data) and the async twins
(awaited from any loop: the controller's, a notebook's) without binding it to one caller's
loop or blocking that loop on the network.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import threading
import time
from contextlib import AsyncExitStack
from typing import Any, Coroutine, Sequence, TypeVar

from aiobotocore.session import AioSession, get_session
from botocore.config import Config
from botocore.exceptions import ClientError, NoCredentialsError

from .base import MissingKeyError, Store, StoreError, check_key

T = TypeVar("T")

MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # SigV4's limit for presigned URLs
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken",
                     "InvalidToken", "TokenRefreshRequired", "InvalidClientTokenId"}


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


class S3Store(Store):
    """Blobs as objects under `prefix` in `bucket`; a PUT is atomic, so readers never see half a blob."""

    kind = "s3"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        session: AioSession | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = check_key(prefix.strip("/")) if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url
        self._session = session or get_session()
        self.region = region or self._session.get_config_variable("region") or "us-east-1"
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self._exit_stack: AsyncExitStack | None = None

    def _object_key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._object_key(key)}"

    # -- the store's own loop and client ------------------------------------------------

    def _io_loop(self) -> asyncio.AbstractEventLoop:
        """Start the I/O thread and open the client on first use."""
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name=f"S3Store-{self.bucket}", daemon=True)
                thread.start()
                try:
                    asyncio.run_coroutine_threadsafe(self._open(), loop).result()
                except BaseException:
                    self._stop(loop, thread)
                    raise
                self._loop, self._thread = loop, thread
            return self._loop

    async def _open(self) -> None:
        # Path-style addressing for custom endpoints: MinIO, Ceph and 127.0.0.1 have no per-bucket DNS names.
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path" if self.endpoint_url else "auto"},
            retries={"mode": "standard"},
        )
        self._exit_stack = AsyncExitStack()
        self._client = await self._exit_stack.enter_async_context(self._session.create_client(
            "s3", region_name=self.region, endpoint_url=self.endpoint_url, config=config,
        ))

    def _submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(self._translating(coroutine), self._io_loop())

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self._submit(coroutine).result()

    async def _await(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(self._submit(coroutine))

    async def _translating(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Turn the errors a user can fix (no bucket, no or bad credentials) into one-line StoreErrors."""
        try:
            return await coroutine
        except NoCredentialsError:
            raise StoreError(
                f"no AWS credentials for bucket {self.bucket!r}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run where an instance role applies"
            ) from None
        except ClientError as error:
            code, message = _error_code(error), error.response.get("Error", {}).get("Message", "")
            if code == "NoSuchBucket":
                where = f" at {self.endpoint_url}" if self.endpoint_url else f" in {self.region}"
                raise StoreError(f"S3 bucket {self.bucket!r} does not exist{where}: create it or fix store.bucket") from None
            if code in _CREDENTIAL_CODES:
                raise StoreError(f"S3 refused the credentials for bucket {self.bucket!r} ({code}: {message}); "
                                 "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the profile") from None
            raise

    def close(self) -> None:
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        if self._exit_stack is not None:
            asyncio.run_coroutine_threadsafe(self._exit_stack.aclose(), loop).result()
        self._client = self._exit_stack = None
        self._stop(loop, thread)

    @staticmethod
    def _stop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()

    # -- operations, run on the store's loop ------------------------------------------------

    async def _put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        body = bytes(data) if isinstance(data, memoryview) else data
        await self._client.put_object(Bucket=self.bucket, Key=self._object_key(key), Body=body)

    async def _get(self, key: str) -> bytes:
        try:
            response = await self._client.get_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as error:
            if _error_code(error) in ("NoSuchKey", "404"):
                raise MissingKeyError(f"store has no key {key!r} ({self._where(key)})") from None
            raise
        async with response["Body"] as body:
            return await body.read()

    async def _exists(self, key: str) -> bool:
        try:
            await self._client.head_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as error:
            if error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return False  # HEAD has no body: a missing bucket looks the same, and the next put names it
            raise
        return True

    async def _size(self, key: str) -> int:
        try:
            response = await self._client.head_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as error:
            if error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                raise MissingKeyError(f"store has no key {key!r} ({self._where(key)})") from None
            raise
        return int(response["ContentLength"])

    async def _delete(self, key: str) -> None:
        await self._client.delete_object(Bucket=self.bucket, Key=self._object_key(key))

    async def _delete_prefix(self, prefix: str) -> None:
        paginator = self._client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self._object_key(prefix) + "/"):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:  # a page holds at most 1,000 keys, delete_objects' limit
                await self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})

    async def _presigned(self, reads: Sequence[str], writes: Sequence[str], expires_at: float,
                         max_write_bytes: int | None) -> dict[str, Any]:
        seconds = max(1, min(MAX_PRESIGN_SECONDS, math.ceil(expires_at - time.time())))

        async def url(key: str) -> str:
            return await self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self._object_key(key)}, ExpiresIn=seconds)

        async def post(key: str) -> dict[str, Any]:
            # A POST policy is signed with its conditions, so S3 itself refuses a longer body (EntityTooLarge);
            # a presigned PUT cannot bound what is uploaded.
            limit = [["content-length-range", 0, max_write_bytes]] if max_write_bytes is not None else []
            return await self._client.generate_presigned_post(
                Bucket=self.bucket, Key=self._object_key(key), Conditions=limit, ExpiresIn=seconds)

        return {
            "kind": "presigned",
            "get": {key: await url(key) for key in reads},
            "post": {key: await post(key) for key in writes},
            "max_write_bytes": max_write_bytes,
            "expires_at": min(expires_at, time.time() + seconds),
        }

    # -- the Store interface ------------------------------------------------------------------

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        self._run(self._put(key, data))

    def get(self, key: str) -> bytes:
        return self._run(self._get(key))

    def exists(self, key: str) -> bool:
        return self._run(self._exists(key))

    def delete(self, key: str) -> None:
        self._run(self._delete(key))

    def delete_prefix(self, prefix: str) -> None:
        self._run(self._delete_prefix(prefix))

    def size(self, key: str) -> int:
        return self._run(self._size(key))

    async def asize(self, key: str) -> int:
        return await self._await(self._size(key))

    async def aput(self, key: str, data: bytes | bytearray | memoryview) -> None:
        await self._await(self._put(key, data))

    async def aget(self, key: str) -> bytes:
        return await self._await(self._get(key))

    async def aexists(self, key: str) -> bool:
        return await self._await(self._exists(key))

    async def adelete(self, key: str) -> None:
        await self._await(self._delete(key))

    def task_descriptor(self, reads: Sequence[str], writes: Sequence[str], expires_at: float, *,
                        max_write_bytes: int | None = None) -> dict[str, Any]:
        """Presigned GETs for `reads` and POSTs for `writes` (S3 refuses a body over `max_write_bytes`),
        valid until `expires_at`: no credentials leave."""
        return self._run(self._presigned(reads, writes, expires_at, max_write_bytes))

    def descriptor(self) -> dict[str, Any]:
        return {"kind": self.kind, "bucket": self.bucket, "prefix": self.prefix,
                "endpoint_url": self.endpoint_url, "region": self.region}

    def __repr__(self) -> str:
        return f"S3Store({self.bucket!r}, prefix={self.prefix!r}, endpoint_url={self.endpoint_url!r})"
