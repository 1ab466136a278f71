"""Resumable runs: a checkpoint after every round, and a run killed mid-way continues with every round once."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedless_nb.experiment import ExperimentConfig
from fedless_nb.privacy.accounting import PrivacyLedger
from fedless_nb.providers.zygote import ZYGOTE_VARIABLE
from fedless_nb.rounds.checkpoint import Checkpoint, checkpoint_key, decode_checkpoint, encode_checkpoint
from fedless_nb.records.history import History
from fedless_nb.rounds.events import InvocationFinished, RoundFinished
from fedless_nb.runner import ResumeError, resume_experiment, run_experiment

from dp_reference import releases_epsilon


def test_a_checkpoint_keeps_strategy_arrays_and_metrics():
    state = {"momentum": [np.arange(6, dtype=np.float32).reshape(2, 3)], "step": np.int64(4), "beta": 0.9}
    decoded = decode_checkpoint(encode_checkpoint(Checkpoint(3, state, [{"accuracy": 0.5}])))
    assert decoded.round == 3 and decoded.round_metrics == [{"accuracy": 0.5}]
    assert decoded.strategy_state["step"] == 4 and decoded.strategy_state["beta"] == 0.9
    (momentum,) = decoded.strategy_state["momentum"]
    assert momentum.dtype == np.float32 and (momentum == state["momentum"][0]).all()


def test_a_stopped_run_resumes_where_it_stopped(tiny_config):
    config = tiny_config(rounds=3)
    stopped = run_experiment(config, on_controller=lambda c: c.request_stop())
    assert stopped.status == "stopped" and len(stopped.round_metrics) == 1
    resumed = resume_experiment(stopped.run_id, history=config.history)
    assert resumed.run_id == stopped.run_id and resumed.status == "finished"
    assert len(resumed.round_metrics) == 3 and resumed.round_metrics[0] == stopped.round_metrics[0]
    history = History(config.history)
    assert [r["round"] for r in history.rounds(stopped.run_id)] == [1, 2, 3]
    assert len(history.invocations(stopped.run_id)) == 3 * 4
    assert history.run(stopped.run_id)["status"] == "finished"
    with pytest.raises(ResumeError, match="already finished its 3 rounds; there is nothing to resume"):
        resume_experiment(stopped.run_id, history=config.history)


def test_a_run_resumed_from_another_folder_is_refused_and_keeps_its_rounds(tiny_config, tmp_path, monkeypatch):
    """A relative store.path read in another folder named an empty store there: the resume started over from round 1
    and overwrote the rounds the history recorded. Now one line says where to resume it from, and nothing is written."""
    for folder in ("started", "elsewhere"):
        (tmp_path / folder).mkdir()
    monkeypatch.chdir(tmp_path / "started")
    config = tiny_config(rounds=2, store={"path": "store"})
    stopped = run_experiment(config, on_controller=lambda c: c.request_stop())
    history = History(config.history)
    recorded = history.rounds(stopped.run_id), history.invocations(stopped.run_id)
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(ResumeError) as refused:
        resume_experiment(stopped.run_id, history=config.history)
    assert str(refused.value) == (
        f"run {stopped.run_id!r} finished 1 round, but its store.path 'store' names {tmp_path / 'elsewhere' / 'store'} "
        "here, which holds nothing of it: resume it from the folder the run was started in")
    assert list((tmp_path / "elsewhere").iterdir()) == []
    assert (history.rounds(stopped.run_id), history.invocations(stopped.run_id)) == recorded
    monkeypatch.chdir(tmp_path / "started")
    assert resume_experiment(stopped.run_id, history=config.history).status == "finished"
    assert [r["round"] for r in history.rounds(stopped.run_id)] == [1, 2]
    assert history.rounds(stopped.run_id)[0] == recorded[0][0]  # round 1 as it was recorded, not trained again


def test_a_resumed_fedlesscan_run_keeps_what_its_selection_learned(tiny_config, tmp_path):
    config = tiny_config(rounds=2, selection={"policy": "fedlesscan"})
    stopped = run_experiment(config, on_controller=lambda c: c.request_stop())
    checkpoint = decode_checkpoint((tmp_path / "store" / "runs" / stopped.run_id / "checkpoint.json").read_bytes())
    learned = checkpoint.observer_state["selection"]["records"]
    round_1 = {i["client_id"] for i in History(config.history).invocations(stopped.run_id)}
    assert set(learned) == round_1 and all(r["invocations"] == 1 and r["duration"] > 0 for r in learned.values())
    assert resume_experiment(stopped.run_id, history=config.history).status == "finished"


@pytest.mark.parametrize("overrides, message", [
    ({"mode": "async", "asynchronous": {"concurrency": 2, "buffer_size": 2}},
     "used asynchronous rounds .mode: async., whose buffer and in-flight clients are not checkpointed"),
])
def test_runs_whose_state_is_not_checkpointed_refuse_to_resume(tiny_config, overrides, message):
    config = tiny_config(rounds=3, **overrides)
    stopped = run_experiment(config, on_controller=lambda c: c.request_stop())
    assert stopped.status == "stopped"
    with pytest.raises(ResumeError, match=message):
        resume_experiment(stopped.run_id, history=config.history)
    assert History(config.history).run(stopped.run_id)["status"] == "stopped", "a refused resume changes nothing"


DP_TRAIN = {"epochs": 1, "batch_size": 32, "learning_rate": 0.1, "dp": {"noise_multiplier": 1.0}}


def _epsilons(history_path, run_id):
    return [r["privacy_epsilon_max"] for r in History(history_path).rounds(run_id)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """`uninterrupted(config)`: the result of `config` run without a stop, in a history and store of its own, run once
    per module for each config (apart from where its history and store are): tests that compare a resumed run with
    the uninterrupted one of the same config share it. Its result is read, never changed."""
    results = {}

    def run(config):
        data = config.to_dict()
        key = yaml.safe_dump({name: value for name, value in data.items() if name not in ("history", "store")})
        if key not in results:
            directory = tmp_path_factory.mktemp("uninterrupted")
            results[key] = run_experiment(ExperimentConfig.from_dict(
                {**data, "history": str(directory / "history.db"), "store": {**data["store"], "path": str(directory / "store")}}))
        return results[key]

    return run


def _stopped_resumed_and_uninterrupted(config, uninterrupted):
    """The run of `config` stopped after round 1 and resumed, and the same config run without a stop (its own history)."""
    stopped = run_experiment(config, on_controller=lambda c: c.request_stop())
    assert stopped.status == "stopped" and len(stopped.round_metrics) == 1
    resumed = resume_experiment(stopped.run_id, history=config.history)
    return resumed, uninterrupted(config)


def test_a_stopped_dp_run_resumes_with_the_epsilon_of_an_uninterrupted_run(tiny_config, uninterrupted):
    config = tiny_config(rounds=3, clients=4, clients_per_round=2, train=DP_TRAIN)
    resumed, reference = _stopped_resumed_and_uninterrupted(config, uninterrupted)
    assert _epsilons(resumed.config.history, resumed.run_id) == _epsilons(reference.config.history, reference.run_id)
    for client_id in reference.accountant.ledger.subjects:
        assert resumed.accountant.epsilon(client_id) == reference.accountant.epsilon(client_id)
    assert resumed.privacy_report().epsilon == reference.privacy_report().epsilon



@pytest.mark.parametrize("on_budget", ["stop_run", "skip_client"])
def test_a_resumed_dp_run_stops_at_its_target_epsilon_where_dp_accounting_says(tiny_config, on_budget):
    """Stopped after round 1 and resumed: every client (about 359 digits, 12 Poisson steps a round at q = 32 / n) is
    charged 3 rounds, dp-accounting's epsilon for them, and a 4th would pass the target set between the two."""
    import dp_accounting as dpa

    def reference(n, rounds):
        event = dpa.PoissonSampledDpEvent(32 / n, dpa.GaussianDpEvent(1.0))
        return dpa.rdp.RdpAccountant().compose(dpa.SelfComposedDpEvent(event, -(-n // 32) * rounds)).get_epsilon(1e-4)

    target = (reference(359, 3) + reference(359, 4)) / 2
    config = tiny_config(rounds=8, clients=4, clients_per_round=4, train={**DP_TRAIN, "dp": {
        "noise_multiplier": 1.0, "delta": 1e-4, "target_epsilon": target, "on_budget": on_budget}})
    stopped = run_experiment(config, on_controller=lambda c: c.request_stop())
    resumed = resume_experiment(stopped.run_id, history=config.history)
    assert resumed.status == "stopped" and len(resumed.round_metrics) == 3
    rows = [row for row in History(config.history).invocations(stopped.run_id) if row["outcome"] == "succeeded"]
    for client_id in resumed.accountant.ledger.subjects:
        n = next(row["num_examples"] for row in rows if row["client_id"] == client_id)
        assert sum(row["client_id"] == client_id for row in rows) == 3
        assert resumed.accountant.epsilon(client_id) == pytest.approx(reference(n, 3), rel=1e-9)
        assert reference(n, 3) <= target < reference(n, 4)


def _interrupt_after_recording(round_number):
    """An observer (subscribed after the history) that ends the process's run as Ctrl-C would once round
    `round_number` is in the history, before the controller checkpoints it: the crash window in between."""
    def observer(event):
        if isinstance(event, RoundFinished) and event.round == round_number:
            raise KeyboardInterrupt
    return observer


def _ledger_epsilon(planned, rounds, delta, accountant="rdp"):
    """Epsilon of `rounds` rounds of `planned`, composed afresh."""
    ledger = PrivacyLedger(delta, accountant)
    for _ in range(rounds):
        ledger.add("subject", planned)
    return ledger.epsilon("subject")


def test_a_dp_run_that_died_between_its_history_and_its_checkpoint_redoes_that_round_and_charges_both(
        tiny_config, tmp_path):
    """Round 2 was published (its model stored, its metrics recorded) before the run died; the resumed run redoes
    it, releasing its clients' data again: each client is charged the rounds it trained in, the first round 2
    included (the checkpoint predates it), while the history counts round 2 once."""
    config = tiny_config(rounds=3, clients=4, clients_per_round=2, train=DP_TRAIN)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, observers=[_interrupt_after_recording(2)])
    (died,) = History(config.history).runs()
    assert [r["round"] for r in History(config.history).rounds(died["run_id"])] == [1, 2] and decode_checkpoint(
        (tmp_path / "store" / "runs" / died["run_id"] / "checkpoint.json").read_bytes()).round == 1
    first_round_2 = [i["client_id"] for i in History(config.history).invocations(died["run_id"]) if i["round"] == 2]
    resumed = resume_experiment(died["run_id"], history=config.history)
    assert resumed.status == "finished"
    invocations = History(resumed.config.history).invocations(resumed.run_id)
    assert len(invocations) == 3 * 2, "round 2 counted once in the history"
    assert all(i["outcome"] == "succeeded" for i in invocations), "no function refused its redone task as a replay"
    accountant = resumed.accountant
    for client_id in accountant.planned:
        rounds = sum(i["client_id"] == client_id for i in invocations) + first_round_2.count(client_id)
        assert accountant.ledger.subjects.get(client_id) is None if rounds == 0 else (
            accountant.ledger.subjects[client_id].rounds == rounds), client_id
        expected = _ledger_epsilon(accountant.planned[client_id], rounds, accountant.delta) if rounds else 0.0
        assert accountant.epsilon(client_id) == pytest.approx(expected, rel=1e-12), client_id
    assert len(first_round_2) == 2 and _epsilons(resumed.config.history, resumed.run_id)[-1] == pytest.approx(
        max(accountant.epsilon(c) for c in accountant.planned), rel=1e-12)


def test_a_redone_straggler_round_charges_each_release_the_steps_its_draw_allowed(tiny_config, tmp_path):
    """Half of each round's 4 clients straggle (one of two epochs). Round 2 was published before the run died and is
    redone on resume: each client's epsilon is dp-accounting's composed by hand over every release it made, the
    first round 2 included, each at the steps it took (the history keeps each invocation's straggler cut; the first
    release was charged as if every client had run its full epochs)."""
    import dp_accounting as dpa

    config = tiny_config(rounds=3, clients=4, clients_per_round=4, stragglers={"fraction": 0.5, "work": 0.5},
                         train={**DP_TRAIN, "epochs": 2})
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, observers=[_interrupt_after_recording(2)])
    (died,) = History(config.history).runs()
    first_round_2 = [i for i in History(config.history).invocations(died["run_id"]) if i["round"] == 2]
    assert sum(i["partial"] for i in first_round_2) == 2, "two stragglers in the first release of round 2"
    resumed = resume_experiment(died["run_id"], history=config.history)
    releases = [i for i in History(config.history).invocations(died["run_id"]) if i["outcome"] == "succeeded"]
    for client_id in resumed.accountant.planned:
        own = [i for i in [*releases, *first_round_2] if i["client_id"] == client_id]
        assert len(own) == 4, "rounds 1 to 3, round 2 twice"
        q = 32 / own[0]["num_examples"]
        reference = dpa.rdp.RdpAccountant()
        for invocation in own:
            reference.compose(dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(1.0)),
                                                      invocation["steps"]))
        assert resumed.accountant.epsilon(client_id) == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9), client_id
    assert [i["budget_epochs"] for i in first_round_2] == [1.0 if i["partial"] else None for i in first_round_2]


