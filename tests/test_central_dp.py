"""Central (client-level) DP: clipping, noise, adaptive clipping and its accountant, by hand."""

import math

import numpy as np
import pytest

from fedless_nb.privacy.accounting import DpRound, NoPrivacyWarning, epsilon
from fedless_nb.strategies import ClientUpdate, FedAvg, RunContext, make_strategy
from fedless_nb.strategies.central_dp import (
    CentralDP, adapted_clip_norm, clipped_noised_mean, update_noise_multiplier,
)


def test_clipped_mean_without_noise_by_hand():
    current = [np.array([0.0, 0.0], np.float32)]
    models = [[np.array([3.0, 4.0], np.float32)], [np.array([0.3, 0.4], np.float32)]]
    # norms 5 and 0.5; clip 1: (0.6, 0.8) + (0.3, 0.4) = (0.9, 1.2), divided by 3 expected clients
    mean, norms = clipped_noised_mean(current, models, 1.0, 0.0, 3, np.random.default_rng(0))
    np.testing.assert_allclose(mean[0], [0.3, 0.4], rtol=1e-6)
    assert norms == pytest.approx([5.0, 0.5])


def test_noise_has_the_stated_standard_deviation():
    current = [np.zeros(20000, np.float32)]
    mean, _ = clipped_noised_mean(current, [current], 2.0, 0.5 * 2.0, 4, np.random.default_rng(1))
    assert np.std(mean[0]) == pytest.approx(0.25, rel=0.03)  # z * C / expected clients = 1.0 / 4


def test_adaptive_clip_norm_moves_towards_the_target_quantile():
    rng = np.random.default_rng(0)
    # all norms below C: fraction 1 > 0.5, C shrinks by exp(-0.2 * 0.5)
    assert adapted_clip_norm(1.0, [0.1, 0.2], 0.5, 0.2, 0.0, 2, rng) == pytest.approx(np.exp(-0.1))
    # none below C: C grows by exp(0.2 * 0.5)
    assert adapted_clip_norm(1.0, [3.0, 4.0], 0.5, 0.2, 0.0, 2, rng) == pytest.approx(np.exp(0.1))
    # Andrew et al.: z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2
    assert update_noise_multiplier(1.0, 1.0) == pytest.approx((1 - 0.25) ** -0.5)
    with pytest.raises(ValueError, match="clipped_count_stddev"):
        update_noise_multiplier(1.0, 0.4)


def test_wrapper_feeds_the_noised_average_to_the_inner_strategy_and_accounts_per_round(tmp_path):
    strategy = CentralDP(make_strategy("fedavgm", {"server_learning_rate": 1.0}), noise_multiplier=0.0, clip_norm=1.0)
    with pytest.warns(NoPrivacyWarning):  # noise 0 on purpose: the clipping is what is checked
        strategy.bind(RunContext("r", None, {}, clients=10, clients_per_round=2))
    current = strategy.initialize([np.zeros(2, np.float32)])
    updates = [ClientUpdate("a", [np.array([3.0, 4.0], np.float32)], 100), ClientUpdate("b", [np.zeros(2, np.float32)], 1)]
    new = strategy.aggregate(1, current, updates)
    np.testing.assert_allclose(new[0], [0.3, 0.4], rtol=1e-6)  # (0.6, 0.8) / 2: unweighted, clipped
    metrics = strategy.round_metrics()
    assert metrics["central_clip_norm"] == 1.0 and metrics["central_unclipped_fraction"] == 0.5

    noisy = CentralDP(FedAvg(), noise_multiplier=1.1, clip_norm=1.0, delta=1e-5)
    noisy.bind(RunContext("r", None, {}, clients=10, clients_per_round=2))
    for round_number in range(1, 4):
        noisy.aggregate(round_number, current, updates)
    assert noisy.epsilon() == pytest.approx(epsilon([DpRound(3, 0.2, 1.1)], 1e-5))
    report = noisy.report()
    assert report.granularity == "client-level" and report.rounds == 3 and report.sampling_rate == 0.2
    assert "client-level DP" in str(report)


