import math

import numpy as np
import pytest

from fedless_nb.data import (
    PARTITION_KINDS,
    Dataset,
    PartitionError,
    label_skew,
    partition_dataset,
    partition_dirichlet,
    partition_exponential,
    partition_from_settings,
    partition_iid,
    partition_inner_dirichlet,
    partition_linear,
    partition_lognormal,
    partition_natural,
    partition_options,
    partition_pathological,
    partition_power_law,
    partition_shards,
    partition_square,
    sizes_from_weights,
)
from fedless_nb.experiment import DataConfig

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
    "pathological": lambda seed: partition_pathological(LABELS, 7, labels_per_client=2, seed=seed),
    "inner_dirichlet": lambda seed: partition_inner_dirichlet(LABELS, 7, alpha=0.5, seed=seed),
    "linear": lambda seed: partition_linear(len(LABELS), 7, seed),
    "square": lambda seed: partition_square(len(LABELS), 7, seed),
    "exponential": lambda seed: partition_exponential(len(LABELS), 7, seed),
    "power_law": lambda seed: partition_power_law(len(LABELS), 7, seed),
    "lognormal": lambda seed: partition_lognormal(len(LABELS), 7, seed),
}
SEEDS = range(5)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", SPLITS)
def test_every_example_in_exactly_one_client(kind, seed):
    parts = SPLITS[kind](seed)
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


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("alpha", "min_examples"), [(0.1, 5), (0.3, 10), (1.0, 20)])
def test_dirichlet_respects_min_examples(alpha, min_examples, seed):
    parts = partition_dirichlet(LABELS, 20, alpha=alpha, seed=seed, min_examples=min_examples)
    assert_exact_cover(parts, len(LABELS), 20)
    assert min(len(part) for part in parts) >= min_examples


def test_dirichlet_gives_up_with_advice():
    labels = np.repeat(np.arange(2), 10)
    with pytest.raises(PartitionError, match="raise alpha, or lower min_examples or clients"):
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
    assert PARTITION_KINDS == ("iid", "dirichlet", "shards", "natural", "pathological", "inner_dirichlet",
                               "linear", "square", "exponential", "power_law", "lognormal")
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
        (lambda: partition_iid(10, 0, 0), "clients must be >= 1"),
        (lambda: partition_iid(3, 4, 0), r"clients \(4\) is more than the 3 training examples"),
        (lambda: partition_dirichlet(LABELS, 0, 1.0, 0), "clients must be >= 1"),
        (lambda: partition_dirichlet(LABELS[:5], 6, 1.0, 0), "more than the 5 training examples"),
        (lambda: partition_dirichlet(LABELS, 5, 0.0, 0), "alpha must be > 0"),
        (lambda: partition_dirichlet(LABELS, 5, -1.0, 0), "alpha must be > 0"),
        (lambda: partition_dirichlet(LABELS, 5, 1.0, 0, min_examples=0), "min_examples must be between 1"),
        (lambda: partition_dirichlet(LABELS, 100, 1.0, 0, min_examples=7), "min_examples must be between 1 and 6"),
        (lambda: partition_dirichlet(LABELS.reshape(60, 10), 5, 1.0, 0), "labels must be a 1-D integer array"),
        (lambda: partition_shards(LABELS, 5, 0, 0), "shards_per_client must be >= 1"),
        (lambda: partition_shards(LABELS, 300, 3, 0), "900 shards is more than the 600 training examples"),
        (lambda: partition_shards(LABELS, 700, 1, 0), r"clients \(700\) is more than"),
        (lambda: partition_natural(GROUPS, 26, 0), r"clients \(26\) is more than the 25 writers/users"),
        (lambda: partition_natural(GROUPS, 0, 0), "clients must be >= 1"),
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


# --- pathological: exactly k labels per client ---------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("clients", "k"), [(10, 1), (7, 2), (20, 2), (23, 3), (5, 10), (30, 4)])
def test_pathological_gives_every_client_exactly_k_labels(clients, k, seed):
    parts = partition_pathological(LABELS, clients, labels_per_client=k, seed=seed)
    assert_exact_cover(parts, len(LABELS), clients)
    held = [set(np.unique(LABELS[part]).tolist()) for part in parts]
    assert all(len(labels) == k for labels in held)
    holders = np.bincount([label for labels in held for label in labels], minlength=10)
    assert holders.min() >= 1 and holders.max() - holders.min() <= 1  # every class held, holders spread evenly


