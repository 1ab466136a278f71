"""Real client tasks on a local store, signed the way the controller signs them (for security and adapter tests)."""

import json
import time

import numpy as np
import pytest

from fedless_nb import zoo
from fedless_nb.function import handler as client
from fedless_nb.model import model_spec_from
from fedless_nb.reduction import SumSpec
from fedless_nb import security
from fedless_nb.security import NonceCache, client_key
from fedless_nb.store import LocalStore, encode_arrays
from fedless_nb.store.keys import aggregate_key, client_data_key, secagg_key

SECRET = "test-run-secret-0123456789abcdef"


CLIENTS = [f"client-{index:04d}" for index in range(4)]  # the clients that tasks here are made for


def data_key(client_id):
    """Where write_inputs puts `client_id`'s data: its own key, as a signed task must name it."""
    return client_data_key("partition", client_id)


def write_inputs(root):
    """A tiny model's initial weights and each of CLIENTS' data (the same examples) in a local store at `root`."""
    store = LocalStore(root)
    spec, weights = model_spec_from(zoo.mlp, builder_context={"input_shape": (8,), "num_classes": 3, "hidden_units": [4]})
    store.put("global", encode_arrays(weights))
    rng = np.random.default_rng(0)
    data = encode_arrays([rng.random((40, 8), dtype=np.float32), rng.integers(0, 3, 40)])
    for client_id in CLIENTS:
        store.put(data_key(client_id), data)
    return store, spec


def write_custom_layer_inputs(root):
    """write_inputs with a model of tests/registered_layers.py's custom Scale layer instead of the built-in MLP."""
    from tensorflow import keras

    from registered_layers import Scale

    store, _ = write_inputs(root)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), Scale(0.5), keras.layers.Dense(3, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy")
    spec, weights = model_spec_from(model)
    store.put("global", encode_arrays(weights))
    return store, spec


def reading_file(path):
    """A spec whose TF op layers (Keras's record of `tf.strings.strip(x)` in a functional model, one renamed to
    io.read_file, no module named) read `path` on the function into a number, so TensorFlow's error carries its text."""
    import tensorflow as tf
    from tensorflow import keras

    from fedless_nb.model import ModelSpec

    inputs = keras.Input((8,))
    name = tf.strings.regex_replace(tf.strings.reduce_join(tf.strings.as_string(inputs)), ".*", str(path),
                                    replace_global=False)
    number = tf.reshape(tf.strings.to_number(tf.strings.strip(name)), [1, 1])
    hidden = keras.layers.Dense(4, activation="relu")(inputs + number)  # the weights' shapes of write_inputs' model
    architecture = json.loads(keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(hidden)).to_json())
    for layer in architecture["config"]["layers"]:
        layer.pop("module")
        if layer["config"].get("function") == "strings.strip":
            layer["config"]["function"] = "io.read_file"
    return ModelSpec(json.dumps(architecture), {"loss": "sparse_categorical_crossentropy", "metrics": []})


def make_task(store, spec, client_id="client-0000", *, run_id="run-1", secret=SECRET, deadline=None, weights="global"):
    """A task of the wire contract, with a token from `secret` (None: unsigned)."""
    task = {
        "run_id": run_id, "round": 1, "client_id": client_id, "model": spec.to_wire(), "weights": weights,
        "data": data_key(client_id), "update": f"runs/{run_id}/round-00001/updates/{client_id}.weights",
        "train": {"epochs": 1, "batch_size": 16, "optimizer": "sgd", "learning_rate": 0.1, "seed": 1},
        "store": store.descriptor(), "token": None, "deadline": time.time() + 60 if deadline is None else deadline,
    }
    if secret is not None:
        task["token"] = client_key(secret, run_id, client_id).issue_token(task)
    return task


def make_keys_stage_task(store, spec, *, run_id="run-1", secret=SECRET):
    """client-0000's task for the first stage of a secure round with two peers, with a token from `secret`."""
    task = make_task(store, spec, run_id=run_id, secret=None)
    task["update"] = secagg_key(run_id, 1, "client-0000", "keys")
    task["train"]["secagg"] = {"stage": "keys", "attempt": 1, "threshold": 2, "peers": ["client-0001", "client-0002"],
                               "clipping_range": 8.0, "quantization_range": 2**20}
    task["token"] = client_key(secret, run_id, "client-0000").issue_token(task)
    return task


def make_aggregator_task(store, *, run_id="run-1", secret=SECRET):
    """An aggregator's task of one shard (aggregate_wire.py) over client-0000's update, with a token from `secret`."""
    task = {
        "kind": "aggregate", "run_id": run_id, "round": 1, "client_id": "aggregator-0-00001", "level": 0,
        "weights": "global", "update": aggregate_key(run_id, 1, "aggregator-0-00001"),
        "spec": SumSpec().to_wire(), "max_update_bytes": 2**20, "store": store.descriptor(), "token": None,
        "entries": [{"client_id": "client-0000", "key": f"runs/{run_id}/round-00001/updates/client-0000.weights",
                     "result": {}}], "deadline": time.time() + 60,
    }
    task["token"] = client_key(secret, run_id, task["client_id"]).issue_token(task)
    return task


@pytest.fixture
def function_env(monkeypatch):
    """This process acts as a deployed function holding SECRET, in a fresh process state."""
    monkeypatch.delenv("FEDLESS_ALLOW_UNSIGNED", raising=False)
    monkeypatch.setenv("FEDLESS_RUN_SECRET", SECRET)
    monkeypatch.setattr(client, "_STATE", client._WarmState())
    monkeypatch.setattr(security, "SPENT_TOKENS", NonceCache())
