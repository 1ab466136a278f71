"""Byzantine-robust aggregation: FedMedian, trimmed mean (Yin et al. 2018), Krum / Multi-Krum (Blanchard et al. 2017),
Bulyan (El Mhamdi et al. 2018)."""

from __future__ import annotations

from typing import Sequence

from .aggregate import bulyan, krum, median, trimmed_mean
from .base import ClientUpdate, Strategy, Weights
from .options import require


class FedMedian(Strategy):
    name = "fedmedian"

    def aggregate(self, round_number: int, current: Weights, updates: Sequence[ClientUpdate]) -> Weights:
        return median([u.weights for u in updates])


class TrimmedMean(Strategy):
    """`beta`: the fraction cut from each end per coordinate, int(beta * n) values (Flower's FedTrimmedAvg
    default 0.2; beta >= 0.5 is refused, where Flower gives nan or fails at run time)."""

    name = "trimmed_mean"

    def __init__(self, beta: float = 0.2) -> None:
        require(0 <= beta < 0.5, "beta", f"must be in [0, 0.5), got {beta}")
        self.beta = float(beta)

    def aggregate(self, round_number: int, current: Weights, updates: Sequence[ClientUpdate]) -> Weights:
        return trimmed_mean([u.weights for u in updates], self.beta)


class Krum(Strategy):
    """`num_malicious`: the f clients to tolerate; `to_keep` > 0 makes it Multi-Krum. A round with fewer updates
    than `to_keep` keeps them all (Flower 1.23 keeps to_keep - n of them, an artefact of its slice)."""

    name = "krum"

    def __init__(self, num_malicious: int = 0, to_keep: int = 0) -> None:
        require(isinstance(num_malicious, int) and num_malicious >= 0, "num_malicious", f"must be an int >= 0, got {num_malicious!r}")
        require(isinstance(to_keep, int) and to_keep >= 0, "to_keep", f"must be an int >= 0, got {to_keep!r}")
        self.num_malicious, self.to_keep = num_malicious, to_keep
        self.selected: list[str] = []

    def aggregate(self, round_number: int, current: Weights, updates: Sequence[ClientUpdate]) -> Weights:
        weights, kept = krum([u.weights for u in updates], [u.num_examples for u in updates],
                             self.num_malicious, min(self.to_keep, len(updates)))
        self.selected = [updates[i].client_id for i in kept]
        return weights


class Bulyan(Strategy):
    """`num_malicious`: the f clients to tolerate; a round needs at least 4f + 3 updates (Flower's rule)."""

    name = "bulyan"

    def __init__(self, num_malicious: int = 0) -> None:
        require(isinstance(num_malicious, int) and num_malicious >= 0, "num_malicious", f"must be an int >= 0, got {num_malicious!r}")
        self.num_malicious = num_malicious
        self.selected: list[str] = []

    @property
    def needed_updates(self) -> int:
        """The fewest updates Bulyan can aggregate: 4f + 3."""
        return 4 * self.num_malicious + 3

    def too_few_updates(self, count: int) -> str | None:
        if count >= self.needed_updates:
            return None
        return (f"fewer than bulyan needs (4 * num_malicious + 3 = {self.needed_updates}); raise clients_per_round "
                "or round_repeats, lower strategy.options.num_malicious")

    def aggregate(self, round_number: int, current: Weights, updates: Sequence[ClientUpdate]) -> Weights:
        weights, selected = bulyan([u.weights for u in updates], self.num_malicious)
        self.selected = [updates[i].client_id for i in selected]
        return weights
