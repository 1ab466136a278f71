"""How a round copes with faults: which failed invocations are retried, and how many successes a round needs.

Retrying is safe for a timeout, a crash, throttling or a network failure: the task is the same,
its update key is its own. A function refuses a task whose token it has spent or whose update
already exists (a replay), and the failed attempt may have done either before it died or while
its reply was lost, so a retry carries a fresh token and the controller first deletes what the
failed attempt wrote (Controller.invoke). A function that raised or answered garbage would do so again, and a
call that missed the round's deadline is too late; those are not retried. Every attempt is an
invocation in the history, so succeeded + failed + discarded always equals the invocations made.

The quorum: a round needs `min_successful` valid updates. Below it the round is run again (up to
`round_repeats` times) and then the run stops with a QuorumError naming the settings to change.
Without one (min_successful 0) a round with no valid update keeps the model and the run goes on, but a run whose
first rounds all failed (every invocation, or a secure round as a whole) stops with a NothingTrainedError, whatever
its schedule. After FUTILE_ROUNDS of them in a row without a transient failure: what refused the task, raised or
crashed every round from the start (a bad task, a function's bug, too little memory) fails the next round too.
Transient failures (TRANSIENT_CAUSES: cold starts past a timeout or the deadline, throttling, the network) can
pass as a platform warms up or a burst of throttling ends, so a run that had them goes on, and stops only after
TRANSIENT_FUTILE_ROUNDS failed rounds, its line naming what to change (the deadline, the timeout, the concurrency).
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from ..errors import UserError
from ..providers.base import InvocationError
from ..wording import counted
from .events import InvocationFinished, RoundFailed, RoundFinished, UpdateRejected

RETRYABLE_CAUSES = frozenset({"timeout", "crash", "throttled", "network"})
# Causes that can pass by the next round, each with what makes it less likely. A crash is retried (one process may be
# lost) but not one of them: a function whose every process died for rounds runs out of memory or faults each time.
TRANSIENT_CAUSES = {
    "timeout": "raise the providers' timeout",
    "deadline": "raise round_deadline",
    "throttled": "lower the calls at once (the providers' workers or clients_per_round) or raise the platform's limits",
    "network": "check that the platform can be reached",
}
FUTILE_ROUNDS = 3  # a run whose first rounds all failed, none of them transiently, stops after this many
TRANSIENT_FUTILE_ROUNDS = 10  # ...and one whose failures were transient too, after this many


class QuorumError(UserError):
    """A round did not get enough valid updates, even after its repeats."""


class NothingTrainedError(UserError):
    """Every round of a run ended without one valid update: the run trained nothing, so it failed."""


class FailureTally:
    """An observer of the controller's events: how many invocations failed or had their update refused, the
    first reason, and the first round that failed as a whole (secure aggregation): what a run that trained
    nothing tells its user."""

    def __init__(self) -> None:
        self.count, self.first, self.round_failure = 0, "", ""
        self.causes: collections.Counter[str] = collections.Counter()  # failed invocations by cause
        self.failed_rounds: int | None = 0  # rounds, from the run's start, with clients and no valid update; None once one had
        self.lasting_rounds = 0  # how many of the last of those, in a row, had no transient failure
        self._transient = False  # a transient failure since the last round finished

    def __call__(self, event: Any) -> None:
        if isinstance(event, RoundFinished) and self.failed_rounds is not None:
            # an empty round (a Poisson draw of no client) neither fails nor trains
            failed = bool(event.selected) and not event.succeeded
            self.failed_rounds = None if event.succeeded else self.failed_rounds + failed
            self.lasting_rounds = 0 if self._transient else self.lasting_rounds + failed
            self._transient = False
        elif isinstance(event, RoundFailed):
            self.round_failure = self.round_failure or f"round {event.round} failed: {event.reason}"
        elif isinstance(event, InvocationFinished) and event.outcome == "failed":
            self._failed(event.client_id, event.round, event.cause, event.error)
        elif isinstance(event, UpdateRejected):
            self._failed(event.client_id, event.round, "rejected", event.reason)

    def _failed(self, client_id: str, round_number: int, cause: str | None, reason: str | None) -> None:
        self.count += 1
        self.causes[cause or "unknown"] += 1
        self._transient |= cause in TRANSIENT_CAUSES
        self.first = self.first or f"{client_id} in round {round_number} ({cause}): {reason}"

    def futile(self) -> bool:
        """Whether the rounds so far, all failed from the run's start, say the next fails too: FUTILE_ROUNDS of them in
        a row without a transient failure, or TRANSIENT_FUTILE_ROUNDS whatever their causes."""
        return self.failed_rounds is not None and (self.lasting_rounds >= FUTILE_ROUNDS
                                                   or self.failed_rounds >= TRANSIENT_FUTILE_ROUNDS)

    def remedy(self) -> str:
        """What to change: where the failures had transient causes, each one's remedy (and the others to fix), else the
        first failure."""
        transient = [cause for cause, _ in self.causes.most_common() if cause in TRANSIENT_CAUSES]
        if not transient:
            return "fix that and run again"
        seen = ", ".join(f"{count} {cause}" for cause, count in self.causes.most_common())
        lasting = [cause for cause in self.causes if cause not in TRANSIENT_CAUSES]
        remedies = [f"fix what failed with {' or '.join(lasting)}"] if lasting else []
        remedies += [f"for {cause}, {TRANSIENT_CAUSES[cause]}" for cause in transient]
        return f"by cause: {seen}; {'; '.join(remedies)}; then run again"

    def nothing_trained(self, rounds: int, planned: int) -> NothingTrainedError:
        """The run's end after `rounds` of its `planned` rounds, none of which got a valid update."""
        first = "; ".join(filter(None, [self.round_failure, self.first and f"the first failed invocation: {self.first}"]))
        which = (counted(rounds, "round") if rounds >= planned
                 else f"its first {counted(rounds, 'round')} of {planned}, so it stopped there")
        failed = f"{counted(self.count, 'invocation')} failed or {'was' if self.count == 1 else 'were'} refused"
        return NothingTrainedError(
            f"no client function returned a valid update in {which} ({failed}); "
            f"{first or 'no client was invoked'}; {self.remedy()} (the history lists every invocation with its reason)")


