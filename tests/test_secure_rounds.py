"""Secure rounds end to end: real worker processes, the real store as the relay, the real history.

Each stage is an invocation; clients drop out (the function fails) at each stage, below and above
the threshold; a test reads every object the functions wrote and finds no update in the clear.
"""

import asyncio
import base64
import json

import numpy as np
import pytest
from scipy import stats

from fedless_nb.experiment import ConfigError, ExperimentConfig
from fedless_nb.notebook.dashboard import RunProgress
from fedless_nb.privacy.secagg import QuantizationParams
from fedless_nb.providers import LocalProvider
from fedless_nb.records.history import History
from fedless_nb.reduction import MaskedSum
from fedless_nb.rounds.resilience import NothingTrainedError, QuorumError
from fedless_nb.rounds.events import InvocationFinished
from fedless_nb.runner import resume_experiment, run_experiment, run_experiment_async
from fedless_nb.security import client_key, client_secret
from fedless_nb.store import CodecError, LocalStore, decode_arrays
from fedless_nb.store.keys import global_weights_key, update_key
from fedless_nb.wire import SECAGG_STAGES

from one_client_functions import SlowReadsStore, ended_at_the_refusal
from sealed_states import assert_sealed_for_the_function_alone

CLIENTS = [f"client-{index:04d}" for index in range(5)]
_ORDER_8_POINT = base64.b64encode(bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")).decode()


def _config(tmp_path, name, secure=True, **overrides):
    data = {
        "name": name, "clients": 5, "clients_per_round": 5, "rounds": 1, "retries": 0, "max_norm_ratio": 0,
        "history": str(tmp_path / "history.db"), "store": {"path": str(tmp_path / f"store-{name}")},
        "model": {"builder": "mlp", "options": {"hidden_units": [16]}},
        "train": {"epochs": 1, "batch_size": 32, "learning_rate": 0.1},
        "providers": [{"kind": "local", "workers": 2}],
        **({"secure_aggregation": {}} if secure else {}),
    }
    data.update(overrides)
    return ExperimentConfig.from_dict(data)


def _dropping_provider(monkeypatch, drops):
    """The real local provider whose functions fail at the listed (round/attempt, stage, clients)."""
    monkeypatch.setenv("FEDLESS_TEST_SECAGG_DROPS", ",".join(
        f"{when}:{stage}:{client}" for when, stage, clients in drops for client in clients))
    return {"local": LocalProvider("local", workers=2, entry_point="workloads:drops_in_secure_stages")}


def _finished_without_round_failures(config, entry_point):
    """`config` run on the real local provider with a test entry point: it finished, no round failed; result, history."""
    result = run_experiment(config, providers={"local": LocalProvider("local", workers=2, entry_point=entry_point)})
    assert result.status == "finished"
    history = History(config.history)
    assert history.round_failures(result.run_id) == []
    return result, history


def _globals(config, run_id):
    store = LocalStore(config.store.path)
    return [decode_arrays(store.get(global_weights_key(run_id, r))) for r in range(config.rounds + 1)]


def _largest_change(before, after):
    return max(float(np.max(np.abs(a.astype(np.float64) - b))) for a, b in zip(after, before))


def test_the_store_holds_no_update_in_the_clear_and_the_average_is_fedavgs(tmp_path):
    model = {"builder": "mlp", "options": {"hidden_units": [64]}}  # 4,810 values: enough for the statistics
    plain_config = _config(tmp_path, "plain", secure=False, model=model)
    secure_config = _config(tmp_path, "secure", model=model)
    plain = run_experiment(plain_config)
    provider = LocalProvider("local", workers=2)
    secure = run_experiment(secure_config, providers={"local": provider})
    assert plain.status == secure.status == "finished"

    plain_store, secure_store = LocalStore(plain_config.store.path), LocalStore(secure_config.store.path)
    start = decode_arrays(plain_store.get(global_weights_key(plain.run_id, 0)))
    models = {c: decode_arrays(plain_store.get(update_key(plain.run_id, 1, c))) for c in CLIENTS}
    deltas = {c: np.concatenate([(m.astype(np.float64) - s).ravel() for m, s in zip(models[c], start)]) for c in CLIENTS}

    # Every object the functions wrote in the secure round: nothing under updates/, and no window of any
    # client's trained model or update, as float32 or float64 bytes, anywhere.
    round_dir = secure_store.root / "runs" / secure.run_id / "round-00001"
    written = {path.relative_to(round_dir).as_posix(): path.read_bytes() for path in round_dir.rglob("*")
               if path.is_file() and path.name != "global.weights"}
    assert sorted(written) == sorted([f"secagg-1/{c}.{stage}" for c in CLIENTS for stage in SECAGG_STAGES]
                                     + [f"secagg-1-relayed/{c}.{stage}" for c in CLIENTS for stage in ("keys", "shares")])
    needles = [np.concatenate([m.ravel() for m in models[c]])[:16].astype(np.float32).tobytes() for c in CLIENTS]
    needles += [deltas[c][:8].tobytes() for c in CLIENTS] + [deltas[c][:16].astype(np.float32).tobytes() for c in CLIENTS]
    model_bytes = sum(layer.nbytes for layer in start)
    for name, data in written.items():
        assert not any(needle in data for needle in needles), f"{name} holds an update in the clear"
        try:
            arrays = decode_arrays(data)
        except CodecError:  # keys, shares, reveals: small JSON, far smaller than any update
            assert data.startswith(b"{") and len(data) < model_bytes / 4, name
            continue
        # the masked vector: uniform over uint32 and uncorrelated with the client's update
        assert name.endswith(".masked") and len(arrays) == 1 and arrays[0].dtype == np.uint32
        vector = arrays[0].astype(np.float64)[1:]
        client = name.split("/")[1].rsplit(".", 1)[0]
        # independence: a correlation this far from 0 would arise by chance with probability 1e-4
        assert stats.pearsonr(vector, deltas[client]).pvalue > 1e-4
        assert stats.spearmanr(vector, deltas[client]).pvalue > 1e-4
        counts, _ = np.histogram(vector, bins=32, range=(0, 2**32))
        assert stats.chisquare(counts).pvalue > 1e-4

    # The unmasked average is FedAvg's, within the quantization error.
    examples = {row["client_id"]: row["num_examples"] for row in History(plain_config.history).invocations(plain.run_id)}
    weight_sum = sum(examples[c] / 1000 for c in CLIENTS)  # max_weight 1000
    largest = max(float(np.max(np.abs(d))) for d in deltas.values())
    tolerance = len(CLIENTS) * QuantizationParams().step * (1 + largest) / weight_sum + 1e-6
    difference = _largest_change(plain.weights, secure.weights)
    assert difference <= tolerance, (difference, tolerance)
    assert _largest_change(start, secure.weights) > 100 * tolerance  # the round did move the model
    # Each client's private keys, kept sealed in the store between stages, open for its function alone: before, they
    # were sealed under a key the controller derives too, so it could open them and unmask every update.
    for client in CLIENTS:
        run_key = client_key(provider.secret, secure.run_id, client)
        assert_sealed_for_the_function_alone(secure_store, secure.run_id, client, run_key, provider._state_secret,
                                             [provider.secret, client_secret(provider.secret, client)])


def test_a_function_without_a_state_secret_refuses_the_secure_stages_and_the_run_ends_in_one_line(tmp_path):
    """A function deployed without FEDLESS_STATE_SECRET cannot keep its private keys from the controller, so it refuses
    every secure stage, saying which variable to set; the run ends at the refusal, the model never moved."""
    from fedless_nb.state_secret import STATE_SECRET_VARIABLE

    class WithoutStateSecret(LocalProvider):
        def _environment(self):
            return {name: value for name, value in super()._environment().items() if name != STATE_SECRET_VARIABLE}

    config = _config(tmp_path, "no-state-secret", clients=3, clients_per_round=3, rounds=1)
    with pytest.raises(NothingTrainedError, match=r"0 of 3 clients finished the keys stage, .*PayloadError: secure "
                                                  r"aggregation needs this function deployed with FEDLESS_STATE_SECRET"):
        run_experiment(config, providers={"local": WithoutStateSecret("local", workers=2)})
    invocations = History(config.history).invocations(History(config.history).runs()[0]["run_id"])
    assert {(i["stage"], i["outcome"]) for i in invocations} == {("keys", "failed")}


def test_clients_dropping_at_each_stage_below_the_threshold_leave_the_round_complete(tmp_path, monkeypatch):
    drops = [("1/1", "keys", ["client-0001"]), ("2/1", "shares", ["client-0002"]),
             ("3/1", "masked", ["client-0003"]), ("4/1", "reveal", ["client-0004", "client-0000"])]
    config = _config(tmp_path, "below", rounds=4, providers=[{"kind": "local", "workers": 2, "pricing": {"request": 0.001}}])
    progress = RunProgress()
    result = run_experiment(config, providers=_dropping_provider(monkeypatch, drops), observers=[progress.update])
    assert result.status == "finished"
    history = History(config.history)
    invocations = history.invocations(result.run_id)
    # every stage is an invocation: in the history, the dashboard's totals and the cost model
    assert len(invocations) == 4 * 5 * 5 - 4 - 3 - 1  # a dropout is invoked in none of its round's later stages
    assert progress.invocations == progress.stage_invocations == len(invocations)
    assert progress.totals()["of them secure-aggregation stages"] == len(invocations)
    report = history.cost(result.run_id)
    assert sum(stage["invocations"] for stage in report["per_stage"].values()) == len(invocations)
    assert report["per_stage"]["reveal"]["cost"] == pytest.approx(0.001 * report["per_stage"]["reveal"]["invocations"])
    assert report["serverless_cost"] == pytest.approx(0.001 * len(invocations))
    failed = [(i["round"], i["stage"], i["client_id"]) for i in invocations if i["outcome"] == "failed"]
    assert sorted(failed) == sorted((int(when[0]), stage, c) for when, stage, clients in drops for c in clients)
    assert all(i["cause"] == "error" and "dropped out" in i["error"] for i in invocations if i["outcome"] == "failed")
    # a client that dropped is invoked in no later stage of its round
    assert not [i for i in invocations if i["round"] == 1 and i["client_id"] == "client-0001" and i["stage"] != "keys"]
    assert {i["stage"] for i in invocations} == set(SECAGG_STAGES)
    # masked vectors counted: 4 in rounds 1-3; in round 4 all 5 sent theirs before two dropped in reveal
    assert [r["succeeded"] for r in history.rounds(result.run_id)] == [4, 4, 4, 5]
    assert history.round_failures(result.run_id) == []
    globals_ = _globals(config, result.run_id)
    for before, after in zip(globals_, globals_[1:]):  # a mask left in would move weights by thousands
        assert 1e-4 < _largest_change(before, after) < 1.0


def test_clients_dropping_at_each_stage_above_the_threshold_fail_the_round_with_its_reason(tmp_path, monkeypatch):
    gone = ["client-0001", "client-0002", "client-0003"]  # 2 of 5 left, threshold 3
    drops = [(f"{r}/1", stage, gone) for r, stage in enumerate(SECAGG_STAGES, start=2)]  # round 1 trains
    config = _config(tmp_path, "above", rounds=1 + len(SECAGG_STAGES))
    # min_successful 0: a failed round keeps the model and the run goes on
    result = run_experiment(config, providers=_dropping_provider(monkeypatch, drops))
    assert result.status == "finished"
    history = History(config.history)
    failures = history.round_failures(result.run_id)
    assert [f["round"] for f in failures] == [2, 3, 4, 5, 6]
    for failure, stage in zip(failures, SECAGG_STAGES):
        assert f"2 of 5 clients finished the {stage} stage, fewer than the threshold 3" in failure["reason"]
    assert [r["succeeded"] for r in history.rounds(result.run_id)] == [5, 0, 0, 0, 0, 0]
    globals_ = _globals(config, result.run_id)
    assert all(_largest_change(before, after) == 0 for before, after in zip(globals_[1:], globals_[2:]))


def test_a_failed_secure_round_runs_again_under_the_quorum_rules(tmp_path, monkeypatch):
    gone = ["client-0000", "client-0002", "client-0004"]
    config = _config(tmp_path, "repeat", min_successful=3, round_repeats=1)
    result = run_experiment(config, providers=_dropping_provider(monkeypatch, [("1/1", "shares", gone)]))
    history = History(config.history)
    assert result.status == "finished" and len(history.round_failures(result.run_id)) == 1
    assert history.rounds(result.run_id)[0]["succeeded"] == 5  # the second run of the round had everyone
    assert len([i for i in history.invocations(result.run_id) if i["stage"] == "keys"]) == 10

    config = _config(tmp_path, "stops", min_successful=3, round_repeats=1)
    drops = [("1/1", "keys", gone), ("1/2", "keys", gone)]
    with pytest.raises(QuorumError, match="round 1 got 0 valid update"):
        run_experiment(config, providers=_dropping_provider(monkeypatch, drops))
    run = History(config.history).runs()[0]
    assert run["status"] == "failed" and len(History(config.history).round_failures(run["run_id"])) == 2


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_sum_only_strategies_give_the_same_model_from_the_secure_average(name):
    """What a secure round hands a strategy (one update: the current model plus the weighted mean change)
    leads to the model the individual updates would have given."""
    from fedless_nb.rounds.secagg import SECURE_CLIENT_ID
    from fedless_nb.strategies import ClientUpdate, RunContext, make_strategy

    rng = np.random.default_rng(0)
    current = [rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)]
    updates = [ClientUpdate(f"c{i}", [w + rng.normal(0, 0.1, w.shape).astype(np.float32) for w in current], n)
               for i, n in enumerate((10, 30, 60))]
    total = sum(u.num_examples for u in updates)
    average = [sum(u.weights[k].astype(np.float64) * u.num_examples for u in updates) / total for k in range(2)]
    models = []
    for given in (updates, [ClientUpdate(SECURE_CLIENT_ID, [a.astype(np.float32) for a in average], total)]):
        strategy = make_strategy(name, {"server_learning_rate": 0.9, "server_momentum": 0.5} if name == "fedavgm" else {})
        strategy.bind(RunContext("r", None, {}, 10, 3))
        weights = strategy.initialize(current)
        for round_number in (1, 2):
            weights = strategy.aggregate(round_number, weights, given)
        models.append(weights)
    for plain, secure in zip(*models):
        np.testing.assert_allclose(plain, secure, atol=1e-6)


