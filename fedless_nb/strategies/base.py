"""The strategy interface, after Flower's: orchestration here, arithmetic in pure functions."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..reduction import SumSpec, SumTerm, WeightedSum, update_term
from ..wording import counted

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

    def steps_taken(self, train: dict[str, Any]) -> int:
        """The local steps it took: the ones it reported, or the planned ones (`train`) where it reported none. A
        reported 0 stays 0 (a client always takes one step), which the rules that divide by the steps refuse."""
        from ..function.batching import local_steps

        return local_steps(self.num_examples, train) if self.steps is None else self.steps


@dataclass(frozen=True)
class FewestUpdates:
    """The fewest updates a rule aggregates as configured: below them its guarantee is void (Krum's, Bulyan's) or it
    is another rule (a trimmed mean that trims nothing is the plain mean). `rule` says so, naming the options;
    `remedy` is the option to change besides clients_per_round (None: there is none)."""

    count: int
    rule: str
    remedy: str | None = None

    def round_shortfall(self) -> str:
        """Why a round with fewer updates may not aggregate, naming what to change."""
        return f"fewer than {self.rule}; raise clients_per_round or round_repeats" + (
            f", {self.remedy}" if self.remedy else "")

    def planned_shortfall(self, clients_per_round: int) -> str:
        """Why a run planning `clients_per_round` (fewer) may not start, naming what to change."""
        return f"{self.rule}, got {counted(clients_per_round, 'client')} per round; raise clients_per_round" + (
            f" or {self.remedy}" if self.remedy else "")


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

    def screened_distance(self, update: ClientUpdate, distance: float) -> float:
        """The L2 `distance` of `update` from the global model as the norm screening judges it: as much as the update
        moves the aggregate, its own distance for every rule but FedNova's."""
        return distance

    def fewest_updates(self) -> FewestUpdates | None:
        """The fewest updates the rule aggregates, or None: any count (none keeps the model)."""
        return None

    def too_few_updates(self, count: int) -> str | None:
        """Why the rule cannot aggregate `count` updates, naming what to change, or None when it can. A round
        with too few runs again while repeats are left; a run planning too few per round is refused."""
        fewest = self.fewest_updates()
        return fewest.round_shortfall() if fewest is not None and count < fewest.count else None

    def sum_spec(self) -> SumSpec | None:
        """How a round reduces by a weighted sum (SumStrategy), or None: the rule needs every update at once
        (median, trimmed mean, Krum, Bulyan, SCAFFOLD), so the round's updates are held and aggregated centrally."""
        return None

    def round_metrics(self) -> dict[str, float]:
        """Figures about the last aggregation for the history (e.g. a central-DP epsilon); none by default."""
        return {}

    def state(self) -> dict[str, Any]:
        """Server-side state to checkpoint with the global weights (none by default)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what `state()` returned."""


class SumStrategy(Strategy):
    """A strategy that needs only a weighted sum of the round's updates (reduction.py): the controller, or
    aggregator functions over shards, fold each update into the sum as it comes (`sum_term` says how it
    counts), and `aggregate_total` finishes the round from the sum alone. `aggregate` is that fold over a list."""

    @abstractmethod
    def sum_spec(self) -> SumSpec:
        """What each update adds this round (its model or its clipped change)."""

    @abstractmethod
    def sum_term(self, update: ClientUpdate) -> SumTerm | None:
        """How `update` (its counts and progress; its arrays are not looked at) counts; None: it is left out."""

    @abstractmethod
    def aggregate_total(self, round_number: int, current: Weights, total: WeightedSum,
                        distances: Sequence[float]) -> Weights:
        """The next global model from the round's sum; `distances`: the summed updates' L2 distances from `current`."""

    def aggregate(self, round_number: int, current: Weights, updates: Sequence[ClientUpdate]) -> Weights:
        spec, total, distances = self.sum_spec(), WeightedSum(), []
        for update in updates:
            term = self.sum_term(update)
            if term is not None:
                layers, distance = update_term(spec, update.weights, current)
                total.add(layers, term)
                distances.append(distance)
        return self.aggregate_total(round_number, current, total, distances)
