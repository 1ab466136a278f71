"""Checks a client's update must pass before it may touch the global model.

One bad update (a bug, a diverged client, a poisoned one) must not corrupt a run, so every
update is checked on its own (shapes, dtypes, finite values) when it arrives, and against the
round's other updates (its norm) before aggregation. A rejected update is a failed invocation
with cause "rejected" and the reason in the history; its round goes on without it.

The norm rule is median-based, so a minority of outliers cannot move it: an update whose L2
distance from the current global model exceeds `ratio` times the median distance of the
round's updates is rejected. It needs at least 3 updates, since a median of two says nothing.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..strategies.base import ClientUpdate, Weights

MIN_UPDATES_FOR_NORM_RULE = 3


def update_problem(update: Weights, reference: Weights) -> str | None:
    """Why `update` cannot be aggregated with `reference` (the global model), or None when it can."""
    got = [(tuple(a.shape), str(a.dtype)) for a in update]
    expected = [(tuple(w.shape), str(w.dtype)) for w in reference]
    if got != expected:
        wrong = next((i for i, (g, e) in enumerate(zip(got, expected)) if g != e), min(len(got), len(expected)))
        found = got[wrong] if wrong < len(got) else "nothing"
        wanted = expected[wrong] if wrong < len(expected) else "nothing"
        return (f"the update's shapes or dtypes do not match the global model: {len(got)} arrays for {len(expected)}, "
                f"array {wrong} is {found}, expected {wanted}")
    for index, array in enumerate(update):
        if not np.all(np.isfinite(array)):
            return f"the update has NaN or Inf values (array {index})"
    return None


def update_distance(update: Weights, current: Weights) -> float:
    """L2 norm of the update's change to the global model, over all arrays."""
    return float(np.sqrt(sum(np.sum(np.square(u.astype(np.float64) - c)) for u, c in zip(update, current))))


def norm_outliers(updates: Sequence[ClientUpdate], current: Weights, ratio: float) -> dict[str, str]:
    """Client id -> reason, for each update whose distance exceeds `ratio` times the round's median (0: off)."""
    if ratio <= 0 or len(updates) < MIN_UPDATES_FOR_NORM_RULE:
        return {}
    distances = {update.client_id: update_distance(update.weights, current) for update in updates}
    median = float(np.median(list(distances.values())))
    limit = ratio * median
    return {
        client_id: f"the update's L2 norm {distance:.4g} is more than {ratio:g}x the round's median {median:.4g}"
        for client_id, distance in distances.items() if distance > limit
    }
