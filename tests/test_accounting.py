"""Incremental privacy accounting: the ledger against full recomposition, shared work, the worker
thread, cross-checks of reported facts and the checkpointed state."""

import math
import random
import threading

import pytest

from fedless_nb.privacy.accounting import DpRound, ExampleLevelAccountant, PrivacyLedger, epsilon

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


class _Invocation:
    def __init__(self, client_id, outcome="succeeded"):
        self.client_id, self.outcome = client_id, outcome


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
    accountant(_Invocation("a", outcome="failed"))
    assert accountant.report("a").rounds == 1 and accountant.report("a").steps == 20
    accountant.close()
