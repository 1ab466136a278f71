"""The client step: one task in, one result out. The only code a function runs.

`handle(payload)` follows the wire contract (fedless_nb/wire.py). It rebuilds the model from the
task's spec, reads the global weights and its own data from the store, trains for the
configured local epochs, writes its update to the one key the task names and returns
counts, metrics and timings. It checks the task's token before it reads anything and
signs its result (see fedless_nb/security.py). In a secure round (train.secagg) a stage that trains
nothing runs function/secagg_stages.py instead, and the training stage writes its masked update.

A warm function (the same process, a later invocation) keeps its compiled model, its
traced training step and recently used data, and rebuilds nothing it already has.
Cold start is reported here, where it happens: the first invocation of a process
says so, with the seconds spent importing TensorFlow and building the model.

This module must stay importable without IPython, ipywidgets, rich or sqlite-utils.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from ..aggregate_wire import is_aggregate_task
from ..model import ModelError, ModelModules, ModelSpec, build_model, make_optimizer, model_modules_allowed
from ..security import TaskGuard
from ..state_secret import state_secret as deployed_state_secret
from ..store import CodecError, decode_arrays, encode_arrays
from ..wire import DP_SETTINGS, REFUSED, SECAGG_KEY_STAGES, PayloadError, check_task
from .aggregator import aggregate
from .batching import batch_rng, batch_size, dp_sampling, local_steps, privacy_facts, step_batches, step_budget
from .secagg_stages import key_stage, masking, stage_of
from .task_store import task_store


def _concrete(function: Any, *specs: Any) -> Any:
    """`function` traced once for `specs`, to be called as a concrete function.

    Why not call the tf.function itself: its per-call dispatch (canonicalizing each argument's type,
    looking up its trace cache) cost as much as the graph it runs for the bench's MLP, three times per
    invocation (load, train, read)."""
    from .._tf import tensorflow

    return tensorflow().function(function).get_concrete_function(*specs)


def arrays_problem(arrays: list[np.ndarray], variables: list[Any]) -> str | None:
    """Why `arrays` (a blob from the store) cannot be loaded into `variables`, in words; None when they fit: one array per
    variable, of its shape, in a dtype that casts to the variable's within its kind (float64 or int to float32). A
    string array was a 500 (ValueError) and a complex or datetime one was loaded silently, its imaginary part dropped."""
    if len(arrays) != len(variables):
        return f"{len(arrays)} arrays for {len(variables)} variables"
    for index, (array, variable) in enumerate(zip(arrays, variables)):
        if array.shape != tuple(variable.shape):
            return f"array {index} has shape {array.shape}, its variable {tuple(variable.shape)}"
        if not np.can_cast(array.dtype, variable.dtype.as_numpy_dtype, "same_kind"):
            return f"array {index} holds {array.dtype}, which is not a {variable.dtype.name} number"
    return None


@dataclass
class _CompiledModel:
    """A built model with its traced steps: training, loading a client's start (weights in, optimizer and
    metrics zeroed) and reading its weights, each one graph call instead of an eager op per variable.

    FedProx's anchor and SCAFFOLD's correction live in variables beside the model's, set by `load` and
    `correct`: passed to the training step as arrays, they were converted to tensors at every step
    (about 2 ms of a 3 ms step for the bench's MLP)."""

    key: tuple[Any, ...]
    model: Any
    step: Any  # the training step's Python function, traced per input type by `train_step`
    loss_tracker: Any  # the mean training loss, reset per invocation
    trainable_positions: list[int]  # where each trainable variable sits in model.weights
    anchor: list[Any]  # the trainable weights `load` set last
    correction: list[Any]  # the correction `correct` set last
    wire: dict[str, Any]  # the model spec as the last task sent it
    _steps: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    _load: Any = None
    _load_resets: int = -1  # how many optimizer and metric variables _load zeroes (both are created on first use)
    _correct: Any = None
    _read: Any = None

    def _state_variables(self) -> list[Any]:
        optimizer = self.model.optimizer
        variables = optimizer.variables() if callable(optimizer.variables) else optimizer.variables
        metrics = [*self.model.metrics, self.loss_tracker]
        return [*variables, *(variable for metric in metrics for variable in metric.variables)]

    def load(self, weights: list[np.ndarray]) -> None:
        """Start a client's training from `weights`: each invocation trains a different client, so its optimizer
        state and metrics start from zero (every Keras metric's reset state, as Metric.reset_state sets it)."""
        variables = self.model.weights
        if problem := arrays_problem(weights, variables):
            raise PayloadError(f"the task's weights do not match its model's layers: {problem}")
        resets = self._state_variables()
        if self._load is None or self._load_resets != len(resets):
            from .._tf import tensorflow

            tf = tensorflow()

            def load(arrays: list[Any]) -> None:
                for variable, array in zip(variables, arrays):
                    variable.assign(array)
                for anchor, position in zip(self.anchor, self.trainable_positions):
                    anchor.assign(arrays[position])
                for variable in resets:
                    variable.assign(tf.zeros_like(variable))

            self._load = _concrete(load, [tf.TensorSpec(v.shape, v.dtype) for v in variables])
            self._load_resets = len(resets)
        self._load([np.asarray(w, v.dtype.as_numpy_dtype) for w, v in zip(weights, variables)])

    def correct(self, arrays: list[np.ndarray]) -> None:
        """Set SCAFFOLD's correction for the next training (one per trainable variable, shapes checked by the caller)."""
        if self._correct is None:
            from .._tf import tensorflow

            tf = tensorflow()

            def correct(values: list[Any]) -> None:
                for variable, value in zip(self.correction, values):
                    variable.assign(value)

            self._correct = _concrete(correct, [tf.TensorSpec(v.shape, v.dtype) for v in self.correction])
        self._correct([np.asarray(a, v.dtype.as_numpy_dtype) for a, v in zip(arrays, self.correction)])

    def train_step(self, x: np.ndarray, y: np.ndarray, mask: np.ndarray, mu: np.float32, proximal: bool,
                   corrected: bool) -> dict[str, Any]:
        """One optimizer step on (x, y); the trace is picked by the inputs' types and the two objective flags."""
        key = (x.dtype, x.shape[1:], y.dtype, y.shape[1:], proximal, corrected)
        step = self._steps.get(key)
        if step is None:
            from .._tf import tensorflow

            tf = tensorflow()
            step = self._steps[key] = _concrete(
                lambda x, y, mask, mu: self.step(x, y, mask, mu, proximal, corrected),
                tf.TensorSpec((None, *x.shape[1:]), x.dtype), tf.TensorSpec((None, *y.shape[1:]), y.dtype),
                tf.TensorSpec((None,), tf.float32), tf.TensorSpec((), tf.float32))
        return step(x, y, mask, mu)

    def weights(self) -> list[np.ndarray]:
        if self._read is None:
            from .._tf import tensorflow

            tf = tensorflow()
            self._read = _concrete(lambda: [tf.identity(variable) for variable in self.model.weights])
        return [tensor.numpy() for tensor in self._read()]


@dataclass
class _WarmState:
    """What survives between invocations in one process (module-level, like a FaaS container)."""

    invocations: int = 0
    compiled: _CompiledModel | None = None
    data: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=OrderedDict)
    data_bytes: int = 0

    @property
    def data_limit(self) -> int:
        """FEDLESS_DATA_CACHE_MB, read when used: a worker forked from a zygote (providers/zygote.py) got its
        environment after this module was imported."""
        return int(float(os.environ.get("FEDLESS_DATA_CACHE_MB", "256")) * 2**20)


