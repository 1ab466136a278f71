"""Strategies: how client updates become the next global model; numeric kernels as pure functions (aggregate.py).

Controller side: they may import store, privacy.accounting and function.batching, never rounds/ or records/.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from .base import ClientUpdate, RunContext, Strategy, Weights
from .central_dp import CENTRAL_DP_STRATEGIES
from .fedavg import FedAvg, fedavg
from .fedopt import FedAdagrad, FedAdam, FedAvgM, FedYogi
from .fednova import FedNova
from .fedprox import FedProx
from .options import StrategyOptionError, require_numbers
from .robust import Bulyan, FedMedian, Krum, TrimmedMean
from .scaffold import Scaffold

STRATEGIES: dict[str, Callable[..., Strategy]] = {
    strategy.name: strategy
    for strategy in (FedAvg, FedProx, FedNova, FedAvgM, FedAdam, FedYogi, FedAdagrad, FedMedian, TrimmedMean, Krum, Bulyan,
                     Scaffold)
}

# The strategies that need only the sum of the updates: they work under secure aggregation, which hides the rest.
SUM_ONLY_STRATEGIES = CENTRAL_DP_STRATEGIES

__all__ = [
    "STRATEGIES", "SUM_ONLY_STRATEGIES", "Bulyan", "ClientUpdate", "FedAdagrad", "FedAdam", "FedAvg", "FedAvgM", "FedMedian",
    "FedNova", "FedProx", "FedYogi",
    "Krum", "RunContext", "Scaffold", "Strategy", "StrategyOptionError", "TrimmedMean", "Weights", "fedavg",
    "make_strategy",
]


def make_strategy(name: str, options: dict[str, Any] | None = None) -> Strategy:
    """A strategy by its config name; unknown names list the choices, bad options name themselves."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}: choose one of {', '.join(STRATEGIES)}")
    factory, options = STRATEGIES[name], dict(options or {})
    known = list(inspect.signature(factory).parameters)
    for option in options:
        if option not in known:
            raise StrategyOptionError(f"{option}: not an option of {name} (options: {', '.join(known) or 'none'})")
    require_numbers(factory, options)
    return factory(**options)
