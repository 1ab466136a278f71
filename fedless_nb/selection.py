"""Client selection policies: which clients train in a round."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np


class SelectionPolicy(ABC):
    """Chooses `count` of the available clients for a round."""

    @abstractmethod
    def select(self, round_number: int, client_ids: Sequence[str], count: int) -> list[str]:
        """The clients for `round_number`, in a deterministic order."""


class RandomSelection(SelectionPolicy):
    """Uniform sampling without replacement, seeded per round so a resumed run picks the same clients."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def select(self, round_number: int, client_ids: Sequence[str], count: int) -> list[str]:
        if not 0 < count <= len(client_ids):
            raise ValueError(f"cannot select {count} of {len(client_ids)} clients")
        rng = np.random.default_rng([self.seed, round_number])
        chosen = rng.choice(len(client_ids), size=count, replace=False)
        return [client_ids[index] for index in sorted(chosen)]
