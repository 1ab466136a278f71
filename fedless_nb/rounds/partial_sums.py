"""What an aggregator's partial sum must hold, by the controller's own account (rounds/tree.py).

An aggregator function holds its provider's secret, so a compromised one could sign any partial sum. The
controller cannot check the summed layers without reading the updates, but it knows what it handed out: which
entries each aggregator got and how each counts (its term's weight and extras). So a result must account for
every entry it was given exactly once (summed or refused, nothing else), and the partial sum it wrote must hold
exactly the count, total weight and extras of the updates it says it summed, in the model's shapes, finite, and
no farther from what those updates can add up to than their norm bound allows: each update is within
`max_update_norm` (or its clip) of the global model, so sum_i scale_i * term_i is within sum_i |scale_i| * bound
of sum_i scale_i * (the global model for a "model" term, zero for a "delta"). A lie there (an inflated weight, a
client counted twice or taken from another shard, NaN, a boosted sum) refuses the aggregator like a failed one;
what remains possible is what its provider's clients could send anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from ..aggregate_wire import AggregateResult
from ..reduction import MaskedSum, WeightedSum, partial_sum_problem
from ..wording import counted


@dataclass(frozen=True)
class Contents:
    """The updates a partial sum holds and what they add up to: how many, their total weight and extras."""

    clients: frozenset[str]
    count: int
    weight: float = 0.0
    extras: dict[str, float] = field(default_factory=dict)
    scale: float = 0.0  # sum of the terms' scales: how many global models a "model" sum holds
    reach: float = 0.0  # sum of |scale| x the norm bound of each update: how far the sum may lie from that

    @classmethod
    def of_shard(cls, entries: Sequence[dict[str, Any]], result: AggregateResult, masked: bool,
                 bound: float) -> "Contents":
        """A level-0 partial sum's: the entries the result says it summed (a masked vector counts once; a
        weighted update counts when the strategy gave it a term), each within `bound` of the global model."""
        summed = {fact.client_id for fact in result.summed}
        terms = [entry["term"] for entry in entries if entry["client_id"] in summed]
        if masked:
            return cls(frozenset(summed), len(summed))
        counted = [term for term in terms if term is not None]
        return cls(frozenset(summed), len(counted), float(sum(term["weight"] for term in counted)),
                   _summed_extras(term["extras"] for term in counted), float(sum(term["scale"] for term in counted)),
                   sum(abs(term["scale"]) * bound for term in counted))

    @classmethod
    def merged(cls, parts: Sequence["Contents"]) -> "Contents":
        return cls(frozenset().union(*(part.clients for part in parts)), sum(part.count for part in parts),
                   float(sum(part.weight for part in parts)), _summed_extras(part.extras for part in parts),
                   float(sum(part.scale for part in parts)), sum(part.reach for part in parts))


def _summed_extras(extras: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Each extra's total over `extras` (a term's or a partial sum's named figures, e.g. FedNova's steps)."""
    total: dict[str, float] = {}
    for named in extras:
        for name, value in named.items():
            total[name] = total.get(name, 0.0) + float(value)
    return total


def accounting_problem(level: int, entries: Sequence[dict[str, Any]], result: AggregateResult) -> str | None:
    """Why `result` does not account for its `entries` (level 0: each summed or refused exactly once, nothing
    else; a level up: it merges partial sums and refuses nothing), or None."""
    if level > 0:
        expected = sum(int(entry["result"].get("count", 0)) for entry in entries)
        if result.summed or result.rejected or result.count != expected:
            return (f"the aggregator's merge of {counted(len(entries), 'partial sum')} reports "
                    f"{counted(result.count, 'update')}, "
                    f"{len(result.summed)} summed and {len(result.rejected)} refused; its inputs hold {expected}")
        return None
    given = sorted(entry["client_id"] for entry in entries)
    answered = sorted([fact.client_id for fact in result.summed] + [refusal.client_id for refusal in result.rejected])
    if answered != given:
        return (f"the aggregator's result accounts for {counted(len(answered), 'update')} ({len(set(answered))} distinct), "
                f"not the {len(given)} it was given, each once")
    return None


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def update_bound(max_update_norm: float, clip: float | None) -> float:
    """How far one summed term may lie from the global model (a "delta" clipped to `clip`); inf: no bound."""
    bounds = [bound for bound in (max_update_norm, clip) if bound]
    return min(bounds) if bounds else math.inf


def sum_problem(total: WeightedSum | MaskedSum, contents: Contents, current: Sequence[np.ndarray],
                term: str) -> str | None:
    """Why the partial sum read from the store is not the one `contents` adds up to (from `current`, the global
    model, with terms of kind `term`), or None."""
    if total.count != contents.count:
        return (f"the partial sum counts {counted(total.count, 'update')}; the ones it says it summed are "
                f"{contents.count}")
    if isinstance(total, MaskedSum):
        return None
    if not _close(total.weight, contents.weight) or set(total.extras) != set(contents.extras) or not all(
            _close(total.extras[name], value) for name, value in contents.extras.items()):
        return (f"the partial sum's weight {total.weight:g} (or its extras) is not the {contents.weight:g} of the "
                "updates it says it summed")
    if problem := partial_sum_problem(total, total.count):  # its layers and values, as a merging aggregator checks them
        return problem
    if total.sums is None:
        return None
    if [tuple(layer.shape) for layer in total.sums] != [tuple(np.shape(layer)) for layer in current]:
        return "the partial sum's layers do not have the model's shapes"
    if math.isfinite(contents.reach):
        base = contents.scale if term == "model" else 0.0
        distance = math.sqrt(sum(float(np.sum(np.square(layer - base * np.asarray(c, np.float64))))
                                 for layer, c in zip(total.sums, current)))
        if distance > contents.reach * (1 + 1e-6) + 1e-6:
            return (f"the partial sum lies {distance:.4g} from the global model's share, farther than the "
                    f"{contents.reach:.4g} its updates' norm bound allows")
    return None
