"""A task for the client step run in-process: a tiny MLP, random data in a local store (shared by its tests)."""

import time

import numpy as np

from fedless_nb import zoo
from fedless_nb.model import model_spec_from
from fedless_nb.store import LocalStore, encode_arrays

DEFAULT_TRAIN = {"epochs": 2, "batch_size": 16, "optimizer": "sgd", "learning_rate": 0.1, "seed": 1}


def client_task(root, examples=40, hidden_units=(4,), **train):
    """An unsigned task for client-0000 over `examples` random rows of 8 features and 3 classes, for an MLP with
    `hidden_units` (none: softmax regression); `train` overrides."""
    store = LocalStore(root)
    spec, weights = model_spec_from(zoo.mlp, builder_context={"input_shape": (8,), "num_classes": 3,
                                                              "hidden_units": list(hidden_units)})
    store.put("global", encode_arrays(weights))
    rng = np.random.default_rng(0)
    store.put("data/a", encode_arrays([rng.random((examples, 8), dtype=np.float32), rng.integers(0, 3, examples)]))
    return {
        "run_id": "r", "round": 1, "client_id": "client-0000", "model": spec.to_wire(), "weights": "global",
        "data": "data/a", "update": "runs/r/u/client-0000", "train": {**DEFAULT_TRAIN, **train},
        "store": store.descriptor(), "token": None, "deadline": time.time() + 60,
    }


def softmax_regression_dp_steps(x, y, weights, steps, learning_rate, clip, mu, correction):
    """By hand: DP-SGD (noise 0, whole batch, per-example clip) on softmax regression, whose example gradient is
    x (p - onehot(y)) for the kernel and p - onehot(y) for the bias, plus mu (w - w_0) + correction unclipped.
    Returns the weights after `steps` steps and each step's clipped mean gradient (kernel, bias)."""
    x, (kernel, bias) = x.astype(np.float64), (w.astype(np.float64) for w in weights)
    start = (kernel.copy(), bias.copy())
    gradients = []
    for _ in range(steps):
        logits = x @ kernel + bias
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        residual = p - np.eye(kernel.shape[1])[y]
        norms = np.sqrt(np.sum(x**2, axis=1) * np.sum(residual**2, axis=1) + np.sum(residual**2, axis=1))
        scaled = residual * np.minimum(1.0, clip / norms)[:, None]
        gradient = (x.T @ scaled / len(x), scaled.mean(axis=0))
        gradients.append(gradient)
        kernel, bias = (w - learning_rate * (g + mu * (w - w0) + correction)
                        for w, g, w0 in zip((kernel, bias), gradient, start))
    return [kernel, bias], gradients
