"""Every aggregation kernel: hand-computed expectations, and agreement with Flower's definitions to float32 precision."""

import numpy as np
import pytest

import flower_reference as flwr
from fedless_nb.strategies import ClientUpdate, make_strategy
from fedless_nb.strategies.aggregate import (
    bulyan, clip_to_norm, fedavg, fedavgm, fedbuff, fedopt, global_norm, krum, median, scaffold_controls,
    staleness_weight, trimmed_mean,
)

F32 = {"rtol": 1e-6, "atol": 1e-7}


def layers(*values):
    return [np.array(v, np.float32) for v in values]


def random_models(count, seed=0):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)]
            for _ in range(count)]


def assert_layers(actual, expected, **tolerance):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, **(tolerance or F32))


# hand-computed ------------------------------------------------------------------------------

def test_median_and_trimmed_mean_by_hand():
    models = [layers([1, 10]), layers([2, -5]), layers([100, 0]), layers([3, 1]), layers([-50, 2])]
    assert_layers(median(models), layers([2, 1]))
    # beta 0.2 of 5 cuts one from each end: [1,2,3] -> 2 and [0,1,2] -> 1
    assert_layers(trimmed_mean(models, 0.2), layers([2, 1]))
    # beta 0 is the plain mean: (1+2+100+3-50)/5 = 11.2, (10-5+0+1+2)/5 = 1.6
    assert_layers(trimmed_mean(models, 0.0), layers([11.2, 1.6]))
    with pytest.raises(ValueError):
        trimmed_mean(models, 0.5)


def test_krum_picks_the_model_closest_to_its_neighbours_and_multi_krum_averages():
    models = [layers([0.0]), layers([1.0]), layers([2.0]), layers([10.0])]
    # f=0: each scores its 2 nearest squared distances: 0 -> 1+4=5, 1 -> 1+1=2, 2 -> 1+4=5, 10 -> 64+81=145
    chosen, kept = krum(models, [1, 1, 1, 1], num_malicious=0)
    assert kept == [1] and chosen[0][0] == 1.0
    # Multi-Krum keeps the 3 best (1, then 0 and 2) and averages them by sample count: (0*1 + 1*1 + 2*2) / 4
    averaged, kept = krum(models, [1, 1, 2, 1], num_malicious=0, to_keep=3)
    assert sorted(kept) == [0, 1, 2] and averaged[0][0] == pytest.approx(1.25)


def test_fedavgm_by_hand():
    current, average = layers([1.0]), layers([0.0])
    # round 1: g = 1, v = g; new = 1 - 0.5 * 1 = 0.5
    new, momentum = fedavgm(current, average, None, server_learning_rate=0.5, server_momentum=0.9)
    assert new[0][0] == pytest.approx(0.5) and momentum[0][0] == pytest.approx(1.0)
    # round 2: g = 0.5, v = 0.9 * 1 + 0.5 = 1.4; new = 0.5 - 0.5 * 1.4 = -0.2
    new, momentum = fedavgm(new, average, momentum, server_learning_rate=0.5, server_momentum=0.9)
    assert new[0][0] == pytest.approx(-0.2) and momentum[0][0] == pytest.approx(1.4)
    # no momentum, lr 1: plain FedAvg
    assert fedavgm(current, average, None, 1.0, 0.0) == (layers([0.0]), None)


def test_fedopt_first_step_by_hand():
    current, average = layers([1.0]), layers([3.0])  # delta = 2
    options = {"eta": 0.1, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-9}
    # adam: m = 0.1 * 2 = 0.2, v = 0.01 * 4 = 0.04; new = 1 + 0.1 * 0.2 / 0.2 = 1.1
    new, m, v = fedopt("adam", current, average, None, None, **options)
    assert (new[0][0], m[0][0], v[0][0]) == pytest.approx((1.1, 0.2, 0.04))
    # yogi: v = 0 - 0.01 * 4 * sign(0 - 4) = 0.04 as well on the first step
    new, m, v = fedopt("yogi", current, average, None, None, **options)
    assert (new[0][0], v[0][0]) == pytest.approx((1.1, 0.04))
    # adagrad (beta_1 = 0): m = 2, v = 4; new = 1 + 0.1 * 2 / 2 = 1.1
    new, m, v = fedopt("adagrad", current, average, None, None, eta=0.1, beta_1=0.0, beta_2=0.0, tau=1e-9)
    assert (new[0][0], m[0][0], v[0][0]) == pytest.approx((1.1, 2.0, 4.0))
    with pytest.raises(ValueError, match="unknown server optimizer"):
        fedopt("sgd", current, average, None, None, **options)


def test_scaffold_control_update_by_hand():
    # c_i+ = c_i - c + (x - y) / (K lr) = 0.5 - 0.25 + (1 - 0.6) / (4 * 0.1) = 1.25
    new = scaffold_controls(layers([0.5]), layers([0.25]), layers([1.0]), layers([0.6]), steps=4, learning_rate=0.1)
    assert new[0][0] == pytest.approx(1.25)
    with pytest.raises(ValueError):
        scaffold_controls(layers([0.5]), layers([0.25]), layers([1.0]), layers([0.6]), steps=0, learning_rate=0.1)


