"""Client selection policies: which clients train in a round."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from ..wording import counted, noun_for

POLICIES = ("random", "fedlesscan")


class SelectionPolicy(ABC):
    """Chooses `count` of the available clients for a round."""

    @abstractmethod
    def select(self, round_number: int, client_ids: Sequence[str], count: int) -> list[str]:
        """The clients for `round_number`, in a deterministic order."""

    def admit(self, round_number: int, selected: Sequence[str], cuts: dict[str, float]) -> list[str]:
        """The selected clients that may train the round as its draw made it (`cuts`: each simulated straggler's
        budget_epochs); all of them by default."""
        return list(selected)

    def observe(self, event: Any) -> None:
        """Learn from the controller's events (invocation durations, failures); nothing by default."""

    def state(self) -> dict[str, Any]:
        """What the run's checkpoint keeps, so a resumed run selects as the uninterrupted one would; none by default."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore `state()` from a checkpoint."""


def _check_count(client_ids: Sequence[str], count: int) -> None:
    if not 0 < count <= len(client_ids):
        raise ValueError(f"cannot select {count} of {len(client_ids)} clients")


class RandomSelection(SelectionPolicy):
    """Uniform sampling without replacement, seeded per round so a resumed run picks the same clients."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def select(self, round_number: int, client_ids: Sequence[str], count: int) -> list[str]:
        _check_count(client_ids, count)
        rng = np.random.default_rng([self.seed, round_number])
        chosen = rng.choice(len(client_ids), size=count, replace=False)
        return [client_ids[index] for index in sorted(chosen)]


class PoissonSelection(SelectionPolicy):
    """Each client joins a round independently with probability `rate` (seeded per round), so round
    sizes vary and may be zero: the sampling central DP's Poisson accountant assumes. `count` is ignored."""

    def __init__(self, rate: float, seed: int = 0) -> None:
        self.rate, self.seed = rate, seed

    def select(self, round_number: int, client_ids: Sequence[str], count: int) -> list[str]:
        rng = np.random.default_rng([self.seed, round_number, 1])
        return [client_id for client_id, draw in zip(client_ids, rng.random(len(client_ids))) if draw < self.rate]


@dataclass
class _ClientRecord:
    invocations: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    last_round: int = 0
    last_failed_round: int = 0
    duration: float | None = None  # exponential moving average of successful invocations, seconds


class FedLesScanSelection(SelectionPolicy):
    """After FedLesScan (Elzohairy et al. 2022): prefer fast, reliable clients, keep exploring, back off failures.

    Learns from the controller's InvocationFinished events. Per round it takes, in order:
    clients never invoked (seeded random order: they must be measured), then the others ranked
    by expected duration (moving average, inflated by their failure rate) with a fairness bonus
    for rounds waited. A client whose last invocation failed rests for 2^(consecutive failures - 1)
    rounds; rested clients are used only when too few others remain.
    """

    def __init__(self, seed: int = 0, smoothing: float = 0.5, fairness: float = 0.1) -> None:
        self.seed, self.smoothing, self.fairness = seed, smoothing, fairness
        self.records: dict[str, _ClientRecord] = {}

    def observe(self, event: Any) -> None:
        outcome = getattr(event, "outcome", None)
        if outcome is None:
            return
        record = self.records.setdefault(event.client_id, _ClientRecord())
        record.invocations += 1
        record.last_round = max(record.last_round, event.round)
        if outcome == "succeeded":
            record.consecutive_failures = 0
            seconds = event.finished_at - event.started_at
            record.duration = seconds if record.duration is None else (
                self.smoothing * seconds + (1 - self.smoothing) * record.duration)
        else:
            record.failures += 1
            record.consecutive_failures += 1
            record.last_failed_round = event.round

    def state(self) -> dict[str, Any]:
        return {"records": {client_id: asdict(record) for client_id, record in self.records.items()}}

    def load_state(self, state: dict[str, Any]) -> None:
        self.records = {client_id: _ClientRecord(**record) for client_id, record in state.get("records", {}).items()}

    def resting(self, client_id: str, round_number: int) -> bool:
        record = self.records.get(client_id)
        if record is None or record.consecutive_failures == 0:
            return False
        return round_number - record.last_failed_round <= 2 ** (record.consecutive_failures - 1)

    def score(self, client_id: str, round_number: int) -> float:
        """Lower is better: expected seconds, inflated by the failure rate, deflated by rounds waited."""
        record = self.records[client_id]
        duration = record.duration if record.duration is not None else max(
            (r.duration for r in self.records.values() if r.duration is not None), default=1.0)
        failure_rate = record.failures / max(1, record.invocations)
        waited = max(0, round_number - record.last_round)
        return duration * (1 + failure_rate) / (1 + self.fairness * waited)

    def select(self, round_number: int, client_ids: Sequence[str], count: int) -> list[str]:
        _check_count(client_ids, count)
        rng = np.random.default_rng([self.seed, round_number])
        fresh = [client_ids[i] for i in rng.permutation(len(client_ids)) if client_ids[i] not in self.records]
        known = [c for c in client_ids if c in self.records]
        ready = sorted((c for c in known if not self.resting(c, round_number)), key=lambda c: (self.score(c, round_number), c))
        resting = sorted((c for c in known if self.resting(c, round_number)),
                         key=lambda c: (self.records[c].consecutive_failures, c))
        return (fresh + ready + resting)[:count]