def test_a_history_from_before_the_straggler_column_charges_a_redone_round_as_planned(tmp_path):
    """A history written before invocations kept their straggler cut opens with the column added and empty: each
    invocation of a round to redo reads as a full round (charged as planned, as before); a new one keeps its cut."""
    import sqlite3

    from fedless_nb.records.history import HistoryWriter
    from fedless_nb.runner import _released_after

    path = tmp_path / "old.db"
    writer = HistoryWriter(History(path))
    writer(InvocationFinished("r", 1, "client-0000", "local", "succeeded", 100.0, 101.0, budget_epochs=0.5))
    writer(RoundFinished("r", 1, 100.0, 102.0, 1, 1, 0, {}, {}))
    writer.history.close()
    assert _released_after(History(path), "r", 0) == {1: [("client-0000", 0.5)]}
    with sqlite3.connect(path) as connection:
        connection.execute("alter table invocations drop column budget_epochs")
    assert _released_after(History(path), "r", 0) == {1: [("client-0000", None)]}


def test_a_central_dp_run_that_died_between_its_history_and_its_checkpoint_charges_the_published_round_too(
        tiny_config, tmp_path):
    config = tiny_config(rounds=3, clients=4, clients_per_round=2,
                         central_dp={"noise_multiplier": 1.0, "clip_norm": 1.0})
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, observers=[_interrupt_after_recording(2)])
    (died,) = History(config.history).runs()
    resumed = resume_experiment(died["run_id"], history=config.history)
    central = resumed.strategy
    assert resumed.status == "finished" and central.rounds == 4, "3 rounds trained and published, round 2 twice"
    assert central.epsilon() == pytest.approx(
        _ledger_epsilon(central.dp_round(), 4, central.delta, central.accountant), rel=1e-12)
    assert History(config.history).rounds(died["run_id"])[-1]["privacy_central_epsilon"] == pytest.approx(
        central.epsilon(), rel=1e-12)


