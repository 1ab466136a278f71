"""Fault injection: deterministic under a seed, each fault the way a platform shows it, usable from config."""

import asyncio
import collections
import time

import pytest

from fedless_nb.experiment import ConfigError, ExperimentConfig
from fedless_nb.records.history import History
from fedless_nb.providers import InvocationError, LocalProvider
from fedless_nb.providers.faults import FaultRates, FaultyProvider
from fedless_nb.providers.registry import make_provider
from fedless_nb.runner import run_experiment


def _outcomes(rates, invocations=2000):
    draws = [rates.draw(1 + i // 100, f"client-{i % 100:04d}", 0) for i in range(invocations)]
    return collections.Counter(failure for failure, _, _ in draws), draws


def test_draws_follow_the_rates_and_repeat_under_the_seed():
    rates = FaultRates(timeout=0.05, crash=0.1, throttle=0.05, garbage=0.1, slow_start=0.2, seed=7)
    counts, draws = _outcomes(rates)
    for name, rate in (("timeout", 0.05), ("crash", 0.1), ("throttle", 0.05), ("garbage", 0.1)):
        assert abs(counts[name] / 2000 - rate) < 0.03, (name, counts)
    assert abs(sum(slow for *_, slow in draws) / 2000 - 0.2) < 0.03
    assert {kind for _, kind, _ in draws if kind} == {"not_an_object", "wrong_fields", "malformed"}
    assert _outcomes(rates)[1] == draws, "the same seed injects the same faults"
    assert _outcomes(FaultRates(crash=0.1, seed=8))[1] != _outcomes(FaultRates(crash=0.1, seed=7))[1]


def test_a_retried_invocation_gets_a_fresh_draw():
    rates = FaultRates(crash=0.5, seed=1)
    assert len({rates.draw(1, "client-0001", attempt)[0] for attempt in range(20)}) == 2


def _invoke_all(provider, tasks):
    async def body():
        try:
            return await asyncio.gather(*(provider.invoke(task) for task in tasks), return_exceptions=True)
        finally:
            await provider.close()

    return asyncio.run(body())


def _tasks(count):
    return [{"round": 1, "client_id": f"client-{i:04d}", "echo": i} for i in range(count)]


@pytest.mark.parametrize("fault, cause", [("timeout", "timeout"), ("crash", "crash"), ("throttle", "throttled")])
def test_each_failure_is_an_invocation_error_with_its_cause(fault, cause):
    provider = FaultyProvider(LocalProvider(workers=1, entry_point="workloads:counting"), FaultRates(**{fault: 1.0}))
    results = _invoke_all(provider, _tasks(3))
    assert all(isinstance(r, InvocationError) and r.cause == cause and "injected fault" in str(r) for r in results)
    assert provider.injected == {fault: 3}


def test_garbage_answers_are_not_results():
    provider = FaultyProvider(LocalProvider(workers=1, entry_point="workloads:counting"), FaultRates(garbage=1.0, seed=3))
    results = _invoke_all(provider, _tasks(30))
    kinds = collections.Counter(
        "not_an_object" if isinstance(r, str) else "malformed" if r.get("num_examples") == "many" else "wrong_fields"
        for r in results
    )
    assert set(kinds) == {"not_an_object", "wrong_fields", "malformed"}
    assert all("pid" in r and r["echo"] is not None for r in results if isinstance(r, dict)), "the function did run"


def test_no_fault_passes_the_inner_result_through_and_slow_starts_delay():
    inner = LocalProvider(workers=2, entry_point="workloads:counting")
    provider = FaultyProvider(inner, FaultRates(slow_start=1.0, slow_start_seconds=0.5))
    started = time.monotonic()
    results = _invoke_all(provider, _tasks(2))
    assert [r["echo"] for r in results] == [0, 1]
    assert time.monotonic() - started >= 0.5
    assert provider.injected == {"slow_start": 2}
    assert provider.describe()["faults"]["slow_start"] == 1.0 and provider.describe()["kind"] == "local"


@pytest.mark.parametrize("faults, message", [
    ({"crash": 1.5}, "providers[0].faults.crash: must be a rate between 0 and 1, got 1.5"),
    ({"crahs": 0.1}, "providers[0].faults.crahs: unknown fault setting"),
    ({"crash": 0.6, "timeout": 0.6}, "the failure rates add up to 1.2, more than 1"),
    ({"slow_start_seconds": -1}, "providers[0].faults.slow_start_seconds: must be >= 0 seconds"),
])
def test_config_refuses_impossible_faults_naming_the_key(faults, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        ExperimentConfig.from_dict({"providers": [{"kind": "local", "faults": faults}]})


def test_config_faults_wrap_the_provider():
    config = ExperimentConfig.from_dict({"providers": [{"kind": "local", "faults": {"crash": 0.2, "seed": 4}}]})
    provider = make_provider(config.providers[0])
    assert isinstance(provider, FaultyProvider) and isinstance(provider.inner, LocalProvider)
    assert provider.rates == FaultRates(crash=0.2, seed=4)
    assert isinstance(make_provider(ExperimentConfig().providers[0]), LocalProvider)


def test_a_run_under_faults_records_every_injected_failure(tiny_config):
    """Crashes, throttling and each kind of garbage answer are recorded failures, never aggregated."""
    config = tiny_config(rounds=3, retries=0, providers=[{"kind": "local", "faults": {"crash": 0.15, "throttle": 0.1, "garbage": 0.25, "seed": 2}}])
    result = run_experiment(config)
    assert result.status == "finished"
    invocations = History(config.history).invocations(result.run_id)
    assert len(invocations) == 3 * 4
    causes = collections.Counter(i["cause"] for i in invocations if i["outcome"] == "failed")
    assert causes["crash"] and causes["throttled"] and causes["invalid"], causes
    succeeded = [i for i in invocations if i["outcome"] == "succeeded"]
    assert succeeded and all(i["num_examples"] > 0 for i in succeeded)


@pytest.mark.slow
def test_a_deadline_shorter_than_every_cold_start_ends_the_run_naming_round_deadline(tiny_config):
    """Every call starts slowly (3 s) past a 1 s round deadline: deadline misses are transient (a warm platform may
    make it), so the run goes on past three rounds, but not forever: it ends after 10, naming round_deadline."""
    from fedless_nb.rounds.resilience import TRANSIENT_FUTILE_ROUNDS, NothingTrainedError

    config = tiny_config(rounds=TRANSIENT_FUTILE_ROUNDS + 2, clients=2, clients_per_round=2, retries=0,
                         round_deadline=1, providers=[{"kind": "local", "faults": {"slow_start": 1.0,
                                                                                   "slow_start_seconds": 3}}])
    with pytest.raises(NothingTrainedError) as raised:
        run_experiment(config)
    assert str(raised.value).startswith(f"no client function returned a valid update in its first "
                                        f"{TRANSIENT_FUTILE_ROUNDS} rounds of {TRANSIENT_FUTILE_ROUNDS + 2}, so it "
                                        f"stopped there ({2 * TRANSIENT_FUTILE_ROUNDS} invocations failed")
    assert str(raised.value).endswith(f"; by cause: {2 * TRANSIENT_FUTILE_ROUNDS} deadline; for deadline, raise "
                                      "round_deadline; then run again (the history lists every invocation with its reason)")
    (run,) = History(config.history).runs()
    assert run["status"] == "failed" and run["rounds_completed"] == TRANSIENT_FUTILE_ROUNDS
