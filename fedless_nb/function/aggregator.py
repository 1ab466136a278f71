"""The aggregator function: a shard of a round's updates in, one signed partial sum out (tree aggregation).

The same bundle as the client function: handler.handle passes it every task whose kind is "aggregate",
so every template and provider that reaches the client reaches this too. At level 0 it reads each
client's update from the store (a local path or a presigned URL, never credentials), checks it exactly
as the controller does (the result answers its task, is signed with that client's key over these very
bytes, the bytes fit the model, the arrays have its shapes and dtypes and finite values) and screens
what needs no other update (the absolute norm bound); it adds each accepted update to the weighted sum
as the strategy said (reduction.py) and drops it. At level 1 and up it merges lower aggregators' partial
sums, each checked against its aggregator's signature. The partial sum goes to the task's one write key;
the result lists every update summed (distance, size, digest) and every one refused, with its reason.
A secure round's shard (spec term "masked") holds masked vectors: each is checked the same way (its
result, the signature over its bytes, one uint32 vector of the spec's length), never norm-screened
(it looks random by design) and added modulo 2^32 (reduction.MaskedSum). An update's size is asked of
the store before it is read, so an oversized object is never downloaded.

This module must stay importable without TensorFlow and without anything of the controller's side.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from pydantic import ValidationError

from ..aggregate_wire import AggregateEntry, AggregateTask, RejectedUpdate, SummedUpdate, parse_aggregate_result
from ..reduction import (MaskedSum, SumSpec, SumTerm, WeightedSum, norm_problem, numbers_problem, partial_sum_limit,
                         partial_sum_problem, update_problem, update_term)
from ..security import ResultSignatureError, TaskGuard, check_may_aggregate, client_key, function_secret
from ..store import CodecError, MissingKeyError, Store, decode_arrays
from ..wire import PayloadError, ResultError, first_problem, parse_result
from .task_store import task_store

_INVOCATIONS = [0]  # this process's aggregator invocations: the first is the cold one


class UpdateRefused(Exception):
    """An update in a shard fails a check; `cause` is the history's name for why."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


def _read_update(task: AggregateTask, entry: AggregateEntry, store: Store) -> bytes:
    """`entry`'s update, if the store says its size is one an update of this model can have (asked first, as
    the controller does: an oversized object is never downloaded)."""
    try:
        size = store.size(entry.key)
    except MissingKeyError:
        raise UpdateRefused("the update is not in the store", "invalid") from None
    if size > task.max_update_bytes:
        raise UpdateRefused(f"the update is {size} bytes, more than the {task.max_update_bytes} an update of "
                            "this model can take; it was not read", "rejected")
    data = store.get(entry.key)
    if len(data) != size:
        raise UpdateRefused(f"the update changed while it was read ({size} bytes, then {len(data)})", "rejected")
    return data


def _verified(task: AggregateTask, entry: AggregateEntry, data: bytes, secret: str | None) -> None:
    """Raise UpdateRefused unless `data` may be summed as `entry`'s client update: the controller's checks."""
    try:
        parse_result(entry.result, task.run_id, task.round, entry.client_id, entry.key)
        if secret is not None:
            client_key(secret, task.run_id, entry.client_id).verify_result(entry.result, data)
    except ResultError as error:
        raise UpdateRefused(str(error), "invalid") from None
    except ResultSignatureError as error:
        raise UpdateRefused(str(error), "signature") from None


def _decoded(data: bytes) -> list[Any]:
    try:
        return decode_arrays(data)
    except CodecError as error:
        raise UpdateRefused(f"the update is not a weights blob: {error}", "rejected") from None


def _add_masked(task: AggregateTask, entry: AggregateEntry, data: bytes, total: MaskedSum,
                secret: str | None) -> SummedUpdate:
    """Check one client's masked vector and add it to `total` modulo 2^32; UpdateRefused when it may not be."""
    _verified(task, entry, data, secret)
    try:
        total.add(_decoded(data))
    except ValueError as error:
        raise UpdateRefused(str(error), "rejected") from None
    return SummedUpdate(client_id=entry.client_id, bytes=len(data), sha256=hashlib.sha256(data).hexdigest())


