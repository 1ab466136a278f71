import sqlite3

import pytest

from fedless_nb.events import InvocationFinished, RoundFinished, RunFinished, RunStarted
from fedless_nb.history import History, HistoryError, HistoryWriter


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
