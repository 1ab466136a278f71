"""Tree aggregation: aggregator functions (function/aggregator.py) sum shards of a round where the updates are
stored, checking each update as the controller does; their partial sums, merged level by level, give every
sum-based strategy the model central aggregation gives; a forged or corrupt update is refused in its shard
and the rest of the round goes on."""

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from fedless_nb.aggregate_wire import parse_aggregate_result
from fedless_nb.experiment import ConfigError, ExperimentConfig
from fedless_nb import security
from fedless_nb.function.handler import handle
from fedless_nb.function.serving import invoke
from fedless_nb.notebook.pool import WarmLocalProvider
from fedless_nb.providers.local import LocalProvider
from fedless_nb.records.history import History
from fedless_nb.reduction import MaskedSum, SumSpec, WeightedSum
from fedless_nb.rounds.resilience import NothingTrainedError
from fedless_nb.rounds.tree import TreeOptions
from fedless_nb.runner import run_experiment, run_experiment_async
from fedless_nb.security import NonceCache, client_key, client_secret
from fedless_nb.store import LocalStore, encode_arrays
from fedless_nb.store.keys import aggregate_key, secagg_key
from fedless_nb.strategies import ClientUpdate, RunContext, make_strategy
from fedless_nb.strategies import central_dp
from fedless_nb.strategies.central_dp import CentralDP

from signed_tasks import SECRET
from one_client_functions import SlowReadsStore, ended_at_the_refusal

RUN, ROUND = "run-t", 1
TRAIN = {"epochs": 1, "batch_size": 10, "optimizer": "sgd", "learning_rate": 0.1}
RNG = np.random.default_rng(11)
CURRENT = [RNG.normal(size=(5, 4)).astype(np.float32), RNG.normal(size=4).astype(np.float32)]


@pytest.fixture
def aggregator_env(monkeypatch):
    monkeypatch.delenv("FEDLESS_ALLOW_UNSIGNED", raising=False)
    monkeypatch.delenv("FEDLESS_CLIENT_ID", raising=False)
    monkeypatch.setenv("FEDLESS_RUN_SECRET", SECRET)
    monkeypatch.setattr(security, "SPENT_TOKENS", NonceCache())


