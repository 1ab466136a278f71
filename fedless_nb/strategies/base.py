"""The strategy interface, after Flower's: orchestration here, arithmetic in pure functions."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

Weights = list[np.ndarray]


@dataclass(frozen=True)
class RunContext:
    """What a strategy may need beyond the arrays: the run's store and settings (SCAFFOLD keeps state there)."""

    run_id: str
    store: Any
    train: dict[str, Any]
    clients: int
    clients_per_round: int


@dataclass(frozen=True)
class ClientUpdate:
    """One client's returned model, with the sample count it was trained on and the local steps it took
    (`partial`: fewer than planned, its time budget ran out; None steps: the planned ones)."""

    client_id: str
    weights: Weights
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    steps: int | None = None
    partial: bool = False


class Strategy(ABC):
    """Turns the current global model and the clients' updates into the next global model."""

    name: str

    def bind(self, context: RunContext) -> None:
        """Called once before round 1 with the run's context (nothing to do by default)."""

    def initialize(self, weights: Weights) -> Weights:
        """The global model before round 1 (a strategy may keep server-side state from it)."""
        return weights

    def configure_round(self, round_number: int, client_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Per-client overrides of the train settings for this round (none by default)."""
        return {}

    @abstractmethod
    def aggregate(self, round_number: int, current: Weights, updates: Sequence[ClientUpdate]) -> Weights:
        """The next global model; `updates` holds at least one update."""

    def round_metrics(self) -> dict[str, float]:
        """Figures about the last aggregation for the history (e.g. a central-DP epsilon); none by default."""
        return {}

    def state(self) -> dict[str, Any]:
        """Server-side state to checkpoint with the global weights (none by default)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what `state()` returned."""
