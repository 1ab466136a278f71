"""Central (client-level) DP: clipping, noise, adaptive clipping and its accountant, by hand."""

import numpy as np
import pytest

from fedless_nb.privacy.accounting import DpRound, epsilon
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
