"""Every partition, and feature skew where the data are images, on every built-in dataset.

The downloading datasets are read from small local files in their own formats, as in test_datasets.py.
"""

import numpy as np
import pytest
from test_datasets import femnist_user, write_cifar_batch, write_keras_npz, write_leaf

from fedless_nb.data import PARTITION_KINDS, PartitionError, check_feature_skew, client_inputs, load_dataset, preview_partition

CLIENTS = 4


def _mnist_like(root):
    write_keras_npz(root / "images.npz", train=120, test=4)
    return {"path": str(root / "images.npz")}


def _cifar10(root):
    rng = np.random.default_rng(2)
    write_cifar_batch(root / "data_batch_1", rng.integers(0, 256, (80, 3, 32, 32), dtype=np.uint8), np.arange(80) % 10)
    write_cifar_batch(root / "test_batch", rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8), [0, 1, 2, 3])
    return {"path": str(root)}


def _writer(index):
    """A FEMNIST writer with 6 examples of each of two classes."""
    first, second = femnist_user(index % 5, 6), femnist_user(5 + index % 5, 6)
    return {"x": first["x"] + second["x"], "y": first["y"] + second["y"]}


def _femnist(root):
    write_leaf(root, "train", "a.json", {f"f{index:04d}": _writer(index) for index in range(10)})
    write_leaf(root, "test", "a.json", {"f0000": femnist_user(1, 2)})
    return {"path": str(root)}


def _shakespeare(root):
    text = "To be, or not to be: that is the question. Whether 'tis nobler in the mind to suffer " * 3
    lines = [text[i:i + 80] for i in range(60)]
    users = {f"ROLE{r}": {"x": lines[r::6], "y": ["abcde"[i % 5] for i in range(len(lines[r::6]))]} for r in range(6)}
    write_leaf(root, "train", "all.json", users)
    write_leaf(root, "test", "all.json", {"ROLE0": {"x": lines[:2], "y": ["a", "b"]}})
    return {"path": str(root)}


DATASETS = {"digits": lambda root: {}, "breast_cancer": lambda root: {}, "mnist": _mnist_like,
            "fashion_mnist": _mnist_like, "cifar10": _cifar10, "femnist": _femnist, "shakespeare": _shakespeare}
IMAGES = {"digits", "mnist", "fashion_mnist", "cifar10", "femnist"}


@pytest.mark.parametrize("name", DATASETS)
def test_every_partition_splits_every_builtin_dataset_exactly(name, tmp_path):
    options = DATASETS[name](tmp_path)
    dataset = load_dataset(name, **options)
    kinds = [kind for kind in PARTITION_KINDS if kind != "natural" or dataset.groups is not None]
    classes = len(np.unique(dataset.y_train))
    labels_per_client = -(-classes // CLIENTS)  # the fewest that still give every class a client
    for kind in kinds:
        preview = preview_partition(name, kind, clients=CLIENTS, seed=1, options=options, min_examples=1,
                                    labels_per_client=labels_per_client)
        np.testing.assert_array_equal(preview.counts.sum(axis=0),
                                      np.bincount(dataset.y_train, minlength=dataset.num_classes), err_msg=kind)
        assert preview.sizes.min() >= 1, kind
        if kind == "pathological":
            assert set(preview.classes_per_client) == {labels_per_client}


@pytest.mark.parametrize("name", DATASETS)
def test_feature_skew_turns_images_and_refuses_the_rest(name, tmp_path):
    dataset = load_dataset(name, **DATASETS[name](tmp_path))
    indices = np.arange(3)
    if name not in IMAGES:
        with pytest.raises(PartitionError, match=f"{name!r} is not images"):
            check_feature_skew(dataset, 45, 0.0)
        return
    check_feature_skew(dataset, 45, 0.1)
    skewed = client_inputs(dataset, indices, CLIENTS - 1, CLIENTS, max_rotation=45, max_noise=0.1, seed=0)
    assert skewed.shape == dataset.x_train[indices].shape and skewed.dtype == np.float32
    assert not np.allclose(skewed, dataset.x_train[indices])
    np.testing.assert_array_equal(client_inputs(dataset, indices, 0, CLIENTS, 45, 0.1, 0), dataset.x_train[indices])
