"""Small files in the formats the downloading loaders read (keras .npz, cifar-10-batches-py, LEAF JSON).

Shared by the dataset tests and the model-fit tests, so every built-in dataset can be used offline.
"""

import json
import pickle

import numpy as np

SHAKESPEARE_TEXT = ("To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer "
                    "The slings and arrows of outrageous fortune, Or to take arms against a sea of troubles ")


def write_keras_npz(path, train=12, test=4):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (train, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, train, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (test, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, test, dtype=np.uint8),
    }
    np.savez(path, **arrays)
    return arrays


def write_cifar_batch(path, images, labels):
    """The exact layout of cifar-10-batches-py: a pickled dict with byte-string keys."""
    batch = {b"batch_label": b"test", b"labels": list(labels), b"data": images.reshape(len(images), 3072),
             b"filenames": [b"x.png"] * len(images)}
    with open(path, "wb") as file:
        pickle.dump(batch, file)


def write_leaf(root, split, name, user_data):
    (root / split).mkdir(parents=True, exist_ok=True)
    content = {"users": list(user_data), "num_samples": [len(d["y"]) for d in user_data.values()],
               "user_data": user_data}
    (root / split / name).write_text(json.dumps(content))


def femnist_user(label, count):
    return {"x": [[label / 100.0] * 784 for _ in range(count)], "y": [label] * count}


def shakespeare_user(start, count, length=80, text=SHAKESPEARE_TEXT):
    """`count` LEAF examples: each `length` characters of `text` (wrapping) and the character after them."""
    doubled = text * (2 + (length + count) // len(text))
    offsets = [(start + index) % len(text) for index in range(count)]
    return {"x": [doubled[i:i + length] for i in offsets], "y": [doubled[i + length] for i in offsets]}


def write_dataset_files(name, root):
    """Write a few examples of dataset `name` under `root`; the options that make its loader read them."""
    rng = np.random.default_rng(2)
    root.mkdir(parents=True, exist_ok=True)
    if name in ("mnist", "fashion_mnist"):
        write_keras_npz(root / f"{name}.npz")
        return {"path": str(root / f"{name}.npz")}
    if name == "cifar10":
        write_cifar_batch(root / "data_batch_1", rng.integers(0, 256, (12, 3, 32, 32), dtype=np.uint8),
                          [index % 10 for index in range(12)])
        write_cifar_batch(root / "test_batch", rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8), [3, 1, 4, 1])
        return {"path": str(root)}
    if name == "femnist":
        write_leaf(root, "train", "all.json", {"f0001": femnist_user(5, 6), "f0002": femnist_user(61, 6)})
        write_leaf(root, "test", "all.json", {"f0001": femnist_user(5, 2), "f0002": femnist_user(61, 2)})
        return {"path": str(root)}
    if name == "shakespeare":
        write_leaf(root, "train", "all.json", {"HAMLET": shakespeare_user(0, 6), "OPHELIA": shakespeare_user(50, 6)})
        write_leaf(root, "test", "all.json", {"HAMLET": shakespeare_user(7, 4)})
        return {"path": str(root)}
    return {}