def test_clipping_and_norms_by_hand():
    assert global_norm(layers([3.0], [4.0])) == pytest.approx(5.0)
    clipped, norm = clip_to_norm(layers([3.0], [4.0]), 1.0)
    assert norm == pytest.approx(5.0) and global_norm(clipped) == pytest.approx(1.0)
    assert_layers(clipped, layers([0.6], [0.8]))
    unchanged, _ = clip_to_norm(layers([0.3], [0.4]), 1.0)
    assert_layers(unchanged, layers([0.3], [0.4]))


def test_staleness_functions_and_fedbuff_by_hand():
    assert staleness_weight("constant", 7) == 1.0
    assert staleness_weight("polynomial", 3, exponent=0.5) == pytest.approx(0.5)  # (1 + 3)^-0.5
    assert staleness_weight("hinge", 4, hinge_a=10, hinge_b=4) == 1.0
    assert staleness_weight("hinge", 6, hinge_a=10, hinge_b=4) == pytest.approx(1 / 21)
    with pytest.raises(ValueError):
        staleness_weight("linear", 1)
    # current 1; deltas +2 (weight 1) and -1 (weight 0.5): 1 + 0.5 * (2 - 0.5) / 2 = 1.375
    assert fedbuff(layers([1.0]), [layers([2.0]), layers([-1.0])], [1.0, 0.5], 0.5)[0][0] == pytest.approx(1.375)


# agreement with Flower ----------------------------------------------------------------------

def test_fedavg_median_trimmed_mean_krum_agree_with_flower():
    models = random_models(7)
    counts = [3, 10, 7, 1, 5, 8, 2]
    results = list(zip(models, counts))
    assert_layers(fedavg(models, counts), flwr.aggregate(results))
    assert_layers(median(models), flwr.aggregate_median(results))
    for beta in (0.0, 0.1, 0.2, 0.3):
        assert_layers(trimmed_mean(models, beta), flwr.aggregate_trimmed_avg(results, beta))
    for num_malicious in (0, 1, 2):
        assert_layers(krum(models, counts, num_malicious)[0], flwr.aggregate_krum(results, num_malicious, 0))
        for to_keep in (2, 4):
            assert_layers(krum(models, counts, num_malicious, to_keep)[0],
                          flwr.aggregate_krum(results, num_malicious, to_keep))


@pytest.mark.parametrize("clients, num_malicious", [(3, 0), (7, 1), (9, 1), (11, 2), (12, 2)])
def test_bulyan_agrees_with_flower(clients, num_malicious):
    models = random_models(clients, seed=clients)
    models[0] = [layer * 50 for layer in models[0]]  # an outlier Krum must not pick
    counts = list(range(1, clients + 1))
    result, selected = bulyan(models, num_malicious)
    assert_layers(result, flwr.aggregate_bulyan(list(zip(models, counts)), num_malicious))
    assert len(selected) == clients - 2 * num_malicious and (num_malicious == 0 or 0 not in selected)
    with pytest.raises(ValueError, match="at least 4 \\* num_malicious \\+ 3"):
        bulyan(models[: 4 * num_malicious + 2], num_malicious)


def test_fedadam_bias_correction_is_on_by_default_and_differs_from_reddi():
    current = random_models(1, seed=1)[0]
    updates = [ClientUpdate("a", random_models(1, seed=2)[0], 1)]
    corrected = make_strategy("fedadam", {}).aggregate(1, current, updates)
    plain = make_strategy("fedadam", {"bias_correction": False}).aggregate(1, current, updates)
    # round 1: eta_t / eta = sqrt(1 - 0.99^2) / (1 - 0.9^2)
    ratio = np.sqrt(1 - 0.99 ** 2) / (1 - 0.9 ** 2)
    assert_layers([c - x for c, x in zip(corrected, current)], [ratio * (p - x) for p, x in zip(plain, current)],
                  rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name, options, reference", [
    ("fedavgm", {"server_learning_rate": 0.7, "server_momentum": 0.9},
     lambda w: flwr.FedAvgM(w, 0.7, 0.9)),
    ("fedavgm", {}, lambda w: flwr.FedAvgM(w, 1.0, 0.0)),
    ("fedadam", {"eta": 0.05, "beta_1": 0.8, "beta_2": 0.95, "tau": 1e-3},
     lambda w: flwr.FedOpt("adam", w, 0.05, 0.8, 0.95, 1e-3, bias_correction=True)),
    ("fedadam", {}, lambda w: flwr.FedOpt("adam", w, 0.1, 0.9, 0.99, 1e-9, bias_correction=True)),
    ("fedadam", {"bias_correction": False}, lambda w: flwr.FedOpt("adam", w, 0.1, 0.9, 0.99, 1e-9)),
    ("fedadam", {"eta": 0.05, "beta_1": 0.8, "bias_correction": False},
     lambda w: flwr.FedOpt("adam", w, 0.05, 0.8, 0.99, 1e-9)),
    ("fedyogi", {}, lambda w: flwr.FedOpt("yogi", w, 0.01, 0.9, 0.99, 1e-3)),
    ("fedadagrad", {"eta": 0.3}, lambda w: flwr.FedOpt("adagrad", w, 0.3, 0.0, 0.0, 1e-9)),
])
def test_server_optimizers_agree_with_flower_over_rounds(name, options, reference):
    strategy = make_strategy(name, options)
    current = random_models(1, seed=42)[0]
    flower = reference([layer.copy() for layer in current])
    for round_number in range(1, 6):
        models = random_models(4, seed=round_number)
        counts = [5, 1, 9, 3]
        updates = [ClientUpdate(f"c{i}", m, n) for i, (m, n) in enumerate(zip(models, counts))]
        current = strategy.aggregate(round_number, current, updates)
        expected = flower.aggregate_fit(round_number, list(zip(models, counts)))
        assert_layers(current, expected, rtol=1e-5, atol=1e-6)
        assert all(layer.dtype == np.float32 for layer in current)


