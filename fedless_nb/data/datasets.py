"""The dataset registry and its loaders: each turns a source into one model-ready `Dataset`.

Heavy imports (scikit-learn, Keras and so TensorFlow) happen inside the loaders that need them,
so listing or validating datasets stays instant.
"""

from __future__ import annotations

import inspect
import json
import os
import pickle
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import _tf
from ..errors import UserError

# LEAF's Shakespeare vocabulary (leaf/models/utils/language_utils.py): a character's index is its id.
ALL_LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
FEMNIST_CLASSES = 62
_KERAS_IMAGE_KEYS = ("x_train", "y_train", "x_test", "y_test")


class DatasetError(UserError, ValueError):
    """A dataset request the user can fix: unknown name or option, a missing or malformed file."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train and test splits ready for a model: float32 (or integer token) inputs, int64 class ids.

    `groups` holds, for every training example, the index of the writer/user it came from
    (LEAF datasets), so a natural partition can keep each writer on one client; `group_names`
    names those indices. eq=False: arrays have no single truth value to compare by.

    A dataset also says what its examples are, so a model can be matched to it before a run
    starts and feature skew can rotate its images: `image_shape` (height, width, channels) for
    images, even when they are stored flat (digits); `vocabulary_size` for token sequences;
    neither for a table of features.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    groups: np.ndarray | None = None
    group_names: tuple[str, ...] = ()
    image_shape: tuple[int, int, int] | None = None
    vocabulary_size: int | None = None

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            self._check_labels(split, x, y)
        if self.image_shape is not None and self.vocabulary_size is not None:
            raise DatasetError(f"dataset {self.name!r} is given both an image_shape and a vocabulary_size; "
                               "give the one its examples are")
        if self.image_shape is not None and (
            len(self.image_shape) != 3 or int(np.prod(self.image_shape)) != int(np.prod(self.input_shape))
        ):
            raise DatasetError(f"dataset {self.name!r}: image_shape {self.image_shape} must be (height, width, "
                               f"channels) holding the {int(np.prod(self.input_shape))} values of each example")
        if self.vocabulary_size is not None and len(self.input_shape) != 1:
            raise DatasetError(f"dataset {self.name!r}: token sequences must be (examples, length), "
                               f"got examples of shape {self.input_shape}")

    def _check_labels(self, split: str, x: np.ndarray, y: np.ndarray) -> None:
        """Refuse labels a classifier of `num_classes` outputs cannot train on: TensorFlow would fail inside
        every function call with a message about a sparse loss instead."""
        if np.ndim(y) != 1 or len(y) != len(x):
            raise DatasetError(f"dataset {self.name!r}: y_{split} must hold one label per example, got shape "
                               f"{np.shape(y)} for {len(x)} examples")
        if not np.issubdtype(np.asarray(y).dtype, np.integer):
            raise DatasetError(f"dataset {self.name!r}: y_{split} must hold integer class ids 0..{self.num_classes - 1}, "
                               f"got {np.asarray(y).dtype}; encode the labels as integers first")
        if len(y) and (int(np.min(y)) < 0 or int(np.max(y)) >= self.num_classes):
            raise DatasetError(f"dataset {self.name!r}: y_{split} holds labels from {int(np.min(y))} to {int(np.max(y))}, "
                               f"outside 0..{self.num_classes - 1}; set num_classes to the number of classes or "
                               "re-encode the labels")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def kind(self) -> str:
        """'image', 'text' or 'tabular': which family of models can learn from it."""
        if self.image_shape is not None:
            return "image"
        return "text" if self.vocabulary_size is not None else "tabular"

    @property
    def feature_count(self) -> int:
        """Values per example (a table's columns; an image's pixels times channels)."""
        return int(np.prod(self.input_shape))

    @property
    def sequence_length(self) -> int | None:
        return self.input_shape[0] if self.kind == "text" else None

    def describe(self) -> str:
        """What an example is, in words: '8x8x1 images stored flat', '30 features', ..."""
        if self.image_shape is not None:
            size = "x".join(str(side) for side in self.image_shape)
            return f"{size} images" + (" stored flat" if self.input_shape != self.image_shape else "")
        if self.vocabulary_size is not None:
            return f"sequences of {self.sequence_length} tokens over a vocabulary of {self.vocabulary_size}"
        return f"{self.feature_count} features"


_LOADERS: dict[str, Callable[..., Dataset]] = {}


def register_dataset(name: str) -> Callable[[Callable[..., Dataset]], Callable[..., Dataset]]:
    """Register `loader(**options) -> Dataset` under `name`; its keyword parameters are its options."""

    def register(loader: Callable[..., Dataset]) -> Callable[..., Dataset]:
        _LOADERS[name] = loader
        return loader

    return register


def available_datasets() -> list[str]:
    return sorted(_LOADERS)


def load_dataset(name: str, **options: Any) -> Dataset:
    """Load a registered dataset; a wrong name or option fails with one line saying what to change."""
    if name not in _LOADERS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(available_datasets())}")
    loader = _LOADERS[name]
    check_options(f"dataset {name!r}", loader, options, DatasetError)
    return loader(**options)


def check_options(
    owner: str,
    function: Callable[..., Any],
    options: Mapping[str, Any],
    error: type[ValueError],
    supplied: Iterable[str] = (),
) -> None:
    """Refuse options `function` does not take and name required ones left out, before calling it.

    `supplied` are the parameters the caller fills in itself, so they are not user options.
    """
    parameters = {k: p for k, p in inspect.signature(function).parameters.items() if k not in set(supplied)}
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        choices = ", ".join(parameters) or "none"
        raise error(f"{owner} has no option {unknown[0]!r}; its options are: {choices}")
    missing = [k for k, p in parameters.items() if p.default is inspect.Parameter.empty and k not in options]
    if missing:
        raise error(f"{owner} needs option {missing[0]!r}")


# --- scikit-learn tables (offline) ---------------------------------------------------------------


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Stratified split, so a small test set still holds every class in its usual share."""
    from sklearn.model_selection import train_test_split

    if not 0 < test_fraction < 1:
        raise DatasetError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    return tuple(train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y))


