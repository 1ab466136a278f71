import numpy as np
import pytest

from fedless_nb.data import (
    PARTITION_KINDS,
    Dataset,
    PartitionError,
    label_skew,
    partition_dataset,
    partition_dirichlet,
    partition_iid,
    partition_natural,
    partition_shards,
)

# 10 classes x 60 examples, in a scrambled order so nothing depends on the file's order.
LABELS = np.random.default_rng(123).permutation(np.repeat(np.arange(10), 60))
# 25 writers of uneven size (1..25 examples each).
GROUPS = np.random.default_rng(7).permutation(np.repeat(np.arange(25), np.arange(1, 26)))


def dataset(groups=None) -> Dataset:
    size = len(LABELS) if groups is None else len(groups)
    labels = LABELS[:size]
    x = np.zeros((size, 3), np.float32)
    return Dataset("tiny", x, labels, x[:5], labels[:5], num_classes=10, groups=groups)


def assert_exact_cover(parts, num_examples, num_clients):
    """Every example in exactly one client, indices sorted int64, no client empty."""
    assert len(parts) == num_clients
    assert all(part.dtype == np.int64 and np.all(np.diff(part) > 0) and len(part) > 0 for part in parts)
    assert sum(len(part) for part in parts) == num_examples
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(num_examples))


def same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


SPLITS = {
    "iid": lambda seed: partition_iid(len(LABELS), 7, seed),
    "dirichlet": lambda seed: partition_dirichlet(LABELS, 7, alpha=0.5, seed=seed),
    "shards": lambda seed: partition_shards(LABELS, 7, shards_per_client=3, seed=seed),
    "natural": lambda seed: partition_natural(GROUPS, 7, seed),
}


@pytest.mark.parametrize("kind", SPLITS)
def test_every_example_in_exactly_one_client(kind):
    parts = SPLITS[kind](0)
    assert_exact_cover(parts, len(GROUPS) if kind == "natural" else len(LABELS), 7)


@pytest.mark.parametrize("kind", SPLITS)
def test_deterministic_under_seed_and_seed_dependent(kind):
    assert same(SPLITS[kind](3), SPLITS[kind](3))
    assert not same(SPLITS[kind](3), SPLITS[kind](4))


def test_iid_parts_are_near_equal_and_unskewed():
    parts = partition_iid(len(LABELS), 6, seed=0)
    assert {len(part) for part in parts} == {100}
    assert label_skew(LABELS, parts, 10) < 0.15


def test_dirichlet_skew_grows_as_alpha_shrinks():
    skew = {alpha: np.mean([label_skew(LABELS, partition_dirichlet(LABELS, 10, alpha, seed), 10) for seed in range(3)])
            for alpha in (100.0, 1.0, 0.1)}
    assert skew[100.0] < skew[1.0] < skew[0.1]
    assert skew[100.0] < 0.15 and skew[0.1] > 0.5


def test_dirichlet_respects_min_examples():
    parts = partition_dirichlet(LABELS, 20, alpha=0.1, seed=1, min_examples=10)
    assert min(len(part) for part in parts) >= 10


def test_dirichlet_gives_up_with_advice():
    labels = np.repeat(np.arange(2), 10)
    with pytest.raises(PartitionError, match="raise alpha or lower num_clients"):
        partition_dirichlet(labels, 10, alpha=0.001, seed=0, min_examples=2)


def test_shards_give_each_client_about_shards_per_client_labels():
    # 600 examples, 10 clients x 3 shards of 20: each shard falls inside one class (60 per class).
    parts = partition_shards(LABELS, 10, shards_per_client=3, seed=0)
    assert all(len(part) == 60 for part in parts)
    assert all(len(np.unique(LABELS[part])) <= 3 for part in parts)
    assert label_skew(LABELS, parts, 10) > 0.6


def test_shards_with_uneven_cuts_still_stay_near_shards_per_client():
    parts = partition_shards(LABELS, 7, shards_per_client=2, seed=5)
    assert max(len(np.unique(LABELS[part])) for part in parts) <= 4  # a cut shard may span two classes


