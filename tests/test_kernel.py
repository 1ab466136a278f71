"""The magics in a real Jupyter kernel, driven over its messaging protocol by jupyter_client."""

import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from fedless_nb.notebook.completion import config_values
from fedless_nb.providers.zygote import ZYGOTE_VARIABLE
from fedless_nb.records.history import History

from ports import kernel_ports

REPOSITORY = Path(__file__).resolve().parents[1]
TINY = "--clients 4 --clients-per-round 2 --workers 1 --set model.options.hidden_units=[8]"


class Kernel:
    """A started kernel and a client; `run` executes a cell and returns its stdout, raising on an error."""

    def __init__(self, manager: KernelManager) -> None:
        self.manager = manager
        self.client = manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)
        self.pid = int(self.run("import os; print(os.getpid())"))

    def execute(self, code, timeout=300, on_message=None, allow_stdin=False):
        """The reply and every iopub message of one cell."""
        messages = []

        def hook(message):
            messages.append(message)
            if on_message is not None:
                on_message(message)

        reply = self.client.execute_interactive(code, timeout=timeout, output_hook=hook, allow_stdin=allow_stdin)
        return reply, messages

    def run(self, code, timeout=300):
        reply, messages = self.execute(code, timeout)
        assert reply["content"]["status"] == "ok", reply["content"]
        return "".join(m["content"]["text"] for m in messages
                       if m["msg_type"] == "stream" and m["content"]["name"] == "stdout").strip()

    def open_widget_control_comm(self):
        """What JupyterLab's and Notebook's widget managers do when they attach to a kernel."""
        message = self.client.session.msg("comm_open", {
            "comm_id": uuid.uuid4().hex, "target_name": "jupyter.widget.control", "data": {},
        }, metadata={"version": "1.0.0"})
        self.client.shell_channel.send(message)

    def workers(self):
        return psutil.Process(self.pid).children(recursive=True)

    def shutdown(self):
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


def kernel_environment():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPOSITORY), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture
def kernel(tmp_path):
    """A python3 kernel working in the test's directory, with the extension loaded."""
    manager = KernelManager(kernel_name="python3", **kernel_ports())
    manager.start_kernel(cwd=str(tmp_path), env=kernel_environment())
    kernel = Kernel(manager)
    kernel.run("%load_ext fedless_nb")
    yield kernel
    kernel.shutdown()


def test_kernel_install_puts_a_spec_that_preloads_the_extension(tmp_path):
    prefix, user_dir = tmp_path / "prefix", tmp_path / "user-data"
    command = [sys.executable, "-m", "fedless_nb", "kernel", "install"]
    environment = {**kernel_environment(), "JUPYTER_DATA_DIR": str(user_dir)}
    subprocess.run([*command, "--prefix", str(prefix)], check=True, env=environment, capture_output=True)
    subprocess.run([*command, "--user"], check=True, env=environment, capture_output=True)
    installed = json.loads((user_dir / "kernels" / "fedless" / "kernel.json").read_text())
    assert installed["argv"][0] == sys.executable and installed["display_name"] == "Python 3 (fedless)"

    specs = KernelSpecManager(kernel_dirs=[str(prefix / "share" / "jupyter" / "kernels")])
    spec = specs.get_kernel_spec("fedless")
    assert spec.display_name == "Python 3 (fedless)" and spec.argv[0] == sys.executable
    for logo in ("logo-32x32.png", "logo-64x64.png"):  # what the launcher shows (Jupyter serves logo-* files)
        assert (Path(spec.resource_dir) / logo).read_bytes().startswith(b"\x89PNG")
    manager = KernelManager(kernel_name="fedless", kernel_spec_manager=specs, **kernel_ports())
    manager.start_kernel(cwd=str(tmp_path), env=kernel_environment())
    kernel = Kernel(manager)
    try:
        output = kernel.run("import os, sys\n"
                            "print(get_ipython().find_line_magic('fedless_train') is not None, "
                            "os.environ['TF_CPP_MIN_LOG_LEVEL'], 'tensorflow' in sys.modules)")
        assert output == "True 3 False"
    finally:
        kernel.shutdown()


def widget_states(messages):
    """Every widget state the kernel sent, opened or updated, in order."""
    return [m["content"]["data"]["state"] for m in messages
            if m["msg_type"] in ("comm_open", "comm_msg") and "state" in m["content"].get("data", {})]


