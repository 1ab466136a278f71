"""The `fedless-nb` command, run as a real subprocess the way a user runs it."""

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys

import pytest
import yaml

from fedless_nb.wording import counted


def fedless(*arguments, cwd):
    return subprocess.run([sys.executable, "-m", "fedless_nb", *arguments], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def as_a_terminal_starts_it():
    """A shell's foreground command gets Ctrl-C at its default disposition, unblocked. A child keeps an ignored or
    blocked SIGINT across exec, and the test runner's process may have inherited either (seen only in the whole suite)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _write_config(tmp_path, **overrides):
    config = {"name": "cli", "clients": 4, "clients_per_round": 2, "rounds": 2, "history": "runs.db",
              "model": {"builder": "mlp", "options": {"hidden_units": [16]}}, "store": {"path": "store"}}
    config.update(overrides)
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_run_prints_rounds_a_summary_and_records_history(tmp_path):
    completed = fedless("run", str(_write_config(tmp_path)), cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    out = completed.stdout
    assert "Round 1/2" in out and "Round 2/2" in out and "final accuracy" in out and "Rounds" in out
    listing = fedless("history", "--history", "runs.db", cwd=tmp_path)
    assert listing.returncode == 0 and "cli-" in listing.stdout and "finished" in listing.stdout
    run_id = next(word for word in out.split() if word.startswith("cli-")).rstrip(":)")
    assert f"its rounds: fedless-nb history {run_id} --history runs.db" in out, "where to look at the run next"
    shown = fedless("history", run_id, "--history", "runs.db", cwd=tmp_path)
    assert shown.returncode == 0 and "finished, 2/2 rounds" in shown.stdout and "accuracy" in shown.stdout

    assert "Privacy:" not in out, "a run without DP states no guarantee"


def test_a_dp_run_states_each_of_its_guarantees_at_the_end(tmp_path):
    """DP-SGD in the clients and central DP on their updates protect different neighbours (one example, one
    client's whole dataset): a run with both states both."""
    from fedless_nb.records.history import History

    train = {"epochs": 1, "batch_size": 16, "learning_rate": 0.1, "dp": {"noise_multiplier": 1.0}}
    central = {"noise_multiplier": 1.0, "clip_norm": 5.0, "delta": 1e-3}
    config = _write_config(tmp_path, rounds=1, clients_per_round=4, train=train, central_dp=central)  # every client: rate 1
    completed = fedless("run", str(config), cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    client_level, example_level = [line for line in completed.stdout.splitlines() if line.startswith("Privacy:")]
    (run,) = History(tmp_path / "runs.db").runs()
    (round_,) = History(tmp_path / "runs.db").rounds(run["run_id"])
    assert "client-level DP" in client_level and f"epsilon = {round_['privacy_central_epsilon']:.3f} at delta = 0.001" in client_level
    assert "each client joins each round" in client_level and client_level.endswith("1 round at sampling rate 1")
    assert "step" not in client_level, "central DP's mechanism runs once a round: it has no steps"
    assert "example-level DP" in example_level and f"epsilon = {round_['privacy_epsilon_max']:.3f} at delta = 1e-05" in example_level


def test_run_trains_on_a_new_partition_with_feature_skew(tmp_path):
    data = {"dataset": "digits", "partition": "pathological", "labels_per_client": 3, "max_rotation": 30}
    completed = fedless("run", str(_write_config(tmp_path, rounds=1, data=data)), cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert "Round 1/1" in completed.stdout and "final accuracy" in completed.stdout


def test_partition_previews_a_configs_split_and_writes_only_the_figure(tmp_path):
    data = {"dataset": "digits", "partition": "pathological", "labels_per_client": 3}
    completed = fedless("partition", str(_write_config(tmp_path, data=data)), "--figure", "split.png", cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in completed.stdout.splitlines() if line.startswith("│")]
    assert [(row[0], row[2]) for row in rows] == [("0", "3"), ("1", "3"), ("2", "3"), ("3", "3")]  # 3 classes each
    assert "label skew 0." in completed.stdout
    assert (tmp_path / "split.png").read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiment.yaml", "split.png"], "no history, no store"


@pytest.mark.parametrize("overrides, message", [
    ({"clients_per_round": 9}, "clients_per_round: must be between 1 and clients (4), got 9"),
    ({"data": {"alpha": 0}}, "data.alpha: must be > 0, got 0.0"),
    ({"trian": {}}, "trian: unknown key (did you mean 'train'?)"),
    ({"train": {"epochs": "many"}}, "train.epochs: must be int, got str 'many'"),
    ({"data": {"partition": "pathological", "labels_per_client": 0}}, "data.labels_per_client: must be >= 1, got 0"),
    ({"data": {"partition": "inner_dirichlet", "sizes": [1, 2]}},
     "data.sizes: must be 4 positive numbers (one per client) or null, got [1.0, 2.0]"),
    ({"data": {"alpha": 0.1}}, "data.alpha: partition iid does not read it, so it would change nothing: choose a "
                               "partition that does (dirichlet, inner_dirichlet), or leave it out"),
])
def test_a_bad_config_is_one_line_and_writes_nothing(tmp_path, overrides, message):
    completed = fedless("run", str(_write_config(tmp_path, **overrides)), cwd=tmp_path)
    assert completed.returncode == 2
    lines = [line for line in (completed.stdout + completed.stderr).splitlines() if line.strip()]
    assert lines == [f"error: {message}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiment.yaml"], "no history, no store"


def test_partition_refuses_an_option_its_partition_does_not_read(tmp_path):
    completed = fedless("partition", str(_write_config(tmp_path, data={"labels_per_client": 3})), cwd=tmp_path)
    assert completed.returncode == 2
    assert completed.stdout.strip() == ("error: data.labels_per_client: partition iid does not read it, so it would "
                                        "change nothing: choose a partition that does (pathological), or leave it out")


def test_a_config_written_out_whole_previews_and_runs_its_iid_split(tmp_path):
    """A config written whole (to_yaml, as a run's record holds it) names every data key at its default, alpha
    included: with an iid split that is no option given, so it previews and trains (refused as unread before)."""
    from fedless_nb.experiment import ExperimentConfig

    whole = ExperimentConfig.from_dict(yaml.safe_load(_write_config(tmp_path, rounds=1).read_text()))
    (tmp_path / "experiment.yaml").write_text(whole.to_yaml())
    assert "alpha:" in whole.to_yaml() and "labels_per_client:" in whole.to_yaml()
    previewed = fedless("partition", "experiment.yaml", cwd=tmp_path)
    assert previewed.returncode == 0, previewed.stdout + previewed.stderr
    completed = fedless("run", "experiment.yaml", cwd=tmp_path)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "Round 1/1" in completed.stdout


def test_a_privacy_budget_below_one_round_is_one_line_and_writes_nothing(tmp_path):
    train = {"epochs": 1, "batch_size": 16, "dp": {"noise_multiplier": 1.0, "target_epsilon": 0.01}}
    completed = fedless("run", str(_write_config(tmp_path, train=train)), cwd=tmp_path)
    assert completed.returncode == 2
    lines = [line for line in (completed.stdout + completed.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: train.dp.target_epsilon 0.01 is below the epsilon of one "
                                                   "round for every client"), lines
    assert "raise train.dp.target_epsilon or train.dp.noise_multiplier" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiment.yaml"], "no history, no store"


@pytest.mark.slow
def test_a_run_its_privacy_budget_stopped_says_why_and_what_to_do_where_it_ends(tmp_path):
    """It ended 'Run stopped: 1 rounds, final accuracy ...', the reason only in the history's error column. A target
    between one round's epsilon and two rounds' (every client trains each round): round 2 would pass it."""
    import dp_accounting as dpa

    def reference(n, rounds):
        event = dpa.PoissonSampledDpEvent(32 / n, dpa.GaussianDpEvent(1.0))
        return dpa.rdp.RdpAccountant().compose(dpa.SelfComposedDpEvent(event, -(-n // 32) * rounds)).get_epsilon(1e-4)

    sizes = (359, 360)  # the digits' training examples over 4 clients
    target = float((max(reference(n, 1) for n in sizes) + min(reference(n, 2) for n in sizes)) / 2)  # numpy's: no YAML
    train = {"epochs": 1, "batch_size": 32, "dp": {"noise_multiplier": 1.0, "delta": 1e-4, "target_epsilon": target,
                                                   "on_budget": "stop_run"}}
    completed = fedless("run", str(_write_config(tmp_path, rounds=5, clients_per_round=4, train=train)), cwd=tmp_path)
    assert completed.returncode == 1, completed.stdout + completed.stderr
    (ending,) = [line for line in completed.stdout.splitlines() if line.startswith("Run stopped")]
    assert ending.startswith("Run stopped: 1 round, final accuracy") and (
        f"; privacy budget spent: round 2 would take 4 clients past target_epsilon {target:g} (epsilon reached: "
        f"{max(reference(n, 1) for n in sizes):.3g}); the run is done within its budget; to train longer, raise "
        "train.dp.target_epsilon or the noise and start a new run") in ending, ending


def test_an_async_run_whose_every_client_failed_ends_in_one_line_naming_the_first_failure(tmp_path):
    """It ended with a RuntimeError's traceback ('every client failed on global version 0'); now as a synchronous run."""
    providers = [{"kind": "local", "workers": 2, "faults": {"crash": 1.0, "seed": 1}}]
    config = _write_config(tmp_path, rounds=5, retries=0, mode="async", providers=providers,
                           asynchronous={"concurrency": 2, "buffer_size": 2})
    completed = fedless("run", str(config), cwd=tmp_path)
    assert completed.returncode == 2, completed.stdout + completed.stderr
    (line,) = [line for line in completed.stdout.splitlines() if line.startswith("error:")]
    assert line.startswith("error: no client function returned a valid update in its first 3 rounds of 5, so it "
                           "stopped there (") and "in round 1 (crash): " in line, line
    assert "Traceback" not in completed.stdout + completed.stderr
    shown = fedless("history", "--history", "runs.db", cwd=tmp_path)
    assert "failed" in shown.stdout and "3/5" in shown.stdout, shown.stdout


def test_missing_config_file_and_unknown_run_are_clear(tmp_path):
    completed = fedless("run", "nope.yaml", cwd=tmp_path)
    assert completed.returncode == 2 and "config file nope.yaml does not exist" in completed.stdout
    from fedless_nb.records.history import History

    History(tmp_path / "fedless_history.db").close()
    for command in ("history", "resume"):  # the option a terminal takes, not the Python keyword beside it
        completed = fedless(command, "no-such-run", cwd=tmp_path)
        assert completed.returncode == 2 and completed.stdout == (
            "error: no run 'no-such-run' in fedless_history.db; a run recorded in another file needs --history PATH\n")


@pytest.mark.parametrize("make, message", [
    (lambda path: path.mkdir(), "config file experiment.yaml is a directory: name the YAML file in it"),
    (lambda path: path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe"), "config file experiment.yaml is not a text file: give a YAML config"),
])
def test_a_config_path_that_is_no_yaml_file_is_one_line(tmp_path, make, message):
    make(tmp_path / "experiment.yaml")
    completed = fedless("run", "experiment.yaml", cwd=tmp_path)
    assert completed.returncode == 2
    assert [line for line in (completed.stdout + completed.stderr).splitlines() if line.strip()] == [f"error: {message}"]


@pytest.mark.slow
def test_ctrl_c_stops_a_run_with_one_line_naming_the_resume_command_which_finishes_it(tmp_path):
    from fedless_nb.records.history import History

    process = subprocess.Popen([sys.executable, "-m", "fedless_nb", "run", str(_write_config(tmp_path, rounds=5))],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=as_a_terminal_starts_it)
    for line in process.stdout:
        if line.startswith("Round 1/5"):
            process.send_signal(signal.SIGINT)  # what Ctrl-C sends
            break
    out, err = process.communicate(timeout=300)
    (run,) = History(tmp_path / "runs.db").runs()
    assert process.returncode == 130 and run["status"] == "stopped" and 1 <= run["rounds_completed"] < 5
    assert "Traceback" not in out + err and err == ""
    assert (f"Run {run['run_id']} stopped after round {run['rounds_completed']}; the history keeps every finished "
            f"round. Continue it with: fedless-nb resume {run['run_id']} --history runs.db") in out.replace("\n", " ")

    resumed = fedless("resume", run["run_id"], "--history", "runs.db", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert [row["round"] for row in History(tmp_path / "runs.db").rounds(run["run_id"])] == list(range(1, 6))
    # a resume says so, and its totals are the whole run's: its table listed only the rounds after the resume
    done = run["rounds_completed"]
    lines = resumed.stdout.splitlines()
    assert lines[0] == (f"Run {run['run_id']} resumes from round {done + 1} of 5: 4 clients, "
                        f"{counted(done, 'round')} done before")
    table_rounds = [int(line.split()[1]) for line in lines if re.match(r"^│\s+\d+ │", line)]
    assert table_rounds == list(range(1, 6)) and "Run finished: 5 rounds, final accuracy" in resumed.stdout


@pytest.mark.slow
def test_ctrl_c_names_a_resume_with_trust_builder_for_a_builder_of_the_users_own_which_finishes_it(tmp_path):
    """A 'module:function' builder is code read back from the history, which `fedless-nb resume` runs only with
    --trust-builder: the line named `fedless-nb resume RUN_ID`, which was refused."""
    from fedless_nb.records.history import History

    (tmp_path / "own_model.py").write_text("from fedless_nb.zoo import mlp as build\n")
    config = _write_config(tmp_path, rounds=4, model={"builder": "own_model:build"})
    process = subprocess.Popen([sys.executable, "-m", "fedless_nb", "run", str(config)], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=as_a_terminal_starts_it)
    for line in process.stdout:
        if line.startswith("Round 1/4"):
            process.send_signal(signal.SIGINT)
            break
    out, err = process.communicate(timeout=300)
    (run,) = History(tmp_path / "runs.db").runs()
    assert process.returncode == 130 and err == "", out + err
    suggested = f"fedless-nb resume {run['run_id']} --trust-builder --history runs.db"
    assert out.replace("\n", " ").endswith(f"Continue it with: {suggested} "), out

    resumed = fedless(*shlex.split(suggested)[1:], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert [row["round"] for row in History(tmp_path / "runs.db").rounds(run["run_id"])] == [1, 2, 3, 4]


SLOW_BUILDER = """
import signal
import threading

from fedless_nb.zoo import mlp


def build(input_shape, num_classes):
    # a model that takes until Ctrl-C to build; the command's own handler (asyncio's: the run stops at its next
    # await) gets the signal, as during a long build
    interrupted, handler = threading.Event(), signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, lambda *signal_and_frame: (interrupted.set(), handler(*signal_and_frame)))
    print("building the model", flush=True)
    while not interrupted.wait(0.05):
        pass
    signal.signal(signal.SIGINT, handler)
    return mlp(input_shape, num_classes, hidden_units=[8])
"""


def _interrupted_at(marker, tmp_path, builder):
    """`fedless-nb run` sent Ctrl-C once its output shows `marker`: its output after the marker's line and the command
    it was told to run again."""
    (tmp_path / "slow_model.py").write_text(SLOW_BUILDER)
    config = _write_config(tmp_path, rounds=20, model={"builder": builder}, train={"epochs": 200})  # a long round 1
    process = subprocess.Popen([sys.executable, "-m", "fedless_nb", "run", str(config), "--history", "runs.db"],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=as_a_terminal_starts_it)
    for line in process.stdout:
        if marker in line:
            process.send_signal(signal.SIGINT)
            break
    out, err = process.communicate(timeout=300)
    assert process.returncode == 130 and "Traceback" not in out + err and err == "", out + err
    return out, f"run fedless-nb run {config} --history runs.db again"


@pytest.mark.slow
def test_ctrl_c_while_a_run_prepares_says_nothing_was_recorded_and_to_run_the_command_again(tmp_path):
    """asyncio.run's Ctrl-C cancels the run's task, which went on preparing until its first await, inside round 1:
    the run was recorded and stopped after round 0, with the line that said to continue it."""
    out, again = _interrupted_at("building the model", tmp_path, builder="slow_model:build")
    assert out.strip() == f"Run stopped while preparing its data and model, before its first round; nothing was recorded: {again}"
    assert not (tmp_path / "runs.db").exists() and not (tmp_path / "store").exists(), "the stop landed before any write"


@pytest.mark.slow
def test_ctrl_c_before_round_1_finished_says_there_is_nothing_to_continue(tmp_path):
    """It said 'Run X stopped after round 0; the history keeps every finished round. Continue it with: fedless-nb
    resume X': no round finished, so there was nothing to continue. The line is the notebook's (stopping.py), naming
    the command the user typed."""
    from fedless_nb.records.history import History

    out, again = _interrupted_at("4 clients, 20 rounds", tmp_path, builder="mlp")
    (run,) = History(tmp_path / "runs.db").runs()
    assert run["status"] == "stopped" and run["rounds_completed"] == 0
    assert out.splitlines() == ["Run stopped: 0 rounds, no round finished",  # after the start line, the marker
                                f"Run {run['run_id']} stopped after round 0; no round finished, so there is nothing to "
                                f"continue: {again}"], "piped: no bar left at the stop, no empty table"


@pytest.mark.slow
def test_ctrl_c_while_a_resume_prepares_keeps_the_runs_rounds_and_names_the_same_resume(tmp_path):
    """It said 'Run stopped while preparing its data and model, before its first round; nothing was recorded' of a
    run with a round in the history. The resume's command continues it (with its --trust-builder, which a bare
    `fedless-nb resume RUN_ID` would lack)."""
    from fedless_nb.records.history import History
    from planted_runs import plant_stopped_run

    (tmp_path / "slow_model.py").write_text(SLOW_BUILDER)
    plant_stopped_run(tmp_path / "runs.db", builder="slow_model:build")
    command = ["resume", "planted", "--history", "runs.db", "--trust-builder"]
    process = subprocess.Popen([sys.executable, "-m", "fedless_nb", *command], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, preexec_fn=as_a_terminal_starts_it)
    for line in process.stdout:
        if "building the model" in line:
            process.send_signal(signal.SIGINT)
            break
    out, err = process.communicate(timeout=300)
    assert process.returncode == 130 and err == "", out + err
    assert out.splitlines() == ["Run planted stopped after round 1; the history keeps every finished round. Continue it "
                                "with: fedless-nb resume planted --history runs.db --trust-builder"]
    assert History(tmp_path / "runs.db").run("planted")["rounds_completed"] == 1


@pytest.mark.slow
def test_demo_trains_and_reports_the_final_accuracy(tmp_path):
    """With fewer clients than the demo's 5 per round, a round takes them all (it once refused to start)."""
    completed = fedless("demo", "--clients", "3", "--rounds", "2", "--history", "demo.db", cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert "3/3 ok" in completed.stdout and "Run finished: 2 rounds, final accuracy 0." in completed.stdout


@pytest.mark.parametrize("overrides, message", [
    ({"data": {"dataset": "femnist"}}, "dataset 'femnist' needs option 'path'"),
    ({"data": {"dataset": "digits", "options": {"colour": 1}}}, "dataset 'digits' has no option 'colour'"),
    ({"model": {"builder": "no_such_module:build"}}, "model builder 'no_such_module:build' cannot be imported"),
    ({"clients": 2000, "clients_per_round": 2},
     "clients (2000) is more than the 1437 training examples: set clients to at most 1437"),
    ({"data": {"dataset": "breast_cancer", "max_rotation": 10}}, "'breast_cancer' is not images"),
    ({"data": {"partition": "pathological", "labels_per_client": 1}}, "4 clients x 1 labels_per_client leave some"),
])
def test_data_and_model_mistakes_are_one_line_and_write_nothing(tmp_path, overrides, message):
    completed = fedless("run", str(_write_config(tmp_path, **overrides)), cwd=tmp_path)
    assert completed.returncode == 2, completed.stderr
    lines = [line for line in (completed.stdout + completed.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiment.yaml"], "no history, no store"


def test_schema_prints_the_configs_json_schema_which_checks_a_config(tmp_path):
    import json

    import jsonschema

    completed = fedless("schema", cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    schema = json.loads(completed.stdout)
    assert schema["title"] == "fedless-nb experiment" and "train" in schema["properties"]
    jsonschema.validate(yaml.safe_load(_write_config(tmp_path).read_text()), schema)
    with pytest.raises(jsonschema.ValidationError, match="'trian' was unexpected"):
        jsonschema.validate({"trian": {}}, schema)
    with pytest.raises(jsonschema.ValidationError, match="'32' is not of type 'integer'"):
        jsonschema.validate({"train": {"batch_size": "32"}}, schema)


def test_resume_refuses_a_builder_read_back_from_the_history_unless_trusted(tmp_path):
    from fedless_nb.experiment import ExperimentConfig
    from fedless_nb.records.history import History, HistoryWriter
    from fedless_nb.rounds.events import RunFinished, RunStarted

    config = ExperimentConfig.from_dict({"model": {"builder": "os:system"}}).to_dict()
    writer = HistoryWriter(History(tmp_path / "runs.db"))
    writer(RunStarted("planted", "planted", config, 10, 20, [], 100.0))
    writer(RunFinished("planted", "stopped", 110.0, 1, {}))
    writer.history.close()
    completed = fedless("resume", "planted", "--history", "runs.db", cwd=tmp_path)
    assert completed.returncode == 2 and "'os:system'" in completed.stdout and "--trust-builder" in completed.stdout
    from fedless_nb.runner import resume_point

    assert resume_point("planted", tmp_path / "runs.db", trust_builder=True).config.model.builder == "os:system"




def test_resume_reads_the_run_from_its_history_once(tmp_path, monkeypatch, capsys):
    """The run's config and the rounds it finished (where a resume stopped while it prepares stands) come from one
    read of the history: they were two (resume_config, then stopping.rounds_recorded), which another process could
    change in between."""
    from fedless_nb.cli import main
    from fedless_nb.records.history import History
    from planted_runs import plant_stopped_run

    plant_stopped_run(tmp_path / "runs.db", builder="no_such_module:build")
    monkeypatch.chdir(tmp_path)
    reads = []
    existing = History.existing.__func__
    monkeypatch.setattr(History, "existing", classmethod(lambda cls, path: reads.append(path) or existing(cls, path)))
    assert main(["resume", "planted", "--history", "runs.db", "--trust-builder"]) == 2
    assert "model builder 'no_such_module:build' cannot be imported" in capsys.readouterr().out
    assert reads == ["runs.db"]


def test_history_and_resume_name_a_run_by_a_beginning_of_its_id_no_other_shares(tmp_path):
    from planted_runs import plant_stopped_run

    for run_id in ("planted-aa11", "planted-bb22"):
        plant_stopped_run(tmp_path / "runs.db", builder="no_such_module:build", run_id=run_id)
    shown = fedless("history", "planted-b", "--history", "runs.db", cwd=tmp_path)
    assert shown.returncode == 0 and "planted-bb22: stopped, 1/5 rounds" in shown.stdout
    for command in ("history", "resume"):
        refused = fedless(command, "planted", "--history", "runs.db", cwd=tmp_path)
        assert refused.returncode == 2 and refused.stdout == (
            "error: 'planted' begins the ids of 2 runs (planted-aa11, planted-bb22): give more of the id\n")
    resumed = fedless("resume", "planted-a", "--history", "runs.db", cwd=tmp_path)
    assert resumed.returncode == 2 and "'planted-aa11' builds its model with 'no_such_module:build'" in resumed.stdout

def test_reading_commands_refuse_a_missing_history_and_leave_no_file_behind(tmp_path):
    for command in (["history"], ["history", "some-run"], ["resume", "some-run"]):
        completed = fedless(*command, "--history", "runs.db", cwd=tmp_path)
        assert completed.returncode == 2, command
        assert "no history file runs.db yet: run an experiment first" in completed.stdout, command
        assert "Traceback" not in completed.stdout + completed.stderr
    assert list(tmp_path.iterdir()) == []

def test_client_secret_derives_a_clients_own_secret_from_the_provider_secret(tmp_path, monkeypatch):
    from fedless_nb.security import client_secret

    monkeypatch.setenv("FEDLESS_RUN_SECRET", "provider-secret")
    completed = fedless("client-secret", "client-0003", cwd=tmp_path)
    assert completed.returncode == 0 and completed.stdout.strip() == client_secret("provider-secret", "client-0003")
    monkeypatch.delenv("FEDLESS_RUN_SECRET")
    completed = fedless("client-secret", "client-0003", cwd=tmp_path)
    assert completed.returncode == 2 and "set FEDLESS_RUN_SECRET" in completed.stdout
    assert completed.stdout.rstrip().endswith("to derive a client's secret from it"), completed.stdout


def test_new_secret_prints_a_fresh_secret_for_a_deploy_commands_shell(capsys):
    """The printed deploy commands draw a function's state secret with `$(fedless-nb new-secret)`: one plain line, a
    different 256-bit secret each time, of the characters every platform's variable takes unquoted."""
    from fedless_nb.cli import main

    drawn = []
    for _ in range(2):
        assert main(["new-secret"]) == 0
        drawn.append(capsys.readouterr().out)
    assert drawn[0] != drawn[1] and all(re.fullmatch(r"[A-Za-z0-9_-]{43}\n", secret) for secret in drawn), drawn


@pytest.mark.parametrize("arguments, message", [
    (["rnu", "experiment.yaml"], "fedless-nb: error: argument command: invalid choice: 'rnu' (choose from 'run', "),
    (["rnu", "experiment.yaml"], "; did you mean 'run'? (see fedless-nb --help)"),
    ([], "fedless-nb: error: name a command: run, demo, partition, resume, history, client-secret, new-secret, schema, "
         "package, deploy, kernel (see fedless-nb --help)"),  # it said 'the following arguments are required: command'
    (["run"], "fedless-nb run: error: the following arguments are required: config (see fedless-nb run --help)"),
    (["deploy", "--provider", "aws"], "did you mean 'aws_lambda'? (see fedless-nb deploy --help)"),
    (["kernel"], "fedless-nb kernel: error: the following arguments are required: install"),
    (["demo", "--rounds", "x"], "fedless-nb demo: error: argument --rounds: invalid int value: 'x' (see fedless-nb demo"),
    (["demo", "--clients", "3", "--clients-per-round", "5"],  # it named the config's key, clients_per_round
     "error: --clients-per-round: must be between 1 and clients (3), got 5"),
    (["demo", "--rounds", "0"], "error: --rounds: must be >= 1, got 0"),
    (["history", "--history", "."], "error: . is a folder: name the history file in it with --history PATH, for example"),
    (["run", "experiment.yaml", "--histroy", "x.db"],
     "fedless-nb run: error: unrecognized arguments: --histroy x.db; did you mean --history? (see fedless-nb run --help)"),
    (["package", "--provider", "functions_framework", "--out", "bundle/x"],
     "error: --out bundle/x: cannot create it (Not a directory); name a folder you can write to"),
    (["partition", "experiment.yaml", "--figure", "figures/split.png"],
     "error: --figure figures/split.png: the folder figures does not exist; create it or name another file"),
])
def test_command_line_mistakes_are_one_line_naming_what_to_change(tmp_path, arguments, message):
    """argparse's usage block (a dozen lines for deploy) buried the error; a mistyped choice names the closest."""
    (tmp_path / "bundle").write_text("a file where a folder is asked for")
    completed = fedless(*arguments, cwd=tmp_path)
    lines = [line for line in (completed.stdout + completed.stderr).splitlines() if line.strip()]
    assert completed.returncode == 2 and len(lines) == 1 and message in lines[0], lines
    assert [path.name for path in tmp_path.iterdir()] == ["bundle"], "nothing written"


def test_version_names_the_installed_release(tmp_path):
    from fedless_nb import __version__

    completed = fedless("--version", cwd=tmp_path)
    assert completed.returncode == 0 and completed.stdout.strip() == f"fedless-nb {__version__}"


def test_a_store_folder_that_cannot_be_made_is_one_line_naming_store_path(tmp_path):
    """A run started where it cannot write its store (a read-only folder; here a file in the way, which stops
    root too) says so and which key to change, instead of a traceback from mkdir."""
    (tmp_path / "blocked").write_text("a file where the store's folder would go")
    completed = fedless("run", str(_write_config(tmp_path, store={"path": "blocked/store"})), cwd=tmp_path)
    lines = [line for line in (completed.stdout + completed.stderr).splitlines() if line.strip()]
    assert completed.returncode == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: store.path: cannot create ") and "set store.path to one" in lines[0], lines
    assert not (tmp_path / "runs.db").exists()


def _assert_interrupted_in_one_line(script, cwd):
    """`script` (which sends itself Ctrl-C) run as a terminal starts it ends with exit 130 and "Interrupted" alone."""
    completed = subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True,
                               preexec_fn=as_a_terminal_starts_it, timeout=300)
    assert completed.returncode == 130 and completed.stdout.strip() == "Interrupted", completed.stderr
    assert "Traceback" not in completed.stderr


def test_ctrl_c_while_a_command_loads_its_data_is_one_line(tmp_path):
    """Ctrl-C half a second into `fedless-nb partition` (reading the dataset, before any run catches it)."""
    config = _write_config(tmp_path)
    interrupt_soon = ("import os, signal, sys, threading\nfrom fedless_nb.cli import main\n"
                      "threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()\n"
                      f"sys.exit(main(['partition', {str(config)!r}]))")
    _assert_interrupted_in_one_line(interrupt_soon, tmp_path)


def test_ctrl_c_while_the_command_starts_is_one_line(tmp_path):
    """Ctrl-C a moment after `fedless-nb` starts, while it imports its libraries (seconds on a loaded machine)."""
    interrupt_now = ("import os, signal, threading\nthreading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()\n"
                     "import fedless_nb.cli")
    _assert_interrupted_in_one_line(interrupt_now, tmp_path)


def test_the_run_listing_never_cuts_a_run_id_a_reader_copies(tmp_path):
    """Piped (80 columns) the listing cut a long run id to `...-b4b…`, which `history RUN_ID` then did not know."""
    from fedless_nb.records.history import History, HistoryWriter
    from fedless_nb.rounds.events import RunStarted

    run_id = "non-iid-digits-with-a-long-name-20261127-002010-b4be1c"
    history = History(tmp_path / "runs.db")
    HistoryWriter(history)(RunStarted(run_id, "non-iid-digits-with-a-long-name", {}, 10, 20, [], 100.0))
    history.close()
    listing = fedless("history", "--history", "runs.db", cwd=tmp_path)
    assert listing.returncode == 0 and run_id in listing.stdout and "…" not in listing.stdout, listing.stdout
    assert fedless("history", run_id, "--history", "runs.db", cwd=tmp_path).returncode == 0


def test_no_color_means_no_escape_codes_even_on_a_terminal(tmp_path, monkeypatch):
    """NO_COLOR dropped rich's colours but left its bold and italic escapes in the tables (FORCE_COLOR stands in
    for a terminal here)."""
    from fedless_nb.records.history import History

    History(tmp_path / "runs.db").close()
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert "\x1b[" in fedless("history", "--history", "runs.db", cwd=tmp_path).stdout, "a terminal gets styles"
    monkeypatch.setenv("NO_COLOR", "1")
    plain = fedless("history", "--history", "runs.db", cwd=tmp_path)
    assert plain.returncode == 0 and "Runs in runs.db" in plain.stdout and "\x1b" not in plain.stdout, plain.stdout


@contextlib.contextmanager
def _unwritable(path):
    """`path` made unwritable for this process: immutable (chattr +i) for root, whom file modes do not stop."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(path)], check=True)
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(0o644)


def test_a_run_into_a_read_only_history_finishes_and_says_where_its_record_waits(tmp_path):
    from fedless_nb.records.history import History

    History(tmp_path / "runs.db").close()  # a history another user made, which this one may read but not write
    config = _write_config(tmp_path, rounds=1)
    with _unwritable(tmp_path / "runs.db"):
        completed = fedless("run", str(config), cwd=tmp_path)
        assert completed.returncode == 0, completed.stderr
        run_id = next(word for word in completed.stdout.split() if word.startswith("cli-")).rstrip(":)")
        waiting = f"runs.db.{run_id}.pending.jsonl"
        assert f"runs.db could not be written; run {run_id}'s record waits in {waiting}" in completed.stdout
        assert (tmp_path / waiting).is_file()
        assert "cannot write history runs.db (attempt to write a readonly database)" in completed.stderr
        listing = fedless("history", "--history", "runs.db", cwd=tmp_path)
        assert listing.returncode == 0 and run_id not in listing.stdout, "a read-only history lists what it holds"
    listing = fedless("history", "--history", "runs.db", cwd=tmp_path)
    assert listing.returncode == 0 and run_id in listing.stdout and "finished" in listing.stdout
    assert not (tmp_path / waiting).exists(), "the record moved into the history once it could be written"


@pytest.mark.parametrize("command, summary", [
    (["run"], "run the experiment described by a YAML config file"), (["demo"], "federated training on the bundled"),
    (["partition"], "show how a config's partition splits"), (["resume"], "continue a run whose process died"),
    (["history"], "list past runs, or one run's rounds"), (["client-secret"], "the secret to deploy one client's"),
    (["new-secret"], "a fresh random secret: a provider's FEDLESS_RUN_SECRET, or the FEDLESS_STATE_SECRET"),
    (["schema"], "print the config's JSON Schema"), (["package"], "build a deployable function bundle"),
    (["deploy"], "deploy the function: AWS Lambda directly"), (["kernel"], "the Jupyter kernel spec"),
    (["kernel", "install"], "install it with jupyter_client's KernelSpecManager"),
])
def test_each_commands_help_says_what_it_does(command, summary, capsys):
    """`fedless-nb schema --help` showed only its usage line: what a command does was in the top --help alone."""
    from fedless_nb.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and out.split("\n\n")[1].replace("\n", " ").startswith(summary), out


def test_a_narrow_terminal_gets_the_rounds_whole(tmp_path):
    """At COLUMNS=40 the rounds table cut its figures to '0.…' and '58.…'; a long line wraps in the terminal instead."""
    from fedless_nb.records.history import History, HistoryWriter
    from fedless_nb.rounds.events import RoundFinished, RunStarted

    writer = HistoryWriter(History(tmp_path / "runs.db"))
    writer(RunStarted("cli-20261127-073435-98f98c", "cli", {}, 1, 4, [], 100.0))
    writer(RoundFinished("cli-20261127-073435-98f98c", 1, 100.0, 158.97, 2, 2, 0,
                         {"loss": 1.543, "accuracy": 0.6139}, {}))
    writer.history.close()
    shown = subprocess.run([sys.executable, "-m", "fedless_nb", "history", "cli-20261127-073435-98f98c", "--history",
                            "runs.db"], cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "COLUMNS": "40"})
    assert shown.returncode == 0 and "…" not in shown.stdout, shown.stdout
    assert [cell.strip() for cell in shown.stdout.splitlines()[-2].split("│")[1:-1]] == \
        ["1", "2", "0", "58.97", "0.6139", "1.5430"]