@pytest.mark.parametrize("strategy", [{"name": "fedadam"}, {"name": "fedavgm", "options": {"server_momentum": 0.9}},
                                      {"name": "scaffold"}])
def test_a_stopped_run_with_server_state_resumes_to_the_uninterrupted_model_bit_for_bit(tiny_config, uninterrupted,
                                                                                       strategy):
    """FedAdam's moments, FedAvgM's momentum and SCAFFOLD's control variates go through the checkpoint (float64
    arrays, as .npy) and the clients train deterministically under the seed, so nothing may differ at all."""
    config = tiny_config(rounds=3, clients=4, clients_per_round=2, strategy=strategy)
    resumed, reference = _stopped_resumed_and_uninterrupted(config, uninterrupted)
    for layer, expected in zip(resumed.weights, reference.weights):
        np.testing.assert_array_equal(layer, expected)
    for name, arrays in resumed.strategy.state().items():
        if isinstance(arrays, list) and arrays and isinstance(arrays[0], np.ndarray):
            for array, expected in zip(arrays, reference.strategy.state()[name]):
                assert array.dtype == np.float64
                np.testing.assert_array_equal(array, expected)


def test_a_scaffold_run_that_died_between_its_history_and_its_checkpoint_resumes_to_the_uninterrupted_model(
        tiny_config, tmp_path, uninterrupted):
    """Round 2's aggregation had written the clients' new c_i when the run died before checkpointing round 2: under
    one fixed key per client the resumed round 2 started from those, not from round 1's (max difference 0.09)."""
    config = tiny_config(rounds=3, clients=4, clients_per_round=2, strategy={"name": "scaffold"})
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, observers=[_interrupt_after_recording(2)])
    (died,) = History(config.history).runs()
    resumed = resume_experiment(died["run_id"], history=config.history)
    reference = uninterrupted(config)
    for layer, expected in zip(resumed.weights, reference.weights):
        np.testing.assert_allclose(layer, expected, rtol=0, atol=1e-6)
    controls = [path.name for path in (tmp_path / "store" / "runs" / died["run_id"]).glob("round-*/scaffold/*.control")]
    trained = {i["client_id"] for i in History(reference.config.history).invocations(reference.run_id)}
    assert {name.removesuffix(".control") for name in controls} == trained
    assert max(controls.count(name) for name in controls) <= 2, "a replaced c_i is deleted a round later"


