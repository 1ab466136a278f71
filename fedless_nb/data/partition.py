"""Split a training set among clients: IID, Dirichlet label skew, label shards, or by writer.

Every partitioner is a pure function of its inputs and `seed`. It returns one sorted int64 index
array per client, and every training example lands in exactly one client.
"""

from __future__ import annotations

import heapq
import inspect
from typing import Any

import numpy as np

from ..errors import UserError
from .datasets import Dataset, check_options

DIRICHLET_MAX_DRAWS = 100


class PartitionError(UserError, ValueError):
    """A partition the data cannot give (too many clients, alpha <= 0, ...): one line saying what to change."""


def _check_clients(num_clients: int, num_examples: int, unit: str = "training examples") -> None:
    if num_clients < 1:
        raise PartitionError(f"num_clients must be >= 1, got {num_clients}")
    if num_clients > num_examples:
        raise PartitionError(f"num_clients ({num_clients}) is more than the {num_examples} {unit}; lower num_clients")


def _as_ids(values: Any, what: str) -> np.ndarray:
    """Labels and groups as a 1-D int64 array, refused early when they have another shape."""
    array = np.asarray(values)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise PartitionError(f"{what} must be a 1-D integer array, got shape {array.shape} of {array.dtype}")
    return array.astype(np.int64)


def _sorted_parts(parts: list[np.ndarray] | list[list[int]]) -> list[np.ndarray]:
    return [np.sort(np.asarray(part, dtype=np.int64)) for part in parts]


def partition_iid(num_examples: int, num_clients: int, seed: int) -> list[np.ndarray]:
    """Shuffle, then cut into near-equal parts: the baseline every skewed split is compared with."""
    _check_clients(num_clients, num_examples)
    order = np.random.default_rng(seed).permutation(num_examples)
    return _sorted_parts(np.array_split(order, num_clients))


def _draw_dirichlet(labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator) -> list[list[int]]:
    """One draw: each class is split among clients by Dirichlet(alpha) proportions.

    As in NIID-Bench (Li et al. 2022), a client already holding its fair share (n / clients)
    gets no more of later classes, which keeps client sizes bounded at small alpha; when the
    draw favours only full clients (tiny alpha), the class goes where the draw put it.
    """
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    fair_share = len(labels) / num_clients
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        proportions = rng.dirichlet(np.full(num_clients, alpha))
        capped = proportions * np.array([len(part) < fair_share for part in parts])
        if capped.sum() > 0:
            proportions = capped / capped.sum()
        cuts = (np.cumsum(proportions) * len(members)).astype(int)[:-1]
        for part, share in zip(parts, np.split(members, cuts)):
            part.extend(share.tolist())
    return parts


def partition_dirichlet(
    labels: Any, num_clients: int, alpha: float, seed: int, min_examples: int = 2
) -> list[np.ndarray]:
    """Label skew (Hsu et al. 2019): smaller alpha, fewer classes per client.

    Draws again until every client holds at least `min_examples`, a bounded number of times.
    """
    labels = _as_ids(labels, "labels")
    _check_clients(num_clients, len(labels))
    if not alpha > 0:
        raise PartitionError(f"alpha must be > 0, got {alpha}")
    if min_examples < 1 or min_examples * num_clients > len(labels):
        raise PartitionError(
            f"min_examples must be between 1 and {len(labels) // num_clients} "
            f"({len(labels)} examples / {num_clients} clients), got {min_examples}"
        )
    rng = np.random.default_rng(seed)
    for _ in range(DIRICHLET_MAX_DRAWS):
        parts = _draw_dirichlet(labels, num_clients, alpha, rng)
        if min(len(part) for part in parts) >= min_examples:
            return _sorted_parts(parts)
    raise PartitionError(
        f"no Dirichlet draw in {DIRICHLET_MAX_DRAWS} gave all {num_clients} clients >= {min_examples} examples "
        f"at alpha={alpha}; raise alpha or lower num_clients"
    )