@pytest.mark.parametrize("overrides, message", [
    ({"strategy": {"name": "fedmedian"}}, "strategy.name: fedmedian needs each client's update, which secure "
                                          "aggregation hides; use one that needs only their sum: fedavg"),
    ({"strategy": {"name": "krum"}}, "strategy.name: krum needs each client's update"),
    ({"strategy": {"name": "trimmed_mean"}}, "strategy.name: trimmed_mean needs each client's update"),
    ({"strategy": {"name": "scaffold"}}, "strategy.name: scaffold needs each client's update"),
    ({"max_norm_ratio": 10}, "max_norm_ratio: the norm screening compares single updates, which secure aggregation "
                             "hides: set max_norm_ratio: 0 and bound each update with secure_aggregation.clip_norm"),
    ({"mode": "async"}, "mode: secure aggregation sums whole rounds"),
    ({"central_dp": {"adaptive": True}}, "central_dp.adaptive: adaptive clipping needs each update's norm"),
    ({"clients_per_round": 2}, "clients_per_round: secure aggregation needs at least 3 clients per round"),
    ({"central_dp": {}}, "central_dp.sampling: poisson draws a varying number of clients per round, at times fewer "
                         "than the 3 a secure round needs to hide each update; set central_dp.sampling: fixed"),
    ({"central_dp": {"sampling": "fixed"}}, None),
    ({"central_dp": {}, "clients": 5}, None),
    ({"secure_aggregation": {"threshold": 2}}, r"secure_aggregation.threshold: must be 0 \(a majority\) or more than "
                                               r"half of the 5 holders"),
    ({"secure_aggregation": {"neighbours": 2, "threshold": 3}}, None),
    ({"secure_aggregation": {"neighbours": 2, "threshold": 4}}, "at most 3, got 4"),
    ({"secure_aggregation": {"quantization_range": 2**30}}, "secure_aggregation.quantization_range: must be >= 2 "
                                                            "and clients_per_round x it below 2"),
    ({"secure_aggregation": {"clip_norm": 0}}, "secure_aggregation.clip_norm: must be > 0 or null"),
])
def test_what_needs_single_updates_is_refused_in_one_line(tmp_path, overrides, message):
    data = {"clients": 8, "clients_per_round": 5, "max_norm_ratio": 0, "secure_aggregation": {}, **overrides}
    if message is None:
        assert ExperimentConfig.from_dict(data).secure_aggregation is not None
        return
    with pytest.raises(ConfigError, match=message) as raised:
        ExperimentConfig.from_dict(data)
    assert "\n" not in str(raised.value)


