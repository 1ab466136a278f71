"""Wall time for the same number of updates: synchronous FedAvg rounds vs FedBuff, with one straggler.

Workload: digits IID over C clients, MLP 64-16-10, SGD lr 0.1, 5 local epochs, batch 32; the local
provider with one worker per client; client-0000 sleeps S seconds before every invocation.
Sync: every client in every round, R rounds (R * C updates). FedBuff: concurrency C, buffer M,
R * C / M buffered rounds (the same R * C updates). Prints one JSON line per mode.

    python bench/bench_async.py --clients 4 --rounds 2 --buffer 2 --straggler-seconds 10
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def straggler(payload: dict) -> dict:
    """The benchmark's function: client-0000 is slow by FEDLESS_BENCH_STRAGGLER_SECONDS, the rest train at once."""
    from fedless_nb.function.handler import handle

    if payload["client_id"] == "client-0000":
        time.sleep(float(os.environ["FEDLESS_BENCH_STRAGGLER_SECONDS"]))
    return handle(payload)


def measure(mode: str, clients: int, rounds: int, buffer: int) -> dict:
    from fedless_nb.experiment import ExperimentConfig
    from fedless_nb.records.history import History
    from fedless_nb.providers import LocalProvider
    from fedless_nb.runner import run_experiment

    directory = Path(tempfile.mkdtemp(prefix="fedless-bench-async-"))
    settings = {
        "name": mode, "clients": clients, "clients_per_round": clients, "round_deadline": 300.0,
        "history": str(directory / "history.db"), "store": {"path": str(directory / "store")},
        "model": {"builder": "mlp", "options": {"hidden_units": [16]}},
        "train": {"epochs": 5, "batch_size": 32, "learning_rate": 0.1},
    }
    if mode == "sync":
        settings["rounds"] = rounds
    else:
        settings.update(mode="async", rounds=rounds * clients // buffer,
                        asynchronous={"concurrency": clients, "buffer_size": buffer, "staleness": "polynomial"})
    config = ExperimentConfig.from_dict(settings)
    provider = LocalProvider("local", workers=clients, entry_point="bench_async:straggler")
    started = time.monotonic()
    result = run_experiment(config, providers={"local": provider})
    seconds = time.monotonic() - started
    history = History(config.history)
    updates = sum(row["succeeded"] for row in history.rounds(result.run_id))
    staleness = [row["staleness"] for row in history.invocations(result.run_id) if row["staleness"] is not None]
    return {"mode": mode, "clients": clients, "updates": updates, "aggregations": len(result.round_metrics),
            "wall_seconds": round(seconds, 2), "final_accuracy": round(result.final_accuracy or 0.0, 4),
            "max_staleness": max(staleness) if staleness else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--buffer", type=int, default=2)
    parser.add_argument("--straggler-seconds", type=float, default=10.0)
    options = parser.parse_args()
    os.environ["FEDLESS_BENCH_STRAGGLER_SECONDS"] = str(options.straggler_seconds)
    for mode in ("sync", "async"):
        line = measure(mode, options.clients, options.rounds, options.buffer)
        print(json.dumps({**line, "straggler_seconds": options.straggler_seconds}), flush=True)


if __name__ == "__main__":
    main()
