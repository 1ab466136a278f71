"""Server-side optimizers over the FedAvg pseudo-gradient: FedAvgM (Hsu et al. 2019) and
FedAdam, FedYogi, FedAdagrad (Reddi et al. 2021), with Flower 1.13's defaults and FedAdam's
bias-corrected server learning rate. The arithmetic is in aggregate.py."""

from __future__ import annotations

from typing import Any, Sequence

from ..reduction import SumSpec, SumTerm, WeightedSum, weighted_mean
from .aggregate import fedavgm, fedopt
from .base import ClientUpdate, SumStrategy, Weights
from .options import require


class _ServerOptimizer(SumStrategy):
    """A server step on the sample-weighted mean of the client models, reduced by a weighted sum."""

    def sum_spec(self) -> SumSpec:
        return SumSpec("model")

    def sum_term(self, update: ClientUpdate) -> SumTerm | None:
        return SumTerm(float(update.num_examples), float(update.num_examples))


class FedAvgM(_ServerOptimizer):
    """FedAvg followed by a server SGD step with momentum; Flower's defaults (lr 1, momentum 0)."""

    name = "fedavgm"

    def __init__(self, server_learning_rate: float = 1.0, server_momentum: float = 0.0) -> None:
        require(server_learning_rate > 0, "server_learning_rate", f"must be > 0, got {server_learning_rate}")
        require(0 <= server_momentum < 1, "server_momentum", f"must be in [0, 1), got {server_momentum}")
        self.server_learning_rate, self.server_momentum = float(server_learning_rate), float(server_momentum)
        self.momentum: Weights | None = None

    def aggregate_total(self, round_number: int, current: Weights, total: WeightedSum,
                        distances: Sequence[float]) -> Weights:
        weights, self.momentum = fedavgm(current, weighted_mean(total, current), self.momentum,
                                         self.server_learning_rate, self.server_momentum)
        return weights

    def state(self) -> dict[str, Any]:
        return {"momentum": self.momentum}

    def load_state(self, state: dict[str, Any]) -> None:
        self.momentum = state.get("momentum")


class _FedOpt(_ServerOptimizer):
    """Adaptive server optimizer: eta (server lr), beta_1, beta_2, tau as in Reddi et al. and Flower."""

    kind: str

    def __init__(self, eta: float = 0.1, beta_1: float = 0.9, beta_2: float = 0.99, tau: float = 1e-9) -> None:
        require(eta > 0, "eta", f"must be > 0, got {eta}")
        require(0 <= beta_1 < 1, "beta_1", f"must be in [0, 1), got {beta_1}")
        require(0 <= beta_2 < 1, "beta_2", f"must be in [0, 1), got {beta_2}")
        require(tau > 0, "tau", f"must be > 0, got {tau}")
        self.eta, self.beta_1, self.beta_2, self.tau = float(eta), float(beta_1), float(beta_2), float(tau)
        self.m: Weights | None = None
        self.v: Weights | None = None

    bias_correction = False

    def aggregate_total(self, round_number: int, current: Weights, total: WeightedSum,
                        distances: Sequence[float]) -> Weights:
        weights, self.m, self.v = fedopt(self.kind, current, weighted_mean(total, current), self.m, self.v,
                                         eta=self.eta, beta_1=self.beta_1, beta_2=self.beta_2, tau=self.tau,
                                         bias_corrected_round=round_number if self.bias_correction else None)
        return weights

    def state(self) -> dict[str, Any]:
        return {"m": self.m, "v": self.v}

    def load_state(self, state: dict[str, Any]) -> None:
        self.m, self.v = state.get("m"), state.get("v")


class FedAdam(_FedOpt):
    """`bias_correction` (default on, as Flower 1.13+ and Adam itself): the server learning rate is
    eta sqrt(1 - beta_2^(t+1)) / (1 - beta_1^(t+1)) in round t; off: Reddi et al.'s constant eta."""

    name, kind = "fedadam", "adam"

    def __init__(self, eta: float = 0.1, beta_1: float = 0.9, beta_2: float = 0.99, tau: float = 1e-9,
                 bias_correction: bool = True) -> None:
        super().__init__(eta, beta_1, beta_2, tau)
        require(isinstance(bias_correction, bool), "bias_correction", f"must be true or false, got {bias_correction!r}")
        self.bias_correction = bias_correction


class FedYogi(_FedOpt):
    name, kind = "fedyogi", "yogi"

    def __init__(self, eta: float = 0.01, beta_1: float = 0.9, beta_2: float = 0.99, tau: float = 1e-3) -> None:
        super().__init__(eta, beta_1, beta_2, tau)


class FedAdagrad(_FedOpt):
    """Adagrad keeps no first moment: Flower fixes beta_1 = 0, so m is this round's delta."""

    name, kind = "fedadagrad", "adagrad"

    def __init__(self, eta: float = 0.1, tau: float = 1e-9) -> None:
        super().__init__(eta, 0.0, 0.0, tau)
