"""Every run's history in one local SQLite file, through sqlite-utils.

Tables: runs (one row per run, with its config), rounds (timing and counts per round),
invocations (one row per function call: client, provider, cold or warm, each timing,
outcome, error text, staleness in async runs) and metrics (per round, long form: scope "eval",
"train" or "privacy", name, value).
The file uses WAL mode so a notebook can read a run while another process writes one.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import sqlite_utils

from .errors import UserError
from .events import Event, InvocationFinished, RoundFinished, RunFinished, RunStarted

DEFAULT_HISTORY = "fedless_history.db"
TIMINGS = ("cold_start", "build", "load", "train", "upload", "total")

_SCHEMA: dict[str, tuple[dict[str, Any], Any]] = {
    "runs": ({
        "run_id": str, "name": str, "status": str, "started_at": float, "finished_at": float,
        "rounds": int, "rounds_completed": int, "clients": int, "config": str, "providers": str, "error": str,
    }, "run_id"),
    "rounds": ({
        "run_id": str, "round": int, "started_at": float, "finished_at": float, "duration": float,
        "selected": int, "succeeded": int, "failed": int,
    }, ("run_id", "round")),
    "invocations": ({
        "id": int, "run_id": str, "round": int, "client_id": str, "provider": str, "outcome": str,
        "cold": int, "num_examples": int, "started_at": float, "finished_at": float,
        **{f"t_{name}": float for name in TIMINGS}, "cause": str, "error": str, "staleness": int,
    }, "id"),
    "metrics": ({"run_id": str, "round": int, "scope": str, "name": str, "value": float},
                ("run_id", "round", "scope", "name")),
}


class HistoryError(UserError):
    """The history file cannot be used (not a database, unreadable); the message names the file."""


class History:
    """Read and write the run history in a SQLite file (created on first use)."""

    def __init__(self, path: str | Path = DEFAULT_HISTORY) -> None:
        self.path = Path(path)
        try:
            self.db = sqlite_utils.Database(self.path)
            self.db.enable_wal()
            for table, (columns, pk) in _SCHEMA.items():
                self.db[table].create(columns, pk=pk, if_not_exists=True)
            self.db["invocations"].create_index(["run_id", "round"], if_not_exists=True)
        except sqlite3.DatabaseError as error:
            raise HistoryError(f"{self.path} is not a usable fedless_nb history database ({error}); "
                               "point history at another file") from None

    def close(self) -> None:
        self.db.close()

    # writing -------------------------------------------------------------------------------
    def start_run(self, event: RunStarted) -> None:
        with self.db.conn:
            self.db["runs"].insert({
                "run_id": event.run_id, "name": event.name, "status": "running", "started_at": event.started_at,
                "rounds": event.rounds, "rounds_completed": 0, "clients": event.clients,
                "config": json.dumps(event.config), "providers": json.dumps(event.providers),
            })

    def record_round(self, event: RoundFinished, invocations: list[InvocationFinished]) -> None:
        """A finished round and its invocations, in one transaction: a round is recorded whole or not at all."""
        with self.db.conn:
            self.db["invocations"].insert_all((_invocation_row(i) for i in invocations), alter=True)
            self.db["rounds"].insert({
                "run_id": event.run_id, "round": event.round, "started_at": event.started_at,
                "finished_at": event.finished_at, "duration": event.finished_at - event.started_at,
                "selected": event.selected, "succeeded": event.succeeded, "failed": event.failed,
            }, replace=True)
            self.db["metrics"].insert_all(
                ({"run_id": event.run_id, "round": event.round, "scope": scope, "name": name, "value": value}
                 for scope, values in (("eval", event.eval_metrics), ("train", event.train_metrics),
                                       ("privacy", event.privacy_metrics))
                 for name, value in values.items()),
                replace=True,
            )
            self.db["runs"].update(event.run_id, {"rounds_completed": event.round})

    def finish_run(self, event: RunFinished) -> None:
        with self.db.conn:
            self.db["runs"].update(event.run_id, {
                "status": event.status, "finished_at": event.finished_at,
                "rounds_completed": event.rounds_completed, "error": event.error,
            })

    # reading -------------------------------------------------------------------------------
    def runs(self) -> list[dict[str, Any]]:
        """Every run, newest first, with its final eval metrics."""
        runs = list(self.db["runs"].rows_where(order_by="started_at desc"))
        for run in runs:
            run.update(self.final_metrics(run["run_id"]))
        return runs

    def run(self, run_id: str) -> dict[str, Any]:
        rows = list(self.db["runs"].rows_where("run_id = ?", [run_id]))
        if not rows:
            raise HistoryError(f"no run {run_id!r} in {self.path}")
        run = rows[0]
        run["config"] = json.loads(run["config"])
        run["providers"] = json.loads(run["providers"])
        return run

    def final_metrics(self, run_id: str) -> dict[str, float]:
        """The last recorded round's eval metrics, as eval_<name>."""
        rows = self.db.execute(
            "select name, value from metrics where run_id = ? and scope = 'eval' and round = "
            "(select max(round) from metrics where run_id = ?)", [run_id, run_id],
        ).fetchall()
        return {f"eval_{name}": value for name, value in rows}

    def rounds(self, run_id: str) -> list[dict[str, Any]]:
        """One row per finished round, with its metrics as eval_<name> and train_<name> columns."""
        rounds = {row["round"]: row for row in self.db["rounds"].rows_where("run_id = ?", [run_id], order_by="round")}
        for row in self.db["metrics"].rows_where("run_id = ?", [run_id]):
            rounds[row["round"]][f"{row['scope']}_{row['name']}"] = row["value"]
        return list(rounds.values())

    def invocations(self, run_id: str) -> list[dict[str, Any]]:
        return list(self.db["invocations"].rows_where("run_id = ?", [run_id], order_by="id"))

    def runs_frame(self) -> Any:
        return _frame(self.runs())

    def rounds_frame(self, run_id: str) -> Any:
        return _frame(self.rounds(run_id))

    def invocations_frame(self, run_id: str) -> Any:
        return _frame(self.invocations(run_id))


def _frame(rows: list[dict[str, Any]]) -> Any:
    import pandas as pd

    return pd.DataFrame(rows)


def _invocation_row(event: InvocationFinished) -> dict[str, Any]:
    return {
        "run_id": event.run_id, "round": event.round, "client_id": event.client_id, "provider": event.provider,
        "outcome": event.outcome, "cold": None if event.cold is None else int(event.cold),
        "num_examples": event.num_examples, "started_at": event.started_at, "finished_at": event.finished_at,
        **{f"t_{name}": event.timings.get(name) for name in TIMINGS}, "cause": event.cause, "error": event.error,
        "staleness": event.staleness,
    }


class HistoryWriter:
    """Observer that records a run: invocations are buffered and written with their round."""

    def __init__(self, history: History) -> None:
        self.history = history
        self._pending: list[InvocationFinished] = []

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.history.start_run(event)
        elif isinstance(event, InvocationFinished):
            self._pending.append(event)
        elif isinstance(event, RoundFinished):
            # <=: an async round also records the late updates dispatched in earlier rounds
            invocations = [i for i in self._pending if i.round <= event.round]
            self._pending = [i for i in self._pending if i.round > event.round]
            self.history.record_round(event, invocations)
        elif isinstance(event, RunFinished):
            self.history.finish_run(event)
