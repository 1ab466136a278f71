"""Overhead of secure aggregation per round against plain FedAvg: wall time, bytes stored, invocations.

Workload: digits IID over C clients, all C selected in each round, MLP 64-16-10 (1,210 values),
1 local epoch, batch 32; the local provider with W workers; two rounds, of which the second (warm:
the workers' cold starts fall in the first) is measured. Secure rounds run with neighbours 0 (SecAgg: every other client) and,
with --neighbours K, with a Harary graph of degree K (SecAgg+). Prints one JSON line per mode:
the round's wall time, the function seconds per stage, the bytes the round's objects take in
the store (updates, or the five stages' objects) and the invocations.

    python bench/bench_secagg.py --clients 20 --workers 2
    python bench/bench_secagg.py --clients 100 --workers 2 --neighbours 10

With --read-latency-ms L, the plain mode and one secure mode (neighbours 0) over functions deployed for one client
each, under `aggregation: {where: auto, threshold_mb: 0}`: their aggregators refuse, so the controller reads the round's
updates (plain) or masked vectors (secure) itself in round 1 (and sums every later round's as under `where:
controller`), each read taking L ms more (a remote store's round trip); the plain line adds `update_read_seconds`
(read --reads-in-flight at a time, default rounds/synchronous.py's READS_IN_FLIGHT), the secure one
`masked_read_seconds`: the controller's time reading them in round 1.

    python bench/bench_secagg.py --clients 20 --workers 2 --read-latency-ms 50
    python bench/bench_secagg.py --clients 20 --workers 2 --read-latency-ms 50 --skip-complete --reads-in-flight 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent.parent / "tests"  # workloads.serves_one_client_each


def fallback_options(directory: Path, workers: int, latency: float, secure: bool) -> tuple[dict, dict[str, Any]]:
    """The config's aggregation and run_experiment's providers and store for --read-latency-ms, and a record of the
    controller's seconds in each round's read of what the aggregators refused (masked vectors, or plain updates)."""
    from fedless_nb.providers import LocalProvider
    from fedless_nb.rounds.secagg import SecureAggregationRounds
    from fedless_nb.rounds.synchronous import SynchronousRounds
    from fedless_nb.store import LocalStore

    class RemoteLikeStore(LocalStore):
        async def aget(self, key: str) -> bytes:
            await asyncio.sleep(latency)
            return self.get(key)

    owner, name = (SecureAggregationRounds, "_read_masked") if secure else (SynchronousRounds, "read_refused")
    reading = getattr(owner, name)
    seconds: list[float] = []

    async def timed(self: Any, *arguments: Any) -> Any:
        started = time.monotonic()
        read = await reading(self, *arguments)
        seconds.append(time.monotonic() - started)
        return read

    setattr(owner, name, timed)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    sys.path.insert(0, str(TESTS))
    provider = LocalProvider("local", workers=workers, entry_point="workloads:serves_one_client_each")
    return ({"aggregation": {"where": "auto", "threshold_mb": 0}},
            {"providers": {"local": provider}, "store": RemoteLikeStore(directory / "store"), "seconds": seconds})


def measure(clients: int, workers: int, secure: dict | None, latency: float | None = None) -> dict:
    from fedless_nb.experiment import ExperimentConfig
    from fedless_nb.records.history import History
    from fedless_nb.runner import run_experiment

    directory = Path(tempfile.mkdtemp(prefix="fedless-bench-secagg-"))
    aggregation, options = (fallback_options(directory, workers, latency, secure is not None) if latency is not None
                            else ({}, {}))
    read_seconds = options.pop("seconds", None)
    config = ExperimentConfig.from_dict({
        "name": "secure" if secure is not None else "plain", "clients": clients, "clients_per_round": clients,
        "rounds": 2, "round_deadline": 1800.0, "max_norm_ratio": 0,
        "history": str(directory / "history.db"), "store": {"path": str(directory / "store")},
        "model": {"builder": "mlp", "options": {"hidden_units": [16]}},
        "train": {"epochs": 1, "batch_size": 32, "learning_rate": 0.1},
        "providers": [{"kind": "local", "workers": workers}],
        **({"secure_aggregation": secure} if secure is not None else {}), **aggregation,
    })
    started = time.monotonic()
    result = run_experiment(config, **options)
    seconds = time.monotonic() - started
    history = History(config.history)
    measured = history.rounds(result.run_id)[1]
    invocations = [row for row in history.invocations(result.run_id) if row["round"] == 2]
    per_stage: dict[str, float] = {}
    for row in invocations:
        stage = row["stage"] or "train"
        per_stage[stage] = round(per_stage.get(stage, 0.0) + (row["t_total"] or 0.0), 3)
    round_dir = Path(config.store.path) / "runs" / result.run_id / "round-00002"
    stored = sum(path.stat().st_size for path in round_dir.rglob("*") if path.is_file() and path.name != "global.weights")
    return {"mode": config.name, **({"neighbours": secure["neighbours"]} if secure is not None else {}),
            "clients": clients, "workers": workers, "round_seconds": round(measured["duration"], 2),
            "run_seconds": round(seconds, 2), "function_seconds": per_stage, "bytes_stored": stored,
            "invocations": len(invocations), "succeeded": measured["succeeded"],
            "accuracy": round(result.final_accuracy or 0.0, 4),
            **({"read_latency_ms": latency * 1000,
                "masked_read_seconds" if secure is not None else "update_read_seconds": round(read_seconds[0], 3)}
               if read_seconds is not None else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--neighbours", type=int, default=0, help="also run SecAgg+ with this degree (0: skip)")
    parser.add_argument("--skip-complete", action="store_true", help="skip the complete graph (SecAgg)")
    parser.add_argument("--read-latency-ms", type=float, default=None,
                        help="only: the controller reads the refused updates (plain) and masked vectors (secure; "
                             "not with --skip-complete) itself, each read this much slower")
    parser.add_argument("--reads-in-flight", type=int, default=None,
                        help="with --read-latency-ms: the plain round's reads at once (default: READS_IN_FLIGHT; "
                             "1: one after another, as before)")
    options = parser.parse_args()
    if options.read_latency_ms is not None:
        from fedless_nb.rounds import synchronous

        options.reads_in_flight = options.reads_in_flight or synchronous.READS_IN_FLIGHT
        synchronous.READS_IN_FLIGHT = options.reads_in_flight
        for secure in ([None] if options.skip_complete else [None, {"neighbours": 0}]):
            line = measure(options.clients, options.workers, secure, options.read_latency_ms / 1000)
            print(json.dumps({**line, **({"reads_in_flight": options.reads_in_flight} if secure is None else {})}),
                  flush=True)
        return
    modes: list[dict | None] = [None]
    if not options.skip_complete:
        modes.append({"neighbours": 0})
    if options.neighbours:
        modes.append({"neighbours": options.neighbours})
    for secure in modes:
        print(json.dumps(measure(options.clients, options.workers, secure)), flush=True)


if __name__ == "__main__":
    main()