def test_adaptive_clipping_count_matches_tensorflow_privacys_quantile_estimator():
    """The privacy of Theorem 1 (Andrew et al.) rests on each update moving the noised count by at most 1/2
    and on a public denominator: tensorflow-privacy's QuantileEstimatorQuery, run here on the same records,
    moves the clip norm exactly as adapted_clip_norm does (noise 0, so both are deterministic)."""
    import tensorflow as tf
    from tensorflow_privacy.privacy.dp_query.quantile_estimator_query import QuantileEstimatorQuery

    norms, expected_clients = [0.2, 0.7, 3.0], 5  # a Poisson round that drew 3 clients, 5 expected
    query = QuantileEstimatorQuery(initial_estimate=1.0, target_quantile=0.4, learning_rate=0.2,
                                   below_estimate_stddev=0.0, expected_num_records=expected_clients,
                                   geometric_update=True)
    state = query.initial_global_state()
    params = query.derive_sample_params(state)
    sample = query.initial_sample_state()
    for norm in norms:
        sample = query.accumulate_record(params, sample, tf.constant(norm))
    estimate, _, _ = query.get_noised_result(sample, state)
    ours = adapted_clip_norm(1.0, norms, 0.4, 0.2, 0.0, expected_clients, np.random.default_rng(0))
    assert ours == pytest.approx(float(estimate), rel=1e-6)


def test_adaptive_wrapper_defaults_a_count_noise_that_leaves_the_updates_noise():
    strategy = CentralDP(FedAvg(), noise_multiplier=1.0, clip_norm=0.1, adaptive=True)
    strategy.bind(RunContext("r", None, {}, clients=10, clients_per_round=5))
    assert strategy.clipped_count_stddev == 1.0 and strategy.update_noise_multiplier > 1.0
    before = strategy.clip_norm
    strategy.aggregate(1, [np.zeros(2, np.float32)], [ClientUpdate("a", [np.ones(2, np.float32)], 1)])
    assert strategy.clip_norm != before


# the sampling that runs is the sampling accounted ------------------------------------------------

def test_poisson_client_selection_has_binomial_round_sizes_and_is_seeded_per_round():
    from scipy import stats

    from fedless_nb.rounds.selection import PoissonSelection

    clients = [f"c{i}" for i in range(30)]
    selection = PoissonSelection(0.2, seed=5)
    sizes = np.array([len(selection.select(r, clients, 6)) for r in range(1, 3001)])
    assert selection.select(7, clients, 6) == selection.select(7, clients, 6)
    assert (sizes == 0).any(), "an empty round happens (0.8^30 per round)"
    observed = np.bincount(sizes, minlength=31)
    expected = stats.binom.pmf(np.arange(31), 30, 0.2) * len(sizes)
    keep = expected >= 5
    merged = np.append(observed[keep], observed[~keep].sum()), np.append(expected[keep], expected[~keep].sum())
    assert stats.chisquare(merged[0], merged[1] * merged[0].sum() / merged[1].sum()).pvalue > 0.01


@pytest.mark.parametrize("sampling", ["poisson", "fixed"])
def test_client_level_epsilon_agrees_with_dp_accounting_for_the_selection_that_runs(sampling):
    import dp_accounting

    strategy = CentralDP(FedAvg(), noise_multiplier=1.3, clip_norm=1.0, delta=1e-5, sampling=sampling)
    strategy.bind(RunContext("r", None, {}, clients=50, clients_per_round=5))
    current = [np.zeros(2, np.float32)]
    for round_number in range(1, 5):
        strategy.aggregate(round_number, current, [ClientUpdate("a", [np.ones(2, np.float32)], 1)])
    if sampling == "poisson":
        event = dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.3))
        relation = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    else:  # replacing one client's update moves the clipped sum by up to 2C
        event = dp_accounting.SampledWithoutReplacementDpEvent(50, 5, dp_accounting.GaussianDpEvent(0.65))
        relation = dp_accounting.NeighboringRelation.REPLACE_ONE
    accountant = dp_accounting.rdp.RdpAccountant(neighboring_relation=relation)
    expected = accountant.compose(dp_accounting.SelfComposedDpEvent(event, 4)).get_epsilon(1e-5)
    assert strategy.epsilon() == pytest.approx(expected, rel=1e-9)
    report = strategy.report()
    assert report.unit == "client" and report.sampling == sampling and report.accountant == "rdp"
    assert report.adjacency == ("add-or-remove-one" if sampling == "poisson" else "replace-one")
    text = str(report)
    assert "unit: one client" in text and report.adjacency in text

    restored = CentralDP(FedAvg(), noise_multiplier=1.3, clip_norm=1.0, delta=1e-5, sampling=sampling)
    restored.bind(RunContext("r", None, {}, clients=50, clients_per_round=5))
    restored.load_state(strategy.state())
    assert restored.epsilon() == strategy.epsilon()


