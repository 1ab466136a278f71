"""Aggregation by a weighted sum (fedless_nb/reduction.py): every sum-based strategy, folded update by update,
in shards of uneven size merged in any order, or through the wire form of a partial sum, gives the model
its reference kernel computes from the whole list (strategies/aggregate.py and central_dp.py)."""

import asyncio

import numpy as np
import pytest

from fedless_nb.reduction import SumSpec, WeightedSum, update_term
from fedless_nb.strategies import ClientUpdate, RunContext, make_strategy
from fedless_nb.strategies.aggregate import fedavgm, fednova, fedopt, local_solver_norm
from fedless_nb.strategies import central_dp
from fedless_nb.strategies.central_dp import CentralDP, adapted_clip_norm, clipped_noised_mean
from fedless_nb.strategies.fedavg import fedavg
from fedless_nb.rounds.streaming import StreamingRound
from fedless_nb.store import encode_arrays
from fedless_nb.store.local import LocalStore

TRAIN = {"epochs": 2, "batch_size": 10, "optimizer": "sgd", "learning_rate": 0.1}
RNG = np.random.default_rng(7)
CURRENT = [RNG.normal(size=(4, 3)).astype(np.float32), RNG.normal(size=3).astype(np.float32)]
UPDATES = [
    ClientUpdate(f"c{i}", [(layer + RNG.normal(scale=0.5 * (i + 1), size=layer.shape)).astype(np.float32)
                           for layer in CURRENT], num_examples=10 * (i + 1), steps=2 * (i + 1) if i % 2 else None,
                 partial=bool(i % 2))
    for i in range(7)
]
SHARDS = [UPDATES[:1], UPDATES[1:5], UPDATES[5:]]  # uneven


def _bound(strategy):
    strategy.bind(RunContext("run", None, dict(TRAIN), clients=20, clients_per_round=7))
    return strategy


