"""Incremental privacy accounting: the ledger against full recomposition, shared work, the worker
thread, cross-checks of reported facts and the checkpointed state."""

import contextlib
import math
import random
import threading

import pytest

from fedless_nb.function.batching import privacy_facts
from fedless_nb.privacy.accounting import (DpRound, ExampleLevelAccountant, PrivacyLedger, PrivacyReport, WeakDeltaWarning,
                                           epsilon)

MIXED = [DpRound(5, 0.01, 1.5), DpRound(10, 0.02, 1.2), DpRound(4, 0.01, 1.1, microbatch_size=2)]
PLD_MIXED = [DpRound(5, 0.01, 3.0), DpRound(8, 0.02, 2.5), DpRound(4, 0.01, 2.0, microbatch_size=2)]


def _history(rounds, pool, seed=0):
    rng = random.Random(seed)
    return [rng.choice(pool) for _ in range(rounds)]


@pytest.mark.parametrize("rounds", [1, 20, 200])
def test_incremental_rdp_equals_full_recomposition(rounds):
    history = _history(rounds, MIXED)
    ledger = PrivacyLedger(1e-5, "rdp")
    for round_ in history:
        ledger.add("a", round_)
    expected = epsilon(history, 1e-5, "rdp")
    assert ledger.epsilon("a") == pytest.approx(expected, rel=1e-9)
    assert ledger.projected_epsilon("a", MIXED[0]) == pytest.approx(epsilon([*history, MIXED[0]], 1e-5), rel=1e-9)


@pytest.mark.parametrize("rounds", [1, 20])
def test_incremental_pld_equals_full_recomposition_within_its_discretization(rounds):
    history = _history(rounds, PLD_MIXED)
    ledger = PrivacyLedger(1e-5, "pld")
    for round_ in history:
        ledger.add("a", round_)
    assert ledger.epsilon("a") == pytest.approx(epsilon(history, 1e-5, "pld"), abs=1e-3)


@pytest.mark.slow
def test_incremental_pld_over_200_rounds():
    history = _history(200, PLD_MIXED[:2])
    ledger = PrivacyLedger(1e-5, "pld")
    for round_ in history:
        ledger.add("a", round_)
    assert ledger.epsilon("a") == pytest.approx(epsilon(history, 1e-5, "pld"), abs=1e-3)


def test_subjects_with_the_same_history_share_one_composition():
    ledger = PrivacyLedger(1e-5, "rdp")
    for client in ("a", "b"):
        ledger.add(client, MIXED[0])
        ledger.add(client, MIXED[1])
    assert ledger.subjects["a"].total is ledger.subjects["b"].total
    ledger.add("c", MIXED[1])
    ledger.add("c", MIXED[0])
    assert ledger.epsilon("c") == pytest.approx(ledger.epsilon("a"), rel=1e-12), "composition commutes"
    assert ledger.subjects["c"].total is not ledger.subjects["a"].total


def test_no_noise_is_infinite_and_an_empty_round_spends_nothing():
    ledger = PrivacyLedger(1e-5, "rdp")
    ledger.add("a", DpRound(0, 0.1, 1.0))
    assert ledger.epsilon("a") == 0.0
    ledger.add("a", DpRound(3, 0.1, 0.0))
    assert ledger.epsilon("a") == math.inf


def test_a_replayed_checkpoint_gives_the_same_epsilon_to_the_last_bit():
    ledger = PrivacyLedger(1e-5, "rdp")
    for round_ in _history(30, MIXED, seed=3):
        ledger.add("a", round_)
    ledger.add("b", MIXED[2])
    restored = PrivacyLedger(1e-5, "rdp")
    restored.load_state(ledger.state())
    assert restored.epsilon("a") == ledger.epsilon("a") and restored.epsilon("b") == ledger.epsilon("b")
    assert restored.subjects["a"].rounds == 30


