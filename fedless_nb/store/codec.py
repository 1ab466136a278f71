"""Weights <-> bytes.

A blob is a small JSON header followed by each array's raw bytes, aligned to 64 bytes.
Decoding is zero-copy (`np.frombuffer` views into the blob), so reading a 100 MB model
costs no second 100 MB; encoding copies each array exactly once, into the blob.
Float32 (and every other fixed-size dtype) round-trips bit for bit.
"""

from __future__ import annotations

import json
import struct
from typing import Sequence

import numpy as np

MAGIC = b"FLNBW1"
_LENGTH = struct.Struct("<I")
_ALIGN = 64


class CodecError(ValueError):
    """The bytes are not a weights blob this codec wrote (truncated, corrupt or foreign)."""


def _aligned(offset: int) -> int:
    return (offset + _ALIGN - 1) // _ALIGN * _ALIGN


def encode_arrays(arrays: Sequence[np.ndarray]) -> bytearray:
    """Pack arrays into one blob (bytes-like, no final copy); object and structured dtypes are refused."""
    arrays = [np.asarray(a) for a in arrays]
    entries, end = [], 0
    for index, array in enumerate(arrays):
        if array.dtype.hasobject or array.dtype.fields is not None:
            raise CodecError(f"array {index} has dtype {array.dtype}; only plain numeric arrays can be sent")
        entries.append({"dtype": array.dtype.str, "shape": list(array.shape), "offset": _aligned(end)})
        end = entries[-1]["offset"] + array.nbytes
    header = json.dumps(entries, separators=(",", ":")).encode()
    start = _aligned(len(MAGIC) + _LENGTH.size + len(header))
    blob = bytearray(start + end)  # no padding after the last array, so truncation is always detected
    blob[: len(MAGIC)] = MAGIC
    _LENGTH.pack_into(blob, len(MAGIC), len(header))
    blob[len(MAGIC) + _LENGTH.size : len(MAGIC) + _LENGTH.size + len(header)] = header
    payload = np.frombuffer(blob, dtype=np.uint8)  # a writable view: arrays are copied straight in
    for entry, array in zip(entries, arrays):
        position = start + entry["offset"]
        payload[position : position + array.nbytes] = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    return blob


def decode_arrays(blob: bytes | bytearray | memoryview) -> list[np.ndarray]:
    """Read-only array views into `blob` (copy one before mutating it in place)."""
    view = memoryview(blob)
    prefix = len(MAGIC) + _LENGTH.size
    if len(view) < prefix or bytes(view[: len(MAGIC)]) != MAGIC:
        raise CodecError("not a fedless_nb weights blob (bad magic bytes)")
    (header_length,) = _LENGTH.unpack_from(view, len(MAGIC))
    try:
        entries = json.loads(bytes(view[prefix : prefix + header_length]))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CodecError(f"weights blob header is corrupt: {error}") from None
    start = _aligned(prefix + header_length)
    arrays = []
    for index, entry in enumerate(entries):
        dtype = np.dtype(entry["dtype"])
        count = int(np.prod(entry["shape"], dtype=np.int64))
        end = start + entry["offset"] + count * dtype.itemsize
        if end > len(view):
            raise CodecError(f"weights blob is truncated: array {index} needs {end} bytes, blob has {len(view)}")
        array = np.frombuffer(view, dtype=dtype, count=count, offset=start + entry["offset"])
        arrays.append(array.reshape(entry["shape"]))
    return arrays
