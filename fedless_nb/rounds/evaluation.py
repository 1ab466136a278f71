"""Evaluating the global model on the held-out test split, in the controller's process."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from ..model import ModelSpec, build_model

_TRACED_LIMIT = 4  # distinct models kept traced per process (a notebook's runs mostly share one)


class _TracedModel:
    """A built model and its traced test step; the lock keeps two runs on two threads from mixing weights."""

    def __init__(self, spec: ModelSpec) -> None:
        from .._tf import tensorflow

        self.model = build_model(spec)
        self.test_step = tensorflow().function(self.model.test_step, reduce_retracing=True)
        self.lock = threading.Lock()


_traced: OrderedDict[str, _TracedModel] = OrderedDict()
_traced_lock = threading.Lock()


def _traced_model(spec: ModelSpec) -> _TracedModel:
    """The process's traced model for `spec`, built on first use: runs that follow one another in a kernel
    (the same model code, new run) reuse it instead of paying a build and a trace each, and instead of
    leaving one more Keras model and graph behind in the kernel per run."""
    with _traced_lock:
        key = spec.fingerprint
        if key in _traced:
            _traced.move_to_end(key)
            return _traced[key]
        traced = _traced[key] = _TracedModel(spec)
        while len(_traced) > _TRACED_LIMIT:
            _traced.popitem(last=False)
        return traced


class Evaluator:
    """Scores each round's weights on the test split with a traced test step.

    Calling the traced `test_step` directly gives what `model.evaluate` gives (the compiled loss and
    metrics, averaged over the split) without evaluate's per-call setup, which cost more than the
    scoring itself on small test splits (see BENCHMARKS.md).
    """

    def __init__(self, spec: ModelSpec, x_test: np.ndarray, y_test: np.ndarray, batch_size: int = 1024) -> None:
        self.spec, self.x_test, self.y_test, self.batch_size = spec, x_test, y_test, batch_size

    def __call__(self, weights: list[np.ndarray]) -> dict[str, float]:
        traced = _traced_model(self.spec)
        with traced.lock:
            traced.model.set_weights(weights)
            traced.model.reset_metrics()
            logs: dict[str, Any] = {}
            for start in range(0, len(self.x_test), self.batch_size):
                end = start + self.batch_size
                logs = traced.test_step((self.x_test[start:end], self.y_test[start:end]))
            return {name: float(value) for name, value in logs.items()}