def _signed_result(store, client_id, key, data, examples, *, partial=False):
    """`data` written at `key` and the signed result a function returns for it."""
    store.put(key, data)
    planned = -(-examples // TRAIN["batch_size"])
    result = {"run_id": RUN, "round": ROUND, "client_id": client_id, "update": key, "num_examples": examples,
              "metrics": {"loss": 1.0}, "cold": False, "timings": {}, "privacy": None,
              "steps": max(1, planned - 1) if partial else planned, "partial": partial, "signature": None}
    return client_key(SECRET, RUN, client_id).sign_result(result, data)


def _client_update(store, index, *, partial=False):
    """A client's update in the store and its signed result, as a function leaves them."""
    client_id = f"client-{index:04d}"
    arrays = [(layer + RNG.normal(scale=0.3, size=layer.shape)).astype(np.float32) for layer in CURRENT]
    key = f"runs/{RUN}/round-{ROUND:05d}/updates/{client_id}.weights"
    examples = 10 * (index + 1)
    signed = _signed_result(store, client_id, key, encode_arrays(arrays), examples, partial=partial)
    update = ClientUpdate(client_id, arrays, examples, {"loss": 1.0}, signed["steps"], partial)
    return update, signed


def _task(store, aggregator_id, level, spec, entries):
    key = aggregate_key(RUN, ROUND, aggregator_id)
    task = {"kind": "aggregate", "run_id": RUN, "round": ROUND, "client_id": aggregator_id, "level": level,
            "weights": "global", "update": key, "spec": spec.to_wire(), "max_update_norm": 100.0,
            "max_update_bytes": 2**20, "entries": entries, "store": store.descriptor(), "token": None,
            "deadline": time.time() + 60}
    task["token"] = client_key(SECRET, RUN, aggregator_id).issue_token(task)
    return task, key


def _entry(update, result, strategy):
    term = strategy.sum_term(update)
    return {"client_id": update.client_id, "key": result["update"], "result": result,
            "term": None if term is None else {"scale": term.scale, "weight": term.weight, "extras": term.extras}}


def _summed(store, reply, aggregator_id, key, spec=SumSpec()):
    result = parse_aggregate_result(reply, RUN, ROUND, aggregator_id, key)
    data = store.get(key)
    client_key(SECRET, RUN, aggregator_id).verify_result(reply, data)
    return result, spec.read_sum(data)


def _bound(strategy):
    strategy.bind(RunContext(RUN, None, dict(TRAIN), clients=20, clients_per_round=7))
    return strategy


STRATEGIES = [("fedavg", {}), ("fedavg", {"partial_work": "drop"}), ("fedprox", {}), ("fedavgm", {"server_momentum": 0.5}),
              ("fedadam", {}), ("fedyogi", {}), ("fedadagrad", {}), ("fednova", {}), ("central_dp", {})]


def _strategy(name, options):
    if name == "central_dp":
        return _bound(CentralDP(make_strategy("fedavg"), noise_multiplier=0.3, clip_norm=1.0, adaptive=True,
                                clipped_count_stddev=1.0))
    return _bound(make_strategy(name, options))


@pytest.mark.parametrize("name, options", STRATEGIES)
def test_the_tree_gives_every_sum_based_strategy_the_central_model(tmp_path, aggregator_env, monkeypatch, name, options):
    """7 updates (2 of them partial work) in shards of 3, 3 and 1, merged by one aggregator a level up. Central DP's
    secret noise is drawn the same way both times here, so that the two models can be compared."""
    monkeypatch.setattr(central_dp, "secret_noise_rng", lambda: np.random.default_rng(2))
    store = LocalStore(tmp_path)
    store.put("global", encode_arrays(CURRENT))
    arrivals = [_client_update(store, i, partial=i in (2, 5)) for i in range(7)]
    central = _strategy(name, options).aggregate(ROUND, CURRENT, [update for update, _ in arrivals])

    strategy = _strategy(name, options)
    spec, partials, distances = strategy.sum_spec(), [], []
    for index, shard in enumerate((arrivals[:3], arrivals[3:6], arrivals[6:])):
        task, key = _task(store, f"aggregator-0-{index}", 0, spec, [_entry(u, r, strategy) for u, r in shard])
        reply = handle(task)
        result, summed = _summed(store, reply, f"aggregator-0-{index}", key)
        assert result.rejected == [] and len(result.summed) == len(shard)
        distances += [fact.distance for fact in result.summed
                      if strategy.sum_term(next(u for u, _ in shard if u.client_id == fact.client_id))]
        partials.append({"client_id": f"aggregator-0-{index}", "key": key, "result": reply})
    task, key = _task(store, "aggregator-1-0", 1, spec, partials)
    result, merged = _summed(store, handle(task), "aggregator-1-0", key)
    assert result.count == merged.count == sum(1 for u, _ in arrivals if strategy.sum_term(u) is not None)
    tree = strategy.aggregate_total(ROUND, CURRENT, merged, distances)
    for got, want in zip(tree, central):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_forged_and_a_corrupt_update_are_refused_in_their_shard_and_the_rest_is_summed(tmp_path, aggregator_env):
    store = LocalStore(tmp_path)
    store.put("global", encode_arrays(CURRENT))
    arrivals = [_client_update(store, i) for i in range(5)]
    forged = dict(arrivals[1][1], num_examples=999)  # a claim changed after signing
    store.put(arrivals[2][1]["update"], encode_arrays([layer + 1 for layer in arrivals[2][0].weights]))  # swapped bytes
    nan = [layer.copy() for layer in arrivals[3][0].weights]
    nan[0][0, 0] = np.nan
    store.put(arrivals[3][1]["update"], encode_arrays(nan))
    arrivals[3] = (arrivals[3][0], client_key(SECRET, RUN, "client-0003").sign_result(
        {**arrivals[3][1], "signature": None}, store.get(arrivals[3][1]["update"])))  # signed, but not finite
    strategy = _bound(make_strategy("fedavg"))
    entries = [_entry(u, r, strategy) for u, r in arrivals]
    entries[1]["result"] = forged
    task, key = _task(store, "aggregator-0-0", 0, strategy.sum_spec(), entries)
    result, summed = _summed(store, handle(task), "aggregator-0-0", key)
    refused = {r.client_id: (r.cause, r.reason) for r in result.rejected}
    assert refused["client-0001"][0] == "signature" and "forged or altered" in refused["client-0001"][1]
    assert refused["client-0002"][0] == "signature" and "tampered" in refused["client-0002"][1]
    assert refused["client-0003"] == ("rejected", "the update has NaN or Inf values (array 0)")
    assert [s.client_id for s in result.summed] == ["client-0000", "client-0004"]
    expected = _bound(make_strategy("fedavg")).aggregate(ROUND, CURRENT, [arrivals[0][0], arrivals[4][0]])
    for got, want in zip(strategy.aggregate_total(ROUND, CURRENT, summed, []), expected):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_an_aggregator_task_signed_for_another_aggregator_is_refused(tmp_path, aggregator_env):
    store = LocalStore(tmp_path)
    store.put("global", encode_arrays(CURRENT))
    update, result = _client_update(store, 0)
    strategy = _bound(make_strategy("fedavg"))
    task, _ = _task(store, "aggregator-0-0", 0, strategy.sum_spec(), [_entry(update, result, strategy)])
    task["client_id"] = "aggregator-0-1"  # its token is aggregator-0-0's, whose key differs
    status, reply = invoke(task)
    assert status == 403 and "forged or signed with another secret" in reply["error"]["message"]


def test_a_function_deployed_for_one_client_refuses_to_aggregate_naming_the_remedy(tmp_path, aggregator_env,
                                                                                  monkeypatch):
    """It holds no other client's key, so it can check no update it would sum; it refused the task as another
    client's, telling the operator to "invoke aggregator-0-0's own function", which does not exist."""
    store = LocalStore(tmp_path)
    store.put("global", encode_arrays(CURRENT))
    update, result = _client_update(store, 0)
    strategy = _bound(make_strategy("fedavg"))
    task, key = _task(store, "aggregator-0-0", 0, strategy.sum_spec(), [_entry(update, result, strategy)])
    monkeypatch.setenv("FEDLESS_CLIENT_ID", "client-0000")
    monkeypatch.setenv("FEDLESS_RUN_SECRET", client_secret(SECRET, "client-0000"))
    status, reply = invoke(task)
    assert (status, reply["error"]["message"]) == (403, "this function serves client-0000 only, so it cannot aggregate: "
                                                        "aggregate in the controller (aggregation: {where: controller}), "
                                                        "or give the aggregators the provider's shared function (its "
                                                        "secret, without FEDLESS_CLIENT_ID)")
    assert not store.exists(key)


def test_a_run_aggregates_through_functions_on_the_local_provider_as_the_controller_does(tiny_config, monkeypatch):
    """6 clients, 5 a round, fan-in 2: shards of 2, 2 and 1, then a level of aggregators over the 3 partial sums;
    the controller reads only the last level's 2 partial sums (each level-0 one is read and checked a level up)."""
    options = dict(clients=6, clients_per_round=5, rounds=2, seed=4, strategy={"name": "fedavgm",
                                                                               "options": {"server_momentum": 0.5}})
    central = run_experiment(tiny_config(name="central", aggregation={"where": "controller"}, **options))
    tree_config = tiny_config(name="tree", aggregation={"where": "functions", "fan_in": 2}, **options)
    read, get = [], LocalStore.get  # the controller's reads (the functions run in worker processes)
    monkeypatch.setattr(LocalStore, "get", lambda self, key: read.append(key) or get(self, key))
    tree = run_experiment(tree_config)
    partial_sums = [key for key in read if "/aggregates-" in key]
    assert len(partial_sums) == 2 * 2 and all("/aggregator-1-" in key for key in partial_sums), partial_sums
    assert not any(key.endswith(".weights") and "/updates" in key for key in read), "no client update is read"
    for got, want in zip(tree.weights, central.weights):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    history = History(tree_config.history)
    aggregations = history.aggregations(tree.run_id)
    assert sorted((a["round"], a["level"], a["shard_size"]) for a in aggregations if a["outcome"] == "succeeded") == [
        (r, level, size) for r in (1, 2) for level, size in ((0, 1), (0, 2), (0, 2), (1, 1), (1, 2))]
    assert all(a["bytes_read"] > 0 and a["bytes_written"] > 0 for a in aggregations)
    assert history.aggregations(central.run_id) == []
    assert history.cost(tree.run_id)["per_stage"]["aggregation"]["invocations"] == 10
    assert [r["succeeded"] for r in history.rounds(tree.run_id)] == [5, 5]


def test_an_update_the_round_rule_rejects_is_taken_back_out_of_the_tree_sum(tiny_config):
    """A compromised client boosts its signed update a millionfold, under no absolute bound: the aggregator sums it,
    the round's median rule rejects it, a correction aggregator sums it again and the controller subtracts that."""
    def run(where):
        config = tiny_config(name=where, clients=4, clients_per_round=4, rounds=1, retries=0, max_update_norm=0,
                             max_norm_ratio=3, aggregation={"where": where, "fan_in": 2})
        provider = LocalProvider("local", workers=2, entry_point="workloads:boosts_client_1")
        return config, run_experiment(config, providers={"local": provider})

    _, central = run("controller")
    config, tree = run("functions")
    for got, want in zip(tree.weights, central.weights):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    history = History(config.history)
    boosted = [i for i in history.invocations(tree.run_id) if i["client_id"] == "client-0001"]
    assert [(i["outcome"], i["cause"]) for i in boosted] == [("failed", "rejected")]
    assert "median" in boosted[0]["error"]
    corrections = [a for a in history.aggregations(tree.run_id) if a["aggregator_id"].startswith("aggregator-c-")]
    assert [(a["outcome"], a["shard_size"], a["summed"]) for a in corrections] == [("succeeded", 1, 1)]


def test_auto_sums_in_the_controller_when_the_functions_serve_one_client_each(tiny_config):
    """Functions deployed for one client each refuse an aggregator's task: `where: auto` past its threshold sums the
    round in the controller (its updates read there, none lost) and every later round too, and the history's
    aggregations table says why; the model is the controller's."""
    options = dict(clients=4, clients_per_round=4, rounds=2, seed=5)
    central = run_experiment(tiny_config(name="central", aggregation={"where": "controller"}, **options))
    config = tiny_config(name="auto", aggregation={"where": "auto", "threshold_mb": 0}, **options)
    provider = LocalProvider("local", workers=2, entry_point="workloads:serves_one_client_each")
    result = run_experiment(config, providers={"local": provider})
    assert result.status == "finished"
    for got, want in zip(result.weights, central.weights):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    history = History(config.history)
    assert [r["succeeded"] for r in history.rounds(result.run_id)] == [4, 4]
    (refused,) = history.aggregations(result.run_id)
    assert (refused["round"], refused["outcome"]) == (1, "failed")
    assert "this function serves client-0000 only, so it cannot aggregate" in refused["error"]
    assert refused["error"].endswith("aggregation: {where: auto} sums this run's rounds in the controller from this one on")


def test_functions_asked_for_by_name_on_functions_that_serve_one_client_end_the_run_in_one_line(tiny_config):
    """The run ends at the first refusal, naming the remedy; it went on training every round for nothing, then
    failed as a run in which nothing trained."""
    config = tiny_config(clients=4, clients_per_round=4, rounds=3, retries=0, aggregation={"where": "functions"})
    run = ended_at_the_refusal(config)
    assert len(History(config.history).invocations(run["run_id"])) == 4, "round 1 only"


def _auto_over(tiny_config, workload):
    """A run under `where: auto` past its threshold whose aggregators are refused by `workload` (tests/workloads.py)."""
    config = tiny_config(clients=2, clients_per_round=2, rounds=1, retries=0,
                         aggregation={"where": "auto", "threshold_mb": 0})
    return config, LocalProvider("local", workers=2, entry_point=f"workloads:{workload}")


def test_auto_sums_in_the_controller_by_the_refusals_declared_cause_whatever_its_words(tiny_config):
    """The refusal's cause travels in the worker's reply; it fell back only when the message held the words
    'so it cannot aggregate', which rewording the message (or a platform wrapping it) broke."""
    config, provider = _auto_over(tiny_config, "refuses_to_aggregate_in_other_words")
    result = run_experiment(config, providers={"local": provider})
    assert result.status == "finished"
    history = History(config.history)
    assert [r["succeeded"] for r in history.rounds(result.run_id)] == [2]
    (refused,) = history.aggregations(result.run_id)
    assert refused["error"] == ("AggregatorTaskRefused: not here; aggregation: {where: auto} sums this run's rounds in "
                                "the controller from this one on")


def test_one_providers_refusal_cancels_the_other_providers_aggregators(tiny_config):
    """Provider `one`'s functions serve one client each and refuse their aggregator; provider `slow`'s aggregator
    takes two minutes. Under `where: auto` the round falls back to the controller at the refusal: `slow`'s aggregator
    kept running (and wrote its sum) after the round had summed its updates without it, unrecorded. It is now
    cancelled there, recorded as such, and the round sums all four updates in the controller."""
    config = tiny_config(clients=4, clients_per_round=4, rounds=1, retries=0, round_deadline=300,
                         aggregation={"where": "auto", "threshold_mb": 0},
                         providers=[{"kind": "local", "name": "one", "clients": 2},
                                    {"kind": "local", "name": "slow", "clients": 2}])
    providers = {"one": LocalProvider("one", workers=2, entry_point="workloads:serves_one_client_each"),
                 "slow": LocalProvider("slow", workers=2, entry_point="workloads:aggregates_slowly")}
    result = run_experiment(config, providers=providers)
    assert result.status == "finished"
    history = History(config.history)
    assert [r["succeeded"] for r in history.rounds(result.run_id)] == [4]
    outcomes = {row["provider"]: (row["outcome"], row["error"]) for row in history.aggregations(result.run_id)}
    assert outcomes["one"][0] == "failed" and "sums this run's rounds in the controller" in outcomes["one"][1]
    assert outcomes["slow"] == ("failed", "cancelled before it answered: the round stopped waiting for its aggregators")
    round_dir = Path(config.store.path) / "runs" / result.run_id / "round-00001"
    assert not list(round_dir.rglob("*.sum"))  # the cancelled aggregator's worker was stopped before it wrote


def test_an_aggregator_past_the_deadline_fails_there_whatever_its_providers_timeout(tiny_config, tmp_path):
    """An aggregator that hangs held the round until its provider's timeout (here 150 s, Lambda's may be 900 s), far
    past round_deadline, which bounded only the retries; it now fails at the deadline, its shard out of the round.
    The workers train once first (a run summed in the controller) and stay warm, so the run under test trains in
    well under its short deadline, which then bounds only the hanging aggregator."""
    provider = WarmLocalProvider("local", workers=2, timeout=150, entry_point="workloads:aggregates_slowly")
    warm_up = tiny_config(clients=2, clients_per_round=2, rounds=1, history=str(tmp_path / "warm-up.db"),
                          aggregation={"where": "controller"})
    config = tiny_config(clients=2, clients_per_round=2, rounds=1, retries=0, round_deadline=8,
                         aggregation={"where": "functions"})

    async def warm_then_hang():
        try:
            assert (await run_experiment_async(warm_up, providers={"local": provider})).status == "finished"
            assert len(provider.worker_pids) == 2, "both workers trained in the warm-up and stay up"
            await run_experiment_async(config, providers={"local": provider})
        finally:
            await provider.shutdown()

    with pytest.raises(NothingTrainedError, match="its aggregator function failed: missed the aggregation deadline"):
        asyncio.run(warm_then_hang())
    history = History(config.history)
    (run,) = history.runs()
    (aggregation,) = history.aggregations(run["run_id"])
    assert (aggregation["outcome"], aggregation["error"]) == ("failed", "missed the aggregation deadline of 8s")
    # both clients trained in time (a success the failed aggregator's shard then rejected), not past the deadline
    assert [(i["cause"], i["error"]) for i in history.invocations(run["run_id"])] == \
        [("rejected", "its aggregator function failed: missed the aggregation deadline of 8s")] * 2


def test_a_refusals_words_without_its_cause_fail_the_aggregator_like_any_failure(tiny_config):
    """The words of a per-client function's refusal, with no declared cause, are an aggregator that failed: its shard
    leaves the round (here every update, so nothing trained); matching the words, auto summed in the controller."""
    config, provider = _auto_over(tiny_config, "says_it_cannot_aggregate_without_the_cause")
    with pytest.raises(NothingTrainedError):
        run_experiment(config, providers={"local": provider})
    history = History(config.history)
    (run,) = history.runs()
    (failed,) = history.aggregations(run["run_id"])
    assert failed["error"] == ("AuthError: this function serves client-0000 only, so it cannot aggregate: aggregate "
                               "in the controller")


@pytest.mark.parametrize("options, message", [
    ({"where": "cloud"}, "aggregation.where"), ({"fan_in": 1}, "aggregation.fan_in: must be >= 2"),
    ({"threshold_mb": -1}, "aggregation.threshold_mb: must be >= 0")])
def test_aggregation_options_are_checked(options, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig.from_dict({"aggregation": options})


def test_auto_switches_to_functions_by_the_rounds_bytes_and_only_for_sum_based_rules():
    options = TreeOptions("auto", 50, 256 * 2**20)
    fedavg, median = make_strategy("fedavg"), make_strategy("fedmedian")
    assert not options.in_functions(fedavg, 100, 2**20) and options.in_functions(fedavg, 300, 2**20)
    assert not options.in_functions(median, 10_000, 2**20)
    assert not options.in_functions(median, 1, 1) and not TreeOptions("functions").in_functions(median, 1, 1)
    assert TreeOptions("functions").in_functions(fedavg, 1, 1) and not TreeOptions("controller").in_functions(
        fedavg, 10_000, 2**30)


MASKED_LENGTH = 1 + sum(layer.size for layer in CURRENT)


def _masked_vector(store, index, vector=None):
    """A secure round's masked-stage object (uniform uint32 values, as masks make them) and its signed result."""
    client_id = f"client-{index:04d}"
    vector = RNG.integers(0, 2**32, MASKED_LENGTH, dtype=np.uint32) if vector is None else vector
    key = secagg_key(RUN, ROUND, client_id, "masked")
    return vector, {"client_id": client_id, "key": key,
                    "result": _signed_result(store, client_id, key, encode_arrays([vector]), 10 + index)}


def test_masked_vectors_summed_in_uneven_shards_give_exactly_the_controllers_modular_sum(tmp_path, aggregator_env):
    """A secure round's 7 masked vectors in shards of 3, 3 and 1, merged a level up: the very sum modulo 2^32
    rounds/secagg.py takes of the vectors itself; a fourth shard's float vector, short vector and altered
    vector are refused there, each with its reason, and left out."""
    store = LocalStore(tmp_path)
    vectors, entries = zip(*(_masked_vector(store, i) for i in range(7)))
    spec, partials = SumSpec.masked(MASKED_LENGTH), []
    for index, shard in enumerate((entries[:3], entries[3:6], entries[6:])):
        task, key = _task(store, f"aggregator-0-{index}", 0, spec, list(shard))
        reply = handle(task)
        result, summed = _summed(store, reply, f"aggregator-0-{index}", key, spec)
        assert result.rejected == [] and [(s.client_id, s.distance) for s in result.summed] == [
            (entry["client_id"], None) for entry in shard]
        partials.append({"client_id": f"aggregator-0-{index}", "key": key, "result": reply})
    _, wrong_dtype = _masked_vector(store, 7, RNG.random(MASKED_LENGTH).astype(np.float32))
    _, short = _masked_vector(store, 8, RNG.integers(0, 2**32, MASKED_LENGTH - 1, dtype=np.uint32))
    _, altered = _masked_vector(store, 9)
    store.put(altered["key"], encode_arrays([RNG.integers(0, 2**32, MASKED_LENGTH, dtype=np.uint32)]))
    task, key = _task(store, "aggregator-0-3", 0, spec, [wrong_dtype, short, altered])
    refused_reply = handle(task)
    result, empty = _summed(store, refused_reply, "aggregator-0-3", key, spec)
    assert result.summed == [] and empty.count == 0 and not empty.total.any()
    expected = f"a masked vector of {MASKED_LENGTH} uint32 values was expected, got"
    assert [(r.client_id, r.cause, r.reason) for r in result.rejected] == [
        ("client-0007", "rejected", f"{expected} float32 ({MASKED_LENGTH},)"),
        ("client-0008", "rejected", f"{expected} uint32 ({MASKED_LENGTH - 1},)"),
        ("client-0009", "signature", "the update in the store is not the one the function signed: it was tampered with")]
    partials.append({"client_id": "aggregator-0-3", "key": key, "result": refused_reply})

    task, key = _task(store, "aggregator-1-0", 1, spec, partials)
    result, merged = _summed(store, handle(task), "aggregator-1-0", key, spec)
    assert result.count == merged.count == 7
    central = np.sum(vectors, axis=0, dtype=np.uint32)  # rounds/secagg.py's own sum when the controller reads them
    assert merged.total.dtype == np.uint32 and np.array_equal(merged.total, central)
    assert np.array_equal(MaskedSum.from_bytes(merged.to_bytes()).total, central)


def test_a_masked_shard_refuses_weighted_terms_and_a_masked_sum_of_another_length(tmp_path, aggregator_env):
    store = LocalStore(tmp_path)
    _, entry = _masked_vector(store, 0)
    task, _ = _task(store, "aggregator-0-0", 0, SumSpec.masked(MASKED_LENGTH),
                    [{**entry, "term": {"scale": 1.0, "weight": 1.0}}])
    status, reply = invoke(task)
    assert status == 400 and "a masked vector counts once, so its entries carry no term" in reply["error"]["message"]
    task, _ = _task(store, "aggregator-0-0", 0, SumSpec.masked(MASKED_LENGTH), [entry])
    status, reply = invoke({**task, "spec": {"term": "masked", "clip": None, "length": 0}})
    assert status == 400 and "spec: a sum spec needs" in reply["error"]["message"]
    with pytest.raises(ValueError, match="a partial sum of 3 masked values, not 4"):
        SumSpec.masked(4).read_sum(MaskedSum(3).to_bytes())


def test_an_oversized_update_is_refused_from_its_size_without_being_read(tmp_path, aggregator_env, monkeypatch):
    store = LocalStore(tmp_path)
    store.put("global", encode_arrays(CURRENT))
    (update, result), (big, big_result) = _client_update(store, 0), _client_update(store, 1)
    store.put(big_result["update"], bytes(2**21))  # 2 MiB, over the task's 1 MiB limit
    read = []
    get = LocalStore.get
    monkeypatch.setattr(LocalStore, "get", lambda self, key: read.append(key) or get(self, key))
    strategy = _bound(make_strategy("fedavg"))
    task, key = _task(store, "aggregator-0-0", 0, strategy.sum_spec(),
                      [_entry(update, result, strategy), _entry(big, big_result, strategy)])
    summed, _ = _summed(store, handle(task), "aggregator-0-0", key)
    assert [(r.client_id, r.cause, r.reason) for r in summed.rejected] == [
        ("client-0001", "rejected", f"the update is {2**21} bytes, more than the {2**20} an update of this model "
                                    "can take; it was not read")]
    assert big_result["update"] not in read and result["update"] in read


def test_a_presigned_store_tells_an_objects_size_without_reading_it(moto_endpoint, aws_credentials):
    import uuid

    import boto3

    from fedless_nb.store import MissingKeyError
    from fedless_nb.store.presigned import PresignedStore

    bucket = f"fedless-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    for key, size in (("big", 3 * 2**20 + 7), ("empty", 0)):
        s3.put_object(Bucket=bucket, Key=key, Body=bytes(size))
    urls = {key: s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key})
            for key in ("big", "empty", "missing")}
    store = PresignedStore(urls, {}, time.time() + 60)
    assert (store.size("big"), store.size("empty")) == (3 * 2**20 + 7, 0)
    with pytest.raises(MissingKeyError):
        store.size("missing")


