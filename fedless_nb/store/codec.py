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
    """Read-only array views into `blob` (copy one before mutating it in place). A blob is untrusted input
    (a client writes its update): every malformed header is a CodecError, never another exception."""
    view = memoryview(blob)
    prefix = len(MAGIC) + _LENGTH.size
    if len(view) < prefix or bytes(view[: len(MAGIC)]) != MAGIC:
        raise CodecError("not a fedless_nb weights blob (bad magic bytes)")
    (header_length,) = _LENGTH.unpack_from(view, len(MAGIC))
    if prefix + header_length > len(view):
        raise CodecError(f"weights blob is truncated: its header needs {prefix + header_length} bytes, "
                         f"blob has {len(view)}")
    try:
        entries = json.loads(bytes(view[prefix : prefix + header_length]))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise CodecError(f"weights blob header is corrupt: {type(error).__name__}") from None
    if not isinstance(entries, list):
        raise CodecError("weights blob header is corrupt: not a list of arrays")
    start = _aligned(prefix + header_length)
    return [_array(view, start, index, entry) for index, entry in enumerate(entries)]


def _array(view: memoryview, start: int, index: int, entry: object) -> np.ndarray:
    """Array `index` of the blob, if its header entry is a plain dtype, a shape of sizes >= 0 and an offset
    inside the blob (a view, never a copy: a blob claiming a huge array is refused before any memory is used)."""
    try:
        dtype, shape, offset = np.dtype(entry["dtype"]), entry["shape"], entry["offset"]  # type: ignore[index]
    except (TypeError, KeyError, ValueError) as error:
        raise CodecError(f"weights blob header is corrupt: array {index}: {type(error).__name__}") from None
    if (dtype.hasobject or dtype.fields is not None or dtype.itemsize == 0 or not isinstance(shape, list)
            or not all(type(size) is int and size >= 0 for size in shape) or type(offset) is not int or offset < 0):
        raise CodecError(f"weights blob header is corrupt: array {index} is not a plain array at an offset")
    count = 1
    for size in shape:  # Python ints: a product of huge sizes cannot wrap around
        count *= size
    end = start + offset + count * dtype.itemsize
    if end > len(view):
        raise CodecError(f"weights blob is truncated: array {index} needs {end} bytes, blob has {len(view)}")
    return np.frombuffer(view, dtype=dtype, count=count, offset=start + offset).reshape(shape)
