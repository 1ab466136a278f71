"""The magics through a real IPython InteractiveShell: parsing, return values, errors, %config."""

import base64
import re
import socket
import subprocess
import sys

import psutil
import pytest
from IPython import get_ipython
from IPython.core.error import UsageError
from IPython.core.magic_arguments import parse_argstring
from IPython.testing.globalipapp import start_ipython
from IPython.utils.capture import capture_output

from fedless_nb.records.history import History
from fedless_nb.records.owner import this_process
from fedless_nb.notebook.magics import FedlessMagics
from fedless_nb.runner import RunResult
from fedless_nb.stopping import stopped_line

TINY = "--clients 4 --clients-per-round 2 --rounds 2 --workers 1 --set model.options.hidden_units=[8]"


@pytest.fixture
def shell(tmp_path, monkeypatch):
    """The test session's InteractiveShell with the extension loaded, working in the test's directory."""
    monkeypatch.chdir(tmp_path)
    ip = start_ipython() or get_ipython()  # one shell per test session; later calls return None
    ip.run_line_magic("load_ext", "fedless_nb")
    # a terminal shell formats text only; a kernel formats every type (the SVG of %fedless_compare)
    monkeypatch.setattr(ip.display_formatter, "active_types", ip.display_formatter.format_types)
    magics = magics_of(ip)
    magics.history, magics.store, magics.dashboard = "fedless_history.db", ".fedless/store", "auto"
    yield ip
    ip.user_ns.pop("model", None)


def magics_of(ip):
    return next(c for c in ip.configurables if type(c).__name__ == FedlessMagics.__name__)


def config_for(ip, line, cell=None):
    magics = magics_of(ip)
    return magics.experiment_config(parse_argstring(magics.fedless_train, line), cell)


