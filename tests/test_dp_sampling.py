"""For every DP-SGD sampling mode: the client samples what the accountant assumes, and the accountant's
epsilon agrees with dp-accounting computed independently for that event."""

import math
import time

import numpy as np
import pytest
from scipy import stats

from fedless_nb.function import handler as client
from fedless_nb.function.batching import privacy_facts, step_batches
from fedless_nb.function.handler import handle
from fedless_nb.privacy.accounting import DpRound, PrivacyLedger

from client_tasks import client_task


@pytest.fixture(autouse=True)
def fresh_process_state(monkeypatch):
    monkeypatch.setattr(client, "_STATE", client._WarmState())


def _binned_chisquare(observed, probabilities, minimum=5):
    """Chi-square goodness of fit, merging the tails until every expected count is >= `minimum`."""
    expected = probabilities * observed.sum()
    keep = expected >= minimum
    merged_observed = np.append(observed[keep], observed[~keep].sum())
    merged_expected = np.append(expected[keep], expected[~keep].sum())
    if merged_expected[-1] == 0:
        merged_observed, merged_expected = merged_observed[:-1], merged_expected[:-1]
    merged_expected *= merged_observed.sum() / merged_expected.sum()
    return stats.chisquare(merged_observed, merged_expected).pvalue


def test_poisson_batch_sizes_follow_binomial_n_q_and_every_example_is_equally_likely():
    n, train = 200, {"epochs": 400, "batch_size": 10, "dp": {"sampling": "poisson"}}
    batches = list(step_batches(n, train, np.random.default_rng(7)))
    assert len(batches) == 8000
    sizes = np.array([len(b) for b in batches])
    q = 10 / n
    observed = np.bincount(sizes, minlength=n + 1)
    assert _binned_chisquare(observed, stats.binom.pmf(np.arange(n + 1), n, q)) > 0.01
    inclusions = np.bincount(np.concatenate(batches), minlength=n)
    assert _binned_chisquare(inclusions, np.full(n, 1 / n)) > 0.01, "each example is taken with the same q"
    # independence across steps: the overlap of two batches is Binomial(n, q^2) (disjoint pairs of steps)
    overlaps = np.array([len(np.intersect1d(a, b)) for a, b in zip(batches[0::2], batches[1::2])])
    assert _binned_chisquare(np.bincount(overlaps, minlength=n + 1), stats.binom.pmf(np.arange(n + 1), n, q * q)) > 0.01