def _to_legacy_scaffold_layout(store, run_id):
    """Rewrite a SCAFFOLD run's checkpoint and c_i as the code before per-round c_i left them: the state holds only
    c, and each c_i sits under one fixed key per client."""
    path = store / "runs" / run_id / "checkpoint.json"
    checkpoint = decode_checkpoint(path.read_bytes())
    checkpoint.strategy_state = {"control": checkpoint.strategy_state["control"]}
    path.write_bytes(encode_checkpoint(checkpoint))
    (store / "runs" / run_id / "scaffold").mkdir()
    for control in (store / "runs" / run_id).glob("round-*/scaffold/*.control"):
        control.rename(store / "runs" / run_id / "scaffold" / control.name)
    return checkpoint


def test_a_scaffold_checkpoint_from_before_per_round_control_variates_resumes_with_its_clients_c_i(
        tiny_config, tmp_path, uninterrupted):
    """The old layout's c_i are read, not taken as zero (taken as zero, the model ended 0.08 off the uninterrupted one): resumed
    twice, so a client first selected after the second resume still finds its old c_i."""
    config = tiny_config(rounds=4, clients=4, clients_per_round=2, strategy={"name": "scaffold"})
    stopped = run_experiment(config, on_controller=lambda c: c.request_stop())
    _to_legacy_scaffold_layout(tmp_path / "store", stopped.run_id)
    resume_experiment(stopped.run_id, history=config.history, on_controller=lambda c: c.request_stop())
    resumed = resume_experiment(stopped.run_id, history=config.history)
    for layer, expected in zip(resumed.weights, uninterrupted(config).weights):
        np.testing.assert_allclose(layer, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("sampling", ["poisson", "fixed"])
def test_a_stopped_central_dp_run_resumes_with_the_epsilon_of_an_uninterrupted_run(tiny_config, uninterrupted, sampling):
    config = tiny_config(rounds=3, clients=4, clients_per_round=2,
                         central_dp={"noise_multiplier": 1.0, "clip_norm": 1.0, "sampling": sampling})
    stopped = run_experiment(config, on_controller=lambda c: c.request_stop())
    assert stopped.status == "stopped" and len(stopped.round_metrics) == 1
    resumed = resume_experiment(stopped.run_id, history=config.history)
    reference = uninterrupted(config)
    epsilons = [r["privacy_central_epsilon"] for r in History(resumed.config.history).rounds(resumed.run_id)]
    expected = [r["privacy_central_epsilon"] for r in History(reference.config.history).rounds(reference.run_id)]
    assert len(expected) == 3 and expected[0] < expected[1] < expected[2]
    assert epsilons == expected
    assert resumed.privacy_report().epsilon == reference.privacy_report().epsilon == expected[-1]

def _cli(*arguments, **options):
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.Popen([sys.executable, "-m", "fedless_nb", *arguments], env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **options)


@pytest.mark.slow
def test_a_killed_controller_resumes_with_every_round_once(tmp_path, tiny_config, uninterrupted):
    rounds = 8
    config = tiny_config(rounds=rounds, train={"epochs": 15, "batch_size": 32, "learning_rate": 0.05})
    path = tmp_path / "experiment.yaml"
    path.write_text(config.to_yaml())
    process = _cli("run", str(path))
    history_path = config.history
    completed = 0
    while process.poll() is None and completed < 3:
        time.sleep(0.05)
        if os.path.exists(history_path):
            runs = History(history_path).runs()
            completed = runs[0]["rounds_completed"] if runs else 0
    assert process.poll() is None, "the run must still be going when it is killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    (killed,) = History(history_path).runs()
    assert killed["status"] == "interrupted" and 3 <= killed["rounds_completed"] < rounds

    # A kill between a round's history row and its checkpoint leaves the round recorded but not checkpointed: the
    # resume redoes it (runner._released_after), so it continues after the checkpoint's round, the last or the one before.
    checkpoint_path = Path(config.store.path) / checkpoint_key(killed["run_id"])
    checkpointed = decode_checkpoint(checkpoint_path.read_bytes()).round
    assert checkpointed in (killed["rounds_completed"], killed["rounds_completed"] - 1)
    resumed = _cli("resume", killed["run_id"], "--history", history_path)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert f" resumes from round {checkpointed + 1} of {rounds}: " in output

    history = History(history_path)
    run = history.run(killed["run_id"])
    assert run["status"] == "finished" and run["rounds_completed"] == rounds
    assert [r["round"] for r in history.rounds(killed["run_id"])] == list(range(1, rounds + 1))
    invocations = history.invocations(killed["run_id"])
    assert len(invocations) == rounds * 4
    assert len({(i["round"], i["client_id"]) for i in invocations}) == rounds * 4, "no invocation counted twice"

    assert abs(history.final_metrics(killed["run_id"])["eval_accuracy"] - uninterrupted(config).final_accuracy) <= 0.03


def _kill_while_round_runs(process, history_path, store_path, round_number):
    """SIGKILL `process` once a function has written its update of `round_number` while the history holds the round
    before (polled, not timed): the controller dies with that round in flight. It is stopped (SIGSTOP) as soon as the
    update appears, and the history is read while it cannot move: read first, the round could finish between the
    read and the kill. Its local workers outlive it until their task is done; they are waited for, so what they
    leave behind is there."""
    import psutil

    while process.poll() is None and not list(Path(store_path).glob(f"runs/*/round-{round_number:05d}/updates/*.weights")):
        time.sleep(0.005)
    assert process.poll() is None, "the run must still be going when it is killed"
    process.send_signal(signal.SIGSTOP)
    (frozen,) = History(history_path).runs()
    assert frozen["rounds_completed"] == round_number - 1, f"round {round_number} finished before the controller stopped"
    workers = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signal.SIGKILL)
    process.wait()
    psutil.wait_procs(workers, timeout=120)
    (killed,) = History(history_path).runs()
    assert killed["status"] == "interrupted" and killed["rounds_completed"] == round_number - 1
    return killed


