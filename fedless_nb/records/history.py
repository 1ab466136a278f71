"""Every run's history in one local SQLite file, through sqlite-utils.

Tables: runs (one row per run, with its config), rounds (timing and counts per round),
invocations (one row per function call: client, provider, cold or warm, each timing,
outcome, error text, estimated cost, staleness in async runs, the protocol stage in secure rounds, whether privacy
accounting charged it), sent (every attempt of a client call as it is sent, written at once: what a resume charges
for the calls a killed controller never saw finish),
round_failures (why a run of a round could not finish, e.g. a secure round with too few clients left) and metrics (per round, long form:
scope "eval", "train" or "privacy", name, value). The file uses WAL mode so a notebook can read a
run while another process writes one, and several runs may share one file: writers wait for each
other (busy timeout, immediate write transactions) instead of failing on "database is locked".

A run never loses its record to the history: when the file becomes unwritable mid-run (locked
for too long, disk full, deleted), the writer keeps the run going and spills what it could not
write to a side file `<history>.<run_id>.pending.jsonl`; the next time the history is opened it
replays and removes such files. Every write is idempotent, so a replay never counts twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import sqlite_utils

from .cost import CostModel, cost_report
from .owner import owner_state
from ..errors import UserError
from ..run_ids import matching_run_id
from ..rounds.events import (AggregationFinished, Event, InvocationFinished, InvocationSent, RoundFailed, RoundFinished,
                             RunFinished, RunStarted, UpdateRejected)

log = logging.getLogger(__name__)
BUSY_TIMEOUT = 30.0  # seconds a writer waits for another process's transaction before giving up

DEFAULT_HISTORY = "fedless_history.db"
# the option that names the history, as the terminal and the magics spell it (a Python call's keyword after it): the
# errors said "point history at another file", which names no option a terminal user can type
HISTORY_OPTION = "--history PATH (history=... in Python)"
ANOTHER_FILE = f"name another file with {HISTORY_OPTION}"


def with_history_option_typed(message: str) -> str:
    """An error's line as the terminal tool or a magic shows it: their users type `--history PATH`, never the Python
    keyword the history's own line names beside it for a caller it cannot tell."""
    return message.replace(HISTORY_OPTION, "--history PATH")


TIMINGS = ("cold_start", "build", "load", "train", "upload", "total")

_SCHEMA: dict[str, tuple[dict[str, Any], Any]] = {
    "runs": ({
        "run_id": str, "name": str, "status": str, "started_at": float, "finished_at": float,
        "rounds": int, "rounds_completed": int, "clients": int, "config": str, "providers": str, "error": str, "cost": float,
        "observer_errors": str,  # JSON: observers that raised during the run (name -> count)
        "owner": str,  # the process running it (owner.py): a "running" run whose owner is gone reads "interrupted"
    }, "run_id"),
    "rounds": ({
        "run_id": str, "round": int, "started_at": float, "finished_at": float, "duration": float,
        "selected": int, "succeeded": int, "failed": int, "cost": float,
    }, ("run_id", "round")),
    "invocations": ({
        "id": int, "run_id": str, "round": int, "client_id": str, "provider": str, "outcome": str,
        "cold": int, "num_examples": int, "started_at": float, "finished_at": float,
        **{f"t_{name}": float for name in TIMINGS}, "cause": str, "error": str, "cost": float, "staleness": int,
        "steps": int, "partial": int, "stage": str,
        "budget_epochs": float,  # a simulated straggler's cut: a redone round's first release is charged by it
        "charged": int,  # privacy accounting charged it (it may have trained): a resume charges these again
        "sent": int,  # the attempt's seq in the `sent` table (None: written before that table)
    }, "id"),
    # Every attempt of a client call, written as it is sent, before it can train (InvocationSent): a resume charges the
    # ones its checkpoint does not count, also those that never reached the invocations as finished (the controller's
    # process was killed outright). Never rewritten: a redone round adds its own.
    "sent": ({
        "run_id": str, "seq": int, "round": int, "client_id": str, "provider": str, "stage": str, "sent_at": float,
        "budget_epochs": float,
    }, ("run_id", "seq")),
    "aggregations": ({  # aggregator functions' invocations (tree aggregation, rounds/tree.py)
        "id": int, "run_id": str, "round": int, "aggregator_id": str, "provider": str, "level": int, "outcome": str,
        "started_at": float, "finished_at": float, "shard_size": int, "summed": int, "rejected": int,
        "bytes_read": int, "bytes_written": int, "error": str, "cost": float,
    }, "id"),
    "round_failures": ({"run_id": str, "round": int, "failed_at": float, "reason": str}, ("run_id", "round", "failed_at")),
    "metrics": ({"run_id": str, "round": int, "scope": str, "name": str, "value": float},
                ("run_id", "round", "scope", "name")),
}


