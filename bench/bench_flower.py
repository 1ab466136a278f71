"""fedless_nb against Flower's simulation engine (flwr with its Ray backend), side by side, one JSON line per N.

Same workload as bench_rounds.py: digits split IID over N clients (the same split, from
fedless_nb.data), MLP 64-128-10 with the same initial weights, SGD lr 0.1, 1 local epoch,
batch 32, every client in every round, the global model evaluated on the test split after
each round. Both systems get 2 concurrent clients on this 2-core machine: fedless_nb's local
provider with 2 workers, Flower with 2 Ray actors (`num_cpus: 1` each of 2). The Flower client
keeps its compiled Keras model per actor process (what a careful Flower user does) and trains
either with fedless_nb's own training step (`--flower-training step`, the default: the same
compute on both sides, so the difference is the orchestration) or with `model.fit`, as
Flower's TensorFlow examples do (`--flower-training fit`).

Each system and N runs in a fresh child process that samples the peak RSS of its whole process
tree (for Flower: the driver, Ray's GCS and raylet, and the actors). Flower runs in its own
virtual environment, made by `bash bench/setup_flower_env.sh`.

    python bench/bench_flower.py --clients 20 100 200 --rounds 6 [--flower-training fit]

Per N it prints each system's line, then one comparison line with the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FLOWER_PYTHON = HERE / "flower-venv" / "bin" / "python"
SEED = 0


def _workload(clients: int) -> tuple:
    """The digits split, the clients' partitions and the model, exactly as a fedless_nb run makes them."""
    from fedless_nb.data import load_dataset, partition_dataset
    from fedless_nb.model import build_model, make_optimizer, model_spec_from
    from fedless_nb.zoo import mlp

    dataset = load_dataset("digits")
    parts = partition_dataset(dataset, "iid", clients, SEED)
    context = {"input_shape": dataset.input_shape, "num_classes": dataset.num_classes, "hidden_units": [128]}
    spec, initial = model_spec_from(mlp, seed=SEED, builder_context=context)
    return dataset, parts, spec, initial, lambda: build_model(spec, make_optimizer("sgd", 0.1))


def measure_flower(clients: int, rounds: int, training: str) -> dict:
    import flwr
    import numpy as np
    from flwr.client import NumPyClient
    from flwr.common import ndarrays_to_parameters
    from flwr.server import ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.simulation import start_simulation

    from fedless_nb.records.memory import TreeMemorySampler

    dataset, parts, spec, initial, new_model = _workload(clients)
    per_process: dict[str, object] = {}

    def model():
        if "model" not in per_process:  # one compiled model per actor process, reused by every client it runs
            per_process["model"] = new_model()
        return per_process["model"]

    class DigitsClient(NumPyClient):
        def __init__(self, index: int) -> None:
            self.x, self.y = dataset.x_train[parts[index]], dataset.y_train[parts[index]]

        def fit(self, parameters, config):
            if training == "step":  # fedless_nb's warm, traced training step, cached per process
                from fedless_nb.function.handler import _compiled_model, train_client

                compiled, _ = _compiled_model(spec.to_wire(), {"optimizer": "sgd", "learning_rate": 0.1})
                compiled.load(parameters)
                local = train_client(compiled, self.x, self.y, {"epochs": 1, "batch_size": 32, "seed": config.get("seed", 0)})
                return compiled.weights(), len(self.x), {"loss": local.metrics["loss"]}
            keras_model = model()
            keras_model.set_weights(parameters)
            history = keras_model.fit(self.x, self.y, epochs=1, batch_size=32, verbose=0)
            return keras_model.get_weights(), len(self.x), {"loss": float(history.history["loss"][-1])}

    def client_fn(context):
        return DigitsClient(int(context.node_config["partition-id"])).to_client()

    evaluations: list[tuple[float, float]] = []
    evaluator = new_model()

    def evaluate(server_round, parameters, config):
        evaluator.set_weights(parameters)
        loss, accuracy = evaluator.evaluate(dataset.x_test, dataset.y_test, verbose=0)
        evaluations.append((time.perf_counter(), float(accuracy)))
        return float(loss), {"accuracy": float(accuracy)}

    class CheckedFedAvg(FedAvg):
        """FedAvg that stops the run when a client failed: a broken client must not pass for a fast round."""

        def aggregate_fit(self, server_round, results, failures):
            if failures:
                raise RuntimeError(f"round {server_round}: {len(failures)} Flower clients failed, e.g. {failures[0]!r}")
            return super().aggregate_fit(server_round, results, failures)

    strategy = CheckedFedAvg(
        fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=clients, min_available_clients=clients,
        evaluate_fn=evaluate, initial_parameters=ndarrays_to_parameters([np.asarray(w) for w in initial]),
    )
    with TreeMemorySampler() as sampler:
        start_simulation(
            client_fn=client_fn, num_clients=clients, config=ServerConfig(num_rounds=rounds), strategy=strategy,
            client_resources={"num_cpus": 1, "num_gpus": 0.0},
            ray_init_args={"num_cpus": 2, "num_gpus": 0, "include_dashboard": False, "ignore_reinit_error": True},
        )
    times = [at for at, _ in evaluations]  # evaluation 0 is the initial model; each later one ends a round
    durations = [b - a for a, b in zip(times, times[1:])]
    return {
        "bench": "flower", "system": f"flwr {flwr.__version__} (Ray simulation, training: {training})", "clients": clients,
        "rounds": rounds, "seconds_per_round": round(statistics.median(durations[1:]), 4),
        "first_round_seconds": round(durations[0], 3), "peak_tree_rss_mb": round(sampler.peak_mb, 1),
        "final_accuracy": round(evaluations[-1][1], 4),
    }


