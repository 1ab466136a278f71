import numpy as np
import pytest

from fedless_nb.rounds.selection import RandomSelection
from fedless_nb.strategies import ClientUpdate, FedAvg, fedavg, make_strategy


def test_fedavg_matches_a_hand_computation():
    a = [np.array([[1.0, 2.0]], np.float32), np.array([0.0], np.float32)]
    b = [np.array([[3.0, 6.0]], np.float32), np.array([4.0], np.float32)]
    # weights 1 and 3: (1*1 + 3*3)/4 = 2.5, (1*2 + 3*6)/4 = 5.0, (0 + 3*4)/4 = 3.0
    result = fedavg([a, b], [1, 3])
    np.testing.assert_array_equal(result[0], np.array([[2.5, 5.0]], np.float32))
    np.testing.assert_array_equal(result[1], np.array([3.0], np.float32))
    assert all(layer.dtype == np.float32 for layer in result)


def test_fedavg_of_identical_models_is_that_model():
    rng = np.random.default_rng(1)
    model = [rng.standard_normal((5, 3)).astype(np.float32)]
    np.testing.assert_array_equal(fedavg([model, model, model], [3, 7, 11])[0], model[0])


def test_fedavg_refuses_empty_or_zero_weight():
    with pytest.raises(ValueError):
        fedavg([], [])
    with pytest.raises(ValueError):
        fedavg([[np.ones(2)]], [0])


def test_fedavg_strategy_weights_by_sample_count():
    updates = [ClientUpdate("a", [np.array([0.0], np.float32)], 10), ClientUpdate("b", [np.array([10.0], np.float32)], 30)]
    assert FedAvg().aggregate(1, [np.array([99.0], np.float32)], updates)[0][0] == pytest.approx(7.5)


def test_unknown_strategy_lists_the_choices():
    with pytest.raises(ValueError, match="unknown strategy 'fedsgd'.*fedavg"):
        make_strategy("fedsgd")


def test_random_selection_is_seeded_per_round():
    clients = [f"c{i}" for i in range(20)]
    policy = RandomSelection(seed=3)
    first = policy.select(1, clients, 5)
    assert first == RandomSelection(seed=3).select(1, clients, 5)
    assert len(set(first)) == 5 and set(first) <= set(clients)
    assert any(policy.select(r, clients, 5) != first for r in range(2, 6))
    assert RandomSelection(seed=4).select(1, clients, 5) != first or RandomSelection(seed=5).select(1, clients, 5) != first
    with pytest.raises(ValueError):
        policy.select(1, clients, 21)
