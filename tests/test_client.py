"""The client step in-process: the contract, the warm path and refusals of malformed tasks."""

import time

import numpy as np
import pytest

from fedless_nb.function import handler as client
from fedless_nb.function.handler import handle
from fedless_nb.wire import PayloadError
from fedless_nb.store import LocalStore, decode_arrays, encode_arrays

from client_tasks import client_task


@pytest.fixture
def task(tmp_path):
    return client_task(tmp_path)


@pytest.fixture(autouse=True)
def fresh_process_state(monkeypatch):
    """Each test sees the client as a freshly started function process."""
    monkeypatch.setattr(client, "_STATE", client._WarmState())


def test_result_follows_the_contract_and_the_update_is_stored(task):
    result = handle(task)
    assert {k: result[k] for k in ("run_id", "round", "client_id", "update")} == {
        "run_id": "r", "round": 1, "client_id": "client-0000", "update": "runs/r/u/client-0000"}
    assert result["num_examples"] == 40 and set(result["metrics"]) == {"loss", "accuracy"}
    assert set(result["timings"]) >= {"cold_start", "load", "train", "upload", "total"}
    update = decode_arrays(LocalStore(task["store"]["root"]).get(task["update"]))
    original = decode_arrays(LocalStore(task["store"]["root"]).get("global"))
    assert [u.shape for u in update] == [o.shape for o in original]
    assert any(not np.array_equal(u, o) for u, o in zip(update, original)), "training changed the weights"


def test_warm_invocation_rebuilds_nothing(task):
    first = handle(task)
    compiled = client._STATE.compiled
    second = handle({**task, "client_id": "client-0001", "update": "runs/r/u/client-0001"})
    assert first["cold"] is True and first["timings"]["cold_start"] > 0
    assert second["cold"] is False and second["timings"]["cold_start"] == 0 and second["timings"]["build"] == 0
    assert client._STATE.compiled is compiled, "the compiled model and its traced step are reused"
    assert list(client._STATE.data) == ["data/a"], "the client data stays cached"


def test_same_task_gives_the_same_update_despite_warm_optimizer_state(task):
    task["train"]["optimizer"] = "adam"
    handle(task)
    first = decode_arrays(LocalStore(task["store"]["root"]).get(task["update"]))
    first = [np.array(a) for a in first]
    handle(task)
    second = decode_arrays(LocalStore(task["store"]["root"]).get(task["update"]))
    assert all(np.array_equal(a, b) for a, b in zip(first, second)), "optimizer state is reset per invocation"


def test_a_new_learning_rate_recompiles(task):
    handle(task)
    compiled = client._STATE.compiled
    result = handle({**task, "train": {**task["train"], "learning_rate": 0.01}})
    assert client._STATE.compiled is not compiled and result["timings"]["build"] > 0


def test_data_cache_is_bounded_in_bytes(task, monkeypatch):
    store = LocalStore(task["store"]["root"])
    for name in ("b", "c"):
        store.put(f"data/{name}", encode_arrays([np.ones((40, 8), np.float32), np.zeros(40, np.int64)]))
    monkeypatch.setenv("FEDLESS_DATA_CACHE_MB", str(2 * (40 * 8 * 4 + 40 * 8) / 2**20))
    for name in ("a", "b", "c"):
        handle({**task, "data": f"data/{name}"})
    assert list(client._STATE.data) == ["data/b", "data/c"]
    assert client._STATE.data_bytes <= client._STATE.data_limit


@pytest.mark.parametrize("change, message", [
    (lambda t: t.pop("weights"), "lacks weights"),
    (lambda t: t["train"].update(momentum=0.9), "does not support the train setting momentum; redeploy"),
    (lambda t: t["train"].update(momentum=0.9, nesterov=True), "does not support the train settings momentum, nesterov;"),
    (lambda t: t["train"].update(dp={"noise_multiplier": 1.0}), "train.dp must give l2_norm_clip"),
    (lambda t: t.update(deadline=time.time() - 1), "after its round deadline"),
])
def test_malformed_tasks_are_refused_before_anything_is_written(task, change, message):
    change(task)
    with pytest.raises(PayloadError, match=message):
        handle(task)
    assert not LocalStore(task["store"]["root"]).exists("runs/r/u/client-0000")


def test_non_object_task_is_refused():
    with pytest.raises(PayloadError, match="must be a JSON object"):
        handle(["not", "a", "task"])


def test_a_warm_invocation_reports_only_its_own_metrics(task, monkeypatch):
    """The metrics and optimizer state of the previous client never leak into the next one's result."""
    store = LocalStore(task["store"]["root"])
    rng = np.random.default_rng(7)
    store.put("data/b", encode_arrays([rng.random((24, 8), dtype=np.float32), rng.integers(0, 3, 24)]))
    other = {**task, "client_id": "client-0001", "data": "data/b", "update": "runs/r/u/client-0001"}
    alone = handle(other)["metrics"]
    monkeypatch.setattr(client, "_STATE", client._WarmState())
    handle(task)
    after_another = handle({**other, "update": "runs/r/u/client-0001-again"})["metrics"]
    assert after_another == pytest.approx(alone, abs=1e-6)
