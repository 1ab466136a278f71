import sqlite3

import pytest

from fedless_nb.rounds.events import InvocationFinished, RoundFinished, RunFinished, RunStarted
from fedless_nb.errors import UserError
from fedless_nb.records.history import History, HistoryError, HistoryWriter


def _record_a_run(path, run_id="r1"):
    writer = HistoryWriter(History(path))
    writer(RunStarted(run_id, "test", {"rounds": 2}, 2, 3, [{"name": "local", "kind": "local"}], 100.0))
    for round_number in (1, 2):
        writer(InvocationFinished(run_id, round_number, "client-0000", "local", "succeeded", 100.0, 101.0,
                                  cold=round_number == 1, num_examples=10, metrics={"loss": 0.5},
                                  timings={"train": 0.3, "total": 0.9}))
        writer(InvocationFinished(run_id, round_number, "client-0001", "local", "failed", 100.0, 102.0,
                                  error="timed out after 2s", cause="timeout"))
        writer(RoundFinished(run_id, round_number, 100.0, 102.5, 2, 1, 1,
                             {"accuracy": 0.5 + round_number / 10, "loss": 1.0}, {"loss": 0.5}))
    writer(RunFinished(run_id, "finished", 110.0, 2, {"accuracy": 0.7}))
    writer.history.close()


def test_a_run_reads_back_as_rows_and_frames(tmp_path):
    path = tmp_path / "h.db"
    _record_a_run(path)
    history = History(path)
    (run,) = history.runs()
    assert run["status"] == "finished" and run["rounds_completed"] == 2 and run["eval_accuracy"] == pytest.approx(0.7)
    assert history.run("r1")["config"] == {"rounds": 2}
    rounds = history.rounds("r1")
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[1]["eval_accuracy"] == pytest.approx(0.7) and rounds[0]["train_loss"] == 0.5
    invocations = history.invocations("r1")
    assert len(invocations) == 4
    assert [i["cold"] for i in invocations if i["outcome"] == "succeeded"] == [1, 0]
    failed = [i for i in invocations if i["outcome"] == "failed"]
    assert failed[0]["error"] == "timed out after 2s" and failed[0]["cause"] == "timeout"
    frame = history.invocations_frame("r1")
    assert list(frame["t_train"].dropna()) == [0.3, 0.3]
    assert history.rounds_frame("r1")["eval_accuracy"].tolist() == pytest.approx([0.6, 0.7])


def test_wal_mode_lets_two_handles_share_the_file(tmp_path):
    path = tmp_path / "h.db"
    _record_a_run(path, "r1")
    _record_a_run(path, "r2")
    assert {r["run_id"] for r in History(path).runs()} == {"r1", "r2"}
    assert sqlite3.connect(path).execute("pragma journal_mode").fetchone()[0] == "wal"


def test_unknown_run_and_foreign_file_are_clear_errors(tmp_path):
    with pytest.raises(HistoryError, match="no run 'nope'"):
        History(tmp_path / "h.db").run("nope")
    foreign = tmp_path / "notes.db"
    foreign.write_text("these are my notes, not a database " * 200)
    with pytest.raises(HistoryError, match="notes.db is not a usable fedless_nb history"):
        History(foreign)
    assert foreign.read_text().startswith("these are my notes"), "the file is left untouched"
    with pytest.raises(HistoryError, match=f"^{tmp_path / 'runs' / 'h.db'}: the folder {tmp_path / 'runs'} does not "
                       r"exist; create it or name another file with --history PATH \(history=\.\.\. in Python\)$"):
        History(tmp_path / "runs" / "h.db")
    with pytest.raises(HistoryError, match=f"^{tmp_path} is a folder: name a file in it with --history PATH "
                                           rf"\(history=\.\.\. in Python\), for example {tmp_path / 'fedless_history.db'}$"):
        History(tmp_path)


def _events(run_id, rounds):
    yield RunStarted(run_id, "test", {}, rounds, 2, [{"name": "local", "kind": "local"}], 100.0)
    for round_number in range(1, rounds + 1):
        for client in range(2):
            yield InvocationFinished(run_id, round_number, f"client-{client:04d}", "local", "succeeded", 100.0, 101.0,
                                     num_examples=10, timings={"total": 0.5})
        yield RoundFinished(run_id, round_number, 100.0, 102.0, 2, 2, 0, {"accuracy": round_number / 100}, {})
    yield RunFinished(run_id, "finished", 200.0, rounds, {"accuracy": rounds / 100})


def _assert_complete(history, run_id, rounds):
    assert history.run(run_id)["status"] == "finished"
    assert [r["round"] for r in history.rounds(run_id)] == list(range(1, rounds + 1))
    invocations = history.invocations(run_id)
    assert len(invocations) == 2 * rounds
    assert len({(i["round"], i["client_id"]) for i in invocations}) == 2 * rounds, "no invocation counted twice"


