"""From a validated config to a finished run: data, store, model, providers, controller, history.

This is the wiring the notebook magics and the terminal tool share; neither talks to the
controller directly.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .rounds.checkpoint import Checkpoint, checkpoint_key, decode_checkpoint
from .function.batching import privacy_facts, steps_under_cut
from .rounds.controller import ClientRef, Controller, RoundPlan
from .data import Dataset, check_feature_skew, client_inputs, partition_from_settings, partition_options
from .rounds.events import Observer
from .rounds.evaluation import Evaluator
from .experiment import ExperimentConfig
from .errors import UserError
from .records.history import DEFAULT_HISTORY, History, HistoryWriter
from .records.owner import owner_state
from .fit import preflight
from .model import ModelSpec, build_model
from .providers.base import Provider
from .providers.registry import assign_clients, make_provider
from .privacy.accounting import ExampleLevelAccountant, StragglerSteps, charged, may_have_trained
from .rounds.resilience import RoundPolicy
from .rounds.stragglers import Stragglers
from .rounds.tree import TreeOptions
from .rounds.selection import BudgetedSelection, PoissonSelection, SelectionPolicy, make_selection
from .store import LocalStore, MissingKeyError, Store, decode_arrays, encode_arrays, make_store
from .store.keys import client_data_key, global_weights_key
from .strategies import Strategy, make_strategy
from .strategies.central_dp import CentralDP
from .wording import counted
from .zoo import BUILDERS


@dataclass
class RunResult:
    """A finished (or stopped) run: its id, final weights and where its history is."""

    run_id: str
    status: str
    config: ExperimentConfig
    spec: ModelSpec
    weights: list[np.ndarray]
    round_metrics: list[dict[str, float]] = field(default_factory=list)
    accountant: ExampleLevelAccountant | None = None  # per-client example-level DP, when train.dp is set
    strategy: Strategy | None = None  # e.g. CentralDP, whose report() states the client-level guarantee

    def privacy_report(self) -> Any:
        """The run's DP guarantee: client-level with central_dp, else the worst client's example-level one."""
        reports = self.privacy_reports()
        return reports[0] if reports else None

    def privacy_reports(self) -> list[Any]:
        """Every DP guarantee the run holds: client-level (central_dp) first, then the worst client's example-level
        one (train.dp); a run with both has both, each for its own neighbouring datasets."""
        reports = [self.strategy.report()] if isinstance(self.strategy, CentralDP) else []
        worst = self.accountant.worst_case() if self.accountant is not None else None
        return reports + ([worst] if worst is not None else [])

    @property
    def final_accuracy(self) -> float | None:
        return self.round_metrics[-1].get("accuracy") if self.round_metrics else None

    def __repr__(self) -> str:  # the weights would drown a notebook cell's output
        accuracy = "" if self.final_accuracy is None else f", accuracy={self.final_accuracy:.4f}"
        return (f"RunResult(run_id={self.run_id!r}, status={self.status!r}, "
                f"rounds={len(self.round_metrics)}/{self.config.rounds}{accuracy})")

    def _repr_html_(self) -> str:
        from .result_view import result_html

        return result_html(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        from .result_view import result_text

        printer.text(repr(self) if cycle else result_text(self))

    def history(self) -> History:
        return History(self.config.history)

    def rounds_frame(self) -> Any:
        """Per-round timings, counts and metrics as a pandas DataFrame."""
        return self.history().rounds_frame(self.run_id)

    def invocations_frame(self) -> Any:
        """One row per function invocation as a pandas DataFrame."""
        return self.history().invocations_frame(self.run_id)

    def model(self) -> Any:
        """The Keras model with the final global weights loaded."""
        model = build_model(self.spec)
        model.set_weights(self.weights)
        return model


def new_run_id(name: str) -> str:
    """Readable and unique: the experiment name, the start time and a random suffix."""
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def partition_id(config: ExperimentConfig) -> str:
    """Identifies a dataset split: runs with the same data settings reuse the data already in the store."""
    data = config.data
    facts = {"dataset": data.dataset, "options": data.options, "partition": data.partition, "clients": config.clients,
             "seed": config.seed, **{name: getattr(data, name) for name in partition_options(data.partition)},
             "max_rotation": data.max_rotation, "max_noise": data.max_noise}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def client_ids(count: int) -> list[str]:
    return [f"client-{index:04d}" for index in range(count)]


def _make_store_folder(store: Store) -> None:
    """A local store's folder, made before its first write, so that one the user cannot write to (a run started in a
    read-only directory) is one line naming store.path rather than a traceback from mkdir."""
    if isinstance(store, LocalStore):
        try:
            store.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"store.path: cannot create {store.root} ({error.strerror}); run from a folder you can "
                            "write to, or set store.path to one") from None


def write_client_data(store: Store, dataset: Dataset, config: ExperimentConfig,
                      partition: list[np.ndarray] | None = None) -> dict[str, str]:
    """Put each client's share of the training split (`partition`, or the config's), feature skew applied,
    in the store once; client id -> data key."""
    ids = client_ids(config.clients)
    keys = {client_id: client_data_key(partition_id(config), client_id) for client_id in ids}
    if all(store.exists(key) for key in keys.values()):
        return keys
    data = config.data
    check_feature_skew(dataset, data.max_rotation, data.max_noise)
    partition = _partition(dataset, config) if partition is None else partition
    _make_store_folder(store)
    for index, (client_id, indices) in enumerate(zip(ids, partition)):
        x = client_inputs(dataset, indices, index, config.clients, data.max_rotation, data.max_noise, config.seed)
        store.put(keys[client_id], encode_arrays([x, dataset.y_train[indices]]))
    return keys


def _partition(dataset: Dataset, config: ExperimentConfig) -> list[np.ndarray]:
    """Each client's training indices; deterministic under the config's seed."""
    return partition_from_settings(dataset, config.data.partition, config.clients, config.seed, config.data)


def client_partition(config: ExperimentConfig, dataset: Dataset, client_id: str) -> np.ndarray:
    """The training indices `client_id` was given (the run's deterministic partition)."""
    ids = client_ids(config.clients)
    if client_id not in ids:
        raise UserError(f"{client_id!r} is not a client of this run (it has {ids[0]} to {ids[-1]})")
    return _partition(dataset, config)[ids.index(client_id)]


async def run_experiment_async(
    config: ExperimentConfig,
    *,
    model: Any = None,
    observers: Sequence[Observer] = (),
    providers: dict[str, Provider] | None = None,
    on_controller: Callable[[Controller], None] | None = None,
    resume: str | None = None,
    store: Store | None = None,
    own_data_sizes: dict[str, int] | None = None,
) -> RunResult:
    """Run `config` to the end on the running event loop.

    `model` (a Keras model or builder) overrides the config's builder, as the notebook does;
    `providers` replaces the ones the config names (tests and custom platforms);
    `on_controller` receives the controller before round 1, e.g. to request a stop later;
    `resume` is the id of a run of this config to continue after its last checkpoint
    (see `resume_experiment`, which reads the config from the history);
    `store` replaces the config's (a classroom serves its store to the students);
    `own_data_sizes` names the clients that train on data of their own (a student's drawings) and how many
    examples they have: the controller weights and checks their updates by these sizes, not their shares'.
    """
    prepared = preflight(config, model)  # a model that does not fit the data stops here, before anything starts
    dataset, spec, initial = prepared.dataset, prepared.spec, prepared.weights
    partition = _partition(dataset, config)
    sizes = {**dict(zip(client_ids(config.clients), map(len, partition))), **(own_data_sizes or {})}
    accountant = _accountant(config, sizes)  # an unreachable privacy budget stops here, before anything is written
    await asyncio.sleep(0)  # a stop asked while preparing (Ctrl-C under asyncio.run, a notebook's interrupt) lands here
    store = make_store(config.store) if store is None else store
    run_id = resume or new_run_id(config.name)
    checkpoint = _checkpoint(store, run_id) if resume else None
    if resume and checkpoint is None:
        _require_the_runs_store(config, run_id, store)  # before the store or the history is written
    data_keys = write_client_data(store, dataset, config, partition)
    if checkpoint is not None:
        initial = _checkpointed_weights(store, run_id, checkpoint.round, built=initial)
    history = History(config.history)
    providers = providers or {c.name: make_provider(c) for c in config.providers}
    assignment = assign_clients(list(data_keys), config.providers)
    selection = _selection(config, accountant)
    controller = Controller(
        run_id=run_id, name=config.name, config=config.to_dict(), spec=spec,
        strategy=_strategy(config), selection=selection,
        clients=[ClientRef(cid, key, assignment[cid], sizes[cid]) for cid, key in data_keys.items()],
        providers=providers, store=store, evaluate=Evaluator(spec, dataset.x_test, dataset.y_test),
        plan=RoundPlan(config.rounds, config.clients_per_round, _train_settings(config), config.round_deadline, config.seed,
                       RoundPolicy(config.retries, config.retry_backoff, config.min_successful, config.round_repeats,
                                   config.max_norm_ratio, config.max_update_norm), _stragglers(config),
                       _aggregation(config)),
    )
    controller.subscribe(selection.observe)
    controller.checkpointed["selection"] = selection  # what FedLesScan learned about the clients
    if accountant is not None:
        controller.writes_ahead = True  # each attempt, recorded as it is sent: a resume charges what was in flight
        controller.subscribe(accountant)
        controller.privacy_sources.append(accountant.round_metrics_async)
        controller.result_checks.append(accountant.check_result)
        controller.checkpointed["privacy"] = accountant
    if checkpoint is not None and (accountant is not None or isinstance(controller.strategy, CentralDP)):
        released = _released_after(history, run_id, checkpoint.round, checkpoint.sent_through, checkpoint.running)
        published = _published_after(store, run_id, checkpoint.round)  # before the resume clears those rounds
        controller.on_restore.append(lambda _: _charge_released(released, published, accountant, controller.strategy))
    controller.subscribe(HistoryWriter(history))
    for observer in observers:
        controller.subscribe(observer)
    if on_controller is not None:
        on_controller(controller)
    try:
        for provider in providers.values():
            await provider.deploy()
        weights = await controller.run(initial, _schedule(config, controller), checkpoint)
        status = "stopped" if len(controller.round_metrics) < config.rounds else "finished"
    finally:
        await asyncio.gather(*(provider.close() for provider in providers.values()))
        if accountant is not None:
            accountant.close()
        history.close()
        store.close()
    return RunResult(run_id, status, config, spec, weights, controller.round_metrics, accountant, controller.strategy)


def _released_after(history: History, run_id: str, checkpointed: int, sent_through: int = 0,
                    running: Sequence[int] = ()) -> dict[int, list[tuple[str, float | None]]]:
    """The invocations the checkpoint (its round `checkpointed`, and the attempts it counts: checkpoint.Checkpoint's
    `sent_through` and `running`) does not count that privacy accounting charges, by round, each with its client and
    straggler cut (None: a full round; also in a history from before that column): those of a round published (its
    model stored, its metrics recorded) before the process died, which the resumed run redoes, those of the round it
    was interrupted in, whose updates may have been read before the resume clears them, and those still running
    when it died (an asynchronous run's too, of a round the checkpoint is past). Each attempt the history wrote ahead
    (its `sent` table) is charged as its finished row was, or where none was recorded (its process was killed
    outright, or a redone round's rows replaced it) as one that may have trained; an invocation without `sent` (from
    before that table, or of a run without example-level accounting), if its round is after the checkpoint's, as it
    was charged, or in a history from before the charged column by accounting.charged's rule."""
    rows, sent = history.invocations(run_id), history.sent(run_id)
    finished = {row["sent"]: row for row in rows if row.get("sent") is not None}
    written_ahead = {attempt["seq"] for attempt in sent}
    released: dict[int, list[tuple[str, float | None]]] = {}
    for row in rows:  # before the write-ahead record
        if row.get("sent") not in written_ahead and row["round"] > checkpointed and _charged_row(row):
            released.setdefault(row["round"], []).append((row["client_id"], row.get("budget_epochs")))
    for attempt in sent:
        if attempt["seq"] <= sent_through and attempt["seq"] not in running:
            continue  # it finished before the checkpoint, which counts it
        row = finished.get(attempt["seq"])
        if _charged_row(row) if row is not None else may_have_trained("failed", None, attempt["stage"]):
            released.setdefault(attempt["round"], []).append((attempt["client_id"], attempt["budget_epochs"]))
    return released


def _charged_row(row: dict[str, Any]) -> bool:
    """Whether privacy accounting charged an invocation row: as the row says, or by accounting.charged's rule in a
    history from before its charged column."""
    return charged(row["outcome"], row["cause"], row["stage"], None if row.get("charged") is None else bool(row["charged"]))


def _published_after(store: Store, run_id: str, checkpointed: int) -> int:
    """How many global models the store holds after the checkpoint's: rounds central DP noised and released (whoever
    reads the store may have read them) that the checkpoint does not count, published in the history or not."""
    published = 0
    while store.exists(global_weights_key(run_id, checkpointed + published + 1)):
        published += 1
    return published


def _charge_released(released: dict[int, list[tuple[str, float | None]]], published: int,
                     accountant: ExampleLevelAccountant | None, strategy: Strategy) -> None:
    """Charge what was released after the checkpoint to the restored accountants (their checkpoint predates it):
    redoing a round releases its clients' data a second time, so its first release is not free. Each invocation
    is charged what it used: its planned round, or a straggler's cut; central DP each global model it noised."""
    if accountant is not None:
        for invocations in released.values():
            for client_id, budget_epochs in invocations:
                accountant.charge(client_id, budget_epochs)
    if isinstance(strategy, CentralDP):
        for _ in range(published):
            strategy.charge_released_round()


def _strategy(config: ExperimentConfig) -> Strategy:
    strategy = make_strategy(config.strategy.name, config.strategy.options)
    central = config.central_dp
    if central is None:
        return strategy
    return CentralDP(strategy, noise_multiplier=central.noise_multiplier, clip_norm=central.clip_norm,
                     adaptive=central.adaptive, target_quantile=central.target_quantile,
                     clip_learning_rate=central.clip_learning_rate, clipped_count_stddev=central.clipped_count_stddev,
                     delta=central.delta, accountant=central.accountant, sampling=central.sampling)


def _accountant(config: ExperimentConfig, sizes: dict[str, int]) -> ExampleLevelAccountant | None:
    """The example-level accountant when train.dp is set, from the controller's own facts: each client's
    round as the run's DP settings and the partition sizes it wrote make it (so even a client's first
    round is checked against the budget before it trains, and a function's report is only cross-checked)."""
    dp = config.train.dp
    if dp is None:
        return None
    train = _train_settings(config)
    facts = {client_id: privacy_facts(size, train) for client_id, size in sizes.items()
             if size >= (dp.num_microbatches or 1)}
    accountant = ExampleLevelAccountant(dp.delta, dp.accountant, dp.target_epsilon, expected_facts=facts,
                                        straggler_steps=_straggler_steps(config, {c: sizes[c] for c in facts}, train),
                                        straggler_cut=_straggler_cut(config))
    accountant.check_reachable(stop_run=dp.on_budget == "stop_run")  # before anything is deployed or trained
    return accountant


def _selection(config: ExperimentConfig, accountant: ExampleLevelAccountant | None) -> SelectionPolicy:
    """Central DP's guarantee counts on amplification by sampling, which holds only while nobody knows which
    clients a round took: its selection is seeded from the operating system's entropy, not from the config's
    seed (in the config and the history), and is not kept, so a resumed run draws afresh."""
    seed = secrets.randbits(63) if config.central_dp is not None else config.seed
    if config.central_dp is not None and config.central_dp.sampling == "poisson":
        policy: SelectionPolicy = PoissonSelection(config.clients_per_round / config.clients, seed)
    else:
        policy = make_selection(config.selection.policy, seed)
    if accountant is None or accountant.target_epsilon is None:
        return policy
    return BudgetedSelection(policy, accountant, stop_run=config.train.dp.on_budget == "stop_run",  # type: ignore[union-attr]
                             draw_from_all=config.central_dp is not None)


def _stragglers(config: ExperimentConfig) -> Stragglers | None:
    slow = config.stragglers
    return None if slow is None or slow.fraction == 0 else Stragglers(slow.fraction, slow.work, config.seed)


def _straggler_steps(config: ExperimentConfig, sizes: dict[str, int], train: dict[str, Any]) -> StragglerSteps | None:
    """The steps a simulated straggler among the clients of `sizes` may take under its cut (its task's
    budget_epochs): the same step budget the function makes of it, which the accountant charges."""
    if _stragglers(config) is None:
        return None
    return lambda client_id, budget_epochs: steps_under_cut(sizes[client_id], train, budget_epochs)


def _straggler_cut(config: ExperimentConfig) -> float | None:
    """The straggler cut a round's draw may give a selected client (a client that can afford only its cut round may
    still be selected: the budget checks its round as drawn); None when no draw cuts one. Central DP's Poisson
    selection may take every client in a round."""
    stragglers = _stragglers(config)
    if stragglers is None:
        return None
    poisson = config.central_dp is not None and config.central_dp.sampling == "poisson"
    return stragglers.possible_cut(config.clients if poisson else config.clients_per_round, config.train.epochs)


def _aggregation(config: ExperimentConfig) -> TreeOptions:
    where = config.aggregation
    return TreeOptions(where.where, where.fan_in, int(where.threshold_mb * 2**20))


def _schedule(config: ExperimentConfig, controller: Controller) -> Any:
    """FedBuff's asynchronous rounds when `mode: async`, secure rounds with `secure_aggregation`;
    None keeps the controller's synchronous rounds."""
    if config.secure_aggregation is not None:
        from .rounds.secagg import SecureAggregationRounds

        return SecureAggregationRounds(controller, config.secure_aggregation)
    if config.mode != "async":
        return None
    from .rounds.fedbuff import FedBuff

    return FedBuff(controller, config.asynchronous)


def _train_settings(config: ExperimentConfig) -> dict[str, Any]:
    train = config.train
    dp = None if train.dp is None else {"l2_norm_clip": train.dp.l2_norm_clip, "noise_multiplier": train.dp.noise_multiplier,
                                        "num_microbatches": train.dp.num_microbatches, "sampling": train.dp.sampling}
    return {"epochs": train.epochs, "batch_size": train.batch_size, "optimizer": train.optimizer,
            "learning_rate": train.learning_rate, "dp": dp, "budget_seconds": train.budget_seconds}


def _run_blocking(coroutine: Any, name: str) -> Any:
    """asyncio.run(coroutine), or, in a thread whose event loop already runs (a notebook cell's), one line saying
    to await the async form there instead (asyncio.run would fail with a traceback)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    coroutine.close()
    raise UserError(f"{name}() cannot block where an event loop already runs, as in a notebook cell: write "
                    f"`await {name}_async(...)` with the same arguments (or train with %fedless_train)")


def run_experiment(config: ExperimentConfig, **options: Any) -> RunResult:
    """Run `config` to the end (blocking); see `run_experiment_async` for the options."""
    return _run_blocking(run_experiment_async(config, **options), "run_experiment")


class ResumeError(UserError):
    """A run cannot be resumed (unknown, already finished, or without a checkpoint)."""


def _checkpoint(store: Store, run_id: str) -> Checkpoint | None:
    """The run's last checkpoint; None when it finished no round yet (it restarts from round 1)."""
    try:
        return decode_checkpoint(store.get(checkpoint_key(run_id)))
    except MissingKeyError:
        return None


def _require_the_runs_store(config: ExperimentConfig, run_id: str, store: Store) -> None:
    """Refuse to resume a run that finished rounds from a store that never held it: a relative store.path read from
    another folder names another store, where the run would start over from round 1 and its recorded rounds be
    overwritten. A store holding the run's initial model but no checkpoint is the run's own (it died before its
    first checkpoint), and the run restarts from round 1 as before."""
    if store.exists(global_weights_key(run_id, 0)):
        return
    recorded = History.existing(config.history)
    try:
        finished = recorded.run(run_id)["rounds_completed"] or 0
    finally:
        recorded.close()
    if finished == 0:
        return
    done = f"run {run_id!r} finished {counted(finished, 'round')}"
    if config.store.kind == "local" and not Path(config.store.path).is_absolute():
        raise ResumeError(f"{done}, but its store.path {config.store.path!r} names {Path.cwd() / config.store.path} "
                          "here, which holds nothing of it: resume it from the folder the run was started in")
    place = config.store.path if config.store.kind == "local" else f"s3://{config.store.bucket}/{config.store.prefix}"
    raise ResumeError(f"{done}, but its store {place} holds nothing of it: it cannot continue without the store it "
                      "wrote (was the store moved or deleted?)")


def _checkpointed_weights(store: Store, run_id: str, round_number: int, built: list[np.ndarray]) -> list[np.ndarray]:
    """The global weights a resumed run continues from, refused when they do not fit the model built for it: the
    history keeps the config, not a model given as an object, so such a run resumes only when given it again."""
    weights = decode_arrays(store.get(global_weights_key(run_id, round_number)))
    if [w.shape for w in weights] != [w.shape for w in built]:
        raise ResumeError(f"run {run_id!r} was trained with another model than the one built to resume it (its "
                          f"checkpointed weights have other shapes): give the model it was trained with, "
                          f"%fedless_resume {run_id} MODEL in a notebook (model=... in Python)")
    return weights


@dataclass(frozen=True)
class ResumePoint:
    """A recorded run checked to be resumable, as one read of its history gives it: its config, and the rounds it
    finished, where a resume interrupted before its controller is built (or has restored its checkpoint) stands."""

    run_id: str
    config: ExperimentConfig
    rounds_completed: int


def resume_point(run_id: str, history: str | Path = DEFAULT_HISTORY, *, trust_builder: bool = False) -> ResumePoint:
    """Run `run_id` of `history`, checked to be resumable. A config is code: its model.builder
    'package.module:function' is imported and run, so one read back from a history file (which anyone who
    can write the file may have changed) runs only with `trust_builder`."""
    recorded = History.existing(history)
    try:
        run = recorded.run(run_id)
    finally:
        recorded.close()
    run_id = run["run_id"]  # the whole id, where a beginning of it named the run
    if run["status"] == "finished" and run["rounds_completed"] >= run["rounds"]:
        raise ResumeError(f"run {run_id!r} already finished its {counted(run['rounds'], 'round')}; there is nothing to resume")
    if run["status"] == "running" and owner_state(run.get("owner")) == "alive":
        raise ResumeError(f"run {run_id!r} is still training (process {run['owner'].split(':')[1]}): stop it first "
                          "(Ctrl-C, the notebook's stop button or %fedless_stop), or let it finish")
    config = ExperimentConfig.from_dict(run["config"])
    if config.model.builder not in BUILDERS and not trust_builder:
        raise ResumeError(f"run {run_id!r} builds its model with {config.model.builder!r}, code named in the history "
                          "file: resume it with --trust-builder (trust_builder=True) if you trust that file")
    if config.mode == "async":
        raise ResumeError(f"run {run_id!r} used asynchronous rounds (mode: async), whose buffer and in-flight "
                          "clients are not checkpointed: start it again as a new run")
    config.history = str(history)
    return ResumePoint(run_id, config, run["rounds_completed"])


async def resume_experiment_async(run_id: str, *, history: str | Path = DEFAULT_HISTORY, trust_builder: bool = False,
                                  **options: Any) -> RunResult:
    """Continue run `run_id` of `history` after its last checkpointed round, on the running event loop;
    the options are `run_experiment_async`'s (pass `model=` again if the run was given a model object)."""
    point = resume_point(run_id, history, trust_builder=trust_builder or options.get("model") is not None)
    return await run_experiment_async(point.config, resume=point.run_id, **options)


def resume_experiment(run_id: str, *, history: str | Path = DEFAULT_HISTORY, **options: Any) -> RunResult:
    """Continue run `run_id` after its process died or it was stopped (blocking): the same run id and
    history, from the global weights and strategy state checkpointed after its last finished round."""
    return _run_blocking(resume_experiment_async(run_id, history=history, **options), "resume_experiment")