def test_central_dp_clips_on_the_clients_and_adds_its_noise_after_unmasking(tmp_path):
    from fedless_nb.privacy.accounting import NoPrivacyWarning

    central = {"noise_multiplier": 0.0, "clip_norm": 0.05}  # small enough that every client is clipped
    with pytest.warns(NoPrivacyWarning):  # noise 0 on purpose: the two sums are compared without it
        plain = run_experiment(_config(tmp_path, "central-plain", secure=False, central_dp=central))
    with pytest.warns(NoPrivacyWarning):
        secure = run_experiment(_config(tmp_path, "central-secure", central_dp=central))
    difference = _largest_change(plain.weights, secure.weights)
    assert difference <= 5 * QuantizationParams().step / 5 + 1e-6  # 5 clients' rounding, over 5 expected clients
    assert secure.privacy_report().granularity == "client-level"
    assert History(secure.config.history).rounds(secure.run_id)[0]["privacy_central_clip_norm"] == 0.05


def test_central_dp_noise_is_added_to_the_unmasked_sum():
    from fedless_nb.strategies import FedAvg, RunContext
    from fedless_nb.strategies.central_dp import CentralDP

    strategy = CentralDP(FedAvg(), noise_multiplier=0.5, clip_norm=2.0)
    strategy.bind(RunContext("r", None, {}, clients=10, clients_per_round=4))
    current = [np.zeros(40000, np.float32)]
    model = strategy.aggregate_sum(1, current, [np.full(40000, 4.0)])
    assert np.mean(model[0]) == pytest.approx(1.0, abs=0.01)  # sum 4 over 4 expected clients
    assert np.std(model[0]) == pytest.approx(0.5 * 2.0 / 4, rel=0.03)
    assert strategy.round_metrics()["central_epsilon"] > 0