def test_a_locked_history_mid_run_spills_to_a_side_file_and_catches_up(tmp_path, caplog):
    """Another process holds the write lock past the busy timeout: the run goes on, nothing is lost."""
    path = tmp_path / "h.db"
    writer = HistoryWriter(History(path, busy_timeout=0.1))
    events = list(_events("r1", 4))
    for event in events[:4]:  # run start and round 1
        writer(event)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("begin immediate")
    for event in events[4:10]:  # rounds 2 and 3 while locked
        writer(event)
    assert writer.side_file is not None and writer.side_file.exists()
    assert "cannot write history" in caplog.text and "the run continues" in caplog.text
    assert sum(1 for _ in writer.side_file.open()) == 2, "both unwritten rounds are on disk"
    blocker.execute("rollback")
    for event in events[10:]:  # round 4 and the end, after the lock is gone
        writer(event)
    assert writer.side_file is None and not list(tmp_path.glob("*.pending.jsonl"))
    _assert_complete(History(path), "r1", 4)


def test_when_the_side_file_cannot_be_written_either_the_writes_wait_in_memory(tmp_path, caplog):
    path = tmp_path / "h.db"
    writer = HistoryWriter(History(path, busy_timeout=0.1))
    events = list(_events("r1", 2))
    writer(events[0])
    (tmp_path / "h.db.r1.pending.jsonl").mkdir()  # nothing can be written where the side file goes
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("begin immediate")
    for event in events[1:4]:
        writer(event)  # the run is not interrupted
    assert "nor its side file" in caplog.text and writer.side_file is None
    blocker.execute("rollback")
    (tmp_path / "h.db.r1.pending.jsonl").rmdir()
    for event in events[4:]:
        writer(event)
    _assert_complete(History(path), "r1", 2)


def test_writes_spilled_by_a_dead_run_are_replayed_on_the_next_open(tmp_path):
    path = tmp_path / "h.db"
    writer = HistoryWriter(History(path, busy_timeout=0.1))
    events = list(_events("r1", 3))
    writer(events[0])
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("begin immediate")
    for event in events[1:]:
        writer(event)
    side_files = list(tmp_path.glob("h.db.r1.pending.jsonl"))
    assert len(side_files) == 1
    blocker.execute("rollback")
    del writer  # the run's process ends with its record still in the side file
    history = History(path)
    assert not side_files[0].exists()
    _assert_complete(history, "r1", 3)
    History(path)  # opening again replays nothing twice
    _assert_complete(History(path), "r1", 3)


def test_a_history_locked_at_open_is_one_clear_line(tmp_path):
    path = tmp_path / "h.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("create table notes (text)")
    holder.execute("begin exclusive")  # a rollback-journal database held by another program
    with pytest.raises(HistoryError, match=r"h\.db is locked by another process \(waited 0\.2s\)") as raised:
        History(path, busy_timeout=0.2)
    assert "\n" not in str(raised.value)
    holder.execute("rollback")
    assert holder.execute("select count(*) from notes").fetchone() == (0,)


def test_a_run_is_named_by_its_id_or_a_beginning_of_it_no_other_run_shares(tmp_path):
    """As fedless-nb history, resume and the magics read it: a beginning several ids share, or none, is one line."""
    path = tmp_path / "h.db"
    for run_id in ("demo-20261127-101500-aa11", "demo-20261127-101500-bb22", "sweep-20261127-1030-cc33"):
        _record_a_run(path, run_id)
    history = History(path)
    assert history.run("demo-20261127-101500-b")["run_id"] == "demo-20261127-101500-bb22"
    assert history.run("sweep")["run_id"] == "sweep-20261127-1030-cc33"
    assert history.cost("sweep")["run_id"] == "sweep-20261127-1030-cc33"
    with pytest.raises(UserError, match=r"^'demo' begins the ids of 2 runs \(demo-20261127-101500-aa11, "
                                        r"demo-20261127-101500-bb22\): give more of the id$"):
        history.run("demo")
    with pytest.raises(HistoryError, match=r"^no run 'other' in .*h\.db; a run recorded in another file needs --history"):
        history.run("other")

