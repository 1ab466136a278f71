"""Byzantine-robust aggregation: FedMedian, trimmed mean (Yin et al. 2018), Krum / Multi-Krum (Blanchard et al. 2017),
Bulyan (El Mhamdi et al. 2018)."""

from __future__ import annotations

import math
from typing import Sequence

from .aggregate import bulyan, krum, median, trimmed_mean
from .base import ClientUpdate, FewestUpdates, Strategy, Weights
from .options import require
from ..wording import counted


class FedMedian(Strategy):
    name = "fedmedian"

    def aggregate(self, round_number: int, current: Weights, updates: Sequence[ClientUpdate]) -> Weights:
        return median([u.weights for u in updates])


EXACT_COUNTS = 2**53  # counts float64 holds exactly: past them beta * n moves in steps of more than 1


class TrimmedMean(Strategy):
    """`beta`: the fraction cut from each end per coordinate, int(beta * n) values (Flower's FedTrimmedAvg
    default 0.2; beta >= 0.5 is refused, where Flower gives nan or fails at run time). A beta > 0 that trims
    nothing of a round's n updates (n < 1 / beta) would be the plain mean: such a round is below its quorum."""

    name = "trimmed_mean"

    def __init__(self, beta: float = 0.2) -> None:
        require(0 <= beta < 0.5, "beta", f"must be in [0, 0.5), got {beta}")
        self.beta = float(beta)

    def fewest_updates(self) -> FewestUpdates | None:
        if self.beta == 0:
            return None
        fewest = EXACT_COUNTS
        if self.beta * EXACT_COUNTS >= 1:  # then 1 / beta is within a step or two of it, exactly as int(beta * n) rounds
            fewest = math.ceil(1 / self.beta)
            while int(self.beta * fewest) < 1:
                fewest += 1
            while fewest > 1 and int(self.beta * (fewest - 1)) >= 1:
                fewest -= 1
        return FewestUpdates(fewest, f"trimmed_mean with beta {self.beta:g} needs {fewest} updates a round to trim "
                                     "any (int(beta * n) from each end)",
                             "raise strategy.options.beta (or set it to 0 for the plain mean)")

    def aggregate(self, round_number: int, current: Weights, updates: Sequence[ClientUpdate]) -> Weights:
        return trimmed_mean([u.weights for u in updates], self.beta)


class Krum(Strategy):
    """`num_malicious`: the f clients to tolerate; `to_keep` m > 0 makes it Multi-Krum, which averages the m best of
    n updates. Blanchard et al. 2017 prove Krum tolerates f among n >= 2f + 3, and Multi-Krum keeps at most the
    n - f updates that are not the f (El Mhamdi et al. 2018): m <= n - f. Both are the rule's quorum, as Bulyan's
    4f + 3: a config whose clients_per_round is below it is refused, and a round with fewer valid updates runs
    again, then the run stops with one line (QuorumError). Flower 1.23 checks neither: its Krum scores each model by
    its max(1, n - f - 2) nearest (as few as f colluding clients agree among themselves), its Multi-Krum averages
    m > n - f models (one of the f among them), and with m > n its slice keeps m - n of them."""

    name = "krum"

    def __init__(self, num_malicious: int = 0, to_keep: int = 0) -> None:
        require(isinstance(num_malicious, int) and num_malicious >= 0, "num_malicious", f"must be an int >= 0, got {num_malicious!r}")
        require(isinstance(to_keep, int) and to_keep >= 0, "to_keep", f"must be an int >= 0, got {to_keep!r}")
        self.num_malicious, self.to_keep = num_malicious, to_keep
        self.selected: list[str] = []

    def fewest_updates(self) -> FewestUpdates | None:
        f, m = self.num_malicious, self.to_keep
        krum_needs = 2 * f + 3 if f else 0
        if m and m + f >= krum_needs:
            return FewestUpdates(m + f, f"multi-krum keeps to_keep {m} of the n - num_malicious updates it trusts, so "
                                 f"it needs to_keep + num_malicious = {counted(m + f, 'update')} a round",
                                 "lower strategy.options.to_keep" + (" or num_malicious" if f else ""))
        if not krum_needs:
            return None
        return FewestUpdates(krum_needs, f"krum needs 2 * num_malicious + 3 = {krum_needs} updates a round to "
                             f"tolerate num_malicious {f}", "lower strategy.options.num_malicious")

    def aggregate(self, round_number: int, current: Weights, updates: Sequence[ClientUpdate]) -> Weights:
        weights, kept = krum([u.weights for u in updates], [u.num_examples for u in updates],
                             self.num_malicious, self.to_keep)
        self.selected = [updates[i].client_id for i in kept]
        return weights


class Bulyan(Strategy):
    """`num_malicious`: the f clients to tolerate; a round needs at least 4f + 3 updates (Flower's rule)."""

    name = "bulyan"

    def __init__(self, num_malicious: int = 0) -> None:
        require(isinstance(num_malicious, int) and num_malicious >= 0, "num_malicious", f"must be an int >= 0, got {num_malicious!r}")
        self.num_malicious = num_malicious
        self.selected: list[str] = []

    def fewest_updates(self) -> FewestUpdates:
        needed = 4 * self.num_malicious + 3
        return FewestUpdates(needed, f"bulyan needs 4 * num_malicious + 3 = {needed} updates a round",
                             "lower strategy.options.num_malicious" if self.num_malicious else None)

    def aggregate(self, round_number: int, current: Weights, updates: Sequence[ClientUpdate]) -> Weights:
        weights, selected = bulyan([u.weights for u in updates], self.num_malicious)
        self.selected = [updates[i].client_id for i in selected]
        return weights