@pytest.mark.slow
def test_a_killed_dp_run_resumes_with_the_epsilon_of_an_uninterrupted_run(
        exec_workers, worker_zygote, monkeypatch, tmp_path, tiny_config, uninterrupted):
    """Killed with round 3 in flight: the functions that finished after the controller died left their round-3
    updates, which the resumed run clears, so every function trains round 3 again (none refuses a replay), and the
    killed round's attempts, which may have trained, are charged as well as the redone round's. Only the
    killed run needs workers of its own that outlive it; the resume and the uninterrupted run fork theirs from the
    zygote, as every other run here does."""
    rounds = 4
    config = tiny_config(rounds=rounds, clients=4, clients_per_round=2, train={**DP_TRAIN, "epochs": 3})
    path = tmp_path / "experiment.yaml"
    path.write_text(config.to_yaml())
    killed = _kill_while_round_runs(_cli("run", str(path)), config.history, config.store.path, 3)
    if worker_zygote is not None:
        monkeypatch.setenv(ZYGOTE_VARIABLE, worker_zygote.socket_path)

    resumed = _cli("resume", killed["run_id"], "--history", config.history)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    history = History(config.history)
    assert history.run(killed["run_id"])["status"] == "finished"
    assert [r["round"] for r in history.rounds(killed["run_id"])] == list(range(1, rounds + 1))

    invocations = history.invocations(killed["run_id"])
    assert len(invocations) == rounds * 2 and all(i["outcome"] == "succeeded" for i in invocations), invocations

    # The killed round's attempts were written ahead as they were sent, and the resume charged them (they may have
    # trained): the run states the epsilon of an uninterrupted run that made the same invocations, dp-accounting's
    # over every attempt, above the reference run's from the killed round on (they were equal on the old code).
    reference = uninterrupted(config)
    expected = _epsilons(reference.config.history, reference.run_id)
    assert len(expected) == rounds and all(e > 0 for e in expected)
    epsilons = _epsilons(history.path, killed["run_id"])
    assert epsilons[:2] == expected[:2] and epsilons[-1] > expected[-1]
    releases = _releases_per_client(config.history, killed["run_id"])
    assert sum(releases.values()) > rounds * 2, "the killed round's attempts are in the write-ahead record"
    assert epsilons[-1] == pytest.approx(max(releases_epsilon(planned, releases.get(client_id, 0), 1e-5)
                                             for client_id, planned in reference.accountant.planned.items()), rel=1e-9)