_STATE = _WarmState()


def _compiled_model(spec_wire: dict[str, Any], train: dict[str, Any],
                    model_modules: ModelModules | None) -> tuple[_CompiledModel, float]:
    """The cached model for this spec, optimizer and DP setting, built (and timed) only when they change."""
    dp = train.get("dp")
    dp_key = None if dp is None else tuple(sorted((k, dp.get(k)) for k in DP_SETTINGS))
    settings = (train["optimizer"], float(train["learning_rate"]), dp_key)
    cached = _STATE.compiled
    if cached is not None and cached.key[1:] == settings and cached.wire == spec_wire:
        return cached, 0.0  # the spec the last task sent: no fingerprint (a JSON dump and a hash) to compute
    spec = ModelSpec.from_wire(spec_wire)
    key = (spec.fingerprint, *settings)
    if cached is not None and cached.key == key:
        cached.wire = spec_wire
        return cached, 0.0
    started = time.perf_counter()
    from .._tf import tensorflow

    tf = tensorflow()
    learning_rate = float(train["learning_rate"])
    if dp is None:
        optimizer = make_optimizer(train["optimizer"], learning_rate)
    else:
        from ..privacy.dp_sgd import make_dp_optimizer

        microbatches = dp.get("num_microbatches") if dp_sampling(train) == "shuffle" else None  # Poisson: per example
        optimizer = make_dp_optimizer(train["optimizer"], learning_rate, float(dp["l2_norm_clip"]),
                                      float(dp["noise_multiplier"]), microbatches, poisson=dp_sampling(train) == "poisson")
    try:
        model = build_model(spec, optimizer, allowed_modules=model_modules if model_modules is not None else model_modules_allowed())
    except tf.errors.ResourceExhaustedError:  # the same task would fail the same way again: not a 500 to retry
        raise ModelError("the model does not fit in this function's memory: TensorFlow could not allocate its weights; "
                         "give the function more memory where it is deployed, or the model fewer weights") from None
    loss_tracker = tf.keras.metrics.Mean(name="loss")
    anchor, correction = ([tf.Variable(tf.zeros_like(variable), trainable=False) for variable in model.trainable_variables]
                          for _ in range(2))
    step = _make_train_step(tf, model, spec, loss_tracker, anchor, correction, per_example=dp is not None)
    positions = {variable.ref(): index for index, variable in enumerate(model.weights)}
    _STATE.compiled = _CompiledModel(key, model, step, loss_tracker,
                                     [positions[variable.ref()] for variable in model.trainable_variables],
                                     anchor, correction, spec_wire)
    return _STATE.compiled, time.perf_counter() - started


