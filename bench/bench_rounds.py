"""Seconds per round and peak memory of the whole process tree, on the foundation's workload.

Workload (as a user would run it): digits split IID over N clients, MLP 64-128-10, SGD lr 0.1,
1 local epoch, batch 32, every client in every round, the local provider with 2 workers.
Each N runs in a fresh child process so its memory peak is its own. Prints one JSON line per N.

    python bench/bench_rounds.py --clients 20 100 --rounds 6

Scale runs select `--per-round` of the N clients each round. Digits has 1,437 training examples, too
few for thousands of clients, so `--data synthetic` uses the synthetic dataset with 100 devices
(32,099 training examples, 60 features) split IID: ~3 examples per client at 10,000 clients.

    python bench/bench_rounds.py --data synthetic --clients 20 10000 1000 --per-round 20 100 1000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


DATA = {
    "digits": {"dataset": "digits", "partition": "iid"},
    "synthetic": {"dataset": "synthetic", "options": {"devices": 100}, "partition": "iid"},
}


def measure(clients: int, rounds: int, workers: int, per_round: int | None = None, data: str = "digits") -> dict:
    """One run of `clients` (`per_round` of them each round, default all); bench_flower.py measures fedless_nb with it."""
    per_round = per_round or clients
    from fedless_nb.experiment import ExperimentConfig
    from fedless_nb.records.history import History
    from fedless_nb.records.memory import TreeMemorySampler
    from fedless_nb.runner import run_experiment

    directory = Path(tempfile.mkdtemp(prefix="fedless-bench-"))
    config = ExperimentConfig.from_dict({
        "name": f"bench-{clients}", "clients": clients, "clients_per_round": per_round, "rounds": rounds,
        "history": str(directory / "history.db"), "store": {"path": str(directory / "store")},
        "data": DATA[data],
        "model": {"builder": "mlp", "options": {"hidden_units": [128]}},
        "train": {"epochs": 1, "batch_size": 32, "optimizer": "sgd", "learning_rate": 0.1},
        "providers": [{"kind": "local", "workers": workers}],
    })
    with TreeMemorySampler() as sampler:
        result = run_experiment(config)
    history = History(config.history)
    rounds_rows = history.rounds(result.run_id)
    invocations = history.invocations(result.run_id)
    warm = [row for row in rounds_rows if row["round"] > 1]  # round 1 pays the workers' cold starts

    def spread(column: str) -> float:
        """A function-side time summed over the warm rounds' invocations, spread over the workers."""
        return sum(i[column] for i in invocations if i["round"] > 1) / workers / len(warm)

    seconds = statistics.median(row["duration"] for row in warm)
    calls = [i for i in invocations if i["round"] > 1]

    def per_call(column: str) -> float:
        """A function-side phase's median milliseconds per warm invocation."""
        return round(1000 * statistics.median(i[column] for i in calls), 2)

    return {
        "bench": "rounds", "data": data, "clients": clients, "per_round": per_round, "workers": workers, "rounds": rounds,
        "seconds_per_round": round(seconds, 4),
        "first_round_seconds": round(rounds_rows[0]["duration"], 3),
        "train_seconds_per_round": round(spread("t_train"), 4),
        "function_seconds_per_round": round(spread("t_total"), 4),
        "overhead_seconds_per_round": round(seconds - spread("t_train"), 4),
        "overhead_percent_of_train": round(100 * (seconds - spread("t_train")) / spread("t_train"), 1),
        "per_invocation_ms": {phase: per_call(f"t_{phase}") for phase in ("load", "train", "upload", "total")},
        "peak_tree_rss_mb": round(sampler.peak / 2**20, 1),
        "final_accuracy": round(result.final_accuracy, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--per-round", type=int, nargs="+", help="clients per round, one per --clients (default: all)")
    parser.add_argument("--data", choices=sorted(DATA), default="digits")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--single", action="store_true", help="measure one N in this process (used internally)")
    arguments = parser.parse_args()
    per_round = arguments.per_round or arguments.clients
    if len(per_round) != len(arguments.clients):
        parser.error("give one --per-round value for each --clients value")
    if arguments.single:
        print(json.dumps(measure(arguments.clients[0], arguments.rounds, arguments.workers, per_round[0],
                                 arguments.data)), flush=True)
        return
    for clients, selected in zip(arguments.clients, per_round):
        child = subprocess.run(
            [sys.executable, __file__, "--single", "--clients", str(clients), "--per-round", str(selected),
             "--rounds", str(arguments.rounds), "--workers", str(arguments.workers), "--data", arguments.data],
            capture_output=True, text=True,
        )
        if child.returncode:
            sys.exit(f"the run of {clients} clients failed:\n{child.stderr[-3000:]}")
        print(child.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