def test_a_checkpoint_replays_each_run_of_equal_rounds_in_one_composition():
    """A resumed run of thousands of rounds replays each subject's runs of equal rounds as one call each, and subjects
    with the same runs share it: the replay looked up each round on its own (2,000 lookups and sums for "a", and most
    again for "b", whose intermediate histories the shared cache had dropped). Same bits as the run composed them."""
    ledger = PrivacyLedger(1e-5, "rdp")
    for round_ in [MIXED[0]] * 1000 + [MIXED[1]] * 1000:
        ledger.add("a", round_)
        ledger.add("b", round_)
    restored, looked_up = PrivacyLedger(1e-5, "rdp"), []
    losses = restored.losses
    restored.losses = lambda round_: looked_up.append(round_) or losses(round_)
    restored.load_state(ledger.state())
    assert looked_up == MIXED[:2], "one composition per run of equal rounds, and none again for b"
    assert restored.epsilon("a") == restored.epsilon("b") == ledger.epsilon("a") == ledger.epsilon("b")
    assert restored.subjects["b"].total is restored.subjects["a"].total and restored.subjects["b"].rounds == 2000


class _Invocation:
    def __init__(self, client_id, outcome="succeeded", round_number=None, budget_epochs=None, cause=None):
        self.client_id, self.outcome, self.round, self.budget_epochs = client_id, outcome, round_number, budget_epochs
        self.cause = cause


FACTS = {"steps": 20, "sampling_rate": 0.1, "batch_size": 4, "num_examples": 40, "noise_multiplier": 1.0,
         "l2_norm_clip": 1.0, "microbatch_size": 1, "sampling": "poisson"}


def test_the_accountant_composes_in_its_worker_thread_without_blocking_the_caller():
    accountant = ExampleLevelAccountant(1e-5, expected_facts={"a": FACTS})
    release, seen = threading.Event(), {}
    losses = accountant.ledger.losses

    def held(round_):
        seen["thread"] = threading.current_thread().name
        seen["released"] = release.wait(timeout=30)
        return losses(round_)

    accountant.ledger.losses = held
    accountant(_Invocation("a"))  # returns while the worker waits
    release.set()
    assert accountant.epsilon("a") == pytest.approx(epsilon([DpRound.from_facts(FACTS)], 1e-5), rel=1e-9)
    assert seen == {"thread": seen["thread"], "released": True} and seen["thread"] != threading.current_thread().name
    accountant.close()


def test_the_accountant_uses_its_own_facts_and_rejects_a_mismatching_report():
    accountant = ExampleLevelAccountant(1e-5, expected_facts={"a": FACTS})
    assert accountant.check_result("a", {"privacy": dict(FACTS)}) is None
    lying = {**FACTS, "noise_multiplier": 100.0}
    assert "differ from the controller's" in accountant.check_result("a", {"privacy": lying})
    assert "differ" in accountant.check_result("a", {"privacy": None})
    assert "no DP-SGD round planned" in accountant.check_result("z", {"privacy": FACTS})
    accountant(_Invocation("a"))
    accountant(_Invocation("a", outcome="failed", cause="auth"))  # refused before it read anything
    assert accountant.report("a").rounds == 1 and accountant.report("a").steps == 20
    accountant.close()


# the figures a run states, against dp-accounting and tensorflow-privacy on their own terms -------------------