def partition_shards(labels: Any, num_clients: int, shards_per_client: int, seed: int) -> list[np.ndarray]:
    """Pathological non-IID (McMahan et al. 2017): sort by label, cut into shards, deal each client a few.

    Examples are shuffled before the stable sort so which examples of a class share a shard
    depends on the seed, not on the file's order.
    """
    labels = _as_ids(labels, "labels")
    _check_clients(num_clients, len(labels))
    if shards_per_client < 1:
        raise PartitionError(f"shards_per_client must be >= 1, got {shards_per_client}")
    num_shards = num_clients * shards_per_client
    if num_shards > len(labels):
        raise PartitionError(
            f"{num_clients} clients x {shards_per_client} shards = {num_shards} shards is more than the "
            f"{len(labels)} training examples; lower shards_per_client or num_clients"
        )
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(len(labels))
    shards = np.array_split(shuffled[np.argsort(labels[shuffled], kind="stable")], num_shards)
    dealt = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return _sorted_parts([np.concatenate([shards[s] for s in row]) for row in dealt])


def partition_natural(groups: Any, num_clients: int, seed: int) -> list[np.ndarray]:
    """Each writer/user wholly on one client, as in LEAF; writers are dealt to balance client sizes.

    Writers are shuffled under `seed`, then each in turn goes to the client with the fewest
    examples so far (ties to the lowest client index): client sizes differ by at most one
    writer's size, and which writers share a client depends on the seed.
    """
    groups = _as_ids(groups, "groups")
    _, group_of_example, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    _check_clients(num_clients, len(sizes), unit="writers/users in the data")
    loads = [(0, client) for client in range(num_clients)]
    client_of_group = np.empty(len(sizes), dtype=np.int64)
    for group in np.random.default_rng(seed).permutation(len(sizes)):
        load, client = heapq.heappop(loads)
        client_of_group[group] = client
        heapq.heappush(loads, (load + int(sizes[group]), client))
    client_of_example = client_of_group[group_of_example]
    by_client = np.argsort(client_of_example, kind="stable")
    return _sorted_parts(np.split(by_client, np.cumsum(np.bincount(client_of_example, minlength=num_clients))[:-1]))


_PARTITIONERS = {
    "iid": partition_iid,
    "dirichlet": partition_dirichlet,
    "shards": partition_shards,
    "natural": partition_natural,
}
PARTITION_KINDS = tuple(_PARTITIONERS)


def _partition_input(dataset: Dataset, kind: str) -> Any:
    """What a partitioner splits by: a count (iid), writer ids (natural) or the labels."""
    if kind == "iid":
        return len(dataset.y_train)
    if kind == "natural":
        if dataset.groups is None:
            raise PartitionError(
                f"partition 'natural' needs a dataset with writers/users (femnist, shakespeare, synthetic); "
                f"{dataset.name!r} has none, choose another partition"
            )
        return dataset.groups
    return dataset.y_train


def partition_dataset(dataset: Dataset, kind: str, num_clients: int, seed: int, **options: Any) -> list[np.ndarray]:
    """Partition `dataset`'s training split by `kind`; `options` are that partitioner's own (alpha, ...)."""
    if kind not in _PARTITIONERS:
        raise PartitionError(f"unknown partition {kind!r}; choose one of {', '.join(PARTITION_KINDS)}")
    partitioner = _PARTITIONERS[kind]
    by = _partition_input(dataset, kind)
    first = next(iter(inspect.signature(partitioner).parameters))
    check_options(f"partition {kind!r}", partitioner, options, PartitionError, supplied=(first, "num_clients", "seed"))
    return partitioner(by, num_clients=num_clients, seed=seed, **options)


def label_skew(labels: Any, parts: list[np.ndarray], num_classes: int) -> float:
    """Mean total-variation distance between each client's label distribution and the global one.

    0 for a perfectly IID split, approaching 1 when clients hold classes no one else has.
    Clients without examples have no distribution and are left out.
    """
    labels = _as_ids(labels, "labels")
    overall = np.bincount(labels, minlength=num_classes) / len(labels)
    distances = [
        0.5 * np.abs(np.bincount(labels[part], minlength=num_classes) / len(part) - overall).sum()
        for part in parts
        if len(part)
    ]
    return float(np.mean(distances))