def _charged_rows(history_path, run_id, first_round=1):
    return [row for row in History(history_path).invocations(run_id) if row["charged"] and row["round"] >= first_round]


def test_a_dp_run_interrupted_mid_round_is_charged_that_rounds_invocations_on_resume(tiny_config):
    """Ctrl-C as round 2's first update arrives: the calls still running are recorded as interrupted (their functions
    may train and write all the same), and the resumed run, which clears round 2's updates and redoes it, charges
    every round-2 invocation of the first process too. Each client's epsilon is dp-accounting's over all of them."""
    import dp_accounting as dpa

    from fedless_nb.rounds.events import InvocationFinished as Finished

    interrupted = []

    def interrupt(event):
        if isinstance(event, Finished) and event.round == 2 and not interrupted:
            interrupted.append(event)
            raise KeyboardInterrupt

    config = tiny_config(rounds=3, clients=4, clients_per_round=4, train=DP_TRAIN)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, observers=[interrupt])
    (died,) = History(config.history).runs()
    first = _charged_rows(config.history, died["run_id"])
    assert {row["cause"] for row in first if row["round"] == 2} >= {"interrupted"}, first
    resumed = resume_experiment(died["run_id"], history=config.history)
    assert resumed.status == "finished"
    releases = [*first, *_charged_rows(config.history, died["run_id"], first_round=2)]
    for client_id, planned in resumed.accountant.planned.items():
        count = sum(row["client_id"] == client_id for row in releases)
        assert count == 4 if any(row["client_id"] == client_id and row["round"] == 2 for row in first) else 3
        step = dpa.PoissonSampledDpEvent(planned.sampling_rate, dpa.GaussianDpEvent(1.0))
        reference = dpa.rdp.RdpAccountant().compose(dpa.SelfComposedDpEvent(step, planned.steps * count))
        assert resumed.accountant.epsilon(client_id) == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9), client_id