def stop_button(messages):
    """The dashboard's Stop button: its comm id and its state after `messages` (opened, then updated)."""
    (comm_id,) = [m["content"]["comm_id"] for m in messages if m["msg_type"] == "comm_open"
                  and m["content"]["data"]["state"].get("_model_name") == "ButtonModel"]
    return comm_id, {key: value for m in messages if m["msg_type"] in ("comm_open", "comm_msg")
                     and m["content"]["comm_id"] == comm_id for key, value in m["content"]["data"].get("state", {}).items()}


@pytest.mark.slow
def test_text_in_batch_execution_widgets_in_an_interactive_frontend_and_a_lasting_record(kernel):
    def train(allow_stdin):
        reply, messages = kernel.execute(f"run = %fedless_train {TINY} --rounds 2", allow_stdin=allow_stdin)
        assert reply["content"]["status"] == "ok"
        views = [m for m in messages if m["msg_type"] == "display_data"
                 and "application/vnd.jupyter.widget-view+json" in m["content"]["data"]]
        records = [m for m in messages if m["msg_type"] in ("display_data", "update_display_data")
                   and "fedless-record" in m["content"]["data"].get("text/html", "")]
        stdout = "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream")
        return views, records, widget_states(messages), stdout

    views, records, states, stdout = train(allow_stdin=False)  # as nbclient and nbconvert execute
    assert "Round 2/2" in stdout and not views and not states
    (record,) = records
    assert record["msg_type"] == "display_data" and "final test accuracy" in record["content"]["data"]["text/plain"]
    assert "image/png" in record["content"]["data"]

    views, records, states, stdout = train(allow_stdin=True)  # as JupyterLab and Notebook execute
    assert len(views) == 1 and "Round 2/2" not in stdout
    assert any(state.get("value") == 2 for state in states), "the progress bar reached the last round"
    assert any(state.get("description") == "Round 2/2" for state in states)
    assert any(state.get("_model_name") == "LinesModel" for state in states), "bqplot drew the charts"
    (stop,) = [state for state in states if state.get("_model_name") == "ButtonModel"]  # as it opened
    assert stop["disabled"] and stop["description"] == "Stop: interrupt the kernel", "the cell blocks the kernel: " \
                                                                                       "no click is read before the end"
    (record,) = records  # the widgets' output becomes the record, which a saved notebook keeps
    assert record["msg_type"] == "update_display_data"
    assert record["content"]["transient"]["display_id"] == views[0]["content"]["transient"]["display_id"]

    kernel.open_widget_control_comm()  # a widget manager restoring the kernel's widgets (ipywidgets is loaded now)
    views, records, states, stdout = train(allow_stdin=False)
    assert len(views) == 1 and "Round 2/2" not in stdout and len(records) == 1


@pytest.mark.slow
def test_a_run_result_as_a_cells_value_names_its_run_and_what_to_call_on_it(kernel):
    """Tutorial 03's cell ends in its RunResult, which showed under the run's record as a bare repr
    ('RunResult(run_id=..., status=..., rounds=5/5, accuracy=0.9111)'): a cell's value shows as the record words the
    run, with what to call on the object to read its rounds, invocations and model."""
    kernel.run(f"run = %fedless_train {TINY} --name shown --rounds 1 --dashboard none")
    reply, messages = kernel.execute("run")
    assert reply["content"]["status"] == "ok"
    (shown,) = [m["content"]["data"] for m in messages if m["msg_type"] == "execute_result"]
    run_id = kernel.run("print(run.run_id)")
    accuracy = float(kernel.run("print(run.final_accuracy)"))
    summary = f"run shown ({run_id}) finished: 1/1 rounds, final test accuracy {accuracy:.3f}"
    lines = shown["text/plain"].splitlines()
    assert lines[0] == f"RunResult: {summary}" and [line.split()[0] for line in lines[1:]] == [
        ".rounds_frame()", ".invocations_frame()", ".model()"]
    assert shown["text/html"].startswith(f'<div class="fedless-result"><p><b>RunResult</b>: {summary}</p><table>')
    assert "<code>.model()</code>" in shown["text/html"]
    assert kernel.run("print(repr(run))").startswith(f"RunResult(run_id='{run_id}', status='finished', rounds=1/1")


