"""FedAvg (McMahan et al. 2017): the sample-weighted mean of the client models."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .base import ClientUpdate, Strategy, Weights


def fedavg(updates: Sequence[Sequence[np.ndarray]], weights: Sequence[float]) -> Weights:
    """Weighted mean of each layer over clients, accumulated in float64 and returned in the layers' dtype."""
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
        layers.append(mean.astype(reference.dtype, copy=False))
    return layers


class FedAvg(Strategy):
    """Average the updates weighted by how many examples each client trained on."""

    name = "fedavg"

    def aggregate(self, round_number: int, current: Weights, updates: Sequence[ClientUpdate]) -> Weights:
        return fedavg([update.weights for update in updates], [update.num_examples for update in updates])
