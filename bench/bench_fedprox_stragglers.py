"""The FedProx paper's systems-heterogeneity finding (Li et al., MLSys 2020, Fig. 1) on Synthetic(1,1).

Workload, after the paper's: Synthetic(1,1) (30 devices, natural partition: one device per client),
multinomial logistic regression, SGD lr 0.01, batch 10, 10 clients per round, E local epochs. In every
round 90% of the selected clients straggle and manage only `--work` of their epochs. Strategies:
FedAvg that drops the stragglers (the paper's FedAvg), FedProx with mu = 0 and mu = 1 that keep their
partial work, and FedNova (Wang et al. 2020), which normalizes it by local steps. The metric is the
paper's: the training loss of each round's global model over all training data. Runs on the local
provider (real function processes). Prints one JSON line per strategy and round, then a summary
line per strategy; `--figure` writes the curves as a PNG.

    python bench/bench_fedprox_stragglers.py --rounds 40 --epochs 20 --figure docs/fedprox_stragglers.png
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

VARIANTS = {
    "fedavg (drop stragglers)": {"name": "fedavg", "options": {"partial_work": "drop"}},
    "fedprox mu=0 (partial work)": {"name": "fedprox", "options": {"proximal_mu": 0.0}},
    "fedprox mu=1 (partial work)": {"name": "fedprox", "options": {"proximal_mu": 1.0}},
    "fednova (partial work)": {"name": "fednova", "options": {}},
}


def run_variant(label: str, strategy: dict[str, Any], arguments: argparse.Namespace) -> list[dict[str, Any]]:
    """One run; the training loss of every round's global model, read back from the run's store."""
    from fedless_nb.data import load_dataset
    from fedless_nb.experiment import ExperimentConfig
    from fedless_nb.runner import run_experiment
    from fedless_nb.store import LocalStore, decode_arrays
    from fedless_nb.store.keys import global_weights_key

    directory = Path(tempfile.mkdtemp(prefix="fedless-fedprox-"))
    config = ExperimentConfig.from_dict({
        "name": "fedprox-stragglers", "seed": arguments.seed, "clients": 30, "clients_per_round": 10,
        "rounds": arguments.rounds, "round_deadline": 3600.0,
        "history": str(directory / "history.db"), "store": {"path": str(directory / "store")},
        "data": {"dataset": "synthetic", "options": {"alpha": 1.0, "beta": 1.0, "seed": arguments.seed},
                 "partition": "natural"},
        "model": {"builder": "logistic_regression"},
        "train": {"epochs": arguments.epochs, "batch_size": 10, "optimizer": "sgd", "learning_rate": 0.01},
        "strategy": strategy,
        "stragglers": {"fraction": arguments.stragglers, "work": arguments.work},
        "providers": [{"kind": "local", "workers": arguments.workers, "timeout": 3600}],
    })
    started = time.monotonic()
    result = run_experiment(config)
    seconds = time.monotonic() - started
    data = load_dataset("synthetic", alpha=1.0, beta=1.0, seed=arguments.seed)
    model, store = result.model(), LocalStore(directory / "store")
    rows = []
    for round_number in range(0, arguments.rounds + 1):
        model.set_weights(decode_arrays(store.get(global_weights_key(result.run_id, round_number))))
        loss, accuracy = model.evaluate(data.x_train, data.y_train, batch_size=4096, verbose=0)
        _, test_accuracy = model.evaluate(data.x_test, data.y_test, batch_size=4096, verbose=0)
        rows.append({"bench": "fedprox_stragglers", "strategy": label, "round": round_number,
                     "train_loss": round(float(loss), 4), "train_accuracy": round(float(accuracy), 4),
                     "test_accuracy": round(float(test_accuracy), 4), "run_seconds": round(seconds, 1)})
    return rows


def plot(curves: dict[str, list[dict[str, Any]]], arguments: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for label, rows in curves.items():
        axis.plot([r["round"] for r in rows], [r["train_loss"] for r in rows], label=label)
    axis.set(xlabel="round", ylabel="training loss",
             title=f"Synthetic(1,1), {arguments.stragglers:.0%} stragglers at {arguments.work:g} of E={arguments.epochs}")
    axis.legend()
    figure.tight_layout()
    Path(arguments.figure).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(arguments.figure, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--stragglers", type=float, default=0.9, help="share of each round's clients that straggle")
    parser.add_argument("--work", type=float, default=0.5, help="share of its epochs a straggler manages")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--figure", help="write the training-loss curves to this PNG")
    arguments = parser.parse_args()
    curves = {}
    for label, strategy in VARIANTS.items():
        curves[label] = run_variant(label, strategy, arguments)
        for row in curves[label]:
            print(json.dumps(row), flush=True)
    for label, rows in curves.items():
        losses = [r["train_loss"] for r in rows[1:]]
        print(json.dumps({"bench": "fedprox_stragglers_summary", "strategy": label, "rounds": arguments.rounds,
                          "final_train_loss": losses[-1], "min_train_loss": min(losses),
                          "final_test_accuracy": rows[-1]["test_accuracy"], "run_seconds": rows[-1]["run_seconds"]}))
    if arguments.figure:
        plot(curves, arguments)


if __name__ == "__main__":
    main()
