"""FedNova (Wang et al. 2020): normalize each client's update by its local steps before averaging.

FedAvg over clients that took different numbers of local steps converges to the optimum of an
objective weighted by those steps, not the true one. FedNova divides each client's change by the
norm of its local solver's step coefficients a_i (its steps, for plain SGD) and rescales the
average by their sample-weighted mean tau_eff, which removes that bias. The arithmetic is
`aggregate.fednova`; the coefficients assume the plain SGD client optimizer (optional proximal term).
"""

from __future__ import annotations

from typing import Any, Sequence

from ..reduction import SumSpec, SumTerm, WeightedSum
from ..function.batching import local_steps
from .aggregate import add_scaled, local_solver_norm
from .base import ClientUpdate, RunContext, SumStrategy, Weights
from .options import require


class FedNova(SumStrategy):
    """`proximal_mu` > 0 runs FedProx's local objective under FedNova's normalization (the paper's FedNova-Prox).

    As a weighted sum: each change y_i - x counts -n_i / ||a_i||_1, each weight n_i, and the extra "tau"
    sums n_i ||a_i||_1; the new model is x - (tau / n) * sum / n, `aggregate.fednova`'s step (eq. 6)."""

    name = "fednova"

    def __init__(self, proximal_mu: float = 0.0) -> None:
        require(proximal_mu >= 0, "proximal_mu", f"must be >= 0, got {proximal_mu}")
        self.proximal_mu = float(proximal_mu)
        self.train: dict[str, Any] | None = None

    def bind(self, context: RunContext) -> None:
        self.train = context.train

    def configure_round(self, round_number: int, client_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {client_id: {"proximal_mu": self.proximal_mu} for client_id in client_ids} if self.proximal_mu else {}

    def sum_spec(self) -> SumSpec:
        return SumSpec("delta")

    def sum_term(self, update: ClientUpdate) -> SumTerm | None:
        if self.train is None:
            raise RuntimeError("FedNova needs the run's train settings: call bind() before round 1")
        norm = local_solver_norm(update.steps_taken(self.train), float(self.train["learning_rate"]), self.proximal_mu)
        examples = float(update.num_examples)
        return SumTerm(-examples / norm, examples, {"tau": examples * norm})

    def screened_distance(self, update: ClientUpdate, distance: float) -> float:
        """`distance` scaled from the steps the update claims to the planned ones: FedNova divides each change by its
        steps' solver norm, so a compromised client claiming partial work of 1 step of a planned 50 made a change
        within the screening's bounds count 50 times over; scaled so, it is judged by what it adds to the aggregate
        (an honest straggler's shorter change, by what it would have been at the planned steps)."""
        if self.train is None:
            raise RuntimeError("FedNova needs the run's train settings: call bind() before round 1")
        learning_rate = float(self.train["learning_rate"])
        planned = local_solver_norm(local_steps(update.num_examples, self.train), learning_rate, self.proximal_mu)
        return distance * planned / local_solver_norm(update.steps_taken(self.train), learning_rate, self.proximal_mu)

    def aggregate_total(self, round_number: int, current: Weights, total: WeightedSum,
                        distances: Sequence[float]) -> Weights:
        if total.count <= 0 or total.weight <= 0:
            raise ValueError("fednova needs at least one update")
        tau_effective = total.extras["tau"] / total.weight
        return add_scaled(current, total.layers(current), -tau_effective / total.weight)