def test_importing_and_loading_the_extension_stays_light():
    code = ("import sys; from IPython.core.interactiveshell import InteractiveShell; "
            "ip = InteractiveShell.instance(); ip.run_line_magic('load_ext', 'fedless_nb'); "
            "assert ip.find_line_magic('fedless_train') and ip.find_cell_magic('fedless_train'); "
            "assert ip.find_line_magic('fedless_stop') and ip.find_line_magic('fedless_compare'); "
            "print(sorted(m for m in ('tensorflow', 'keras', 'ipywidgets') if m in sys.modules))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def test_reloading_keeps_one_configurable_and_its_settings(shell):
    shell.run_line_magic("config", 'FedlessMagics.history = "kept.db"')
    shell.run_line_magic("reload_ext", "fedless_nb")
    magics = [c for c in shell.configurables if type(c).__name__ == "FedlessMagics"]
    assert len(magics) == 1 and magics[0].history == "kept.db"


def test_options_map_onto_the_config_schema(shell):
    config = config_for(shell, "--name trial --seed 4 --clients 8 --clients-per-round 3 --rounds 2 --dataset digits "
                               "--partition dirichlet --alpha 0.3 --epochs 2 --batch-size 8 --optimizer adam "
                               "--lr 0.01 --strategy fedavg --workers 3 --round-deadline 30 "
                               "--set train.epochs=3 --set model.options.hidden_units=[4,4]")
    assert (config.name, config.seed, config.clients, config.clients_per_round, config.rounds) == ("trial", 4, 8, 3, 2)
    assert (config.data.partition, config.data.alpha, config.round_deadline) == ("dirichlet", 0.3, 30.0)
    assert (config.train.epochs, config.train.batch_size, config.train.optimizer, config.train.learning_rate) == \
        (3, 8, "adam", 0.01)
    assert config.model.options == {"hidden_units": [4, 4]}
    assert [(p.kind, p.workers) for p in config.providers] == [("local", 3)]
    assert config.history == "fedless_history.db" and config.store.path == ".fedless/store"


def test_a_config_file_and_a_cell_are_the_yaml_schema_and_options_override_them(shell, tmp_path):
    (tmp_path / "experiment.yaml").write_text("rounds: 7\nclients: 12\ntrain: {epochs: 4, batch_size: 16}\n")
    config = config_for(shell, "--config experiment.yaml --rounds 3")
    assert (config.rounds, config.clients, config.train.epochs, config.train.batch_size) == (3, 12, 4, 16)
    config = config_for(shell, "--epochs 2", "data:\n  partition: shards\n  shards_per_client: 3\nrounds: 4\n")
    assert (config.data.partition, config.data.shards_per_client, config.rounds, config.train.epochs) == \
        ("shards", 3, 4, 2)


def test_config_sets_the_history_every_magic_uses(shell, caplog):
    shell.run_line_magic("config", 'FedlessMagics.history = "runs.db"')
    shell.run_line_magic("config", 'FedlessMagics.store = "weights"')
    assert magics_of(shell).history == "runs.db"
    config = config_for(shell, "")
    assert (config.history, config.store.path) == ("runs.db", "weights")
    with pytest.raises(UsageError, match="no history file runs.db"):
        shell.run_line_magic("fedless_history", "")
    shell.run_line_magic("config", 'FedlessMagics.dashboard = "text"')
    assert magics_of(shell).dashboard == "text"
    shell.run_line_magic("config", 'FedlessMagics.dashboard = "fancy"')
    assert magics_of(shell).dashboard == "text" and "expected any of ['auto', 'widgets', 'text', 'compact', 'none']" in caplog.text


def test_secagg_turns_on_secure_aggregation_and_the_cell_sets_its_options(shell):
    config = config_for(shell, "--secagg --clients 6 --clients-per-round 4", "secure_aggregation: {clip_norm: 2.0}\n")
    assert config.secure_aggregation.clip_norm == 2.0 and config.max_norm_ratio == 0
    assert config_for(shell, "--clients 6").secure_aggregation is None


class TorchLikeModule:
    """What a PyTorch user passes: a callable module (torch.nn.Module's shape, without installing torch)."""

    def __call__(self, *inputs, **options):
        return self.forward(*inputs)

    def forward(self, x):
        return x

    def parameters(self):
        return iter(())


@pytest.mark.parametrize("line, cell, message", [
    ("nothere", None, "no variable named 'nothere'"),
    ("number", None, "number holds a value of type int, not a Keras model"),
    ("--rounds many", None, "argument --rounds: invalid int value: 'many'"),
    ("--rounds 0", None, "--rounds: must be >= 1, got 0"),
    ("--lr -1", None, "--lr: must be > 0"),
    ("--partition fancy", None, "--partition: unknown value 'fancy'"),
    ("--set train.epoch=2", None, "train.epoch: unknown key (did you mean 'epochs'?)"),
    ("--set train.epochs", None, "--set train.epochs: write KEY=VALUE"),
    ("--config missing.yaml", None, "config file missing.yaml does not exist"),
    ("", "rounds: [1\n", "the cell is not valid YAML at line 2"),
    ("", "- rounds\n", "config: must be a mapping"),
    ("--bogus", None, "unrecognized arguments: --bogus"),
    ("--secagg --strategy krum", None, "--strategy: krum needs each client's update, which secure aggregation hides"),
    ("--learnin-rate 0.1", None, "unrecognized arguments: --learnin-rate (did you mean --learning-rate?)"),
    ("torchlike --clients 4", None, "a TorchLikeModule looks like a PyTorch module (it has forward() and parameters()): "
                                    "fedless_nb trains Keras models"),
    ("--lr inf", None, "--lr: must be > 0 and finite, got inf"),
    ("--seed -1", None, "--seed: must be between 0 and 2**32 - 1, got -1"),
    ("--workers 0", None, "--workers: must be >= 1, got 0"),
    ("--name 'my run'", None, "--name: must be 1-64 ASCII letters, digits and '._-', the first a letter or digit (it "
                              "names the run's store keys), got 'my run' (did you mean 'my-run'?)"),
    ("--name " + "x" * 300, None, "got 300 characters"),
    ("--name 'baseline", None, "No closing quotation: close the quote in --name 'baseline"),
    ("--partition inner_dirichlet --sizes 1,x", None,
     "argument --sizes: write numbers separated by commas, such as 100,200,300; got '1,x'"),
    ("--set .rounds=2", None, ".rounds: write a dotted key without empty parts, for example train.epochs"),
])
def test_bad_input_is_a_one_line_usage_error(shell, capsys, line, cell, message):
    shell.user_ns["number"] = 3
    shell.user_ns["torchlike"] = TorchLikeModule()
    result = shell.run_cell(f"%%fedless_train {line}\n{cell}" if cell else f"%fedless_train {line}")
    assert isinstance(result.error_in_exec, UsageError)
    assert message in str(result.error_in_exec)
    err = capsys.readouterr().err
    assert err.startswith("UsageError:") and "Traceback" not in err and err.count("\n") == 1


def test_an_async_run_whose_every_client_failed_is_a_one_line_usage_error_naming_the_first_failure(shell, capsys):
    """FedBuff's end was a RuntimeError with its traceback; it is the NothingTrainedError a synchronous run ends with."""
    cell = ("mode: async\nasynchronous: {concurrency: 2, buffer_size: 2}\nretries: 0\n"
            "providers: [{kind: local, workers: 1, faults: {crash: 1.0, seed: 1}}]\n")
    line = "--clients 4 --clients-per-round 2 --rounds 4 --set model.options.hidden_units=[8] --dashboard none"
    result = shell.run_cell(f"%%fedless_train {line}\n{cell}")  # no --workers: it replaces the cell's providers
    assert isinstance(result.error_in_exec, UsageError)
    assert str(result.error_in_exec).startswith("no client function returned a valid update in its first 3 rounds of 4")
    assert "in round 1 (crash): " in str(result.error_in_exec)
    err = capsys.readouterr().err
    assert err.startswith("UsageError:") and "Traceback" not in err and err.count("\n") == 1
    (run,) = History("fedless_history.db").runs()
    assert run["status"] == "failed" and run["rounds_completed"] == 3


def test_quoted_option_values_lose_their_quotes_as_in_a_shell(shell, tmp_path):
    (tmp_path / "my experiment.yaml").write_text("rounds: 3\n")
    magics = magics_of(shell)
    from fedless_nb.notebook.magics import parse_options

    args = parse_options(magics.fedless_train, "--name \"baseline\" --config 'my experiment.yaml' --set 'train.epochs=2'")
    assert (args.name, args.config, args.settings) == ("baseline", "my experiment.yaml", ["train.epochs=2"])
    config = magics.experiment_config(args, None)
    assert (config.name, config.rounds, config.train.epochs) == ("baseline", 3, 2)


MAGICS_WITH_OPTIONS = ["fedless_train", "fedless_resume", "fedless_partition", "fedless_stop", "fedless_pool", "fedless_history",
                       "fedless_compare", "fedless_deploy", "fedless_classroom", "fedless_join"]


@pytest.mark.parametrize("magic", MAGICS_WITH_OPTIONS)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_shows_the_magics_help_page_and_runs_nothing(shell, capsys, tmp_path, magic, flag):
    result = shell.run_cell(f"%{magic} {flag}")
    assert result.success, result.error_in_exec
    out = capsys.readouterr().out
    assert out.strip().startswith(getattr(magics_of(shell), magic).__doc__.strip()[:60]) and f"%{magic}" in out
    assert list(tmp_path.iterdir()) == [], "nothing trained, written or deployed"


def test_sweep_help_explains_the_grid_and_lists_the_train_options(shell, capsys):
    assert shell.run_cell("%%fedless_sweep --help\nstrategy.name: [fedavg, fedprox]\n").success
    out = capsys.readouterr().out
    assert "Run once per point of a grid" in out and "--clients-per-round" in out


def test_a_model_variable_trains_and_the_run_object_has_history_weights_and_model(shell):
    shell.run_cell(
        "from tensorflow import keras\n"
        "model = keras.Sequential([keras.layers.Flatten(input_shape=(64,)), keras.layers.Dense(10, activation='softmax')])\n"
    )
    with capture_output() as captured:
        result = shell.run_cell(f"run = %fedless_train model --name magic {TINY}")
    assert result.success, result.error_in_exec
    run = shell.user_ns["run"]
    assert isinstance(run, RunResult) and run.status == "finished"
    assert "Round 2/2" in captured.stdout and f"Run {run.run_id} finished" in captured.stdout
    frame = run.rounds_frame()
    assert list(frame["round"]) == [1, 2] and frame["eval_accuracy"].between(0, 1).all()
    assert [w.shape for w in run.weights] == [(64, 10), (10,)]
    assert [w.shape for w in run.model().get_weights()] == [(64, 10), (10,)]
    assert repr(run).startswith(f"RunResult(run_id='{run.run_id}', status='finished', rounds=2/2, accuracy=")
    recorded = History("fedless_history.db").run(run.run_id)
    assert recorded["config"]["clients"] == 4 and recorded["name"] == "magic"


def test_resume_continues_a_stopped_run_of_a_model_variable_and_refuses_in_one_line_what_it_cannot(shell, capsys):
    shell.run_cell(
        "from tensorflow import keras\n"
        "model = keras.Sequential([keras.layers.Flatten(input_shape=(64,)), keras.layers.Dense(10, activation='softmax')])\n"
        f"run = %fedless_train model --name cut {TINY} --rounds 3 --dashboard none --background\n"
        "%fedless_stop\n"
        "stopped = run.future.result(timeout=600)\n"
    )
    stopped = shell.user_ns["stopped"]
    assert stopped.status == "stopped" and len(stopped.round_metrics) == 1
    assert (f"Run {stopped.run_id} stops after its current round; continue it later with: "
            f"%fedless_resume {stopped.run_id} model\n") in capsys.readouterr().out
    history = History("fedless_history.db")

    def refused(line):
        capsys.readouterr()
        result = shell.run_cell(f"%fedless_resume {line}")
        err = capsys.readouterr().err
        assert isinstance(result.error_in_exec, UsageError) and err.count("\n") == 1 and "Traceback" not in err
        return str(result.error_in_exec)

    assert refused("nosuch") == ("no run 'nosuch' in fedless_history.db; a run recorded in another file needs "
                                 "--history PATH")
    mistyped = stopped.run_id.replace("cut", "cat")
    assert refused(mistyped) == f"no run {mistyped!r} in fedless_history.db; did you mean {stopped.run_id!r}?"
    assert refused(f"{stopped.run_id} --history other.db").startswith("no history file other.db yet")
    assert refused(stopped.run_id[:-2]) == refused(stopped.run_id) == (  # a beginning of the id names it too; the
        # history keeps the config, whose default builder is not the model
        f"run {stopped.run_id!r} was trained with another model than the one built to resume it (its checkpointed "
        f"weights have other shapes): give the model it was trained with, %fedless_resume {stopped.run_id} MODEL "
        "in a notebook (model=... in Python)")
    history.db["runs"].update(stopped.run_id, {"status": "running", "owner": this_process()})
    assert refused(f"{stopped.run_id} model").startswith(f"run {stopped.run_id!r} is still training (process ")
    history.db["runs"].update(stopped.run_id, {"status": "stopped"})

    capsys.readouterr()
    resumed = shell.run_line_magic("fedless_resume", f"{stopped.run_id} model --dashboard text")
    assert isinstance(resumed, RunResult) and resumed.run_id == stopped.run_id and resumed.status == "finished"
    assert [r["round"] for r in history.rounds(stopped.run_id)] == [1, 2, 3]
    # it says it resumes, and its totals are the whole run's: they counted only the invocations after the resume
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"Run {stopped.run_id} resumes from round 2 of 3: 4 clients, 1 round done before"
    invocations = history.invocations(stopped.run_id)
    (summary,) = [line for line in lines if line.startswith(f"Run {stopped.run_id} finished:")]
    assert summary.startswith(f"Run {stopped.run_id} finished: 3/3 rounds (resumed after round 1), "
                              f"{len(invocations)} invocations, ") and len(invocations) == 6
    assert f"{sum(bool(i['cold']) for i in invocations)} cold start" in summary
    assert history.run(stopped.run_id)["rounds_completed"] == 3 and len(history.runs()) == 1
    assert refused(f"{stopped.run_id} model") == (f"run {stopped.run_id!r} already finished its 3 rounds; there is "
                                                  "nothing to resume")



def test_resume_reads_the_run_from_its_history_once(shell, tmp_path, monkeypatch):
    """As fedless-nb resume: the run's config and its rounds finished come from one read of the history (they were
    two, which another process could change in between)."""
    from planted_runs import plant_stopped_run

    plant_stopped_run(tmp_path / "runs.db", builder="no_such_module:build")
    reads = []
    existing = History.existing.__func__
    monkeypatch.setattr(History, "existing", classmethod(lambda cls, path: reads.append(path) or existing(cls, path)))
    result = shell.run_cell("%fedless_resume planted --history runs.db --trust-builder --dashboard none")
    assert "model builder 'no_such_module:build' cannot be imported" in str(result.error_in_exec)
    assert reads == ["runs.db"]

@pytest.mark.parametrize("reads_comms, labels", [(True, ["Run finished"]),
                                                  (False, ["Stop: interrupt the kernel", "Run finished"])])
def test_awaiting_a_background_run_disables_its_stop_button_where_the_kernel_reads_no_click_then(
        shell, monkeypatch, reads_comms, labels):
    """Before ipykernel 7.4 a click made while a cell awaits the run is read only once the run has ended: the button
    says to interrupt the kernel instead of doing nothing; ipykernel 7.4 reads it, and the button stays."""
    from fedless_nb.notebook import execution

    monkeypatch.setattr(execution, "kernel_reads_comms_while_a_cell_awaits", lambda: reads_comms)
    shell.run_cell(f"run = %fedless_train {TINY} --rounds 5 --dashboard widgets --background\n"
                   "labels = []\n"
                   "run.dashboard.stop_button.observe(lambda change: labels.append(change['new']), names='description')")
    assert shell.user_ns["run"].dashboard.stop_button.description == "Stop after this round"
    result = shell.run_cell("result = await run")
    assert result.error_in_exec is None and shell.user_ns["result"].status == "finished"
    assert shell.user_ns["labels"] == labels


def test_the_pool_keeps_the_two_latest_settings_warm_and_stops_the_idle_workers_of_older_ones(shell):
    shell.run_line_magic("fedless_pool", "--end")
    pids = {}
    for workers in (1, 2, 1, 3):  # a student trying one option after another, and back
        shell.run_line_magic("fedless_train", f"{TINY} --rounds 1 --workers {workers} --dashboard none")
        pool = shell.run_line_magic("fedless_pool", "")
        pids[workers] = pids.get(workers, set()) | set(pool.set_index("workers").loc[workers, "worker_pids"])
    assert list(pool["workers"]) == [1, 3], "the two settings used last stay warm, the least recently used went"
    gone, alive = psutil.wait_procs([psutil.Process(pid) for pid in pids[2] if psutil.pid_exists(pid)], timeout=60)
    assert pids[2] and not alive, "the workers of the setting that dropped out are stopped, not left idle"
    assert all(psutil.pid_exists(pid) for pid in pids[3])
    assert shell.run_line_magic("fedless_pool", "--end") is None


def test_the_pool_says_when_no_worker_is_warm_and_counts_the_workers_it_stops(shell, capsys):
    """An empty pool printed pandas' 'Empty DataFrame / Columns: [...] / Index: []', and stopping one worker said
    'Stopped 1 warm workers'."""
    shell.run_line_magic("fedless_pool", "--end")
    capsys.readouterr()
    assert shell.run_line_magic("fedless_pool", "").empty
    assert capsys.readouterr().out == ("No warm workers in this kernel: a run on local workers leaves them warm here "
                                       "for the next run\n")
    shell.run_line_magic("fedless_train", f"{TINY} --rounds 1 --workers 1 --dashboard none")
    capsys.readouterr()
    shell.run_line_magic("fedless_pool", "--end")
    assert capsys.readouterr().out == "Stopped 1 warm worker\n"


def test_a_builder_that_returns_no_model_is_a_usage_error(shell):
    shell.run_cell("def builder(input_shape, num_classes):\n    return 'not a model'\n")
    with pytest.raises(UsageError, match="expected a Keras model or a function returning one, got str"):
        shell.run_line_magic("fedless_train", f"builder {TINY} --dashboard none")


def test_cell_form_history_and_compare(shell):
    cell = "clients: 4\nclients_per_round: 2\nrounds: 2\nproviders: [{kind: local, workers: 1}]\n" \
           "model: {builder: logistic_regression}\n"
    first = shell.run_cell_magic("fedless_train", "--name iid --dashboard none", cell)
    second = shell.run_cell_magic("fedless_train", "--name skewed --partition dirichlet --alpha 0.1 --dashboard none", cell)
    assert first.status == second.status == "finished" and first.run_id != second.run_id

    runs = shell.run_line_magic("fedless_history", "")
    assert list(runs["run_id"]) == [second.run_id, first.run_id]
    assert list(runs.columns) == ["run_id", "name", "status", "started", "rounds_completed", "rounds", "clients",
                                  "eval_accuracy", "eval_loss"]
    rounds = shell.run_line_magic("fedless_history", first.run_id)
    assert {"round", "succeeded", "failed", "duration", "eval_accuracy", "train_loss"} <= set(rounds.columns)
    assert list(rounds["round"]) == [1, 2] and rounds["eval_accuracy"].iloc[-1] == pytest.approx(first.final_accuracy, abs=5e-4)
    with pytest.raises(UsageError, match="no run 'nope'"):
        shell.run_line_magic("fedless_history", "nope")

    with capture_output() as captured:
        frame = shell.run_line_magic("fedless_compare", f"{first.run_id} {second.run_id}")
    assert list(frame.columns) == ["iid", "skewed"] and list(frame.index) == [1, 2]
    assert frame["skewed"].iloc[-1] == pytest.approx(second.final_accuracy, abs=5e-4)  # shown to 3 decimals
    assert base64.b64decode(captured.outputs[0].data["image/png"]).startswith(b"\x89PNG")
    with pytest.raises(UsageError, match="has no 'f1' recorded"):
        shell.run_line_magic("fedless_compare", f"{first.run_id} --metric f1")


def test_history_of_a_file_without_runs_says_so_and_keeps_the_columns(shell, capsys, tmp_path):
    History(tmp_path / "empty.db").close()
    runs = shell.run_line_magic("fedless_history", "--history empty.db")
    assert capsys.readouterr().out == "No run in empty.db yet: train one with %fedless_train\n"
    assert runs.empty and list(runs.columns)[:3] == ["run_id", "name", "status"]


def test_the_stop_line_names_the_run_and_what_to_do_next():
    """Before, a run stopped before its first round or under async rounds was 'Run stopped after round N', no run id.
    The terminal words it alike (test_cli), naming its own command to run again."""
    again = "%fedless_train"
    assert stopped_line("r1", 2, "%fedless_resume r1", again) == (
        "Run r1 stopped after round 2; the history keeps every finished round. Continue it with: %fedless_resume r1")
    assert stopped_line("r1", 2, None, again) == "Run r1 stopped after round 2; the history keeps every finished round"
    assert stopped_line("r1", 0, "%fedless_resume r1", again) == (
        "Run r1 stopped after round 0; no round finished, so there is nothing to continue: run %fedless_train again")
    assert stopped_line(None, 0, None, again) == ("Run stopped while preparing its data and model, before its first "
                                                  "round; nothing was recorded: run %fedless_train again")


def test_stop_without_a_background_run_is_a_usage_error(shell):
    with pytest.raises(UsageError, match="no run is going on in the background"):
        shell.run_line_magic("fedless_stop", "")



def test_stop_names_a_background_run_by_a_beginning_of_its_id_no_other_shares(shell, capsys):
    """%fedless_stop took whole ids only, while a run id is long: a beginning of one that no other background run's id
    shares names it; one that several share, or none, is one line and stops nothing."""
    shell.run_cell(f"first = %fedless_train --name cut-a {TINY} --rounds 40 --dashboard none --background\n"
                   f"second = %fedless_train --name cut-b {TINY} --rounds 40 --dashboard none --background\n")
    first, second = shell.user_ns["first"], shell.user_ns["second"]
    try:
        for line, message in [("cut", f"'cut' begins the ids of 2 runs ({first.run_id}, {second.run_id}): give more "
                                      "of the id"),
                              ("cut-c", f"no background run 'cut-c'; running: {first.run_id}, {second.run_id}")]:
            result = shell.run_cell(f"%fedless_stop {line}")
            assert isinstance(result.error_in_exec, UsageError) and str(result.error_in_exec) == message
        assert first.status == second.status == "running"
        capsys.readouterr()
        shell.run_line_magic("fedless_stop", "cut-a")
        assert capsys.readouterr().out.startswith(f"Run {first.run_id} stops after its current round")
        assert first.future.result(timeout=600).status == "stopped" and second.status == "running"
    finally:
        shell.run_line_magic("fedless_stop", "")
        second.future.result(timeout=600)

def test_a_run_started_while_background_runs_train_names_them_and_how_to_stop_them(shell, capsys):
    """Running a `--background` cell again started a second run while the first trained on, unseen: the rerun cleared
    the cell that showed its dashboard, and nothing said it was still going on (sharing the kernel's workers with the
    new run, its record shown nowhere). A run started while others train names them and the line that ends them."""
    shell.run_cell(f"run = %fedless_train --name again-a {TINY} --rounds 40 --dashboard none --background")
    first = shell.user_ns["run"]
    try:
        capsys.readouterr()
        shell.run_cell(f"run = %fedless_train --name again-b {TINY} --rounds 40 --dashboard none --background")
        second = shell.user_ns["run"]
        assert capsys.readouterr().out.splitlines()[0] == (
            f"Run {first.run_id} is still training in the background; %fedless_stop {first.run_id} ends it")
        result = shell.run_cell(f"%fedless_train {TINY} --rounds 1 --dashboard none")
        assert result.error_in_exec is None
        assert capsys.readouterr().out.splitlines()[0] == (
            f"Runs {first.run_id}, {second.run_id} are still training in the background; %fedless_stop ends them all")
        assert first.status == second.status == "running"
    finally:
        shell.run_line_magic("fedless_stop", "")
        for run in (first, shell.user_ns["run"]):
            run.future.result(timeout=600)


def test_a_background_run_that_ended_before_its_cell_listed_it_is_not_going_on(shell, monkeypatch):
    """A short run can end before the cell that started it has listed it. It used to remove itself from the list
    when it ended, on the run's thread, so it failed to (not listed yet), stayed listed, and %fedless_stop claimed
    to stop a finished run. Here the run has ended by the time the constructor returns. %fedless_stop names it, as it
    names a run that ended while its cell waited behind another (it used to say only that none was going on)."""
    from fedless_nb.notebook import execution

    class EndedAtOnce:
        run_id, status = "run-ended", "finished"

        def __init__(self, *args, **kwargs):
            pass

        def done(self):
            return True

    monkeypatch.setattr(execution, "BackgroundRun", EndedAtOnce)
    shell.run_cell("from tensorflow import keras\n"
                   "model = keras.Sequential([keras.layers.Flatten(input_shape=(64,)), keras.layers.Dense(10, activation='softmax')])\n"
                   f"run = %fedless_train model {TINY} --rounds 1 --dashboard none --background\n")
    assert isinstance(shell.user_ns["run"], EndedAtOnce)
    with pytest.raises(UsageError, match=r"^no run is going on in the background; the last one, run-ended, has ended "
                                         r"\(finished\)$"):
        shell.run_line_magic("fedless_stop", "")


def test_deploy_builds_a_bundle_and_prints_its_deploy_command(shell, tmp_path):
    with capture_output() as captured:
        bundle = shell.run_line_magic("fedless_deploy", f"google_cloud_functions --out {tmp_path / 'dist'} --name fl")
    assert bundle.path == tmp_path / "dist" / "fl-google_cloud_functions" and bundle.path.is_dir()
    assert "fedless_nb/function/handler.py" in bundle.files
    assert captured.stdout.strip().splitlines()[-1] == bundle.deploy_command
    assert bundle.deploy_command.startswith("gcloud functions deploy fl ")
    with capture_output():
        rooted = shell.run_line_magic("fedless_deploy", f"google_cloud_functions --out {tmp_path / 'dist'} --name fl "
                                      "--store-root https://my-bucket.s3.eu-west-1.amazonaws.com/")
    assert ",FEDLESS_STORE_ROOTS=https://my-bucket.s3.eu-west-1.amazonaws.com/\"" in rooted.deploy_command
    with pytest.raises(UsageError, match="--store-root 'my-bucket' is neither an http"):
        shell.run_line_magic("fedless_deploy", f"google_cloud_functions --out {tmp_path / 'dist'} --store-root my-bucket")
    with pytest.raises(UsageError, match="openwhisk's deploy command needs --image"):
        shell.run_line_magic("fedless_deploy", f"openwhisk --out {tmp_path / 'dist'}")


def test_deploy_sets_the_modules_of_the_notebook_models_custom_layers(shell, tmp_path):
    """A function imports Keras's modules and FEDLESS_MODEL_MODULES' only: the model's custom-layer modules (given, or
    read off --model) are set in the printed command, so that it deploys a function that takes the model's tasks."""
    from test_packaging import write_model_modules

    write_model_modules(tmp_path)  # the notebook's folder
    shell.run_cell("from tensorflow import keras\nfrom registered_layers import Scale\n"
                   "model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), Scale(2.0)])\n"
                   "plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])\n"
                   "def build(): return model\n")
    out = f"google_cloud_functions --out {tmp_path / 'dist'}"
    with capture_output():
        given = shell.run_line_magic("fedless_deploy", f"{out} --model-module my_layers --model-module my.more_layers")
        read = shell.run_line_magic("fedless_deploy", f"{out} --model model")
        built_in = shell.run_line_magic("fedless_deploy", f"{out} --model plain")
    assert ",FEDLESS_MODEL_MODULES=my_layers;my.more_layers\"" in given.deploy_command
    assert ",FEDLESS_MODEL_MODULES=registered_layers\"" in read.deploy_command
    assert "FEDLESS_MODEL_MODULES" not in built_in.deploy_command
    with pytest.raises(UsageError, match=r"^--model-module '\*': give the dotted name of the installed module"):
        shell.run_line_magic("fedless_deploy", f"{out} --model-module '*'")
    with pytest.raises(UsageError, match="^--model build: give the built Keras model, not a function that builds one$"):
        shell.run_line_magic("fedless_deploy", f"{out} --model build")
    with pytest.raises(UsageError, match="unknown provider 'lambda'; choose one of aws_lambda"):
        shell.run_line_magic("fedless_deploy", f"lambda --out {tmp_path}")


def test_the_classroom_magics_open_join_train_options_and_leave(shell):
    magics = magics_of(shell)
    with pytest.raises(UsageError, match=r"--provider classroom needs an open classroom: run %fedless_classroom open"):
        shell.run_line_magic("fedless_train", "--provider classroom")
    with pytest.raises(UsageError, match="a sweep does not run over a classroom"):
        shell.run_cell_magic("fedless_sweep", "--provider classroom", "strategy.name: [fedavg, fedprox]")
    with capture_output():
        classroom = shell.run_line_magic("fedless_classroom", "open --host 127.0.0.1 --port 0 --minutes 5")
    try:
        with pytest.raises(UsageError, match="no student has joined yet"):
            shell.run_line_magic("fedless_train", "--provider classroom")
        with pytest.raises(UsageError, match="--data drawn: no such variable in the notebook"):
            shell.run_line_magic("fedless_join", f"{classroom.url} {classroom.code} --name alice --data drawn")
        with capture_output() as joined:
            shell.run_line_magic("fedless_join", f"{classroom.url} {classroom.code} --name alice --host 127.0.0.1")
        assert joined.stdout.startswith("Joined as alice; your function listens at http://127.0.0.1:")
        student = magics.student
        with capture_output() as again:  # the student's notebook run again (Run All): still the same function
            rejoined = shell.run_line_magic("fedless_join", f"{classroom.url} {classroom.code} --name alice --host 127.0.0.1")
        assert rejoined is student and magics.student is student
        assert again.stdout.startswith(f"Already joined as alice; your function listens at {student.url} ")
        with pytest.raises(UsageError, match="this notebook already joined as alice: run %fedless_leave first"):
            shell.run_line_magic("fedless_join", f"{classroom.url} {classroom.code} --name bob")
        config = config_for(shell, "--provider classroom --rounds 2")
        assert (config.clients, config.clients_per_round) == (1, 1)
        assert [(p.kind, p.name, p.url, p.clients) for p in config.providers] == [
            ("http", "alice", magics.student.url, 1)]
        with capture_output() as left:
            shell.run_line_magic("fedless_leave", "")
        assert left.stdout.strip() == "alice left the class"
        with pytest.raises(UsageError, match=r"this notebook has not joined a class \(%fedless_join\)"):
            shell.run_line_magic("fedless_leave", "")
    finally:
        with capture_output():
            shell.run_line_magic("fedless_classroom", "close")
    assert magics.classroom is None


def test_the_teacher_removes_a_student_with_the_classroom_magic(shell):
    """%fedless_classroom remove NAME takes a student out of the open classroom (the roster says so); --per-address
    sets the join service's limit of connections per address, --names-per-address its limit of names (one line for
    a value that is no count); a missing or unknown name is one line, and so is a mistyped option of another open,
    which leaves the open classroom open."""
    from fedless_nb.classroom.student import StudentFunction

    magics = magics_of(shell)
    with pytest.raises(UsageError, match="%fedless_classroom remove needs an open classroom: run %fedless_classroom open"):
        shell.run_line_magic("fedless_classroom", "remove bob")
    with pytest.raises(UsageError, match=r"^--names-per-address -1: give the most names students may register from one "
                                         r"address \(0: no limit, for a class behind one address\)$"):
        shell.run_line_magic("fedless_classroom", "open --host 127.0.0.1 --port 0 --names-per-address -1")
    with capture_output():
        classroom = shell.run_line_magic("fedless_classroom", "open --host 127.0.0.1 --port 0 --per-address 2 "
                                                              "--names-per-address 1")
    try:
        assert classroom._server.per_address == 2 and classroom.names_per_address == 1
        bob, code = StudentFunction(classroom.url, classroom.code, "bob", host="127.0.0.1"), classroom.code
        with capture_output() as removed:
            shell.run_line_magic("fedless_classroom", "remove bob")
        assert classroom.code != code  # renewed: bob cannot come back under another name with the code he had
        assert removed.stdout.strip() == (
            "Removed bob: their function's next result is refused and the name cannot join again; the join code is "
            f"now {classroom.code} (the others stay joined): %fedless_join {classroom.url} {classroom.code} "
            "--name YOUR_NAME")
        assert [(row["name"], row["status"]) for row in classroom.roster.rows()] == [("bob", "removed")]
        assert magics.classroom is classroom  # still open for the others
        with pytest.raises(UsageError, match="%fedless_classroom remove NAME: name the student to remove"):
            shell.run_line_magic("fedless_classroom", "remove")
        with pytest.raises(UsageError, match="no student 'carol' in this class: the roster lists the names"):
            shell.run_line_magic("fedless_classroom", "remove carol")
        for mistyped, refusal in (("--names-per-address -2", "--names-per-address -2: give the most names"),
                                  ("--max-own-examples 0", "--max-own-examples 0: give the most examples"),
                                  ("--allow-host http://x/", "--allow-host 'http://x/': give a host name"),
                                  # a code that admits nobody, a round nobody can finish in: it opened such a class
                                  ("--minutes 0", "--minutes 0: give how many minutes the join code admits students"),
                                  ("--minutes nan", "--minutes nan: give how many minutes"),
                                  ("--timeout -5", "--timeout -5: give the seconds a student's function may take")):
            with pytest.raises(UsageError, match=f"^{re.escape(refusal)}"):  # the open classroom used to close first
                shell.run_line_magic("fedless_classroom", f"open --host 127.0.0.1 --port 0 {mistyped}")
        assert magics.classroom is classroom and classroom.roster.rows()[0]["name"] == "bob"
        with socket.socket() as taken:  # a port another program holds: it closed the class, then could not listen
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            with pytest.raises(UsageError, match=rf"^cannot listen on 127.0.0.1:{taken.getsockname()[1]} "):
                shell.run_line_magic("fedless_classroom", f"open --host 127.0.0.1 --port {taken.getsockname()[1]}")
        assert magics.classroom is classroom and classroom.roster.rows()[0]["name"] == "bob"
        carol = StudentFunction(classroom.url, classroom.code, "carol", host="127.0.0.1")  # still serving
        carol.leave()
        bob._server.stop()
    finally:
        with capture_output():
            shell.run_line_magic("fedless_classroom", "close")


@pytest.mark.parametrize("line, cell, message", [
    # each option as typed: one of two spellings, a beginning argparse takes, the form with '='
    ("--learning-rate -1", None, "--learning-rate: must be > 0 and finite, got -1.0"),
    ("--clients 4 --clients-per 9", None, "--clients-per-round: must be between 1 and clients (4), got 9"),
    ("--clients 4 --clients-per-round=9", None, "--clients-per-round: must be between 1 and clients (4), got 9"),
    ("--dataset MNIST", None, "--dataset: unknown value 'MNIST' (did you mean 'mnist'?)"),
    ("--alpha 0.3 --clients 4", None, "--alpha: partition iid does not read it"),
    ("--provider lamdba", None, "--provider: unknown value 'lamdba' (did you mean 'lambda'?)"),
    # a key the user typed stays a key: in --set (which overrides the options), in the cell, in a config file
    ("--lr 0.1 --set train.learning_rate=-1", None, "train.learning_rate: must be > 0 and finite, got -1"),
    ("--clients 4", "clients_per_round: 9\n", "clients_per_round: must be between 1 and clients (4), got 9"),
])
def test_a_refused_value_is_named_as_the_user_gave_it(shell, line, cell, message):
    """`%fedless_train --lr -1` said 'train.learning_rate: must be > 0', a key that is nowhere on the user's line."""
    result = shell.run_cell(f"%%fedless_train {line}\n{cell}" if cell else f"%fedless_train {line}")
    assert isinstance(result.error_in_exec, UsageError)
    assert str(result.error_in_exec).startswith(message)


@pytest.mark.parametrize("magic, line, message", [
    ("fedless_partition", "--partition pathological --labels-per-client 11",
     "--labels-per-client: must be between 1 and the 10 classes in the data, got 11"),
    ("fedless_partition", "--partition dirichlet --min-ex 500",
     "--min-examples: must be between 1 and 71 (1437 examples / 20 clients), got 500"),
    ("fedless_train", f"{TINY} --partition pathological --labels-per-client 1",
     "4 clients x 1 --labels-per-client leave some of the 10 classes without a client; raise --labels-per-client or "
     "clients"),
    ("fedless_train", f"{TINY} --partition shards --shards-per-client 500 --background",
     "4 clients x 500 shards = 2000 shards is more than the 1437 training examples; lower --shards-per-client or clients"),
    # a key typed as a key stays a key
    ("fedless_train", f"{TINY} --partition pathological --set data.labels_per_client=11",
     "labels_per_client must be between 1 and the 10 classes in the data, got 11"),
])
def test_a_value_the_split_refuses_is_named_as_the_user_gave_it(shell, magic, line, message):
    """Values refused only once the data is split (against its classes and examples) named the config key, bare
    (`labels_per_client must be ...`), while values refused with the config named the option typed (`--lr: ...`)."""
    with pytest.raises(UsageError) as refused:
        shell.run_line_magic(magic, f"--dashboard none {line}" if magic == "fedless_train" else line)
    assert str(refused.value) == message


def test_partition_and_sweep_name_the_option_typed_and_a_swept_key_as_the_grid_names_it(shell, tmp_path):
    with pytest.raises(UsageError, match=r"^--min-examples: partition iid does not read it"):
        shell.run_line_magic("fedless_partition", "--min-examples 5 --clients 4")
    with pytest.raises(UsageError, match=r"^--rounds: must be >= 1, got 0"):
        shell.run_cell_magic("fedless_sweep", "--rounds 0", "strategy.name: [fedavg, fedprox]\n")
    with pytest.raises(UsageError, match=r"^rounds: must be >= 1, got 0"):
        shell.run_cell_magic("fedless_sweep", "--rounds 2", "rounds: [0, 1]\n")
    # the strategies swept by their section's name: the key that names one is strategy.name
    with pytest.raises(UsageError, match=r"^strategy: must be a mapping of keys to values, got str \(did you mean "
                                         r"strategy.name: 'fedavg'\?\)$"):
        shell.run_cell_magic("fedless_sweep", "--rounds 2", "strategy: [fedavg, fedprox]\n")
    assert list(tmp_path.iterdir()) == [], "nothing trained, nothing written"
