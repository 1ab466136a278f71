"""Whole runs with the research options: every strategy, SCAFFOLD's store, central DP, FedBuff, FedLesScan."""

import time

import pytest

from fedless_nb.experiment import ConfigError, ExperimentConfig
from fedless_nb.records.history import History
from fedless_nb.providers import LocalProvider
from fedless_nb.runner import run_experiment
from fedless_nb.store import LocalStore, decode_arrays
from fedless_nb.strategies import STRATEGIES

FAST_TRAIN = {"epochs": 3, "batch_size": 32, "learning_rate": 0.1}


@pytest.mark.slow
@pytest.mark.parametrize("name, options", [
    (name, {"fedyogi": {"eta": 0.1}, "fedadagrad": {"eta": 0.05},
            "krum": {"num_malicious": 1, "to_keep": 2}, "fedprox": {"proximal_mu": 0.1}}.get(name, {}))
    for name in STRATEGIES
])
def test_every_strategy_trains_digits(tiny_config, name, options):
    # krum with num_malicious 1 needs 2 * 1 + 3, trimmed_mean's beta 0.2 trims one of each end from 5
    selected = 5 if name in ("krum", "trimmed_mean") else 4
    result = run_experiment(tiny_config(strategy={"name": name, "options": options}, rounds=3, train=FAST_TRAIN,
                                        clients_per_round=selected))
    assert result.status == "finished"
    assert result.final_accuracy > 0.5, f"{name} should learn digits well above chance (0.1)"


def test_scaffold_keeps_client_control_variates_in_the_store(tiny_config, tmp_path):
    result = run_experiment(tiny_config(strategy={"name": "scaffold"}, rounds=2))
    store = LocalStore(tmp_path / "store")
    controls = sorted((tmp_path / "store" / "runs" / result.run_id).glob("round-*/scaffold/*.control"))
    assert {path.stem for path in controls} == set(result.strategy.written), "a control variate per client that trained"
    latest = {client: f"runs/{result.run_id}/round-{r:05d}/scaffold/{client}.control"
              for client, r in result.strategy.written.items()}
    assert len(latest) >= 4 and all(any(abs(layer).max() > 0 for layer in decode_arrays(store.get(key)))
                                    for key in latest.values())
    corrections = list((tmp_path / "store" / "runs" / result.run_id).rglob("corrections/*.weights"))
    assert len(corrections) == 8, "a correction per client and round"
    assert result.strategy.control is not None and result.final_accuracy > 0.2


@pytest.mark.slow
@pytest.mark.parametrize("adaptive", [False, True])
def test_central_dp_records_its_client_level_epsilon(tiny_config, adaptive):
    config = tiny_config(rounds=3, train=FAST_TRAIN, central_dp={
        "noise_multiplier": 0.5, "clip_norm": 2.0, "adaptive": adaptive, "delta": 1e-3})
    result = run_experiment(config)
    rounds = History(config.history).rounds(result.run_id)
    epsilons = [r["privacy_central_epsilon"] for r in rounds]
    assert epsilons == sorted(epsilons) and epsilons[0] > 0
    clip_norms = [r["privacy_central_clip_norm"] for r in rounds]
    assert (len(set(clip_norms)) > 1) == adaptive
    report = result.privacy_report()
    assert report.granularity == "client-level" and report.epsilon == pytest.approx(epsilons[-1])
    assert report.sampling_rate == pytest.approx(4 / 6) and report.sampling == "poisson" and report.unit == "client"


