"""The teacher's opt-in limit of names per address, and why it is off by default.

Anyone holding the join code can register names, each a client of the run that may claim up to
--max-own-examples examples of its own: from one machine, up to the class's 200 names. A fixed limit
per address would lock out a class behind one NAT address (thirty students, one public address), the
usual room, so there is none by default; a teacher whose students each have an address of their own
sets one (--names-per-address). Either way the roster shows each name's address and how many names
it holds, so one address holding many stands out, and the teacher removes them.

An address counts as the wrong codes' budgets count it (join_limit.counted_as: an IPv6 address by its
/64, which one machine holds whole). A name that left still holds its address's place (joining again
from there is a reconnect, not a new name), so joining and leaving cannot cycle through names; one the
teacher removed frees it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from ..wording import counted
from .errors import ClassroomError


def checked_limit(limit: Any) -> int:
    """`limit` if it is a number of names (0: no limit), else ClassroomError naming the option."""
    if type(limit) is not int or limit < 0:
        raise ClassroomError(f"--names-per-address {limit}: give the most names students may register from one "
                             "address (0: no limit, for a class behind one address)")
    return limit


class TooManyNames(ClassroomError):
    """A registration of a new name from an address that holds the teacher's limit of names already."""


@dataclass
class NamesPerAddress:
    """The limit (0: none) and the registrations refused past it, which the teacher's roster shows."""

    limit: int = 0
    refused: int = 0
    latest_refused: str = ""  # the address the latest refused registration came from

    def check(self, holders: Iterable[str], name: str, address: str) -> None:
        """TooManyNames, counted for the teacher, if `address` (as counted), whose names are `holders`, may not
        register `name`; a name it holds already (a reconnect) is never refused."""
        holders = set(holders)
        if not self.limit or name in holders or len(holders) < self.limit:
            return
        self.refused += 1
        self.latest_refused = address
        raise TooManyNames(f"this class admits at most {counted(self.limit, 'name')} from one address, and yours "
                           f"({address}) has them: ask the teacher")

    def summary(self) -> str:
        """The limit and its refusals in one line for the teacher's roster; empty without a limit."""
        if not self.limit:
            return ""
        refused = (f"{counted(self.refused, 'registration')} refused, the latest from {self.latest_refused}"
                   if self.refused else "none refused")
        return f"At most {counted(self.limit, 'name')} per address ({refused})."