@register_dataset("digits")
def load_digits(*, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1,797 images), pixels 0..16 scaled to [0, 1]."""
    from sklearn import datasets

    raw = datasets.load_digits()
    x_train, x_test, y_train, y_test = _split(raw.data / 16.0, raw.target, test_fraction, seed)
    return Dataset("digits", x_train.astype(np.float32), y_train.astype(np.int64),
                   x_test.astype(np.float32), y_test.astype(np.int64), num_classes=10, image_shape=(8, 8, 1))


@register_dataset("breast_cancer")
def load_breast_cancer(*, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Wisconsin breast cancer (569 patients, 30 features), the healthcare example.

    Standardized with the training split's mean and std only: the test set must not leak into training.
    """
    from sklearn import datasets

    raw = datasets.load_breast_cancer()
    x_train, x_test, y_train, y_test = _split(raw.data, raw.target, test_fraction, seed)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std[std == 0] = 1.0
    return Dataset("breast_cancer", ((x_train - mean) / std).astype(np.float32), y_train.astype(np.int64),
                   ((x_test - mean) / std).astype(np.float32), y_test.astype(np.int64), num_classes=2)


# --- Synthetic(alpha, beta), the FedProx paper's generator ----------------------------------------

SYNTHETIC_FEATURES, SYNTHETIC_CLASSES = 60, 10