@pytest.mark.slow
def test_fedbuff_finishes_the_same_updates_sooner_than_sync_rounds_and_converges(tiny_config):
    """client-0000 sleeps 10 s per invocation. Sync: 2 rounds of all 4 clients wait for it twice.
    FedBuff: 4 buffers of 2 updates, the other three clients keep delivering meanwhile."""
    train = {"epochs": 5, "batch_size": 32, "learning_rate": 0.1}
    common = {"clients": 4, "train": train, "round_deadline": 120.0}
    runs = {}
    for mode, overrides in (("sync", {"clients_per_round": 4, "rounds": 2}),
                            ("async", {"clients_per_round": 4, "rounds": 4, "mode": "async",
                                       "asynchronous": {"concurrency": 4, "buffer_size": 2, "staleness": "polynomial"}})):
        config = tiny_config(name=mode, **common, **overrides)
        provider = LocalProvider("local", workers=4, entry_point="workloads:sleeps_on_client_zero")
        started = time.monotonic()
        result = run_experiment(config, providers={"local": provider})
        runs[mode] = (time.monotonic() - started, result, History(config.history))
    (sync_seconds, sync, sync_history), (async_seconds, fedbuff, async_history) = runs["sync"], runs["async"]
    print({"sync_seconds": round(sync_seconds, 1), "async_seconds": round(async_seconds, 1),
           "sync_accuracy": sync.final_accuracy, "async_accuracy": fedbuff.final_accuracy})

    def aggregated(history, run_id):
        return sum(r["succeeded"] for r in history.rounds(run_id))

    assert aggregated(sync_history, sync.run_id) == aggregated(async_history, fedbuff.run_id) == 8
    assert async_seconds < sync_seconds
    assert fedbuff.status == "finished" and fedbuff.final_accuracy > 0.7
    invocations = [i for i in async_history.invocations(fedbuff.run_id) if i["outcome"] == "succeeded"]
    assert all(i["staleness"] is not None for i in invocations)
    assert all(i["staleness"] is None for i in sync_history.invocations(sync.run_id))


def test_fedbuff_records_and_aggregates_an_update_that_arrives_one_version_late(tiny_config):
    """client-0002's first update trains from the initial model and arrives after version 1 (workloads.
    late_by_one_version orders it through the store, so no timing decides it): version 2 aggregates it with
    staleness 1, and the run records that staleness with its invocation. The staleness test above cannot rely on
    a late arrival: on a loaded machine its third fast client once missed every version."""
    config = tiny_config(clients=3, clients_per_round=3, rounds=2, train=FAST_TRAIN, mode="async",
                         asynchronous={"concurrency": 3, "buffer_size": 2, "staleness": "polynomial"})
    provider = LocalProvider("local", workers=3, entry_point="workloads:late_by_one_version")
    result = run_experiment(config, providers={"local": provider})
    history = History(config.history)
    assert result.status == "finished"
    arrived = {(i["round"], i["client_id"]): i["staleness"] for i in history.invocations(result.run_id)
               if i["outcome"] == "succeeded"}
    assert arrived.pop((1, "client-0002")) == 1, arrived
    on_time = sorted(arrived)  # version 0's two first arrivals and the first of version 1's own tasks
    assert on_time[:2] == [(1, "client-0000"), (1, "client-0001")] and on_time[2:] in ([(2, "client-0000")],
                                                                                      [(2, "client-0001")]), arrived
    assert set(arrived.values()) == {0}
    assert [r["succeeded"] for r in history.rounds(result.run_id)] == [2, 2]


@pytest.mark.parametrize("clients, concurrency, buffer_size", [(6, 3, 3), (3, 3, 3)])
def test_fedbuff_tasks_a_client_once_per_global_version(tiny_config, clients, concurrency, buffer_size):
    """A second task from the same global model would reuse the update key and be refused as a replay;
    with as many clients as slots, a round closes once every client has had its turn."""
    config = tiny_config(clients=clients, clients_per_round=3, rounds=3, mode="async", train=FAST_TRAIN,
                         asynchronous={"concurrency": concurrency, "buffer_size": buffer_size})
    result = run_experiment(config)
    history = History(config.history)
    invocations = history.invocations(result.run_id)
    # nothing fails; the calls the last version left running are recorded as such, and charged: their functions may
    # train and write their updates all the same
    assert all((i["outcome"], i["cause"], i["charged"]) == ("failed", "unfinished", 1)
               for i in invocations if i["outcome"] != "succeeded"), invocations
    assert [r["succeeded"] for r in history.rounds(result.run_id)] == [buffer_size] * 3
    tasks = [(i["round"], i["client_id"]) for i in invocations]
    assert len(tasks) == len(set(tasks))