@dataclass(frozen=True)
class RoundPolicy:
    """`retries`: extra attempts per invocation for a retryable cause, waiting `retry_backoff` * 2**n
    (plus jitter) between them while the round's deadline allows; `min_successful`: the quorum
    (0: none, a round with no update keeps the model); `round_repeats`: runs of a round below quorum;
    `max_norm_ratio`: updates farther than this times the round's (or recent rounds') median are rejected,
    `max_update_norm`: updates farther than this from the global model are rejected (screening.py; 0: off)."""

    retries: int = 2
    retry_backoff: float = 0.5
    min_successful: int = 0
    round_repeats: int = 0
    max_norm_ratio: float = 10.0
    max_update_norm: float = 1000.0


async def invoke_with_retries(
    invoke: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
    task: dict[str, Any] | Callable[[], dict[str, Any]],
    policy: RoundPolicy,
    deadline: float,
    on_failed_attempt: Callable[[InvocationError], None],
) -> dict[str, Any]:
    """`await invoke(task)`, again after a retryable failure while attempts and the deadline allow. `task` may
    be a function that makes each attempt's task (an aggregator's: each attempt writes a key of its own).

    Each failed attempt that is retried is reported to `on_failed_attempt` (it is an invocation
    of its own); the last failure is raised for the caller to record.
    """
    attempt = 0
    while True:
        try:
            return await invoke(task() if callable(task) else task)
        except InvocationError as error:
            wait = policy.retry_backoff * 2**attempt + random.uniform(0, policy.retry_backoff)
            if error.cause not in RETRYABLE_CAUSES or attempt == policy.retries or time.time() + wait >= deadline:
                raise
            on_failed_attempt(InvocationError(f"{error} (retried)", error.cause))
        attempt += 1
        await asyncio.sleep(wait)


def check_quorum(round_number: int, succeeded: int, selected: int, policy: RoundPolicy, runs: int,
                 shortfall: str | None = None) -> bool:
    """True when the round has its quorum; False when it should run again; QuorumError when it may not.
    `shortfall`: why the strategy cannot aggregate `succeeded` updates (Strategy.too_few_updates), a quorum
    of its own that min_successful cannot lower."""
    if succeeded >= policy.min_successful and shortfall is None:
        return True
    if runs <= policy.round_repeats:
        return False
    below = shortfall or (f"fewer than min_successful ({policy.min_successful}); lower min_successful, "
                          "raise round_repeats or round_deadline")
    raise QuorumError(
        f"round {round_number} got {counted(succeeded, 'valid update')} of {selected} selected in {counted(runs, 'run')}, "
        f"{below}, or see the failed invocations in the history"
    )
