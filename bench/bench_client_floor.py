"""The least a federated client costs beyond its training, measured in one process with nothing else running.

Any FL client, in any framework, must set the global weights into its model (and zero its optimizer), train,
and read its weights back. This bench times those three parts alone, with no store, no token, no signing, no
pipe and no controller, for clients of the sizes bench_rounds.py uses, on two paths:

- `fedless_nb`: the function's own traced calls (function/handler.py's `_CompiledModel`: `load`, `train_step`,
  `weights`), exactly what an invocation runs between reading its task and writing its update;
- `keras`: `set_weights`, `train_on_batch` per batch and `get_weights`, as a Flower NumPyClient does.

`floor_percent_of_train` is (set + read) / train: the overhead no per-client invocation can go below on
this model, whatever happens around it. Prints one JSON line per path and client size.

    python bench/bench_client_floor.py --examples 14 72 1600 --clients 200
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

TRAIN = {"epochs": 1, "batch_size": 32, "optimizer": "sgd", "learning_rate": 0.1, "seed": 1}


def _digits_model() -> tuple[object, list[np.ndarray]]:
    """bench_rounds.py's model: MLP 64-128-10, SGD, sparse categorical cross-entropy."""
    from fedless_nb import zoo
    from fedless_nb.model import model_spec_from

    return model_spec_from(zoo.mlp, builder_context={"input_shape": (64,), "num_classes": 10, "hidden_units": [128]})


def _batches(examples: int) -> list[slice]:
    size = TRAIN["batch_size"]
    return [slice(start, start + size) for start in range(0, examples, size)]


def _timed_clients(set_weights, train_batch, read_weights, data, clients: int) -> dict[str, float]:
    """Median milliseconds of each part over `clients` clients (after 20 warm-up clients)."""
    x, y = data
    parts: dict[str, list[float]] = {"set": [], "train": [], "read": []}
    for client in range(clients + 20):
        started = time.perf_counter()
        set_weights()
        trained = time.perf_counter()
        for batch in _batches(len(x)):
            train_batch(x[batch], y[batch])
        read = time.perf_counter()
        read_weights()
        finished = time.perf_counter()
        if client >= 20:
            for part, seconds in zip(parts, (trained - started, read - trained, finished - read)):
                parts[part].append(seconds)
    return {part: 1000 * statistics.median(values) for part, values in parts.items()}


def measure(path: str, examples: int, clients: int) -> dict:
    spec, weights = _digits_model()
    rng = np.random.default_rng(0)
    data = (rng.random((examples, 64), dtype=np.float32), rng.integers(0, 10, examples))
    if path == "fedless_nb":
        from fedless_nb.function.handler import _compiled_model

        compiled, _ = _compiled_model(spec.to_wire(), TRAIN)
        mu = np.float32(0.0)
        timings = _timed_clients(
            lambda: compiled.load(weights),
            lambda x, y: compiled.train_step(x, y, np.ones(len(x), np.float32), mu, False, False),
            compiled.weights, data, clients)
    else:
        from fedless_nb.model import build_model, make_optimizer

        model = build_model(spec, make_optimizer(TRAIN["optimizer"], TRAIN["learning_rate"]))
        timings = _timed_clients(lambda: model.set_weights(weights), model.train_on_batch, model.get_weights,
                                 data, clients)
    return {
        "bench": "client_floor", "path": path, "examples": examples, "steps": len(_batches(examples)),
        **{f"{part}_ms": round(ms, 3) for part, ms in timings.items()},
        "floor_percent_of_train": round(100 * (timings["set"] + timings["read"]) / timings["train"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, nargs="+", default=[14, 72, 1600], help="examples per client")
    parser.add_argument("--clients", type=int, default=200, help="clients timed per size (after 20 warm-up ones)")
    parser.add_argument("--paths", nargs="+", choices=["fedless_nb", "keras"], default=["fedless_nb", "keras"])
    arguments = parser.parse_args()
    for path in arguments.paths:
        for examples in arguments.examples:
            print(json.dumps(measure(path, examples, arguments.clients)), flush=True)


if __name__ == "__main__":
    main()
