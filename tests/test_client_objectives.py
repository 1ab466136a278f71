"""The client step's extra objective terms: FedProx's proximal pull and SCAFFOLD's gradient correction."""


import numpy as np
import pytest

from fedless_nb.function import handler as client
from fedless_nb.function.handler import handle
from fedless_nb.wire import PayloadError
from fedless_nb.store import LocalStore, decode_arrays, encode_arrays

from client_tasks import client_task, softmax_regression_dp_steps


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


# -- under DP-SGD: the local terms are added after clipping and noise ----------------------------------------------


def _dp(clip):
    """DP-SGD without noise, every example its own microbatch, fixed-size batches (the whole data set below)."""
    return {"l2_norm_clip": clip, "noise_multiplier": 0.0, "sampling": "shuffle"}


def _put_correction(task, value):
    store = LocalStore(task["store"]["root"])
    store.put("correction", encode_arrays([np.full(w.shape, value, np.float32) for w in decode_arrays(store.get("global"))]))
    return "correction"


def test_a_clip_that_never_bites_gives_the_non_dp_fedprox_scaffold_update(tmp_path):
    """With noise 0 and a clip above every example's gradient, DP-SGD's step is the mean gradient: a FedProx + SCAFFOLD
    client (5 full-batch steps, so both sides see the same batches) moves as it does without DP."""
    task = client_task(tmp_path, examples=24, epochs=5, batch_size=24, learning_rate=0.5, proximal_mu=0.7)
    task["train"]["correction"] = _put_correction(task, -0.3)
    store = LocalStore(task["store"]["root"])
    handle({**task, "update": "plain"})
    handle({**task, "update": "private", "train": {**task["train"], "dp": _dp(1e6)}})
    for private, plain in zip(decode_arrays(store.get("private")), decode_arrays(store.get("plain"))):
        np.testing.assert_allclose(private, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mu, correction", [(1.5, None), (0.0, 0.4), (1.5, 0.4)])
def test_under_dp_sgd_the_local_terms_are_not_clipped(tmp_path, mu, correction):
    """A clip of 0.3 bites every example (their gradients are about 1 to 2): the clipped mean gradient is the data's
    part of each step, and FedProx's pull mu (w - w_0) and SCAFFOLD's correction are added whole (by hand, two steps:
    the second pulls towards the global model)."""
    task = client_task(tmp_path, examples=12, hidden_units=(), epochs=2, batch_size=12, learning_rate=0.5,
                       proximal_mu=mu, dp=_dp(0.3))
    if correction is not None:
        task["train"]["correction"] = _put_correction(task, correction)
    handle(task)
    store = LocalStore(task["store"]["root"])
    x, y = decode_arrays(store.get("data/a"))
    trained_by_hand, _ = softmax_regression_dp_steps(x, y, decode_arrays(store.get("global")), 2, 0.5, 0.3, mu,
                                                     correction or 0.0)
    for trained, expected in zip(decode_arrays(store.get(task["update"])), trained_by_hand):
        np.testing.assert_allclose(trained, expected, rtol=1e-5, atol=1e-6)