def _reference(n, batch, epochs, noise, sampling, num_microbatches, rounds, delta, accountant):
    """dp-accounting's accountant for `rounds` invocations, with the event built from the README's rules
    (not from fedless_nb's facts): Poisson at q = min(batch, n) / n for ceil(epochs * n / batch) steps under
    add-or-remove-one; shuffle as fixed-size sampling without replacement of the batch cut to a multiple
    of the microbatches, epochs * (n // size) steps, under replace-one (sensitivity 2C: noise halved)."""
    import dp_accounting as dpa

    size = min(batch, n)
    if sampling == "poisson":
        event, steps = dpa.PoissonSampledDpEvent(size / n, dpa.GaussianDpEvent(noise)), math.ceil(epochs * n / size)
        relation = dpa.NeighboringRelation.ADD_OR_REMOVE_ONE
    else:
        size -= size % (num_microbatches or 1)
        event, steps = dpa.SampledWithoutReplacementDpEvent(n, size, dpa.GaussianDpEvent(noise / 2)), epochs * (n // size)
        relation = dpa.NeighboringRelation.REPLACE_ONE
    engine = (dpa.rdp.RdpAccountant(neighboring_relation=relation) if accountant == "rdp"
              else dpa.pld.PLDAccountant(relation))
    return engine.compose(dpa.SelfComposedDpEvent(event, steps * rounds)).get_epsilon(delta)


def _train(batch, epochs, noise, sampling="poisson", num_microbatches=None):
    return {"epochs": epochs, "batch_size": batch, "dp": {"l2_norm_clip": 1.0, "noise_multiplier": noise,
                                                          "sampling": sampling, "num_microbatches": num_microbatches}}


@pytest.mark.parametrize("n, batch, epochs, noise, sampling, microbatches, delta, accountant", [
    (60000, 32, 1, 1.1, "poisson", None, 1e-5, "rdp"),
    (10, 7, 5, 0.5, "poisson", None, 1e-9, "rdp"),
    (100, 7, 5, 4.0, "poisson", None, 1e-2, "pld"),  # delta = 1/n
    (1, 1, 3, 1.1, "poisson", None, 1e-5, "rdp"),  # one example: q = 1
    (5, 32, 3, 1.1, "poisson", None, 1e-5, "pld"),  # batch larger than the data: q = 1
    (1000, 32, 1, 1.1, "shuffle", None, 1e-5, "rdp"),
    (1000, 32, 5, 0.5, "shuffle", 32, 1e-9, "rdp"),
    (100, 10, 1, 1.1, "shuffle", 5, 1e-5, "rdp"),  # microbatches of 2
    (5, 32, 3, 1.1, "shuffle", 4, 1e-5, "rdp"),  # batch larger than the data, cut to a multiple of 4
])
def test_a_clients_stated_epsilon_equals_dp_accountings_round_by_round(n, batch, epochs, noise, sampling,
                                                                       microbatches, delta, accountant):
    facts = privacy_facts(n, _train(batch, epochs, noise, sampling, microbatches))
    with pytest.warns(WeakDeltaWarning) if delta >= 1 / n else contextlib.nullcontext():  # delta = 1/n is weak
        ledger = ExampleLevelAccountant(delta, accountant, expected_facts={"a": facts})
    for rounds in (1, 2, 3):
        ledger(_Invocation("a"))
        expected = _reference(n, batch, epochs, noise, sampling, microbatches, rounds, delta, accountant)
        assert ledger.epsilon("a") == pytest.approx(expected, rel=1e-6)
    report = ledger.report("a")
    assert report.adjacency == ("add-or-remove-one" if sampling == "poisson" else "replace-one")
    assert (report.sampling, report.accountant, report.unit, report.rounds) == (sampling, accountant, "example", 3)
    ledger.close()


def test_a_rounds_simulated_stragglers_are_charged_their_steps_and_the_others_as_planned():
    """Fixed-size batches of 32 from 1000 examples, 31 steps an epoch, 4 epochs planned (124 steps); round 1's
    invocation of "a" carries a straggler's cut, which allows it 40 steps. Its epsilon is dp-accounting's for 40 +
    124 steps, "b"'s for 2 * 124; a round redone on resume is charged the same way, from the cuts the history kept."""
    import dp_accounting as dpa

    def reference(steps):
        event = dpa.SampledWithoutReplacementDpEvent(1000, 32, dpa.GaussianDpEvent(1.1 / 2))
        accountant = dpa.rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
        return accountant.compose(dpa.SelfComposedDpEvent(event, steps)).get_epsilon(1e-5)

    facts = privacy_facts(1000, _train(32, 4, 1.1, "shuffle"))
    assert facts["steps"] == 124
    ledger = ExampleLevelAccountant(1e-5, expected_facts={"a": facts, "b": facts},
                                    straggler_steps=lambda client_id, budget_epochs: {("a", 1.3): 40}[client_id, budget_epochs])
    ledger(_Invocation("a", round_number=1, budget_epochs=1.3))
    ledger(_Invocation("b", round_number=1))
    ledger(_Invocation("b", round_number=2))
    ledger.charge("a")  # redone on resume, a full round in its history
    assert ledger.epsilon("a") == pytest.approx(reference(40 + 124), rel=1e-9)
    assert ledger.epsilon("b") == pytest.approx(reference(2 * 124), rel=1e-9)
    assert ledger.report("a").steps == 164
    ledger.close()


def test_partial_work_stopped_by_a_real_time_budget_is_charged_its_planned_steps():
    """A function that reached train.budget_seconds took 7 of its 125 Poisson steps; how many fit in the time depends
    on the secret batch sizes, so the epsilon is dp-accounting's for the 125 planned (a simulated straggler's cut,
    drawn before any example is read, is charged its own steps: the test above). A throttled invocation, which never
    ran, spends nothing."""
    facts = privacy_facts(1000, _train(32, 4, 1.1))
    assert facts["steps"] == 125
    ledger = ExampleLevelAccountant(1e-5, expected_facts={"a": facts}, straggler_steps=lambda client_id, epochs: 40)
    stopped = _Invocation("a", round_number=1)
    stopped.partial, stopped.steps = True, 7
    ledger(stopped)
    ledger(_Invocation("a", outcome="failed", round_number=2, cause="throttled"))
    assert ledger.epsilon("a") == pytest.approx(_reference(1000, 32, 4, 1.1, "poisson", None, 1, 1e-5, "rdp"), rel=1e-9)
    assert (ledger.report("a").steps, ledger.report("a").rounds) == (125, 1)
    ledger.close()


@pytest.mark.parametrize("n, batch, epochs, noise, delta, accountant", [
    (60000, 1, 1, 20.0, 1e-5, "rdp"), (100, 7, 50, 0.3, 1e-9, "rdp"), (1000, 32, 5, 1.1, 1e-3, "pld"),
])
def test_one_poisson_invocation_equals_tensorflow_privacys_dp_sgd_epsilon(n, batch, epochs, noise, delta, accountant):
    from tensorflow_privacy.privacy.analysis import compute_dp_sgd_privacy_lib as lib

    expected = lib._compute_dp_sgd_example_privacy(  # what compute_dp_sgd_privacy_statement prints, unrounded
        epochs, noise, delta, used_microbatching=False, poisson_subsampling_probability=batch / n,
        accountant_type=lib.AccountantType[accountant.upper()])
    round_ = DpRound.from_facts(privacy_facts(n, _train(batch, epochs, noise)))
    assert epsilon([round_], delta, accountant) == pytest.approx(expected, rel=1e-6)


def test_steps_over_several_epochs_are_counted_exactly_where_tensorflow_privacys_statement_counts_one_more():
    """2998 examples in expected batches of 16 over 8 epochs: 8 * 2998 / 16 = 1499 steps exactly. tensorflow-privacy's
    statement counts ceil(epochs / q) with q = 16 / 2998 a float, ceil(1499.0000000000002) = 1500 (one too many in
    3876 cases of n < 3000, 13 batch sizes and 1 to 10 epochs); the epsilon stated is dp-accounting's for the 1499
    steps taken."""
    import dp_accounting as dpa

    facts = privacy_facts(2998, _train(16, 8, 1.1))
    assert facts["steps"] == 1499 and math.ceil(8 / (16 / 2998)) == 1500
    expected = dpa.rdp.RdpAccountant().compose(dpa.SelfComposedDpEvent(
        dpa.PoissonSampledDpEvent(16 / 2998, dpa.GaussianDpEvent(1.1)), 1499)).get_epsilon(1e-5)
    assert epsilon([DpRound.from_facts(facts)], 1e-5) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
@pytest.mark.parametrize("sizes", [{"a": 10, "b": 37, "c": 200}, {"a": 9, "b": 900, "c": 90_000}])
def test_the_run_states_the_worst_client_of_unequal_clients(accountant, sizes):
    joined = {"a": 1, "b": 2, "c": 3}
    train = _train(8, 2, 1.1)
    ledger = ExampleLevelAccountant(1e-5, accountant, expected_facts={c: privacy_facts(n, train) for c, n in sizes.items()})
    for client, times in joined.items():
        for _ in range(times):
            ledger(_Invocation(client))
    expected = {c: _reference(n, 8, 2, 1.1, "poisson", None, joined[c], 1e-5, accountant) for c, n in sizes.items()}
    for client, value in expected.items():
        assert ledger.epsilon(client) == pytest.approx(value, rel=1e-6)
    worst = max(expected, key=expected.get)
    assert ledger.worst_case().epsilon == pytest.approx(expected[worst], rel=1e-6)
    assert ledger.worst_case().subject == f"the examples of {worst}"
    assert ledger.worst_case().sampling_rate == 8 / sizes[worst], "the worst client's own q"
    assert ledger.round_metrics(3)["epsilon_max"] == pytest.approx(expected[worst], rel=1e-6)
    ledger.close()


@pytest.mark.parametrize("accountant, sampling", [("rdp", "poisson"), ("pld", "poisson"), ("rdp", "shuffle")])
def test_no_noise_is_stated_as_infinite_epsilon(accountant, sampling):
    from fedless_nb.privacy.accounting import NoPrivacyWarning

    with pytest.warns(NoPrivacyWarning, match=r"^train.dp.noise_multiplier is 0: no noise is added, so this run has no "
                                              r"differential privacy \(its epsilon is inf\); set train.dp.noise_multiplier"):
        ledger = ExampleLevelAccountant(1e-5, accountant, expected_facts={"a": privacy_facts(100, _train(10, 1, 0.0, sampling))})
    ledger(_Invocation("a"))
    if sampling == "poisson":  # dp-accounting's without-replacement kernel divides by the noise: no reference there
        assert _reference(100, 10, 1, 0.0, sampling, None, 1, 1e-5, accountant) == math.inf
    assert ledger.epsilon("a") == math.inf and ledger.round_metrics(1)["epsilon_max"] == math.inf
    assert "epsilon = inf at delta" in str(ledger.report("a"))
    ledger.close()


@pytest.mark.parametrize("target", [1.5, 3.0, 8.0])  # 1.5: below one round, no round fits
def test_a_budget_stops_a_client_at_the_last_round_that_fits(target):
    ledger = ExampleLevelAccountant(1e-5, target_epsilon=target, expected_facts={"a": privacy_facts(200, _train(20, 1, 1.1))})
    rounds = 0
    while ledger.allows("a"):
        ledger(_Invocation("a"))
        rounds += 1
    assert rounds == 0 or _reference(200, 20, 1, 1.1, "poisson", None, rounds, 1e-5, "rdp") <= target
    assert _reference(200, 20, 1, 1.1, "poisson", None, rounds + 1, 1e-5, "rdp") > target
    ledger.close()


def test_a_target_epsilon_below_one_round_is_one_line_naming_what_to_change():
    from fedless_nb.privacy.accounting import PrivacyBudgetUnreachable

    facts = {"small": privacy_facts(20, _train(10, 1, 1.1)), "large": privacy_facts(2000, _train(10, 1, 1.1))}
    one_round = {c: epsilon([DpRound.from_facts(f)], 1e-5) for c, f in facts.items()}
    assert one_round["small"] > one_round["large"]
    between = ExampleLevelAccountant(1e-5, target_epsilon=(one_round["small"] + one_round["large"]) / 2,
                                     expected_facts=facts)
    between.check_reachable()  # the large client can train: skip_client goes on without the small one
    with pytest.raises(PrivacyBudgetUnreachable,
                       match=r"^train.dp.target_epsilon .* for 1 client, and on_budget: stop_run .*raise train.dp.target_epsilon"):
        between.check_reachable(stop_run=True)
    below = ExampleLevelAccountant(1e-5, target_epsilon=one_round["large"] / 2, expected_facts=facts)
    with pytest.raises(PrivacyBudgetUnreachable, match="for every client") as raised:
        below.check_reachable()
    assert "\n" not in str(raised.value) and f"{one_round['large']:.3g}" in str(raised.value)


def test_a_delta_not_below_one_over_n_warns_naming_the_key():
    from fedless_nb.privacy.accounting import WeakDeltaWarning

    with pytest.warns(WeakDeltaWarning, match=r"train.dp.delta 0.05 is not below 1/n = 1/20"):
        ExampleLevelAccountant(0.05, expected_facts={"a": privacy_facts(20, _train(10, 1, 1.1))}).close()
    sizes = {"small": 9, "large": 9_000}  # 1e-3 is below 1/9 but not below 1/9009: the large client's examples count
    with pytest.warns(WeakDeltaWarning, match=r"train.dp.delta 0.001 is not below 1/n = 1/9009 \(one example of 9009\)"):
        ExampleLevelAccountant(1e-3, expected_facts={c: privacy_facts(n, _train(8, 1, 1.1)) for c, n in sizes.items()}).close()
    from fedless_nb.strategies import FedAvg, RunContext
    from fedless_nb.strategies.central_dp import CentralDP

    with pytest.warns(WeakDeltaWarning, match=r"central_dp.delta 0.1 is not below 1/n = 1/10"):
        CentralDP(FedAvg(), noise_multiplier=1.0, clip_norm=1.0, delta=0.1).bind(
            RunContext("r", None, {}, clients=10, clients_per_round=2))


@pytest.mark.parametrize("arguments, message", [
    ({"noise_multiplier": -1.0}, "noise_multiplier must be >= 0"),
    ({"sampling_rate": 1.5}, "sampling_rate must be in"),
    ({"sampling": "shuffle"}, "population"),
    ({"microbatch_size": 0}, "microbatch_size"),
])
def test_a_round_with_impossible_parameters_is_refused_not_accounted(arguments, message):
    with pytest.raises(ValueError, match=message):
        DpRound(**{"steps": 10, "sampling_rate": 0.1, "noise_multiplier": 1.0, **arguments})


@pytest.mark.parametrize("noise, rate", [(1e6, 0.1), (1e8, 0.001)])
def test_a_huge_noise_multiplier_is_accounted_where_dp_accountings_rdp_arithmetic_breaks(noise, rate):
    """dp-accounting's subsampled-Gaussian RDP cancels below 0 at such noise (its RdpAccountant then raises 'Renyi
    divergence cannot be negative', or fails inside its log-space subtraction): the epsilon is the un-subsampled
    Gaussian's, which bounds it, as dp-accounting computes that one; a central-DP round with it aggregates."""
    import dp_accounting as dpa

    round_ = DpRound(15, rate, noise)
    with pytest.raises(ValueError):
        dpa.rdp.RdpAccountant().compose(dpa.SelfComposedDpEvent(round_.event(), 3)).get_epsilon(1e-5)
    unsampled = dpa.rdp.RdpAccountant().compose(dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(noise), 45)).get_epsilon(1e-5)
    ledger = PrivacyLedger(1e-5, "rdp")
    for _ in range(3):
        ledger.add("a", round_)
    assert ledger.epsilon("a") == pytest.approx(unsampled, abs=1e-12) and epsilon([round_] * 3, 1e-5) == ledger.epsilon("a")

    import numpy as np
    from fedless_nb.strategies import ClientUpdate, FedAvg, RunContext
    from fedless_nb.strategies.central_dp import CentralDP

    central = CentralDP(FedAvg(), noise_multiplier=noise, clip_norm=1.0)
    central.bind(RunContext("r", None, {}, clients=1000, clients_per_round=round(rate * 1000)))
    central.aggregate(1, [np.zeros(2, np.float32)], [ClientUpdate("a", [np.ones(2, np.float32)], 1)])
    assert central.epsilon() == pytest.approx(dpa.rdp.RdpAccountant().compose(dpa.GaussianDpEvent(noise)).get_epsilon(1e-5),
                                              abs=1e-12)