class HistoryError(UserError):
    """The history file cannot be used (not a database, unreadable); the message names the file."""


class History:
    """Read and write the run history in a SQLite file (created on first use)."""

    @classmethod
    def existing(cls, path: str | Path = DEFAULT_HISTORY) -> "History":
        """The history at `path` for reading: a missing file is one line naming it, and is not created empty
        (a command that only reads, such as `fedless-nb history` or `resume`, leaves nothing behind)."""
        if Path(path).is_dir():
            raise HistoryError(f"{path} is a folder: name the history file in it with {HISTORY_OPTION}, for example "
                               f"{Path(path) / DEFAULT_HISTORY}")
        if not Path(path).is_file():
            raise HistoryError(f"no history file {path} yet: run an experiment first, or name an existing file "
                               f"with {HISTORY_OPTION}")
        return cls(path)

    def __init__(self, path: str | Path = DEFAULT_HISTORY, *, busy_timeout: float = BUSY_TIMEOUT) -> None:
        self.path = Path(path)
        self._cost_models: dict[str, CostModel] = {}
        waited_until = time.monotonic() + busy_timeout
        while True:
            try:
                self.db = self._open(busy_timeout)
                break
            except sqlite3.OperationalError as error:
                locked = is_locked(error)
                if locked and time.monotonic() < waited_until:  # SQLite skips its busy wait in some states
                    time.sleep(0.05)
                    continue
                if not locked:
                    raise HistoryError(_unopenable(self.path, error)) from None
                raise HistoryError(f"{self.path} is locked by another process (waited {busy_timeout:g}s); "
                                   f"close the program holding it or {ANOTHER_FILE}") from None
            except sqlite3.DatabaseError as error:
                raise HistoryError(f"{self.path} is not a usable fedless_nb history database ({error}); "
                                   f"{ANOTHER_FILE}") from None
        self.replay_pending()

    def _open(self, busy_timeout: float) -> sqlite_utils.Database:
        # Immediate write transactions take the write lock up front, so a busy writer waits
        # (busy_timeout) rather than failing when its read snapshot went stale.
        connection = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level="IMMEDIATE")
        try:
            db = sqlite_utils.Database(connection)
            if db.journal_mode != "wal":
                db.enable_wal()
            # In WAL mode NORMAL syncs at checkpoints, not at each commit: a commit survives its process being killed
            # (only a power loss may take the last ones back), and costs 0.25 ms here instead of 5-9 ms, which the
            # write-ahead record of every attempt (InvocationSent) pays on the event loop, 100 times a round at scale.
            db.execute("pragma synchronous = NORMAL")
            for table, (columns, pk) in _SCHEMA.items():
                db[table].create(columns, pk=pk, if_not_exists=True)
                db[table].add_missing_columns([columns])  # a history written before a column existed
            db["invocations"].create_index(["run_id", "round"], if_not_exists=True)
        except sqlite3.DatabaseError:
            connection.close()
            raise
        return db

    def close(self) -> None:
        self.db.close()

    # writing -------------------------------------------------------------------------------
    def start_run(self, event: RunStarted) -> None:
        """The run's row; a run already recorded is kept (a replay), or marked running again (a resumed run)."""
        with self.db.conn:
            self.db["runs"].insert({
                "run_id": event.run_id, "name": event.name, "status": "running", "started_at": event.started_at,
                "rounds": event.rounds, "rounds_completed": 0, "clients": event.clients,
                "config": json.dumps(event.config), "providers": json.dumps(event.providers), "cost": 0.0,
                "owner": event.owner,
            }, ignore=True)
            if event.resumed_from:
                self.db["runs"].update(event.run_id, {"status": "running", "finished_at": None, "error": None,
                                                      "owner": event.owner})

    def record_round(self, event: RoundFinished, invocations: list[InvocationFinished]) -> None:
        """A finished round and its invocations, in one transaction: a round is recorded whole or not at all,
        and recording it again replaces it (never counts it twice)."""
        prices = self.cost_model(event.run_id)
        rows = [_invocation_row(invocation, prices) for invocation in invocations]
        with self.db.conn:
            self._replace_invocations({(event.run_id, event.round)}, rows)
            self.db["rounds"].insert({
                "run_id": event.run_id, "round": event.round, "started_at": event.started_at,
                "finished_at": event.finished_at, "duration": event.finished_at - event.started_at,
                "selected": event.selected, "succeeded": event.succeeded, "failed": event.failed,
                "cost": sum(row["cost"] for row in rows) + self._aggregations_cost(event.run_id, event.round),
            }, replace=True)
            self.db["metrics"].insert_all(
                ({"run_id": event.run_id, "round": event.round, "scope": scope, "name": name, "value": value}
                 for scope, values in (("eval", event.eval_metrics), ("train", event.train_metrics),
                                       ("privacy", event.privacy_metrics))
                 for name, value in values.items()),
                replace=True,
            )
            self.db.execute("update runs set rounds_completed = max(coalesce(rounds_completed, 0), ?) where run_id = ?",
                            [event.round, event.run_id])
            self._sum_run_cost(event.run_id)

    def _sum_run_cost(self, run_id: str) -> None:
        """Inside a transaction: the run's cost is its rounds' (client and aggregator invocations)."""
        self.db.execute("update runs set cost = (select coalesce(sum(cost), 0) from rounds where run_id = ?) "
                        "where run_id = ?", [run_id, run_id])

    def _aggregations_cost(self, run_id: str, round_number: int) -> float:
        return self.db.execute("select coalesce(sum(cost), 0) from aggregations where run_id = ? and round = ?",
                               [run_id, round_number]).fetchone()[0]

    def record_sent(self, event: InvocationSent) -> None:
        """An attempt as it is sent (written ahead of its outcome; the same attempt again replaces its row)."""
        with self.db.conn:
            self.db["sent"].insert(dataclasses.asdict(event), replace=True)

    def record_invocations(self, invocations: list[InvocationFinished]) -> None:
        """Invocations recorded as the run ended: those of a round that never finished (they are replaced if the round
        is recorded later), and those an asynchronous run's end left running of a round already recorded, which join
        its rows (each replacing only its own)."""
        rows = [_invocation_row(invocation, self.cost_model(invocation.run_id)) for invocation in invocations]
        with self.db.conn:
            unfinished = {(row["run_id"], row["round"]) for row in rows
                          if not self.db.execute("select 1 from rounds where run_id = ? and round = ?",
                                                 [row["run_id"], row["round"]]).fetchone()}
            self._replace_invocations(unfinished, rows)

    def record_aggregations(self, aggregations: list[AggregationFinished]) -> None:
        """A round's aggregator invocations, each priced like a client invocation of its provider and counted in
        its round's and run's cost (whichever is recorded first); recording a round's again replaces them."""
        rows = [_aggregation_row(event, self.cost_model(event.run_id)) for event in aggregations]
        with self.db.conn:
            rounds = {(row["run_id"], row["round"]) for row in rows}
            before = {key: self._aggregations_cost(*key) for key in rounds}
            for run_id, round_number in rounds:
                self.db.execute("delete from aggregations where run_id = ? and round = ?", [run_id, round_number])
            self.db["aggregations"].insert_all(rows)
            for run_id, round_number in rounds:  # a round already recorded: its cost gains (or replaces) these
                self.db.execute("update rounds set cost = cost + ? where run_id = ? and round = ?",
                                [self._aggregations_cost(run_id, round_number) - before[run_id, round_number],
                                 run_id, round_number])
            for run_id in {run_id for run_id, _ in rounds}:
                self._sum_run_cost(run_id)

    def aggregations(self, run_id: str) -> list[dict[str, Any]]:
        return list(self.db.query("select * from aggregations where run_id = ? order by round, id", [run_id]))

    def _replace_invocations(self, rounds: set[tuple[str, int]], rows: list[dict[str, Any]]) -> None:
        """Inside a transaction: the invocations of `rounds` become `rows` (a rewrite never counts twice)."""
        for run_id, round_number in rounds:
            self.db.execute("delete from invocations where run_id = ? and round = ?", [run_id, round_number])
        for row in rows:  # a late arrival from an earlier round (async): replace only its own row
            if (row["run_id"], row["round"]) not in rounds:
                self.db.execute("delete from invocations where run_id = ? and round = ? and client_id = ? "
                                "and started_at = ? and finished_at = ?",
                                [row[name] for name in ("run_id", "round", "client_id", "started_at", "finished_at")])
        if rows:  # one prepared statement for the round's rows (sqlite-utils' insert_all rebuilds its SQL per chunk)
            names = list(rows[0])
            self.db.conn.executemany(f"insert into invocations ({', '.join(names)}) values ({', '.join('?' * len(names))})",
                                     [[row[name] for name in names] for row in rows])

    def cost_model(self, run_id: str) -> CostModel:
        """The prices of a run's providers, as recorded at its start (see cost.py)."""
        if run_id not in self._cost_models:
            rows = self.db.execute("select providers, config from runs where run_id = ?", [run_id]).fetchall()
            providers, config = rows[0] if rows else ("[]", "{}")
            self._cost_models[run_id] = CostModel.for_run(
                {"providers": json.loads(providers or "[]"), "config": json.loads(config or "{}")})
        return self._cost_models[run_id]

    def pending_files(self) -> list[Path]:
        """Side files of runs whose writes could not reach this history (see the module docstring)."""
        return sorted(self.path.parent.glob(f"{self.path.name}.*.pending.jsonl"))

    def replay_pending(self) -> None:
        """Write what earlier runs spilled to side files, then remove them; a file that cannot be
        written yet stays for the next time."""
        for side_file in self.pending_files():
            try:
                for line in side_file.read_text().splitlines():
                    if line.strip():
                        apply_write(self, json.loads(line))
            except (sqlite3.Error, OSError) as error:
                log.warning("cannot replay %s into %s yet (%s)", side_file.name, self.path, error)
                continue
            except (ValueError, KeyError, TypeError) as error:  # not ours, or cut short: never retried on every open
                quarantined = side_file.with_name(side_file.name.removesuffix(".jsonl") + ".corrupt")
                side_file.replace(quarantined)
                log.error("%s is corrupt (%s: %s); moved aside to %s, its remaining writes are lost",
                          side_file.name, type(error).__name__, error, quarantined.name)
                continue
            side_file.unlink(missing_ok=True)
            log.info("recovered the spilled history writes of %s", side_file.name)

    def record_round_failure(self, event: RoundFailed) -> None:
        """Why a run of a round could not finish; recording it again replaces it."""
        with self.db.conn:
            self.db["round_failures"].insert(dataclasses.asdict(event), replace=True)

    def round_failures(self, run_id: str) -> list[dict[str, Any]]:
        return list(self.db["round_failures"].rows_where("run_id = ?", [run_id], order_by="failed_at"))

    def finish_run(self, event: RunFinished) -> None:
        with self.db.conn:
            self.db["runs"].update(event.run_id, {
                "status": event.status, "finished_at": event.finished_at,
                "rounds_completed": event.rounds_completed, "error": event.error,
                "observer_errors": json.dumps(event.observer_errors) if event.observer_errors else None,
            })

    # reading -------------------------------------------------------------------------------
    def runs(self) -> list[dict[str, Any]]:
        """Every run, newest first, with its final eval metrics."""
        runs = [_with_live_status(run) for run in self.db["runs"].rows_where(order_by="started_at desc")]
        for run in runs:
            run.update(self.final_metrics(run["run_id"]))
        return runs

    def run(self, run_id: str) -> dict[str, Any]:
        """Run `run_id`, or the one run whose id begins with it (run_ids.py); its "run_id" is the whole id."""
        rows = list(self.db["runs"].rows_where("run_id = ?", [run_id]))
        if not rows:  # a beginning of an id (or a mistyped one): only then are all the ids read
            known = [row[0] for row in self.db.execute("select run_id from runs")]
            matched = matching_run_id(run_id, known)
            rows = list(self.db["runs"].rows_where("run_id = ?", [matched])) if matched else []
        if not rows:
            close = difflib.get_close_matches(run_id, known, n=1)
            hint = (f"; did you mean {close[0]!r}?" if close else
                    f"; a run recorded in another file needs {HISTORY_OPTION}")
            raise HistoryError(f"no run {run_id!r} in {self.path}{hint}")
        run = _with_live_status(rows[0])
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

    def sent(self, run_id: str) -> list[dict[str, Any]]:
        """The run's attempts as they were sent (the write-ahead record), in the order they were."""
        return list(self.db["sent"].rows_where("run_id = ?", [run_id], order_by="seq"))

    def runs_frame(self) -> Any:
        return _frame(self.runs())

    def rounds_frame(self, run_id: str) -> Any:
        return _frame(self.rounds(run_id))

    def invocations_frame(self, run_id: str) -> Any:
        return _frame(self.invocations(run_id))

    def cost(self, run_id: str, server_hourly_price: float | None = None) -> dict[str, Any]:
        """The run's cost report (records.cost.cost_report): per round, per provider, against a server."""
        run = self.run(run_id)
        return cost_report(run, self.invocations(run["run_id"]), self.rounds(run["run_id"]), server_hourly_price,
                           self.aggregations(run["run_id"]))