@register_dataset("synthetic")
def load_synthetic(*, alpha: float = 1.0, beta: float = 1.0, devices: int = 30, test_fraction: float = 0.1,
                   seed: int = 0) -> Dataset:
    """Synthetic(alpha, beta) of Li et al. (MLSys 2020), as their generate_synthetic.py draws it: device k has
    its own logistic-regression model W_k ~ N(u_k, 1), b_k ~ N(u_k, 1), u_k ~ N(0, alpha) (alpha: how much
    the models differ) and features x ~ N(v_k, diag(j^-1.2)), v_k ~ N(B_k, 1), B_k ~ N(0, beta) (beta: how
    much the data differ); y = argmax(W_k x + b_k) over 10 classes, 60 features. Device sizes follow their
    power law, lognormal(4, 2) + 50. Each device keeps `test_fraction` of its examples for the test split (as
    theirs: int((1 - test_fraction) n) examples train, the rest test, at least one each);
    `groups` is the device of each training example, so partition "natural" gives each client its devices.
    As in their generator, u_k shifts every class's logit by the same amount, so alpha changes the labels
    only through the random draws; beta and the per-device W_k carry the heterogeneity.
    """
    if alpha < 0 or beta < 0:
        raise DatasetError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
    if devices < 1:
        raise DatasetError(f"devices must be >= 1, got {devices}")
    if not 0 < test_fraction < 1:
        raise DatasetError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    rng = np.random.default_rng(seed)
    sizes = rng.lognormal(4, 2, devices).astype(np.int64) + 50
    model_means, feature_means = rng.normal(0, alpha, devices), rng.normal(0, beta, devices)
    scale = np.arange(1, SYNTHETIC_FEATURES + 1) ** -0.6  # the square root of the covariance's diagonal j^-1.2
    splits: list[list[np.ndarray]] = [[], [], [], [], []]  # x_train, y_train, x_test, y_test, groups
    for device, size in enumerate(sizes):
        weights = rng.normal(model_means[device], 1, (SYNTHETIC_FEATURES, SYNTHETIC_CLASSES))
        bias = rng.normal(model_means[device], 1, SYNTHETIC_CLASSES)
        x = rng.normal(feature_means[device], 1, SYNTHETIC_FEATURES) + rng.standard_normal((size, SYNTHETIC_FEATURES)) * scale
        y = np.argmax(x @ weights + bias, axis=1)
        train = min(size - 1, max(1, int((1 - test_fraction) * size)))  # theirs: int(0.9 n) train, the rest test
        for split, values in zip(splits, (x[:train], y[:train], x[train:], y[train:], np.full(train, device))):
            split.append(values)
    x_train, y_train, x_test, y_test, groups = (np.concatenate(split) for split in splits)
    return Dataset("synthetic", x_train.astype(np.float32), y_train.astype(np.int64), x_test.astype(np.float32),
                   y_test.astype(np.int64), num_classes=SYNTHETIC_CLASSES, groups=groups.astype(np.int64),
                   group_names=tuple(f"f_{device:05d}" for device in range(devices)))


# --- Keras image sets ----------------------------------------------------------------------------


def _keras() -> Any:
    """Keras, imported only when a Keras-backed loader runs (it loads TensorFlow)."""
    _tf.tensorflow()  # quiets TensorFlow's C++ logging before Keras pulls it in
    import keras

    return keras


def _scaled_images(pixels: np.ndarray) -> np.ndarray:
    return np.asarray(pixels, dtype=np.float32) / 255.0


def _labels(labels: Any) -> np.ndarray:
    """Keras gives (n,) or (n, 1) labels, CIFAR batches give lists: always (n,) int64."""
    return np.asarray(labels, dtype=np.int64).reshape(-1)