@pytest.mark.parametrize("steps, rate, noise, population, delta", [
    (1_000_000, 1.0, 20.0, 0, 1e-12),  # every example in every step, a million steps
    (1_000_000, 1e-4, 0.3, 0, 0.5),  # the least noise at the smallest rate
    (1, 1e-4, 20.0, 0, 1e-5),  # one step: far below 1
    (1_000_000, 1e-4, 20.0, 10_000, 1e-12),  # without replacement: a batch of 1 of 10,000
    (1_000, 0.5, 0.3, 2, 1e-5),  # without replacement: 1 of 2 examples, epsilon in the tens of thousands
])
def test_the_ledger_is_dp_accountings_rdp_to_the_bit_at_the_ends_of_the_parameter_ranges(steps, rate, noise,
                                                                                         population, delta):
    """Poisson under add-or-remove-one; fixed-size batches without replacement under replace-one with the noise
    multiplier halved (one replaced example moves the clipped sum by 2C), as dp-accounting's own events state them."""
    import dp_accounting as dpa

    gaussian = dpa.GaussianDpEvent(noise / 2 if population else noise)
    if population:
        round_ = DpRound(steps, rate, noise, sampling="shuffle", population=population)
        step = dpa.SampledWithoutReplacementDpEvent(population, round(rate * population), gaussian)
        engine = dpa.rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
    else:
        round_, step, engine = DpRound(steps, rate, noise), dpa.PoissonSampledDpEvent(rate, gaussian), dpa.rdp.RdpAccountant()
    expected = engine.compose(dpa.SelfComposedDpEvent(step, steps)).get_epsilon(delta)
    ledger = PrivacyLedger(delta, "rdp")
    ledger.add("a", round_)
    assert ledger.epsilon("a") == epsilon([round_], delta) == expected


