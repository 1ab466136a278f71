"""The privacy accountant's cost per round, and a DP FedBuff run's round times against the same run without DP.

`ledger`: C clients over R rounds with the controller's own accounting work per round: half of the
clients (seeded) finish an invocation (its round composed in the accountant's worker), then the
budget check of every client and the round's figures (worst and mean epsilon). Partition sizes
vary (30-300 examples, batch 16, 1 epoch), so the clients' rounds and histories differ. Prints
the milliseconds per client per round at a few round numbers, to show they stay flat.

`resume`: the checkpointed ledger of C clients after R rounds (each client in a seeded half of them, its
partition one of `--sizes` distinct sizes) loaded back, as a resumed run does: seconds to replay it, with
each distinct round's RDP vector already computed (what the run computed once) and from scratch.

`run`: digits over 8 clients, FedBuff (concurrency 4, buffer 2), local provider with 2 workers,
MLP 64-32-10, 1 local epoch, batch 16; with DP-SGD (noise 1.0, sampling and microbatches as given)
and without. Prints the median round seconds (rounds 2 onwards) of each.

    python bench/bench_accounting.py ledger --clients 20 200 1000 --rounds 100
    python bench/bench_accounting.py run --rounds 10
    python bench/bench_accounting.py resume --clients 1000 --rounds 2000 --sizes 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def measure_ledger(clients: int, rounds: int, accountant: str) -> dict:
    from fedless_nb.function.batching import privacy_facts
    from fedless_nb.privacy.accounting import ExampleLevelAccountant

    rng = np.random.default_rng(0)
    train = {"epochs": 1, "batch_size": 16, "dp": {"l2_norm_clip": 1.0, "noise_multiplier": 1.0, "sampling": "poisson"}}
    ids = [f"client-{index:04d}" for index in range(clients)]
    facts = {client_id: privacy_facts(int(rng.integers(30, 301)), train) for client_id in ids}
    ledger = ExampleLevelAccountant(1e-5, accountant, target_epsilon=1e6, expected_facts=facts)

    class Finished:
        outcome = "succeeded"

        def __init__(self, client_id: str) -> None:
            self.client_id = client_id

    per_round = []
    for round_number in range(1, rounds + 1):
        started = time.perf_counter()
        for index in sorted(rng.choice(clients, size=max(1, clients // 2), replace=False)):
            ledger(Finished(ids[index]))
        allowed = sum(ledger.allows(client_id) for client_id in ids)
        figures = ledger.round_metrics(round_number)
        per_round.append((time.perf_counter() - started) * 1000 / clients)
        assert allowed == clients and figures["epsilon_max"] > 0
    ledger.close()
    marks = {f"round_{r}": round(per_round[r - 1], 3) for r in (1, 2, 10, rounds // 2, rounds) if r <= rounds}
    return {"bench": "ledger", "accountant": accountant, "clients": clients, "rounds": rounds,
            "ms_per_client_per_round_median": round(statistics.median(per_round), 3),
            "ms_per_client_per_round_median_after_round_1": round(statistics.median(per_round[1:] or per_round), 3),
            "ms_per_client_per_round_max_after_round_1": round(max(per_round[1:] or per_round), 3),
            **marks, "final_epsilon_max": round(figures["epsilon_max"], 4)}


def measure_resume(clients: int, rounds: int, sizes: int, accountant: str) -> dict:
    from fedless_nb.function.batching import privacy_facts
    from fedless_nb.privacy.accounting import DpRound, PrivacyLedger

    rng = np.random.default_rng(0)
    train = {"epochs": 1, "batch_size": 16, "dp": {"l2_norm_clip": 1.0, "noise_multiplier": 1.0, "sampling": "poisson"}}
    planned = [DpRound.from_facts(privacy_facts(30 + 10 * index, train)) for index in range(sizes)]
    ledger = PrivacyLedger(1e-5, accountant)
    for round_number in range(rounds):
        for index in rng.choice(clients, size=max(1, clients // 2), replace=False):
            ledger.add(f"client-{index:04d}", planned[index % sizes])
    state = ledger.state()
    figures = {}
    for name, losses in (("seconds_with_round_vectors_cached", ledger.losses), ("seconds_from_scratch", None)):
        restored = PrivacyLedger(1e-5, accountant)
        restored.losses = losses or restored.losses
        started = time.perf_counter()
        restored.load_state(state)
        figures[name] = round(time.perf_counter() - started, 3)
    assert all(restored.epsilon(c) == ledger.epsilon(c) for c in ledger.subjects)
    return {"bench": "resume", "accountant": accountant, "clients": clients, "rounds": rounds, "distinct_sizes": sizes,
            "client_rounds": sum(s.rounds for s in ledger.subjects.values()), **figures}


def measure_run(dp: dict | None, rounds: int) -> dict:
    from fedless_nb.experiment import ExperimentConfig
    from fedless_nb.records.history import History
    from fedless_nb.runner import run_experiment

    directory = Path(tempfile.mkdtemp(prefix="fedless-bench-accounting-"))
    config = ExperimentConfig.from_dict({
        "name": "dp" if dp else "no-dp", "clients": 8, "clients_per_round": 4, "rounds": rounds,
        "mode": "async", "asynchronous": {"concurrency": 4, "buffer_size": 2},
        "history": str(directory / "history.db"), "store": {"path": str(directory / "store")},
        "model": {"builder": "mlp", "options": {"hidden_units": [32]}},
        "train": {"epochs": 1, "batch_size": 16, "learning_rate": 0.1, "dp": dp},
        "providers": [{"kind": "local", "name": "local", "workers": 2}],
    })
    result = run_experiment(config)
    history = History(config.history)
    rows = history.rounds(result.run_id)
    seconds = [row["duration"] for row in rows]
    train = [row["t_train"] for row in history.invocations(result.run_id) if row.get("t_train")]
    epsilon = rows[-1].get("privacy_epsilon_max")
    return {"bench": "run", "dp": dp, "rounds": len(rows),
            "round_seconds_median": round(statistics.median(seconds[1:]), 3),
            "round_seconds": [round(s, 3) for s in seconds],
            "function_train_seconds_median": round(statistics.median(train), 3) if train else None,
            "final_epsilon_max": None if epsilon is None else round(epsilon, 4),
            "final_accuracy": round(result.final_accuracy or 0.0, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("ledger", "run", "resume"))
    parser.add_argument("--clients", type=int, nargs="+", default=[20, 200, 1000])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--accountant", default="rdp")
    parser.add_argument("--sizes", type=int, default=1, help="resume: distinct partition sizes among the clients")
    parser.add_argument("--sampling", default="shuffle", help="the DP run's train.dp.sampling")
    parser.add_argument("--microbatches", type=int, default=16, help="the DP run's num_microbatches (shuffle only)")
    options = parser.parse_args()
    if options.what in ("ledger", "resume"):
        for clients in options.clients:
            figures = measure_ledger(clients, options.rounds, options.accountant) if options.what == "ledger" else \
                measure_resume(clients, options.rounds, options.sizes, options.accountant)
            print(json.dumps(figures), flush=True)
        return
    dp = {"noise_multiplier": 1.0, "l2_norm_clip": 1.0, "sampling": options.sampling}
    if options.sampling == "shuffle":
        dp["num_microbatches"] = options.microbatches
    for settings in (None, dp):
        print(json.dumps(measure_run(settings, options.rounds)), flush=True)


if __name__ == "__main__":
    main()