def test_an_empty_poisson_round_still_adds_its_noise_and_is_accounted():
    strategy = CentralDP(FedAvg(), noise_multiplier=1.0, clip_norm=1.0)
    strategy.bind(RunContext("r", None, {}, clients=10, clients_per_round=2))
    current = [np.zeros(1000, np.float32)]
    new = strategy.aggregate(1, current, [])
    assert np.std(new[0]) == pytest.approx(1.0 / 2, rel=0.1) and strategy.rounds == 1 and strategy.epsilon() > 0


# against Flower's DifferentialPrivacyServerSide{Fixed,Adaptive}Clipping (tests/flower_reference.py) -------

class UnitNoise(np.random.Generator):
    """Normal draws of exactly one standard deviation: the noise's std compared as a number."""

    def normal(self, loc=0.0, scale=1.0, size=None):
        return loc + scale if size is None else loc + scale * np.ones(size)


def models_around(current, count, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    return [[(c + rng.standard_normal(c.shape) * scale).astype(np.float32) for c in current] for _ in range(count)]


@pytest.mark.parametrize("clients, noise_multiplier, clip_norm", [(1, 0.0, 1.0), (3, 1.3, 0.5), (4, 0.7, 100.0),
                                                                   (10, 2.0, 1e-3)])
@pytest.mark.filterwarnings("ignore::fedless_nb.privacy.accounting.NoPrivacyWarning")  # noise 0: Flower's clipping alone
def test_fixed_clipping_agrees_with_flower_for_equal_counts(monkeypatch, clients, noise_multiplier, clip_norm):
    import flower_reference as flwr

    current = [np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), np.zeros(3, np.float32)]
    models = models_around(current, clients, seed=clients)
    monkeypatch.setattr(np.random, "default_rng", lambda *args: UnitNoise(np.random.PCG64(0)))
    strategy = CentralDP(FedAvg(), noise_multiplier=noise_multiplier, clip_norm=clip_norm)
    strategy.bind(RunContext("r", None, {}, clients=2 * clients, clients_per_round=clients))
    ours = strategy.aggregate(1, current, [ClientUpdate(f"c{i}", m, 10) for i, m in enumerate(models)])
    theirs = flwr.dp_fixed_clipping_fedavg(current, [(m, 10) for m in models], noise_multiplier, clip_norm, clients,
                                          lambda std, shape: std * np.ones(shape))
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_adaptive_clip_norm_step_is_flowers_with_the_unclipped_count():
    # Deliberate: Flower counts the clipped updates against target_clipped_quantile with Andrew et al.'s sign,
    # which moves C away from the target; fedless_nb counts the unclipped ones (Andrew et al., TF Privacy).
    # Without count noise the two log-steps are exact negatives at target_clipped_quantile = 1 - target_quantile.
    import flower_reference as flwr

    current = [np.zeros((4, 3), np.float32), np.zeros(3, np.float32)]
    rng = np.random.default_rng(0)
    for clients, target, learning_rate, clip_norm in ((1, 0.5, 0.2, 1.0), (5, 0.3, 0.5, 3.0), (10, 0.9, 0.05, 2.5)):
        models = models_around(current, clients, seed=clients, scale=0.8)
        norms = [float(np.sqrt(sum(np.sum(np.square(layer, dtype=np.float64)) for layer in m))) for m in models]
        ours = adapted_clip_norm(clip_norm, norms, target, learning_rate, 0.0, clients, rng)  # every expected client came
        theirs = flwr.adaptive_clip_norm_update(current, models, clip_norm, 1 - target, learning_rate, 0.0)
        assert np.log(ours / clip_norm) == pytest.approx(-np.log(theirs / clip_norm), abs=1e-12)
        # the direction Andrew et al. want: more unclipped than the target shrinks C
        unclipped = sum(n <= clip_norm for n in norms) / clients
        assert (ours < clip_norm) == (unclipped > target) or unclipped == target


