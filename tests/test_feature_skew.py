"""Feature skew: each client's images turned and noised by its own amount when its data is written."""

import numpy as np
import pytest

from fedless_nb.data import PartitionError, client_skew, load_dataset, partition_dataset, skew_images
from fedless_nb.experiment import ConfigError, ExperimentConfig
from fedless_nb.runner import client_ids, write_client_data
from fedless_nb.store import decode_arrays, make_store


def test_amounts_spread_evenly_from_none_to_the_maximum():
    amounts = [client_skew(i, 5, max_rotation=80, max_noise=0.4) for i in range(5)]
    assert amounts == [(0.0, 0.0), (20.0, 0.1), (40.0, 0.2), (60.0, pytest.approx(0.3)), (80.0, 0.4)]
    assert client_skew(0, 1, 90, 1.0) == (0.0, 0.0)


def test_a_quarter_turn_is_rot90_and_keeps_shape_and_dtype():
    x = np.random.default_rng(0).random((3, 64), dtype=np.float32)
    turned = skew_images(x, (8, 8), rotation=90, noise=0.0, seed=0)
    assert turned.shape == x.shape and turned.dtype == np.float32
    np.testing.assert_allclose(turned.reshape(3, 8, 8), np.rot90(x.reshape(3, 8, 8), 1, axes=(1, 2)), atol=1e-5)
    colour = np.random.default_rng(1).random((2, 6, 6, 3), dtype=np.float32)
    np.testing.assert_allclose(skew_images(colour, (6, 6, 3), 180, 0.0, 0), colour[:, ::-1, ::-1, :], atol=1e-5)


def test_noise_has_the_asked_spread_and_follows_the_seed():
    x = np.zeros((200, 28, 28, 1), np.float32)
    noisy = skew_images(x, (28, 28, 1), rotation=0, noise=0.3, seed=[4, 2])
    assert np.std(noisy) == pytest.approx(0.3, rel=0.02) and abs(np.mean(noisy)) < 0.01
    np.testing.assert_array_equal(noisy, skew_images(x, (28, 28, 1), 0, 0.3, seed=[4, 2]))
    assert not np.array_equal(noisy, skew_images(x, (28, 28, 1), 0, 0.3, seed=[4, 3]))


def test_written_client_data_carries_each_clients_rotation(tmp_path):
    config = ExperimentConfig.from_dict({"clients": 3, "clients_per_round": 1, "seed": 2,
                                         "store": {"path": str(tmp_path / "store")},
                                         "data": {"dataset": "digits", "partition": "pathological", "labels_per_client": 4,
                                                  "max_rotation": 180}})
    digits = load_dataset("digits")
    store = make_store(config.store)
    keys = write_client_data(store, digits, config)
    parts = partition_dataset(digits, "pathological", 3, 2, labels_per_client=4)
    written = [decode_arrays(store.get(keys[client_id])) for client_id in client_ids(3)]
    for (x, y), indices in zip(written, parts):
        np.testing.assert_array_equal(y, digits.y_train[indices])  # labels and membership untouched
    images = [digits.x_train[indices].reshape(-1, 8, 8) for indices in parts]
    np.testing.assert_array_equal(written[0][0], digits.x_train[parts[0]])  # client 0: as it was
    np.testing.assert_allclose(written[1][0].reshape(-1, 8, 8), np.rot90(images[1], 1, axes=(1, 2)), atol=1e-5)
    np.testing.assert_allclose(written[2][0].reshape(-1, 8, 8), images[2][:, ::-1, ::-1], atol=1e-5)


def test_tabular_data_is_refused_in_one_line_before_anything_is_written(tmp_path):
    config = ExperimentConfig.from_dict({"clients": 3, "clients_per_round": 1, "store": {"path": str(tmp_path / "s")},
                                         "data": {"dataset": "breast_cancer", "max_noise": 0.1}})
    with pytest.raises(PartitionError, match="feature skew .* needs image data and 'breast_cancer' is not images") as error:
        write_client_data(make_store(config.store), load_dataset("breast_cancer"), config)
    assert "\n" not in str(error.value)
    assert not list((tmp_path / "s").rglob("*.arrays"))


@pytest.mark.parametrize(("data", "message"), [
    ({"max_rotation": 400}, "data.max_rotation: must be between 0 and 360 degrees, got 400.0"),
    ({"max_noise": -0.1}, "data.max_noise: must be >= 0, got -0.1"),
])
def test_config_refuses_impossible_amounts(data, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig.from_dict({"data": data})
