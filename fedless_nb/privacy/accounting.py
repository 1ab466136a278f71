"""Privacy accounting on the controller's side: epsilon of DP-SGD rounds, budgets and reports.

`ExampleLevelAccountant` turns each client's invocations (steps, sampling rate,
noise) into an epsilon at delta with dp-accounting (RDP, or PLD), and `PrivacyReport` states the
guarantee the way "How to DP-fy ML" (Ponomareva et al. 2023, Sec. 5.3) asks: epsilon at delta,
accountant, adjacency, sampling assumption, granularity, and the parameters behind it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import UserError

ACCOUNTANTS = ("rdp", "pld")


class PrivacyBudgetExhausted(UserError):
    """The next round would spend more privacy than `target_epsilon` allows; the run stops cleanly."""


@dataclass(frozen=True)
class DpRound:
    """One DP-SGD invocation of a client: `steps` Poisson-sampled Gaussian steps at `sampling_rate`.

    With microbatches of more than one example, add-or-remove-one changes a microbatch's gradient
    by up to twice the clip norm, so the effective noise multiplier is halved (as tensorflow-privacy's
    compute_dp_sgd_privacy_statement does, "How to DP-fy ML" Sec. 5.6).
    """

    steps: int
    sampling_rate: float
    noise_multiplier: float
    l2_norm_clip: float = 1.0
    microbatch_size: int = 1

    @property
    def effective_noise_multiplier(self) -> float:
        return self.noise_multiplier / 2 if self.microbatch_size > 1 else self.noise_multiplier

    @classmethod
    def from_result(cls, privacy: dict[str, Any]) -> "DpRound":
        return cls(int(privacy["steps"]), float(privacy["sampling_rate"]), float(privacy["noise_multiplier"]),
                   float(privacy.get("l2_norm_clip", 1.0)), int(privacy.get("microbatch_size", 1)))


def epsilon(rounds: Sequence[DpRound], delta: float, accountant: str = "rdp") -> float:
    """Epsilon at `delta` of composing every round's Poisson-subsampled Gaussian mechanism."""
    import dp_accounting

    if accountant not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {accountant!r}: choose one of {', '.join(ACCOUNTANTS)}")
    events = [
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(r.sampling_rate, dp_accounting.GaussianDpEvent(r.effective_noise_multiplier)),
            r.steps,
        )
        for r in rounds if r.steps > 0
    ]
    if not events:
        return 0.0
    if any(r.effective_noise_multiplier == 0 for r in rounds if r.steps > 0):
        return math.inf
    engine = dp_accounting.rdp.RdpAccountant() if accountant == "rdp" else dp_accounting.pld.PLDAccountant()
    return float(engine.compose(dp_accounting.ComposedDpEvent(events)).get_epsilon(delta))


@dataclass(frozen=True)
class PrivacyReport:
    """A DP guarantee with everything needed to interpret it ("How to DP-fy ML", Sec. 5.3)."""

    epsilon: float
    delta: float
    accountant: str
    granularity: str  # "example-level" | "client-level"
    adjacency: str = "add-or-remove-one"
    sampling: str = "Poisson (assumed; data is shuffled each epoch)"
    noise_multiplier: float = 0.0
    clip_norm: float = 0.0
    steps: int = 0
    sampling_rate: float = 0.0
    rounds: int = 0
    subject: str = ""

    def __str__(self) -> str:
        who = f" for {self.subject}" if self.subject else ""
        return (
            f"{self.granularity} DP{who}: epsilon = {self.epsilon:.3f} at delta = {self.delta:g} "
            f"({self.accountant.upper()} accountant, {self.adjacency} adjacency, sampling {self.sampling}); "
            f"noise multiplier {self.noise_multiplier:g}, clip norm {self.clip_norm:g}, "
            f"{self.steps} steps at sampling rate {self.sampling_rate:.4g} over {self.rounds} round(s)"
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ExampleLevelAccountant:
    """Per client, the DP-SGD rounds it took part in and their epsilon at `delta`.

    An observer of the controller's InvocationFinished events (their `privacy` field). `allows`
    answers whether a client may train once more without exceeding `target_epsilon`, projecting
    its next round from its last one, or for a client that has not trained yet from `planned`
    (its round as the run's settings and its number of examples make it).
    """

    delta: float
    accountant: str = "rdp"
    target_epsilon: float | None = None
    rounds: dict[str, list[DpRound]] = field(default_factory=dict)
    skipped: dict[int, list[str]] = field(default_factory=dict)
    planned: dict[str, DpRound] = field(default_factory=dict)

    def __call__(self, event: Any) -> None:
        privacy = getattr(event, "privacy", None)
        if getattr(event, "outcome", None) == "succeeded" and privacy:
            self.rounds.setdefault(event.client_id, []).append(DpRound.from_result(privacy))

    def epsilon(self, client_id: str) -> float:
        return epsilon(self.rounds.get(client_id, []), self.delta, self.accountant)

    def projected_epsilon(self, client_id: str) -> float | None:
        """Epsilon after one more round like its last (or its planned one); None when neither is known."""
        past = self.rounds.get(client_id, [])
        upcoming = past[-1] if past else self.planned.get(client_id)
        return None if upcoming is None else epsilon([*past, upcoming], self.delta, self.accountant)

    def allows(self, client_id: str) -> bool:
        if self.target_epsilon is None:
            return True
        projected = self.projected_epsilon(client_id)
        return projected is None or projected <= self.target_epsilon

    def round_metrics(self, round_number: int) -> dict[str, float]:
        """The run's worst-case and mean epsilon so far, for the history's "privacy" scope."""
        values = [self.epsilon(client_id) for client_id in self.rounds]
        metrics = {"epsilon_max": max(values), "epsilon_mean": sum(values) / len(values)} if values else {}
        metrics["delta"] = self.delta
        metrics["clients_skipped"] = float(len(self.skipped.get(round_number, [])))
        return metrics

    def report(self, client_id: str) -> PrivacyReport:
        past = self.rounds.get(client_id, [])
        last = past[-1] if past else DpRound(0, 0.0, 0.0)
        return PrivacyReport(
            epsilon=self.epsilon(client_id), delta=self.delta, accountant=self.accountant,
            granularity="example-level", noise_multiplier=last.noise_multiplier, clip_norm=last.l2_norm_clip,
            steps=sum(r.steps for r in past), sampling_rate=last.sampling_rate, rounds=len(past),
            subject=f"the examples of {client_id}",
        )

    def worst_case(self) -> PrivacyReport | None:
        """The report of the client with the largest epsilon (the run's guarantee for every example)."""
        if not self.rounds:
            return None
        return max((self.report(client_id) for client_id in self.rounds), key=lambda report: report.epsilon)