@pytest.mark.slow
def test_background_run_leaves_the_kernel_free_and_stops_after_a_round(exec_workers, kernel, tmp_path):
    assert kernel.run(f"run = %fedless_train {TINY} --rounds 40 --background --dashboard none\nprint(run.status)") \
        in ("starting", "running")
    assert kernel.run("print(1 + 1, run.status)") in ("2 starting", "2 running")
    deadline = time.time() + 240
    while kernel.run("print(len(run.controller.round_metrics) if run.controller else 0)") == "0":
        assert time.time() < deadline, "no round finished while the kernel was idle"
        time.sleep(0.5)
    assert kernel.workers(), "the run's worker process is up"
    busy = ("before = len(run.controller.round_metrics)\n"
            "started = time.time()\n"
            "while len(run.controller.round_metrics) < before + 2:  # a cell computing, never yielding to the kernel\n"
            "    sum(range(10_000))\n"
            "print(before, len(run.controller.round_metrics), round(time.time() - started, 1))")
    kernel.run("import time")
    before, during, seconds = kernel.run(busy, timeout=240).split()
    print(f"two rounds finished in {seconds}s while a cell computed")
    assert int(during) >= int(before) + 2, "the run trained on while the cell computed"
    assert "stops after its current round" in kernel.run("%fedless_stop")
    output = kernel.run("result = await run\nprint(result.status, len(result.round_metrics), run.run_id)")
    status, rounds, run_id = output.split()
    assert status == "stopped" and 1 <= int(rounds) < 40
    history = History(tmp_path / "fedless_history.db")
    assert history.run(run_id)["status"] == "stopped"
    assert [r["round"] for r in history.rounds(run_id)] == list(range(1, int(rounds) + 1))
    assert len(kernel.workers()) == 1, "the worker stays warm for the next run"
    with pytest.raises(AssertionError, match="no run is going on in the background"):
        kernel.run("%fedless_stop")


@pytest.mark.slow
def test_a_background_run_started_before_the_extension_was_reloaded_still_stops(kernel):
    """%reload_ext fedless_nb makes new magics, which used to start with no background run: %fedless_stop said none was
    going on while the run trained on to its last round."""
    kernel.run(f"run = %fedless_train {TINY} --rounds 40 --background --dashboard none")
    kernel.run("%reload_ext fedless_nb")
    assert "stops after its current round" in kernel.run("%fedless_stop")
    status, rounds = kernel.run("result = await run\nprint(result.status, len(result.round_metrics))").split()
    assert status == "stopped" and int(rounds) < 40


@pytest.mark.slow
def test_a_classroom_and_a_joined_students_function_outlive_a_reload_of_the_extension(kernel):
    """%reload_ext fedless_nb kept background runs only: the open classroom's join service and the student's function
    went on serving while %fedless_train --provider classroom said no classroom was open, %fedless_leave that the
    notebook had not joined, and %fedless_classroom close closed nothing (and said nothing)."""
    url, code = kernel.run("classroom = %fedless_classroom open --host 127.0.0.1 --port 0\n"
                           "print(classroom.url, classroom.code)").splitlines()[-1].split()
    assert kernel.run(f"student = %fedless_join {url} {code} --name alice --host 127.0.0.1").startswith("Joined as alice")
    kernel.run("%reload_ext fedless_nb")
    trained = kernel.run("result = %fedless_train --provider classroom --dataset digits --builder logistic_regression "
                         "--rounds 1 --epochs 1 --dashboard none\nprint(result.status, len(result.round_metrics))")
    assert trained.splitlines()[-1] == "finished 1"
    assert kernel.run("%fedless_leave") == "alice left the class"
    assert kernel.run("%fedless_classroom close") == f"Closed the classroom at {url}"
    assert kernel.run("%fedless_classroom close") == "No classroom is open in this notebook; there is nothing to close"

