"""DP-SGD on the client's side: tensorflow-privacy's DP optimizers, built only when a task asks for DP.

tensorflow-privacy's DPKeras*Optimizer clips each microbatch's gradient to `l2_norm_clip` and
adds Gaussian noise of `noise_multiplier * l2_norm_clip` to their sum. Imported by the function
(function/handler.py), so it must stay free of controller, notebook and history code.
"""

from __future__ import annotations

from typing import Any

DP_OPTIMIZERS = ("sgd", "adam", "adagrad")


def make_dp_optimizer(name: str, learning_rate: float, l2_norm_clip: float, noise_multiplier: float,
                      num_microbatches: int | None) -> Any:
    """tensorflow-privacy's DP version of a Keras optimizer (its legacy-optimizer subclasses)."""
    from tensorflow_privacy.privacy.optimizers import dp_optimizer_keras as dp

    classes = {"sgd": dp.DPKerasSGDOptimizer, "adam": dp.DPKerasAdamOptimizer, "adagrad": dp.DPKerasAdagradOptimizer}
    if name not in classes:
        raise ValueError(f"DP-SGD supports the optimizers {', '.join(DP_OPTIMIZERS)}, not {name!r}")
    return classes[name](l2_norm_clip=l2_norm_clip, noise_multiplier=noise_multiplier,
                         num_microbatches=num_microbatches, learning_rate=learning_rate)