@pytest.mark.slow
def test_digits_with_secure_aggregation_reaches_the_accuracy_of_plain_fedavg(tmp_path):
    common = {"clients": 10, "clients_per_round": 5, "rounds": 5, "data": {"dataset": "digits", "partition": "iid"},
              "train": {"epochs": 5, "batch_size": 16, "learning_rate": 0.05},
              "model": {"builder": "mlp", "options": {"hidden_units": [32]}}}
    plain = run_experiment(_config(tmp_path, "digits-plain", secure=False, max_norm_ratio=10, **common))
    secure = run_experiment(_config(tmp_path, "digits-secure", **common))
    assert plain.final_accuracy > 0.8
    assert abs(secure.final_accuracy - plain.final_accuracy) <= 0.02
    invocations = History(secure.config.history).invocations(secure.run_id)
    assert len(invocations) == 5 * 5 * len(SECAGG_STAGES) and all(i["outcome"] == "succeeded" for i in invocations)


def test_a_secure_round_on_s3_relays_through_presigned_urls(tmp_path, moto_endpoint, aws_credentials):
    """The functions reach the S3 store (moto on 127.0.0.1) only through the presigned URLs of their tasks:
    each stage may write its own object and read only its own and its peers' earlier ones."""
    import uuid

    import boto3

    bucket = f"fedless-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    config = _config(tmp_path, "s3", clients=4, clients_per_round=3,
                     store={"kind": "s3", "bucket": bucket, "prefix": "fl", "endpoint_url": moto_endpoint})
    result = run_experiment(config)
    assert result.status == "finished"
    invocations = History(config.history).invocations(result.run_id)
    assert len(invocations) == 3 * len(SECAGG_STAGES) and all(i["outcome"] == "succeeded" for i in invocations)
    objects = {item["Key"] for item in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    written = sorted(key.rsplit(".", 1)[1] for key in objects if f"{result.run_id}/round-00001/secagg-1/" in key)
    assert written == sorted(SECAGG_STAGES * 3)
    assert not [key for key in objects if "/updates/" in key]
    assert not (tmp_path / "store-s3").exists()


def test_a_client_rewriting_its_accepted_keys_object_cannot_fail_its_peers(tmp_path, monkeypatch, moto_endpoint,
                                                                            aws_credentials):
    """A compromised client's grant to write its keys object lasts to the stage deadline, so it can write over the
    object after the controller accepted it: its peers used to read that (`{}`) in their shares stage, fail, and
    take the round down. They read the controller's relayed copy of what it accepted now."""
    import uuid

    import boto3

    bucket = f"fedless-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    monkeypatch.setenv("FEDLESS_TEST_GRANTS", str(tmp_path))
    config = _config(tmp_path, "rewrite", clients=3, clients_per_round=3,
                     store={"kind": "s3", "bucket": bucket, "prefix": "fl", "endpoint_url": moto_endpoint})
    provider = LocalProvider("local", workers=2, entry_point="workloads:rewrites_its_keys_after_they_were_accepted_on_client_1")
    result = run_experiment(config, providers={"local": provider})
    assert (tmp_path / "client-1-keys.json").exists()  # the attack ran
    assert result.status == "finished"
    history = History(config.history)
    assert all(i["outcome"] == "succeeded" for i in history.invocations(result.run_id))
    assert [r["succeeded"] for r in history.rounds(result.run_id)] == [3]


def test_a_masked_vector_with_values_out_of_range_fails_the_round_instead_of_moving_the_model(tmp_path):
    """Masking hides each value, so a compromised client can send one far outside the quantization range: its
    round's model used to move by thousands. The unmasked sum cannot hold such a value: the round fails with
    that reason and the model stays where it was."""
    config = _config(tmp_path, "range", rounds=1)
    provider = LocalProvider("local", workers=2, entry_point="workloads:masks_values_out_of_range_on_client_1")
    with pytest.raises(NothingTrainedError, match=r"the unmasked sum of 5 clients has \d+ values? larger than"):
        run_experiment(config, providers={"local": provider})
    history = History(config.history)
    run_id = history.runs()[0]["run_id"]
    assert "a client sent values outside its quantization range" in history.round_failures(run_id)[0]["reason"]
    (before, after) = _globals(config, run_id)
    assert _largest_change(before, after) == 0


def test_the_unmasked_sums_range_check_passes_every_honest_sum_and_refuses_what_exceeds_it():
    from fedless_nb.privacy import secagg

    params = QuantizationParams(clipping_range=8.0, quantization_range=2**10)
    # 3 clients' weights of 1 (each quantized (1 + 8) x 2^10 / 16), then values at the middle, bottom and top
    honest = np.array([2**10 * (3 * 8 + 3) // 16, 3 * 2**10 // 2, 0, 3 * 2**10], np.uint32)
    assert secagg.sum_range_problem(honest, params, 3) is None
    assert "has 1 value larger than" in secagg.sum_range_problem(honest + np.array([0, 0, 0, 1], np.uint32), params, 3)
    weights = np.array([2**10 * (3 * 8 + 4) // 16, 0, 0, 0], np.uint32)  # weights summing to 4 (dequantized)
    assert "weights add up to 4" in secagg.sum_range_problem(weights, params, 3)


def _controller_reads(monkeypatch):
    """The keys this process, the controller, reads from a local store (the functions are worker processes)."""
    read = []
    get = LocalStore.get
    monkeypatch.setattr(LocalStore, "get", lambda self, key: read.append(key) or get(self, key))
    return read


def _quantization_tolerance(config, run_id, start, result):
    """How far two secure runs of the same round may differ: each client's stochastic rounding moves the sum of
    [weight, weight x update] by under one step per value, in both runs, divided by the summed weights."""
    masked = [i for i in History(config.history).invocations(run_id) if i["stage"] == "masked" and i["outcome"] == "succeeded"]
    weight_sum = sum(i["num_examples"] / 1000 for i in masked)  # max_weight 1000
    return 2 * len(masked) * QuantizationParams().step * (1 + _largest_change(start, result)) / weight_sum + 1e-5


def test_aggregator_functions_sum_the_masked_vectors_and_the_controller_reads_none(tmp_path, monkeypatch):
    """5 clients, fan-in 2: shards of 2, 2 and 1 masked vectors, 2 aggregators a level up over their 3 partial
    sums; the controller merges the last 2 modular sums and unmasks them. The same seed trains the same updates,
    so the model is the controller's own secure round's but for the stochastic rounding (random in each run)."""
    read = _controller_reads(monkeypatch)
    central_config = _config(tmp_path, "central", aggregation={"where": "controller"})
    central = run_experiment(central_config)
    assert len([key for key in read if key.endswith(".masked")]) == 5
    read.clear()
    config = _config(tmp_path, "tree", aggregation={"where": "functions", "fan_in": 2})
    tree = run_experiment(config)
    assert tree.status == "finished" and not [key for key in read if key.endswith(".masked")]
    # the last level's sums only: each level-0 sum is read and checked by the aggregator a level up
    assert sorted(key.split("/round-00001/")[1] for key in read if "/aggregates-" in key) == [
        f"aggregates-1/aggregator-1-0000{n}.1.sum" for n in (4, 5)]

    start = _globals(config, tree.run_id)[0]
    tolerance = _quantization_tolerance(config, tree.run_id, start, tree.weights)
    assert _largest_change(central.weights, tree.weights) <= tolerance < _largest_change(start, tree.weights) / 100
    history = History(config.history)
    aggregations = history.aggregations(tree.run_id)
    assert sorted((a["level"], a["shard_size"], a["summed"], a["outcome"]) for a in aggregations) == [
        (0, 1, 1, "succeeded"), (0, 2, 2, "succeeded"), (0, 2, 2, "succeeded"), (1, 1, 1, "succeeded"),
        (1, 2, 4, "succeeded")]
    assert [r["succeeded"] for r in history.rounds(tree.run_id)] == [5]
    assert all(i["outcome"] == "succeeded" for i in history.invocations(tree.run_id))

    # exact: the top aggregators' modular sums are the sum of the five masked vectors modulo 2^32
    store = LocalStore(config.store.path)
    round_dir = store.root / "runs" / tree.run_id / "round-00001"
    vectors = [decode_arrays((round_dir / "secagg-1" / f"{c}.masked").read_bytes())[0] for c in CLIENTS]
    top = [MaskedSum.from_bytes((round_dir / "aggregates-1" / f"{a['aggregator_id']}.1.sum").read_bytes())
           for a in aggregations if a["level"] == 1]
    merged = MaskedSum(len(vectors[0]))
    for partial in top:
        merged.merge(partial)
    assert merged.count == 5 and np.array_equal(merged.total, np.sum(vectors, axis=0, dtype=np.uint32))


def test_auto_sums_the_masked_vectors_in_the_controller_when_the_functions_serve_one_client_each(tmp_path):
    """Functions deployed for one client each refuse the aggregators' tasks: under `where: auto` the controller reads
    and sums that round's masked vectors itself (still masked: it learns their sum, as under `where: controller`)
    and every later round's. Each refusal counted its clients as dropped, so no round could be unmasked."""
    config = _config(tmp_path, "auto", clients=4, clients_per_round=4, rounds=2,
                     aggregation={"where": "auto", "threshold_mb": 0})
    result, history = _finished_without_round_failures(config, "workloads:serves_one_client_each")
    assert [r["succeeded"] for r in history.rounds(result.run_id)] == [4, 4]
    assert all(i["outcome"] == "succeeded" for i in history.invocations(result.run_id))
    (refused,) = history.aggregations(result.run_id)
    assert (refused["round"], refused["outcome"]) == (1, "failed")
    assert refused["error"].endswith("aggregation: {where: auto} sums this run's rounds in the controller from this one on")
    before, _, after = _globals(config, result.run_id)
    assert 1e-4 < _largest_change(before, after) < 1.0  # a mask left in would move weights by thousands


def test_the_controller_reads_a_rounds_masked_vectors_at_once_when_it_sums_them_itself(tmp_path):
    """Under `where: auto` over functions that cannot aggregate, the controller read the masked vectors one after
    another: a round over a remote store waited one round trip per client. It now reads them concurrently."""
    config = _config(tmp_path, "concurrent", clients=4, clients_per_round=4, rounds=1,
                     aggregation={"where": "auto", "threshold_mb": 0})
    store = SlowReadsStore(config.store.path, lambda key: key.endswith(".masked"))
    provider = LocalProvider("local", workers=2, entry_point="workloads:serves_one_client_each")
    result = run_experiment(config, providers={"local": provider}, store=store)
    assert result.status == "finished"
    assert [r["succeeded"] for r in History(config.history).rounds(result.run_id)] == [4]
    assert store.most_in_flight == 4


def test_functions_asked_for_by_name_that_serve_one_client_each_end_a_secure_run_in_one_line(tmp_path):
    """Under `where: functions` the controller must not read a masked vector: the run ends at the refusal, naming
    the remedy, rather than failing every round as one whose clients all dropped."""
    config = _config(tmp_path, "functions", clients=4, clients_per_round=4, rounds=2,
                     aggregation={"where": "functions"})
    ended_at_the_refusal(config)


def test_functions_that_refuse_the_secure_stages_end_the_run_in_one_line_and_never_aggregate_in_the_clear(tmp_path):
    """Every round fails at its keys stage, which trains nothing; the run ends failed in one line with the reason
    after its first three rounds (it went through all ten, each failing the same way), and the model is never
    moved: no plain update is asked for or summed in place of the secure round."""
    config = _config(tmp_path, "refused", clients=4, clients_per_round=4, rounds=10)
    provider = LocalProvider("local", workers=2, entry_point="workloads:refuses_secure_stages")
    with pytest.raises(NothingTrainedError, match=r"in its first 3 rounds of 10, so it stopped there \(12 "
                                                  r".*; round 1 failed: secure aggregation: 0 of 4 "
                                                  r"clients finished the keys stage, .*PayloadError: the task's train: "
                                                  "unknown field secagg"):
        run_experiment(config, providers={"local": provider})
    history = History(config.history)
    (run,) = history.runs()
    assert run["status"] == "failed" and run["rounds_completed"] == 3
    assert [f["round"] for f in history.round_failures(run["run_id"])] == [1, 2, 3]
    invocations = history.invocations(run["run_id"])
    assert {(i["stage"], i["outcome"]) for i in invocations} == {("keys", "failed")} and len(invocations) == 12
    store = LocalStore(config.store.path)
    globals_ = [decode_arrays(store.get(global_weights_key(run["run_id"], r))) for r in range(4)]  # the rounds it ran
    assert all(_largest_change(globals_[0], later) == 0 for later in globals_[1:])


def test_a_tampered_masked_vector_is_refused_in_its_shard_and_its_client_unmasked_as_dropped(tmp_path, monkeypatch):
    """Client 1's masked vector is altered in the store after it was signed: its aggregator refuses it, the
    history records why, its neighbours reveal its mask key as for a client that sent nothing, and the round
    unmasks the other four's sum: the model the controller's secure round makes of the same run."""
    def run(where):
        config = _config(tmp_path, where, aggregation={"where": where, "fan_in": 2})
        provider = LocalProvider("local", workers=2, entry_point="workloads:tampers_with_client_1s_masked_vector")
        return config, run_experiment(config, providers={"local": provider})

    central_config, central = run("controller")
    config, tree = run("functions")
    history = History(config.history)
    for run_config, result, cause in ((central_config, central, "signature"), (config, tree, "rejected")):
        invocations = History(run_config.history).invocations(result.run_id)
        failed = [(i["stage"], i["client_id"], i["cause"]) for i in invocations if i["outcome"] != "succeeded"]
        assert failed == [("masked", "client-0001", cause)]
        assert "tampered with" in next(i["error"] for i in invocations if i["outcome"] != "succeeded")
        assert not [i for i in invocations if i["stage"] == "reveal" and i["client_id"] == "client-0001"]
        assert [r["succeeded"] for r in History(run_config.history).rounds(result.run_id)] == [4]
    refusals = [a for a in history.aggregations(tree.run_id) if a["rejected"]]
    assert [(a["level"], a["rejected"]) for a in refusals] == [(0, 1)]
    start = _globals(config, tree.run_id)[0]
    tolerance = _quantization_tolerance(config, tree.run_id, start, tree.weights)
    assert _largest_change(central.weights, tree.weights) <= tolerance < _largest_change(start, tree.weights) / 100


def test_the_clients_of_a_failed_aggregators_shard_are_unmasked_as_dropped(tmp_path, monkeypatch):
    """The aggregator of the shard holding clients 0 and 1 fails: both count as dropped before the reveal stage
    (their masked-stage invocations fail as rejected), and the other three's sum is unmasked."""
    config = _config(tmp_path, "failing", aggregation={"where": "functions", "fan_in": 2})
    provider = LocalProvider("local", workers=2, entry_point="workloads:aggregator_fails_on_client_1s_shard")
    result = run_experiment(config, providers={"local": provider})
    history = History(config.history)
    invocations = history.invocations(result.run_id)
    failed = sorted((i["stage"], i["client_id"], i["cause"]) for i in invocations if i["outcome"] != "succeeded")
    assert failed == [("masked", "client-0000", "rejected"), ("masked", "client-0001", "rejected")]
    assert all("its aggregator function failed" in i["error"] for i in invocations if i["outcome"] != "succeeded")
    assert sorted(i["client_id"] for i in invocations if i["stage"] == "reveal") == CLIENTS[2:]
    assert [r["succeeded"] for r in history.rounds(result.run_id)] == [3]
    # 3 shards are more than fan_in 2, so the controller reads none of their sums: the 2 left still go a level up
    assert sorted((a["level"], a["shard_size"], a["outcome"]) for a in history.aggregations(result.run_id)) == [
        (0, 1, "succeeded"), (0, 2, "failed"), (0, 2, "succeeded"), (1, 2, "succeeded")]
    before, after = _globals(config, result.run_id)
    assert 1e-4 < _largest_change(before, after) < 1.0  # a mask left in would move weights by thousands


@pytest.mark.parametrize("stage, hollow, succeeded", [
    ("keys", "{}", 4),  # its peers would fail reading its keys in their shares stage
    ("reveal", '{"seed_shares": {"client-0000": 5}, "key_shares": {}}', 5),  # used to end the run (TypeError)
    # public keys of low order agree on nothing (X25519 refuses): every peer's shares or masked stage used to fail,
    # the round with them, while the client that published them finished every stage
    ("keys", json.dumps({"share_public": base64.b64encode(bytes(32)).decode(), "mask_public": _ORDER_8_POINT,
                         "seed_commitment": "0" * 64, "state": ""}), 4),
    # sealed shares that are not base64: every holder's check stage failed decoding them, the round with them
    ("shares", json.dumps({"shares": {client: "abc" for client in CLIENTS}}), 4),
], ids=["keys", "reveal", "low-order-keys", "shares-not-base64"])
def test_a_signed_malformed_stage_object_is_rejected_and_the_secure_round_completes(tmp_path, monkeypatch, stage,
                                                                                   hollow, succeeded):
    """A compromised client signs a stage object of the wrong form: the controller rejects it (its client drops
    out at that stage) before any peer reads it or the unmasking uses it; the round completes without it."""
    monkeypatch.setenv("FEDLESS_TEST_HOLLOW_STAGE", stage)
    monkeypatch.setenv("FEDLESS_TEST_HOLLOW_OBJECT", hollow)
    config = _config(tmp_path, stage)
    provider = LocalProvider("local", workers=2, entry_point="workloads:writes_a_hollow_secagg_object_on_client_1")
    result = run_experiment(config, providers={"local": provider})
    assert result.status == "finished"
    history = History(config.history)
    failed = [i for i in history.invocations(result.run_id) if i["outcome"] == "failed"]
    assert [(i["client_id"], i["stage"], i["cause"]) for i in failed] == [("client-0001", stage, "rejected")]
    assert f"the {stage} stage wrote a malformed object" in failed[0]["error"]
    assert [r["succeeded"] for r in history.rounds(result.run_id)] == [succeeded]
    (before, after) = _globals(config, result.run_id)
    assert 1e-4 < _largest_change(before, after) < 1.0  # unmasked: a mask left in would move weights by thousands


def test_a_client_revealing_wrong_shares_is_refused_and_the_secure_round_completes(tmp_path, monkeypatch):
    """A compromised client reveals a wrong share of every peer's secret (well formed, its own index): the controller
    recovers each secret from the honest holders' shares (the commitment tells which set is right), refuses that
    client's reveal, and the round completes; it used to fail as a whole (one client took down the round)."""
    config = _config(tmp_path, "liar")
    result, history = _finished_without_round_failures(config, "workloads:reveals_wrong_shares_on_client_1")
    failed = [i for i in history.invocations(result.run_id) if i["outcome"] == "failed"]
    assert [(i["client_id"], i["stage"], i["cause"]) for i in failed] == [("client-0001", "reveal", "rejected")]
    assert "secret that does not recover it" in failed[0]["error"]
    assert [r["succeeded"] for r in history.rounds(result.run_id)] == [5]  # its own masked vector stays in the sum
    (before, after) = _globals(config, result.run_id)
    assert 1e-4 < _largest_change(before, after) < 1.0  # unmasked: a mask left in would move weights by thousands


class _DrawsTwoInRound1:
    """The run's selection, except that round 1 draws two clients: as a privacy budget that has left only two of
    them does (train.dp's target_epsilon with on_budget: skip_client)."""

    def __init__(self, inner):
        self.inner = inner

    def select(self, round_number, client_ids, count):
        return self.inner.select(round_number, client_ids, count)[:2 if round_number == 1 else None]

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_secure_round_drawn_with_fewer_than_three_clients_invokes_none(tmp_path):
    """A round drawn with two clients ran the protocol and published their sum, which tells each the other's update
    (and a round of one, the controller its update). It now fails with that reason, invoking no one, and the next
    round, drawn whole, trains."""
    config = _config(tmp_path, "two", rounds=2)
    result = run_experiment(config, on_controller=lambda c: setattr(c, "selection", _DrawsTwoInRound1(c.selection)))
    assert result.status == "finished"
    history = History(config.history)
    (failure,) = history.round_failures(result.run_id)
    assert failure["round"] == 1 and failure["reason"] == (
        "secure aggregation: the round drew 2 clients, fewer than the 3 it needs to hide each update; no client was "
        "invoked")
    assert {i["round"] for i in history.invocations(result.run_id)} == {2}
    assert [r["succeeded"] for r in history.rounds(result.run_id)] == [0, 5]
    before, unchanged, after = _globals(config, result.run_id)
    assert _largest_change(before, unchanged) == 0 and 1e-4 < _largest_change(unchanged, after) < 1.0


@pytest.mark.parametrize("stage", ["shares", "masked"])
def test_a_secure_round_left_with_two_clients_to_sum_reveals_nothing(tmp_path, monkeypatch, stage):
    """Three clients drawn, one dropping before its masked vector: the threshold (a majority of 3 holders, 2) was met,
    so the round unmasked and published the sum of two, which tells each of them the other's update (as a round drawn
    with two does; a compromised client can leave itself and one honest peer by reporting the third's shares). It
    now fails with that reason before any secret is revealed, and the next round, drawn whole, trains."""
    config = _config(tmp_path, "left-two", clients=3, clients_per_round=3, rounds=2)
    result = run_experiment(config, providers=_dropping_provider(monkeypatch, [("1/1", stage, ["client-0001"])]))
    assert result.status == "finished"
    history = History(config.history)
    (failure,) = history.round_failures(result.run_id)
    assert failure["round"] == 1 and "secure aggregation: 2 of 3 clients " in failure["reason"]
    assert "fewer than the 3 a sum needs to hide each update; no secret was revealed" in failure["reason"]
    assert not [i for i in history.invocations(result.run_id) if i["round"] == 1 and i["stage"] == "reveal"]
    assert [r["succeeded"] for r in history.rounds(result.run_id)] == [0, 3]


def test_a_secure_run_cancelled_in_a_rounds_masked_stage_resumes_with_every_round_once(tmp_path):
    """Ctrl-C (the run's task cancelled) while round 2's clients train in its masked stage: the run is stopped after
    round 1 with no call left running, and resuming it runs round 2 from its keys stage (the objects the cancelled
    round wrote cleared) to the end, each round and each stage's invocation counted once."""
    config = _config(tmp_path, "cancelled", rounds=3)

    async def cancelled_in_round_2():
        running = []

        def stop_at_masked_stage_of_round_2(event):
            if isinstance(event, InvocationFinished) and (event.round, event.stage) == (2, "masked"):
                running[0].cancel()

        running.append(asyncio.ensure_future(run_experiment_async(config, observers=[stop_at_masked_stage_of_round_2])))
        with pytest.raises(asyncio.CancelledError):
            await running[0]

    asyncio.run(cancelled_in_round_2())
    history = History(config.history)
    (stopped,) = history.runs()
    assert (stopped["status"], stopped["rounds_completed"], stopped["error"]) == ("stopped", 1, "interrupted")
    resumed = resume_experiment(stopped["run_id"], history=config.history)
    assert resumed.status == "finished"
    assert [r["round"] for r in history.rounds(resumed.run_id)] == [1, 2, 3]
    assert [r["succeeded"] for r in history.rounds(resumed.run_id)] == [5, 5, 5]
    invocations = history.invocations(resumed.run_id)
    assert sorted((i["round"], i["stage"], i["client_id"]) for i in invocations) == sorted(
        (r, stage, c) for r in (1, 2, 3) for stage in SECAGG_STAGES for c in CLIENTS)
    assert all(i["outcome"] == "succeeded" for i in invocations) and history.round_failures(resumed.run_id) == []
    globals_ = _globals(config, resumed.run_id)
    for before, after in zip(globals_, globals_[1:]):  # a mask left in would move weights by thousands
        assert 1e-4 < _largest_change(before, after) < 1.0


def test_a_client_falsely_reporting_an_honest_peer_has_it_dropped_by_name_and_learns_nothing(tmp_path):
    """The stated limit (README, threat model): the controller cannot tell a false report from garbage sealed by the
    reported peer, so client 1 reporting client 2's good shares gets client 2 dropped before the masked stage, as
    Bonawitz et al.'s holders abort on a share that does not open. What that does and does not give it: client 2's
    rejection names client 1, client 2 trains in no stage, none of client 2's secrets is revealed (so nothing about
    it can be unmasked), and the round sums the other four, client 1 included."""
    config = _config(tmp_path, "accused")
    result, history = _finished_without_round_failures(config, "workloads:reports_client_2_falsely_on_client_1")
    invocations = history.invocations(result.run_id)
    failed = [(i["client_id"], i["stage"], i["cause"]) for i in invocations if i["outcome"] == "failed"]
    assert failed == [("client-0002", "shares", "rejected")]
    rejection = next(i["error"] for i in invocations if i["outcome"] == "failed")
    assert rejection.startswith("its sealed shares for client-0001 do not open (they reported it)")
    assert {i["stage"] for i in invocations if i["client_id"] == "client-0002"} == {"keys", "shares", "check"}
    assert [r["succeeded"] for r in history.rounds(result.run_id)] == [4]
    round_dir = LocalStore(config.store.path).root / "runs" / result.run_id / "round-00001" / "secagg-1"
    reveals = [json.loads(path.read_bytes()) for path in round_dir.glob("*.reveal")]
    assert not any("client-0002" in reveal["seed_shares"] or "client-0002" in reveal["key_shares"] for reveal in reveals)
    assert {path.stem for path in round_dir.glob("*.masked")} == {"client-0000", "client-0001", "client-0003",
                                                                  "client-0004"}
    (before, after) = _globals(config, result.run_id)
    assert 1e-4 < _largest_change(before, after) < 1.0  # unmasked: a mask left in would move weights by thousands


def test_a_client_sealing_garbage_shares_is_dropped_before_masking_and_the_round_sums_the_others(tmp_path, monkeypatch):
    """A compromised client seals garbage for every holder: they report it in the check stage, it is dropped before
    anyone masks with it (its shares stage recorded as rejected), and the round unmasks the honest clients' sum, here
    with another client dropping at the masked stage too. It used to fail the round: no holder could reveal."""
    plain_config = _config(tmp_path, "plain", secure=False)
    plain = run_experiment(plain_config)
    monkeypatch.setenv("FEDLESS_TEST_SECAGG_DROPS", "1/1:masked:client-0003")
    config = _config(tmp_path, "garbage")
    result, history = _finished_without_round_failures(config, "workloads:seals_garbage_shares_on_client_1")
    invocations = history.invocations(result.run_id)
    failed = [(i["client_id"], i["stage"], i["cause"]) for i in invocations if i["outcome"] == "failed"]
    assert failed == [("client-0001", "shares", "rejected"), ("client-0003", "masked", "error")]
    rejection = next(i["error"] for i in invocations if i["cause"] == "rejected")
    assert "its sealed shares for client-0000, client-0002, client-0003, client-0004 do not open" in rejection
    assert {i["stage"] for i in invocations if i["client_id"] == "client-0001"} == {"keys", "shares", "check"}
    assert [r["succeeded"] for r in history.rounds(result.run_id)] == [3]

    # The new model is FedAvg over the kept honest clients only (0, 2 and 4), within the quantization error.
    kept = ["client-0000", "client-0002", "client-0004"]
    store = LocalStore(plain_config.store.path)
    start = decode_arrays(store.get(global_weights_key(plain.run_id, 0)))
    examples = {i["client_id"]: i["num_examples"] for i in History(plain_config.history).invocations(plain.run_id)}
    weights = {c: examples[c] / 1000 for c in kept}  # max_weight 1000
    deltas = {c: [m.astype(np.float64) - s for m, s in zip(decode_arrays(store.get(update_key(plain.run_id, 1, c))), start)]
              for c in kept}
    expected = [s + sum(weights[c] * deltas[c][layer] for c in kept) / sum(weights.values())
                for layer, s in enumerate(start)]
    largest = max(float(np.max(np.abs(d))) for c in kept for d in deltas[c])
    tolerance = len(kept) * QuantizationParams().step * (1 + largest) / sum(weights.values()) + 1e-6
    assert _largest_change(expected, result.weights) <= tolerance

    # No client's self-mask seed and mask key were both revealed; the garbage sealer's were never asked for.
    round_dir = LocalStore(config.store.path).root / "runs" / result.run_id / "round-00001" / "secagg-1"
    reveals = [json.loads(path.read_bytes()) for path in round_dir.glob("*.reveal")]
    seeds = {owner for reveal in reveals for owner in reveal["seed_shares"]}
    keys = {owner for reveal in reveals for owner in reveal["key_shares"]}
    assert (seeds, keys) == (set(kept), {"client-0003"})


@pytest.mark.parametrize("garbage, reason, stages", [
    ("random", "sealed shares that all their holders could open", {"keys", "shares", "check"}),
    # a sealed share of another size than a sealed pair of shares (here one that opens to 9 bytes) is malformed:
    # refused at the shares stage, before any holder tries it
    ("short", "finished the shares stage", {"keys", "shares"}),
])
def test_garbage_shares_that_leave_fewer_than_the_threshold_fail_the_round_in_one_line(tmp_path, monkeypatch, garbage,
                                                                                      reason, stages):
    """Sealed shares that do not open are reported by their holders; the sender is dropped, named, either way."""
    monkeypatch.setenv("FEDLESS_TEST_GARBAGE", garbage)
    config = _config(tmp_path, "too-few", clients=4, clients_per_round=4, secure_aggregation={"threshold": 4})
    provider = LocalProvider("local", workers=2, entry_point="workloads:seals_garbage_shares_on_client_1")
    with pytest.raises(NothingTrainedError, match=f"secure aggregation: 3 of 4 clients {reason}, fewer than the threshold 4"):
        run_experiment(config, providers={"local": provider})
    history = History(config.history)
    run_id = history.runs()[0]["run_id"]
    failed = [(i["client_id"], i["stage"], i["cause"]) for i in history.invocations(run_id) if i["outcome"] == "failed"]
    assert failed == [("client-0001", "shares", "rejected")]
    assert {i["stage"] for i in history.invocations(run_id)} == stages  # nobody trained
