"""The controller's evaluation scores exactly what Keras' model.evaluate scores."""

import numpy as np
import pytest

from fedless_nb.data import load_dataset
from fedless_nb.rounds.evaluation import Evaluator
from fedless_nb.model import build_model, model_spec_from
from fedless_nb.zoo import mlp


@pytest.mark.parametrize("batch_size", [1024, 100])
def test_the_traced_test_step_matches_model_evaluate(batch_size):
    dataset = load_dataset("digits")
    spec, initial = model_spec_from(mlp, seed=0, builder_context={"input_shape": dataset.input_shape, "num_classes": 10})
    evaluator, reference = Evaluator(spec, dataset.x_test, dataset.y_test, batch_size=batch_size), build_model(spec)
    for seed in range(3):  # several rounds' weights through one evaluator: its metrics restart each time
        weights = [w + np.random.default_rng(seed).normal(0, 0.1, w.shape).astype(np.float32) for w in initial]
        reference.set_weights(weights)
        expected = reference.evaluate(dataset.x_test, dataset.y_test, batch_size=batch_size, verbose=0, return_dict=True)
        assert evaluator(weights) == pytest.approx(expected, rel=1e-5)


def test_runs_of_the_same_model_share_one_traced_model():
    """A kernel's second run of the same model code reuses the traced test step (no build, no trace, no
    extra Keras model left behind); another architecture gets its own."""
    from fedless_nb.rounds.evaluation import _traced_model

    context = {"input_shape": (64,), "num_classes": 10}
    first, _ = model_spec_from(mlp, builder_context=context)
    second, _ = model_spec_from(mlp, builder_context=context)
    other, _ = model_spec_from(mlp, builder_context={**context, "hidden_units": [8]})
    assert _traced_model(first) is _traced_model(second)
    assert _traced_model(other) is not _traced_model(first)
