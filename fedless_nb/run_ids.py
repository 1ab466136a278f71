"""A run named by its whole id or by a beginning of it that no other run's id shares, as every command that takes a
run id accepts it: an id is long (name, start time, random suffix) and its beginning is what a user reads and types."""

from __future__ import annotations

from typing import Iterable

from .errors import UserError

SHOWN = 3  # the ids a prefix begins that its refusal names


class AmbiguousRunId(UserError):
    """A run id's beginning that several runs' ids share: the one line names some of them."""


def matching_run_id(given: str, known: Iterable[str]) -> str | None:
    """The id of `known` that `given` is, else the one id that begins with it; None when none does (the caller words
    an unknown run in its own terms). Several that begin with it are refused in one line, never one picked."""
    known = list(known)
    if given in known:
        return given
    matches = sorted(run_id for run_id in known if given and run_id.startswith(given))
    if len(matches) > 1:
        more = f" and {len(matches) - SHOWN} more" if len(matches) > SHOWN else ""
        raise AmbiguousRunId(f"{given!r} begins the ids of {len(matches)} runs ({', '.join(matches[:SHOWN])}{more}): "
                             "give more of the id")
    return matches[0] if matches else None
