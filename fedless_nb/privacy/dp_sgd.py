"""DP-SGD on the client's side: tensorflow-privacy's DP optimizers, built only when a task asks for DP.

tensorflow-privacy's DP Keras optimizers clip each microbatch's gradient to `l2_norm_clip` and
add Gaussian noise of `noise_multiplier * l2_norm_clip` to their sum, then divide by the number of
microbatches. Under Poisson sampling that number is the realized batch size, which depends on whether
one example was drawn: dividing by it scales the noise with the batch, so the update would reveal
the size the accountant treats as secret. A Poisson optimizer therefore divides by the expected
batch size q * n (set per invocation, `set_expected_batch_size`), as Opacus does. Imported by the
function (function/handler.py), so it must stay free of controller, notebook and history code.
"""

from __future__ import annotations

from typing import Any

DP_OPTIMIZERS = ("sgd", "adam", "adagrad")


def batch_statistics_layers(model: Any) -> list[str]:
    """The model's trainable batch-normalization layers, which DP-SGD cannot protect: in training they
    normalize each example by its batch's statistics (so one example's clipped gradient moves with the
    others') and keep those statistics, unclipped and un-noised, in moving averages that leave with the
    update. A frozen one (trainable=False) runs in inference mode in Keras 2 and learns nothing."""
    def normalizes_by_batch(layer: Any) -> bool:
        return any(cls.__name__ == "BatchNormalizationBase" or cls.__name__.endswith("BatchNormalization")
                   for cls in type(layer).__mro__)

    return [layer.name for layer in model.submodules if getattr(layer, "trainable", False) and normalizes_by_batch(layer)]


def make_dp_optimizer(name: str, learning_rate: float, l2_norm_clip: float, noise_multiplier: float,
                      num_microbatches: int | None, *, poisson: bool = False) -> Any:
    """tensorflow-privacy's DP version of a Keras optimizer (its legacy-optimizer subclasses); with
    `poisson`, one that divides the noised sum by the expected batch size instead of the realized one."""
    from tensorflow_privacy.privacy.optimizers import dp_optimizer_keras as dp

    classes = {"sgd": dp.GenericDPSGDOptimizer, "adam": dp.GenericDPAdamOptimizer, "adagrad": dp.GenericDPAdagradOptimizer}
    if name not in classes:
        raise ValueError(f"DP-SGD supports the optimizers {', '.join(DP_OPTIMIZERS)}, not {name!r}")
    cls = _normalized_by_expected_batch(classes[name]) if poisson else classes[name]
    # As tensorflow-privacy's DPKeras*Optimizer: the generic class with a Gaussian sum query.
    return dp.make_gaussian_query_optimizer_class(cls)(
        l2_norm_clip=l2_norm_clip, noise_multiplier=noise_multiplier, num_microbatches=num_microbatches,
        learning_rate=learning_rate)


def private_gradients(optimizer: Any, per_example_objective: Any, variables: list[Any], tape: Any) -> list[Any]:
    """The DP optimizer's clipped and noised gradient of `per_example_objective` (one entry per example), what its
    `minimize` would apply: a term that depends on no example can be added to it before `apply_gradients`."""
    return [gradient for gradient, _ in optimizer._compute_gradients(per_example_objective, variables, tape=tape)]


def set_expected_batch_size(optimizer: Any, expected: float) -> None:
    """The divisor of a Poisson optimizer's noised gradient sum for this client: q * n."""
    optimizer.expected_batch_size.assign(float(expected))


def _normalized_by_expected_batch(cls: type) -> type:
    from .._tf import tensorflow

    tf = tensorflow()

    class ExpectedBatchDPOptimizer(cls):  # type: ignore[misc, valid-type]
        """`cls` whose gradient is (clipped sum + noise) / expected batch size: tensorflow-privacy divides by
        the realized size (the per-example loss vector's length), which this multiplies back out."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.expected_batch_size = tf.Variable(1.0, trainable=False, dtype=tf.float32)

        def _compute_gradients(self, loss: Any, var_list: Any, grad_loss: Any = None, tape: Any = None) -> Any:
            grads_and_vars = super()._compute_gradients(loss, var_list, grad_loss=grad_loss, tape=tape)
            scale = tf.cast(tf.shape(loss)[0], tf.float32) / self.expected_batch_size
            return [(grad * tf.cast(scale, grad.dtype), var) for grad, var in grads_and_vars]

    ExpectedBatchDPOptimizer.__name__ = f"ExpectedBatch{cls.__name__}"
    return ExpectedBatchDPOptimizer
