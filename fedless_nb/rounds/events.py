"""What the controller announces. Observers (history, terminal, dashboard) subscribe to these."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Union

from ..records.owner import this_process


@dataclass(frozen=True)
class RunStarted:
    run_id: str
    name: str
    config: dict[str, Any]
    rounds: int
    clients: int
    providers: list[dict[str, Any]]
    started_at: float
    resumed_from: int = 0  # a resumed run: the last round its checkpoint had finished
    owner: str = field(default_factory=this_process)  # the process running it (records/owner.py)


@dataclass(frozen=True)
class RoundStarted:
    run_id: str
    round: int
    client_ids: list[str]
    started_at: float


@dataclass(frozen=True)
class InvocationFinished:
    """One client function call, successful or not, as both sides saw it."""

    run_id: str
    round: int
    client_id: str
    provider: str
    outcome: str  # "succeeded" | "failed" | "discarded" (a late result of an earlier round)
    started_at: float
    finished_at: float
    cold: bool | None = None
    num_examples: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    cause: str | None = None
    privacy: dict[str, Any] | None = None  # the function's DP-SGD facts (steps, sampling rate, noise)
    staleness: int | None = None  # async rounds: global versions between dispatch and aggregation
    steps: int | None = None  # local steps the function took
    partial: bool | None = None  # it stopped short of its epochs (time budget, or a simulated straggler)
    budget_epochs: float | None = None  # a simulated straggler's share of its epochs (its task's train.budget_epochs)
    stage: str | None = None  # secure aggregation: the protocol stage this invocation ran (keys, shares, check, masked, reveal)
    # Whether privacy accounting charges it (privacy/accounting.py's charged): the controller's decision, once per
    # invocation that may have trained; None for an event made elsewhere, which the rule alone decides
    charged: bool | None = None
    answered_round: int | None = None  # a late reply (discarded): the earlier round its result answers
    sent: int | None = None  # the InvocationSent.seq of this attempt; None for an event made elsewhere


@dataclass(frozen=True)
class InvocationSent:
    """One attempt of a client function call, as it is sent: the history writes it ahead (its `sent` table), so that a
    resume after the controller's process was killed outright charges the attempts that started, which may have
    trained, and never reached the history as finished."""

    run_id: str
    round: int
    client_id: str
    provider: str
    seq: int  # unique in the run and growing, across resumes too; the attempt's InvocationFinished carries it (`sent`)
    sent_at: float
    stage: str | None = None
    budget_epochs: float | None = None  # a simulated straggler's cut, which the attempt is charged by


@dataclass(frozen=True)
class UpdateRejected:
    """A succeeded invocation's update refused after the fact, when the round's updates were compared
    (validation.norm_outliers): it supersedes that success, which becomes failed with cause "rejected"."""

    run_id: str
    round: int
    client_id: str
    reason: str
    stage: str | None = None  # a secure round's stage whose object was refused (its other stages' successes stand)


@dataclass(frozen=True)
class AggregationFinished:
    """An aggregator function's invocation (tree aggregation, rounds/tree.py): which shard it summed at which
    level, what it read and wrote, how many updates it summed and refused."""

    run_id: str
    round: int
    aggregator_id: str
    provider: str
    level: int
    outcome: str  # "succeeded" | "failed"
    started_at: float
    finished_at: float
    shard_size: int
    summed: int = 0
    rejected: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    error: str | None = None


@dataclass(frozen=True)
class RoundFinished:
    run_id: str
    round: int
    started_at: float
    finished_at: float
    selected: int
    succeeded: int
    failed: int
    eval_metrics: dict[str, float]
    train_metrics: dict[str, float]
    privacy_metrics: dict[str, float] = field(default_factory=dict)  # epsilon so far, central-DP clip norm...


@dataclass(frozen=True)
class RoundFailed:
    """A run of a round that could not finish (a secure round with too few clients left to unmask):
    its reason goes to the history; the quorum rules decide whether the round runs again."""

    run_id: str
    round: int
    failed_at: float
    reason: str


@dataclass(frozen=True)
class RunFinished:
    run_id: str
    status: str  # "finished" | "failed" | "stopped"
    finished_at: float
    rounds_completed: int
    final_metrics: dict[str, float]
    error: str | None = None
    observer_errors: dict[str, int] = field(default_factory=dict)  # observers that raised: name -> count


Event = Union[RunStarted, RoundStarted, InvocationSent, InvocationFinished, UpdateRejected, AggregationFinished, RoundFinished,
              RoundFailed, RunFinished]
Observer = Callable[[Event], None]
