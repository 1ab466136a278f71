"""The membership-inference audit: a small client trained to overfit leaks, strong DP-SGD does not."""

import time

import pytest

from fedless_nb import zoo
from fedless_nb.data import load_dataset
from fedless_nb.function import handler as client
from fedless_nb.function.handler import handle
from fedless_nb.model import build_model, model_spec_from
from fedless_nb.privacy.audit import membership_audit
from fedless_nb.store import LocalStore, decode_arrays, encode_arrays


@pytest.fixture(autouse=True)
def fresh_process_state(monkeypatch):
    monkeypatch.setattr(client, "_STATE", client._WarmState())


def _train_client(root, examples, **train):
    """The real client step on `examples` digits; returns the trained model and its training data."""
    digits = load_dataset("digits")
    x, y = digits.x_train[:examples], digits.y_train[:examples]
    store = LocalStore(root)
    context = {"input_shape": digits.input_shape, "num_classes": digits.num_classes, "hidden_units": [128]}
    spec, weights = model_spec_from(zoo.mlp, seed=0, builder_context=context)
    store.put("global", encode_arrays(weights))
    store.put("data/a", encode_arrays([x, y]))
    task = {"run_id": "r", "round": 1, "client_id": "client-0000", "model": spec.to_wire(), "weights": "global",
            "data": "data/a", "update": "runs/r/u/client-0000",
            "train": {"optimizer": "sgd", "seed": 1, **train}, "store": store.descriptor(), "token": None,
            "deadline": time.time() + 900}
    handle(task)
    model = build_model(spec)
    model.set_weights(decode_arrays(store.get(task["update"])))
    return model, (x, y), (digits.x_test, digits.y_test)


def test_an_overfit_client_without_dp_is_clearly_exposed(tmp_path):
    model, members, non_members = _train_client(tmp_path, 60, epochs=200, batch_size=10, learning_rate=0.3)
    audit = membership_audit(model, members, non_members)
    assert audit.members == audit.non_members == 60
    assert audit.loss_threshold_auc > 0.65 and audit.auc > 0.65, audit


def test_strong_dp_sgd_leaves_the_attacker_near_a_coin_flip(tmp_path):
    model, members, non_members = _train_client(
        tmp_path, 100, epochs=30, batch_size=10, learning_rate=0.3,
        dp={"l2_norm_clip": 1.0, "noise_multiplier": 4.0, "sampling": "poisson"})
    audit = membership_audit(model, members, non_members)
    assert abs(audit.loss_threshold_auc - 0.5) < 0.1 and abs(audit.trained_attack_auc - 0.5) < 0.12, audit