def test_a_client_level_report_counts_rounds_where_an_example_level_one_counts_steps():
    """Central DP noises the average once a round, so its accountant's steps are rounds: its report read
    '3 steps at sampling rate 0.5 over 3 rounds' and 'each client joins each step'."""
    client_level = PrivacyReport(epsilon=13.5, delta=1e-3, accountant="rdp", granularity="client-level",
                                 noise_multiplier=0.5, clip_norm=2.0, steps=3, sampling_rate=0.5, rounds=3)
    assert "each client joins each round independently" in str(client_level)
    assert str(client_level).endswith("clip norm 2, 3 rounds at sampling rate 0.5") and "step" not in str(client_level)
    example_level = PrivacyReport(epsilon=14.8, delta=1e-5, accountant="rdp", granularity="example-level",
                                  noise_multiplier=0.5, clip_norm=1.0, steps=46, sampling_rate=0.04457, rounds=2)
    assert "each example joins each step independently" in str(example_level)
    assert str(example_level).endswith("46 steps at sampling rate 0.04457 over 2 releases")
    assert "steps" not in client_level.to_dict() and client_level.to_dict()["rounds"] == 3, \
        "a client-level report's count is its rounds: no DP-SGD step is behind it"
    assert (example_level.to_dict()["steps"], example_level.to_dict()["rounds"]) == (46, 2)


