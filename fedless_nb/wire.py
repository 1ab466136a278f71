"""The wire contract between the controller and a function: one task in, one result out (DESIGN.md).

Both sides import this module, so it holds only the contract: the fields of a task and a
result, the train settings a function understands, and the checks each side makes before it
trusts what arrived. It imports nothing from either side.
"""

from __future__ import annotations

import time
from typing import Any

TASK_FIELDS = ("run_id", "round", "client_id", "model", "weights", "data", "update", "train", "store")
TRAIN_SETTINGS = {"epochs", "batch_size", "optimizer", "learning_rate", "seed", "proximal_mu", "dp", "correction"}
DP_SETTINGS = ("l2_norm_clip", "noise_multiplier", "num_microbatches", "sampling")


class PayloadError(ValueError):
    """The task is malformed or not for this function; nothing was read or written."""


class ResultError(ValueError):
    """A result does not answer its task; `cause` is the history's name for why ("late" or "invalid")."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


def make_task(*, run_id: str, round_number: int, client_id: str, model: dict[str, Any], weights: str, data: str,
              update: str, train: dict[str, Any], store: dict[str, Any], deadline: float) -> dict[str, Any]:
    """A task as the contract spells it, unsigned (`token` is set by the controller's run key)."""
    return {
        "run_id": run_id, "round": round_number, "client_id": client_id, "model": model, "weights": weights,
        "data": data, "update": update, "train": train, "store": store, "token": None, "deadline": deadline,
    }


def task_reads(task_train: dict[str, Any], weights: str, data: str, update: str) -> list[str]:
    """The store keys a task may read: the global weights, its data, its own update key (a function refuses
    a task whose update exists: a replay) and SCAFFOLD's correction when the strategy sends one."""
    correction = task_train.get("correction")
    return [weights, data, update, *([correction] if correction else [])]


def check_task(payload: Any) -> None:
    """Refuse a task that is not one: missing fields, unknown train settings, a malformed DP block, past its deadline."""
    if not isinstance(payload, dict):
        raise PayloadError(f"the task must be a JSON object, got {type(payload).__name__}")
    missing = [key for key in TASK_FIELDS if key not in payload]
    if missing:
        raise PayloadError(f"the task lacks {', '.join(missing)}")
    unknown = set(payload["train"]) - TRAIN_SETTINGS
    if unknown:
        raise PayloadError(
            f"this function does not support the train setting(s) {', '.join(sorted(unknown))}; "
            "redeploy it with the fedless_nb version of the controller"
        )
    dp = payload["train"].get("dp")
    if dp is not None and (not isinstance(dp, dict) or not all(
            isinstance(dp.get(name), (int, float)) and not isinstance(dp.get(name), bool)
            for name in ("l2_norm_clip", "noise_multiplier"))):
        raise PayloadError("the task's train.dp must give l2_norm_clip and noise_multiplier as numbers")
    deadline = payload.get("deadline")
    if deadline is not None and time.time() > float(deadline):
        raise PayloadError("the task arrived after its round deadline")


def check_result(result: Any, task: dict[str, Any]) -> int:
    """The result's example count, if the result answers exactly `task`; ResultError otherwise."""
    if not isinstance(result, dict):
        raise ResultError(f"the function returned {type(result).__name__}, not a result object", "invalid")
    answered = (result.get("run_id"), result.get("round"), result.get("client_id"), result.get("update"))
    expected = (task["run_id"], task["round"], task["client_id"], task["update"])
    if answered[0] == expected[0] and isinstance(answered[1], int) and answered[1] < expected[1]:
        # an earlier round's result, delivered late: never mixed into this round
        raise ResultError(f"a late result of round {answered[1]} arrived in round {expected[1]}", "late")
    if answered != expected:
        raise ResultError(f"the result answers another task: {answered}", "invalid")
    num_examples = result.get("num_examples")
    if not isinstance(num_examples, int) or num_examples <= 0:
        raise ResultError(f"the result has an invalid num_examples {num_examples!r}", "invalid")
    return num_examples
