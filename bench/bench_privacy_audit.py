"""Utility, epsilon and membership-inference AUC, advantage and PPV on digits at several DP-SGD noise levels (and without DP).

Workload: digits IID over C clients, every client in every round, MLP 64-64-10, SGD lr 0.3, E local
epochs, batch 16, Poisson-sampled DP-SGD (clip 1.0, delta 1e-5, RDP). The audit attacks client-0000's
training examples against the held-out test split with the final global model
(fedless_nb.privacy.audit). Prints one JSON line per noise level (null: no DP).

    python bench/bench_privacy_audit.py --clients 4 --rounds 3 --epochs 3 --noise none 0.5 1.0 2.0
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def measure(noise: float | None, clients: int, rounds: int, epochs: int) -> dict:
    from fedless_nb.experiment import ExperimentConfig
    from fedless_nb.privacy.audit import audit_run
    from fedless_nb.runner import run_experiment

    directory = Path(tempfile.mkdtemp(prefix="fedless-bench-audit-"))
    dp = None if noise is None else {"noise_multiplier": noise, "l2_norm_clip": 1.0, "delta": 1e-5}
    config = ExperimentConfig.from_dict({
        "name": f"audit-{noise}", "clients": clients, "clients_per_round": clients, "rounds": rounds,
        "history": str(directory / "history.db"), "store": {"path": str(directory / "store")},
        "model": {"builder": "mlp", "options": {"hidden_units": [64]}},
        "train": {"epochs": epochs, "batch_size": 16, "learning_rate": 0.3, "dp": dp},
    })
    started = time.monotonic()
    result = run_experiment(config)
    seconds = time.monotonic() - started
    audit = audit_run(result, "client-0000")
    report = result.privacy_report()
    return {"noise_multiplier": noise, "epsilon": None if report is None else round(report.epsilon, 3),
            "accuracy": round(result.final_accuracy or 0.0, 4),
            **{name: round(value, 4) for name, value in audit.to_dict().items() if name.startswith(("loss", "trained"))},
            "audited_examples": audit.members,
            "run_seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--noise", nargs="+", default=["none", "0.5", "1.0", "2.0"])
    options = parser.parse_args()
    for noise in options.noise:
        level = None if noise == "none" else float(noise)
        print(json.dumps(measure(level, options.clients, options.rounds, options.epochs)), flush=True)


if __name__ == "__main__":
    main()