@pytest.mark.parametrize("name, options, reference", [
    ("fedadam", {}, lambda w: flwr.FedOpt("adam", w, 0.1, 0.9, 0.99, 1e-9, bias_correction=True)),
    ("fedadam", {"bias_correction": False}, lambda w: flwr.FedOpt("adam", w, 0.1, 0.9, 0.99, 1e-9)),
    ("fedyogi", {}, lambda w: flwr.FedOpt("yogi", w, 0.01, 0.9, 0.99, 1e-3)),
    ("fedadagrad", {}, lambda w: flwr.FedOpt("adagrad", w, 0.1, 0.0, 0.0, 1e-9)),
])
@pytest.mark.parametrize("scale", [1.0, 1e20, 1e30])
def test_server_optimizers_keep_their_moments_in_float64_and_agree_with_flower_in_float64(name, options, reference, scale):
    """Changes of 1e20 are finite in float32, their squares are not: FedAdagrad's v was inf (the model never moved),
    FedYogi's nan from round 2 (a nan model). The moments are float64 now, the model stays float32, and every round
    is Flower's rule computed in float64, to float32 rounding; Flower's own float32 arithmetic goes wrong there."""
    strategy = make_strategy(name, options)
    current = random_models(1, seed=7)[0]
    flower64 = reference([layer.astype(np.float64) for layer in current])
    flower32 = reference([layer.copy() for layer in current])
    for round_number in range(1, 6):
        models = [[c + scale * layer for c, layer in zip(current, model)] for model in random_models(4, seed=round_number)]
        counts = [5, 1, 9, 3]
        updates = [ClientUpdate(f"c{i}", m, n) for i, (m, n) in enumerate(zip(models, counts))]
        current = strategy.aggregate(round_number, current, updates)
        expected = flower64.aggregate_fit(round_number, [([l.astype(np.float64) for l in m], n) for m, n in zip(models, counts)])
        assert all(layer.dtype == np.float32 and np.isfinite(layer).all() for layer in current)
        assert_layers(current, expected, rtol=1e-5, atol=1e-6)
        with np.errstate(over="ignore", invalid="ignore"):
            in_float32 = flower32.aggregate_fit(round_number, list(zip(models, counts)))
    assert all(moment.dtype == np.float64 for moment in strategy.state()["m"] + strategy.state()["v"])
    if scale >= 1e20 and name != "fedadam":  # FedAdam's (1 - beta_2) d d stays finite at 1e20, not at 1e30
        assert not all(np.allclose(a, e) for a, e in zip(in_float32, expected))


@pytest.mark.parametrize("tau", [1e-46, 1e-300, 5e-324])
def test_a_tau_below_float32s_range_leaves_a_coordinate_every_client_agrees_on_where_it_is(tau):
    """Any tau > 0 is allowed; one below float32's smallest (1.4e-45) was 0 in the float32 arithmetic, so where
    every client agreed with the global model (m = v = 0) the step was 0 / 0: a nan model. Float64 moments keep it."""
    current = [np.array([0.5, 1.0], np.float32)]
    updates = [ClientUpdate("a", [np.array([0.5, 2.0], np.float32)], 1)]
    for name in ("fedadam", "fedyogi", "fedadagrad"):
        new = make_strategy(name, {"tau": tau}).aggregate(1, current, updates)
        assert new[0][0] == 0.5 and 1.0 < new[0][1] < 1.2, name


def test_strategies_registry_and_option_errors():
    from fedless_nb.strategies import STRATEGIES, StrategyOptionError

    assert set(STRATEGIES) == {"fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedmedian",
                               "trimmed_mean", "krum", "bulyan", "scaffold", "fednova"}
    with pytest.raises(StrategyOptionError, match="^etta: not an option of fedadam"):
        make_strategy("fedadam", {"etta": 0.1})
    with pytest.raises(StrategyOptionError, match="^server_momentum: must be in"):
        make_strategy("fedavgm", {"server_momentum": 1.5})
    assert make_strategy("fedprox", {"proximal_mu": 0.1}).configure_round(1, ["a"]) == {"a": {"proximal_mu": 0.1}}


# cases bench/check_against_flower.py found against flwr 1.23 ------------------------------------