def _add_update(task: AggregateTask, spec: SumSpec, entry: AggregateEntry, data: bytes, current: list[Any],
                total: WeightedSum, secret: str | None) -> SummedUpdate:
    """Check one client update, screen its norm, add it to `total`; UpdateRefused when it may not be summed."""
    _verified(task, entry, data, secret)
    arrays = _decoded(data)
    if problem := update_problem(arrays, current):
        raise UpdateRefused(problem, "rejected")
    layers, distance = update_term(spec, arrays, current)
    if problem := norm_problem(distance, task.max_update_norm):
        raise UpdateRefused(problem, "rejected")
    if entry.term is not None:  # None: checked and measured for the screening, but left out of the sum
        total.add(layers, SumTerm(entry.term.scale, entry.term.weight, dict(entry.term.extras)))
    return SummedUpdate(client_id=entry.client_id, distance=distance, bytes=len(data),
                        sha256=hashlib.sha256(data).hexdigest())


def _add_partial(task: AggregateTask, spec: SumSpec, entry: AggregateEntry, store: Store,
                 total: WeightedSum | MaskedSum, secret: str | None) -> int:
    """Merge a lower aggregator's partial sum, if that aggregator signed it; returns the bytes read."""
    claimed = parse_aggregate_result(entry.result, task.run_id, task.round, entry.client_id, entry.key)
    size = store.size(entry.key)
    if size > partial_sum_limit(task.max_update_bytes):
        raise PayloadError(f"the partial sum at {entry.key} is {size} bytes, more than a sum of this model can be")
    data = store.get(entry.key)
    if secret is not None:
        client_key(secret, task.run_id, entry.client_id).verify_result(entry.result, data)
    try:
        part = spec.read_sum(data)
        if problem := partial_sum_problem(part, claimed.count):
            raise ValueError(problem)
        total.merge(part)  # type: ignore[arg-type]
    except ValueError as error:
        raise PayloadError(f"the partial sum at {entry.key} of {entry.client_id} cannot be merged: {error}") from None
    return len(data)


def _global_model(task: AggregateTask, store: Store) -> list[Any]:
    """The global model the shard's updates trained from, if it holds real numbers (PayloadError otherwise: each
    update would be refused against it, or a string model crashed the sum)."""
    current = decode_arrays(store.get(task.weights))
    if problem := numbers_problem(current):
        raise PayloadError(f"the global model at {task.weights} cannot be summed against: {problem}")
    return current


def check_aggregate_task(payload: Any) -> tuple[AggregateTask, SumSpec]:
    """The task and its sum spec, if both are well formed (a masked shard's entries carry no term)."""
    try:
        task = AggregateTask.model_validate(payload)
        spec = SumSpec.from_wire(task.spec)
    except ValidationError as error:
        raise PayloadError(f"the aggregator's task is malformed: {first_problem(error)}") from None
    except ValueError as error:
        raise PayloadError(f"the aggregator's task is malformed: spec: {error}") from None
    if spec.is_masked and any(entry.term is not None for entry in task.entries):
        raise PayloadError("the aggregator's task is malformed: a masked vector counts once, so its entries carry no term")
    return task, spec


def aggregate(payload: dict[str, Any], *, secret: str | None = None) -> dict[str, Any]:
    """Sum one shard (see the module docstring): aggregator task in, signed result out."""
    started = time.perf_counter()
    task, spec = check_aggregate_task(payload)
    store: Store = task_store(task.store)
    check_may_aggregate()
    guard = TaskGuard.admit(payload, store, secret)  # before any update is read
    secret = (secret or function_secret()) if guard.key is not None else None
    cold = _INVOCATIONS[0] == 0
    _INVOCATIONS[0] += 1
    total, summed, rejected, bytes_read = spec.empty_sum(), [], [], 0
    current = _global_model(task, store) if task.level == 0 and not spec.is_masked else []
    loaded = time.perf_counter()
    for entry in task.entries:
        if task.level > 0:
            bytes_read += _add_partial(task, spec, entry, store, total, secret)
            continue
        try:
            data = _read_update(task, entry, store)
            bytes_read += len(data)
            summed.append(_add_masked(task, entry, data, total, secret) if isinstance(total, MaskedSum)
                          else _add_update(task, spec, entry, data, current, total, secret))
        except UpdateRefused as refusal:
            rejected.append(RejectedUpdate(client_id=entry.client_id, cause=refusal.cause, reason=str(refusal)))
    summed_at = time.perf_counter()
    blob = total.to_bytes()
    store.put(task.update, blob)
    finished = time.perf_counter()
    result = {
        "run_id": task.run_id, "round": task.round, "client_id": task.client_id, "update": task.update,
        "count": total.count, "summed": [s.model_dump() for s in summed], "rejected": [r.model_dump() for r in rejected],
        "bytes_read": bytes_read, "cold": cold, "signature": None,
        "timings": {"load": loaded - started, "train": summed_at - loaded, "upload": finished - summed_at,
                    "total": finished - started},
    }
    return guard.sign(result, blob)