def test_a_history_from_before_the_charged_column_charges_by_outcome_and_cause(tmp_path):
    """A history written before invocations kept whether they were charged: a resume charges each invocation recorded
    after the checkpoint that may have trained (a success, a timeout), not a refused one nor a late reply (the
    invocation it answers was charged when it ended); where the column is kept, as recorded."""
    import sqlite3

    from fedless_nb.records.history import HistoryWriter
    from fedless_nb.runner import _released_after

    path = tmp_path / "old.db"
    writer = HistoryWriter(History(path))
    for client, outcome, cause, charged in [("client-0000", "succeeded", None, None), ("client-0001", "failed", "timeout", None),
                                            ("client-0002", "failed", "auth", None), ("client-0003", "discarded", "late", None),
                                            ("client-0004", "discarded", "late", True)]:
        writer(InvocationFinished("r", 2, client, "local", outcome, 100.0, 101.0, cause=cause, charged=charged))
    writer(RoundFinished("r", 2, 100.0, 102.0, 5, 1, 4, {}, {}))
    writer.history.close()
    assert _released_after(History(path), "r", 1) == {2: [("client-0000", None), ("client-0001", None),
                                                          ("client-0004", None)]}
    with sqlite3.connect(path) as connection:
        connection.execute("alter table invocations drop column charged")
    assert _released_after(History(path), "r", 1) == {2: [("client-0000", None), ("client-0001", None)]}
    assert _released_after(History(path), "r", 2) == {}


def test_a_central_dp_run_that_died_after_storing_a_noised_model_is_charged_for_it_on_resume(tiny_config):
    """The process died after storing round 2's noised model, before the round reached the history: whoever reads the
    store may have read that model, so the resumed run, which redoes round 2, is charged for it too (4 rounds)."""
    config = tiny_config(rounds=3, clients=4, clients_per_round=2,
                         central_dp={"noise_multiplier": 1.0, "clip_norm": 1.0})

    def dying_after_the_store(controller):
        evaluate, calls = controller.evaluate, []

        def evaluated(weights):
            calls.append(1)
            if len(calls) == 2:  # round 2's model is in the store
                raise KeyboardInterrupt
            return evaluate(weights)
        controller.evaluate = evaluated

    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, on_controller=dying_after_the_store)
    (died,) = History(config.history).runs()
    assert [r["round"] for r in History(config.history).rounds(died["run_id"])] == [1]
    central = resume_experiment(died["run_id"], history=config.history).strategy
    assert central.rounds == 4, "rounds 1 to 3, and the first round-2 model"
    assert central.epsilon() == pytest.approx(
        _ledger_epsilon(central.dp_round(), 4, central.delta, central.accountant), rel=1e-12)