def tied_models(count, seed):
    """Small integer values: Krum scores and distances to the median tie in exact arithmetic."""
    rng = np.random.default_rng(seed)
    current = [rng.integers(-2, 3, (4, 3)).astype(np.float32), rng.integers(-2, 3, 3).astype(np.float32)]
    return [[c + rng.integers(-2, 3, c.shape).astype(np.float32) for c in current] for _ in range(count)]


@pytest.mark.parametrize("seed", range(12))
def test_krum_multi_krum_and_bulyan_break_exact_ties_as_flower(seed):
    # Flower squares the float32 norm of each difference, so scores equal in exact arithmetic differ by its
    # rounding and Multi-Krum keeps the models that rounding favours; Bulyan's argpartition picks among values
    # equally far from the median. fedless_nb used to keep exact float64 scores and a stable sort.
    clients = 7 + seed % 6
    models = tied_models(clients, seed)
    counts = [int(n) for n in np.random.default_rng(seed).integers(1, 50, clients)]
    results = list(zip(models, counts))
    for num_malicious in (0, 1, 2):
        for to_keep in (0, 2, 3, 5):
            assert_layers(krum(models, counts, num_malicious, to_keep)[0],
                          flwr.aggregate_krum(results, num_malicious, to_keep))
    for num_malicious in range((clients - 3) // 4 + 1):
        assert_layers(bulyan(models, num_malicious)[0], flwr.aggregate_bulyan(results, num_malicious))


def test_krum_scores_a_model_identical_to_others_like_flower():
    models = [layers([1.0, 2.0])] * 3 + [layers([1.0, 2.5]), layers([9.0, -3.0])]
    for to_keep in (0, 1, 2, 4):
        chosen, kept = krum(models, [3, 1, 2, 5, 1], num_malicious=1, to_keep=to_keep)
        assert_layers(chosen, flwr.aggregate_krum(list(zip(models, [3, 1, 2, 5, 1])), 1, to_keep))
    assert krum(models, [1] * 5, num_malicious=1)[1] == [0]


def test_multi_krum_refuses_to_keep_more_than_the_updates_it_trusts():
    # Deliberate: Multi-Krum averages m <= n - f models (Blanchard et al., El Mhamdi et al.); the round's quorum
    # (robust.Krum.fewest_updates) never asks more. Flower averages any m it is given, and from m > n its slice
    # argsort(scores)[::-1][n - to_keep:] starts at a negative index and keeps the to_keep - n best (README,
    # "Where fedless_nb and Flower differ"). fedless_nb averaged all n where m > n.
    models = [layers([0.0]), layers([1.0]), layers([5.0]), layers([1.5])]
    with pytest.raises(ValueError, match=r"^multi-krum keeps at most n - num_malicious = 3 of 4 updates, got to_keep 4$"):
        krum(models, [1, 1, 2, 1], num_malicious=1, to_keep=4)
    with pytest.raises(ValueError, match="got to_keep 5"):
        krum(models[:3], [1, 1, 2], num_malicious=0, to_keep=5)
    with pytest.raises(ValueError, match=r"^multi-krum keeps at most n - num_malicious = 1 of 1 update, got to_keep 2$"):
        krum(models[:1], [1], num_malicious=0, to_keep=2)
    assert make_strategy("krum", {"to_keep": 1}).too_few_updates(0).startswith(
        "fewer than multi-krum keeps to_keep 1 of the n - num_malicious updates it trusts, so it needs to_keep + "
        "num_malicious = 1 update a round;")
    assert sorted(krum(models, [1, 1, 2, 1], num_malicious=1, to_keep=3)[1]) == [0, 1, 3]  # not the outlier 5
    assert flwr.aggregate_krum(list(zip(models[:3], [1, 1, 2])), 0, 5)[0][0] == pytest.approx(0.5)  # Flower: 2 models


def test_plain_krum_on_fewer_updates_than_num_malicious_picks_as_flower():
    # Plain Krum (to_keep 0) scores each model by its max(1, n - f - 2) nearest, whatever n; the strategy's quorum,
    # not the kernel, asks 2f + 3. The Multi-Krum check (to_keep <= n - f) refused it where n < f: 'multi-krum keeps
    # at most n - num_malicious = -1 of 1 update, got to_keep 0' (the check against Flower stopped there).
    models = random_models(3, seed=5)
    for clients, num_malicious in ((1, 2), (1, 3), (2, 3), (3, 5)):
        results = list(zip(models[:clients], [1, 4, 2][:clients]))
        assert_layers(krum(models[:clients], [1, 4, 2][:clients], num_malicious)[0],
                      flwr.aggregate_krum(results, num_malicious, 0))


def test_fedopt_does_not_move_where_every_client_agrees_with_the_global_model():
    # Deliberate: fedless_nb sums in float64, so the mean of values equal to the global model is that value
    # and delta is exactly 0. Flower's float32 mean (in place or not) can leave a residue of an ulp, which
    # FedAdagrad's tau = 1e-9 turns into a step of +-eta.
    # (0.1 with counts 1 and 2 is such a value: Flower's mean is 0.10000001 either way.)
    current = [np.array([0.1, 1.7, 0.5], np.float32)]
    models = [[np.array([0.1, 1.7, 3.0], np.float32)], [np.array([0.1, 1.7, -1.0], np.float32)]]
    updates = [ClientUpdate(f"c{i}", m, n) for i, (m, n) in enumerate(zip(models, [1, 2]))]
    for name in ("fedadam", "fedyogi", "fedadagrad"):
        new = make_strategy(name).aggregate(1, current, updates)
        np.testing.assert_array_equal(new[0][:2], current[0][:2])
        assert new[0][2] != current[0][2]


def test_squared_distances_are_flowers_to_the_bit():
    from fedless_nb.strategies.aggregate import squared_distances

    models = random_models(6, seed=3) + tied_models(4, seed=1)
    np.testing.assert_array_equal(squared_distances(models), flwr._distances(models))


@pytest.mark.parametrize("name, options, message", [
    ("krum", {"num_malicious": True}, "^num_malicious: must be a finite number, got True"),
    ("fedadam", {"eta": 0.1, "beta_1": "a"}, "^beta_1: must be a finite number, got 'a'"),
    ("fedadam", {"eta": float("inf")}, "^eta: must be a finite number, got inf"),
    ("fedavgm", {"server_learning_rate": None}, "^server_learning_rate: must be a finite number, got None"),
    ("trimmed_mean", {"beta": 0.5}, r"^beta: must be in \[0, 0.5\), got 0.5"),
    ("krum", {"to_keep": 1.5}, "^to_keep: must be an int >= 0, got 1.5"),
    ("fedadam", {"eta_l": 0.1}, "^eta_l: not an option of fedadam"),
])
def test_invalid_strategy_options_name_themselves_in_one_line(name, options, message):
    from fedless_nb.strategies import StrategyOptionError

    with pytest.raises(StrategyOptionError, match=message) as raised:
        make_strategy(name, options)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("clients", [1, 2, 3, 4, 5, 10])
def test_trimmed_mean_and_median_are_flowers_to_the_bit(clients):
    # np.partition as Flower's _trim_mean: the same values summed in the same order; int(beta * n) may be 0
    for group in (random_models(clients, seed=clients), tied_models(clients, seed=clients)):
        results = [(m, 1) for m in group]
        for beta in (0.0, 0.1, 0.2, 0.25, 0.3, 0.49):
            for ours, theirs in zip(trimmed_mean(group, beta), flwr.aggregate_trimmed_avg(results, beta)):
                np.testing.assert_array_equal(ours, theirs)
        for ours, theirs in zip(median(group), flwr.aggregate_median(results)):
            np.testing.assert_array_equal(ours, theirs)


# integer layers (a Normalization layer's `count`, a custom counter) beside float ones --------------------------

INTEGER_SAFE = [("fedavg", {}), ("fedprox", {"proximal_mu": 0.1}), ("fedavgm", {"server_momentum": 0.9}),
                ("fedadam", {}), ("fedyogi", {}), ("fedadagrad", {}), ("fedmedian", {}), ("trimmed_mean", {}),
                ("krum", {}), ("krum", {"to_keep": 3}), ("bulyan", {})]


@pytest.mark.parametrize("counts", [[3, 3, 3], [1, 2, 10**6]])
@pytest.mark.parametrize("name, options", INTEGER_SAFE)
def test_an_integer_layer_every_client_agrees_on_comes_back_exactly(name, options, counts):
    """Multi-Krum's mean of three equal 7s of 3 examples each came back 6 (float arithmetic gave 6.9999999 and the
    cast truncated); the float layer is what the same strategy makes of the float layer alone."""
    count = np.array([7, 14, -7, 10**6 + 7], np.int64)
    floats = random_models(3, seed=4)
    current = [np.zeros((4, 3), np.float32), count]
    mixed = [ClientUpdate(f"c{i}", [m[0], count.copy()], n) for i, (m, n) in enumerate(zip(floats, counts))]
    alone = [ClientUpdate(f"c{i}", [m[0]], n) for i, (m, n) in enumerate(zip(floats, counts))]
    for round_number in (1, 2):  # the server optimizers' second step runs on their state
        result = make_strategy(name, options).aggregate(round_number, current, mixed)
        assert result[1].dtype == np.int64 and result[1].tolist() == count.tolist()
        np.testing.assert_array_equal(result[0], make_strategy(name, options).aggregate(round_number, current[:1], alone)[0])


def test_an_integer_layer_the_clients_disagree_on_gets_the_nearest_integer_of_the_exact_aggregate():
    """Hand computed: FedAvg of 4, 6, 7 with equal counts is 17/3 = 5.67 (the cast made it 5), the median of 4 and 7
    is 5.5 (numpy rounds half to even: 6), of -4 and -7 is -5.5 (-6); trimmed mean at beta 0 is the mean."""
    def aggregate(name, values, **options):
        updates = [ClientUpdate(f"c{i}", [np.array([v], np.int32)], 5) for i, v in enumerate(values)]
        (layer,) = make_strategy(name, options).aggregate(1, [np.array([0], np.int32)], updates)
        assert layer.dtype == np.int32
        return int(layer[0])

    assert aggregate("fedavg", [4, 6, 7]) == 6 and aggregate("fedavg", [-4, -6, -7]) == -6
    assert aggregate("trimmed_mean", [4, 6, 7], beta=0.0) == 6
    assert aggregate("fedmedian", [4, 7]) == 6 and aggregate("fedmedian", [-4, -7]) == -6
    assert aggregate("krum", [4, 6, 7], to_keep=3) == 6


def test_median_trimmed_mean_and_bulyan_stay_finite_where_a_float32_sum_overflows():
    """Values near float32's largest are finite, and so is any mean of them; the median's two middle values, the
    trimmed mean's and Bulyan's kept values summed in float32 (as Flower sums them) overflowed to inf, which the
    next round turns into nan. Elsewhere the sums are still Flower's, to the bit (the tests above)."""
    big = np.float32(3e38)
    models = [layers([big, -big, float(i)]) for i in range(5)]
    expected = layers([big, -big, 2.0])
    results = [(m, 1) for m in models]
    with np.errstate(over="ignore"):
        assert np.isinf(flwr.aggregate_median(results[:4])[0][0]) and np.isinf(flwr.aggregate_trimmed_avg(results, 0.2)[0][0])
    assert_layers(median(models[:4]), layers([big, -big, 1.5]))
    assert_layers(trimmed_mean(models, 0.2), expected)
    assert_layers(trimmed_mean(models, 0.0), expected)
    assert_layers(bulyan(models, 0)[0], expected)
    for name, options in (("fedmedian", {}), ("trimmed_mean", {"beta": 0.2}), ("bulyan", {})):
        updates = [ClientUpdate(f"c{i}", m, 1) for i, m in enumerate(models)]
        assert all(np.isfinite(layer).all() for layer in make_strategy(name, options).aggregate(1, models[0], updates))


# rounds with fewer updates than a robust rule needs ------------------------------------------------------------

@pytest.mark.parametrize("beta", [0.0, 0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 1 / 3, 0.45, 0.49])
def test_a_trimmed_mean_round_is_below_its_quorum_exactly_where_it_would_trim_nothing(beta):
    strategy = make_strategy("trimmed_mean", {"beta": beta})
    for count in range(1, 250):
        assert (strategy.too_few_updates(count) is None) == (beta == 0 or int(beta * count) >= 1), count


@pytest.mark.parametrize("beta", [1e-9, 1 / 3e15, 2.0**-53, 1e-300, 5e-324])
def test_a_tiny_trimmed_mean_beta_needs_its_exact_count(beta):
    """The count was searched from 1 / beta in steps of 1, forever where that is past float64's exact integers."""
    fewest = make_strategy("trimmed_mean", {"beta": beta}).fewest_updates().count
    if beta * 2**53 < 1:  # trims nothing of any count a run could have
        assert fewest == 2**53 and int(beta * fewest) == 0
    else:
        assert int(beta * fewest) >= 1 and int(beta * (fewest - 1)) == 0


@pytest.mark.parametrize("num_malicious", [0, 1, 2, 5])
@pytest.mark.parametrize("to_keep", [0, 1, 3, 6])
def test_krum_and_bulyan_rounds_are_below_their_quorum_where_their_guarantee_needs_more(num_malicious, to_keep):
    """Blanchard et al. prove Krum (and Multi-Krum) tolerates f among n >= 2f + 3, Multi-Krum keeps m <= n - f;
    Bulyan needs n >= 4f + 3."""
    krum_rule, bulyan_rule = make_strategy("krum", {"num_malicious": num_malicious, "to_keep": to_keep}), \
        make_strategy("bulyan", {"num_malicious": num_malicious})
    krum_needs = max(2 * num_malicious + 3 if num_malicious else 0, to_keep + num_malicious if to_keep else 0)
    for count in range(1, 30):
        assert (krum_rule.too_few_updates(count) is None) == (count >= krum_needs)
        assert (bulyan_rule.too_few_updates(count) is None) == (count >= 4 * num_malicious + 3)
    if num_malicious and to_keep < num_malicious + 3:
        assert krum_rule.too_few_updates(2 * num_malicious + 2) == (
            f"fewer than krum needs 2 * num_malicious + 3 = {2 * num_malicious + 3} updates a round to tolerate "
            f"num_malicious {num_malicious}; raise clients_per_round or round_repeats, lower strategy.options.num_malicious")
    if to_keep >= num_malicious + 3 or (to_keep and not num_malicious):
        assert krum_rule.too_few_updates(krum_needs - 1) == (
            f"fewer than multi-krum keeps to_keep {to_keep} of the n - num_malicious updates it trusts, so it needs "
            f"to_keep + num_malicious = {'1 update' if krum_needs == 1 else f'{krum_needs} updates'} a round; raise "
            "clients_per_round or round_repeats, "
            "lower strategy.options.to_keep" + (" or num_malicious" if num_malicious else ""))


def test_multi_krum_aggregates_the_updates_its_quorum_lets_through():
    """At its quorum, n = to_keep + f, it keeps the n - f best; Flower's aggregate_krum gives the same."""
    models, counts = random_models(6, seed=3), [3, 1, 4, 1, 5, 9]
    rule = make_strategy("krum", {"num_malicious": 1, "to_keep": 5})
    assert rule.too_few_updates(6) is None
    updates = [ClientUpdate(f"c{i}", m, n) for i, (m, n) in enumerate(zip(models, counts))]
    assert_layers(rule.aggregate(1, models[0], updates), flwr.aggregate_krum(list(zip(models, counts)), 1, 5))
    assert len(rule.selected) == 5


# small integer and float16 layers --------------------------------------------------------------------------------

EVERY_RULE = [("fedavg", {}), ("fednova", {}), ("fedavgm", {"server_learning_rate": 0.5}),
              ("fedavgm", {"server_momentum": 0.5}), ("fedadam", {}), ("fedyogi", {}), ("fedadagrad", {}),
              ("fedmedian", {}), ("trimmed_mean", {}), ("krum", {}), ("krum", {"to_keep": 3}), ("bulyan", {}),
              ("scaffold", {"server_learning_rate": 0.5})]


def bound(name, options, dtype, tmp_path):
    from fedless_nb.store import LocalStore
    from fedless_nb.strategies import RunContext

    strategy = make_strategy(name, options)
    strategy.bind(RunContext(f"run-{dtype}", LocalStore(tmp_path), {"epochs": 1, "batch_size": 8, "learning_rate": 0.1},
                             5, 5))
    return strategy


@pytest.mark.parametrize("dtype, low, high", [("uint8", 0, 255), ("int8", -100, 100), ("int16", -20000, 20000),
                                             ("float16", -30000, 30000)])
@pytest.mark.parametrize("name, options", EVERY_RULE)
def test_a_small_integer_or_float16_layer_is_aggregated_as_in_float64(tmp_path, name, options, dtype, low, high):
    """Each rule on a layer of uint8, int8, int16 or float16 gives what it gives on the same values in float64, in
    the layer's dtype. The differences were taken in the layer's dtype, where they wrap or overflow: FedAvgM's and
    SCAFFOLD's uint8 3 - 5 was 254 (the model jumped across the range), and Krum scored float16 models by norms
    that overflowed to inf, so it took the first model (FedBuff and central DP share the subtraction)."""
    rng = np.random.default_rng(3)
    start = rng.integers(low, high, 6)
    rounds = [[rng.integers(low, high, 6) for _ in range(5)] for _ in range(2)]
    results, strategies = {}, {}
    for as_type in (dtype, "float64"):
        strategies[as_type] = strategy = bound(name, options, as_type, tmp_path / as_type)
        current = strategy.initialize([start.astype(as_type)])
        for round_number, models in enumerate(rounds, 1):
            updates = [ClientUpdate(f"c{i}", [m.astype(as_type)], 5 + i, steps=1) for i, m in enumerate(models)]
            strategy.configure_round(round_number, [u.client_id for u in updates])
            current = strategy.aggregate(round_number, current, updates)
        results[as_type] = current[0]
    assert results[dtype].dtype == np.dtype(dtype)
    tolerance = {"rtol": 2e-3, "atol": 1} if dtype == "float16" else {"rtol": 0, "atol": 2}  # round 2 starts rounded
    np.testing.assert_allclose(results[dtype].astype(np.float64), results["float64"], **tolerance)
    if name == "scaffold":  # its server control variate c, in float16 up to 30000 / (1 step * 0.1): inf, then nan
        (control,), (expected,) = strategies[dtype].control, strategies["float64"].control
        assert np.isfinite(control).all() and control.dtype == np.float64
        np.testing.assert_allclose(control, expected, rtol=2e-3, atol=20)


def test_scaffolds_server_control_variate_stays_the_mean_of_the_clients_in_float64(tmp_path):
    """c = (1/N) sum c_i holds exactly in SCAFFOLD (each round c moves by the mean change of the c_i over N). The c_i
    were stored in float32 while c was float64, so each round's rounding of the c_i drifted c away from their mean
    (2e-8 after ten rounds of float32 models); they now stay float64, and the corrections still travel in float32."""
    from fedless_nb.store import decode_arrays
    from fedless_nb.store.keys import correction_key

    rng = np.random.default_rng(7)
    strategy = bound("scaffold", {}, "float32", tmp_path)  # 5 clients
    current = strategy.initialize([rng.standard_normal(8).astype(np.float32)])
    clients = [f"c{i}" for i in range(5)]
    for round_number in range(1, 11):
        chosen = [clients[i] for i in rng.choice(5, 3, replace=False)]
        strategy.configure_round(round_number, chosen)
        updates = [ClientUpdate(cid, [current[0] + rng.standard_normal(8).astype(np.float32) / 3], 10, steps=3)
                   for cid in chosen]
        current = strategy.aggregate(round_number, current, updates)
        mean = np.mean([strategy._client_control(cid)[0] for cid in clients], axis=0)
        np.testing.assert_allclose(strategy.control[0], mean, rtol=1e-13, atol=1e-15)
    (sent,) = decode_arrays(strategy.context.store.get(correction_key(strategy.context.run_id, 10, chosen[0])))
    assert sent.dtype == np.float32


def test_an_integer_layer_past_its_range_gets_the_nearest_end_of_it():
    """FedAvgM's momentum can overshoot a counter's range; a cast wrapped int8's -144 to 112."""
    from fedless_nb.reduction import in_dtype

    assert in_dtype(np.array([-1e30, -144.4, -2.5, 3.5, 1e30]), np.int8).tolist() == [-128, -128, -2, 4, 127]
    assert in_dtype(np.array([-3.0, 300.0]), np.uint8).tolist() == [0, 255]
    assert in_dtype(np.array([-1e30, 1e30]), np.int64).tolist() == [np.iinfo(np.int64).min, 2**63 - 1024]
    momentum = make_strategy("fedavgm", {"server_momentum": 0.9})
    current = [np.array([100], np.int8)]
    for round_number in (1, 2, 3):
        current = momentum.aggregate(round_number, current, [ClientUpdate("a", [np.array([-100], np.int8)], 1)])
    assert current[0].tolist() == [-128]


def test_krum_compares_small_integer_and_float16_models_in_float32_and_float32_ones_as_flower():
    models = [layers([60000.0, 0.0]), layers([59000.0, 1.0]), layers([-60000.0, 0.0]), layers([59500.0, 0.0])]
    halves = [[layer.astype(np.float16) for layer in model] for model in models]
    assert krum(halves, [1] * 4, num_malicious=0)[1] == krum(models, [1] * 4, num_malicious=0)[1] == [3]
    small = [[np.array([v], np.uint8)] for v in (3, 5, 250, 4)]
    assert krum(small, [1] * 4, num_malicious=0)[1] == [3]


# float64 and mixed-dtype models (a Keras float64 policy, a float64 layer beside float32 ones) ------------------

def mixed_models(count, seed):
    """A float64 matrix, a float32 vector and a float64 scalar (0-d) layer, of very different scales."""
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal((3, 2)) * 1e12, rng.standard_normal(4).astype(np.float32), np.float64(rng.standard_normal() * 1e-9)]
            for _ in range(count)]


