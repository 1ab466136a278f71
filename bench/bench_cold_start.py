"""Cold starts with and without a zygote: the first round of runs that start fresh local workers.

Each run trains 1 round of digits (MLP 64-128-10, batch 32, 1 epoch) with every one of its clients on a worker
of its own, so the round is the workers' cold starts plus one client step each. "exec" starts each worker
as a fresh interpreter (a run's default); "forked" forks it from one zygote shared by all the runs
(`shared_zygote()`), started once beforehand and timed on its own. Each run is a new provider, as each
run of a sweep or of a test suite is. Prints one JSON line per mode and worker count: the median of
`--repeats` runs.

    python bench/bench_cold_start.py --workers 2 6 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def first_round_seconds(workers: int) -> tuple[float, float, float]:
    """For `workers` fresh workers: the run's first round, the median invocation as the controller timed it (the
    worker's start included), and the median cold start the functions report (their model build)."""
    from fedless_nb.experiment import ExperimentConfig
    from fedless_nb.records.history import History
    from fedless_nb.runner import run_experiment

    directory = Path(tempfile.mkdtemp(prefix="fedless-bench-cold-"))
    config = ExperimentConfig.from_dict({
        "name": "cold", "clients": workers, "clients_per_round": workers, "rounds": 1,
        "history": str(directory / "history.db"), "store": {"path": str(directory / "store")},
        "data": {"dataset": "digits", "partition": "iid"},
        "model": {"builder": "mlp", "options": {"hidden_units": [128]}},
        "train": {"epochs": 1, "batch_size": 32, "optimizer": "sgd", "learning_rate": 0.1},
        "providers": [{"kind": "local", "workers": workers}],
    })
    result = run_experiment(config)
    history = History(config.history)
    (round_,) = history.rounds(result.run_id)
    invocations = history.invocations(result.run_id)
    return (round_["duration"], statistics.median(i["finished_at"] - i["started_at"] for i in invocations),
            statistics.median(i["t_cold_start"] for i in invocations))


def measure(mode: str, workers: int, repeats: int) -> dict:
    runs = [first_round_seconds(workers) for _ in range(repeats)]
    return {"mode": mode, "workers": workers, "repeats": repeats,
            "first_round_seconds": round(statistics.median(r[0] for r in runs), 2),
            "invocation_seconds": round(statistics.median(r[1] for r in runs), 2),
            "reported_cold_start_seconds": round(statistics.median(r[2] for r in runs), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 6])
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    from fedless_nb.providers.zygote import shared_zygote

    for workers in options.workers:
        print(json.dumps(measure("exec", workers, options.repeats)), flush=True)
    started = time.perf_counter()
    with shared_zygote():
        print(json.dumps({"mode": "zygote start", "seconds": round(time.perf_counter() - started, 2)}), flush=True)
        for workers in options.workers:
            print(json.dumps(measure("forked", workers, options.repeats)), flush=True)


if __name__ == "__main__":
    main()
