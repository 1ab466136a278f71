"""Tables as the magics show them: 3 decimals, and no column of costs that are all zero (a free local run).
Costs keep their digits: a function call costs fractions of a cent."""

from __future__ import annotations

from typing import Any

DECIMALS = 3


def tidy_table(frame: Any) -> Any:
    """`frame` with floats rounded to DECIMALS and every all-zero (or empty) cost column left out."""
    costs = [column for column in frame.columns if "cost" in str(column)]
    empty = [column for column in costs if frame[column].fillna(0).eq(0).all()]
    return frame.drop(columns=empty).round({column: DECIMALS for column in frame.columns if column not in costs})
