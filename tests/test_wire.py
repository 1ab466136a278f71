"""The wire contract is strict: a malformed task is a 400 before authentication, a malformed result one failed
invocation (never a crashed or half-recorded run), and the controller weighs updates by what it knows."""

import json
import math

import numpy as np
import pytest

from fedless_nb.function import serving
from fedless_nb.providers import InvocationError, LocalProvider
from fedless_nb.providers.base import Provider
from fedless_nb.records.history import History
from fedless_nb.runner import run_experiment
from fedless_nb.security import client_key
from fedless_nb.store import LocalStore, decode_arrays, store_from_descriptor
from fedless_nb.store.keys import global_weights_key, update_key
from fedless_nb.strategies.fedavg import fedavg
from fedless_nb.wire import PayloadError, ResultError, check_task, parse_result

from signed_tasks import function_env, make_task, write_inputs  # noqa: F401 (a fixture)

RUN, KEY = "run-1", "runs/run-1/round-00001/updates/c.weights"
GOOD = {"run_id": RUN, "round": 1, "client_id": "c", "update": KEY, "num_examples": 40,
        "metrics": {"loss": 0.5}, "timings": {"total": 1.0}, "cold": False, "privacy": None, "signature": None}

# Each way a function's reply can be wrong that once crashed or corrupted a run (issue 10).
MALFORMED = {
    "timings_text": {"timings": {"total": "fast"}},
    "timings_list": {"timings": [1, 2]},
    "timings_none": {"timings": None},
    "timings_nan": {"timings": {"total": math.nan}},
    "timings_inf": {"timings": {"train": math.inf}},
    "timings_absurd": {"timings": {"total": 1e30}},
    "num_examples_overflow": {"num_examples": 2**63},
    "num_examples_text": {"num_examples": "many"},
    "num_examples_bool": {"num_examples": True},
    "num_examples_zero": {"num_examples": 0},
    "metrics_nan": {"metrics": {"loss": math.nan}},
    "metrics_not_mapping": {"metrics": "n/a"},
    "metrics_too_many": {"metrics": {f"m{i}": 1.0 for i in range(1000)}},
    "privacy_text": {"privacy": "epsilon 0.1"},
    "privacy_absurd_noise": {"privacy": {"steps": 4, "sampling_rate": 0.4, "batch_size": 16, "num_examples": 40,
                                         "noise_multiplier": math.inf, "l2_norm_clip": 1.0, "microbatch_size": 1}},
    "privacy_negative_steps": {"privacy": {"steps": -5, "sampling_rate": 0.4, "batch_size": 16, "num_examples": 40,
                                           "noise_multiplier": 1.0, "l2_norm_clip": 1.0, "microbatch_size": 1}},
    "huge_client_id": {"client_id": "c" * 100_000},
    "unknown_field": {"exploit": 1},
}


def test_a_sound_result_parses():
    result = parse_result(GOOD, RUN, 1, "c", KEY)
    assert result.num_examples == 40 and result.timings.total == 1.0 and result.metrics == {"loss": 0.5}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_each_malformed_result_is_refused_as_invalid(kind):
    with pytest.raises(ResultError) as caught:
        parse_result({**GOOD, **MALFORMED[kind]}, RUN, 1, "c", KEY)
    assert caught.value.cause == "invalid" and len(str(caught.value)) < 300, "one line, never the whole input"


def test_a_late_result_is_told_apart_from_a_malformed_one():
    with pytest.raises(ResultError) as caught:
        parse_result({**GOOD, "round": 1}, RUN, 2, "c", KEY)
    assert caught.value.cause == "late"


def test_a_deeply_nested_task_is_refused_without_recursing():
    nested: object = []
    for _ in range(100_000):
        nested = [nested]
    with pytest.raises(PayloadError, match="nests deeper than"):
        check_task({"model": nested})


