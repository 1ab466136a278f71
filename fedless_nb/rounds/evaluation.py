"""Evaluating the global model on the held-out test split, in the controller's process."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..model import ModelSpec, build_model


class Evaluator:
    """Builds the model and traces its test step once, then scores each round's weights on the test split.

    Calling the traced `test_step` directly gives what `model.evaluate` gives (the compiled loss and
    metrics, averaged over the split) without evaluate's per-call setup, which cost more than the
    scoring itself on small test splits (see BENCHMARKS.md).
    """

    def __init__(self, spec: ModelSpec, x_test: np.ndarray, y_test: np.ndarray, batch_size: int = 1024) -> None:
        self.spec, self.x_test, self.y_test, self.batch_size = spec, x_test, y_test, batch_size
        self._model: Any = None
        self._test_step: Any = None

    def __call__(self, weights: list[np.ndarray]) -> dict[str, float]:
        if self._model is None:
            from .._tf import tensorflow

            self._model = build_model(self.spec)
            self._test_step = tensorflow().function(self._model.test_step, reduce_retracing=True)
        self._model.set_weights(weights)
        self._model.reset_metrics()
        logs: dict[str, Any] = {}
        for start in range(0, len(self.x_test), self.batch_size):
            end = start + self.batch_size
            logs = self._test_step((self.x_test[start:end], self.y_test[start:end]))
        return {name: float(value) for name, value in logs.items()}
