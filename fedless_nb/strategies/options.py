"""Checks on strategy options: one line naming the option, which experiment.py prefixes with its key."""

from __future__ import annotations


class StrategyOptionError(ValueError):
    """A strategy option the user must change; the message starts with the option's name."""


def require(condition: bool, option: str, message: str) -> None:
    if not condition:
        raise StrategyOptionError(f"{option}: {message}")