@pytest.mark.parametrize("body", [
    "[" * 200_000 + "]" * 200_000,                     # json.loads itself recurses too deep
    json.dumps({"run_id": "r", "train": []}),          # train is not a mapping
    json.dumps({"run_id": 7}),                         # wrong types, missing fields
])
def test_malformed_tasks_answer_400_before_authentication(function_env, monkeypatch, body):  # noqa: F811
    monkeypatch.delenv("FEDLESS_RUN_SECRET")  # a function without its secret would answer 401 to a task
    status, reply = serving.invoke(body)
    assert status == 400 and reply["error"]["type"] == "PayloadError"


def test_a_task_with_a_wrongly_typed_field_is_400_and_names_it(function_env, tmp_path):  # noqa: F811
    store, spec = write_inputs(tmp_path)
    task = make_task(store, spec)
    status, reply = serving.invoke({**task, "train": {**task["train"], "epochs": "3"}})
    assert status == 400 and "train.epochs" in reply["error"]["message"]


class ReplyingAs(Provider):
    """Compromised functions: `inner` trains for real, then each client of `changes` has its reply rewritten by
    its change and signed again with its key, so only the controller's own checks can catch it."""

    def __init__(self, inner: LocalProvider, changes) -> None:
        self.inner, self.changes = inner, dict(changes)
        self.name, self.kind = inner.name, inner.kind

    @property
    def secret(self):
        return self.inner.secret

    async def deploy(self, bundle=None):
        await self.inner.deploy(bundle)

    async def invoke(self, task):
        result = await self.inner.invoke(task)
        if task["client_id"] not in self.changes:
            return result
        update = store_from_descriptor(task["store"]).get(task["update"])
        change = self.changes[task["client_id"]]
        return client_key(self.secret, task["run_id"], task["client_id"]).sign_result(change(result), update)

    async def close(self):
        await self.inner.close()

    def describe(self):
        return self.inner.describe()


def _replacing(fields):
    return lambda result: {**result, **fields}


def test_one_run_with_a_function_per_malformed_result_finishes_with_only_those_invocations_failed(tiny_config):
    """Every kind of MALFORMED, and a claim of a billion examples, each from its own client of one run: each
    of their invocations is failed with its reason, every round finishes and the run row is `finished`, and each
    global model is exactly the FedAvg of the two honest clients' updates."""
    kinds = [*sorted(MALFORMED), "billion_examples"]
    honest = ["client-0000", f"client-{len(kinds) + 1:04d}"]
    forged = {f"client-{index:04d}": kind for index, kind in enumerate(kinds, start=1)}
    changes = {client: _replacing(MALFORMED.get(kind, {"num_examples": 10**9})) for client, kind in forged.items()}
    clients = len(kinds) + 2
    config = tiny_config(rounds=2, clients=clients, clients_per_round=clients, retries=0,
                         model={"builder": "mlp", "options": {"hidden_units": [4]}})
    result = run_experiment(config, providers={"local": ReplyingAs(LocalProvider("local", workers=2), changes)})

    history = History(config.history)
    assert result.status == "finished" and history.run(result.run_id)["status"] == "finished"
    rounds = history.rounds(result.run_id)
    assert [(r["round"], r["succeeded"], r["failed"]) for r in rounds] == [(1, 2, clients - 2), (2, 2, clients - 2)]
    invocations = history.invocations(result.run_id)
    assert len(invocations) == 2 * clients, "every invocation is recorded, once"
    for invocation in invocations:
        kind = forged.get(invocation["client_id"])
        if kind is None:
            assert invocation["outcome"] == "succeeded", invocation
        elif kind == "billion_examples":
            assert (invocation["outcome"], invocation["cause"]) == ("failed", "rejected")
            assert "claims 1000000000 examples" in invocation["error"]
        else:
            assert (invocation["outcome"], invocation["cause"]) == ("failed", "invalid"), (kind, invocation)
            assert "malformed" in invocation["error"] and len(invocation["error"]) < 300, (kind, invocation["error"])

    store = LocalStore(config.store.path)
    sizes = {i["client_id"]: i["num_examples"] for i in invocations if i["outcome"] == "succeeded"}
    for round_number in (1, 2):
        updates = [decode_arrays(store.get(update_key(result.run_id, round_number, c))) for c in honest]
        expected = fedavg(updates, [sizes[c] for c in honest])
        for got, want in zip(decode_arrays(store.get(global_weights_key(result.run_id, round_number))), expected):
            np.testing.assert_allclose(got, want, atol=1e-6)