def test_a_retried_aggregator_writes_its_own_key_and_the_rounds_cost_counts_every_aggregator(tiny_config, tmp_path,
                                                                                             monkeypatch):
    """Every aggregator's first attempt writes its partial sum and dies before answering: the retry, a task with
    its own key and token, is not refused as a replay, and the round's sum is the controller's. Each round's
    cost in the history is its client and aggregator invocations' (one request price each), as in the cost report."""
    marks = tmp_path / "marks"
    marks.mkdir()
    monkeypatch.setenv("FEDLESS_TEST_MARKS", str(marks))
    options = dict(clients=4, clients_per_round=4, rounds=1, seed=3,
                   providers=[{"kind": "local", "workers": 2, "pricing": {"request": 0.001}}])
    central = run_experiment(tiny_config(name="central", aggregation={"where": "controller"}, **options))
    config = tiny_config(name="retried", aggregation={"where": "functions", "fan_in": 2}, **options)
    provider = LocalProvider("local", workers=2, entry_point="workloads:crashes_after_writing_first_aggregate")
    tree = run_experiment(config, providers={"local": provider})
    for got, want in zip(tree.weights, central.weights):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    history = History(config.history)
    aggregations = history.aggregations(tree.run_id)
    assert sorted((a["aggregator_id"], a["outcome"]) for a in aggregations) == [
        (aggregator, outcome) for aggregator in ("aggregator-0-00001", "aggregator-0-00002")
        for outcome in ("failed", "succeeded")]
    assert all(a["error"].startswith("worker process exited with code 9") and a["error"].endswith("(retried)")
               for a in aggregations if a["outcome"] == "failed")
    written = sorted(path.name for path in (tmp_path / "store" / "runs" / tree.run_id).rglob("*.sum"))
    assert written == [f"aggregator-0-0000{n}.{attempt}.sum" for n in (1, 2) for attempt in (1, 2)]

    (round_row,) = history.rounds(tree.run_id)
    invocations = history.invocations(tree.run_id)
    assert round_row["succeeded"] == 4 and len(invocations) == 4 and len(aggregations) == 4
    assert round_row["cost"] == pytest.approx(0.001 * (len(invocations) + len(aggregations)))
    report = history.cost(tree.run_id)
    assert history.run(tree.run_id)["cost"] == pytest.approx(report["serverless_cost"]) == pytest.approx(round_row["cost"])


