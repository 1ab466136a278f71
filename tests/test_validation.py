"""Bad input never corrupts a run: wrong shapes or dtypes, NaN or Inf, outlying norms, oversized or malformed replies."""

import asyncio
import math

import numpy as np
import pytest

from fedless_nb.records.history import History
from fedless_nb.providers import InvocationError, LocalProvider
from fedless_nb.providers.faults import FaultRates, FaultyProvider
from fedless_nb.runner import run_experiment
from fedless_nb.strategies.base import ClientUpdate
from fedless_nb.rounds.resilience import NothingTrainedError
from fedless_nb.rounds.screening import norm_outliers, update_problem

REFERENCE = [np.zeros((3, 2), np.float32), np.zeros(2, np.float32)]


@pytest.mark.parametrize("update, reason", [
    ([np.zeros((2, 3), np.float32), np.zeros(2, np.float32)], "array 0 is ((2, 3), 'float32'), expected ((3, 2), 'float32')"),
    ([np.zeros((3, 2), np.float64), np.zeros(2, np.float32)], "array 0 is ((3, 2), 'float64')"),
    ([np.zeros((3, 2), np.float32)], "1 arrays for 2, array 1 is nothing, expected ((2,), 'float32')"),
    ([np.zeros((3, 2), np.float32), np.array([0, np.nan], np.float32)], "NaN or Inf values (array 1)"),
    ([np.full((3, 2), np.inf, np.float32), np.zeros(2, np.float32)], "NaN or Inf values (array 0)"),
])
def test_an_unusable_update_is_named(update, reason):
    assert reason in update_problem(update, REFERENCE)


def test_a_sound_update_passes():
    assert update_problem([np.ones((3, 2), np.float32), np.ones(2, np.float32)], REFERENCE) is None


def _updates(scales):
    return [ClientUpdate(f"c{i}", [np.full((3, 2), s, np.float32), np.full(2, s, np.float32)], 10)
            for i, s in enumerate(scales)]


def test_the_norm_rule_rejects_only_updates_far_beyond_the_median():
    rejected = norm_outliers(_updates([1.0, 1.2, 0.9, 1.1, 50.0]), REFERENCE, ratio=10)
    assert list(rejected) == ["c4"] and "more than 10x the round's median" in rejected["c4"]
    assert norm_outliers(_updates([1.0, 1.2, 0.9, 1.1, 5.0]), REFERENCE, ratio=10) == {}
    assert norm_outliers(_updates([1.0, 50.0]), REFERENCE, ratio=10) == {}, "two updates have no meaningful median"
    assert norm_outliers(_updates([1.0, 1.2, 50.0]), REFERENCE, ratio=0) == {}, "0 turns the rule off"


def test_poisoned_updates_are_rejected_with_their_reasons_and_the_model_stays_sound(tiny_config):
    config = tiny_config(rounds=1, clients_per_round=6)
    provider = LocalProvider("local", workers=2, entry_point="workloads:poisons_updates")
    result = run_experiment(config, providers={"local": provider})
    history = History(config.history)
    invocations = {i["client_id"]: i for i in history.invocations(result.run_id)}
    assert {c: i["outcome"] for c, i in invocations.items()} == {
        "client-0000": "succeeded", "client-0001": "failed", "client-0002": "failed", "client-0003": "failed",
        "client-0004": "failed", "client-0005": "succeeded"}
    reasons = {c: i["error"] for c, i in invocations.items() if i["outcome"] == "failed"}
    assert all(invocations[c]["cause"] == "rejected" for c in reasons)
    assert "NaN or Inf" in reasons["client-0001"]
    assert "float64" in reasons["client-0002"]
    assert "arrays for" in reasons["client-0003"]
    assert "L2 norm" in reasons["client-0004"] and invocations["client-0004"]["t_train"] > 0, "timings kept"
    assert history.rounds(result.run_id)[0]["succeeded"] == 2
    assert all(np.all(np.isfinite(w)) for w in result.weights) and math.isfinite(result.final_accuracy)