def test_fedlesscan_selection_runs_and_measures_clients(tiny_config):
    result = run_experiment(tiny_config(selection={"policy": "fedlesscan"}, rounds=2, clients_per_round=3))
    invocations = History(result.config.history).invocations(result.run_id)
    rounds = [sorted(i["client_id"] for i in invocations if i["round"] == r) for r in (1, 2)]
    assert not set(rounds[0]) & set(rounds[1]), "round 2 first measures the clients round 1 did not"


@pytest.mark.parametrize("overrides, message", [
    ({"strategy": {"name": "fedadam", "options": {"etta": 0.1}}}, r"^strategy.options.etta: not an option of fedadam"),
    ({"strategy": {"name": "krum", "options": {"to_keep": -1}}}, r"^strategy.options.to_keep: must be an int >= 0"),
    ({"strategy": {"name": "krum", "options": {"to_keep": 4, "num_malicious": 1}}},
     r"^clients_per_round: multi-krum keeps to_keep 4 of the n - num_malicious updates it trusts, so it needs "
     r"to_keep \+ num_malicious = 5 updates a round, got 4 clients per round; raise clients_per_round or lower "
     r"strategy.options.to_keep or num_malicious$"),
    ({"strategy": {"name": "fedadam", "options": {"eta": 0.1, "beta_1": "0.9"}}},
     r"^strategy.options.beta_1: must be a finite number, got '0.9'$"),
    ({"strategy": {"name": "trimmed_mean", "options": {"beta": 0.5}}}, r"^strategy.options.beta: must be in \[0, 0.5\)"),
    ({"strategy": {"name": "bulyan", "options": {"num_malicious": 1}}},
     r"^clients_per_round: bulyan needs 4 \* num_malicious \+ 3 = 7 updates a round, got 4 clients per round; "
     r"raise clients_per_round or lower strategy.options.num_malicious$"),
    ({"strategy": {"name": "bulyan"}, "clients_per_round": 1},
     r"^clients_per_round: bulyan needs 4 \* num_malicious \+ 3 = 3 updates a round, got 1 client per round; "
     r"raise clients_per_round$"),
    ({"strategy": {"name": "bulyan"}, "clients_per_round": 2},
     r"^clients_per_round: bulyan needs 4 \* num_malicious \+ 3 = 3 updates a round, got 2 clients per round; "
     r"raise clients_per_round$"),
    ({"strategy": {"name": "krum", "options": {"num_malicious": 1}}},
     r"^clients_per_round: krum needs 2 \* num_malicious \+ 3 = 5 updates a round to tolerate num_malicious 1, got 4 "
     r"clients per round; raise clients_per_round or lower strategy.options.num_malicious$"),
    ({"strategy": {"name": "trimmed_mean"}},
     r"^clients_per_round: trimmed_mean with beta 0.2 needs 5 updates a round to trim any \(int\(beta \* n\) from each "
     r"end\), got 4 clients per round; raise clients_per_round or raise strategy.options.beta \(or set it to 0 for the "
     r"plain mean\)$"),
    ({"strategy": {"name": "fednova"}, "train": {"optimizer": "adam"}},
     r"^train.optimizer: fednova normalizes by plain SGD's local steps; use sgd, not 'adam'$"),
    ({"train": {"batch_size": 32, "dp": {"sampling": "shuffle", "num_microbatches": 5}}},
     r"^train.dp.num_microbatches: must divide"),
    ({"train": {"dp": {"num_microbatches": 4}}}, r"^train.dp.num_microbatches: Poisson batches vary in size"),
    ({"train": {"dp": {"sampling": "shuffle", "accountant": "pld"}}}, r"^train.dp.accountant: sampling shuffle"),
    ({"train": {"dp": {"sampling": "fixed"}}}, r"^train.dp.sampling: unknown value 'fixed'"),
    ({"train": {"dp": {"noise_multiplier": -1}}}, r"^train.dp.noise_multiplier: must be a finite number >= 0"),
    ({"train": {"dp": {"noise_multiplier": float("inf")}}}, r"^train.dp.noise_multiplier: must be a finite number"),
    ({"central_dp": {"noise_multiplier": float("inf")}}, r"^central_dp.noise_multiplier: must be a finite number"),
    ({"train": {"dp": {"delta": 1.0}}}, r"^train.dp.delta: must be in \(0, 1\)"),
    ({"train": {"dp": {"accountant": "gdp"}}}, r"^train.dp.accountant: unknown value 'gdp'"),
    ({"train": {"optimizer": "rmsprop", "dp": {}}}, r"^train.optimizer: DP-SGD supports"),
    ({"train": {"dp": {"on_budget": "panic"}}}, r"^train.dp.on_budget"),
    ({"central_dp": {"clip_norm": 0}}, r"^central_dp.clip_norm: must be > 0"),
    ({"central_dp": {"adaptive": True, "clipped_count_stddev": 0.2}}, r"^central_dp.clipped_count_stddev: must exceed"),
    ({"strategy": {"name": "krum"}, "central_dp": {}}, r"^central_dp: works with the strategies"),
    ({"central_dp": {"sampling": "fixed", "accountant": "pld"}}, r"^central_dp.accountant: sampling fixed"),
    ({"central_dp": {}, "selection": {"policy": "fedlesscan"}}, r"^selection.policy: central_dp's accountant assumes"),
    ({"selection": {"policy": "fastest"}}, r"^selection.policy: unknown value 'fastest'"),
    ({"mode": "asap"}, r"^mode: unknown value 'asap'"),
    ({"mode": "async", "strategy": {"name": "fedadam"}}, r"^strategy.name: mode async aggregates with FedBuff"),
    ({"mode": "async", "asynchronous": {"concurrency": 99}}, r"^asynchronous.concurrency: must be between 1 and clients"),
    ({"mode": "async", "asynchronous": {"staleness": "linear"}}, r"^asynchronous.staleness: unknown value"),
])
def test_research_options_are_validated_with_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as raised:
        ExperimentConfig.from_dict({"clients": 6, "clients_per_round": 4, **overrides})
    assert "\n" not in str(raised.value)