def assert_dtypes_and_values(actual, expected, model):
    """Each layer in the model's dtype and shape, and within that dtype's rounding of Flower's value."""
    assert [(a.dtype, a.shape) for a in actual] == [(np.asarray(m).dtype, np.shape(m)) for m in model]
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, **(F32 if a.dtype == np.float32 else {"rtol": 1e-12, "atol": 0}))


@pytest.mark.parametrize("clients", [1, 3, 8])
def test_float64_and_mixed_dtype_models_keep_each_layers_dtype_and_agree_with_flower(clients):
    models, counts = mixed_models(clients, seed=clients), list(range(1, clients + 1))
    results = list(zip(models, counts))
    assert_dtypes_and_values(fedavg(models, counts), flwr.aggregate(results), models[0])
    assert_dtypes_and_values(median(models), flwr.aggregate_median(results), models[0])
    assert_dtypes_and_values(trimmed_mean(models, 0.3), flwr.aggregate_trimmed_avg(results, 0.3), models[0])
    for num_malicious in range(clients):
        assert_dtypes_and_values(krum(models, counts, num_malicious)[0], flwr.aggregate_krum(results, num_malicious, 0),
                                 models[0])
        to_keep = clients - num_malicious
        assert_dtypes_and_values(krum(models, counts, num_malicious, to_keep)[0],
                                 flwr.aggregate_krum(results, num_malicious, to_keep), models[0])
    for num_malicious in range((clients - 3) // 4 + 1 if clients >= 3 else 0):
        assert_dtypes_and_values(bulyan(models, num_malicious)[0], flwr.aggregate_bulyan(results, num_malicious), models[0])


@pytest.mark.parametrize("name, reference", [
    ("fedavgm", lambda w: flwr.FedAvgM(w, 1.0, 0.0)),
    ("fedadam", lambda w: flwr.FedOpt("adam", w, 0.1, 0.9, 0.99, 1e-9, bias_correction=True)),
    ("fedyogi", lambda w: flwr.FedOpt("yogi", w, 0.01, 0.9, 0.99, 1e-3)),
    ("fedadagrad", lambda w: flwr.FedOpt("adagrad", w, 0.1, 0.0, 0.0, 1e-9)),
])
def test_server_optimizers_on_a_float64_model_over_changing_clients_are_flowers_in_float64(name, reference):
    """Each round a different number of clients (1 to 5) with different sample counts: the moments carry over
    however many answered, and a float64 model stays float64, to float64 rounding of Flower's rule."""
    strategy = make_strategy(name, {})
    rng = np.random.default_rng(3)
    current = [rng.standard_normal((4, 3)), rng.standard_normal(3)]
    flower = reference([layer.copy() for layer in current])
    for round_number, clients in enumerate([1, 5, 2, 4, 1, 3, 5, 2], start=1):
        models = [[c + rng.standard_normal(c.shape) * 0.1 for c in current] for _ in range(clients)]
        counts = [int(n) for n in rng.integers(1, 100, clients)]
        current = strategy.aggregate(round_number, current, [ClientUpdate(f"c{i}", m, n)
                                                             for i, (m, n) in enumerate(zip(models, counts))])
        expected = flower.aggregate_fit(round_number, list(zip(models, counts)))
        assert all(layer.dtype == np.float64 for layer in current)
        assert_layers(current, expected, rtol=1e-12, atol=1e-14)