@pytest.mark.slow
def test_a_stop_cell_queued_behind_a_cell_awaiting_the_run_names_the_run_that_ended(kernel):
    """The kernel runs one cell at a time: %fedless_stop run while a cell awaits the run waits behind it, and runs once
    the run has ended. It used to say only that no run was going on; it names the run and how it ended."""
    kernel.run(f"run = %fedless_train {TINY} --rounds 2 --background --dashboard none")
    kernel.client.execute("result = await run")  # not waited for: the stop's cell is queued behind it
    reply, _ = kernel.execute("%fedless_stop")
    run_id = kernel.run("print(result.run_id)")
    assert reply["content"]["evalue"] == f"no run is going on in the background; the last one, {run_id}, has ended (finished)"


@pytest.mark.slow
def test_showing_a_background_run_again_shows_its_live_dashboard_then_its_record(kernel):
    """After a browser reload that lost the starting cell's output, a cell ending in `run` brings the dashboard back."""
    def shown(messages, kind="display_data"):
        return [m["content"] for m in messages if m["msg_type"] == kind]

    reply, started = kernel.execute(f"run = %fedless_train {TINY} --rounds 40 --dashboard widgets --background")
    assert reply["content"]["status"] == "ok"
    (first,) = [c for c in shown(started) if "application/vnd.jupyter.widget-view+json" in c["data"]]
    reply, again = kernel.execute("run")
    (second,) = shown(again)
    assert second["data"]["application/vnd.jupyter.widget-view+json"] == \
        first["data"]["application/vnd.jupyter.widget-view+json"], "the same live widgets, another view"
    assert second["transient"]["display_id"] == first["transient"]["display_id"], "the record will replace it too"
    kernel.run("%fedless_stop")
    reply, finished = kernel.execute("result = await run\nrun")
    (record,) = shown(finished)
    assert "fedless-record" in record["data"]["text/html"] and "stopped" in record["data"]["text/html"]


@pytest.mark.slow
def test_a_resumed_runs_live_timeline_counts_its_seconds_from_the_resume(kernel):
    """Its timeline starts at the resume (the invocations before it ran in another session), but the live axis read
    'seconds since the run started'; the saved record's axis already named the resume."""
    kernel.run(f"run = %fedless_train {TINY} --rounds 3 --dashboard none --background\n%fedless_stop\n"
               "stopped = run.future.result(timeout=600)")
    rounds_done = kernel.run("print(len(stopped.round_metrics))")
    reply, messages = kernel.execute("resumed = %fedless_resume {stopped.run_id}", allow_stdin=True)  # as JupyterLab
    assert reply["content"]["status"] == "ok", reply["content"]
    (timeline_axis,) = [m["content"]["comm_id"] for m in messages if m["msg_type"] == "comm_open"
                        and "seconds" in m["content"]["data"]["state"].get("label", "")]
    (shown,) = [m for m in messages if m["msg_type"] == "display_data"
                and "application/vnd.jupyter.widget-view+json" in m["content"]["data"]]
    labels = [m["content"]["data"]["state"]["label"] for m in messages[:messages.index(shown)]
              if m["msg_type"] in ("comm_open", "comm_msg") and m["content"]["comm_id"] == timeline_axis
              and "label" in m["content"]["data"].get("state", {})]
    assert labels[-1] == f"seconds since the resume after round {rounds_done}", "as the dashboard is first shown"
    assert kernel.run("print(resumed.status)") == "finished"