def test_fixed_size_batches_are_uniform_without_replacement_at_every_step():
    n, size = 50, 8
    train = {"epochs": 1000, "batch_size": size, "dp": {"sampling": "shuffle"}}
    batches = list(step_batches(n, train, np.random.default_rng(0)))
    assert len(batches) == 1000 * (n // size)
    assert all(len(b) == size and len(set(b.tolist())) == size for b in batches)
    inclusions = np.bincount(np.concatenate(batches), minlength=n)
    assert _binned_chisquare(inclusions, np.full(n, 1 / n)) > 0.01
    # a fresh uniform draw each step: two batches overlap as Hypergeometric(n, size, size) (disjoint pairs)
    overlaps = np.array([len(np.intersect1d(a, b)) for a, b in zip(batches[0::2], batches[1::2])])
    pmf = stats.hypergeom.pmf(np.arange(size + 1), n, size, size)
    assert _binned_chisquare(np.bincount(overlaps, minlength=size + 1), pmf) > 0.01


def test_the_client_trains_on_poisson_batches_including_empty_ones(tmp_path):
    task = client_task(tmp_path, examples=40, epochs=30, batch_size=2,
                       dp={"l2_norm_clip": 1.0, "noise_multiplier": 0.5, "sampling": "poisson"})
    handle(task)  # builds and traces the model
    seen = []
    step = client._STATE.compiled.train_step

    def recording(x, y, mask, *rest):
        seen.append((len(x), float(np.sum(mask))))
        return step(x, y, mask, *rest)

    client._STATE.compiled.train_step = recording
    task.update(update="runs/r/u/client-0000-again", deadline=time.time() + 600)
    result = handle(task)
    facts = result["privacy"]
    assert facts == privacy_facts(40, task["train"]) and facts["sampling"] == "poisson"
    assert len(seen) == facts["steps"] == 30 * 20
    sizes = np.array([int(taken) for _, taken in seen])
    assert all(rows == max(1, taken) for rows, taken in seen), "an empty batch is one masked example"
    assert (sizes == 0).sum() > 0, "with q = 0.05 some steps are empty and still taken"
    observed = np.bincount(sizes, minlength=41)
    assert _binned_chisquare(observed, stats.binom.pmf(np.arange(41), 40, 0.05)) > 0.01
    assert all(math.isfinite(v) for v in result["metrics"].values())


def _batches_of_one_invocation(task, update_key):
    """The example indices of each step one invocation of `task` trains on."""
    seen = []
    step = client._STATE.compiled.train_step

    def recording(x, y, mask, *rest):
        seen.append(tuple(np.round(x[:, 0], 6)[mask > 0]))  # the rows taken, known by their first feature
        return step(x, y, mask, *rest)

    client._STATE.compiled.train_step = recording
    try:
        handle({**task, "update": update_key, "deadline": time.time() + 600})
    finally:
        client._STATE.compiled.train_step = step
    return seen


@pytest.mark.parametrize("dp", [None, {"l2_norm_clip": 1.0, "noise_multiplier": 0.5, "sampling": "poisson"},
                                {"l2_norm_clip": 1.0, "noise_multiplier": 0.5, "sampling": "shuffle"}])
def test_dp_batches_are_secret_while_other_batches_repeat_under_the_tasks_seed(dp, tmp_path):
    """The task's seed is in the run's config and history: a DP client whose batches followed it would tell anyone
    which steps took each example, and amplification by sampling (the epsilon's premise) would not hold."""
    task = client_task(tmp_path, examples=40, epochs=3, batch_size=4, seed=11, dp=dp)
    handle(task)  # builds and traces the model
    first, second = (_batches_of_one_invocation(task, f"runs/r/u/client-0000-{n}") for n in (1, 2))
    assert len(first) == len(second) > 10
    assert (first == second) == (dp is None)


def _dp_accounting_epsilon(event, relation, delta, accountant):
    import dp_accounting

    engine = (dp_accounting.rdp.RdpAccountant(neighboring_relation=relation) if accountant == "rdp"
              else dp_accounting.pld.PLDAccountant(relation))
    return engine.compose(event).get_epsilon(delta)


@pytest.mark.parametrize("sampling, accountant, microbatches", [
    ("poisson", "rdp", None), ("poisson", "pld", None), ("shuffle", "rdp", None), ("shuffle", "rdp", 4),
])
def test_epsilon_agrees_with_dp_accounting_for_the_event_the_client_runs(sampling, accountant, microbatches):
    import dp_accounting

    n, rounds, delta = 120, 3, 1e-5
    train = {"epochs": 2, "batch_size": 12, "dp": {"noise_multiplier": 1.2, "l2_norm_clip": 1.0,
                                                   "sampling": sampling, "num_microbatches": microbatches}}
    facts = privacy_facts(n, train)
    ledger = PrivacyLedger(delta, accountant)
    for _ in range(rounds):
        ledger.add("client", DpRound.from_facts(facts))
    if sampling == "poisson":  # add-or-remove-one: one example moves the clipped sum by C
        step = dp_accounting.PoissonSampledDpEvent(12 / n, dp_accounting.GaussianDpEvent(1.2))
        relation, steps = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE, math.ceil(2 * n / 12)
    else:  # replace-one: one example moves the clipped sum by 2C, so the noise is 1.2 C / 2C
        step = dp_accounting.SampledWithoutReplacementDpEvent(n, 12, dp_accounting.GaussianDpEvent(0.6))
        relation, steps = dp_accounting.NeighboringRelation.REPLACE_ONE, 2 * (n // 12)
    expected = _dp_accounting_epsilon(dp_accounting.SelfComposedDpEvent(step, steps * rounds), relation, delta, accountant)
    assert facts["steps"] == steps
    assert ledger.epsilon("client") == pytest.approx(expected, rel=1e-6 if accountant == "rdp" else 1e-3)