def test_a_lock_is_told_by_its_sqlite_code_not_its_words(tmp_path):
    """A second connection holding the write lock is a lock (SQLITE_BUSY); an error whose words say "locked" but whose
    code is another is not, so opening does not wait out the busy timeout and then blame another process."""
    from fedless_nb.records.history import is_locked

    path = tmp_path / "h.db"
    History(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("begin immediate")
    writer = sqlite3.connect(path, timeout=0, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError) as busy:
        writer.execute("begin immediate")
    assert busy.value.sqlite_errorname == "SQLITE_BUSY" and is_locked(busy.value)
    holder.execute("rollback")
    with pytest.raises(sqlite3.OperationalError, match="locked_runs") as other:
        writer.execute("select * from locked_runs")
    assert other.value.sqlite_errorname == "SQLITE_ERROR" and not is_locked(other.value)


_WRITER = """
import sys
from fedless_nb.records.history import History, HistoryWriter
sys.path.insert(0, sys.argv[3])
from test_history import _events
writer = HistoryWriter(History(sys.argv[1]))
for event in _events(sys.argv[2], 150):
    writer(event)
assert writer.side_file is None, "every write reached the shared file"
"""


def test_two_processes_write_runs_to_one_history_at_once(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    path = tmp_path / "shared.db"
    History(path).close()
    tests = str(Path(__file__).parent)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    processes = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), run_id, tests], env=environment,
                                  stderr=subprocess.PIPE, text=True) for run_id in ("a", "b")]
    for process in processes:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
    history = History(path)
    for run_id in ("a", "b"):
        _assert_complete(history, run_id, 150)
    assert not list(tmp_path.glob("*.pending.jsonl"))


def test_a_write_that_can_never_succeed_is_dropped_and_the_run_still_finishes(tmp_path):
    writer = HistoryWriter(History(tmp_path / "h.db"))
    writer(RunStarted("r1", "test", {}, 1, 1, [], 100.0))
    writer(InvocationFinished("r1", 1, "client-0000", "local", "succeeded", 100.0, 101.0, num_examples=2**63))
    writer(RoundFinished("r1", 1, 100.0, 102.0, 1, 1, 0, {}, {}))  # SQLite cannot hold the count: OverflowError
    writer(RunFinished("r1", "finished", 110.0, 1, {}, observer_errors={"Dashboard": 2}))
    run = writer.history.run("r1")
    assert run["status"] == "finished" and run["observer_errors"] == '{"Dashboard": 2}' and writer.dropped_writes == 1


def test_a_corrupt_side_file_is_quarantined_instead_of_failing_every_open(tmp_path):
    path = tmp_path / "h.db"
    _record_a_run(path)
    side_file = tmp_path / "h.db.r2.pending.jsonl"
    side_file.write_text('{"write": "finish_run", "event": {"type": "RunFinished"\n')
    History(path).close()
    assert not side_file.exists() and (tmp_path / "h.db.r2.pending.corrupt").exists()
    assert History(path).run("r1")["status"] == "finished"


def test_a_running_run_whose_process_is_gone_reads_interrupted_and_only_such_a_run_resumes(tmp_path):
    import socket
    import subprocess
    import sys

    from fedless_nb.experiment import ExperimentConfig
    from fedless_nb.records.owner import this_process
    from fedless_nb.runner import ResumeError, resume_point

    dead = subprocess.run([sys.executable, "-c", "from fedless_nb.records.owner import this_process; "
                           "print(this_process())"], capture_output=True, text=True, check=True).stdout.strip()
    assert dead.startswith(f"{socket.gethostname()}:")
    config = ExperimentConfig.from_dict({"rounds": 5}).to_dict()
    path = tmp_path / "h.db"
    writer = HistoryWriter(History(path))
    for run_id, owner in (("killed", dead), ("alive", this_process()), ("elsewhere", "other-host:1:1.00"),
                          ("before-owners", "")):
        writer(RunStarted(run_id, "test", config, 5, 20, [], 100.0, owner=owner))
    writer.history.close()

    history = History(path)
    statuses = {run["run_id"]: run["status"] for run in history.runs()}
    assert statuses == {"killed": "interrupted", "alive": "running", "elsewhere": "running", "before-owners": "running"}
    assert history.run("killed")["status"] == "interrupted"
    assert set(history.runs_frame()["status"]) == {"interrupted", "running"}
    history.close()
    assert resume_point("killed", path).config.rounds == 5
    with pytest.raises(ResumeError, match=r"run 'alive' is still training \(process \d+\): stop it first"):
        resume_point("alive", path)


def test_a_finished_run_of_one_round_is_not_resumed_in_words_that_read_right(tmp_path):
    """It said 'already finished all 1 round'."""
    from fedless_nb.runner import ResumeError, resume_point

    _record_a_run(tmp_path / "h.db", "short")
    History(tmp_path / "h.db").db["runs"].update("short", {"rounds": 1, "rounds_completed": 1})
    with pytest.raises(ResumeError, match=r"^run 'short' already finished its 1 round; there is nothing to resume$"):
        resume_point("short", tmp_path / "h.db")