def measure_fedless(clients: int, rounds: int) -> dict:
    sys.path.insert(0, str(HERE))
    from bench_rounds import measure

    result = measure(clients, rounds, workers=2)
    return {**result, "bench": "flower", "system": "fedless_nb (local provider)"}


def _child(python: Path | str, system: str, clients: int, rounds: int, training: str) -> dict:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", "RAY_DEDUP_LOGS": "0"}
    with tempfile.TemporaryDirectory(prefix="bench-flower-") as directory:
        child = subprocess.run(
            [str(python), __file__, "--single", system, "--clients", str(clients), "--rounds", str(rounds),
             "--flower-training", training],
            capture_output=True, text=True, env=environment, cwd=directory,
        )
    if child.returncode != 0:
        raise SystemExit(f"{system} at {clients} clients failed:\n{child.stderr[-3000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[20, 100, 200])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--flower-training", choices=["step", "fit"], default="step")
    parser.add_argument("--single", choices=["fedless", "flower"], help="measure one system in this process (internal)")
    arguments = parser.parse_args()
    if arguments.single:
        if arguments.single == "flower":
            result = measure_flower(arguments.clients[0], arguments.rounds, arguments.flower_training)
        else:
            result = measure_fedless(arguments.clients[0], arguments.rounds)
        print(json.dumps(result), flush=True)
        return
    if not FLOWER_PYTHON.exists():
        raise SystemExit(f"no Flower environment at {FLOWER_PYTHON}; run: bash bench/setup_flower_env.sh")
    for clients in arguments.clients:
        fedless = _child(sys.executable, "fedless", clients, arguments.rounds, arguments.flower_training)
        print(json.dumps(fedless), flush=True)
        flower = _child(FLOWER_PYTHON, "flower", clients, arguments.rounds, arguments.flower_training)
        print(json.dumps(flower), flush=True)
        print(json.dumps({
            "bench": "flower", "comparison": True, "clients": clients, "flower_training": arguments.flower_training,
            "speedup_per_round": round(flower["seconds_per_round"] / fedless["seconds_per_round"], 2),
            "memory_ratio": round(fedless["peak_tree_rss_mb"] / flower["peak_tree_rss_mb"], 3),
            "accuracy_fedless": fedless["final_accuracy"], "accuracy_flower": flower["final_accuracy"],
        }), flush=True)


if __name__ == "__main__":
    main()