@pytest.mark.parametrize("noise_multiplier", [0.1, 0.5, 1.0, 2.0])
def test_update_noise_multiplier_is_flowers(noise_multiplier):
    import flower_reference as flwr

    for count_stddev in (noise_multiplier / 2 + 0.01, noise_multiplier, 3 * noise_multiplier, 10.0):
        _, theirs = flwr.compute_adaptive_noise_params(noise_multiplier, 10, count_stddev)
        assert update_noise_multiplier(noise_multiplier, count_stddev) == pytest.approx(theirs, rel=1e-12)


@pytest.mark.parametrize("clients_per_round, noise_multiplier, expected", [(40, 1.0, 2.0), (10, 1.0, 1.0),
                                                                           (30, 2.0, 2.0), (10, 0.0, 0.0)])
@pytest.mark.filterwarnings("ignore::fedless_nb.privacy.accounting.NoPrivacyWarning")  # noise 0: no count noise either
def test_default_count_noise_is_flowers_where_flowers_leaves_the_updates_noise(clients_per_round, noise_multiplier,
                                                                              expected):
    # m / 20 (Andrew et al., Flower) when that is at least z; z where Flower would raise (z >= m / 10) or
    # inflate the updates' noise multiplier without bound; and, as Flower, no count noise without privacy.
    strategy = CentralDP(FedAvg(), noise_multiplier=noise_multiplier, clip_norm=1.0, adaptive=True)
    strategy.bind(RunContext("r", None, {}, clients=2 * clients_per_round, clients_per_round=clients_per_round))
    assert strategy.clipped_count_stddev == expected
    if noise_multiplier == 0 or clients_per_round / 20 >= noise_multiplier:
        import flower_reference as flwr

        assert flwr.compute_adaptive_noise_params(noise_multiplier, clients_per_round, None)[0] == expected


def test_a_zero_update_and_a_0d_layer_are_clipped():
    # Flower raises ZeroDivisionError on the first and leaves the second unclipped (`array *= factor` rebinds
    # a 0-d layer's numpy scalar); fedless_nb clips the whole update.
    current = [np.zeros(3, np.float32), np.asarray(0.0, np.float32)]
    unchanged = [layer.copy() for layer in current]
    moved = [np.ones(3, np.float32), np.asarray(10.0, np.float32)]
    strategy = CentralDP(FedAvg(), noise_multiplier=0.0, clip_norm=1.0)
    with pytest.warns(NoPrivacyWarning):  # noise 0 on purpose: the clipping is what is checked
        strategy.bind(RunContext("r", None, {}, clients=4, clients_per_round=2))
    new = strategy.aggregate(1, current, [ClientUpdate("a", unchanged, 1), ClientUpdate("b", moved, 1)])
    scale = 1.0 / np.sqrt(103.0) / 2  # clipped to norm 1, over 2 expected clients
    np.testing.assert_allclose(new[0], np.full(3, scale), rtol=1e-6)
    assert float(new[1]) == pytest.approx(10 * scale, rel=1e-6)