@pytest.mark.slow
def test_dp_budget_stops_the_run_cleanly(tiny_config):
    config = tiny_config(rounds=4, clients=4, clients_per_round=4, train={
        "epochs": 1, "batch_size": 32, "learning_rate": 0.1,
        "dp": {"noise_multiplier": 1.0, "target_epsilon": 4.2, "on_budget": "stop_run"}})
    result = run_experiment(config)
    run = History(config.history).run(result.run_id)
    assert result.status == "stopped" and run["status"] == "stopped" and "target_epsilon" in run["error"]
    assert 1 <= run["rounds_completed"] < 4
    assert max(result.accountant.epsilon(c) for c in result.accountant.ledger.subjects) <= 4.2


@pytest.mark.slow
def test_dp_budget_skips_clients_out_of_budget_even_before_their_first_round(tiny_config):
    """Clients of the same size reach the budget together; with skip_client the run ends when none is left."""
    config = tiny_config(rounds=3, clients=4, clients_per_round=2, train={
        "epochs": 1, "batch_size": 32, "learning_rate": 0.1,
        "dp": {"noise_multiplier": 1.0, "target_epsilon": 3.5}})
    result = run_experiment(config)
    subjects = result.accountant.ledger.subjects
    assert subjects and all(s.rounds == 1 for s in subjects.values()), "a second round would pass 3.5"
    rounds = History(config.history).rounds(result.run_id)
    assert rounds[-1]["privacy_clients_skipped"] == 2.0
    assert result.status == "stopped" and len(rounds) == 2