@pytest.mark.slow
def test_the_dashboards_stop_button_stops_a_background_run_clicked_while_a_cell_awaits_it(kernel, tmp_path):
    """The click is a comm message, read by the kernel while a cell awaits (ipykernel reads comms then) or no cell
    runs; it asks the stop %fedless_stop asks, and the run ends after its current round with its record."""
    reply, started = kernel.execute(f"run = %fedless_train {TINY} --rounds 40 --dashboard widgets --background")
    assert reply["content"]["status"] == "ok", reply["content"]
    comm_id, state = stop_button(started)
    assert not state["disabled"] and state["description"] == "Stop after this round"
    history_path = tmp_path / "fedless_history.db"

    def click_after_round_one():  # as JupyterLab's widget manager sends a click
        while not (runs := History(history_path).runs()) or runs[0]["rounds_completed"] < 1:
            time.sleep(0.2)
        kernel.client.shell_channel.send(kernel.client.session.msg("comm_msg", {
            "comm_id": comm_id, "data": {"method": "custom", "content": {"event": "click"}}}))

    clicker = threading.Thread(target=click_after_round_one, daemon=True)
    clicker.start()
    output = kernel.run("result = await run\nprint(result.status, len(result.round_metrics), run.run_id)")
    status, rounds, run_id = output.split()
    assert status == "stopped" and 1 <= int(rounds) < 40
    (run,) = History(history_path).runs()
    assert run["run_id"] == run_id and run["status"] == "stopped" and run["rounds_completed"] == int(rounds)
    assert kernel.run("print(run.dashboard.stop_note.value)") == (
        f"Run {run_id} stops after its current round; continue it later with: %fedless_resume {run_id}")
    assert kernel.run("print(run.dashboard.stop_button.disabled, run.dashboard.stop_button.description)") == \
        "True Run stopped"
    reply, shown = kernel.execute("run")
    (record,) = [m["content"] for m in shown if m["msg_type"] == "display_data"]
    assert "fedless-record" in record["data"]["text/html"] and "stopped" in record["data"]["text/html"]
    next_step = (f"Run {run_id} stopped after round {rounds}; the history keeps every finished round. Continue it with: "
                 f"%fedless_resume {run_id}")  # the line under the button, which the record replaced (it had none)
    assert record["data"]["text/plain"].endswith(f". {next_step}") and f"{next_step}</p>" in record["data"]["text/html"]


@pytest.mark.slow
def test_interrupting_a_run_keeps_its_rounds_and_the_kernel_usable(kernel, tmp_path):
    def interrupt_after_round_one(message):
        if message["msg_type"] == "stream" and "Round 1/40" in message["content"]["text"]:
            kernel.manager.interrupt_kernel()

    reply, messages = kernel.execute(f"%fedless_train {TINY} --rounds 40 --dashboard text",
                                     on_message=interrupt_after_round_one)
    assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "UsageError"
    (run,) = History(tmp_path / "fedless_history.db").runs()
    assert run["status"] == "stopped" and run["error"] == "interrupted" and 1 <= run["rounds_completed"] < 40
    stderr = "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream" and m["content"]["name"] == "stderr")
    assert stderr == (f"UsageError: Run {run['run_id']} stopped after round {run['rounds_completed']}; the history keeps "
                      f"every finished round. Continue it with: %fedless_resume {run['run_id']}\n")
    assert kernel.run(f"run = %fedless_train {TINY} --rounds 1 --dashboard none\nprint(run.status)") == "finished"


@pytest.mark.slow
def test_interrupting_a_run_before_its_first_round_names_it_and_says_to_run_it_again(kernel, tmp_path):
    """It said 'Run stopped after round 0; the history keeps every finished round': no run id, and no round to keep."""
    def interrupt_at_the_start(message):
        if message["msg_type"] == "stream" and "4 clients, 40 rounds" in message["content"]["text"]:
            kernel.manager.interrupt_kernel()  # the worker's cold start alone outlasts this

    reply, messages = kernel.execute(f"%fedless_train {TINY} --rounds 40 --epochs 50 --dashboard text",
                                     on_message=interrupt_at_the_start)
    assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "UsageError"
    (run,) = History(tmp_path / "fedless_history.db").runs()
    assert run["status"] == "stopped" and run["rounds_completed"] == 0
    stderr = "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream" and m["content"]["name"] == "stderr")
    assert stderr == (f"UsageError: Run {run['run_id']} stopped after round 0; no round finished, so there is nothing "
                      "to continue: run %fedless_train again\n")


@pytest.mark.slow
def test_interrupting_a_resume_while_it_prepares_names_the_run_its_rounds_and_the_resume(kernel, tmp_path):
    """It said 'Run stopped while preparing its data and model, before its first round; nothing was recorded: run
    %fedless_train again' of a run with a round in the history (as `fedless-nb resume` did, see test_cli)."""
    from planted_runs import plant_stopped_run

    (tmp_path / "slow_model.py").write_text(
        "import time\nfrom fedless_nb.zoo import mlp\n\n\ndef build(input_shape, num_classes):\n"
        "    print('building the model', flush=True)\n    time.sleep(5)  # the interrupt lands meanwhile\n"
        "    return mlp(input_shape, num_classes, hidden_units=[8])\n")
    plant_stopped_run(tmp_path / "fedless_history.db", builder="slow_model:build")

    def interrupt_while_it_builds(message):
        if message["msg_type"] == "stream" and "building the model" in message["content"]["text"]:
            kernel.manager.interrupt_kernel()

    reply, messages = kernel.execute("%fedless_resume planted --trust-builder --dashboard text",
                                     on_message=interrupt_while_it_builds)
    assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "UsageError"
    stderr = "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream" and m["content"]["name"] == "stderr")
    assert stderr == ("UsageError: Run planted stopped after round 1; the history keeps every finished round. Continue "
                      "it with: %fedless_resume planted --trust-builder\n")
    assert History(tmp_path / "fedless_history.db").run("planted")["rounds_completed"] == 1


