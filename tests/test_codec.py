import numpy as np
import pytest

from fedless_nb.store import CodecError, decode_arrays, encode_arrays


def test_float32_round_trip_is_bit_exact():
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((64, 128)).astype(np.float32), np.array([np.nan, np.inf, -0.0, 1e-45], np.float32),
              np.arange(10, dtype=np.int64), np.float32(3.5).reshape(()), np.zeros((0, 3), np.float32)]
    decoded = decode_arrays(encode_arrays(arrays))
    assert len(decoded) == len(arrays)
    for original, back in zip(arrays, decoded):
        assert back.dtype == original.dtype and back.shape == original.shape
        assert original.tobytes() == back.tobytes()


def test_decode_is_zero_copy_and_read_only():
    blob = bytes(encode_arrays([np.ones((1000,), np.float32)]))
    (array,) = decode_arrays(blob)
    assert not array.flags.owndata and not array.flags.writeable
    assert array.ctypes.data % 64 == (np.frombuffer(blob, np.uint8).ctypes.data) % 64  # aligned within the blob


def test_non_contiguous_input_is_encoded_by_value():
    matrix = np.arange(12, dtype=np.float32).reshape(3, 4)
    (back,) = decode_arrays(encode_arrays([matrix.T]))
    np.testing.assert_array_equal(back, matrix.T)


@pytest.mark.parametrize("blob", [b"", b"garbage-bytes", b"FLNBW1\xff\xff\x00\x00{"])
def test_foreign_bytes_are_refused_clearly(blob):
    with pytest.raises(CodecError):
        decode_arrays(blob)


def test_truncated_blob_is_refused():
    blob = bytes(encode_arrays([np.ones((100,), np.float32)]))
    with pytest.raises(CodecError, match="truncated"):
        decode_arrays(blob[:-8])


def test_object_arrays_are_refused():
    with pytest.raises(CodecError, match="dtype object"):
        encode_arrays([np.array(["a", None], dtype=object)])
