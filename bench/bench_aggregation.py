"""Controller against tree aggregation at 1,000 clients per round: what the controller downloads, its own
peak memory, and the round time.

Workload: digits split IID over N clients (1 to 2 examples each at 1,000), MLP 64-H-10 (H = --hidden, so
an update is about 4 * (64 H + 11 H + 10) bytes), SGD lr 0.1, 1 local epoch, every client in every round,
FedAvg, the local provider with 2 workers. "controller": the controller reads every update and folds it
into the running sum as it arrives (the streaming of rounds/streaming.py); "functions": aggregator
functions on the same provider read and sum shards of `--fan-in` updates (rounds/tree.py) and the
controller reads only their partial sums. Each mode runs in a fresh child process, so the controller's
peak RSS (ru_maxrss of that process; the workers are other processes) is its own; the bytes it read
are counted at its store. Prints one JSON line per mode.

With --secagg-neighbours K the rounds are secure (SecAgg+ with K neighbours, rounds/secagg.py): in
"controller" mode the controller reads every masked vector and sums them itself; in "functions" mode
aggregator functions sum them modulo 2^32 and the controller reads only their partial sums (it reads the
small key, share and reveal objects in both).

    python bench/bench_aggregation.py --clients 1000 --rounds 2 --hidden 256 --fan-in 50
    python bench/bench_aggregation.py --clients 100 --rounds 2 --hidden 256 --fan-in 10 --secagg-neighbours 10
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def measure(mode: str, clients: int, rounds: int, hidden: int, fan_in: int, workers: int,
            secagg_neighbours: int | None) -> dict:
    from fedless_nb.experiment import ExperimentConfig
    from fedless_nb.records.history import History
    from fedless_nb.runner import run_experiment
    from fedless_nb.store.local import LocalStore

    read = {"bytes": 0, "objects": 0, "update_bytes": 0}
    get = LocalStore.get

    def counted_get(self: LocalStore, key: str) -> bytes:
        data = get(self, key)
        read["bytes"] += len(data)
        read["objects"] += 1
        if "/updates/" in key or key.endswith((".masked", ".sum")):
            read["update_bytes"] += len(data)  # updates, masked vectors and partial sums, not the global model
        return data

    LocalStore.get = counted_get  # this process is the controller; the functions run in worker processes
    directory = Path(tempfile.mkdtemp(prefix="fedless-bench-"))
    secure = {} if secagg_neighbours is None else {"secure_aggregation": {"neighbours": secagg_neighbours},
                                                   "max_norm_ratio": 0}
    config = ExperimentConfig.from_dict({
        **secure, "name": f"bench-aggregation-{mode}", "clients": clients, "clients_per_round": clients, "rounds": rounds,
        "history": str(directory / "history.db"), "store": {"path": str(directory / "store")},
        "data": {"dataset": "digits", "partition": "iid"}, "round_deadline": 3600,
        "model": {"builder": "mlp", "options": {"hidden_units": [hidden]}},
        "train": {"epochs": 1, "batch_size": 32, "optimizer": "sgd", "learning_rate": 0.1},
        "aggregation": {"where": mode, "fan_in": fan_in}, "providers": [{"kind": "local", "workers": workers}],
    })
    result = run_experiment(config)
    history = History(config.history)
    rows = history.rounds(result.run_id)
    aggregations = history.aggregations(result.run_id)
    return {
        "bench": "aggregation", "mode": mode, "clients_per_round": clients, "rounds": rounds, "hidden": hidden,
        "fan_in": fan_in, "workers": workers, "secagg_neighbours": secagg_neighbours,
        "update_bytes": (64 * hidden + hidden + hidden * 10 + 10) * 4,
        "seconds_per_round": round(statistics.median(row["duration"] for row in rows), 2),
        "controller_bytes_read_per_round": read["bytes"] // rounds,
        "controller_objects_read_per_round": read["objects"] // rounds,
        "controller_update_bytes_read_per_round": read["update_bytes"] // rounds,
        "controller_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "aggregator_invocations_per_round": len(aggregations) / rounds,
        "aggregator_seconds_per_round": round(sum(a["finished_at"] - a["started_at"] for a in aggregations) / rounds, 2),
        "succeeded_per_round": [row["succeeded"] for row in rows],
        "final_accuracy": round(result.final_accuracy, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", default=["controller", "functions"], choices=["controller", "functions"])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--fan-in", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--secagg-neighbours", type=int, default=None,
                        help="secure rounds, SecAgg+ with this many neighbours (0: every other client)")
    parser.add_argument("--single", action="store_true", help="measure one mode in this process (used internally)")
    arguments = parser.parse_args()
    if arguments.single:
        print(json.dumps(measure(arguments.modes[0], arguments.clients, arguments.rounds, arguments.hidden,
                                 arguments.fan_in, arguments.workers, arguments.secagg_neighbours)), flush=True)
        return
    for mode in arguments.modes:
        child = subprocess.run(
            [sys.executable, __file__, "--single", "--modes", mode, "--clients", str(arguments.clients),
             "--rounds", str(arguments.rounds), "--hidden", str(arguments.hidden), "--fan-in", str(arguments.fan_in),
             "--workers", str(arguments.workers),
             *([] if arguments.secagg_neighbours is None else ["--secagg-neighbours", str(arguments.secagg_neighbours)])],
            capture_output=True, text=True, check=True,
        )
        print(child.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
