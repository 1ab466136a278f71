"""Split a training set among clients: IID, label skew (Dirichlet, shards, k labels, inner Dirichlet),
quantity skew (linear, square, exponential, power-law and log-normal sizes), or by writer.

Every partitioner is a pure function of its inputs and `seed`. It returns one sorted int64 index
array per client, and every training example lands in exactly one client. Its keyword parameters
after the first (what it splits), `num_clients` and `seed` are its options, read by name off a
config's data section.
"""

from __future__ import annotations

import heapq
import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from ..errors import UserError
from .datasets import Dataset, check_options

DIRICHLET_MAX_DRAWS = 100
MIN_EXAMPLES = 2
INNER_DIRICHLET_STEPS = 10


class PartitionError(UserError, ValueError):
    """A partition the data cannot give (too many clients, alpha <= 0, ...): one line saying what to change."""


def _check_clients(num_clients: int, num_examples: int, unit: str = "training examples") -> None:
    if num_clients < 1:
        raise PartitionError(f"clients must be >= 1, got {num_clients}")
    if num_clients > num_examples:
        raise PartitionError(f"clients ({num_clients}) is more than the {num_examples} {unit}: set clients to at most "
                             f"{num_examples}")


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
    labels: Any, num_clients: int, alpha: float, seed: int, min_examples: int = MIN_EXAMPLES
) -> list[np.ndarray]:
    """Label skew (Hsu et al. 2019): smaller alpha, fewer classes per client.

    Draws again until every client holds at least `min_examples` (as Flower's DirichletPartitioner),
    at most DIRICHLET_MAX_DRAWS times, then says what to change.
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
        f"at alpha={alpha}; raise alpha, or lower min_examples or clients"
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
            f"{len(labels)} training examples; lower shards_per_client or clients"
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


def partition_pathological(labels: Any, num_clients: int, labels_per_client: int, seed: int) -> list[np.ndarray]:
    """Pathological non-IID with exactly `labels_per_client` classes per client (McMahan et al. 2017, NIID-Bench #C=k).

    Each client in turn takes the k classes held by the fewest clients so far (ties broken at random),
    so every class has a holder and holders are spread evenly; a class's examples are then shared
    evenly among its holders. Unlike `shards`, no cut can give a client a k+1-th class.
    """
    labels = _as_ids(labels, "labels")
    _check_clients(num_clients, len(labels))
    classes, class_of_example = np.unique(labels, return_inverse=True)
    if not 1 <= labels_per_client <= len(classes):
        raise PartitionError(
            f"labels_per_client must be between 1 and the {len(classes)} classes in the data, got {labels_per_client}"
        )
    if num_clients * labels_per_client < len(classes):
        raise PartitionError(
            f"{num_clients} clients x {labels_per_client} labels_per_client leave some of the {len(classes)} classes "
            f"without a client; raise labels_per_client or clients"
        )
    rng = np.random.default_rng(seed)
    holders_per_class = np.zeros(len(classes), dtype=np.int64)
    held = np.empty((num_clients, labels_per_client), dtype=np.int64)
    for client in range(num_clients):
        held[client] = np.lexsort((rng.random(len(classes)), holders_per_class))[:labels_per_client]
        holders_per_class[held[client]] += 1
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for class_index in range(len(classes)):
        holders = np.flatnonzero((held == class_index).any(axis=1))
        members = rng.permutation(np.flatnonzero(class_of_example == class_index))
        if len(members) < len(holders):
            raise PartitionError(
                f"class {classes[class_index]} has {len(members)} examples for the {len(holders)} clients holding it; "
                f"lower labels_per_client or clients"
            )
        for client, share in zip(holders, np.array_split(members, len(holders))):
            parts[client].extend(share.tolist())
    return _sorted_parts(parts)


def sizes_from_weights(weights: Any, num_examples: int, min_examples: int = 0) -> np.ndarray:
    """Client sizes in proportion to `weights` that add up to exactly `num_examples`, each >= `min_examples`.

    Every client first gets `min_examples`; the rest is shared in proportion to the weights, rounded
    by largest remainder, so sizes that already add up to `num_examples` are kept as they are.
    """
    weights = np.asarray(weights, dtype=np.float64)
    if min_examples * len(weights) > num_examples:
        raise PartitionError(
            f"min_examples must be at most {num_examples // len(weights)} "
            f"({num_examples} examples / {len(weights)} clients), got {min_examples}"
        )
    rest = num_examples - min_examples * len(weights)
    exact = rest * weights / weights.sum()
    sizes = np.floor(exact).astype(np.int64)
    sizes[np.argsort(sizes - exact, kind="stable")[: rest - sizes.sum()]] += 1
    return sizes + min_examples


def _split_by_size(
    num_examples: int, num_clients: int, seed: int, min_examples: int,
    log_weights: Callable[[np.random.Generator], np.ndarray],
) -> list[np.ndarray]:
    """Quantity skew with IID labels: shuffle, then cut into the sizes the weights give (log scale: no overflow)."""
    _check_clients(num_clients, num_examples)
    if min_examples < 1:
        raise PartitionError(f"min_examples must be >= 1, got {min_examples}")
    rng = np.random.default_rng(seed)
    logs = log_weights(rng)
    sizes = sizes_from_weights(np.exp(logs - logs.max()), num_examples, min_examples)
    order = rng.permutation(num_examples)
    return _sorted_parts(np.split(order, np.cumsum(sizes)[:-1]))


def partition_linear(num_examples: int, num_clients: int, seed: int, min_examples: int = MIN_EXAMPLES) -> list[np.ndarray]:
    """Client i (from 0) holds a share proportional to i + 1, labels IID (Flower's LinearPartitioner)."""
    return _split_by_size(num_examples, num_clients, seed, min_examples, lambda _: np.log(np.arange(1, num_clients + 1)))


def partition_square(num_examples: int, num_clients: int, seed: int, min_examples: int = MIN_EXAMPLES) -> list[np.ndarray]:
    """Client i (from 0) holds a share proportional to (i + 1)^2, labels IID (Flower's SquarePartitioner)."""
    return _split_by_size(num_examples, num_clients, seed, min_examples,
                          lambda _: 2 * np.log(np.arange(1, num_clients + 1)))


def partition_exponential(
    num_examples: int, num_clients: int, seed: int, base: float = math.e, min_examples: int = MIN_EXAMPLES
) -> list[np.ndarray]:
    """Client i (from 0) holds a share proportional to base^i, labels IID (Flower's ExponentialPartitioner at base e)."""
    if not base > 1:
        raise PartitionError(f"base must be > 1, got {base}")
    return _split_by_size(num_examples, num_clients, seed, min_examples,
                          lambda _: np.arange(num_clients) * math.log(base))


def partition_power_law(
    num_examples: int, num_clients: int, seed: int, exponent: float = 1.5, min_examples: int = MIN_EXAMPLES
) -> list[np.ndarray]:
    """Quantity skew: client sizes drawn from a Pareto (power-law) distribution, P(size > s) ~ s^-exponent.

    Smaller exponents give heavier tails: a few clients hold most of the data. Labels stay IID.
    """
    if not exponent > 0:
        raise PartitionError(f"exponent must be > 0, got {exponent}")
    return _split_by_size(num_examples, num_clients, seed, min_examples,
                          lambda rng: np.log1p(rng.pareto(exponent, num_clients)))


def partition_lognormal(
    num_examples: int, num_clients: int, seed: int, sigma: float = 1.0, min_examples: int = MIN_EXAMPLES
) -> list[np.ndarray]:
    """Quantity skew: log client sizes are normal with standard deviation `sigma` (as FedLab's unbalanced split).

    Labels stay IID; sigma 0 gives equal sizes.
    """
    if not sigma >= 0:
        raise PartitionError(f"sigma must be >= 0, got {sigma}")
    return _split_by_size(num_examples, num_clients, seed, min_examples,
                          lambda rng: rng.normal(0.0, sigma, num_clients))


def _given_sizes(sizes: Sequence[float] | None, num_clients: int, num_examples: int) -> np.ndarray:
    """`sizes` (one per client, relative) scaled to the training set; equal sizes when None."""
    if sizes is None:
        return sizes_from_weights(np.ones(num_clients), num_examples)
    weights = np.asarray(sizes, dtype=np.float64)
    if weights.shape != (num_clients,) or not np.all(np.isfinite(weights)) or weights.min() <= 0:
        raise PartitionError(f"sizes must be {num_clients} positive numbers, one per client, got {list(sizes)}")
    scaled = sizes_from_weights(weights, num_examples)
    if scaled.min() < 1:
        raise PartitionError(
            f"sizes: client {int(np.argmin(scaled))} would get no example of the {num_examples}; give it a larger size"
        )
    return scaled


def partition_inner_dirichlet(
    labels: Any, num_clients: int, alpha: float, seed: int, sizes: Sequence[float] | None = None
) -> list[np.ndarray]:
    """Sizes given, label mix Dirichlet(alpha) per client (Flower's InnerDirichletPartitioner, FedLab).

    `sizes` are relative (scaled to the training set, kept exactly when they add up to it; None:
    equal). Clients take their examples in INNER_DIRICHLET_STEPS steps, interleaved in random order,
    each step drawn from the client's Dirichlet mix among the classes with examples left; a class
    used up is thus shared out fairly, and sizes hold exactly while the mix follows the draw.
    """
    labels = _as_ids(labels, "labels")
    _check_clients(num_clients, len(labels))
    if not alpha > 0:
        raise PartitionError(f"alpha must be > 0, got {alpha}")
    need = _given_sizes(sizes, num_clients, len(labels))
    step = np.maximum(1, -(-need // INNER_DIRICHLET_STEPS))
    classes, class_of_example = np.unique(labels, return_inverse=True)
    rng = np.random.default_rng(seed)
    mixes = rng.dirichlet(np.full(len(classes), alpha), size=num_clients)
    left = np.bincount(class_of_example)
    taken = np.zeros((num_clients, len(classes)), dtype=np.int64)
    while need.any():
        for client in rng.permutation(np.flatnonzero(need)):
            mix = mixes[client] * (left > 0)
            if mix.sum() <= 0:  # every class of its mix is used up: it takes from what is left
                mix = left.astype(np.float64)
            take = np.minimum(rng.multinomial(min(need[client], step[client]), mix / mix.sum()), left)
            left -= take
            taken[client] += take
            need[client] -= take.sum()
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for class_index in range(len(classes)):
        members = rng.permutation(np.flatnonzero(class_of_example == class_index))
        for client, share in enumerate(np.split(members, np.cumsum(taken[:, class_index])[:-1])):
            parts[client].extend(share.tolist())
    return _sorted_parts(parts)


_PARTITIONERS = {
    "iid": partition_iid,
    "dirichlet": partition_dirichlet,
    "shards": partition_shards,
    "natural": partition_natural,
    "pathological": partition_pathological,
    "inner_dirichlet": partition_inner_dirichlet,
    "linear": partition_linear,
    "square": partition_square,
    "exponential": partition_exponential,
    "power_law": partition_power_law,
    "lognormal": partition_lognormal,
}
PARTITION_KINDS = tuple(_PARTITIONERS)
_SUPPLIED = ("num_clients", "seed")  # filled in by partition_dataset, not user options


def _split_by(kind: str) -> str:
    """The partitioner's first parameter: what it splits (num_examples, labels or groups)."""
    return next(iter(inspect.signature(_PARTITIONERS[kind]).parameters))


def partition_options(kind: str) -> tuple[str, ...]:
    """The options partition `kind` takes (alpha, min_examples, ...): the names a config's data section gives it."""
    _check_kind(kind)
    supplied = (_split_by(kind), *_SUPPLIED)
    return tuple(name for name in inspect.signature(_PARTITIONERS[kind]).parameters if name not in supplied)


def check_options_read(given: Iterable[str], partitions: Iterable[str]) -> None:
    """Refuse a partition option given to runs none of whose partitions reads it (alpha with an iid split): those
    runs would ignore it, and a sweep over it would train the same split at every value."""
    partitions = sorted(set(partitions))
    for name in given:
        readers = [kind for kind in PARTITION_KINDS if name in partition_options(kind)]
        if readers and not set(readers) & set(partitions):
            raise PartitionError(f"data.{name}: partition {' or '.join(partitions)} does not read it, so it would "
                                 f"change nothing: choose a partition that does ({', '.join(readers)}), or leave it out")


def options_changed(data: Any) -> set[str]:
    """The keys a config's data section sets to other than their defaults: a config written out whole (`to_yaml`,
    a run's record) names every key, and a default value changes nothing whichever partition reads it."""
    fields = type(data).model_fields
    return {name for name in data.model_fields_set
            if getattr(data, name) != fields[name].get_default(call_default_factory=True)}


def check_data_section_read(data: Any) -> None:
    """check_options_read for one run: the keys its config's data section changes, against its partition."""
    check_options_read(options_changed(data), [data.partition])


def _check_kind(kind: str) -> None:
    if kind not in _PARTITIONERS:
        raise PartitionError(f"unknown partition {kind!r}; choose one of {', '.join(PARTITION_KINDS)}")


def _partition_input(dataset: Dataset, kind: str) -> Any:
    """What a partitioner splits by: a count (iid, size laws), writer ids (natural) or the labels."""
    if _split_by(kind) == "num_examples":
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
    _check_kind(kind)
    partitioner = _PARTITIONERS[kind]
    by = _partition_input(dataset, kind)
    check_options(f"partition {kind!r}", partitioner, options, PartitionError, supplied=(_split_by(kind), *_SUPPLIED))
    return partitioner(by, num_clients=num_clients, seed=seed, **options)


def partition_from_settings(dataset: Dataset, kind: str, num_clients: int, seed: int, settings: Any) -> list[np.ndarray]:
    """Partition with the options `kind` takes read by name off `settings` (a config's data section)."""
    return partition_dataset(dataset, kind, num_clients, seed,
                             **{name: getattr(settings, name) for name in partition_options(kind)})


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