@pytest.mark.slow
def test_interrupting_a_cell_that_awaits_a_background_run_stops_the_run_with_one_line(kernel, tmp_path):
    """ipykernel cancels an awaiting cell from another thread: awaiting the run's future, the interrupt did nothing
    until all 300 rounds had run, then showed an empty CancelledError."""
    kernel.run(f"run = %fedless_train {TINY} --rounds 300 --dashboard none --background")
    history_path = tmp_path / "fedless_history.db"

    def interrupt_after_round_one():
        while not (runs := History(history_path).runs()) or runs[0]["rounds_completed"] < 1:
            time.sleep(0.2)
        kernel.manager.interrupt_kernel()

    interrupter = threading.Thread(target=interrupt_after_round_one, daemon=True)
    interrupter.start()
    reply, messages = kernel.execute("result = await run")
    (run,) = History(history_path).runs()
    assert run["status"] == "stopped" and 1 <= run["rounds_completed"] < 300
    (error,) = [m["content"] for m in messages if m["msg_type"] == "error"]
    assert error["traceback"] == [f"RunStopped: Run {run['run_id']} stopped after round {run['rounds_completed']}; the "
                                  f"history keeps every finished round. Continue it with: %fedless_resume {run['run_id']}"]
    assert kernel.run("print(run.status)") == "stopped"


@pytest.mark.slow
def test_a_run_cut_off_by_a_kernel_restart_reads_interrupted_leaves_no_worker_and_resumes(
        exec_workers, worker_zygote, kernel, tmp_path):
    """Only the cut-off run needs workers of its own that end with their kernel; the restarted kernel's resume forks
    its worker from the suite's zygote, as every other run here does."""
    kernel.run(f"run = %fedless_train {TINY} --rounds 10 --dashboard none --background")
    history_path = tmp_path / "fedless_history.db"
    deadline = time.time() + 300
    while not (runs := History(history_path).runs()) or runs[0]["rounds_completed"] < 1:
        assert time.time() < deadline, "the background run finished no round"
        time.sleep(0.2)
    workers = kernel.workers()
    assert workers, "the run's local workers are the kernel's children"
    zygote = {} if worker_zygote is None else {ZYGOTE_VARIABLE: worker_zygote.socket_path}
    kernel.manager.restart_kernel(now=True, env={**kernel_environment(), **zygote})  # Kernel > Restart Kernel while it trains
    kernel.client.wait_for_ready(timeout=60)
    _, alive = psutil.wait_procs(workers, timeout=120)  # a worker ends when its stdin (the dead kernel's pipe) closes
    assert not alive, f"workers outlived their kernel: {[p.pid for p in alive]}"
    kernel.run("%load_ext fedless_nb")
    (run_id, status), = [line.split() for line in kernel.run(
        "runs = %fedless_history\nprint(runs.run_id[0], runs.status[0])").splitlines()]
    assert status == "interrupted", "the dead kernel's run trains no more; the history does not say running"
    assert kernel.run(f"resumed = %fedless_resume {run_id} --dashboard none\nprint(resumed.status)", timeout=600).endswith("finished")
    assert History(history_path).run(run_id)["rounds_completed"] == 10


def complete(kernel, code):
    """The kernel's answer to a frontend's Tab at the end of `code` (a complete_request, as JupyterLab sends)."""
    reply = kernel.client.complete(code, len(code), reply=True, timeout=120)["content"]
    return reply["matches"], code[reply["cursor_start"]:reply["cursor_end"]]