def test_a_round_run_again_below_its_quorum_gives_its_aggregators_keys_of_their_own(tiny_config, tmp_path,
                                                                                    monkeypatch):
    """The first run of the round gets 2 of 4 updates, below min_successful 4: its aggregator wrote its partial
    sum; the second run's aggregators write under the round's second run, so none is refused as a replay."""
    marks = tmp_path / "marks"
    marks.mkdir()
    monkeypatch.setenv("FEDLESS_TEST_MARKS", str(marks))
    config = tiny_config(clients=4, clients_per_round=4, rounds=1, retries=0, min_successful=4, round_repeats=1,
                         aggregation={"where": "functions", "fan_in": 2})
    provider = LocalProvider("local", workers=2, entry_point="workloads:fails_odd_clients_once")
    result = run_experiment(config, providers={"local": provider})
    history = History(config.history)
    assert result.status == "finished" and [r["succeeded"] for r in history.rounds(result.run_id)] == [4]
    assert [a["outcome"] for a in history.aggregations(result.run_id)] == ["succeeded"] * 3
    written = sorted(path.relative_to(tmp_path / "store" / "runs" / result.run_id / "round-00001").as_posix()
                     for path in (tmp_path / "store" / "runs" / result.run_id).rglob("*.sum"))
    assert written == ["aggregates-1/aggregator-0-00001.1.sum", "aggregates-2/aggregator-0-00001.1.sum",
                       "aggregates-2/aggregator-0-00002.1.sum"]