def test_central_noise_cannot_be_drawn_again_from_the_runs_seed():
    """Two runs of one config (one seed) aggregating the same updates get independent noise of std z C / m:
    noise drawn from the seed in the config could be drawn again by anyone holding it and subtracted."""
    current = [np.zeros(4000, np.float32)]
    models = [[np.full(4000, 0.1, np.float32)] for _ in range(2)]
    results = []
    for _ in range(2):
        strategy = CentralDP(FedAvg(), noise_multiplier=1.0, clip_norm=1.0)
        strategy.bind(RunContext("r", None, {}, clients=4, clients_per_round=2))
        results.append(strategy.aggregate(1, current, [ClientUpdate(f"c{i}", m, 10) for i, m in enumerate(models)])[0])
    assert np.std(results[0] - results[1]) == pytest.approx(math.sqrt(2) * 1.0 * 1.0 / 2, rel=0.05)


@pytest.mark.parametrize("sampling", ["poisson", "fixed"])
def test_which_clients_a_round_takes_cannot_be_drawn_again_from_the_runs_seed(sampling):
    """Client-level epsilon counts on amplification by sampling: a selection that the config's seed repeats would
    tell anyone holding the config which clients each round took. Without central DP, a seed repeats its run."""
    from fedless_nb.experiment import ExperimentConfig
    from fedless_nb.runner import _selection

    clients = [f"client-{i:04d}" for i in range(200)]
    central = {"noise_multiplier": 1.0, "clip_norm": 1.0, "sampling": sampling}
    for dp, repeats in ((central, False), (None, True)):
        config = ExperimentConfig.from_dict({"clients": 200, "clients_per_round": 20, "seed": 3, "central_dp": dp})
        rounds = [[_selection(config, None).select(r, clients, 20) for r in (1, 2)] for _ in range(2)]
        assert (rounds[0] == rounds[1]) == repeats


@pytest.mark.parametrize("sampling", ["fixed", "poisson"])
def test_a_privacy_budget_leaves_each_client_the_rate_the_client_level_accountant_assumes(sampling):
    """Two of four clients are out of their example-level budget. Central DP accounts each round as q = 2 / 4 of the
    clients: drawing the round's 2 among the 2 left took both every round (q = 1), so the stated client-level epsilon
    did not hold; now the round draws from all four and a drawn client out of budget sits it out."""
    from collections import Counter

    from fedless_nb.experiment import ExperimentConfig
    from fedless_nb.privacy.accounting import DpRound, ExampleLevelAccountant, epsilon
    from fedless_nb.runner import _selection

    clients = [f"client-{i:04d}" for i in range(4)]
    facts = {"steps": 20, "sampling_rate": 0.1, "batch_size": 4, "num_examples": 40, "noise_multiplier": 1.0,
             "l2_norm_clip": 1.0, "microbatch_size": 1, "sampling": "poisson"}
    target = epsilon([DpRound(20, 0.1, 1.0)], 1e-5) * 1.01  # one round fits, two do not
    accountant = ExampleLevelAccountant(1e-5, target_epsilon=target, expected_facts={c: facts for c in clients})
    for client_id in clients[:2]:
        accountant.charge(client_id)
    config = ExperimentConfig.from_dict({
        "clients": 4, "clients_per_round": 2,
        "central_dp": {"noise_multiplier": 1.0, "clip_norm": 1.0, "sampling": sampling},
        "train": {"epochs": 1, "batch_size": 4, "dp": {"noise_multiplier": 1.0, "target_epsilon": target}}})
    selection = _selection(config, accountant)
    taken = Counter(client_id for round_number in range(1, 401) for client_id in selection.select(round_number, clients, 2))
    assert taken[clients[0]] == taken[clients[1]] == 0
    for client_id in clients[2:]:  # binomial(400, 1/2): 200 +- 10; the old draw took each in all 400
        assert 140 < taken[client_id] < 260
    accountant.close()


