"""The client step: one task in, one result out. The only code a function runs.

`handle(payload)` follows DESIGN.md's wire contract. It rebuilds the model from the
task's spec, reads the global weights and its own data from the store, trains for the
configured local epochs, writes its update to the one key the task names and returns
counts, metrics and timings. It checks the task's token before it reads anything and
signs its result (see `security.py`).

A warm function (the same process, a later invocation) keeps its compiled model, its
traced training step and recently used data, and rebuilds nothing it already has.
Cold start is reported here, where it happens: the first invocation of a process
says so, with the seconds spent importing TensorFlow and building the model.

This module must stay importable without IPython, ipywidgets, rich or sqlite-utils.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .model import ModelSpec, build_model, make_optimizer
from .security import NonceCache, TaskGuard
from .store import decode_arrays, encode_arrays, store_from_descriptor

TRAIN_SETTINGS = {"epochs", "batch_size", "optimizer", "learning_rate", "seed"}
_REQUIRED = ("run_id", "round", "client_id", "model", "weights", "data", "update", "train", "store")


class PayloadError(ValueError):
    """The task is malformed or not for this function; nothing was read or written."""


@dataclass
class _CompiledModel:
    key: tuple[Any, ...]
    model: Any
    train_step: Any


@dataclass
class _WarmState:
    """What survives between invocations in one process (module-level, like a FaaS container)."""

    invocations: int = 0
    compiled: _CompiledModel | None = None
    data: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=OrderedDict)
    data_bytes: int = 0
    data_limit: int = int(float(os.environ.get("FEDLESS_DATA_CACHE_MB", "256")) * 2**20)


_STATE = _WarmState()
_NONCES = NonceCache()  # tokens this process has spent: a replayed task is refused


def _check_payload(payload: Any) -> None:
    if not isinstance(payload, dict):
        raise PayloadError(f"the task must be a JSON object, got {type(payload).__name__}")
    missing = [key for key in _REQUIRED if key not in payload]
    if missing:
        raise PayloadError(f"the task lacks {', '.join(missing)}")
    unknown = set(payload["train"]) - TRAIN_SETTINGS
    if unknown:
        raise PayloadError(
            f"this function does not support the train setting(s) {', '.join(sorted(unknown))}; "
            "redeploy it with the fedless_nb version of the controller"
        )
    deadline = payload.get("deadline")
    if deadline is not None and time.time() > float(deadline):
        raise PayloadError("the task arrived after its round deadline")


def _compiled_model(spec_wire: dict[str, Any], train: dict[str, Any]) -> tuple[_CompiledModel, float]:
    """The cached model for this spec and optimizer, built (and timed) only when they change."""
    spec = ModelSpec.from_wire(spec_wire)
    key = (spec.fingerprint, train["optimizer"], float(train["learning_rate"]))
    if _STATE.compiled is not None and _STATE.compiled.key == key:
        return _STATE.compiled, 0.0
    started = time.perf_counter()
    from ._tf import tensorflow

    tf = tensorflow()
    model = build_model(spec, make_optimizer(train["optimizer"], float(train["learning_rate"])))
    _STATE.compiled = _CompiledModel(key, model, tf.function(model.train_step, reduce_retracing=True))
    return _STATE.compiled, time.perf_counter() - started


def _client_data(store: Any, key: str) -> tuple[np.ndarray, np.ndarray]:
    """The client's (x, y), from the warm cache when possible; the cache is bounded in bytes."""
    if key in _STATE.data:
        _STATE.data.move_to_end(key)
        return _STATE.data[key]
    x, y = decode_arrays(store.get(key))
    size = x.nbytes + y.nbytes
    while _STATE.data and _STATE.data_bytes + size > _STATE.data_limit:
        _, (old_x, old_y) = _STATE.data.popitem(last=False)
        _STATE.data_bytes -= old_x.nbytes + old_y.nbytes
    if size <= _STATE.data_limit:
        _STATE.data[key] = (x, y)
        _STATE.data_bytes += size
    return x, y


def _reset_optimizer(optimizer: Any) -> None:
    """Each invocation trains a different client: its optimizer starts from zero state."""
    variables = optimizer.variables() if callable(optimizer.variables) else optimizer.variables
    for variable in variables:
        variable.assign(np.zeros(variable.shape, dtype=variable.dtype.as_numpy_dtype))


def _train(compiled: _CompiledModel, x: np.ndarray, y: np.ndarray, train: dict[str, Any]) -> dict[str, float]:
    """Local epochs of minibatch training with Keras' own train_step; returns its metrics."""
    if len(x) == 0:
        raise PayloadError("this client has no training examples")
    compiled.model.reset_metrics()
    _reset_optimizer(compiled.model.optimizer)
    rng = np.random.default_rng(int(train.get("seed", 0)))
    batch_size = int(train["batch_size"])
    logs: dict[str, Any] = {}
    for _ in range(int(train["epochs"])):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch_size):
            batch = order[start : start + batch_size]
            logs = compiled.train_step((x[batch], y[batch]))
    return {name: float(value) for name, value in logs.items()}


def handle(payload: dict[str, Any]) -> dict[str, Any]:
    """Run one client step of DESIGN.md's contract: task dict in, result dict out."""
    started = time.perf_counter()
    _check_payload(payload)
    store = store_from_descriptor(payload["store"])
    guard = TaskGuard.admit(payload, store, _NONCES)  # before any data is read
    cold = _STATE.invocations == 0
    _STATE.invocations += 1
    train = payload["train"]

    compiled, build_seconds = _compiled_model(payload["model"], train)
    load_started = time.perf_counter()
    compiled.model.set_weights(decode_arrays(store.get(payload["weights"])))
    x, y = _client_data(store, payload["data"])
    train_started = time.perf_counter()
    metrics = _train(compiled, x, y, train)
    upload_started = time.perf_counter()
    update = encode_arrays(compiled.model.get_weights())
    store.put(payload["update"], update)
    finished = time.perf_counter()

    return guard.sign({
        "run_id": payload["run_id"],
        "round": payload["round"],
        "client_id": payload["client_id"],
        "update": payload["update"],
        "num_examples": int(len(x)),
        "metrics": metrics,
        "cold": cold,
        "timings": {
            "cold_start": build_seconds if cold else 0.0,
            "build": build_seconds,
            "load": train_started - load_started,
            "train": upload_started - train_started,
            "upload": finished - upload_started,
            "total": finished - started,
        },
        "privacy": None,
        "signature": None,
    }, update)
