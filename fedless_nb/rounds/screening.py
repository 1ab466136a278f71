"""Checks a client's update must pass before it may touch the global model.

One bad update (a bug, a diverged client, a poisoned one) must not corrupt a run, so every
update is checked on its own (shapes, dtypes, finite values) when it arrives, and against the
round's other updates (its norm) before aggregation. A rejected update is a failed invocation
with cause "rejected" and the reason in the history; its round goes on without it.

The norm rules look at an update's L2 distance from the global model it trained from, and work
at any round size (`NormScreen`):
- an absolute bound (`max_update_norm`), which holds from the first round on;
- `ratio` times the median distance of the round's updates, from 3 updates on (a median of two
  says nothing);
- `ratio` times the median distance of the updates accepted in the last `window` rounds, so a
  round of 1 or 2 updates (and FedBuff's buffers) is screened too. Medians, so a minority of
  outliers cannot move them; an attacker who is the majority of the recent updates can raise
  the bound by at most `ratio` per window, and the absolute bound still caps it.
  A round of 3 or more updates that this rule would reject entirely, though they agree among themselves
  (the round's own median rule keeps them), shows that the updates' scale has moved (more local steps once
  the functions are warm, a learning-rate phase): the window learns only from accepted updates, so it
  would reject every later round too, and the model would stop without a word. Such a round is screened by
  the other two rules alone, and its accepted updates move the window. Only a round whose every client
  agrees on the new scale does so, and every client of it would have to be an attacker.
"""

from __future__ import annotations

from collections import deque
from typing import Sequence

import numpy as np

from ..reduction import norm_problem, rounded_up, update_problem
from ..strategies.base import ClientUpdate, Weights

__all__ = ["NormScreen", "norm_outliers", "update_distance", "update_problem"]

MIN_UPDATES_FOR_NORM_RULE = 3


def update_distance(update: Weights, current: Weights) -> float:
    """L2 norm of the update's change to the global model, over all arrays."""
    return float(np.sqrt(sum(np.sum(np.square(u.astype(np.float64) - c)) for u, c in zip(update, current))))


def norm_outliers(updates: Sequence[ClientUpdate], current: Weights, ratio: float) -> dict[str, str]:
    """Client id -> reason, for each update whose distance exceeds `ratio` times the round's median (0: off)."""
    return _round_outliers({update.client_id: update_distance(update.weights, current) for update in updates}, ratio)


def _round_outliers(distances: dict[str, float], ratio: float) -> dict[str, str]:
    if ratio <= 0 or len(distances) < MIN_UPDATES_FOR_NORM_RULE:
        return {}
    median = float(np.median(list(distances.values())))
    return {
        client_id: f"the update's L2 norm {distance:.4g} is more than {ratio:g}x the round's median {median:.4g} "
                   f"({_ratio_remedy(ratio, distance, median)})"
        for client_id, distance in distances.items() if distance > ratio * median
    }


def _ratio_remedy(ratio: float, distance: float, median: float) -> str:
    """What a user who trusts the update changes: the config key `max_norm_ratio` (the `ratio` of both median rules), and
    the value from which it would have been accepted."""
    if median > 0 and np.isfinite(distance):
        return (f"to accept it, raise max_norm_ratio from {ratio:g} to {rounded_up(distance / median)}, or set it to 0 "
                "to turn the median rules off")
    return f"max_norm_ratio is {ratio:g}: set it to 0 to turn the median rules off"


class NormScreen:
    """The three norm rules of the module docstring, with the memory of recent rounds they need."""

    def __init__(self, ratio: float, absolute: float, window: int = 5) -> None:
        self.ratio, self.absolute = ratio, absolute
        self._recent: deque[list[float]] = deque(maxlen=window)  # accepted distances, one list per round

    def outliers(self, distances: dict[str, float]) -> dict[str, str]:
        """Client id -> reason for the round's updates given as distances; remembers the accepted ones."""
        reasons = {client_id: problem for client_id, distance in distances.items()
                   if (problem := norm_problem(distance, self.absolute))}
        round_outliers = _round_outliers(distances, self.ratio)
        recent = [distance for distances_of_round in self._recent for distance in distances_of_round]
        if self.ratio > 0 and recent:
            limit = self.ratio * float(np.median(recent))
            stale = {client_id: f"the update's L2 norm {distance:.4g} is more than {self.ratio:g}x the median of the "
                                f"recent rounds' updates {limit / self.ratio:.4g} "
                                f"({_ratio_remedy(self.ratio, distance, limit / self.ratio)})"
                     for client_id, distance in distances.items() if distance > limit and client_id not in reasons}
            moved = (len(distances) >= MIN_UPDATES_FOR_NORM_RULE and len(stale) + len(reasons) == len(distances)
                     and set(stale) - set(round_outliers))
            reasons.update({} if moved else stale)
        reasons.update({client_id: reason for client_id, reason in round_outliers.items() if client_id not in reasons})
        accepted = [distance for client_id, distance in distances.items() if client_id not in reasons]
        if accepted:
            self._recent.append(accepted)
        return reasons

    def state(self) -> dict[str, list[list[float]]]:
        """The recent rounds' accepted distances, for the run's checkpoint: a resumed run that started with an empty
        window screened its rounds of 1 or 2 updates by the absolute bound alone until the window filled again."""
        return {"recent": [list(distances) for distances in self._recent]}

    def load_state(self, state: dict[str, list[list[float]]]) -> None:
        """Restore `state` (an older checkpoint's, without one: an empty window, as before)."""
        self._recent.clear()
        self._recent.extend([float(distance) for distance in distances] for distances in state.get("recent", []))