def test_tab_completes_the_magics_options_their_choices_and_the_model_variable(kernel):
    """Before, IPython completed the magics' names only: `--cl` offered classmethod, `--dashboard ` Python's
    keywords, and no variable after a magic. A reloaded extension answers once, not twice."""
    kernel.run("%reload_ext fedless_nb\nmy_model = None")
    assert complete(kernel, "%fedless_train --cl") == (["--clients", "--clients-per-round"], "--cl")
    assert complete(kernel, "%fedless_train --dashboard ")[0] == ["auto", "compact", "none", "text", "widgets"]
    assert complete(kernel, "%fedless_partition --partition d") == (["dirichlet"], "d"), "a registry's values"
    assert complete(kernel, "%fedless_train --strategy fedprox --dataset f")[0] == ["fashion_mnist", "femnist"]
    assert complete(kernel, "%%fedless_sweep --ro") == (["--round-deadline", "--rounds"], "--ro")
    assert complete(kernel, "%fedless_history --") == (["--history"], "--")
    assert complete(kernel, "%fedless_classroom ")[0] == ["close", "open", "remove"]
    assert complete(kernel, "%fedless_tr")[0] == ["%fedless_train", "%%fedless_train"], "IPython's own, as before"
    assert complete(kernel, "%fedless_train my_m") == (["my_model"], "my_m"), "the model: a notebook variable"


def test_a_user_error_from_python_in_a_cell_is_one_line_and_says_what_to_change(kernel):
    for code, line in (
        ("from fedless_nb.experiment import ExperimentConfig\nExperimentConfig.from_dict({'rounds': 0})",
         "ConfigError: rounds: must be >= 1, got 0"),
        ("from fedless_nb.runner import run_experiment\nrun_experiment(ExperimentConfig())",
         "UserError: run_experiment() cannot block where an event loop already runs, as in a notebook cell: write "
         "`await run_experiment_async(...)` with the same arguments (or train with %fedless_train)"),
        ("from fedless_nb.runner import resume_experiment\nresume_experiment('some-run')",
         "UserError: resume_experiment() cannot block where an event loop already runs, as in a notebook cell: "
         "write `await resume_experiment_async(...)` with the same arguments (or train with %fedless_train)"),
    ):
        reply, messages = kernel.execute(code)
        (error,) = [m["content"] for m in messages if m["msg_type"] == "error"]
        assert error["traceback"] == [line], error["traceback"]
    assert not any(kernel.workers()), "nothing started"


@pytest.mark.slow
def test_ten_runs_reuse_warm_workers_with_flat_threads_and_memory_and_the_pool_ends_them(exec_workers, kernel, tmp_path):
    kernel.run("import gc")

    def train_and_measure():
        assert kernel.run(f"run = %fedless_train {TINY} --rounds 1 --dashboard none\nprint(run.status)") == "finished"
        kernel.run("gc.collect()")
        process = psutil.Process(kernel.pid)
        return {child.pid for child in process.children(recursive=True)}, process.num_threads(), process.memory_info().rss

    first = train_and_measure()
    for _ in range(8):
        train_and_measure()
    last = train_and_measure()
    print(f"after run 1: {first}; after run 10: {last}")
    assert len(first[0]) == 1 and last[0] == first[0], "the one warm worker served every run"
    assert last[1] <= first[1], "no thread outlives its run"
    assert last[2] - first[2] < 64 * 2**20, "resident memory stays at its level after the first run"
    history = History(tmp_path / "fedless_history.db")
    runs = sorted(history.runs(), key=lambda run: run["started_at"])
    colds = [sum(bool(row["cold"]) for row in history.invocations(run["run_id"])) for run in runs]
    assert colds == [1] + [0] * 9, "only the first run paid a cold start"

    (pid,) = first[0]
    assert str(pid) in kernel.run("pool = %fedless_pool\nprint(pool.to_string())")
    assert kernel.run("%fedless_pool --end") == "Stopped 1 warm worker"
    assert kernel.workers() == []
    assert kernel.run(f"run = %fedless_train {TINY} --rounds 1 --dashboard none\nprint(run.status)") == "finished"


