"""The aggregator function's contract (function/aggregator.py), beside the client's in wire.py: shared by both
sides, strict like it. A task names a shard of a round: the clients' signed results and where their updates
are (level 0), or lower aggregators' signed partial sums (level 1 and up); the result points at the partial
sum it wrote and says, per update, what the controller needs for the history and the norm screening."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError

from .wire import MAX_EXAMPLES, MAX_ROUND, ResultError, SignedReply, _Count, _Key, _Name, _Strict, first_problem

AGGREGATE = "aggregate"  # the `kind` that tells an aggregator's task from a client's
_Real = Annotated[float, Field(ge=-1e300, le=1e300)]


class AggregateTerm(_Strict):
    """How one update counts in the sum (reduction.SumTerm), decided by the controller's strategy."""

    scale: _Real
    weight: _Real
    extras: Annotated[dict[_Name, _Real], Field(max_length=16)] = {}


class AggregateEntry(_Strict):
    """One input of a shard: a client's result and update (with its term), or a lower aggregator's partial sum."""

    client_id: _Name
    key: _Key
    result: dict[str, Any]
    term: AggregateTerm | None = None


class AggregateTask(_Strict):
    """Controller to aggregator: sum these entries into the one key it may write."""

    kind: Literal["aggregate"]
    run_id: _Name
    round: Annotated[int, Field(ge=0, le=MAX_ROUND)]
    client_id: _Name  # the aggregator's own id in this run: its key signs its partial sum
    level: Annotated[int, Field(ge=0, le=64)]
    weights: _Key  # the global model the round trained from
    update: _Key
    spec: dict[str, Any]
    max_update_norm: Annotated[float, Field(ge=0)] = 0.0
    max_update_bytes: Annotated[int, Field(ge=1, le=2**40)]
    entries: Annotated[list[AggregateEntry], Field(min_length=1, max_length=100_000)]
    store: dict[str, Any]
    token: Annotated[str, Field(max_length=16384)] | None = None
    deadline: Annotated[float, Field(gt=0)] | None = None


class SummedUpdate(_Strict):
    """An update the aggregator verified and summed: its distance from the global model (None for a masked
    vector, which looks random and is never screened), size and digest."""

    client_id: _Name
    distance: Annotated[float, Field(ge=0)] | None = None
    bytes: _Count
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class RejectedUpdate(_Strict):
    """An update the aggregator refused, with the history's cause and the reason."""

    client_id: _Name
    cause: Literal["signature", "rejected", "invalid"]
    reason: Annotated[str, Field(max_length=2048)]


class AggregateResult(SignedReply):
    """Aggregator to controller: where its partial sum is, what went in and what was refused."""

    count: Annotated[int, Field(ge=0, le=MAX_EXAMPLES)]
    summed: list[SummedUpdate] = []
    rejected: list[RejectedUpdate] = []
    bytes_read: _Count = 0


def is_aggregate_task(payload: Any) -> bool:
    return isinstance(payload, dict) and payload.get("kind") == AGGREGATE


def parse_aggregate_result(reply: Any, run_id: str, round_number: int, aggregator_id: str, key: str) -> AggregateResult:
    """The reply as an AggregateResult answering exactly that aggregator's task; ResultError otherwise."""
    if not isinstance(reply, dict):
        raise ResultError(f"the aggregator returned {type(reply).__name__}, not a result object", "invalid")
    try:
        result = AggregateResult.model_validate(reply)
    except ValidationError as error:
        raise ResultError(f"the aggregator's result is malformed: {first_problem(error)}", "invalid") from None
    if (result.run_id, result.round, result.client_id, result.update) != (run_id, round_number, aggregator_id, key):
        raise ResultError(f"the aggregator's result answers another task: {result.client_id}", "invalid")
    return result
