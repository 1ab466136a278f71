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

This module must stay importable without TensorFlow and without anything of the controller's side.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from pydantic import ValidationError

from ..aggregate_wire import AggregateEntry, AggregateTask, RejectedUpdate, SummedUpdate, parse_aggregate_result
from ..reduction import SumSpec, SumTerm, WeightedSum, norm_problem, update_problem, update_term
from ..security import NonceCache, ResultSignatureError, TaskGuard, client_key, function_secret
from ..store import CodecError, Store, decode_arrays, store_from_descriptor
from ..wire import PayloadError, ResultError, first_problem, parse_result

_NONCES = NonceCache()
_INVOCATIONS = [0]  # this process's aggregator invocations: the first is the cold one


class UpdateRefused(Exception):
    """An update in a shard fails a check; `cause` is the history's name for why."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


def _verified(task: AggregateTask, entry: AggregateEntry, data: bytes, secret: str | None) -> None:
    """Raise UpdateRefused unless `data` may be summed as `entry`'s client update: the controller's checks."""
    if len(data) > task.max_update_bytes:
        raise UpdateRefused(f"the update is {len(data)} bytes, more than the {task.max_update_bytes} an update of "
                            "this model can take", "rejected")
    try:
        parse_result(entry.result, task.run_id, task.round, entry.client_id, entry.key)
        if secret is not None:
            client_key(secret, task.run_id, entry.client_id).verify_result(entry.result, data)
    except ResultError as error:
        raise UpdateRefused(str(error), "invalid") from None
    except ResultSignatureError as error:
        raise UpdateRefused(str(error), "signature") from None


def _add_update(task: AggregateTask, spec: SumSpec, entry: AggregateEntry, data: bytes, current: list[Any],
                total: WeightedSum, secret: str | None) -> SummedUpdate:
    """Check one client update, screen its norm, add it to `total`; UpdateRefused when it may not be summed."""
    _verified(task, entry, data, secret)
    try:
        arrays = decode_arrays(data)
    except CodecError as error:
        raise UpdateRefused(f"the update is not a weights blob: {error}", "rejected") from None
    if problem := update_problem(arrays, current):
        raise UpdateRefused(problem, "rejected")
    layers, distance = update_term(spec, arrays, current)
    if problem := norm_problem(distance, task.max_update_norm):
        raise UpdateRefused(problem, "rejected")
    if entry.term is not None:  # None: checked and measured for the screening, but left out of the sum
        total.add(layers, SumTerm(entry.term.scale, entry.term.weight, dict(entry.term.extras)))
    return SummedUpdate(client_id=entry.client_id, distance=distance, bytes=len(data),
                        sha256=hashlib.sha256(data).hexdigest())


def _add_partial(task: AggregateTask, entry: AggregateEntry, data: bytes, total: WeightedSum,
                 secret: str | None) -> None:
    """Merge a lower aggregator's partial sum, if that aggregator signed it."""
    parse_aggregate_result(entry.result, task.run_id, task.round, entry.client_id, entry.key)
    if secret is not None:
        client_key(secret, task.run_id, entry.client_id).verify_result(entry.result, data)
    total.merge(WeightedSum.from_bytes(data))


def check_aggregate_task(payload: Any) -> AggregateTask:
    try:
        return AggregateTask.model_validate(payload)
    except ValidationError as error:
        raise PayloadError(f"the aggregator's task is malformed: {first_problem(error)}") from None


def aggregate(payload: dict[str, Any], *, secret: str | None = None) -> dict[str, Any]:
    """Sum one shard (see the module docstring): aggregator task in, signed result out."""
    started = time.perf_counter()
    task = check_aggregate_task(payload)
    store: Store = store_from_descriptor(task.store)
    guard = TaskGuard.admit(payload, store, _NONCES, secret)  # before any update is read
    secret = (secret or function_secret()) if guard.key is not None else None
    cold = _INVOCATIONS[0] == 0
    _INVOCATIONS[0] += 1
    total, summed, rejected, bytes_read = WeightedSum(), [], [], 0
    current = decode_arrays(store.get(task.weights)) if task.level == 0 else []
    spec = SumSpec.from_wire(task.spec)
    loaded = time.perf_counter()
    for entry in task.entries:
        data = store.get(entry.key)
        bytes_read += len(data)
        if task.level > 0:
            _add_partial(task, entry, data, total, secret)
            continue
        try:
            summed.append(_add_update(task, spec, entry, data, current, total, secret))
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
