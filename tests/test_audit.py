"""The membership-inference audit: a small client trained to overfit leaks, strong DP-SGD does not."""

import time

import numpy as np
import pytest
from sklearn import metrics

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


def test_the_loss_threshold_figures_are_tensorflow_privacys_computed_independently(tmp_path):
    """AUC, attacker advantage and PPV as tensorflow-privacy's threshold attack computes them (its log_loss, labels
    0 for members and 1 for non-members scored by loss, metrics.auc, max |tpr - fpr|), and PPV by brute force as the
    precision of calling an example a member (TP / (TP + FP) over every threshold; the sample is balanced)."""
    model, members, non_members = _train_client(tmp_path, 60, epochs=60, batch_size=10, learning_rate=0.3)
    non_members = (non_members[0][:60], non_members[1][:60])  # as many as members: the audit takes them all
    audit = membership_audit(model, members, non_members)

    def log_loss(x, y):
        return -np.log(np.maximum(np.float64(model.predict(x, verbose=0))[np.arange(len(y)), y], 1e-8))

    loss_in, loss_out = log_loss(*members), log_loss(*non_members)
    fpr, tpr, _ = metrics.roc_curve(np.r_[np.zeros(60), np.ones(60)], np.r_[loss_in, loss_out])
    scores, is_member = -np.r_[loss_in, loss_out], np.r_[np.ones(60), np.zeros(60)]
    precision = [is_member[scores >= t].mean() for t in np.unique(scores)]
    figures = audit.loss_threshold
    assert figures.auc == pytest.approx(metrics.auc(fpr, tpr), abs=1e-12)
    assert figures.advantage == pytest.approx(np.max(np.abs(tpr - fpr)), abs=1e-12)
    assert figures.ppv == pytest.approx(max(0.5, max(precision)), abs=1e-12)
    assert 0.5 < figures.auc and 0 < figures.advantage <= 1 and audit.advantage >= figures.advantage
    assert audit.to_dict()["loss_threshold_ppv"] == figures.ppv and audit.loss_threshold_auc == figures.auc
