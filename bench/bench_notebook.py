"""What a notebook user waits for: a fresh kernel to the first round's accuracy, a second run's first round
(warm workers, see fedless_nb/notebook/pool.py), and the kernel's memory over repeated runs.

A real Jupyter kernel (jupyter_client), the magics with the text dashboard (its "Round 1/N" line marks the
first accuracy), digits over 10 clients (5 per round), 2 local workers, the default training settings.
Prints one JSON line per measurement.

    python bench/bench_notebook.py --runs 10
    python bench/bench_notebook.py --runs 1 --cold     # the second run with fresh workers, for comparison
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil
from jupyter_client.manager import KernelManager

REPOSITORY = Path(__file__).resolve().parents[1]
TRAIN = "%fedless_train --clients 10 --rounds {rounds} --dashboard text"


def execute(client, code: str, started: float) -> tuple[str, float | None]:
    """Run one cell; its stdout and the seconds from `started` to its first "Round 1/" line."""
    first_round: list[float] = []
    output: list[str] = []

    def hook(message: dict) -> None:
        if message["msg_type"] == "stream":
            output.append(message["content"]["text"])
            if "Round 1/" in message["content"]["text"] and not first_round:
                first_round.append(time.perf_counter() - started)

    reply = client.execute_interactive(code, timeout=600, output_hook=hook)
    if reply["content"]["status"] != "ok":
        raise RuntimeError(f"{code!r} failed: {reply['content']}")
    return "".join(output), first_round[0] if first_round else None


def round_one_seconds(client, started: float) -> float:
    """Round 1's own duration (selection to aggregation), from the history of the kernel's last run."""
    output, _ = execute(client, "print(run.rounds_frame()['duration'].iloc[0])", started)
    return round(float(output.strip().splitlines()[-1]), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs for the memory measurement")
    parser.add_argument("--cold", action="store_true", help="end the warm workers before the second run (the baseline)")
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="fedless-bench-notebook-")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))}

    started = time.perf_counter()
    manager = KernelManager(kernel_name="python3")
    manager.start_kernel(cwd=directory, env=environment)
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=120)
        execute(client, "%load_ext fedless_nb", started)
        _, first = execute(client, f"run = {TRAIN.format(rounds=2)}", started)
        print(json.dumps({"bench": "notebook", "measure": "fresh_kernel_to_first_accuracy_seconds",
                          "seconds": round(first, 2), "round_1_seconds": round_one_seconds(client, started)}), flush=True)

        if args.cold:
            execute(client, "%fedless_pool --end", started)
        second_started = time.perf_counter()
        _, second = execute(client, f"run = {TRAIN.format(rounds=2)}", second_started)
        print(json.dumps({"bench": "notebook", "measure": "second_run_first_round_seconds", "warm": not args.cold,
                          "cell_to_first_accuracy_seconds": round(second, 2),
                          "round_1_seconds": round_one_seconds(client, started)}), flush=True)

        pid = int(execute(client, "import os; print(os.getpid())", started)[0])
        kernel = psutil.Process(pid)
        rss = []
        for _ in range(args.runs):
            execute(client, f"run = {TRAIN.format(rounds=1)}", started)
            rss.append(round(kernel.memory_info().rss / 2**20, 1))
        workers = kernel.children(recursive=True)
        print(json.dumps({"bench": "notebook", "measure": "kernel_rss_mb_per_run", "runs": args.runs,
                          "rss_mb": rss, "growth_mb_after_first": round(rss[-1] - rss[0], 1),
                          "warm_workers": len(workers),
                          "worker_rss_mb": [round(w.memory_info().rss / 2**20, 1) for w in workers]}), flush=True)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


if __name__ == "__main__":
    sys.exit(main())