def test_natural_keeps_each_writer_on_one_client_and_balances():
    parts = partition_natural(GROUPS, 5, seed=0)
    owners = [{int(g) for g in GROUPS[part]} for part in parts]
    assert all(a.isdisjoint(b) for i, a in enumerate(owners) for b in owners[i + 1:])
    assert set().union(*owners) == set(range(25))
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 25  # greedy dealing: within one writer's size of each other


def test_natural_with_as_many_clients_as_writers_gives_one_writer_each():
    parts = partition_natural(GROUPS, 25, seed=2)
    assert all(len(np.unique(GROUPS[part])) == 1 for part in parts)


def test_dispatcher_matches_the_partitioners():
    data = dataset()
    assert PARTITION_KINDS == ("iid", "dirichlet", "shards", "natural")
    assert same(partition_dataset(data, "iid", 4, 1), partition_iid(len(LABELS), 4, 1))
    assert same(partition_dataset(data, "dirichlet", 4, 1, alpha=0.3), partition_dirichlet(LABELS, 4, 0.3, 1))
    assert same(partition_dataset(data, "shards", 4, 1, shards_per_client=2), partition_shards(LABELS, 4, 2, 1))
    grouped = dataset(groups=GROUPS)
    assert same(partition_dataset(grouped, "natural", 4, 1), partition_natural(GROUPS, 4, 1))


def test_label_skew_bounds():
    labels = np.repeat(np.arange(2), 50)
    assert label_skew(labels, [np.arange(0, 100, 2), np.arange(1, 100, 2)], 2) == 0.0
    assert label_skew(labels, [np.arange(50), np.arange(50, 100)], 2) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: partition_iid(10, 0, 0), "num_clients must be >= 1"),
        (lambda: partition_iid(3, 4, 0), r"num_clients \(4\) is more than the 3 training examples"),
        (lambda: partition_dirichlet(LABELS, 0, 1.0, 0), "num_clients must be >= 1"),
        (lambda: partition_dirichlet(LABELS[:5], 6, 1.0, 0), "more than the 5 training examples"),
        (lambda: partition_dirichlet(LABELS, 5, 0.0, 0), "alpha must be > 0"),
        (lambda: partition_dirichlet(LABELS, 5, -1.0, 0), "alpha must be > 0"),
        (lambda: partition_dirichlet(LABELS, 5, 1.0, 0, min_examples=0), "min_examples must be between 1"),
        (lambda: partition_dirichlet(LABELS, 100, 1.0, 0, min_examples=7), "min_examples must be between 1 and 6"),
        (lambda: partition_dirichlet(LABELS.reshape(60, 10), 5, 1.0, 0), "labels must be a 1-D integer array"),
        (lambda: partition_shards(LABELS, 5, 0, 0), "shards_per_client must be >= 1"),
        (lambda: partition_shards(LABELS, 300, 3, 0), "900 shards is more than the 600 training examples"),
        (lambda: partition_shards(LABELS, 700, 1, 0), r"num_clients \(700\) is more than"),
        (lambda: partition_natural(GROUPS, 26, 0), r"num_clients \(26\) is more than the 25 writers/users"),
        (lambda: partition_natural(GROUPS, 0, 0), "num_clients must be >= 1"),
        (lambda: partition_dataset(dataset(), "natural", 2, 0), "needs a dataset with writers/users"),
        (lambda: partition_dataset(dataset(), "random", 2, 0), "unknown partition 'random'; choose one of iid"),
        (lambda: partition_dataset(dataset(), "dirichlet", 2, 0), "needs option 'alpha'"),
        (lambda: partition_dataset(dataset(), "iid", 2, 0, alpha=1.0), "partition 'iid' has no option 'alpha'"),
    ],
)
def test_user_errors_are_one_clear_line(call, message):
    with pytest.raises(PartitionError, match=message) as error:
        call()
    assert "\n" not in str(error.value)
