"""Aggregation by a weighted sum as a pure, mergeable fold, shared by both sides (like wire.py).

Every sum-based strategy (FedAvg, FedProx, FedAvgM, FedAdam/Yogi/Adagrad, FedNova, central DP) turns
a round's updates into sum_i scale_i * term_i plus a few summed scalars, then finishes from that
alone. The fold keeps only the sum (float64), so the controller can add each update as it arrives
and drop it, and aggregator functions can sum shards of a round where the updates are stored; the
partial sums merge in any order and any tree shape. The strategies (strategies/) choose each
update's scale and weight; this module only adds, and it imports nothing of either side.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np

from .store.codec import decode_arrays, encode_arrays
from .wording import counted

_HEADER = struct.Struct("<I")
MAX_MASKED_LENGTH = 2**31  # a masked vector of more values would be an 8 GiB update


def partial_sum_limit(update_limit: int) -> int:
    """Bytes a partial sum may have when an update may have `update_limit`: the model in float64 (or a masked
    vector) and a small header. The aggregator merging it and the controller reading it both check it."""
    return 4 * update_limit


@dataclass(frozen=True)
class SumSpec:
    """What an update adds: its model ("model") or its change from the global model ("delta"), the change
    first clipped to L2 norm `clip` (None: unclipped); or, for a secure round, its masked vector of `length`
    uint32 values ("masked"), summed modulo 2^32 (MaskedSum). Travels in an aggregator's task as a dict."""

    term: Literal["model", "delta", "masked"] = "model"
    clip: float | None = None
    length: int | None = None  # a masked vector's values; only with term "masked"

    @classmethod
    def masked(cls, length: int) -> "SumSpec":
        return cls("masked", None, length)

    @property
    def is_masked(self) -> bool:
        return self.term == "masked"

    def to_wire(self) -> dict[str, Any]:
        return {"term": self.term, "clip": self.clip, "length": self.length}

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> "SumSpec":
        term, clip, length = wire.get("term"), wire.get("clip"), wire.get("length")
        weighted = term in ("model", "delta") and length is None and (
            clip is None or (isinstance(clip, (int, float)) and not isinstance(clip, bool) and clip > 0))
        masked = term == "masked" and clip is None and type(length) is int and 1 <= length <= MAX_MASKED_LENGTH
        if set(wire) - {"term", "clip", "length"} or not (weighted or masked):
            raise ValueError("a sum spec needs term model or delta with a positive clip or none, or term masked "
                             f"with a length of 1 to {MAX_MASKED_LENGTH} values, got {wire!r}")
        return cls(term, None if clip is None else float(clip), length)

    def empty_sum(self) -> "WeightedSum | MaskedSum":
        """The partial sum with nothing in it that this spec's updates add to."""
        return MaskedSum(self.length) if self.is_masked else WeightedSum()

    def read_sum(self, blob: bytes | bytearray | memoryview) -> "WeightedSum | MaskedSum":
        """A partial sum of this spec's updates from its bytes (ValueError when it is not one, whatever is wrong
        with it: it comes from an aggregator function, untrusted like any reply)."""
        try:
            return self._read_sum(blob)
        except (struct.error, KeyError, TypeError, AttributeError, RecursionError, OverflowError) as error:
            raise ValueError(f"not a partial sum: {type(error).__name__}") from None

    def _read_sum(self, blob: bytes | bytearray | memoryview) -> "WeightedSum | MaskedSum":
        if self.is_masked:
            total = MaskedSum.from_bytes(blob)
            if total.length != self.length:
                raise ValueError(f"a partial sum of {total.length} masked values, not {self.length}")
            return total
        return WeightedSum.from_bytes(blob)


