import os
import pickle
import re
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
from sklearn import datasets as sklearn_datasets
from sklearn.model_selection import train_test_split

from fedless_nb.data import ALL_LETTERS, Dataset, DatasetError, available_datasets, load_dataset, register_dataset
from fedless_nb.data import datasets as registry

from dataset_files import femnist_user, write_cifar_batch, write_dataset_files, write_keras_npz, write_leaf


def test_registry_lists_every_builtin_dataset():
    assert set(available_datasets()) >= {
        "digits", "breast_cancer", "mnist", "fashion_mnist", "cifar10", "femnist", "shakespeare",
    }


def test_importing_the_package_loads_neither_tensorflow_nor_keras():
    code = "import sys, fedless_nb.data; print(any(m in sys.modules for m in ('tensorflow', 'keras', 'sklearn')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_registered_loader_is_found_by_name(monkeypatch):
    monkeypatch.setattr(registry, "_LOADERS", dict(registry._LOADERS))  # leave the real registry untouched

    @register_dataset("test-constant")
    def constant(*, size: int = 3) -> Dataset:
        x = np.zeros((size, 2), np.float32)
        return Dataset("test-constant", x, np.zeros(size, np.int64), x, np.zeros(size, np.int64), num_classes=1)

    assert "test-constant" in available_datasets()
    assert load_dataset("test-constant", size=5).input_shape == (2,)


# --- scikit-learn tables -------------------------------------------------------------------------


def test_digits_shapes_dtypes_and_range():
    data = load_dataset("digits")
    assert data.x_train.shape == (1437, 64) and data.x_test.shape == (360, 64)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert 0.0 <= data.x_train.min() and data.x_train.max() == 1.0
    assert data.num_classes == 10 and data.input_shape == (64,) and data.groups is None
    # stratified: every class keeps its share in the test split
    assert set(np.bincount(data.y_test, minlength=10)) <= {35, 36, 37}


def test_digits_is_deterministic_under_seed():
    a, b, c = load_dataset("digits", seed=1), load_dataset("digits", seed=1), load_dataset("digits", seed=2)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)
    assert len(load_dataset("digits", test_fraction=0.5).y_test) == 899


def test_breast_cancer_is_standardized_with_training_statistics_only():
    data = load_dataset("breast_cancer", seed=3)
    assert data.num_classes == 2 and data.x_train.shape == (455, 30) and data.x_test.shape == (114, 30)
    assert data.x_train.dtype == np.float32 and data.y_test.dtype == np.int64
    np.testing.assert_allclose(data.x_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(data.x_train.std(axis=0), 1, atol=1e-4)
    assert np.abs(data.x_test.mean(axis=0)).max() > 1e-3, "test split was scaled with its own statistics"

    raw = sklearn_datasets.load_breast_cancer()
    raw_train, raw_test, _, _ = train_test_split(
        raw.data, raw.target, test_size=0.2, random_state=3, stratify=raw.target
    )
    expected = (raw_test - raw_train.mean(axis=0)) / raw_train.std(axis=0)
    np.testing.assert_allclose(data.x_test, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1])
def test_bad_test_fraction_is_refused(fraction):
    with pytest.raises(DatasetError, match="test_fraction must be between 0 and 1"):
        load_dataset("digits", test_fraction=fraction)


