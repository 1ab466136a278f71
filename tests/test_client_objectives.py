"""The client step's extra objective terms: FedProx's proximal pull and SCAFFOLD's gradient correction."""


import numpy as np
import pytest

from fedless_nb.function import handler as client
from fedless_nb.function.handler import handle
from fedless_nb.wire import PayloadError
from fedless_nb.store import LocalStore, decode_arrays, encode_arrays

from client_tasks import client_task


@pytest.fixture(autouse=True)
def fresh_process_state(monkeypatch):
    monkeypatch.setattr(client, "_STATE", client._WarmState())


@pytest.fixture
def task(tmp_path):
    return client_task(tmp_path, examples=64, epochs=5, learning_rate=0.5)


def _moves(task):
    store = LocalStore(task["store"]["root"])
    return [u - g for u, g in zip(decode_arrays(store.get(task["update"])), decode_arrays(store.get("global")))]


def _distance(moves):
    return float(np.sqrt(sum(np.sum(m.astype(np.float64) ** 2) for m in moves)))


def test_the_proximal_term_keeps_the_update_near_the_global_model(task):
    handle(task)
    free = _distance(_moves(task))
    handle({**task, "train": {**task["train"], "proximal_mu": 1.0}})
    assert _distance(_moves(task)) < 0.5 * free


def test_the_correction_is_added_to_every_gradient(task):
    store = LocalStore(task["store"]["root"])
    weights = decode_arrays(store.get("global"))
    store.put("correction", encode_arrays([np.full(w.shape, 5.0, np.float32) for w in weights]))
    handle({**task, "train": {**task["train"], "correction": "correction"}})
    # 20 SGD steps of lr 0.5 with a constant gradient term of 5 move every weight by about -50
    moves = np.concatenate([m.ravel() for m in _moves(task)])
    assert np.mean(moves) == pytest.approx(-50.0, rel=0.05)


def test_a_correction_of_the_wrong_shape_is_refused(task):
    store = LocalStore(task["store"]["root"])
    store.put("correction", encode_arrays([np.zeros(3, np.float32)]))
    with pytest.raises(PayloadError, match="do not match the model's trainable weights"):
        handle({**task, "train": {**task["train"], "correction": "correction"}})


def test_a_warm_function_pulls_towards_this_tasks_model_with_this_tasks_correction(task):
    """The anchor and the correction are kept in variables between steps: a warm invocation must not keep the last
    client's. Trained warm after another client's FedProx + SCAFFOLD task, a task gives what a fresh process gives."""
    store = LocalStore(task["store"]["root"])
    weights = decode_arrays(store.get("global"))
    store.put("other-global", encode_arrays([w + 3.0 for w in weights]))
    store.put("other-correction", encode_arrays([np.full(w.shape, 4.0, np.float32) for w in weights]))
    store.put("correction", encode_arrays([np.full(w.shape, -0.5, np.float32) for w in weights]))
    mine = {**task, "train": {**task["train"], "proximal_mu": 0.7, "correction": "correction"}}
    handle(mine)
    fresh = decode_arrays(store.get(task["update"]))
    handle({**task, "weights": "other-global", "update": "runs/r/u/other",
            "train": {**task["train"], "proximal_mu": 2.0, "correction": "other-correction"}})
    handle({**task, "update": "runs/r/u/plain"})  # neither term: the last correction must not linger either
    handle(mine)
    for warm, cold in zip(decode_arrays(store.get(task["update"])), fresh):
        np.testing.assert_allclose(warm, cold, rtol=1e-6, atol=1e-6)
    plain_fresh = client._WarmState()
    client._STATE = plain_fresh
    handle({**task, "update": "runs/r/u/plain-fresh"})
    for warm, cold in zip(decode_arrays(store.get("runs/r/u/plain")), decode_arrays(store.get("runs/r/u/plain-fresh"))):
        np.testing.assert_allclose(warm, cold, rtol=1e-6, atol=1e-6)
