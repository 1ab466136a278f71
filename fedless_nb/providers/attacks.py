"""Attack simulation: wrap any provider so a chosen fraction of its clients are malicious.

For researchers who study robust aggregation: the malicious clients are compromised functions.
They hold what such a function holds (the provider's secret, their task's store access), so
their bad results are correctly signed and only the controller's own checks and the strategy
can stand in their way. Deterministic under a seed: the same clients are malicious in every run.

    provider = MaliciousProvider(LocalProvider("local"), Attack("model_replacement", fraction=0.2, boost=10),
                                 client_ids(config.clients))

Attacks (Bhagoji et al. 2019, Bagdasaryan et al. 2020, Fang et al. 2020, Tolpegin et al. 2020):
- sign_flip: the client's change to the global model, reversed and scaled by `boost`;
- model_replacement: its change scaled by `boost`, to replace the global model with its own;
- gaussian_noise: the global model plus Gaussian noise of `noise_std`, no training;
- label_flipping: trains on its data with each label y replaced by num_classes - 1 - y
  (needs a local store: the flipped copy is written beside the client's data);
- inflated_counts: an honest update claiming `boost` times its examples, to weigh more in FedAvg.
"""

from __future__ import annotations

import collections
import dataclasses
import zlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..security import client_key
from ..store import decode_arrays, encode_arrays, store_from_descriptor
from .base import Provider

ATTACKS = ("sign_flip", "model_replacement", "gaussian_noise", "label_flipping", "inflated_counts")


@dataclass(frozen=True)
class Attack:
    """What the malicious clients do (`kind`, one of ATTACKS), how many of them there are, and how hard they push."""

    kind: str
    fraction: float = 0.2
    boost: float = 10.0
    noise_std: float = 1.0
    num_classes: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ATTACKS:
            raise ValueError(f"kind: unknown attack {self.kind!r}; choose one of {', '.join(ATTACKS)}")
        if not 0 <= self.fraction <= 1:
            raise ValueError(f"fraction: must be between 0 and 1, got {self.fraction!r}")
        if self.boost <= 0 or self.noise_std < 0 or self.num_classes < 2:
            raise ValueError("boost must be > 0, noise_std >= 0 and num_classes >= 2")


def malicious_clients(client_ids: Sequence[str], fraction: float, seed: int) -> set[str]:
    """round(fraction * clients) clients, the same ones for the same seed."""
    count = round(fraction * len(client_ids))
    order = np.random.default_rng(seed).permutation(len(client_ids))
    return {client_ids[index] for index in order[:count]}


class MaliciousProvider(Provider):
    """`inner`, with the results of `attack`'s malicious clients replaced by attacks signed in their name."""

    def __init__(self, inner: Provider, attack: Attack, client_ids: Sequence[str]) -> None:
        self.inner, self.attack = inner, attack
        self.name, self.kind = inner.name, inner.kind
        self.malicious = malicious_clients(client_ids, attack.fraction, attack.seed)
        self.attacked: collections.Counter[str] = collections.Counter()

    @property
    def secret(self) -> str | None:  # type: ignore[override]
        """The wrapped platform's secret: a compromised function holds it, and signs with it."""
        return getattr(self.inner, "secret", None)

    async def deploy(self, bundle: Any = None) -> None:
        await self.inner.deploy(bundle)

    async def invoke(self, task: dict[str, Any]) -> dict[str, Any]:
        if task.get("client_id") not in self.malicious:
            return await self.inner.invoke(task)
        self.attacked[task["client_id"]] += 1
        store = store_from_descriptor(task["store"])
        if self.attack.kind == "label_flipping":
            return await self.inner.invoke(self._on_flipped_labels(task, store))
        result = await self.inner.invoke(task)
        if self.attack.kind == "inflated_counts":
            result = {**result, "num_examples": int(result["num_examples"] * self.attack.boost)}
            return self._signed(task, result, store.get(task["update"]))
        current = decode_arrays(store.get(task["weights"]))
        poisoned = encode_arrays(self._poison(decode_arrays(store.get(task["update"])), current, task))
        store.put(task["update"], poisoned)
        return self._signed(task, result, bytes(poisoned))

    def _poison(self, update: list[np.ndarray], current: list[np.ndarray], task: dict[str, Any]) -> list[np.ndarray]:
        boost = self.attack.boost
        if self.attack.kind == "sign_flip":
            return [(c - boost * (u - c)).astype(u.dtype) for u, c in zip(update, current)]
        if self.attack.kind == "model_replacement":
            return [(c + boost * (u - c)).astype(u.dtype) for u, c in zip(update, current)]
        rng = np.random.default_rng([self.attack.seed, int(task["round"]), zlib.crc32(task["client_id"].encode())])
        return [(c + rng.normal(0, self.attack.noise_std, c.shape)).astype(c.dtype) for c in current]

    def _on_flipped_labels(self, task: dict[str, Any], store: Any) -> dict[str, Any]:
        """The same task over a copy of the client's data with flipped labels, with a token for it."""
        x, y = decode_arrays(store.get(task["data"]))
        partition, name = task["data"].rsplit("/", 1)
        flipped = f"{partition}-flipped/{name}"  # still the client's own data by its key (store/keys.task_keys_problem)
        # the simulation writes the copy as the operator, beside the data: the task's limit is for its update only
        unlimited = store_from_descriptor({k: v for k, v in task["store"].items() if k != "max_write_bytes"})
        unlimited.put(flipped, encode_arrays([x, (self.attack.num_classes - 1 - y).astype(y.dtype)]))
        poisoned = {**task, "data": flipped, "token": None}
        if self.secret:
            poisoned["token"] = client_key(self.secret, task["run_id"], task["client_id"]).issue_token(poisoned)
        return poisoned

    def _signed(self, task: dict[str, Any], result: dict[str, Any], update: bytes) -> dict[str, Any]:
        if not self.secret:
            return result
        return client_key(self.secret, task["run_id"], task["client_id"]).sign_result(result, update)

    async def close(self) -> None:
        await self.inner.close()

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "attack": dataclasses.asdict(self.attack), "malicious": sorted(self.malicious)}
