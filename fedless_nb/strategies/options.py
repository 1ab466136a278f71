"""Checks on strategy options: one line naming the option, which experiment.py prefixes with its key."""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable


class StrategyOptionError(ValueError):
    """A strategy option the user must change; the message starts with the option's name."""


def require(condition: bool, option: str, message: str) -> None:
    if not condition:
        raise StrategyOptionError(f"{option}: {message}")


def require_numbers(factory: Callable[..., Any], options: dict[str, Any]) -> None:
    """Options whose default is a number take finite numbers only (not true/false, text, null, inf or nan)."""
    parameters = inspect.signature(factory).parameters
    for option, value in options.items():
        default = parameters[option].default
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            require(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
                    option, f"must be a finite number, got {value!r}")