def _without_client_1(inner: LocalProvider) -> ReplyingAs:
    def fail(result):
        raise InvocationError("the function crashed", "crash")

    return ReplyingAs(inner, {"client-0001": fail})


def test_a_signed_claim_of_a_billion_examples_has_no_effect_on_the_global_model(tiny_config):
    inflated = ReplyingAs(LocalProvider("local", workers=2), {"client-0001": _replacing({"num_examples": 10**9})})
    config = tiny_config(rounds=1, clients=3, clients_per_round=3, retries=0)
    attacked = run_experiment(config, providers={"local": inflated})
    refused = [i for i in History(config.history).invocations(attacked.run_id) if i["outcome"] == "failed"]
    assert [(i["client_id"], i["cause"]) for i in refused] == [("client-0001", "rejected")]
    assert "claims 1000000000 examples" in refused[0]["error"]
    absent = run_experiment(config, providers={"local": _without_client_1(LocalProvider("local", workers=2))})
    for got, expected in zip(attacked.weights, absent.weights):
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_a_raising_observer_never_ends_the_run_and_is_recorded(tiny_config, caplog):
    def broken(event):
        raise RuntimeError("dashboard went away")

    config = tiny_config(rounds=2, clients=3, clients_per_round=2)
    result = run_experiment(config, observers=[broken])
    run = History(config.history).run(result.run_id)
    assert result.status == "finished" and run["status"] == "finished"
    errors = json.loads(run["observer_errors"])
    assert list(errors) == ["test_a_raising_observer_never_ends_the_run_and_is_recorded.<locals>.broken"]
    assert errors[next(iter(errors))] >= 6, "every event it failed on is counted"
    assert sum("dashboard went away" in r.getMessage() or "broken" in r.getMessage() for r in caplog.records) == 1


def test_an_update_larger_than_the_model_is_refused_before_it_is_read(tiny_config):
    config = tiny_config(rounds=1, clients=3, clients_per_round=3, retries=0)
    provider = LocalProvider("local", workers=2, entry_point="workloads:oversized_update_on_client_1")
    result = run_experiment(config, providers={"local": provider})
    failed = [i for i in History(config.history).invocations(result.run_id) if i["outcome"] == "failed"]
    assert [(i["client_id"], i["cause"]) for i in failed] == [("client-0001", "rejected")]
    assert f"the update is {2**20} bytes" in failed[0]["error"] and "it was not read" in failed[0]["error"]


def test_a_privacy_block_the_task_rules_out_is_refused_and_the_dp_run_finishes(tiny_config):
    config = tiny_config(rounds=2, clients=3, clients_per_round=3, retries=0,
                         train={"epochs": 1, "batch_size": 32, "learning_rate": 0.1,
                                "dp": {"l2_norm_clip": 1.0, "noise_multiplier": 1.0}})
    absurd = ReplyingAs(LocalProvider("local", workers=2),
                        {"client-0001": lambda result: {**result, "privacy": {**result["privacy"], "noise_multiplier": 1e6}}})
    result = run_experiment(config, providers={"local": absurd})
    history = History(config.history)
    assert result.status == "finished" and history.run(result.run_id)["status"] == "finished"
    refused = [i for i in history.invocations(result.run_id) if i["outcome"] == "failed"]
    assert [(i["client_id"], i["cause"]) for i in refused] == [("client-0001", "invalid")] * 2
    assert "claims noise 1e+06" in refused[0]["error"] and math.isfinite(result.round_metrics[-1]["accuracy"])
