"""Synthetic(alpha, beta) of the FedProx paper: its shapes, its power-law devices, its seed and its heterogeneity."""

import numpy as np
import pytest

from fedless_nb.data import DatasetError, load_dataset, partition_dataset


def test_thirty_devices_of_sixty_features_and_ten_classes():
    data = load_dataset("synthetic", alpha=1.0, beta=1.0)
    assert data.input_shape == (60,) and data.num_classes == 10
    assert (data.x_train.dtype, data.y_train.dtype) == (np.float32, np.int64)
    sizes = np.bincount(data.groups)
    assert len(sizes) == len(data.group_names) == 30 and sizes.min() >= 45, "lognormal(4, 2) + 50 per device, 90% to train"
    assert sizes.max() > 5 * np.median(sizes), "a power law: a few devices hold most examples"
    total = len(data.y_train) + len(data.y_test)
    assert len(data.y_test) == pytest.approx(0.1 * total, rel=0.05)
    assert len(np.unique(data.y_train)) == 10


def test_the_same_seed_draws_the_same_data_and_another_does_not():
    first, again, other = (load_dataset("synthetic", seed=seed) for seed in (3, 3, 4))
    np.testing.assert_array_equal(first.x_train, again.x_train)
    np.testing.assert_array_equal(first.y_test, again.y_test)
    assert first.x_train.shape != other.x_train.shape or not np.array_equal(first.x_train, other.x_train)


def test_beta_spreads_the_devices_features_and_each_device_has_its_own_labels():
    """Synthetic(0, 0) draws every device's features around 0; beta = 1 moves their means apart. Every device
    has its own model W_k, so even Synthetic(0, 0) skews each device's labels far from the overall mix."""
    def device_means(data):
        return np.array([data.x_train[data.groups == d].mean() for d in range(30)])

    def label_skew(data):
        overall = np.bincount(data.y_train, minlength=10) / len(data.y_train)
        return np.mean([0.5 * np.abs(np.bincount(data.y_train[data.groups == d], minlength=10)
                                     / np.sum(data.groups == d) - overall).sum() for d in range(30)])

    homogeneous, features_apart = load_dataset("synthetic", alpha=0, beta=0), load_dataset("synthetic", alpha=0, beta=1)
    assert device_means(features_apart).std() > 3 * device_means(homogeneous).std()
    assert label_skew(homogeneous) > 0.5 and label_skew(load_dataset("synthetic", alpha=1, beta=1)) > 0.5


def test_the_natural_partition_gives_each_client_its_own_devices():
    data = load_dataset("synthetic")
    parts = partition_dataset(data, "natural", 30, seed=0)
    assert sorted(len(np.unique(data.groups[part])) for part in parts) == [1] * 30
    assert sum(len(part) for part in parts) == len(data.y_train)


@pytest.mark.parametrize("options, message", [
    ({"alpha": -1}, "alpha and beta must be >= 0"),
    ({"devices": 0}, "devices must be >= 1"),
    ({"test_fraction": 1.0}, "test_fraction must be between 0 and 1"),
])
def test_bad_options_are_one_clear_line(options, message):
    with pytest.raises(DatasetError, match=message):
        load_dataset("synthetic", **options)


def test_each_device_splits_as_their_generator_does():
    """generate_synthetic.py trains on int(0.9 n) of a device's n examples and tests on the rest (ceil-like: 6 of
    57); the device sizes are the seed's first draw, lognormal(4, 2) + 50."""
    data = load_dataset("synthetic", seed=5)
    sizes = np.random.default_rng(5).lognormal(4, 2, 30).astype(np.int64) + 50
    train = np.array([int(0.9 * n) for n in sizes])
    np.testing.assert_array_equal(np.bincount(data.groups, minlength=30), train)
    assert len(data.y_test) == int(np.sum(sizes - train))


def test_the_features_follow_the_papers_distributions():
    """x ~ N(v_k, diag(j^-1.2)) within device k, v_k ~ N(B_k, 1) per feature, B_k ~ N(0, beta) across devices: the
    pooled within-device variance of feature j is j^-1.2, a device's feature means spread by 1 around their
    average, and those averages by beta (here 2) across the 200 devices."""
    data = load_dataset("synthetic", alpha=0, beta=2, devices=200, seed=1)
    x, groups = data.x_train.astype(np.float64), data.groups
    means = np.array([x[groups == device].mean(axis=0) for device in range(200)])
    within = ((x - means[groups]) ** 2).sum(axis=0) / (len(x) - 200)
    np.testing.assert_allclose(within, np.arange(1, 61) ** -1.2, rtol=0.05)
    centres = means.mean(axis=1)
    assert (means - centres[:, None]).std() == pytest.approx(np.sqrt(59 / 60), rel=0.05)
    assert centres.std(ddof=1) == pytest.approx(np.sqrt(4 + 1 / 60), rel=0.2)