def _make_train_step(tf: Any, model: Any, spec: ModelSpec, loss_tracker: Any, anchor: list[Any], correction: list[Any],
                     *, per_example: bool) -> Any:
    """Keras' train_step plus FedProx's proximal term and SCAFFOLD's gradient correction.

    The local objective is loss + mu/2 ||w - anchor||^2 + <w, correction>, so the gradient gains
    mu (w - anchor) + correction. `proximal` and `corrected` (Python bools, one trace each way) leave out a
    term a strategy does not send, so plain FedAvg pays for neither. Without DP the terms join the mean loss.
    DP-SGD optimizers take the examples' losses as a vector, to clip each example (or microbatch) and noise
    their sum; the two terms depend on no example, so their gradient is added to that private gradient
    after it, as post-processing: the epsilon is the same and each step is the papers' (inside the vector,
    they were clipped and scaled with each example's gradient). `mask` zeroes an example's loss: an empty
    Poisson batch still takes its noise-only step (with the terms), through one masked example.
    """
    keras = tf.keras
    loss_setting = spec.compile.get("loss", "sparse_categorical_crossentropy")
    loss = keras.losses.get(loss_setting if isinstance(loss_setting, str) else keras.losses.deserialize(loss_setting))
    per_example_loss = loss.call if isinstance(loss, keras.losses.Loss) else loss

    def step(x: Any, y: Any, mask: Any, mu: Any, proximal: bool, corrected: bool) -> dict[str, Any]:
        variables = model.trainable_variables
        with tf.GradientTape() as tape:
            predictions = model(x, training=True)
            losses = tf.reshape(per_example_loss(y, predictions), [-1])
            extra = list(model.losses) + [0.0]
            if per_example:
                objective = (losses + tf.add_n(extra)) * mask
            else:
                if proximal:
                    extra += [0.5 * mu * tf.reduce_sum(tf.square(w - a)) for w, a in zip(variables, anchor)]
                if corrected:
                    extra += [tf.reduce_sum(w * c) for w, c in zip(variables, correction)]
                objective = tf.reduce_mean(losses) + tf.add_n(extra)
        if per_example:
            from ..privacy.dp_sgd import private_gradients

            gradients = private_gradients(model.optimizer, objective, variables, tape)
            if proximal:
                gradients = [g + tf.cast(mu, w.dtype) * (w - a) for g, w, a in zip(gradients, variables, anchor)]
            if corrected:
                gradients = [g + c for g, c in zip(gradients, correction)]
            model.optimizer.apply_gradients(zip(gradients, variables))
        else:
            model.optimizer.minimize(objective, variables, tape=tape)
        loss_tracker.update_state(losses, sample_weight=mask)
        model.compiled_metrics.update_state(y, predictions, sample_weight=mask)
        return {"loss": loss_tracker.result(), **{m.name: m.result() for m in model.compiled_metrics.metrics}}

    return step


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


