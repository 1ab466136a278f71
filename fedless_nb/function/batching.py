"""How a client cuts its data into optimizer steps, and the DP-SGD facts that follow from it.

The controller imports these too (to plan the accountant's rounds and SCAFFOLD's step counts), so
they are pure functions of the example count and the task's train settings.
"""

from __future__ import annotations

from typing import Any

from ..wire import PayloadError


def batch_size(num_examples: int, train: dict[str, Any]) -> int:
    """The batch size DP-SGD can use: microbatches must divide it, so it is cut to a multiple of them."""
    size = min(int(train["batch_size"]), num_examples)
    dp = train.get("dp")
    if dp is None or dp.get("num_microbatches") is None:
        return size
    microbatches = int(dp["num_microbatches"])
    if num_examples < microbatches:
        raise PayloadError(f"this client has {num_examples} examples, fewer than dp.num_microbatches ({microbatches})")
    return size - size % microbatches


def steps_per_epoch(num_examples: int, train: dict[str, Any]) -> int:
    """Optimizer steps in one epoch: DP-SGD drops the last short batch, plain training keeps it."""
    size = batch_size(num_examples, train)
    return num_examples // size if train.get("dp") is not None else -(-num_examples // size)


def local_steps(num_examples: int, train: dict[str, Any]) -> int:
    """Optimizer steps one invocation plans: its epochs, whole."""
    return int(train["epochs"]) * steps_per_epoch(num_examples, train)


def step_budget(num_examples: int, train: dict[str, Any]) -> int:
    """Steps this invocation may take before its time runs out: the planned ones, or for a simulated
    straggler (`budget_epochs`, the epochs it manages) that share of them, at least one step."""
    planned = local_steps(num_examples, train)
    epochs = train.get("budget_epochs")
    if epochs is None:
        return planned
    return min(planned, max(1, int(float(epochs) * steps_per_epoch(num_examples, train))))


def privacy_facts(num_examples: int, train: dict[str, Any]) -> dict[str, Any] | None:
    """What the accountant needs about this invocation's DP-SGD: its steps, sampling rate and noise."""
    dp = train.get("dp")
    if dp is None:
        return None
    size = batch_size(num_examples, train)
    microbatches = dp.get("num_microbatches") or size
    return {
        "steps": local_steps(num_examples, train), "sampling_rate": size / num_examples,
        "batch_size": size, "num_examples": num_examples, "noise_multiplier": float(dp["noise_multiplier"]),
        "l2_norm_clip": float(dp["l2_norm_clip"]), "microbatch_size": size // int(microbatches),
    }