def test_a_resume_charges_each_attempt_written_ahead_that_its_checkpoint_does_not_count(tmp_path):
    """The write-ahead record (the history's `sent` table): a resume charges every attempt sent after its checkpoint,
    or running when the checkpoint was written, as its finished row was charged, or, where it never finished in the
    history (its controller killed outright), as one that may have trained; not one the checkpoint counts, nor a
    key stage (it trains nothing). Rows from before the record keep the round rule."""
    from fedless_nb.records.history import HistoryWriter
    from fedless_nb.rounds.events import InvocationSent
    from fedless_nb.runner import _released_after

    path = tmp_path / "history.db"
    writer = HistoryWriter(History(path))
    sent = [(10, 1, "client-0000", None), (11, 1, "client-0001", None),  # finished before the checkpoint (seq 12)
            (12, 1, "client-0002", None),  # still running at the checkpoint, finished after it (a FedBuff straggler)
            (13, 2, "client-0000", None),  # sent after it, finished, charged
            (14, 2, "client-0001", None),  # sent after it, refused before training
            (15, 2, "client-0003", None),  # sent after it, never finished: the controller was killed
            (16, 2, "client-0002", "keys")]  # a key stage that never finished
    for seq, round_number, client, stage in sent:
        writer(InvocationSent("r", round_number, client, "local", seq, 100.0, stage, 0.5 if seq == 15 else None))
    for seq, round_number, client, outcome, cause, charged in [
            (10, 1, "client-0000", "succeeded", None, True), (11, 1, "client-0001", "succeeded", None, True),
            (12, 1, "client-0002", "succeeded", None, True), (13, 2, "client-0000", "succeeded", None, True),
            (14, 2, "client-0001", "failed", "refused", False)]:
        writer(InvocationFinished("r", round_number, client, "local", outcome, 100.0, 101.0, cause=cause,
                                  charged=charged, sent=seq))
    writer(InvocationFinished("r", 2, "client-0004", "local", "succeeded", 100.0, 101.0, charged=True))  # no record
    writer(RoundFinished("r", 2, 100.0, 102.0, 5, 3, 2, {}, {}))
    writer.history.close()
    assert _released_after(History(path), "r", 1, sent_through=12, running=[12]) == {
        1: [("client-0002", None)], 2: [("client-0004", None), ("client-0000", None), ("client-0003", 0.5)]}
    # a checkpoint from before the record counts none of the attempts written ahead
    assert _released_after(History(path), "r", 1) == {
        1: [("client-0000", None), ("client-0001", None), ("client-0002", None)],
        2: [("client-0004", None), ("client-0000", None), ("client-0003", 0.5)]}


def _releases_per_client(history_path, run_id):
    """How many attempts of each client the history wrote ahead (each may have trained: the tests' runs refuse none)."""
    counts = {}
    for attempt in History(history_path).sent(run_id):
        counts[attempt["client_id"]] = counts.get(attempt["client_id"], 0) + 1
    return counts


def test_a_resumed_dp_run_that_died_again_before_its_redone_rounds_checkpoint_charges_every_release(tiny_config):
    """The run died after recording round 2, before checkpointing it; its resume redid round 2 and died the same way;
    the second resume redoes it once more. Round 2 released data three times, each charged: the history's round-2 rows
    are the last ones only (the first two were replaced), but every attempt stays in its write-ahead record. Each
    client's epsilon is dp-accounting's over every attempt it made (the first release was lost on the old code)."""
    config = tiny_config(rounds=3, clients=4, clients_per_round=2, train=DP_TRAIN)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, observers=[_interrupt_after_recording(2)])
    (died,) = History(config.history).runs()
    with pytest.raises(KeyboardInterrupt):
        resume_experiment(died["run_id"], history=config.history, observers=[_interrupt_after_recording(2)])
    resumed = resume_experiment(died["run_id"], history=config.history)
    assert resumed.status == "finished"
    releases = _releases_per_client(config.history, died["run_id"])
    assert sum(releases.values()) == 2 * 5, "rounds 1 and 3 once, round 2 three times"
    accountant = resumed.accountant
    for client_id, planned in accountant.planned.items():
        expected = releases_epsilon(planned, releases.get(client_id, 0), accountant.delta)
        assert accountant.epsilon(client_id) == pytest.approx(expected, rel=1e-9), client_id



def test_only_a_run_that_charges_each_invocation_writes_its_attempts_ahead(tiny_config):
    """The write-ahead record costs a history commit per attempt on the event loop; only example-level DP's resume
    reads it, so a run without it writes none (a DP run's are read by the tests above)."""
    plain = run_experiment(tiny_config(rounds=1))
    history = History(plain.config.history)
    assert history.sent(plain.run_id) == []
    assert [row["sent"] for row in history.invocations(plain.run_id)] == [None] * 4
