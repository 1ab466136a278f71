"""Central, client-level DP on the server (DP-FedAvg, McMahan et al. 2018), with optional adaptive
clipping (Andrew et al. 2021), as a wrapper around a strategy.

Each round: every client's update (its model minus the global one) is clipped to L2 norm C, the
clipped updates are summed, Gaussian noise of std z * C is added and the sum is divided by the
expected number of clients per round. The noised average goes to the wrapped strategy as one
update, so FedAvgM / FedAdam / FedYogi / FedAdagrad run their server optimizer on it
(post-processing keeps the guarantee). With adaptive clipping C follows the `target_quantile` of the
update norms through a noised count of unclipped updates; the noise is split so the whole round
still has noise multiplier z (Andrew et al., Sec. 3.1).

Against Flower's DifferentialPrivacyServerSide{Fixed,Adaptive}Clipping (flwr 1.23, checked by
bench/check_against_flower.py): the same clipping, the same noise std z C / m and the same update noise
multiplier; with equal sample counts, every sampled client answering and FedAvg inside, the same model.
On purpose, because the noise must match the sensitivity it protects: (1) each clipped update counts
1 / clients_per_round, where Flower's inner FedAvg weights the clipped models by sample count; (2) the
noise goes on the clipped mean before the inner server optimizer (post-processing), where Flower noises
the inner strategy's output; (3) adaptive clipping counts the updates *not* clipped against
`target_quantile` (Andrew et al.; TF Privacy's target_unclipped_quantile): Flower counts the clipped ones
against its target_clipped_quantile with the same sign, which moves C away from its target (its log-step
is exactly the negative of ours at target_clipped_quantile = 1 - target_quantile); (4) a round's noise uses
the clip norm its updates were clipped to, Flower's the norm after that round's update; (5) the default
clipped_count_stddev (see bind). A zero update and a 0-d layer are clipped here; Flower raises
ZeroDivisionError on the first and leaves the second unclipped.

The client-level accountant accounts the selection that actually runs (`sampling`): "poisson" (the
controller's PoissonSelection takes each client with probability q = clients_per_round / clients,
so round sizes vary and an empty round still adds its noise) as a Poisson-subsampled Gaussian per
round under add-or-remove-one adjacency; "fixed" (exactly clients_per_round clients drawn uniformly)
as sampling without replacement under replace-one adjacency, where one client's change moves the
clipped sum by up to 2C (RDP accountant only). One incremental ledger (privacy/accounting.py).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ..privacy.accounting import DpRound, PrivacyLedger, PrivacyReport, warn_if_no_noise, warn_if_weak_delta
from .aggregate import add_scaled, clip_to_norm, subtract
from ..reduction import SumSpec, SumTerm, WeightedSum
from .base import ClientUpdate, RunContext, Strategy, SumStrategy, Weights
from .options import require

CENTRAL_DP_STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad")
CLIENT_SAMPLINGS = ("poisson", "fixed")


def clipped_noised_mean(
    current: Sequence[np.ndarray], models: Sequence[Sequence[np.ndarray]], clip_norm: float,
    noise_stddev: float, expected_clients: float, rng: np.random.Generator,
) -> tuple[list[np.ndarray], list[float]]:
    """current + (sum of updates clipped to clip_norm + N(0, noise_stddev^2)) / expected_clients; and the norms."""
    total = [np.zeros(np.shape(layer), np.float64) for layer in current]
    norms = []
    for model in models:
        clipped, norm = clip_to_norm(subtract(model, current), clip_norm)
        norms.append(norm)
        total = [t + c for t, c in zip(total, clipped)]
    return noised_mean(current, total, noise_stddev, expected_clients, rng), norms


def secret_noise_rng() -> np.random.Generator:
    """A generator seeded from the operating system's entropy. DP noise must be secret: noise drawn from the
    run's seed (in its config and history) can be drawn again by anyone who reads them and subtracted."""
    return np.random.default_rng()


