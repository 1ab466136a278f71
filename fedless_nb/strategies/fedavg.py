"""FedAvg (McMahan et al. 2017): the sample-weighted mean of the client models.

Partial work (a client whose time budget ran out before its epochs ended) counts by `partial_work`:
"weight" scales its sample count by the share of its planned steps it took, "drop" leaves it out
(FedAvg as the FedProx paper runs it against stragglers), "accept" counts it as full work (FedProx).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..function.batching import local_steps
from ..reduction import SumSpec, SumTerm, WeightedSum, in_dtype, weighted_mean
from .base import ClientUpdate, RunContext, SumStrategy, Weights
from .options import require

PARTIAL_WORK = ("weight", "drop", "accept")


def fedavg(updates: Sequence[Sequence[np.ndarray]], weights: Sequence[float]) -> Weights:
    """Weighted mean of each layer over clients, accumulated in float64 and returned in the layers' dtype
    (integer layers rounded to the nearest integer: reduction.in_dtype)."""
    if not updates:
        raise ValueError("fedavg needs at least one update")
    total = float(np.sum(weights, dtype=np.float64))
    if total <= 0:
        raise ValueError("fedavg needs a positive total weight")
    layers = []
    for position, reference in enumerate(updates[0]):
        mean = np.zeros(reference.shape, dtype=np.float64)
        for update, weight in zip(updates, weights):
            mean += np.asarray(update[position], dtype=np.float64) * (float(weight) / total)
        layers.append(in_dtype(mean, reference.dtype))
    return layers


class FedAvg(SumStrategy):
    """Average the updates weighted by how many examples each client trained on (see `partial_work`)."""

    name = "fedavg"

    def __init__(self, partial_work: str = "weight") -> None:
        require(partial_work in PARTIAL_WORK, "partial_work",
                f"choose one of {', '.join(PARTIAL_WORK)}, got {partial_work!r}")
        self.partial_work = partial_work
        self.train: dict[str, Any] | None = None

    def bind(self, context: RunContext) -> None:
        self.train = context.train

    def sum_spec(self) -> SumSpec:
        return SumSpec("model")

    def sum_term(self, update: ClientUpdate) -> SumTerm | None:
        if update.partial and self.partial_work == "drop":
            return None
        weight = self.weight(update)
        return SumTerm(weight, weight)

    def aggregate_total(self, round_number: int, current: Weights, total: WeightedSum,
                        distances: Sequence[float]) -> Weights:
        if total.count == 0:  # every client stopped short and partial work is dropped: the model stays
            return [np.array(layer) for layer in current]
        return weighted_mean(total, current)

    def weight(self, update: ClientUpdate) -> float:
        """The update's weight: its sample count, scaled by its share of the planned steps under "weight"."""
        if not update.partial or self.partial_work == "accept" or update.steps is None:
            return float(update.num_examples)
        if self.train is None:
            raise RuntimeError("weighting partial work needs the run's train settings: call bind() before round 1")
        return update.num_examples * update.steps / local_steps(update.num_examples, self.train)