def _own_or_stored(store: Any, payload: dict[str, Any],
                   data: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
    """The function's own examples when it holds them, else the task's data key from the store."""
    return data if data is not None else _client_data(store, payload["data"])


def _correction(store: Any, key: str, like: list[Any]) -> list[np.ndarray]:
    """SCAFFOLD's correction the task names in the store, one array per trainable variable in `like` (`correct`
    casts them to the variables' dtypes)."""
    arrays = decode_arrays(store.get(key))
    if problem := arrays_problem(arrays, like):
        raise PayloadError(f"the arrays at {key} do not match the model's trainable weights: {problem}")
    return arrays


@contextlib.contextmanager
def _refusing_before_training() -> Iterator[None]:
    """A task whose model or stored bytes the function cannot use (ModelError, CodecError) is refused as a malformed
    one is (PayloadError): raised before the first training step, its reply declares REFUSED, and privacy accounting
    charges nothing for it. Only the code before training runs under this, so the same errors later stay charged."""
    try:
        yield
    except (ModelError, CodecError) as error:
        error.cause = REFUSED  # type: ignore[attr-defined]
        raise


@dataclass(frozen=True)
class _Training:
    """What local training did: the last step's metrics, its steps, and whether it stopped short of its epochs."""

    metrics: dict[str, float]
    steps: int
    partial: bool


def train_client(compiled: _CompiledModel, x: np.ndarray, y: np.ndarray, train: dict[str, Any], store: Any = None,
                 stop_at: float | None = None) -> _Training:
    """One client's local training from the weights `compiled.load` set (read them after with `compiled.weights()`).

    The steps are function/batching.py's step batches, stopped early at `stop_at` (a perf_counter
    time) or at the task's step budget, after at least one step: a platform would kill the invocation,
    losing all its work. With DP-SGD the batches are the sampling the accountant assumes (Poisson or
    fixed-size); an empty Poisson batch is a step too (noise only), as the accountant counts it.
    """
    if len(x) == 0:
        raise PayloadError("this client has no training examples")
    corrected = train.get("correction") is not None
    if corrected:
        with _refusing_before_training():
            compiled.correct(_correction(store, train["correction"], compiled.model.trainable_variables))
    mu = np.float32(train.get("proximal_mu") or 0.0)
    rng = batch_rng(train)
    if dp_sampling(train) == "poisson":
        from ..privacy.dp_sgd import set_expected_batch_size

        set_expected_batch_size(compiled.model.optimizer, batch_size(len(x), train))
    budget, steps = step_budget(len(x), train), 0
    logs: dict[str, Any] = {}
    for batch in step_batches(len(x), train, rng):
        if steps == budget or (steps and stop_at is not None and time.perf_counter() >= stop_at):
            break
        mask = np.ones(len(batch), np.float32)
        if len(batch) == 0:
            batch, mask = np.zeros(1, np.int64), np.zeros(1, np.float32)
        logs = compiled.train_step(x[batch], y[batch], mask, mu, bool(mu), corrected)
        steps += 1
    metrics = {name: float(value) for name, value in logs.items()}
    return _Training(metrics, steps, partial=steps < local_steps(len(x), train))


def handle(payload: dict[str, Any], *, secret: str | None = None, state_secret: str | None = None,
           data: tuple[np.ndarray, np.ndarray] | None = None, model_modules: ModelModules | None = None) -> dict[str, Any]:
    """Run one client step of DESIGN.md's contract: task dict in, result dict out. `secret` and `state_secret`: the
    run secret and the state secret (fedless_nb/state_secret.py) when the platform hands them to the adapter
    (OpenWhisk) or the function keeps them itself (a classroom student), rather than in the environment. `data`: the
    (x, y) a function holds itself (a classroom student's own drawings), which then never enter the store:
    the task's data key is not read. `model_modules`: the custom-layer modules its tasks may import, where the
    function is not a deployed one (default: FEDLESS_MODEL_MODULES)."""
    if is_aggregate_task(payload):  # the same bundle's other entry point: a shard of a round to sum
        return aggregate(payload, secret=secret)
    started = time.perf_counter()
    check_task(payload)
    store = task_store(payload["store"])
    guard = TaskGuard.admit(payload, store, secret)  # before any data is read
    cold = _STATE.invocations == 0
    _STATE.invocations += 1
    train = payload["train"]
    stage = stage_of(payload)  # a secure round's stage (function/secagg_stages.py), or None
    if stage is not None:
        state_secret = state_secret or deployed_state_secret()
    if stage in SECAGG_KEY_STAGES:
        update, num_examples = key_stage(payload, store, guard.key, state_secret,
                                         lambda: len(_own_or_stored(store, payload, data)[0]))
        store.put(payload["update"], update)
        finished = time.perf_counter()
        timings = dict.fromkeys(("cold_start", "build", "load", "train"), 0.0)
        return guard.sign(_result(payload, num_examples, {}, cold, {**timings, "upload": 0.0, "total": finished - started},
                                  None), update)

    with _refusing_before_training():
        # a secure round's masked stage: its refusals come before training
        mask = None if stage is None else masking(payload, store, guard.key, state_secret)
        compiled, build_seconds = _compiled_model(payload["model"], train, model_modules)
        load_started = time.perf_counter()
        start = decode_arrays(store.get(payload["weights"]))
        compiled.load(start)
        x, y = _own_or_stored(store, payload, data)
    train_started = time.perf_counter()
    budget_seconds = train.get("budget_seconds")
    training = train_client(compiled, x, y, train, store, None if budget_seconds is None else started + float(budget_seconds))
    upload_started = time.perf_counter()
    trained = compiled.weights()
    update = encode_arrays(trained) if mask is None else mask(start, trained)
    store.put(payload["update"], update)
    finished = time.perf_counter()

    return guard.sign(_result(payload, int(len(x)), training.metrics, cold, {
        "cold_start": build_seconds if cold else 0.0,
        "build": build_seconds,
        "load": train_started - load_started,
        "train": upload_started - train_started,
        "upload": finished - upload_started,
        "total": finished - started,
    }, privacy_facts(len(x), train), steps=training.steps, partial=training.partial), update)


def _result(payload: dict[str, Any], num_examples: int, metrics: dict[str, float], cold: bool,
            timings: dict[str, float], privacy: dict[str, Any] | None, **progress: Any) -> dict[str, Any]:
    """The result of the contract, unsigned; `progress`: the steps a training stage took and whether they are partial."""
    return {
        "run_id": payload["run_id"], "round": payload["round"], "client_id": payload["client_id"],
        "update": payload["update"], "num_examples": num_examples, "metrics": metrics, "cold": cold,
        "timings": timings, "privacy": privacy, **progress, "signature": None,
    }
