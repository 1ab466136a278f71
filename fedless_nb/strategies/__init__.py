"""Strategies: how client updates become the next global model."""

from __future__ import annotations

from typing import Any, Callable

from .base import ClientUpdate, Strategy, Weights
from .fedavg import FedAvg, fedavg

STRATEGIES: dict[str, Callable[..., Strategy]] = {"fedavg": FedAvg}

__all__ = ["STRATEGIES", "ClientUpdate", "FedAvg", "Strategy", "Weights", "fedavg", "make_strategy"]


def make_strategy(name: str, options: dict[str, Any] | None = None) -> Strategy:
    """A strategy by its config name; unknown names list the choices."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}: choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name](**(options or {}))