def noised_mean(current: Sequence[np.ndarray], clipped_sum: Sequence[np.ndarray], noise_stddev: float,
                expected_clients: float, rng: np.random.Generator) -> list[np.ndarray]:
    """current + (clipped_sum + N(0, noise_stddev^2)) / expected_clients."""
    noised = [t + rng.normal(0.0, noise_stddev, size=np.shape(t)) for t in clipped_sum]
    return add_scaled(current, noised, 1.0 / expected_clients)


def adapted_clip_norm(
    clip_norm: float, norms: Sequence[float], target_quantile: float, learning_rate: float,
    count_stddev: float, expected_clients: float, rng: np.random.Generator,
) -> float:
    """Geometric update of Andrew et al.: C * exp(-lr * (noised fraction of norms <= C - target quantile)).

    As tensorflow-privacy's QuantileEstimatorQuery does, each update counts +1/2 (unclipped) or -1/2, so
    one client moves the noised count by at most 1/2 (the sensitivity behind Theorem 1's 2 * count_stddev),
    and the count is divided by the expected number of clients, which is public: the round's realized
    number of updates is not (Poisson selection keeps it private). The fraction is kept in [0, 1], as there."""
    centered = sum(0.5 if norm <= clip_norm else -0.5 for norm in norms) + rng.normal(0.0, count_stddev)
    unclipped_fraction = min(1.0, max(0.0, centered / expected_clients + 0.5))
    return clip_norm * math.exp(-learning_rate * (unclipped_fraction - target_quantile))


def update_noise_multiplier(noise_multiplier: float, count_stddev: float) -> float:
    """The updates' share of noise multiplier z when the clipped count has noise std count_stddev:
    (z^-2 - (2 count_stddev)^-2)^-1/2 (Andrew et al. 2021, Theorem 1)."""
    if noise_multiplier == 0:
        return 0.0
    remainder = noise_multiplier ** -2 - (2 * count_stddev) ** -2
    if remainder <= 0:
        raise ValueError(f"clipped_count_stddev: must exceed noise_multiplier / 2 ({noise_multiplier / 2:g}), "
                         f"got {count_stddev:g}")
    return remainder ** -0.5