def test_an_adaptive_report_names_the_clip_norm_its_last_round_used():
    """The report agrees with the history's clip-norm column: the last round's C, not the next round's."""
    strategy = CentralDP(FedAvg(), noise_multiplier=0.0, clip_norm=1.0, adaptive=True)
    with pytest.warns(NoPrivacyWarning):  # noise 0 on purpose: the clip norm's steps are what is checked
        strategy.bind(RunContext("r", None, {}, clients=4, clients_per_round=2))
    current = strategy.initialize([np.zeros(2, np.float32)])
    small = [ClientUpdate(name, [np.array([0.03, 0.04], np.float32)], 10) for name in ("a", "b")]
    for round_number in (1, 2):
        strategy.aggregate(round_number, current, small)
    report, last_round = strategy.report(), strategy.round_metrics()["central_clip_norm"]
    assert last_round == pytest.approx(math.exp(-0.1)) and strategy.clip_norm == pytest.approx(math.exp(-0.2))
    assert report.clip_norm == last_round
    assert f"clip norm {last_round:g} in the last round (adaptive)" in str(report)
    fixed = CentralDP(FedAvg(), noise_multiplier=1.0, clip_norm=1.0)
    fixed.bind(RunContext("r", None, {}, clients=4, clients_per_round=2))
    assert "clip norm 1, " in str(fixed.report())


@pytest.mark.parametrize("sampling", ["poisson", "fixed"])
def test_adaptive_clipping_is_accounted_as_both_releases_of_andrew_et_al_not_the_updates_noise_alone(sampling):
    """A round releases the noised sum (noise z_delta C, sensitivity C) and the noised unclipped count (noise
    sigma_b, sensitivity 1/2), from one sample of clients: dp-accounting's event is the sampled composition of the
    two Gaussians. Andrew et al.'s split, z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2, makes it the nominal z's epsilon;
    accounting z_delta alone (the noise the model update carries) would state less than the round spends."""
    import dp_accounting as dpa

    strategy = CentralDP(FedAvg(), noise_multiplier=1.0, clip_norm=1.0, adaptive=True, delta=1e-5, sampling=sampling)
    strategy.bind(RunContext("r", None, {}, clients=100, clients_per_round=10))
    count_stddev, z_delta = strategy.clipped_count_stddev, strategy.update_noise_multiplier
    assert (count_stddev, z_delta) == (1.0, pytest.approx((1.0 - 0.25) ** -0.5))
    for round_number in range(1, 6):
        strategy.aggregate(round_number, [np.zeros(2, np.float32)], [ClientUpdate("a", [np.ones(2, np.float32)], 1)])

    def stated(update_noise, count_noise=None):
        if sampling == "poisson":  # add-or-remove-one: sensitivities C and 1/2
            gaussians = [dpa.GaussianDpEvent(update_noise)] + ([dpa.GaussianDpEvent(2 * count_noise)] if count_noise else [])
            event, relation = dpa.PoissonSampledDpEvent(0.1, dpa.ComposedDpEvent(gaussians)), dpa.NeighboringRelation.ADD_OR_REMOVE_ONE
        else:  # replace-one: sensitivities 2C and 1
            gaussians = [dpa.GaussianDpEvent(update_noise / 2)] + ([dpa.GaussianDpEvent(count_noise)] if count_noise else [])
            event = dpa.SampledWithoutReplacementDpEvent(100, 10, dpa.ComposedDpEvent(gaussians))
            relation = dpa.NeighboringRelation.REPLACE_ONE
        accountant = dpa.rdp.RdpAccountant(neighboring_relation=relation)
        return accountant.compose(dpa.SelfComposedDpEvent(event, 5)).get_epsilon(1e-5)

    assert strategy.epsilon() == pytest.approx(stated(z_delta, count_stddev), rel=1e-9)
    assert strategy.epsilon() > 1.05 * stated(z_delta)
    assert strategy.report().noise_multiplier == 1.0


def test_central_dp_without_noise_says_it_gives_no_privacy_and_states_infinite_epsilon():
    from fedless_nb.privacy.accounting import NoPrivacyWarning

    strategy = CentralDP(FedAvg(), noise_multiplier=0.0, clip_norm=1.0)
    with pytest.warns(NoPrivacyWarning, match=r"^central_dp.noise_multiplier is 0: no noise is added, so this run has no "
                                              r"differential privacy"):
        strategy.bind(RunContext("r", None, {}, clients=10, clients_per_round=2))
    strategy.aggregate(1, [np.zeros(2, np.float32)], [ClientUpdate("a", [np.ones(2, np.float32)], 1)])
    assert strategy.epsilon() == math.inf and "epsilon = inf" in str(strategy.report())
