"""Simulated systems heterogeneity (the FedProx paper's stragglers): in every round a fixed share of the
selected clients manages only part of its local epochs, as if its device were slower than the others.

A straggler gets `budget_epochs` in its task; the function stops there and returns its partial work,
exactly as it does when its real time budget runs out, so strategies meet both the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


@dataclass(frozen=True)
class Stragglers:
    """`fraction` of each round's selected clients straggle, each managing `work` of its epochs."""

    fraction: float
    work: float
    seed: int = 0

    def overrides(self, round_number: int, selected: Sequence[str], epochs: int) -> dict[str, dict[str, Any]]:
        """The train settings of this round's stragglers, drawn under the run's seed and the round."""
        count = round(self.fraction * len(selected))
        chosen = np.random.default_rng([self.seed, round_number]).choice(len(selected), size=count, replace=False)
        return {selected[int(index)]: {"budget_epochs": self.work * epochs} for index in sorted(chosen)}

    def possible_cut(self, most_selected: int, epochs: int) -> float | None:
        """The cut (budget_epochs) a round's draw may give a selected client, or None when `fraction` of every
        selection of up to `most_selected` clients rounds to no straggler (e.g. 0.4 of 1)."""
        if any(round(self.fraction * count) > 0 for count in range(1, most_selected + 1)):
            return self.work * epochs
        return None