def _read_keras_npz(path: Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A local copy in the format keras.datasets caches (mnist.npz): lets users work offline."""
    if not path.is_file():
        raise DatasetError(f"no .npz file at {path}; pass path= a file with keys {', '.join(_KERAS_IMAGE_KEYS)}")
    with np.load(path, allow_pickle=False) as arrays:
        missing = [key for key in _KERAS_IMAGE_KEYS if key not in arrays.files]
        if missing:
            raise DatasetError(f"{path} lacks array {missing[0]!r}; it needs {', '.join(_KERAS_IMAGE_KEYS)}")
        return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def _download(name: str, local_copy: str, fetch: Callable[[], Any] | None = None) -> Any:
    """`fetch()` (default: keras.datasets' `name`.load_data()), which downloads once into ~/.keras/datasets;
    without a network, one line telling where a copy may go instead of urllib's traceback."""
    try:
        return (fetch or getattr(_keras().datasets, name).load_data)()
    except Exception as error:  # keras wraps urllib's URLError and HTTPError in a bare Exception
        if not isinstance(error, OSError) and "URL fetch failure" not in str(error):
            raise
        raise DatasetError(
            f"{name} must be downloaded and the download failed (offline?): put {local_copy} anywhere "
            f"(~/.keras/datasets/ is where keras looks) and pass --set data.options.path=THAT_PATH "
            f"(in YAML: data: {{options: {{path: THAT_PATH}}}})"
        ) from None


def _load_grayscale_28(name: str, path: str | os.PathLike | None) -> Dataset:
    """MNIST and Fashion-MNIST share one format: keras' loader (or its .npz), 28x28 uint8, 10 classes."""
    if path is None:
        source = _download(name, f"{name}.npz (keys {', '.join(_KERAS_IMAGE_KEYS)})")
    else:
        source = _read_keras_npz(Path(path).expanduser())
    (x_train, y_train), (x_test, y_test) = source
    return Dataset(name, _scaled_images(x_train)[..., np.newaxis], _labels(y_train),
                   _scaled_images(x_test)[..., np.newaxis], _labels(y_test), num_classes=10, image_shape=(28, 28, 1))


@register_dataset("mnist")
def load_mnist(*, path: str | os.PathLike | None = None) -> Dataset:
    """MNIST through keras.datasets.mnist (downloads once), or a local mnist.npz with `path`."""
    return _load_grayscale_28("mnist", path)


@register_dataset("fashion_mnist")
def load_fashion_mnist(*, path: str | os.PathLike | None = None) -> Dataset:
    """Fashion-MNIST through keras.datasets.fashion_mnist, or a local .npz in the same format with `path`."""
    return _load_grayscale_28("fashion_mnist", path)


class _NumericUnpickler(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays, nothing else: a pickle can name any callable, so a
    CIFAR batch file from elsewhere must not be loaded with pickle's (or keras.datasets') full unpickler."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise DatasetError(f"{module}.{name} in a CIFAR batch file: only numeric arrays are read from it")
        return super().find_class(module, name)


def _load_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One cifar-10-batches-py file: (images as N x 3 x 32 x 32, labels)."""
    try:
        with open(path, "rb") as file:
            batch = _NumericUnpickler(file, encoding="bytes").load()
        data, labels = np.asarray(batch[b"data"], np.uint8), np.asarray(batch[b"labels"], np.int64)
        return data.reshape(len(data), 3, 32, 32), labels
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as error:
        raise DatasetError(f"{path} is not a CIFAR-10 batch file ({type(error).__name__}: {error})") from None


def _read_cifar_batches(directory: Path) -> tuple[tuple[np.ndarray, Any], tuple[np.ndarray, Any]]:
    """Read cifar-10-batches-py with the restricted unpickler; every data_batch_N present, in order of N."""
    matches = (re.fullmatch(r"data_batch_(\d+)", p.name) for p in directory.glob("data_batch_*"))
    numbered = [(int(m[1]), directory / m[0]) for m in matches if m]
    if not numbered or not (directory / "test_batch").is_file():
        raise DatasetError(
            f"{directory} is not a cifar-10-batches-py directory: it needs data_batch_1.. and test_batch"
        )
    train = [_load_cifar_batch(batch) for _, batch in sorted(numbered)]
    x_train = np.concatenate([data for data, _ in train]).transpose(0, 2, 3, 1)
    y_train = np.concatenate([labels for _, labels in train])
    x_test, y_test = _load_cifar_batch(directory / "test_batch")
    return (x_train, y_train), (x_test.transpose(0, 2, 3, 1), y_test)


CIFAR10_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"  # keras.datasets' own


@register_dataset("cifar10")
def load_cifar10(*, path: str | os.PathLike | None = None) -> Dataset:
    """CIFAR-10 downloaded (and checked) by keras' get_file, or a local cifar-10-batches-py directory with `path`;
    either way read with the restricted unpickler."""
    if path is None:
        path = _download("cifar10", "the extracted cifar-10-batches-py directory", lambda: _keras().utils.get_file(
            "cifar-10-batches-py", origin="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", untar=True,
            file_hash=CIFAR10_SHA256))
    source = _read_cifar_batches(Path(path).expanduser())
    (x_train, y_train), (x_test, y_test) = source
    return Dataset("cifar10", _scaled_images(x_train), _labels(y_train),
                   _scaled_images(x_test), _labels(y_test), num_classes=10, image_shape=(32, 32, 3))


# --- LEAF (FEMNIST, Shakespeare) -----------------------------------------------------------------


@dataclass
class _LeafSplit:
    """One LEAF split flattened: every example's x, y and its user."""

    x: list[Any]
    y: list[Any]
    users: list[str]


def _leaf_files(root: Path, split: str) -> list[Path]:
    directory = root / split
    files = sorted(directory.glob("*.json"))
    if not files:
        raise DatasetError(
            f"no LEAF .json files in {directory}; pass path= a LEAF data directory with train/ and test/"
        )
    return files


def _read_leaf_split(root: Path, split: str) -> _LeafSplit:
    """Read the split's files in sorted order, users in their listed order: the same run gives the same data."""
    flat = _LeafSplit([], [], [])
    for file in _leaf_files(root, split):
        try:
            content = json.loads(file.read_text())
            for user in content["users"]:
                data = content["user_data"][user]
                flat.x.extend(data["x"])
                flat.y.extend(data["y"])
                flat.users.extend([user] * len(data["y"]))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DatasetError(
                f"{file} is not LEAF JSON (users, num_samples, user_data: {{user: {{x, y}}}}): {err!r}"
            ) from None
    return flat


def _load_leaf(name: str, path: str | os.PathLike, encode_x: Callable[[list[Any]], np.ndarray],
               encode_y: Callable[[list[Any]], np.ndarray], num_classes: int, **kind: Any) -> Dataset:
    """Load a LEAF dataset, keeping who wrote each training example as `groups`."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetError(f"LEAF directory {root} does not exist; pass path= a directory with train/ and test/")
    train, test = _read_leaf_split(root, "train"), _read_leaf_split(root, "test")
    group_names = tuple(dict.fromkeys(train.users))
    index = {user: i for i, user in enumerate(group_names)}
    groups = np.array([index[user] for user in train.users], dtype=np.int64)
    return Dataset(name, encode_x(train.x), encode_y(train.y), encode_x(test.x), encode_y(test.y),
                   num_classes=num_classes, groups=groups, group_names=group_names, **kind)


def _femnist_images(x: list[Any]) -> np.ndarray:
    """LEAF stores each image as 784 floats in [0, 1]: already scaled, only the shape changes."""
    return np.asarray(x, dtype=np.float32).reshape(-1, 28, 28, 1)


@register_dataset("femnist")
def load_femnist(*, path: str | os.PathLike) -> Dataset:
    """LEAF FEMNIST: 62 classes (digits, upper and lower case) written by ~3,500 writers."""
    return _load_leaf("femnist", path, _femnist_images, _labels, FEMNIST_CLASSES, image_shape=(28, 28, 1))


_SORTED_CODES = np.array(sorted(ord(c) for c in ALL_LETTERS), dtype=np.uint32)
_INDEX_OF_SORTED = np.array([ALL_LETTERS.index(chr(code)) for code in _SORTED_CODES], dtype=np.int64)


def _char_ids(text: str) -> np.ndarray:
    """Vocabulary index of every character, vectorized (Shakespeare has millions of characters).

    A character outside LEAF's vocabulary is an error, not LEAF's silent -1: it means the file
    did not come from LEAF's Shakespeare preprocessing.
    """
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    positions = np.minimum(np.searchsorted(_SORTED_CODES, codes), len(_SORTED_CODES) - 1)
    unknown = _SORTED_CODES[positions] != codes
    if unknown.any():
        character = chr(codes[unknown][0])
        raise DatasetError(f"character {character!r} is not in LEAF's Shakespeare vocabulary (ALL_LETTERS)")
    return _INDEX_OF_SORTED[positions]


def _shakespeare_sequences(x: list[str]) -> np.ndarray:
    """(n, sequence_length) int64 character ids; LEAF's sequences all have one length (80)."""
    lengths = {len(line) for line in x}
    if len(lengths) > 1:
        raise DatasetError(f"Shakespeare sequences must all have one length, found lengths {sorted(lengths)}")
    return _char_ids("".join(x)).reshape(len(x), lengths.pop() if lengths else 0)


def _shakespeare_targets(y: list[str]) -> np.ndarray:
    """The next character of each sequence, as its vocabulary id."""
    if any(len(char) != 1 for char in y):
        raise DatasetError("every Shakespeare y must be a single character")
    return _char_ids("".join(y))


@register_dataset("shakespeare")
def load_shakespeare(*, path: str | os.PathLike) -> Dataset:
    """LEAF Shakespeare: next-character prediction, one user per play role."""
    return _load_leaf("shakespeare", path, _shakespeare_sequences, _shakespeare_targets, len(ALL_LETTERS),
                      vocabulary_size=len(ALL_LETTERS))
