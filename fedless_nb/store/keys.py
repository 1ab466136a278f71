"""Where each object lives in the store. One place, so the controller and functions agree."""

from __future__ import annotations

import re
from typing import Any


def global_weights_key(run_id: str, round_number: int) -> str:
    """The global model after `round_number` rounds (round 0: the initial weights)."""
    return f"runs/{run_id}/round-{round_number:05d}/global.weights"


def round_prefix(run_id: str, round_number: int) -> str:
    """Everything a round writes: its updates, corrections, secure-round objects and global model."""
    return f"runs/{run_id}/round-{round_number:05d}"


def round_updates_prefix(run_id: str, round_number: int) -> str:
    """The folder of a round's client updates (what a repeat of the round writes again)."""
    return f"{round_prefix(run_id, round_number)}/updates"


def update_key(run_id: str, round_number: int, client_id: str) -> str:
    """The one key a client may write in a round: its own update."""
    return f"{round_updates_prefix(run_id, round_number)}/{client_id}.weights"


def client_data_key(partition_id: str, client_id: str) -> str:
    """A client's training data; shared by every run that uses the same dataset and partition."""
    return f"data/{partition_id}/{client_id}.arrays"


def control_variate_key(run_id: str, round_number: int, client_id: str) -> str:
    """SCAFFOLD's control variate c_i of one client as round `round_number` left it: under the round that wrote
    it, so a resumed run, which clears the rounds after its checkpoint, never reads a newer c_i than its c."""
    return f"{round_prefix(run_id, round_number)}/scaffold/{client_id}.control"


def legacy_control_variate_key(run_id: str, client_id: str) -> str:
    """Where SCAFFOLD kept a client's c_i before it was stored per round: one fixed key, rewritten every round."""
    return f"runs/{run_id}/scaffold/{client_id}.control"


def correction_key(run_id: str, round_number: int, client_id: str) -> str:
    """SCAFFOLD's gradient correction c - c_i that a client reads in a round."""
    return f"runs/{run_id}/round-{round_number:05d}/corrections/{client_id}.weights"


def secagg_key(run_id: str, round_number: int, client_id: str, stage: str, attempt: int = 1) -> str:
    """What a client wrote in one stage of a secure round (`attempt`: the round's run, since a round
    below its quorum runs again and a function refuses to overwrite an object)."""
    return f"runs/{run_id}/round-{round_number:05d}/secagg-{attempt}/{client_id}.{stage}"


def secagg_relay_key(run_id: str, round_number: int, client_id: str, stage: str, attempt: int = 1) -> str:
    """The controller's copy of a client's stage object once it accepted it: what the client's peers read, since
    the client may still write its own key (its grant lasts to the stage deadline) after the controller checked it."""
    return f"runs/{run_id}/round-{round_number:05d}/secagg-{attempt}-relayed/{client_id}.{stage}"


def aggregate_key(run_id: str, round_number: int, aggregator_id: str, round_run: int = 1, attempt: int = 1) -> str:
    """Where an aggregator function writes its partial sum of a round (tree aggregation): per run of the round
    (`round_run`: a round below its quorum runs again) and per `attempt` of the invocation, since a function
    refuses to overwrite an object (a replay), so a retried aggregator writes a key of its own."""
    return f"{round_prefix(run_id, round_number)}/aggregates-{round_run}/{aggregator_id}.{attempt}.sum"


def task_keys_problem(task: dict[str, Any]) -> str | None:
    """Why a signed task's store keys are not its own, or None: it writes only its client's key of its run and round
    (its update, a secure stage's object, or an aggregator's partial sum, as the controller names them), trains as
    _training_reads_problem says, and reads nothing of another run. A secret's holder signs tasks of any run, round
    and key, so a function's token check alone let one client's key overwrite or pre-empt another client's update,
    another round's or run's objects or a partition's data, or train on another client's objects, wherever the
    function's store is shared (a local folder under its FEDLESS_STORE_ROOTS)."""
    run_id, round_number, client_id = str(task["run_id"]), int(task["round"]), str(task["client_id"])
    own = re.escape(round_prefix(run_id, round_number)) + "/"
    client = re.escape(client_id)
    if task.get("kind") == "aggregate":
        written, reads = own + rf"aggregates-\d+/{client}\.\d+\.sum", [task.get("weights")]
        reads += [entry.get("key") for entry in task.get("entries", ()) if isinstance(entry, dict)]
        named = ""
    else:
        expected = _client_update_key(task, run_id, round_number, client_id)
        written, named = re.escape(expected), f" ({expected})"
        reads = [task.get("weights")]  # its data and correction must be its own (_training_reads_problem)
    if not re.fullmatch(written, str(task["update"])):
        return (f"the task writes {task['update']!r}, which is not {client_id}'s own key in run {run_id}, round "
                f"{round_number}{named}")
    if task.get("kind") != "aggregate" and (problem := _training_reads_problem(task, run_id, round_number, client_id)):
        return problem
    other = next((key for key in reads if isinstance(key, str) and key.startswith("runs/")
                  and not key.startswith(f"runs/{run_id}/")), None)
    return None if other is None else f"the task reads {other!r}, which belongs to another run than {run_id}"


def _train_of(task: dict[str, Any]) -> dict[str, Any]:
    return task["train"] if isinstance(task.get("train"), dict) else {}


def _client_update_key(task: dict[str, Any], run_id: str, round_number: int, client_id: str) -> str:
    """The one key a client task writes: its round's update, or the object of the very secure stage and attempt its
    train.secagg names. A key of another stage or attempt let one client's key have a secure stage done again under a
    key not yet written (a reveal with another `dropped` list: both shares of a peer's secrets), past the check that
    refuses an object that exists, and a stage's object written where the controller reads another stage's."""
    secagg = _train_of(task).get("secagg")
    if not isinstance(secagg, dict):
        return update_key(run_id, round_number, client_id)
    return secagg_key(run_id, round_number, client_id, str(secagg.get("stage")), secagg.get("attempt", 1))


def _training_reads_problem(task: dict[str, Any], run_id: str, round_number: int, client_id: str) -> str | None:
    """Why a client task does not train on its own objects, or None: its client's data (client_data_key's shape),
    from the global model its round starts from, corrected by its client's own SCAFFOLD correction, as the
    controller names them. Naming another client's data, update or correction, a task would train on it, and the
    reply (its metrics, a refusal's shapes) would tell of what it holds."""
    data, weights = task.get("data"), task.get("weights")
    correction = _train_of(task).get("correction")
    if data is not None and not re.fullmatch(rf"data/[A-Za-z0-9_-]+/{re.escape(client_id)}\.arrays", str(data)):
        return f"the task trains on {data!r}, which is not {client_id}'s own data ({client_data_key('<partition>', client_id)})"
    start = global_weights_key(run_id, round_number - 1)
    if isinstance(weights, str) and weights != start and weights.startswith((f"runs/{run_id}/", "data/")):
        return f"the task starts from {weights!r}, which is not the global model its round starts from ({start})"
    own_correction = correction_key(run_id, round_number, client_id)
    if correction is not None and correction != own_correction:
        return f"the task corrects its training with {correction!r}, which is not {client_id}'s own ({own_correction})"
    return None