def _planned(update):
    return 2 * -(-update.num_examples // TRAIN["batch_size"])


def _reference(name, options):
    """Today's arithmetic for `name`: the pure kernels over the whole list."""
    models, counts = [u.weights for u in UPDATES], [u.num_examples for u in UPDATES]
    if name in ("fedavg", "fedprox"):
        mode = options.get("partial_work", "weight" if name == "fedavg" else "accept")
        kept = [u for u in UPDATES if not (u.partial and mode == "drop")]
        weights = [u.num_examples * (u.steps / _planned(u) if u.partial and mode == "weight" else 1) for u in kept]
        return fedavg([u.weights for u in kept], weights)
    if name == "fedavgm":
        return fedavgm(CURRENT, fedavg(models, counts), None, 1.0, 0.9)[0]
    if name in ("fedadam", "fedyogi", "fedadagrad"):
        strategy = make_strategy(name)
        return fedopt(strategy.kind, CURRENT, fedavg(models, counts), None, None, eta=strategy.eta,
                      beta_1=strategy.beta_1, beta_2=strategy.beta_2, tau=strategy.tau,
                      bias_corrected_round=1 if name == "fedadam" else None)[0]
    norms = [local_solver_norm(u.steps or _planned(u), TRAIN["learning_rate"]) for u in UPDATES]
    return fednova(CURRENT, models, counts, norms)


SUM_STRATEGIES = [("fedavg", {}), ("fedavg", {"partial_work": "drop"}), ("fedavg", {"partial_work": "accept"}),
                  ("fedprox", {}), ("fedavgm", {"server_momentum": 0.9}), ("fedadam", {}), ("fedyogi", {}),
                  ("fedadagrad", {}), ("fednova", {})]


def _fold(strategy, updates):
    total, distances = WeightedSum(), []
    for update in updates:
        term = strategy.sum_term(update)
        if term is not None:
            layers, distance = update_term(strategy.sum_spec(), update.weights, CURRENT)
            total.add(layers, term)
            distances.append(distance)
    return total, distances


@pytest.mark.parametrize("name, options", SUM_STRATEGIES)
def test_every_sum_based_strategy_equals_its_kernel_whole_streamed_and_sharded(name, options):
    expected = _reference(name, options)
    whole = _bound(make_strategy(name, {**options, **({"server_momentum": 0.9} if name == "fedavgm" else {})}))
    assert whole.sum_spec() is not None
    results = [whole.aggregate(1, CURRENT, UPDATES)]

    streamed_strategy = _bound(make_strategy(name, options))
    streamed = StreamingRound(streamed_strategy, CURRENT)
    stripped = [streamed.add(update) for update in UPDATES]
    assert all(update.weights == [] for update in stripped)
    results.append(streamed.aggregate(1))

    sharded = _bound(make_strategy(name, options))
    partials = [_fold(sharded, shard) for shard in SHARDS]
    merged = WeightedSum()
    for total, _ in reversed(partials):  # merged in another order than the updates came
        merged.merge(WeightedSum.from_bytes(total.to_bytes()))
    results.append(sharded.aggregate_total(1, CURRENT, merged, [d for _, ds in partials for d in ds]))
    for result in results:
        assert [r.dtype for r in result] == [c.dtype for c in CURRENT]
        for got, want in zip(result, expected):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("inner", ["fedavg", "fedadam"])
@pytest.mark.parametrize("adaptive", [False, True])
def test_central_dp_equals_clip_sum_noise_whole_and_sharded(monkeypatch, inner, adaptive):
    monkeypatch.setattr(central_dp, "secret_noise_rng", lambda: np.random.default_rng([3, 1]))  # the same draw each time

    def central():
        return _bound(CentralDP(make_strategy(inner), noise_multiplier=0.5, clip_norm=1.5, adaptive=adaptive,
                                clipped_count_stddev=1.0))

    reference = central()
    rng = np.random.default_rng([3, 1])
    average, norms = clipped_noised_mean(CURRENT, [u.weights for u in UPDATES], 1.5,
                                         reference.update_noise_multiplier * 1.5, 7, rng)
    expected = reference.inner.aggregate(1, CURRENT, [ClientUpdate("central-dp", average, 1)])
    clip_after = adapted_clip_norm(1.5, norms, 0.5, 0.2, 1.0, 7, rng) if adaptive else 1.5

    whole = central()
    assert whole.sum_spec() == SumSpec("delta", 1.5)
    sharded = central()
    partials = [_fold(sharded, shard) for shard in SHARDS]
    merged = WeightedSum()
    for total, _ in partials:
        merged.merge(total)
    results = [whole.aggregate(1, CURRENT, UPDATES),
               sharded.aggregate_total(1, CURRENT, merged, [d for _, ds in partials for d in ds])]
    for strategy, result in zip((whole, sharded), results):
        assert strategy.clip_norm == pytest.approx(clip_after)
        for got, want in zip(result, expected):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_rejected_update_comes_back_out_of_the_sum(tmp_path):
    store = LocalStore(tmp_path)
    strategy = _bound(make_strategy("fednova"))
    streamed = StreamingRound(strategy, CURRENT)
    for update in UPDATES:
        streamed.add(update)
    store.put("u/c3", encode_arrays(UPDATES[3].weights))
    keys = {u.client_id: f"u/{u.client_id}" for u in UPDATES}
    assert asyncio.run(streamed.remove(store, keys, ["c3"])) == set()
    expected = _bound(make_strategy("fednova")).aggregate(1, CURRENT, [u for u in UPDATES if u.client_id != "c3"])
    for got, want in zip(streamed.aggregate(1), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_an_update_overwritten_after_it_was_summed_cannot_corrupt_or_end_the_round(tmp_path):
    """A client whose update the round rule rejects rewrites it before the controller takes it back out (a
    compromised function may write its key until the deadline): the sum is built again from the kept updates,
    each checked against its digest, and one that changed too is left out; the round goes on."""
    store = LocalStore(tmp_path)
    strategy = _bound(make_strategy("fednova"))
    streamed = StreamingRound(strategy, CURRENT)
    keys = {u.client_id: f"u/{u.client_id}" for u in UPDATES}
    for update in UPDATES:
        store.put(keys[update.client_id], encode_arrays(update.weights))
        streamed.add(update)
    store.put("u/c4", encode_arrays([layer + 1 for layer in UPDATES[4].weights]))  # rewritten after it was summed
    store.put("u/c1", encode_arrays([layer * 3 for layer in UPDATES[1].weights]))  # a kept one rewritten too
    assert asyncio.run(streamed.remove(store, keys, ["c4"])) == {"c1"}
    kept = [u for u in UPDATES if u.client_id not in ("c1", "c4")]
    expected = _bound(make_strategy("fednova")).aggregate(1, CURRENT, kept)
    for got, want in zip(streamed.aggregate(1), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_rules_that_need_every_update_do_not_reduce_by_a_sum():
    for name in ("fedmedian", "trimmed_mean", "krum", "bulyan", "scaffold"):
        assert make_strategy(name).sum_spec() is None