def test_mistakes_found_before_the_start_are_one_line_and_leave_no_dashboard(exec_workers, kernel):
    kernel.run("from tensorflow import keras\n"
               "unbuilt = keras.Sequential([keras.layers.Dense(10, activation='softmax')])")
    for background in ("", "--background"):
        reply, messages = kernel.execute(f"run = %fedless_train unbuilt {TINY} --dashboard widgets {background}")
        assert reply["content"]["ename"] == "UsageError"
        assert reply["content"]["evalue"].startswith("model 'sequential' has no input shape yet")
        assert not [m for m in messages if m["msg_type"] == "display_data"], "no empty dashboard"
    assert kernel.workers() == []

    kernel.run("def build(layers, width):\n    return keras.Sequential([keras.layers.Dense(10)] * layers)")
    reply, _ = kernel.execute(f"run = %fedless_train build {TINY}")
    assert reply["content"]["evalue"] == (
        "build() asks for layers, width, which the run does not give: a function that builds the model may ask for "
        "input_shape, num_classes, image_shape, hidden_units by name (add others with --set model.options.NAME=VALUE), "
        "or give it defaults"), "was a TypeError's traceback"

    kernel.run("logits = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, name='scores')], name='logits')")
    reply, _ = kernel.execute(f"run = %fedless_train logits {TINY}")
    assert reply["content"]["evalue"].startswith("model 'logits' ends in layer 'scores' without an activation (logits), "
                                                 "but its loss expects probabilities"), "it trained to chance, silently"

    reply, messages = kernel.execute("%fedless_train --clients 4 --learnin-rate 0.1")
    assert reply["content"]["evalue"] == "unrecognized arguments: --learnin-rate (did you mean --learning-rate?)"

    reply, _ = kernel.execute("%fedless_train --dataset mnsit")
    assert reply["content"]["evalue"].startswith("--dataset: unknown value 'mnsit' (did you mean 'mnist'?); choose one of")

    reply, _ = kernel.execute("%fedless_train?")
    (page,) = reply["content"]["payload"]
    help_text = page["data"]["text/plain"]
    for option, default in (("--clients-per-round", "min(5, clients)"), ("--epochs", "5"), ("--batch-size", "16"),
                            ("--rounds", "10"), ("--lr", "0.1"), ("--workers", "2"), ("--partition", "iid"),
                            ("--round-deadline", "600"), ("--base", "2.71828"), ("--sizes", "equal sizes")):
        assert f"(default {default})" in option_help(help_text, option), option
    for option, values in config_values().items():  # what Tab offers, the help names
        assert set(values) <= set(re.findall(r"\w+", option_help(help_text, option))), option


def option_help(help_text, option):
    """The words of `option`'s entry in an argparse help page (its lines up to the next option's)."""
    lines = help_text.splitlines()
    start = next(index for index, line in enumerate(lines) if line.lstrip().startswith(option + " "))
    end = next((index for index in range(start + 1, len(lines)) if lines[index].lstrip().startswith("-")), len(lines))
    return " ".join(" ".join(lines[start:end]).split())


@pytest.mark.slow
def test_a_sweep_runs_each_point_on_warm_workers_with_a_line_each_and_one_table(kernel, tmp_path):
    reply, messages = kernel.execute(f"%%fedless_sweep {TINY} --rounds 1 --name grid\n"
                                     "strategy.name: [fedavg, fedprox]\n")
    assert reply["content"]["status"] == "ok", reply["content"]
    lines = [m for m in messages if m["msg_type"] == "display_data"]
    assert [m["content"]["data"]["text/plain"].split(" (")[0] for m in lines] == [
        "[1/2] strategy=fedavg", "[2/2] strategy=fedprox"], "one compact line per run"
    updates = [m["content"]["data"]["text/plain"] for m in messages if m["msg_type"] == "update_display_data"]
    assert sum("finished after 1/1 rounds  accuracy" in text for text in updates) == 2
    history = History(tmp_path / "fedless_history.db")
    runs = {run["name"]: run for run in history.runs()}
    assert set(runs) == {"grid-fedavg", "grid-fedprox"}
    assert [row["cold"] for row in history.invocations(runs["grid-fedprox"]["run_id"])] == [0, 0], "warm workers reused"
    (result,) = [m["content"]["data"] for m in messages if m["msg_type"] == "execute_result"]  # one table and figure
    assert "fedless-sweep" in result["text/html"] and 'src="data:image/png;base64,' in result["text/html"]
    assert runs["grid-fedavg"]["run_id"] in result["text/plain"] and runs["grid-fedprox"]["run_id"] in result["text/plain"]