@pytest.mark.parametrize("header", [
    b'{"not": "a list"}', b'[{"dtype": "<f4"}]', b'[{"dtype": "<f4", "shape": [-1], "offset": 0}]',
    b'[{"dtype": "<f4", "shape": [4294967296, 4294967296], "offset": 0}]', b"[" * 100_000 + b"]" * 100_000,
], ids=["not-a-list", "no-shape", "negative-shape", "overflowing-shape", "nested"])
def test_a_signed_blob_with_a_hostile_header_is_refused_alone_and_its_shard_is_summed(tmp_path, aggregator_env, header):
    """A compromised client signs a blob whose header is malformed, nests deeply or claims a huge array: the
    aggregator refuses that one update (cause rejected) instead of failing, so its honest shard mates are summed."""
    import struct

    from fedless_nb.store.codec import MAGIC

    store = LocalStore(tmp_path)
    store.put("global", encode_arrays(CURRENT))
    arrivals = [_client_update(store, i) for i in range(3)]
    hostile = MAGIC + struct.pack("<I", len(header)) + header + bytes(64)
    arrivals[1] = (arrivals[1][0], _signed_result(store, "client-0001", arrivals[1][1]["update"], hostile, 20))
    strategy = _bound(make_strategy("fedavg"))
    task, key = _task(store, "aggregator-0-0", 0, strategy.sum_spec(), [_entry(u, r, strategy) for u, r in arrivals])
    status, reply = invoke(task)
    assert status == 200, reply
    result, _ = _summed(store, reply, "aggregator-0-0", key)
    assert [(r.client_id, r.cause) for r in result.rejected] == [("client-0001", "rejected")]
    assert "not a weights blob" in result.rejected[0].reason
    assert [s.client_id for s in result.summed] == ["client-0000", "client-0002"]


