"""How a client cuts its data into optimizer steps, and the DP-SGD facts that follow from it.

Without DP: each epoch a fresh permutation cut into batches (the last one short). With DP-SGD the
batches are exactly what the accountant assumes (train.dp.sampling):
  poisson  each step takes every example independently with probability q = batch_size / n, so
           batch sizes vary (Binomial(n, q), empty ones included); examples are clipped one by one.
           Accounted as Poisson-subsampled Gaussian steps under add-or-remove-one adjacency.
  shuffle  each step takes a fixed-size batch drawn uniformly without replacement (a fresh shuffle
           per step), microbatches allowed. Accounted as sampling without replacement under
           replace-one adjacency.
The controller imports these too (to plan the accountant's rounds and SCAFFOLD's step counts), so
they are pure functions of the example count and the task's train settings.

The batches repeat under the task's seed, except under DP-SGD (`batch_rng`): privacy amplification by
sampling holds only while nobody knows which steps took an example, and the seed is in the run's config
and history, so a DP client draws its batches from the operating system's entropy.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np

from ..wire import PayloadError

DP_SAMPLINGS = ("poisson", "shuffle")


def dp_sampling(train: dict[str, Any]) -> str | None:
    """The task's DP-SGD sampling ("poisson" unless it says "shuffle"); None without DP."""
    dp = train.get("dp")
    return None if dp is None else str(dp.get("sampling") or "poisson")


def batch_rng(train: dict[str, Any]) -> np.random.Generator:
    """The generator of a client's batches: the task's seed, or under DP-SGD a secret one (module docstring)."""
    return np.random.default_rng() if train.get("dp") is not None else np.random.default_rng(int(train.get("seed", 0)))


def batch_size(num_examples: int, train: dict[str, Any]) -> int:
    """The (expected, for Poisson) batch size; with microbatches it is cut to a multiple of them."""
    size = min(int(train["batch_size"]), num_examples)
    dp = train.get("dp")
    if dp is None or dp.get("num_microbatches") is None or dp_sampling(train) == "poisson":
        return size
    microbatches = int(dp["num_microbatches"])
    if num_examples < microbatches:
        raise PayloadError(f"this client has {num_examples} examples, fewer than dp.num_microbatches ({microbatches})")
    return size - size % microbatches


def local_steps(num_examples: int, train: dict[str, Any]) -> int:
    """Optimizer steps one invocation takes: epochs * n / batch size (rounded up for Poisson, as
    tensorflow-privacy counts them; down for fixed-size DP batches; up without DP, the last batch short)."""
    size, epochs = batch_size(num_examples, train), int(train["epochs"])
    sampling = dp_sampling(train)
    if sampling == "poisson":
        return math.ceil(epochs * num_examples / size)
    if sampling == "shuffle":
        return epochs * (num_examples // size)
    return epochs * -(-num_examples // size)


def step_batches(num_examples: int, train: dict[str, Any], rng: np.random.Generator) -> Iterator[np.ndarray]:
    """The example indices of each optimizer step, as the module docstring describes."""
    size = batch_size(num_examples, train)
    sampling = dp_sampling(train)
    if sampling == "poisson":
        rate = size / num_examples
        for _ in range(local_steps(num_examples, train)):
            yield np.flatnonzero(rng.random(num_examples) < rate)
    elif sampling == "shuffle":
        for _ in range(local_steps(num_examples, train)):
            yield np.sort(rng.choice(num_examples, size=size, replace=False))
    else:
        for _ in range(int(train["epochs"])):
            order = rng.permutation(num_examples)
            for start in range(0, num_examples, size):
                yield order[start : start + size]


def step_budget(num_examples: int, train: dict[str, Any]) -> int:
    """Steps this invocation may take before its time runs out: the planned ones, or for a simulated
    straggler (`budget_epochs`, the epochs it manages) that share of them, at least one step."""
    planned = local_steps(num_examples, train)
    epochs = train.get("budget_epochs")
    if epochs is None:
        return planned
    return min(planned, max(1, int(float(epochs) / int(train["epochs"]) * planned)))


def steps_under_cut(num_examples: int, train: dict[str, Any], budget_epochs: float) -> int:
    """The steps a simulated straggler cut to `budget_epochs` may take with the run's `train` settings: its task's
    step_budget, which the function stops at, the controller checks a claim against and the accountant charges."""
    return step_budget(num_examples, {**train, "budget_epochs": budget_epochs})


def privacy_facts(num_examples: int, train: dict[str, Any]) -> dict[str, Any] | None:
    """What the accountant needs about this invocation's DP-SGD: its steps, sampling and noise."""
    dp = train.get("dp")
    if dp is None:
        return None
    size = batch_size(num_examples, train)
    sampling = dp_sampling(train)
    microbatches = (dp.get("num_microbatches") if sampling == "shuffle" else None) or size
    return {
        "steps": local_steps(num_examples, train), "sampling_rate": size / num_examples,
        "batch_size": size, "num_examples": num_examples, "noise_multiplier": float(dp["noise_multiplier"]),
        "l2_norm_clip": float(dp["l2_norm_clip"]), "microbatch_size": size // int(microbatches),
        "sampling": sampling,
    }
