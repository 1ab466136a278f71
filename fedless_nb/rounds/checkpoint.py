"""A run's checkpoint in the store, written after every round, so a run can resume after its process died.

The global weights of each round are already in the store (store/keys.py); the checkpoint adds
what else the next round needs: the last finished round, the strategy's own state (momenta,
control variates; arrays allowed), the per-round metrics so far and the state of observers that
need it to continue exactly (the privacy accountant's ledger). It is written after the
round is in the history, so a crash between the two makes the resumed run redo that round, and
the history's idempotent round writes keep it counted once. A resumed run first clears what the
round after its checkpoint wrote (updates of functions that finished after the controller died),
since a function refuses a task whose update already exists as a replay. Its privacy accountants are charged first
for what was released after the checkpoint (runner._released_after): the attempts the history wrote ahead that the
checkpoint does not count (`sent_through`, `running`), each as its finished row was charged or, where it never
finished, as one that may have trained; the invocations of a history from before that record, each as it was charged;
and central DP's noised models in the store.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def checkpoint_key(run_id: str) -> str:
    return f"runs/{run_id}/checkpoint.json"


@dataclass
class Checkpoint:
    round: int
    strategy_state: dict[str, Any] = field(default_factory=dict)
    round_metrics: list[dict[str, float]] = field(default_factory=list)
    observer_state: dict[str, Any] = field(default_factory=dict)
    # The attempts the checkpoint's accountants count: every one sent up to `sent_through` (an InvocationSent.seq) but
    # those still running (`running`); a resume charges the others it finds in the history. A checkpoint from before
    # these fields counts none of the attempts the history wrote ahead (all were sent after it).
    sent_through: int = 0
    running: list[int] = field(default_factory=list)


def _to_json(value: Any) -> Any:
    """JSON's default hook: arrays travel as base64 .npy bytes, numpy scalars as Python numbers."""
    if isinstance(value, np.ndarray):
        buffer = io.BytesIO()
        np.save(buffer, value, allow_pickle=False)
        return {"__ndarray__": base64.b64encode(buffer.getvalue()).decode()}
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"a strategy state value of type {type(value).__name__} cannot be checkpointed")


def _from_json(value: dict[str, Any]) -> Any:
    if set(value) == {"__ndarray__"}:
        return np.load(io.BytesIO(base64.b64decode(value["__ndarray__"])), allow_pickle=False)
    return value


def encode_checkpoint(checkpoint: Checkpoint) -> bytes:
    data = {"round": checkpoint.round, "strategy_state": checkpoint.strategy_state,
            "round_metrics": checkpoint.round_metrics, "observer_state": checkpoint.observer_state,
            "sent_through": checkpoint.sent_through, "running": checkpoint.running}
    return json.dumps(data, default=_to_json).encode()


def decode_checkpoint(data: bytes) -> Checkpoint:
    return Checkpoint(**json.loads(data, object_hook=_from_json))