def test_an_update_rewritten_between_its_sum_and_its_correction_is_left_out_and_the_run_goes_on(tiny_config):
    """The boosted client rewrites its update after its aggregator summed it: the correction aggregator refuses the
    new bytes, so the controller cannot subtract it; it sums the round again without it (this used to end the run
    with a RuntimeError) and gives the model the controller gives without that client."""
    def run(where, entry_point):
        config = tiny_config(name=where, clients=4, clients_per_round=4, rounds=1, retries=0, max_update_norm=0,
                             max_norm_ratio=3, aggregation={"where": where, "fan_in": 2})
        provider = LocalProvider("local", workers=2, entry_point=entry_point)
        return config, run_experiment(config, providers={"local": provider})

    _, central = run("controller", "workloads:boosts_client_1")
    config, tree = run("functions", "workloads:boosts_client_1_then_rewrites_it_before_its_correction")
    assert tree.status == "finished"
    for got, want in zip(tree.weights, central.weights):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    history = History(config.history)
    boosted = [i for i in history.invocations(tree.run_id) if i["client_id"] == "client-0001"]
    assert [(i["outcome"], i["cause"]) for i in boosted] == [("failed", "rejected")] and "median" in boosted[0]["error"]
    assert history.rounds(tree.run_id)[0]["succeeded"] == 3
    level0 = [a for a in history.aggregations(tree.run_id) if a["aggregator_id"].startswith("aggregator-0-")]
    assert len(level0) == 2 + 2, "the round was summed twice: with the boosted update, then without it"