def _invoke(provider, tasks):
    async def body():
        try:
            return [await _attempt(provider, task) for task in tasks]
        finally:
            await provider.close()

    async def _attempt(provider, task):
        try:
            return await provider.invoke(task)
        except InvocationError as error:
            return error

    return asyncio.run(body())


def test_an_oversized_reply_is_a_failed_invocation_and_the_worker_is_replaced():
    provider = LocalProvider(workers=1, entry_point="workloads:oversized_reply", reply_limit=2**20)
    oversized, after = _invoke(provider, [{"size": 3 * 2**20}, {"echo": 1}])
    assert isinstance(oversized, InvocationError) and oversized.cause == "invalid"
    assert f"the reply exceeded {2**20} bytes" in str(oversized)
    assert after["echo"] == 1 and after["calls"] == 1, "a fresh worker answers the next call"


def test_malformed_results_are_recorded_failures(tiny_config):
    config = tiny_config(rounds=1, retries=0)
    provider = FaultyProvider(LocalProvider("local", workers=2), FaultRates(garbage=1.0, seed=5))
    with pytest.raises(NothingTrainedError, match=r"no client function returned a valid update in 1 round \(4 invocations failed or were refused\); "):
        run_experiment(config, providers={"local": provider})
    history = History(config.history)
    (run,) = history.runs()
    invocations = history.invocations(run["run_id"])
    assert len(invocations) == 4 and all(i["outcome"] == "failed" for i in invocations)
    assert {i["cause"] for i in invocations} <= {"invalid", "error"} and all(i["error"] for i in invocations)
    assert run["status"] == "failed" and len(history.rounds(run["run_id"])) == 1, "the round is kept, the run failed"


def test_a_huge_but_finite_metric_claim_cannot_overflow_the_rounds_training_metrics():
    """A client's metrics are its claim: finite (the wire refuses NaN and Inf) but up to 1.8e308; weighted by its
    examples, such a claim used to overflow the round's average to Inf in the history and the dashboard."""
    from fedless_nb.rounds.controller import weighted_metrics

    updates = [ClientUpdate("honest", [], 40, {"loss": 0.5}), ClientUpdate("liar", [], 60, {"loss": 1.7e308})]
    averaged = weighted_metrics(updates)["loss"]
    assert math.isfinite(averaged) and averaged == pytest.approx(0.6 * 1.7e308)
    assert weighted_metrics([ClientUpdate("a", [], 1, {"acc": 0.25}), ClientUpdate("b", [], 3, {"acc": 0.75})]) == {
        "acc": pytest.approx(0.625)}


def test_a_result_claiming_one_example_is_refused_in_words():
    """'the result claims 1 examples' read as a slip; counts read in words (wording.counted)."""
    from types import SimpleNamespace

    from fedless_nb.rounds.controller import ClientRef, Controller

    client = ClientRef("client-0000", "data/client-0000", "local", num_examples=1)
    with pytest.raises(InvocationError, match=r"^the result claims 2 examples, but the client's partition has 1$"):
        Controller._example_count_checked(SimpleNamespace(num_examples=2), client)
    with pytest.raises(InvocationError, match=r"^the result claims 1 example, but the client's partition has 2$"):
        Controller._example_count_checked(SimpleNamespace(num_examples=1), ClientRef("c", "d", "local", num_examples=2))
    facts = SimpleNamespace(noise_multiplier=1.0, l2_norm_clip=1.0, num_examples=1)
    controller = SimpleNamespace(plan=SimpleNamespace(train={"dp": {"noise_multiplier": 2.0, "l2_norm_clip": 1.0}}))
    assert Controller._privacy_problem(controller, SimpleNamespace(privacy=facts), client) == (
        "the result's privacy block claims noise 1, clip 1, 1 example; its task set noise 2, clip 1, 1 example")
