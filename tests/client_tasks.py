"""A task for the client step run in-process: a tiny MLP, random data in a local store (shared by its tests)."""

import time

import numpy as np

from fedless_nb import zoo
from fedless_nb.model import model_spec_from
from fedless_nb.store import LocalStore, encode_arrays

DEFAULT_TRAIN = {"epochs": 2, "batch_size": 16, "optimizer": "sgd", "learning_rate": 0.1, "seed": 1}


def client_task(root, examples=40, **train):
    """An unsigned task for client-0000 over `examples` random rows of 8 features and 3 classes; `train` overrides."""
    store = LocalStore(root)
    spec, weights = model_spec_from(zoo.mlp, builder_context={"input_shape": (8,), "num_classes": 3, "hidden_units": [4]})
    store.put("global", encode_arrays(weights))
    rng = np.random.default_rng(0)
    store.put("data/a", encode_arrays([rng.random((examples, 8), dtype=np.float32), rng.integers(0, 3, examples)]))
    return {
        "run_id": "r", "round": 1, "client_id": "client-0000", "model": spec.to_wire(), "weights": "global",
        "data": "data/a", "update": "runs/r/u/client-0000", "train": {**DEFAULT_TRAIN, **train},
        "store": store.descriptor(), "token": None, "deadline": time.time() + 60,
    }
