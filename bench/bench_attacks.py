"""Attack x defence: final test accuracy on digits with a fraction of malicious clients.

Workload: digits IID over C clients (all of them every round), MLP 64-32-10, SGD lr 0.1, 2 local
epochs, batch 16, R rounds. The malicious clients (providers/attacks.py, seeded) are compromised
functions: their bad results are signed. Defences: plain FedAvg with the norm screening off
(fedavg), FedMedian, trimmed mean (beta 0.2), Krum (f = the malicious count), FedAvg with the
norm screening on (screening: 3x the round's or recent rounds' median, max_update_norm 20), and
central DP's clipping (clip 1.0, noise multiplier 0.01). Every run shares one seed, so rows differ
by their attack and defence only. The clients run in this process (the client step itself, as a
function runs it) so that the 36 runs finish in minutes; prints one JSON line per run.

    python bench/bench_attacks.py --clients 10 --rounds 5 --fraction 0.2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

SECRET = "bench-attacks-secret"
DEFENCES: dict[str, dict[str, Any]] = {
    "fedavg": {"strategy": {"name": "fedavg"}},
    "fedmedian": {"strategy": {"name": "fedmedian"}},
    "trimmed_mean": {"strategy": {"name": "trimmed_mean", "options": {"beta": 0.2}}},
    "krum": {"strategy": {"name": "krum", "options": {"num_malicious": 2}}},
    "screening": {"strategy": {"name": "fedavg"}, "max_norm_ratio": 3.0, "max_update_norm": 20.0},
    "central_dp_clipping": {"strategy": {"name": "fedavg"}, "central_dp": {"clip_norm": 1.0, "noise_multiplier": 0.01}},
}


def in_process_provider() -> Any:
    """A provider whose function is the client step in this process (one invocation at a time, as a warm function)."""
    from fedless_nb.function import serving
    from fedless_nb.providers.base import InvocationError, Provider

    class InProcess(Provider):
        name, kind, secret = "local", "local", SECRET

        async def deploy(self, bundle: Any = None) -> None:
            os.environ["FEDLESS_RUN_SECRET"] = SECRET

        async def invoke(self, task: dict[str, Any]) -> dict[str, Any]:
            status, reply = await asyncio.to_thread(serving.invoke, json.dumps(task))
            if status != 200:
                raise InvocationError(reply["error"]["message"], "error")
            return json.loads(json.dumps(reply))  # as it arrives over the wire

        async def close(self) -> None:
            pass

        def describe(self) -> dict[str, Any]:
            return {"name": self.name, "kind": self.kind}

    return InProcess()


def measure(attack: str, defence: str, clients: int, rounds: int, fraction: float, directory: Path) -> dict:
    from fedless_nb.experiment import ExperimentConfig
    from fedless_nb.providers.attacks import Attack, MaliciousProvider
    from fedless_nb.records.history import History
    from fedless_nb.runner import client_ids, run_experiment

    settings = {
        "name": f"{attack}-{defence}", "clients": clients, "clients_per_round": clients, "rounds": rounds, "retries": 0,
        "history": str(directory / "history.db"), "store": {"path": str(directory / "store")},
        "model": {"builder": "mlp", "options": {"hidden_units": [32]}},
        "train": {"epochs": 2, "batch_size": 16, "learning_rate": 0.1},
        "max_norm_ratio": 0.0, "max_update_norm": 0.0, **DEFENCES[defence],
    }
    if defence == "krum":
        settings["strategy"]["options"]["num_malicious"] = round(fraction * clients)
    config = ExperimentConfig.from_dict(settings)
    provider = in_process_provider()
    if attack != "none":
        boost = {"sign_flip": 4.0, "model_replacement": 10.0, "inflated_counts": 100.0}.get(attack, 1.0)
        provider = MaliciousProvider(provider, Attack(attack, fraction=fraction, boost=boost, noise_std=1.0),
                                     client_ids(clients))
    started = time.monotonic()
    result = run_experiment(config, providers={"local": provider})
    invocations = History(config.history).invocations(result.run_id)
    return {"attack": attack, "defence": defence, "clients": clients, "malicious": round(fraction * clients),
            "rounds": rounds, "final_accuracy": round(result.final_accuracy or 0.0, 4),
            "rejected": sum(i["cause"] == "rejected" for i in invocations),
            "wall_seconds": round(time.monotonic() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--attacks", default="none,sign_flip,model_replacement,gaussian_noise,label_flipping,inflated_counts")
    parser.add_argument("--defences", default=",".join(DEFENCES))
    arguments = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="fedless-bench-attacks-"))
    for attack in arguments.attacks.split(","):
        for defence in arguments.defences.split(","):
            row = measure(attack, defence, arguments.clients, arguments.rounds, arguments.fraction, directory)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