@dataclass(frozen=True)
class SumTerm:
    """How one update counts: its term times `scale` goes into the sum, `weight` into the total weight,
    each of `extras` into the summed scalar of that name (FedNova's tau, for instance)."""

    scale: float
    weight: float
    extras: dict[str, float] = field(default_factory=dict)

    def negated(self) -> "SumTerm":
        """The term that takes this one back out of a sum (an update screening rejected after it was added)."""
        return SumTerm(-self.scale, -self.weight, {name: -value for name, value in self.extras.items()})


@dataclass
class WeightedSum:
    """sum_i scale_i * term_i per layer (float64), the total weight, how many updates, the summed extras."""

    sums: list[np.ndarray] | None = None
    weight: float = 0.0
    count: int = 0
    extras: dict[str, float] = field(default_factory=dict)

    def add(self, layers: Sequence[np.ndarray], term: SumTerm, count: int = 1) -> None:
        """Add `term.scale` * `layers` (float64 arrays), the term's weight and extras, and `count` updates."""
        if self.sums is None:
            self.sums = [np.zeros(np.shape(layer), np.float64) for layer in layers]
        for total, layer in zip(self.sums, layers):
            total += term.scale * layer
        self.weight += term.weight
        self.count += count
        self._add_extras(term.extras)

    def remove(self, layers: Sequence[np.ndarray], term: SumTerm) -> None:
        """Take back what add(layers, term) added."""
        self.add(layers, term.negated(), count=-1)

    def merge(self, other: "WeightedSum", sign: float = 1.0) -> "WeightedSum":
        """Add another partial sum into this one, or with `sign` -1 take it out (returns self)."""
        if other.sums is not None:
            if self.sums is None:
                self.sums = [np.zeros(np.shape(layer), np.float64) for layer in other.sums]
            elif [np.shape(layer) for layer in self.sums] != [np.shape(layer) for layer in other.sums]:
                raise ValueError("cannot merge partial sums whose layers have different shapes (NumPy would broadcast "
                                 "one into the other)")
            for total, layer in zip(self.sums, other.sums):
                total += sign * layer
        self.weight += sign * other.weight
        self.count += int(sign) * other.count
        self._add_extras(other.extras, sign)
        return self

    def _add_extras(self, extras: dict[str, float], sign: float = 1.0) -> None:
        for name, value in extras.items():
            self.extras[name] = self.extras.get(name, 0.0) + sign * float(value)

    def layers(self, like: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The summed layers, zeros shaped like `like` when nothing was added (an empty round)."""
        return self.sums if self.sums is not None else [np.zeros(np.shape(layer), np.float64) for layer in like]

    def to_bytes(self) -> bytes:
        """The partial sum as one blob: a JSON header (weight, count, extras) and the layers (store/codec.py)."""
        header = json.dumps({"weight": self.weight, "count": self.count, "extras": self.extras,
                             "empty": self.sums is None}).encode()
        return _HEADER.pack(len(header)) + header + bytes(encode_arrays(self.sums or []))

    @classmethod
    def from_bytes(cls, blob: bytes | bytearray | memoryview) -> "WeightedSum":
        (length,) = _HEADER.unpack_from(blob)
        header = json.loads(bytes(blob[_HEADER.size:_HEADER.size + length]))
        arrays = decode_arrays(memoryview(blob)[_HEADER.size + length:])
        if any(array.dtype != np.float64 for array in arrays):
            raise ValueError("a partial sum holds float64 layers only")
        return cls(None if header["empty"] else [np.array(array) for array in arrays], float(header["weight"]),
                   int(header["count"]), {str(k): float(v) for k, v in header["extras"].items()})


def partial_sum_problem(total: "WeightedSum | MaskedSum", count: int) -> str | None:
    """Why `total`, a partial sum read from an aggregator whose signed result says it holds `count` updates, cannot be
    that sum, or None: another count, layers without updates (or updates without layers), NaN or Inf in its layers,
    weight or extras. Merged unchecked, such a sum made the merge a NaN, a negative count or a broadcast layer."""
    if total.count != count:
        return f"the partial sum counts {counted(total.count, 'update')}; its aggregator's result says {count}"
    if isinstance(total, MaskedSum):
        return None
    if (total.sums is None) != (total.count == 0):
        return "the partial sum's layers do not match its count"
    scalars = [total.weight, *total.extras.values()]
    if not all(np.isfinite(scalars)) or not all(np.all(np.isfinite(layer)) for layer in total.sums or []):
        return "the partial sum has NaN or Inf values"
    return None


@dataclass
class MaskedSum:
    """Secure aggregation's masked vectors summed modulo 2^32 (uint32 wraps around), and how many: the masks
    cancel or are removed only from the whole round's sum, so this is a plain modular sum that merges in
    any order (rounds/secagg.py unmasks it)."""

    length: int
    total: np.ndarray | None = None  # None: zeros
    count: int = 0

    def __post_init__(self) -> None:
        if self.total is None:
            self.total = np.zeros(self.length, np.uint32)
        elif self.total.dtype != np.uint32 or self.total.shape != (self.length,):
            raise ValueError(f"a masked sum holds {self.length} uint32 values, got {self.total.dtype} {self.total.shape}")

    def add(self, arrays: Sequence[np.ndarray]) -> None:
        """Add one client's masked vector (the arrays of its blob); ValueError when it is not one of this length."""
        if problem := masked_vector_problem(arrays, self.length):
            raise ValueError(problem)
        self.total += arrays[0]
        self.count += 1

    def merge(self, other: "MaskedSum") -> "MaskedSum":
        """Add another partial masked sum into this one (returns self)."""
        if other.length != self.length:
            raise ValueError(f"cannot merge a masked sum of {other.length} values into one of {self.length}")
        self.total += other.total
        self.count += other.count
        return self

    def to_bytes(self) -> bytes:
        """A JSON header (count, length) and the sum (store/codec.py), like WeightedSum's."""
        header = json.dumps({"count": self.count, "length": self.length}).encode()
        return _HEADER.pack(len(header)) + header + bytes(encode_arrays([self.total]))

    @classmethod
    def from_bytes(cls, blob: bytes | bytearray | memoryview) -> "MaskedSum":
        (length,) = _HEADER.unpack_from(blob)
        header = json.loads(bytes(blob[_HEADER.size:_HEADER.size + length]))
        arrays = decode_arrays(memoryview(blob)[_HEADER.size + length:])
        size, count = header.get("length"), header.get("count")
        if type(size) is not int or type(count) is not int or count < 0:
            raise ValueError("a masked sum's header needs an integer length and count")
        if problem := masked_vector_problem(arrays, size):
            raise ValueError(f"not a masked sum: {problem}")
        return cls(size, np.array(arrays[0]), count)


def masked_vector_problem(arrays: Sequence[np.ndarray], length: int) -> str | None:
    """Why `arrays` (a decoded blob) is not one masked vector of `length` uint32 values, or None."""
    if len(arrays) != 1 or arrays[0].dtype != np.uint32 or arrays[0].shape != (length,):
        found = ", ".join(f"{a.dtype} {a.shape}" for a in arrays) or "nothing"
        return f"a masked vector of {length} uint32 values was expected, got {found}"
    return None


def update_problem(update: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> str | None:
    """Why `update` cannot be aggregated with `reference` (the global model), or None when it can."""
    got = [(tuple(a.shape), str(a.dtype)) for a in update]
    expected = [(tuple(w.shape), str(w.dtype)) for w in reference]
    if got != expected:
        wrong = next((i for i, (g, e) in enumerate(zip(got, expected)) if g != e), min(len(got), len(expected)))
        found = got[wrong] if wrong < len(got) else "nothing"
        wanted = expected[wrong] if wrong < len(expected) else "nothing"
        return (f"the update's shapes or dtypes do not match the global model: {len(got)} arrays for {len(expected)}, "
                f"array {wrong} is {found}, expected {wanted}")
    if problem := numbers_problem(update):
        return f"the update cannot be summed: {problem}"
    for index, array in enumerate(update):
        if not np.all(np.isfinite(array)):
            return f"the update has NaN or Inf values (array {index})"
    return None


def numbers_problem(arrays: Sequence[np.ndarray]) -> str | None:
    """Which of `arrays` (a decoded blob: the codec carries strings, complex numbers and dates too) holds something
    other than real numbers, in words; None when none does. Summing such arrays raised a TypeError (strings, a 500
    its provider retried) or dropped what float64 cannot hold (a complex number's imaginary part), silently."""
    for index, array in enumerate(arrays):
        if array.dtype.kind not in "biuf":
            return f"array {index} holds {array.dtype}, not real numbers"
    return None


def norm_problem(distance: float, bound: float) -> str | None:
    """Why an update at L2 `distance` from the global model breaks the absolute bound `bound` (0: off), or None;
    the line names the config key and the value that would accept the update, as a rejected update's reader must
    learn what to change."""
    if bound > 0 and (distance > bound or not np.isfinite(distance)):
        remedy = (f"to accept it, raise max_update_norm to {rounded_up(distance)}, or set it to 0 to turn this bound off"
                  if np.isfinite(distance) else "set max_update_norm to 0 to turn this bound off")
        return f"the update's L2 norm {distance:.4g} exceeds max_update_norm {bound:g} ({remedy})"
    return None


def rounded_up(value: float) -> str:
    """`value` rounded up to 3 significant digits: a setting of it accepts what a rejection names (9.849 -> 9.85,
    1234.5 -> 1240, 11.0 -> 11), where rounding to nearest could name one still too low."""
    exponent = math.floor(math.log10(value)) - 2 if value > 0 else 0
    digits = f"{math.ceil(value / 10**exponent) * 10**exponent:.{max(0, -exponent)}f}"
    return digits.rstrip("0").rstrip(".") if "." in digits else digits


def update_term(spec: SumSpec, update: Sequence[np.ndarray], current: Sequence[np.ndarray]) -> tuple[list[np.ndarray], float]:
    """The float64 layers `spec` adds for `update` trained from `current`, and the update's L2 distance from
    `current` (what the norm screening looks at), computed once for both."""
    delta = [np.asarray(u, np.float64) - np.asarray(c, np.float64) for u, c in zip(update, current)]
    distance = float(np.sqrt(sum(float(np.sum(np.square(d))) for d in delta)))
    if spec.term == "model":
        return [np.asarray(u, np.float64) for u in update], distance
    if spec.clip is not None and distance > spec.clip:
        delta = [d * (spec.clip / distance) for d in delta]
    return delta, distance


def in_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """`values` (an aggregate in float64) in a layer's `dtype`. An integer layer (a counter, such as a Normalization
    layer's `count`) gets the nearest integer: a plain cast truncates toward zero, so a mean of equal 7s that float
    arithmetic made 6.9999999 became 6, and a mean of 5.67 became 5; one past the dtype's range (a server momentum
    overshooting) gets its nearest end, where a cast wrapped (int8's -144 became 112)."""
    if np.dtype(dtype).kind in "iu":
        limits = np.iinfo(dtype)
        largest = float(limits.max) if limits.bits < 64 else np.nextafter(float(limits.max), 0.0)  # 2^63 - 1 rounds up
        values = np.clip(np.rint(values), limits.min, largest)
    return np.asarray(values).astype(dtype, copy=False)


def weighted_mean(total: WeightedSum, like: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The sum divided by its total weight, in the dtypes of `like` (the global model's layers)."""
    if total.sums is None or total.count <= 0:
        raise ValueError("a weighted mean needs at least one update")
    if total.weight <= 0:
        raise ValueError("a weighted mean needs a positive total weight")
    return [in_dtype(layer / total.weight, np.asarray(reference).dtype) for layer, reference in zip(total.sums, like)]