def test_pathological_differs_from_shards_whose_cuts_can_add_a_class():
    shards = partition_shards(LABELS, 7, shards_per_client=2, seed=5)
    assert max(len(np.unique(LABELS[part])) for part in shards) > 2
    assert {len(np.unique(LABELS[part])) for part in partition_pathological(LABELS, 7, 2, seed=5)} == {2}


# --- quantity skew: sizes following the asked law ------------------------------------------------

LAWS = {"linear": (partition_linear, lambda i: i + 1.0), "square": (partition_square, lambda i: (i + 1.0) ** 2),
        "exponential": (partition_exponential, lambda i: np.exp(i)),
        "exponential base 1.5": (lambda n, c, s, min_examples: partition_exponential(n, c, s, 1.5, min_examples),
                                 lambda i: 1.5 ** i)}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("clients", "min_examples"), [(5, 1), (12, 2), (40, 7)])
@pytest.mark.parametrize("law", LAWS)
def test_size_laws_give_sizes_in_the_asked_ratios(law, clients, min_examples, seed):
    partitioner, weight = LAWS[law]
    parts = partitioner(len(LABELS), clients, seed, min_examples=min_examples)
    assert_exact_cover(parts, len(LABELS), clients)
    sizes = np.array([len(part) for part in parts])
    weights = weight(np.arange(clients))
    expected = min_examples + (len(LABELS) - clients * min_examples) * weights / weights.sum()
    assert np.all(np.abs(sizes - expected) < 1), (sizes, expected)  # the law, up to rounding
    assert np.all(np.diff(sizes) >= 0) and sizes.min() >= min_examples


def test_size_laws_keep_labels_iid_and_only_the_examples_depend_on_the_seed():
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 2000))
    parts = partition_linear(len(labels), 5, seed=1)
    assert label_skew(labels, parts, 10) < 0.05
    assert [len(p) for p in parts] == [len(p) for p in partition_linear(len(labels), 5, seed=2)]


def fitted_pareto_exponent(sizes):
    """Maximum-likelihood tail exponent of a Pareto sample (Clauset et al. 2009), x_min the smallest size."""
    return (len(sizes) - 1) / np.log(sizes / sizes.min()).sum()


@pytest.mark.parametrize("exponent", [1.0, 1.5, 3.0])
def test_power_law_sizes_have_the_asked_tail_exponent(exponent):
    fits = []
    for seed in SEEDS:
        parts = partition_power_law(1_000_000, 400, seed, exponent=exponent, min_examples=1)
        fits.append(fitted_pareto_exponent(np.array([len(part) for part in parts]) - 1.0))
    assert np.mean(fits) == pytest.approx(exponent, rel=0.1)
    assert all(fit == pytest.approx(exponent, rel=0.25) for fit in fits)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 1.5])
def test_lognormal_sizes_have_the_asked_log_spread(sigma):
    fits = []
    for seed in SEEDS:
        sizes = np.array([len(part) for part in partition_lognormal(1_000_000, 400, seed, sigma=sigma, min_examples=1)])
        fits.append(np.std(np.log(sizes - 1.0), ddof=1))
    assert np.mean(fits) == pytest.approx(sigma, rel=0.1)
    assert all(fit == pytest.approx(sigma, rel=0.2) for fit in fits)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("partitioner", [partition_power_law, partition_lognormal, partition_exponential])
def test_size_laws_hold_the_minimum_size(partitioner, seed):
    parts = partitioner(600, 60, seed, min_examples=4)
    assert_exact_cover(parts, 600, 60)
    assert min(len(part) for part in parts) >= 4


def test_sizes_from_weights_add_up_and_keep_sizes_that_already_do():
    np.testing.assert_array_equal(sizes_from_weights([100, 200, 300], 600), [100, 200, 300])
    assert sizes_from_weights([1, 1, 1], 10).tolist() == [4, 3, 3]
    assert sizes_from_weights([0.0, 1.0], 10, min_examples=3).tolist() == [3, 7]