# --- Keras image sets, from small local files ----------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_grayscale_sets_read_a_local_npz(tmp_path, name):
    raw = write_keras_npz(tmp_path / f"{name}.npz")
    data = load_dataset(name, path=str(tmp_path / f"{name}.npz"))
    assert data.name == name and data.num_classes == 10
    assert data.x_train.shape == (12, 28, 28, 1) and data.x_test.shape == (4, 28, 28, 1)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    np.testing.assert_allclose(data.x_train[..., 0], raw["x_train"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(data.y_test, raw["y_test"])


def test_npz_errors_name_the_file_and_the_missing_array(tmp_path):
    with pytest.raises(DatasetError, match="no .npz file at .*absent.npz"):
        load_dataset("mnist", path=tmp_path / "absent.npz")
    np.savez(tmp_path / "partial.npz", x_train=np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(DatasetError, match="lacks array 'y_train'"):
        load_dataset("fashion_mnist", path=tmp_path / "partial.npz")


def test_without_path_mnist_comes_from_keras_own_loader(monkeypatch):
    import keras

    calls = []

    def fake_load_data():
        calls.append(True)
        x = np.full((3, 28, 28), 255, np.uint8)
        return (x, np.array([1, 2, 3], np.uint8)), (x[:1], np.array([4], np.uint8))

    monkeypatch.setattr(keras.datasets.mnist, "load_data", fake_load_data)
    data = load_dataset("mnist")
    assert calls == [True]
    assert data.x_train.shape == (3, 28, 28, 1) and data.x_train.max() == 1.0
    np.testing.assert_array_equal(data.y_train, [1, 2, 3])


@pytest.mark.parametrize("name, local_copy", [("mnist", "mnist.npz"), ("cifar10", "cifar-10-batches-py")])
def test_a_download_without_network_is_one_line_saying_where_the_files_go(monkeypatch, tmp_path, name, local_copy):
    """Keras' real loader against an empty cache and a proxy that refuses every connection.

    urllib's first urlopen in a process builds its global opener from the proxy variables of that moment and keeps
    it, so the test starts without one (its download must meet the proxy set here) and puts back the one from before
    at its end. It once left its own behind, and every later urlopen of the test session went to the proxy at port 9:
    the Functions Framework and classroom tests' servers were up, their requests were refused."""
    monkeypatch.setattr(urllib.request, "_opener", None)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KERAS_HOME", raising=False)
    for variable in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with pytest.raises(DatasetError) as refused:
        load_dataset(name)
    message = str(refused.value)
    assert message.startswith(f"{name} must be downloaded and the download failed (offline?): put ")
    assert local_copy in message and "--set data.options.path=" in message and "\n" not in message


def test_cifar10_reads_the_python_batch_directory(tmp_path):
    rng = np.random.default_rng(1)
    first = rng.integers(0, 256, (20, 3, 32, 32), dtype=np.uint8)  # CIFAR rows: R plane, G plane, B plane
    second = rng.integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    test = rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    write_cifar_batch(tmp_path / "data_batch_1", first, [i % 10 for i in range(20)])
    write_cifar_batch(tmp_path / "data_batch_2", second, [9] * 5)
    write_cifar_batch(tmp_path / "test_batch", test, [3, 1, 4, 1])

    data = load_dataset("cifar10", path=tmp_path)
    assert data.x_train.shape == (25, 32, 32, 3) and data.x_test.shape == (4, 32, 32, 3)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64 and data.num_classes == 10
    np.testing.assert_allclose(data.x_train[:20], first.transpose(0, 2, 3, 1) / 255.0, rtol=1e-6)
    np.testing.assert_allclose(data.x_train[20:], second.transpose(0, 2, 3, 1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(data.y_train, [*(i % 10 for i in range(20)), *[9] * 5])
    np.testing.assert_array_equal(data.y_test, [3, 1, 4, 1])


def test_cifar10_without_batches_names_the_directory(tmp_path):
    with pytest.raises(DatasetError, match=f"{re.escape(str(tmp_path))} is not a cifar-10-batches-py directory"):
        load_dataset("cifar10", path=tmp_path)


# --- LEAF JSON -----------------------------------------------------------------------------------


def test_femnist_reads_leaf_json_with_writers_as_groups(tmp_path):
    # file names sort b < c: users of b.json come first, whatever order the files were written in
    write_leaf(tmp_path, "train", "c.json", {"f0003": femnist_user(61, 1)})
    write_leaf(tmp_path, "train", "b.json", {"f0001": femnist_user(5, 2), "f0002": femnist_user(7, 3)})
    write_leaf(tmp_path, "test", "b.json", {"f0001": femnist_user(5, 1), "f0003": femnist_user(61, 1)})

    data = load_dataset("femnist", path=tmp_path)
    assert data.x_train.shape == (6, 28, 28, 1) and data.x_test.shape == (2, 28, 28, 1)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64 and data.num_classes == 62
    np.testing.assert_array_equal(data.y_train, [5, 5, 7, 7, 7, 61])
    assert data.group_names == ("f0001", "f0002", "f0003")
    np.testing.assert_array_equal(data.groups, [0, 0, 1, 1, 1, 2])
    assert data.groups.dtype == np.int64
    np.testing.assert_allclose(data.x_train[2], 0.07)


def test_shakespeare_encodes_characters_with_leaf_vocabulary(tmp_path):
    line = ("To be, or not to be: that is the question.\nWhether 'tis nobler in the mind " * 2)[:80]
    write_leaf(tmp_path, "train", "all.json", {"HAMLET": {"x": [line, line[::-1]], "y": ["}", "a"]},
                                                "OPHELIA": {"x": [line], "y": [" "]}})
    write_leaf(tmp_path, "test", "all.json", {"HAMLET": {"x": [line], "y": ["\n"]}})

    data = load_dataset("shakespeare", path=tmp_path)
    assert data.x_train.shape == (3, 80) and data.x_test.shape == (1, 80)
    assert data.x_train.dtype == np.int64 and data.y_train.dtype == np.int64
    assert data.num_classes == len(ALL_LETTERS) == 80
    assert data.x_train[0].tolist() == [ALL_LETTERS.index(c) for c in line]
    assert "".join(ALL_LETTERS[i] for i in data.x_train[1]) == line[::-1]
    np.testing.assert_array_equal(data.y_train, [ALL_LETTERS.index(c) for c in "}a "])
    assert data.group_names == ("HAMLET", "OPHELIA")
    np.testing.assert_array_equal(data.groups, [0, 0, 1])


def test_shakespeare_refuses_characters_outside_the_vocabulary(tmp_path):
    write_leaf(tmp_path, "train", "a.json", {"U": {"x": ["ab~"], "y": ["c"]}})
    write_leaf(tmp_path, "test", "a.json", {"U": {"x": ["abc"], "y": ["d"]}})
    with pytest.raises(DatasetError, match="character '~' is not in LEAF's Shakespeare vocabulary"):
        load_dataset("shakespeare", path=tmp_path)


@pytest.mark.parametrize("name", ["femnist", "shakespeare"])
def test_leaf_errors_name_the_path(tmp_path, name):
    with pytest.raises(DatasetError, match=f"LEAF directory {re.escape(str(tmp_path / 'nowhere'))} does not exist"):
        load_dataset(name, path=tmp_path / "nowhere")
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetError, match=f"no LEAF .json files in {re.escape(str(tmp_path / 'train'))}"):
        load_dataset(name, path=tmp_path)
    (tmp_path / "train" / "bad.json").write_text('{"users": ["u"]}')
    with pytest.raises(DatasetError, match="bad.json is not LEAF JSON"):
        load_dataset(name, path=tmp_path)


# --- what each dataset is ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "facts", "description"),
    [
        ("digits", "image", {"image_shape": (8, 8, 1), "input_shape": (64,)}, "8x8x1 images stored flat"),
        ("breast_cancer", "tabular", {"feature_count": 30, "image_shape": None}, "30 features"),
        ("mnist", "image", {"image_shape": (28, 28, 1), "input_shape": (28, 28, 1)}, "28x28x1 images"),
        ("fashion_mnist", "image", {"image_shape": (28, 28, 1)}, "28x28x1 images"),
        ("cifar10", "image", {"image_shape": (32, 32, 3), "input_shape": (32, 32, 3)}, "32x32x3 images"),
        ("femnist", "image", {"image_shape": (28, 28, 1), "num_classes": 62}, "28x28x1 images"),
        ("shakespeare", "text", {"sequence_length": 80, "vocabulary_size": 80, "image_shape": None},
         "sequences of 80 tokens over a vocabulary of 80"),
    ],
)
def test_every_builtin_dataset_says_what_its_examples_are(tmp_path, name, kind, facts, description):
    data = load_dataset(name, **write_dataset_files(name, tmp_path))
    assert data.kind == kind and data.describe() == description
    assert {fact: getattr(data, fact) for fact in facts} == facts
    assert data.sequence_length is None or kind == "text"


def test_a_dataset_whose_stated_shape_does_not_hold_its_examples_is_refused():
    x, y = np.zeros((4, 64), np.float32), np.zeros(4, np.int64)
    with pytest.raises(DatasetError, match=r"image_shape \(8, 8, 3\) must be \(height, width, channels\) holding the 64"):
        Dataset("bad", x, y, x, y, num_classes=1, image_shape=(8, 8, 3))
    with pytest.raises(DatasetError, match=r"token sequences must be \(examples, length\)"):
        Dataset("bad", x.reshape(4, 8, 8), y, x.reshape(4, 8, 8), y, num_classes=1, vocabulary_size=80)



@pytest.mark.parametrize(
    ("y_train", "message"),
    [
        (np.array([0, 1, 2, 10]), r"y_train holds labels from 0 to 10, outside 0..9; set num_classes"),
        (np.array([-1, 0, 1, 2]), r"y_train holds labels from -1 to 2, outside 0..9"),
        (np.array([0.0, 1.0, 2.0, 3.0]), r"y_train must hold integer class ids 0..9, got float64"),
        (np.array([0, 1, 2]), r"y_train must hold one label per example, got shape \(3,\) for 4 examples"),
        (np.zeros((4, 10), np.int64), r"y_train must hold one label per example, got shape \(4, 10\)"),
    ],
)
def test_labels_a_classifier_cannot_train_on_are_refused(y_train, message):
    x = np.zeros((4, 64), np.float32)
    with pytest.raises(DatasetError, match=message):
        Dataset("mine", x, y_train, x, np.zeros(4, np.int64), num_classes=10)


# --- names and options ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: load_dataset("imagenet"), "unknown dataset 'imagenet'; choose one of .*digits"),
        (
            lambda: load_dataset("digits", shuffle=True),
            "dataset 'digits' has no option 'shuffle'; its options are: test_fraction, seed",
        ),
        (lambda: load_dataset("mnist", seed=1), "dataset 'mnist' has no option 'seed'; its options are: path"),
        (lambda: load_dataset("femnist"), "dataset 'femnist' needs option 'path'"),
    ],
)
def test_name_and_option_errors_are_one_clear_line(call, message):
    with pytest.raises(DatasetError, match=message) as error:
        call()
    assert "\n" not in str(error.value)


class _RunsCode:
    """What a hostile batch file carries: a pickle that calls a function when it is loaded."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_cifar_batch_that_names_a_callable_is_refused_and_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(1)
    write_cifar_batch(tmp_path / "data_batch_1", rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8), [0, 1])
    with open(tmp_path / "test_batch", "wb") as file:
        pickle.dump({b"data": _RunsCode(), b"labels": [0]}, file)
    with pytest.raises(DatasetError, match="posix.system in a CIFAR batch file: only numeric arrays"):
        load_dataset("cifar10", path=tmp_path)
    assert not (tmp_path / "pwned").exists()
