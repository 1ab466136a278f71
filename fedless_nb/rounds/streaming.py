"""A sum-based round aggregated as its updates arrive (reduction.py): each verified update is folded into
the strategy's weighted sum and its arrays are dropped, so the controller holds the sum and one update,
never the round's list. Rules that need every update (strategy.sum_spec() is None) keep the list.

The norm screening's round rule needs the whole round's distances, which the fold records; an update it
rejects after being added is read again from the store, checked to be the very arrays that were added
(a digest of them), and taken back out of the sum.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Sequence

import numpy as np

from ..reduction import SumTerm, WeightedSum, update_term
from ..store import Store, decode_arrays
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

    async def remove(self, store: Store, key: str, client_id: str) -> None:
        """Take a folded update back out of the sum, reading its arrays again from `key`."""
        if client_id not in self._added:
            return
        term, digest = self._added.pop(client_id)
        arrays = decode_arrays(await store.aget(key))
        if arrays_digest(arrays) != digest:
            raise RuntimeError(f"{client_id}'s update at {key} changed after it was verified and summed; "
                               "the round's sum cannot be corrected")
        self.total.remove(update_term(self.spec, arrays, self.current)[0], term)

    def aggregate(self, round_number: int) -> Weights:
        """The strategy's next model from the sum of the updates still in it."""
        distances = [self.distances[client_id] for client_id in self._added]
        return self.strategy.aggregate_total(round_number, self.current, self.total, distances)