@pytest.mark.parametrize("lie, message", [
    ("weight", "is not the"), ("nan", "NaN or Inf"), ("double", "accounts for 3 updates (2 distinct)"),
    ("boost", "farther than the"),
])
def test_an_aggregator_that_signs_a_lie_is_refused_like_a_failed_one(tiny_config, monkeypatch, lie, message):
    """A compromised aggregator (it holds its provider's secret, so its signature is valid) inflates its partial
    sum's weight, puts a NaN in it, moves it far beyond what its updates' norm bound allows or counts an update
    twice: the controller checks the sum against what it handed
    out (rounds/partial_sums.py), refuses that aggregator with the reason and the round goes on without its shard
    (an inflated weight used to rescale the whole round's average; a NaN, to become the global model)."""
    monkeypatch.setenv("FEDLESS_TEST_AGGREGATOR_LIE", lie)
    config = tiny_config(clients=4, clients_per_round=4, rounds=1, retries=0, aggregation={"where": "functions", "fan_in": 2})
    provider = LocalProvider("local", workers=2, entry_point="workloads:aggregator_lies_about_client_1s_shard")
    result = run_experiment(config, providers={"local": provider})
    assert result.status == "finished" and all(np.all(np.isfinite(w)) for w in result.weights)
    history = History(config.history)
    failed = [a for a in history.aggregations(result.run_id) if a["outcome"] == "failed"]
    assert len(failed) == 1 and message in failed[0]["error"], failed
    assert history.rounds(result.run_id)[0]["succeeded"] == 2
    rejected = {i["client_id"] for i in history.invocations(result.run_id) if i["outcome"] == "failed"}
    assert "client-0001" in rejected and len(rejected) == 2


def test_auto_reads_the_refused_updates_a_window_at_a_time_when_it_sums_them_in_the_controller(tiny_config):
    """Where the aggregators refused, the controller read the round's updates one after another: a remote store took
    one round trip per client. It reads READS_IN_FLIGHT (8) at once, never more (what it holds at once)."""
    config = tiny_config(clients=10, clients_per_round=10, rounds=1, aggregation={"where": "auto", "threshold_mb": 0})
    store = SlowReadsStore(config.store.path, lambda key: "/updates/" in key)
    provider = LocalProvider("local", workers=2, entry_point="workloads:serves_one_client_each")
    result = run_experiment(config, providers={"local": provider}, store=store)
    assert [r["succeeded"] for r in History(config.history).rounds(result.run_id)] == [10]
    assert store.most_in_flight == 8


def test_the_refused_updates_are_summed_in_the_arrivals_order_whatever_read_finishes_first():
    """The sum is the one of the updates folded one after the other, to the bit, though the later reads finish
    first; a read that fails its checks is left out (Controller.read_collected announces it), the others kept."""
    from fedless_nb.rounds.controller import ClientRef
    from fedless_nb.rounds.streaming import StreamingRound
    from fedless_nb.rounds.synchronous import SynchronousRounds
    from fedless_nb.rounds.tree import Arrival

    rng = np.random.default_rng(2)
    current = [rng.standard_normal(50).astype(np.float32)]
    models = {f"c{i}": [current[0] + rng.standard_normal(50).astype(np.float32) * 10.0 ** (i % 5)] for i in range(20)}
    arrivals = [Arrival(ClientRef(cid, f"data/{cid}", "local"), ClientUpdate(cid, [], 3 + i), {})
                for i, cid in enumerate(models)]

    class Reads:
        """read_collected as the controller's: the update with its arrays, None for one that fails its checks."""

        async def read_collected(self, round_number, client, update, reply, weights):
            await asyncio.sleep(0.001 * (20 - int(client.client_id[1:]) % 10))
            return None if client.client_id == "c7" else ClientUpdate(update.client_id, models[client.client_id],
                                                                      update.num_examples)

    strategy = make_strategy("fedavg")
    streamed = StreamingRound(strategy, current)
    updates = asyncio.run(SynchronousRounds(Reads()).read_refused(1, current, arrivals, streamed))
    assert [u.client_id for u in updates] == [cid for cid in models if cid != "c7"]
    one_by_one = StreamingRound(strategy, current)
    for arrival in arrivals:
        if arrival.client.client_id != "c7":
            one_by_one.add(ClientUpdate(arrival.client.client_id, models[arrival.client.client_id],
                                        arrival.update.num_examples))
    np.testing.assert_array_equal(streamed.aggregate(1)[0], one_by_one.aggregate(1)[0])


