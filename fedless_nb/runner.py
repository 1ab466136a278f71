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

from .checkpoint import Checkpoint, checkpoint_key, decode_checkpoint
from .controller import ClientRef, Controller, RoundPlan
from .data import Dataset, load_dataset, partition_dataset
from .events import Observer
from .evaluation import Evaluator
from .experiment import ExperimentConfig
from .errors import UserError
from .history import DEFAULT_HISTORY, History, HistoryWriter
from .model import ModelSpec, build_model, model_spec_from
from .providers.base import Provider
from .providers.registry import assign_clients, make_provider
from .resilience import RoundPolicy
from .selection import RandomSelection
from .store import MissingKeyError, Store, decode_arrays, encode_arrays, make_store
from .store.keys import client_data_key, global_weights_key
from .strategies import make_strategy
from .zoo import resolve_builder


@dataclass
class RunResult:
    """A finished (or stopped) run: its id, final weights and where its history is."""

    run_id: str
    status: str
    config: ExperimentConfig
    spec: ModelSpec
    weights: list[np.ndarray]
    round_metrics: list[dict[str, float]] = field(default_factory=list)

    @property
    def final_accuracy(self) -> float | None:
        return self.round_metrics[-1].get("accuracy") if self.round_metrics else None

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
             "seed": config.seed, "alpha": data.alpha if data.partition == "dirichlet" else None,
             "shards": data.shards_per_client if data.partition == "shards" else None}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def client_ids(count: int) -> list[str]:
    return [f"client-{index:04d}" for index in range(count)]


def write_client_data(store: Store, dataset: Dataset, config: ExperimentConfig) -> dict[str, str]:
    """Partition the training split and put each client's share in the store once; client id -> data key."""
    data = config.data
    options = {"dirichlet": {"alpha": data.alpha}, "shards": {"shards_per_client": data.shards_per_client}}
    ids = client_ids(config.clients)
    keys = {client_id: client_data_key(partition_id(config), client_id) for client_id in ids}
    if all(store.exists(key) for key in keys.values()):
        return keys
    parts = partition_dataset(dataset, data.partition, config.clients, config.seed, **options.get(data.partition, {}))
    for client_id, indices in zip(ids, parts):
        store.put(keys[client_id], encode_arrays([dataset.x_train[indices], dataset.y_train[indices]]))
    return keys


def _model_spec(config: ExperimentConfig, dataset: Dataset, model: Any) -> tuple[ModelSpec, list[np.ndarray]]:
    context = {"input_shape": dataset.input_shape, "num_classes": dataset.num_classes, **config.model.options}
    source = model if model is not None else resolve_builder(config.model.builder)
    return model_spec_from(source, seed=config.seed, builder_context=context)


async def run_experiment_async(
    config: ExperimentConfig,
    *,
    model: Any = None,
    observers: Sequence[Observer] = (),
    providers: dict[str, Provider] | None = None,
    on_controller: Callable[[Controller], None] | None = None,
    resume: str | None = None,
) -> RunResult:
    """Run `config` to the end on the running event loop.

    `model` (a Keras model or builder) overrides the config's builder, as the notebook does;
    `providers` replaces the ones the config names (tests and custom platforms);
    `on_controller` receives the controller before round 1, e.g. to request a stop later;
    `resume` is the id of a run of this config to continue after its last checkpoint
    (see `resume_experiment`, which reads the config from the history).
    """
    dataset = load_dataset(config.data.dataset, **config.data.options)
    spec, initial = _model_spec(config, dataset, model)
    store = make_store(config.store)
    data_keys = write_client_data(store, dataset, config)
    history = History(config.history)
    run_id = resume or new_run_id(config.name)
    checkpoint = _checkpoint(store, run_id) if resume else None
    if checkpoint is not None:
        initial = decode_arrays(store.get(global_weights_key(run_id, checkpoint.round)))
    providers = providers or {c.name: make_provider(c) for c in config.providers}
    assignment = assign_clients(list(data_keys), config.providers)
    controller = Controller(
        run_id=run_id, name=config.name, config=config.to_dict(), spec=spec,
        strategy=make_strategy(config.strategy.name, config.strategy.options),
        selection=RandomSelection(config.seed),
        clients=[ClientRef(cid, key, assignment[cid]) for cid, key in data_keys.items()],
        providers=providers, store=store, evaluate=Evaluator(spec, dataset.x_test, dataset.y_test),
        plan=RoundPlan(config.rounds, config.clients_per_round, _train_settings(config), config.round_deadline, config.seed,
                       RoundPolicy(config.retries, config.retry_backoff, config.min_successful, config.round_repeats,
                                   config.max_norm_ratio)),
    )
    controller.subscribe(HistoryWriter(history))
    for observer in observers:
        controller.subscribe(observer)
    if on_controller is not None:
        on_controller(controller)
    try:
        for provider in providers.values():
            await provider.deploy()
        weights = await controller.run(initial, checkpoint)
        status = "stopped" if len(controller.round_metrics) < config.rounds else "finished"
    finally:
        await asyncio.gather(*(provider.close() for provider in providers.values()))
        history.close()
        store.close()
    return RunResult(run_id, status, config, spec, weights, controller.round_metrics)


def _train_settings(config: ExperimentConfig) -> dict[str, Any]:
    train = config.train
    return {"epochs": train.epochs, "batch_size": train.batch_size, "optimizer": train.optimizer,
            "learning_rate": train.learning_rate}


def run_experiment(config: ExperimentConfig, **options: Any) -> RunResult:
    """Run `config` to the end (blocking); see `run_experiment_async` for the options."""
    return asyncio.run(run_experiment_async(config, **options))


class ResumeError(UserError):
    """A run cannot be resumed (unknown, already finished, or without a checkpoint)."""


def _checkpoint(store: Store, run_id: str) -> Checkpoint | None:
    """The run's last checkpoint; None when it finished no round yet (it restarts from round 1)."""
    try:
        return decode_checkpoint(store.get(checkpoint_key(run_id)))
    except MissingKeyError:
        return None


def resume_config(run_id: str, history: str | Path = DEFAULT_HISTORY) -> ExperimentConfig:
    """The config of a run recorded in `history`, checked to be resumable."""
    recorded = History(history)
    try:
        run = recorded.run(run_id)
    finally:
        recorded.close()
    if run["status"] == "finished" and run["rounds_completed"] >= run["rounds"]:
        raise ResumeError(f"run {run_id!r} already finished all {run['rounds']} rounds; there is nothing to resume")
    config = ExperimentConfig.from_dict(run["config"])
    config.history = str(history)
    return config


async def resume_experiment_async(run_id: str, *, history: str | Path = DEFAULT_HISTORY, **options: Any) -> RunResult:
    """Continue run `run_id` of `history` after its last checkpointed round, on the running event loop;
    the options are `run_experiment_async`'s (pass `model=` again if the run was given a model object)."""
    return await run_experiment_async(resume_config(run_id, history), resume=run_id, **options)


def resume_experiment(run_id: str, *, history: str | Path = DEFAULT_HISTORY, **options: Any) -> RunResult:
    """Continue run `run_id` after its process died or it was stopped (blocking): the same run id and
    history, from the global weights and strategy state checkpointed after its last finished round."""
    return asyncio.run(resume_experiment_async(run_id, history=history, **options))