BUDGET_NEXT_STEP = ("the run is done within its budget; to train longer, raise train.dp.target_epsilon or the noise "
                    "and start a new run")


class BudgetedSelection(SelectionPolicy):
    """Wraps a policy so that clients whose privacy budget the next round would exceed do not train.

    `select` leaves out the clients whose cheapest next round (a straggler's cut one, where a draw may cut
    them) would pass the target; `admit`, once the round's straggler draw is made, the selected clients whose
    round as drawn would: so each client is charged exactly what the round spends, and trains every round that
    fits. `stop_run`: end the run (PrivacyBudgetExhausted) as soon as any client is out of budget, or a round's
    draw would take a selected client past it, instead of training the others. The run also ends when no
    client has budget left, or a round's draw leaves none of its selected clients within it.

    `draw_from_all` (central DP): the inner policy draws from every client, and a drawn client out of budget
    sits the round out. Drawing `count` among only the clients with budget left would take each of them with
    a higher probability than the client-level accountant's q = clients_per_round / clients (all of them,
    once no more than `count` are left), so the epsilon it states would not hold.
    """

    def __init__(self, inner: SelectionPolicy, accountant: Any, stop_run: bool = False,
                 draw_from_all: bool = False) -> None:
        self.inner, self.accountant, self.stop_run, self.draw_from_all = inner, accountant, stop_run, draw_from_all

    def observe(self, event: Any) -> None:
        self.inner.observe(event)

    def state(self) -> dict[str, Any]:
        return self.inner.state()

    def load_state(self, state: dict[str, Any]) -> None:
        self.inner.load_state(state)

    def select(self, round_number: int, client_ids: Sequence[str], count: int) -> list[str]:
        from ..privacy.accounting import PrivacyBudgetExhausted

        allowed = [c for c in client_ids if self.accountant.allows(c)]
        exhausted = [c for c in client_ids if c not in allowed]
        self.accountant.skipped[round_number] = exhausted
        target = self.accountant.target_epsilon
        if exhausted and (self.stop_run or not allowed):
            raise PrivacyBudgetExhausted(
                f"privacy budget spent: round {round_number} would take {counted(len(exhausted), 'client')} past target_epsilon "
                f"{target:g}{self._reached(exhausted)}; {BUDGET_NEXT_STEP}")
        if self.draw_from_all:
            return [c for c in self.inner.select(round_number, client_ids, count) if c in allowed]
        return self.inner.select(round_number, allowed, min(count, len(allowed)))

    def admit(self, round_number: int, selected: Sequence[str], cuts: dict[str, float]) -> list[str]:
        from ..privacy.accounting import PrivacyBudgetExhausted

        admitted = [c for c in selected if self.accountant.fits(c, cuts.get(c))]
        over = [c for c in selected if c not in admitted]
        self.accountant.skipped.setdefault(round_number, []).extend(over)
        if over and (self.stop_run or not admitted):
            raise PrivacyBudgetExhausted(
                f"privacy budget spent: round {round_number}'s straggler draw leaves {len(over)} of its {len(selected)} "
                f"{noun_for(len(selected), 'client')} their full epochs, which would take them past target_epsilon "
                f"{self.accountant.target_epsilon:g}{self._reached(over)}; {BUDGET_NEXT_STEP}")
        return admitted

    def _reached(self, clients: Sequence[str]) -> str:
        """The epsilon the most charged of `clients` has reached, which the target stopped from growing."""
        return f" (epsilon reached: {max(self.accountant.epsilon(c) for c in clients):.3g})"


def make_selection(policy: str, seed: int) -> SelectionPolicy:
    if policy == "fedlesscan":
        return FedLesScanSelection(seed)
    if policy == "random":
        return RandomSelection(seed)
    raise ValueError(f"unknown selection policy {policy!r}: choose one of {', '.join(POLICIES)}")
