"""A sum-based round aggregated as its updates arrive (reduction.py): each verified update is folded into
the strategy's weighted sum and its arrays are dropped, so the controller holds the sum and one update,
never the round's list. Rules that need every update (strategy.sum_spec() is None) keep the list.

The norm screening's round rule needs the whole round's distances, which the fold records; an update it
rejects after being added is read again from the store, checked to be the very arrays that were added
(a digest of them), and taken back out of the sum. Its client can still write its update key until the
deadline: when the bytes changed (or are gone), the difference cannot be taken out, so the sum is built
again from the updates kept, each read again and checked against its digest; any that changed too is left out.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..reduction import SumTerm, WeightedSum, update_term
from ..store import CodecError, Store, StoreError, decode_arrays
from ..strategies.base import ClientUpdate, SumStrategy, Weights


def arrays_digest(arrays: Sequence[np.ndarray]) -> str:
    """SHA-256 over every array's dtype, shape and bytes: the same arrays, the same digest."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.data)
    return digest.hexdigest()


class StreamingRound:
    """One run of a round: the strategy's weighted sum over the updates folded so far, and their distances."""

    def __init__(self, strategy: SumStrategy, current: Weights) -> None:
        self.strategy, self.current, self.spec = strategy, current, strategy.sum_spec()
        self.total = WeightedSum()
        self.distances: dict[str, float] = {}  # every folded update's L2 distance from `current`
        self._added: dict[str, tuple[SumTerm, str]] = {}  # client id -> how it counted, digest of its arrays

    def add(self, update: ClientUpdate) -> ClientUpdate:
        """Fold `update` into the sum; returns it without its arrays (its counts and metrics stay)."""
        layers, distance = update_term(self.spec, update.weights, self.current)
        self.distances[update.client_id] = distance
        term = self.strategy.sum_term(update)
        if term is not None:
            self.total.add(layers, term)
            self._added[update.client_id] = (term, arrays_digest(update.weights))
        return replace(update, weights=[])

    async def remove(self, store: Store, keys: Mapping[str, str], rejected: Iterable[str]) -> set[str]:
        """Take the `rejected` updates back out of the sum, reading each again at `keys[client id]`; returns the
        kept clients left out as well because their bytes changed after they were summed (module docstring)."""
        removed = [(client_id, *self._added.pop(client_id)) for client_id in rejected if client_id in self._added]
        for client_id, term, digest in removed:
            arrays = await self._read(store, keys[client_id])
            if arrays is None or arrays_digest(arrays) != digest:
                return await self._rebuild(store, keys)
            self.total.remove(update_term(self.spec, arrays, self.current)[0], term)
        return set()

    async def _rebuild(self, store: Store, keys: Mapping[str, str]) -> set[str]:
        """The sum again from the updates still in it whose bytes are the ones summed; returns those that are not."""
        self.total, changed = WeightedSum(), set()
        for client_id, (term, digest) in list(self._added.items()):
            arrays = await self._read(store, keys[client_id])
            if arrays is None or arrays_digest(arrays) != digest:
                del self._added[client_id]
                changed.add(client_id)
            else:
                self.total.add(update_term(self.spec, arrays, self.current)[0], term)
        return changed

    @staticmethod
    async def _read(store: Store, key: str) -> list[np.ndarray] | None:
        """The arrays at `key`, or None when they are gone or no longer a weights blob."""
        try:
            return decode_arrays(await store.aget(key))
        except (StoreError, CodecError):
            return None

    def aggregate(self, round_number: int) -> Weights:
        """The strategy's next model from the sum of the updates still in it."""
        distances = [self.distances[client_id] for client_id in self._added]
        return self.strategy.aggregate_total(round_number, self.current, self.total, distances)