@pytest.mark.parametrize("outcome, cause, stage, trained", [
    ("succeeded", None, None, True), ("succeeded", None, "masked", True), ("succeeded", None, "keys", False),
    *[("failed", cause, None, True) for cause in ("timeout", "crash", "deadline", "network", "error", "interrupted",
                                                  "rejected", "invalid", "signature")],
    ("failed", "timeout", "masked", True), ("failed", "timeout", "shares", False),
    *[("failed", cause, None, False) for cause in ("auth", "throttled", "cannot_aggregate")],
    ("discarded", "late", None, True),
])
def test_an_invocation_is_charged_when_its_function_may_have_trained(outcome, cause, stage, trained):
    """What a failure's cause says about the training: a timeout, a crash, a missed deadline, a lost connection, an
    error, an interrupted run or a refused result may all come after the update was written; a refused token, a
    throttled call and a declared refusal never trained. A late reply trained, but is charged only where the
    controller finds nothing charged for it (its decision, the event's `charged`; without one, never)."""
    from fedless_nb.privacy.accounting import charged, may_have_trained

    assert may_have_trained(outcome, cause, stage) is trained
    assert charged(outcome, cause, stage, None) is (trained and outcome != "discarded")
    assert charged(outcome, cause, stage, True) and not charged(outcome, cause, stage, False), "the decision wins"

