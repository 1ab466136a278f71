"""What a resumed run did before it resumed, read back from its history.

A resumed run's observers see only the rounds after its checkpoint; its totals (the rounds table, the invocations,
failures and cost) would cover only the resumed part of a run whose id and round numbers are the whole run's.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .history import History, HistoryError


@dataclass
class EarlierRounds:
    """The history's rows for a run's rounds up to its checkpoint, and their invocations."""

    rounds: list[dict[str, Any]] = field(default_factory=list)  # as History.rounds gives them (eval_<name> columns)
    invocations: list[dict[str, Any]] = field(default_factory=list)


def earlier_rounds(history: str | Path | None, run_id: str, through_round: int) -> EarlierRounds:
    """Run `run_id`'s rounds 1 to `through_round` in `history`; none when it cannot be read (an observer never ends
    a run: the totals then cover the resumed part, as before)."""
    if not history or not through_round:
        return EarlierRounds()
    try:
        with contextlib.closing(History(history)) as opened:
            return EarlierRounds([row for row in opened.rounds(run_id) if row["round"] <= through_round],
                                 [row for row in opened.invocations(run_id) if row["round"] <= through_round])
    except HistoryError:
        return EarlierRounds()