def run_cost(history: History | str | Path, run_id: str, server_hourly_price: float | None = None) -> dict[str, Any]:
    """A run's cost report from a History or the path of a history file."""
    if isinstance(history, History):
        return history.cost(run_id, server_hourly_price)
    with contextlib.closing(History(history)) as owned:
        return owned.cost(run_id, server_hourly_price)


def pending_file(history: Path, run_id: str) -> Path:
    """Where a run's writes wait while its history cannot take them (HistoryWriter), until the history is next
    opened writable (History.replay_pending)."""
    return history.with_name(f"{history.name}.{run_id}.pending.jsonl")


def is_locked(error: sqlite3.Error) -> bool:
    """Whether `error` is another connection's lock (SQLITE_BUSY, SQLITE_LOCKED and their extended codes, such as
    SQLITE_BUSY_SNAPSHOT), told by SQLite's result code: its message is words that may change, and any other
    error whose words held "locked" or "busy" was waited on for the whole busy timeout, then called a lock."""
    return ((getattr(error, "sqlite_errorcode", None) or 0) & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _unopenable(path: Path, error: sqlite3.Error) -> str:
    """Why SQLite cannot open `path`, in the user's terms where they can be told (its own words say only
    "unable to open database file")."""
    if path.is_dir():
        return f"{path} is a folder: name a file in it with {HISTORY_OPTION}, for example {path / DEFAULT_HISTORY}"
    if not path.parent.is_dir():
        return f"{path}: the folder {path.parent} does not exist; create it or {ANOTHER_FILE}"
    return f"{path} cannot be opened as a history database ({error}); check the path and its permissions, or {ANOTHER_FILE}"


def _with_live_status(run: dict[str, Any]) -> dict[str, Any]:
    """A run recorded as running whose process is gone (a restarted kernel, a killed process) as "interrupted":
    it trains no more, and `fedless-nb resume` continues it. The file is not changed (a reader never writes)."""
    if run["status"] == "running" and owner_state(run.get("owner")) == "gone":
        run["status"] = "interrupted"
    return run


def _frame(rows: list[dict[str, Any]]) -> Any:
    import pandas as pd

    return pd.DataFrame(rows)


def _invocation_row(event: InvocationFinished, prices: CostModel) -> dict[str, Any]:
    cost = prices.invocation(event.provider, event.started_at, event.finished_at, event.timings)
    return {
        "run_id": event.run_id, "round": event.round, "client_id": event.client_id, "provider": event.provider,
        "outcome": event.outcome, "cold": None if event.cold is None else int(event.cold),
        "num_examples": event.num_examples, "started_at": event.started_at, "finished_at": event.finished_at,
        **{f"t_{name}": event.timings.get(name) for name in TIMINGS}, "cause": event.cause, "error": event.error,
        "cost": cost,
        "staleness": event.staleness, "stage": event.stage,
        "steps": event.steps, "partial": None if event.partial is None else int(event.partial),
        "budget_epochs": event.budget_epochs, "charged": None if event.charged is None else int(event.charged),
        "sent": event.sent,
    }


def _aggregation_row(event: AggregationFinished, prices: CostModel) -> dict[str, Any]:
    return {**dataclasses.asdict(event), "cost": prices.invocation(event.provider, event.started_at, event.finished_at, None)}


_EVENT_TYPES = {cls.__name__: cls for cls in (RunStarted, RoundFinished, RoundFailed, InvocationFinished, RunFinished,
                                              AggregationFinished, InvocationSent)}


def _encode(event: Any) -> dict[str, Any]:
    return {"type": type(event).__name__, **dataclasses.asdict(event)}


def _decode(data: Any) -> Any:
    """An event back from its spilled form (an event already is one)."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    return _EVENT_TYPES[data.pop("type")](**data)


def _encoded_write(write: dict[str, Any]) -> dict[str, Any]:
    """A write as its side file's JSON line holds it: the events as plain data."""
    return {name: [_encode(event) for event in value] if name in ("invocations", "aggregations") else
            _encode(value) if name == "event" else value for name, value in write.items()}


def apply_write(history: History, write: dict[str, Any]) -> None:
    """One write (see HistoryWriter), its events as objects or as a side file spilled them, applied to `history`."""
    invocations = [_decode(invocation) for invocation in write.get("invocations", ())]
    if write["write"] == "record_aggregations":
        history.record_aggregations([_decode(event) for event in write["aggregations"]])
    elif write["write"] == "record_invocations":
        history.record_invocations(invocations)
    elif write["write"] == "record_round":
        history.record_round(_decode(write["event"]), invocations)
    else:
        getattr(history, write["write"])(_decode(write["event"]))


class HistoryWriter:
    """Observer that records a run: invocations are buffered and written with their round.

    A write the history refuses (locked beyond the busy timeout, disk full, file gone) does not end
    the run: it stays in a backlog, retried before the next write, and the backlog is kept on disk
    in the run's side file until it has been written (see the module docstring).
    """

    def __init__(self, history: History) -> None:
        self.history = history
        self._pending: list[InvocationFinished] = []
        self._aggregations: list[AggregationFinished] = []
        self._backlog: list[dict[str, Any]] = []
        self.side_file: Path | None = None
        self.dropped_writes = 0  # writes that failed for a reason other than the file (logged, never retried)

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self._write(event.run_id, {"write": "start_run", "event": event})
        elif isinstance(event, InvocationSent):  # written ahead, at once: a process killed next still leaves it
            self._write(event.run_id, {"write": "record_sent", "event": event})
        elif isinstance(event, InvocationFinished):
            self._pending.append(event)
        elif isinstance(event, AggregationFinished):
            self._aggregations.append(event)
        elif isinstance(event, UpdateRejected):  # the success it supersedes becomes a failure, timings kept
            self._pending = [
                dataclasses.replace(i, outcome="failed", cause="rejected", error=event.reason)
                if (i.round, i.client_id, i.outcome, i.stage) == (event.round, event.client_id, "succeeded", event.stage)
                else i
                for i in self._pending
            ]
        elif isinstance(event, RoundFinished):
            # <=: an async round also records the late updates dispatched in earlier rounds
            invocations = [i for i in self._pending if i.round <= event.round]
            self._pending = [i for i in self._pending if i.round > event.round]
            self._write(event.run_id, {"write": "record_round", "event": event, "invocations": invocations})
            if self._aggregations:
                self._write(event.run_id, {"write": "record_aggregations", "aggregations": self._aggregations})
                self._aggregations = []
        elif isinstance(event, RoundFailed):
            self._write(event.run_id, {"write": "record_round_failure", "event": event})
        elif isinstance(event, RunFinished):
            if self._pending:  # the invocations of a round the run ended in (quorum missed, interrupted)
                self._write(event.run_id, {"write": "record_invocations", "invocations": self._pending})
                self._pending = []
            if self._aggregations:  # and its aggregators'
                self._write(event.run_id, {"write": "record_aggregations", "aggregations": self._aggregations})
                self._aggregations = []
            self._write(event.run_id, {"write": "finish_run", "event": event})

    def _write(self, run_id: str, write: dict[str, Any]) -> None:
        self._backlog.append(write)
        while self._backlog:
            try:
                apply_write(self.history, self._backlog[0])
            except (sqlite3.Error, OSError) as error:
                self._spill(run_id, error)
                return
            except Exception:  # a write that can never succeed must not hold back the ones after it
                log.exception("history %s refused a %s write; it is dropped", self.history.path, self._backlog[0]["write"])
                self.dropped_writes += 1
            self._backlog.pop(0)
        if self.side_file is not None:
            self.side_file.unlink(missing_ok=True)
            log.warning("history %s is writable again; the spilled writes are in it", self.history.path)
            self.side_file = None

    def _spill(self, run_id: str, error: Exception) -> None:
        """Keep the unwritten backlog on disk next to the history, replacing the previous copy whole."""
        side_file = pending_file(self.history.path, run_id)
        partial = side_file.with_suffix(f".tmp{time.monotonic_ns()}")
        try:
            partial.write_text("".join(json.dumps(_encoded_write(write)) + "\n" for write in self._backlog))
            partial.replace(side_file)
        except OSError as side_error:  # the directory is gone or full too: keep the backlog in memory
            log.error("cannot write history %s (%s) nor its side file (%s); %d writes wait in memory",
                      self.history.path, error, side_error, len(self._backlog))
            return
        if self.side_file is None:
            log.warning("cannot write history %s (%s); the run continues and keeps its record in %s until it can",
                        self.history.path, error, side_file)
        self.side_file = side_file