class CentralDP(SumStrategy):
    """Wraps `inner` (one of CENTRAL_DP_STRATEGIES) with client-level DP; see the module docstring. As a
    weighted sum: every update adds its change clipped to `clip_norm`, counted once; the noise comes after."""

    def __init__(
        self, inner: Strategy, *, noise_multiplier: float, clip_norm: float, adaptive: bool = False,
        target_quantile: float = 0.5, clip_learning_rate: float = 0.2, clipped_count_stddev: float | None = None,
        delta: float = 1e-5, accountant: str = "rdp", sampling: str = "poisson",
    ) -> None:
        require(noise_multiplier >= 0, "noise_multiplier", f"must be >= 0, got {noise_multiplier}")
        require(clip_norm > 0, "clip_norm", f"must be > 0, got {clip_norm}")
        self.inner, self.name = inner, f"central_dp({inner.name})"
        self.noise_multiplier, self.clip_norm, self.adaptive = float(noise_multiplier), float(clip_norm), adaptive
        self.target_quantile, self.clip_learning_rate = target_quantile, clip_learning_rate
        self.clipped_count_stddev, self.delta, self.accountant = clipped_count_stddev, delta, accountant
        require(sampling in CLIENT_SAMPLINGS, "sampling", f"must be one of {', '.join(CLIENT_SAMPLINGS)}, got {sampling!r}")
        self.sampling, self.population = sampling, 1
        self.sampling_rate, self.expected_clients, self.rounds = 1.0, 1, 0
        self.ledger = PrivacyLedger(delta, accountant)
        self.last: dict[str, float] = {}

    def bind(self, context: RunContext) -> None:
        self.inner.bind(context)
        self.expected_clients = context.clients_per_round
        self.sampling_rate = context.clients_per_round / context.clients
        self.population = context.clients
        warn_if_weak_delta(self.delta, context.clients, "central_dp.delta", "client")
        warn_if_no_noise(self.noise_multiplier, "central_dp.noise_multiplier")
        if self.adaptive and self.clipped_count_stddev is None:
            # Andrew et al. (and Flower) take expected clients / 20; where that is below z, Flower would raise or
            # multiply the updates' noise without bound, so z: the updates keep at most 1.155 z. No privacy (z 0):
            # no noise on the count either, as Flower.
            self.clipped_count_stddev = 0.0 if self.noise_multiplier == 0 else \
                max(context.clients_per_round / 20, self.noise_multiplier)

    @property
    def update_noise_multiplier(self) -> float:
        if not self.adaptive:
            return self.noise_multiplier
        return update_noise_multiplier(self.noise_multiplier, float(self.clipped_count_stddev or 0.0))

    def initialize(self, weights: Weights) -> Weights:
        return self.inner.initialize(weights)

    def configure_round(self, round_number: int, client_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return self.inner.configure_round(round_number, client_ids)

    def sum_spec(self) -> SumSpec:
        return SumSpec("delta", self.clip_norm)

    def sum_term(self, update: ClientUpdate) -> SumTerm | None:
        return SumTerm(1.0, 1.0)

    def aggregate_total(self, round_number: int, current: Weights, total: WeightedSum,
                        distances: Sequence[float]) -> Weights:
        rng = secret_noise_rng()
        used, norms = self.clip_norm, list(distances)
        average = noised_mean(current, total.layers(current), self.update_noise_multiplier * used,
                              self.expected_clients, rng)
        if self.adaptive:
            self.clip_norm = adapted_clip_norm(used, norms, self.target_quantile, self.clip_learning_rate,
                                               float(self.clipped_count_stddev or 0.0), self.expected_clients, rng)
        self._account_round()
        self.last = {"central_epsilon": self.epsilon(), "central_clip_norm": used,
                     "central_unclipped_fraction": sum(n <= used for n in norms) / max(1, len(norms))}
        return self.inner.aggregate(round_number, current, [ClientUpdate("central-dp", average, 1)])

    def aggregate_sum(self, round_number: int, current: Weights, clipped_sum: Weights) -> Weights:
        """The round's model from the sum of updates the clients clipped to `clip_norm` themselves (secure
        aggregation unmasks only that sum): the noise is added to the sum, after unmasking."""
        rng = secret_noise_rng()
        average = noised_mean(current, clipped_sum, self.update_noise_multiplier * self.clip_norm,
                              self.expected_clients, rng)
        self._account_round()
        self.last = {"central_epsilon": self.epsilon(), "central_clip_norm": self.clip_norm}
        return self.inner.aggregate(round_number, current, [ClientUpdate("central-dp", average, 1)])

    def dp_round(self) -> DpRound:
        """One round of this mechanism as the accountant sees it (one step over the clients)."""
        return DpRound(1, self.sampling_rate, self.noise_multiplier,
                       sampling="poisson" if self.sampling == "poisson" else "shuffle", population=self.population)

    def charge_released_round(self) -> None:
        """Account a round this strategy's restored state does not hold: one published before a crash and
        redone after it (a second release of that round's clients spends privacy again)."""
        self._account_round()

    def _account_round(self) -> None:
        self.rounds += 1
        self.ledger.add("run", self.dp_round())

    def epsilon(self) -> float:
        return self.ledger.epsilon("run")

    def round_metrics(self) -> dict[str, float]:
        return {**self.inner.round_metrics(), **self.last}

    def report(self) -> PrivacyReport:
        return PrivacyReport(
            epsilon=self.epsilon(), delta=self.delta, accountant=self.accountant, granularity="client-level",
            sampling=self.sampling, adjacency=self.dp_round().adjacency,
            noise_multiplier=self.noise_multiplier, clip_norm=self.last.get("central_clip_norm", self.clip_norm),
            adaptive_clipping=self.adaptive, steps=self.rounds,
            sampling_rate=self.sampling_rate, rounds=self.rounds, subject="every client's whole dataset",
        )

    def state(self) -> dict[str, Any]:
        return {"inner": self.inner.state(), "clip_norm": self.clip_norm, "rounds": self.rounds}

    def load_state(self, state: dict[str, Any]) -> None:
        self.inner.load_state(state.get("inner", {}))
        self.clip_norm = state.get("clip_norm", self.clip_norm)
        self.rounds, self.ledger = 0, PrivacyLedger(self.delta, self.accountant)
        for _ in range(int(state.get("rounds", 0))):
            self._account_round()