def test_a_partial_sum_that_miscounts_one_update_says_so_in_words():
    """'reports 1 updates', 'merge of 1 partial sums': counts read in words (wording.counted)."""
    from types import SimpleNamespace

    from fedless_nb.rounds.partial_sums import accounting_problem, sum_problem

    merged = SimpleNamespace(summed=[], rejected=[], count=1)
    assert accounting_problem(1, [{"result": {"count": 2}}], merged) == (
        "the aggregator's merge of 1 partial sum reports 1 update, 0 summed and 0 refused; its inputs hold 2")
    assert accounting_problem(0, [{"client_id": "c0"}, {"client_id": "c1"}],
                              SimpleNamespace(summed=[SimpleNamespace(client_id="c0")], rejected=[])) == (
        "the aggregator's result accounts for 1 update (1 distinct), not the 2 it was given, each once")
    assert sum_problem(SimpleNamespace(count=1), SimpleNamespace(count=2), [], "model") == (
        "the partial sum counts 1 update; the ones it says it summed are 2")


@pytest.mark.parametrize("model", [[np.array(["ab", "cd"])], [np.ones(4, np.complex64)], [np.zeros(2, "datetime64[D]")]],
                         ids=["strings", "complex", "dates"])
def test_an_aggregator_refuses_a_global_model_that_does_not_hold_real_numbers_in_one_line(tmp_path, aggregator_env, model):
    """A string model crashed the sum (TypeError: a 500 its provider retried); complex numbers and dates were summed
    as float64, the imaginary part dropped, silently. The update matches the model, as a client trained from it writes."""
    store = LocalStore(tmp_path)
    store.put("global", encode_arrays(model))
    key = f"runs/{RUN}/round-{ROUND:05d}/updates/client-0000.weights"
    signed = _signed_result(store, "client-0000", key, encode_arrays(model), 10)
    entry = {"client_id": "client-0000", "key": key, "result": signed, "term": {"scale": 1.0, "weight": 10.0}}
    task, written = _task(store, "aggregator-0-0", 0, SumSpec(), [entry])
    status, reply = invoke(task)
    assert status == 400 and reply["error"]["message"] == (
        f"the global model at global cannot be summed against: array 0 holds {model[0].dtype}, not real numbers")
    assert not store.exists(written)


def _lower_sum(store, aggregator_id, total, count):
    """`total` written as aggregator_id's partial sum, with its signed result claiming `count` updates."""
    key = aggregate_key(RUN, ROUND, aggregator_id)
    blob = total.to_bytes()
    store.put(key, blob)
    result = {"run_id": RUN, "round": ROUND, "client_id": aggregator_id, "update": key, "count": count, "summed": [],
              "rejected": [], "bytes_read": 0, "cold": False, "signature": None}
    return {"client_id": aggregator_id, "key": key, "result": client_key(SECRET, RUN, aggregator_id).sign_result(result, blob)}


@pytest.mark.parametrize("lower, problem", [
    ((WeightedSum([layer.astype(np.float64) for layer in CURRENT], float("nan"), 1), 1), "has NaN or Inf values"),
    ((WeightedSum([np.full(layer.shape, np.inf) for layer in CURRENT], 1.0, 1), 1), "has NaN or Inf values"),
    ((WeightedSum([layer.astype(np.float64) for layer in CURRENT], 1.0, -3), 1), "counts -3 updates; its aggregator's result says 1"),
    ((WeightedSum(None, 5.0, 5), 5), "layers do not match its count"),
    ((WeightedSum([np.ones(1), np.ones(1)], 1.0, 1), 1), "different shapes (NumPy would broadcast"),
], ids=["nan-weight", "inf-layers", "negative-count", "count-without-layers", "broadcast-shapes"])
def test_a_merging_aggregator_refuses_a_lower_sum_that_is_not_what_its_signed_result_says(tmp_path, aggregator_env,
                                                                                          lower, problem):
    """A lower aggregator's sum was merged unchecked: a NaN weight or a negative count went up into the merge, and a
    sum of one value per layer was broadcast into every value of the other sums' layers, silently."""
    store = LocalStore(tmp_path)
    good = _lower_sum(store, "aggregator-0-0", WeightedSum([layer.astype(np.float64) for layer in CURRENT], 10.0, 1), 1)
    bad = _lower_sum(store, "aggregator-0-1", *lower)
    task, written = _task(store, "aggregator-1-0", 1, SumSpec(), [good, bad])
    status, reply = invoke(task)
    assert status == 400 and reply["error"]["message"].startswith(
        f"the partial sum at {bad['key']} of aggregator-0-1 cannot be merged: ") and problem in reply["error"]["message"]
    assert not store.exists(written)