# --- inner Dirichlet: sizes given, label mix Dirichlet -------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_inner_dirichlet_keeps_the_given_sizes(seed):
    sizes = [50, 100, 150, 300]  # adds up to the 600 examples: kept exactly
    parts = partition_inner_dirichlet(LABELS, 4, alpha=0.3, seed=seed, sizes=sizes)
    assert_exact_cover(parts, len(LABELS), 4)
    assert [len(part) for part in parts] == sizes
    relative = partition_inner_dirichlet(LABELS, 4, alpha=0.3, seed=seed, sizes=[1, 2, 3, 6])
    assert [len(part) for part in relative] == sizes  # relative sizes are scaled to the training set
    assert [len(p) for p in partition_inner_dirichlet(LABELS, 6, alpha=0.3, seed=seed)] == [100] * 6


def test_inner_dirichlet_skew_grows_as_alpha_shrinks():
    skew = {alpha: np.mean([label_skew(LABELS, partition_inner_dirichlet(LABELS, 10, alpha, seed), 10)
                            for seed in range(3)]) for alpha in (100.0, 1.0, 0.1)}
    assert skew[100.0] < skew[1.0] < skew[0.1]
    assert skew[100.0] < 0.2 and skew[0.1] > 0.5  # 60 examples a client: some skew is sampling noise


# --- options read by name off a config's data section --------------------------------------------


def test_every_partition_option_is_a_data_config_key_and_settings_reach_the_partitioner():
    keys = set(DataConfig.model_fields)
    assert all(set(partition_options(kind)) <= keys for kind in PARTITION_KINDS)
    assert partition_options("exponential") == ("base", "min_examples")
    settings = DataConfig(partition="pathological", labels_per_client=3, alpha=0.01)
    assert same(partition_from_settings(dataset(), "pathological", 5, 2, settings),
                partition_pathological(LABELS, 5, 3, 2))
    settings = DataConfig(base=1.2, min_examples=5)
    assert same(partition_from_settings(dataset(), "exponential", 5, 2, settings),
                partition_exponential(len(LABELS), 5, 2, base=1.2, min_examples=5))
    assert DataConfig().base == math.e


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: partition_pathological(LABELS, 5, 0, 0), "labels_per_client must be between 1 and the 10 classes"),
        (lambda: partition_pathological(LABELS, 5, 11, 0), "labels_per_client must be between 1 and the 10 classes"),
        (lambda: partition_pathological(LABELS, 4, 2, 0), "4 clients x 2 labels_per_client leave some of the 10"),
        (lambda: partition_pathological(LABELS, 200, 10, 0), "class 0 has 60 examples for the 200 clients holding it"),
        (lambda: partition_linear(600, 5, 0, min_examples=0), "min_examples must be >= 1"),
        (lambda: partition_square(600, 5, 0, min_examples=121), r"min_examples must be at most 120 \(600 examples"),
        (lambda: partition_exponential(600, 5, 0, base=1.0), "base must be > 1"),
        (lambda: partition_power_law(600, 5, 0, exponent=0), "exponent must be > 0"),
        (lambda: partition_lognormal(600, 5, 0, sigma=-1), "sigma must be >= 0"),
        (lambda: partition_lognormal(600, 601, 0), r"clients \(601\) is more than the 600"),
        (lambda: partition_inner_dirichlet(LABELS, 3, 0.0, 0), "alpha must be > 0"),
        (lambda: partition_inner_dirichlet(LABELS, 3, 1.0, 0, sizes=[1, 2]), "sizes must be 3 positive numbers"),
        (lambda: partition_inner_dirichlet(LABELS, 2, 1.0, 0, sizes=[1, -2]), "sizes must be 2 positive numbers"),
        (lambda: partition_inner_dirichlet(LABELS, 2, 1.0, 0, sizes=[1, 1e6]), "client 0 would get no example"),
        (lambda: partition_dataset(dataset(), "linear", 2, 0, alpha=1.0), "partition 'linear' has no option 'alpha'"),
    ],
)
def test_new_partitions_refuse_with_one_line(call, message):
    with pytest.raises(PartitionError, match=message) as error:
        call()
    assert "\n" not in str(error.value)
