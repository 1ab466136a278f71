"""Evaluating the global model on the held-out test split, in the controller's process."""

from __future__ import annotations

from typing import Any

import numpy as np

from .model import ModelSpec, build_model


class Evaluator:
    """Builds the model once, then scores each round's weights on the test split."""

    def __init__(self, spec: ModelSpec, x_test: np.ndarray, y_test: np.ndarray, batch_size: int = 1024) -> None:
        self.spec, self.x_test, self.y_test, self.batch_size = spec, x_test, y_test, batch_size
        self._model: Any = None

    def __call__(self, weights: list[np.ndarray]) -> dict[str, float]:
        if self._model is None:
            self._model = build_model(self.spec)
        self._model.set_weights(weights)
        scores = self._model.evaluate(self.x_test, self.y_test, batch_size=self.batch_size, verbose=0, return_dict=True)
        return {name: float(value) for name, value in scores.items()}
