"""Faults in whole runs: retries where safe, the quorum rule, late results discarded, every invocation accounted for."""

import asyncio
import collections
import io

import pytest
from rich.console import Console

from fedless_nb.cli import TerminalProgress
from fedless_nb.records.history import History
from fedless_nb.providers import InvocationError, LocalProvider
from fedless_nb.providers.faults import FaultRates, FaultyProvider
from fedless_nb.rounds.events import InvocationFinished, RoundFinished
from fedless_nb.rounds.resilience import (
    TRANSIENT_FUTILE_ROUNDS, FailureTally, NothingTrainedError, QuorumError, RoundPolicy, check_quorum, invoke_with_retries,
)
from fedless_nb.runner import run_experiment


def _retrying(causes, policy, deadline_in=60.0):
    """invoke_with_retries over a call that fails with `causes` in turn, then answers."""
    calls, retried = [], []

    async def invoke(task):
        calls.append(task)
        if len(calls) <= len(causes):
            raise InvocationError(f"attempt {len(calls)}", causes[len(calls) - 1])
        return {"ok": len(calls)}

    async def body():
        loop_time = __import__("time").time()
        return await invoke_with_retries(invoke, {"t": 1}, policy, loop_time + deadline_in, retried.append)

    return asyncio.run(body()), calls, retried


def test_timeouts_crashes_throttling_and_network_failures_are_retried_with_backoff():
    result, calls, retried = _retrying(["throttled", "crash", "network", "timeout"], RoundPolicy(retries=4, retry_backoff=0.01))
    assert result == {"ok": 5} and len(calls) == 5
    assert [(str(e), e.cause) for e in retried] == [
        ("attempt 1 (retried)", "throttled"), ("attempt 2 (retried)", "crash"),
        ("attempt 3 (retried)", "network"), ("attempt 4 (retried)", "timeout")]


@pytest.mark.parametrize("causes, policy, deadline_in", [
    (["error"], RoundPolicy(retries=2, retry_backoff=0.01), 60.0),  # the function's own bug would repeat
    (["invalid"], RoundPolicy(retries=2, retry_backoff=0.01), 60.0),
    (["timeout"] * 3, RoundPolicy(retries=2, retry_backoff=0.01), 60.0),  # out of attempts
    (["timeout"], RoundPolicy(retries=2, retry_backoff=5.0), 1.0),  # the wait would pass the deadline
])
def test_no_retry_where_it_cannot_help(causes, policy, deadline_in):
    with pytest.raises(InvocationError) as raised:
        _retrying(causes, policy, deadline_in)
    assert raised.value.cause == causes[-1] and "(retried)" not in str(raised.value)


@pytest.mark.slow
def test_a_run_at_20_percent_failed_invocations_completes_with_its_quorum(tiny_config):
    config = tiny_config(clients=8, clients_per_round=6, rounds=4, min_successful=4, round_repeats=2,
                         retries=1, retry_backoff=0.05)
    faults = FaultRates(crash=0.1, timeout=0.05, throttle=0.05, seed=11)
    provider = FaultyProvider(LocalProvider("local", workers=2), faults)
    result = run_experiment(config, providers={"local": provider})
    assert result.status == "finished" and len(result.round_metrics) == 4

    history = History(config.history)
    invocations = history.invocations(result.run_id)
    outcomes = collections.Counter(i["outcome"] for i in invocations)
    invoked = provider.invoked
    assert outcomes["succeeded"] + outcomes["failed"] + outcomes["discarded"] == invoked == len(invocations)
    assert outcomes["failed"] == sum(provider.injected[name] for name in ("crash", "timeout", "throttle"))
    assert 0.1 < outcomes["failed"] / invoked < 0.35, outcomes
    assert {i["cause"] for i in invocations if i["outcome"] == "failed"} <= {"crash", "timeout", "throttled"}
    rounds = history.rounds(result.run_id)
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    for row in rounds:
        succeeded = [i for i in invocations if i["round"] == row["round"] and i["outcome"] == "succeeded"]
        assert row["succeeded"] >= 4 and len(succeeded) >= row["succeeded"]


def test_a_round_below_quorum_is_repeated_then_the_run_stops_with_one_line(tiny_config):
    config = tiny_config(rounds=2, min_successful=2, round_repeats=1, retries=0)
    provider = FaultyProvider(LocalProvider("local", workers=2, entry_point="workloads:counting"), FaultRates(crash=1.0))
    progress = TerminalProgress(Console(file=io.StringIO()))
    with pytest.raises(QuorumError) as raised:
        run_experiment(config, providers={"local": provider}, observers=[progress])
    assert len(progress.progress.tasks) == 1, "the repeated round replaces its progress bar"
    message = str(raised.value)
    assert "round 1 got 0 valid updates of 4 selected in 2 runs, fewer than min_successful (2)" in message
    assert "\n" not in message
    history = History(config.history)
    (run,) = history.runs()
    assert run["status"] == "failed" and run["rounds_completed"] == 0 and "QuorumError" in run["error"]
    invocations = history.invocations(run["run_id"])
    assert len(invocations) == 2 * 4 == provider.injected["crash"], "both runs of the round are in the history"
    assert history.rounds(run["run_id"]) == []


@pytest.mark.parametrize("succeeded, runs, counts", [(1, 1, "got 1 valid update of 3 selected in 1 run"),
                                                       (2, 2, "got 2 valid updates of 3 selected in 2 runs")])
def test_the_quorum_line_counts_updates_and_runs_in_words(succeeded, runs, counts):
    """It read 'got 1 valid update(s) of 3 selected in 1 run(s)'."""
    with pytest.raises(QuorumError, match=f"^round 4 {counts}, fewer than min_successful \\(3\\)"):
        check_quorum(4, succeeded, 3, RoundPolicy(min_successful=3, round_repeats=runs - 1), runs)


@pytest.mark.parametrize("strategy, selected, shortfall, remedy", [
    ({"name": "bulyan", "options": {"num_malicious": 1}}, 7, "bulyan needs 4 * num_malicious + 3 = 7 updates a round",
     "lower strategy.options.num_malicious"),
    ({"name": "krum", "options": {"num_malicious": 1, "to_keep": 2}}, 5,
     "krum needs 2 * num_malicious + 3 = 5 updates a round to tolerate num_malicious 1", "lower strategy.options.num_malicious"),
    ({"name": "krum", "options": {"to_keep": 4}}, 4,
     "multi-krum keeps to_keep 4 of the n - num_malicious updates it trusts, so it needs to_keep + num_malicious = 4 "
     "updates a round", "lower strategy.options.to_keep"),
    ({"name": "trimmed_mean", "options": {"beta": 0.2}}, 5, "trimmed_mean with beta 0.2 needs 5 updates a round to trim any",
     "raise strategy.options.beta"),
])
def test_a_robust_round_with_fewer_updates_than_its_rule_needs_is_below_its_quorum(tiny_config, strategy, selected,
                                                                                   shortfall, remedy):
    """Bulyan cannot aggregate fewer than 4f + 3 updates, Krum tolerates f only among 2f + 3 (below, Flower's Krum
    scores by max(1, n - f - 2) neighbours, which two colluding clients win), and a trimmed mean of fewer than
    1 / beta trims nothing (the plain mean). A round that lost some (here the odd clients' updates, tampered in the
    store) is run again, then the run stops with one line (not Bulyan's ValueError from inside the round, nor a
    silently weaker rule), even with min_successful at 0."""
    config = tiny_config(clients=8, clients_per_round=selected, rounds=2, round_repeats=1, retries=0, strategy=strategy)
    provider = LocalProvider("local", workers=2, entry_point="workloads:tampers_with_odd_updates")
    with pytest.raises(QuorumError) as raised:
        run_experiment(config, providers={"local": provider})
    message = str(raised.value)
    assert f"of {selected} selected in 2 runs, fewer than {shortfall}" in message
    assert f"raise clients_per_round or round_repeats, {remedy}" in message and "\n" not in message
    history = History(config.history)
    (run,) = history.runs()
    assert run["status"] == "failed" and "QuorumError" in run["error"]
    invocations = history.invocations(run["run_id"])
    assert len(invocations) == 2 * selected and any(i["outcome"] == "succeeded" for i in invocations)


def test_a_run_whose_every_invocation_failed_ends_failed_with_the_first_reason(tiny_config):
    """Without a quorum a round with no update keeps the model; a run in which no round got one trained nothing,
    and says so instead of finishing with its initial model."""
    config = tiny_config(rounds=2, retries=0)
    provider = FaultyProvider(LocalProvider("local", workers=2, entry_point="workloads:counting"), FaultRates(crash=1.0))
    with pytest.raises(NothingTrainedError) as raised:
        run_experiment(config, providers={"local": provider})
    message = str(raised.value)
    assert message.startswith("no client function returned a valid update in 2 rounds (8 invocations failed")
    assert "the first failed invocation: client-" in message and "in round 1 (crash): " in message
    assert "\n" not in message
    history = History(config.history)
    (run,) = history.runs()
    assert run["status"] == "failed" and run["rounds_completed"] == 2 and "NothingTrainedError" in run["error"]
    assert len(history.rounds(run["run_id"])) == 2, "both rounds stay in the history"


def test_a_run_whose_first_rounds_all_failed_stops_after_three_of_them(tiny_config):
    """Every invocation crashes: the run went on through all its rounds, each failing the same way, before it said
    so. It stops after its first three, in the same one line, which says it stopped there."""
    config = tiny_config(rounds=10, retries=0)
    provider = FaultyProvider(LocalProvider("local", workers=2, entry_point="workloads:counting"), FaultRates(crash=1.0))
    with pytest.raises(NothingTrainedError) as raised:
        run_experiment(config, providers={"local": provider})
    assert str(raised.value).startswith("no client function returned a valid update in its first 3 rounds of 10, so "
                                        "it stopped there (12 invocations failed")
    history = History(config.history)
    (run,) = history.runs()
    assert run["status"] == "failed" and run["rounds_completed"] == 3 and "NothingTrainedError" in run["error"]
    assert len(history.rounds(run["run_id"])) == 3


def test_an_async_run_whose_every_client_failed_ends_as_a_synchronous_one_keeping_its_rounds(tiny_config, tmp_path):
    """FedBuff ended with a RuntimeError ('every client failed on global version 0; no update to aggregate', a
    traceback) where a synchronous run ends with NothingTrainedError quoting the first failure. A version every
    client failed on keeps the model, as a synchronous round without an update does, so the same rule stops it."""
    from fedless_nb.rounds.checkpoint import checkpoint_key, decode_checkpoint
    from fedless_nb.store import LocalStore

    config = tiny_config(rounds=10, clients=4, retries=0, mode="async", asynchronous={"concurrency": 2, "buffer_size": 2})
    provider = FaultyProvider(LocalProvider("local", workers=2, entry_point="workloads:counting"), FaultRates(crash=1.0))
    with pytest.raises(NothingTrainedError) as raised:
        run_experiment(config, providers={"local": provider})
    message = str(raised.value)
    assert message.startswith("no client function returned a valid update in its first 3 rounds of 10, so it stopped "
                              "there (12 invocations failed or were refused); the first failed invocation: client-")
    assert "in round 1 (crash): " in message and message.endswith("fix that and run again (the history lists every "
                                                                   "invocation with its reason)")
    history = History(config.history)
    (run,) = history.runs()
    assert run["status"] == "failed" and run["rounds_completed"] == 3 and "NothingTrainedError" in run["error"]
    assert [r["succeeded"] for r in history.rounds(run["run_id"])] == [0, 0, 0]
    assert len(history.invocations(run["run_id"])) == 12
    assert decode_checkpoint(LocalStore(tmp_path / "store").get(checkpoint_key(run["run_id"]))).round == 3


class _FaultyUntil(FaultyProvider):
    """Fault injection in the run's first `rounds` rounds only (a platform warming up, a burst of throttling)."""

    def __init__(self, rates, rounds):
        super().__init__(LocalProvider("local", workers=2), rates)
        self.rounds = rounds

    async def invoke(self, task):
        return await (super().invoke(task) if task["round"] <= self.rounds else self.inner.invoke(task))


def test_a_run_whose_first_rounds_failed_only_transiently_goes_on_and_trains():
    """Three rounds of throttling and cold starts past the deadline stopped the run as futile, though round 4 trained."""
    tally = FailureTally()
    for round_number, cause in ((1, "throttled"), (2, "deadline"), (3, "timeout"), (4, "network")):
        tally(InvocationFinished("r", round_number, "client-0001", "local", "failed", 0.0, 1.0, cause=cause))
        tally(RoundFinished("r", round_number, 0.0, 1.0, 1, 0, 1, {}, {}))
        assert not tally.futile(), round_number


def test_a_run_whose_failures_turned_lasting_stops_three_rounds_after_the_last_transient_one():
    tally = FailureTally()
    for round_number, cause in enumerate(["throttled", "error", "invalid", "rejected"], start=1):
        tally(InvocationFinished("r", round_number, "client-0001", "local", "failed", 0.0, 1.0, cause=cause))
        tally(RoundFinished("r", round_number, 0.0, 1.0, 1, 0, 1, {}, {}))
        assert tally.futile() == (round_number == 4), round_number
    assert tally.nothing_trained(4, 10).args[0].endswith(
        "; by cause: 1 throttled, 1 error, 1 invalid, 1 rejected; fix what failed with error or invalid or rejected; for "
        "throttled, lower the calls at once (the providers' workers or clients_per_round) or raise the platform's limits; "
        "then run again (the history lists every invocation with its reason)")


def test_throttled_first_rounds_do_not_stop_a_run_that_trains_after_them(tiny_config):
    config = tiny_config(rounds=5, clients=4, retries=0)
    result = run_experiment(config, providers={"local": _FaultyUntil(FaultRates(throttle=1.0), rounds=4)})
    assert result.status == "finished"
    assert [r["succeeded"] for r in History(config.history).rounds(result.run_id)] == [0, 0, 0, 0, 4]


def test_a_run_of_only_transient_failures_ends_after_more_rounds_naming_what_to_change(tiny_config):
    """Never forever: it ends after TRANSIENT_FUTILE_ROUNDS failed rounds, the line naming each cause's remedy."""
    config = tiny_config(rounds=TRANSIENT_FUTILE_ROUNDS + 2, clients=4, retries=0)
    provider = _FaultyUntil(FaultRates(throttle=0.5, timeout=0.5, seed=3), rounds=config.rounds)
    with pytest.raises(NothingTrainedError) as raised:
        run_experiment(config, providers={"local": provider})
    message = str(raised.value)
    assert message.startswith(f"no client function returned a valid update in its first {TRANSIENT_FUTILE_ROUNDS} "
                              f"rounds of {config.rounds}, so it stopped there ({4 * TRANSIENT_FUTILE_ROUNDS} invocations")
    assert "; by cause: " in message and "throttled" in message and "timeout" in message and "\n" not in message
    assert message.endswith("; for throttled, lower the calls at once (the providers' workers or clients_per_round) "
                            "or raise the platform's limits; for timeout, raise the providers' timeout; then run again "
                            "(the history lists every invocation with its reason)") or message.endswith(
        "; for timeout, raise the providers' timeout; for throttled, lower the calls at once (the providers' workers or "
        "clients_per_round) or raise the platform's limits; then run again (the history lists every invocation with "
        "its reason)")
    (run,) = History(config.history).runs()
    assert run["status"] == "failed" and run["rounds_completed"] == TRANSIENT_FUTILE_ROUNDS


def test_an_async_run_of_only_transient_failures_follows_the_same_rule(tiny_config):
    config = tiny_config(rounds=TRANSIENT_FUTILE_ROUNDS + 2, clients=4, retries=0, mode="async",
                         asynchronous={"concurrency": 2, "buffer_size": 2})
    provider = _FaultyUntil(FaultRates(throttle=1.0), rounds=4)
    result = run_experiment(config, providers={"local": provider})
    assert result.status == "finished"
    succeeded = [r["succeeded"] for r in History(config.history).rounds(result.run_id)]
    assert succeeded[:3] == [0, 0, 0] and sum(succeeded) > 0, succeeded
    config = tiny_config(rounds=TRANSIENT_FUTILE_ROUNDS + 2, clients=4, retries=0, mode="async",
                         asynchronous={"concurrency": 2, "buffer_size": 2}, history=str(config.history) + ".2")
    with pytest.raises(NothingTrainedError, match=f"in its first {TRANSIENT_FUTILE_ROUNDS} rounds of "
                                                  f"{TRANSIENT_FUTILE_ROUNDS + 2}, so it stopped there .*; by cause: "
                                                  r"\d+ throttled; for throttled, lower the calls at once"):
        run_experiment(config, providers={"local": _FaultyUntil(FaultRates(throttle=1.0), rounds=config.rounds)})


class _CrashesAfter(LocalProvider):
    """A local provider that answers its first `answers` calls and crashes every later one."""

    def __init__(self, answers):
        super().__init__("local", workers=2)
        self.answers = answers

    async def invoke(self, task):
        self.answers -= 1
        if self.answers < 0:
            raise InvocationError("injected fault: the function's process exited with code 137", "crash")
        return await super().invoke(task)


def test_an_async_version_every_client_failed_on_keeps_the_model_and_the_run_goes_on(tiny_config):
    config = tiny_config(rounds=3, clients=2, clients_per_round=2, retries=0, mode="async",
                         asynchronous={"concurrency": 2, "buffer_size": 2})
    result = run_experiment(config, providers={"local": _CrashesAfter(2)})
    assert result.status == "finished"
    assert [r["succeeded"] for r in History(config.history).rounds(result.run_id)] == [2, 0, 0]
    assert result.round_metrics[2] == result.round_metrics[1] == result.round_metrics[0], "2 and 3 kept version 1's model"


def test_a_run_with_one_valid_update_is_not_failed_for_its_empty_rounds(tiny_config):
    config = tiny_config(rounds=3, clients=1, clients_per_round=1, retries=0)
    # under this seed the one client crashes in rounds 1 and 3 and answers in round 2
    provider = FaultyProvider(LocalProvider("local", workers=1), FaultRates(crash=0.5, seed=1))
    result = run_experiment(config, providers={"local": provider})
    history = History(config.history)
    outcomes = [(row["round"], row["outcome"]) for row in history.invocations(result.run_id)]
    assert sorted(outcomes) == [(1, "failed"), (2, "succeeded"), (3, "failed")]
    assert result.status == "finished"

def test_a_function_that_wrote_its_update_and_then_died_is_retried_not_refused_as_a_replay(tiny_config):
    """The retry gets a fresh token and the update the dead attempt left is deleted first: otherwise the
    function would refuse the retry as a replay of a task whose update exists."""
    config = tiny_config(rounds=1, clients_per_round=4)
    provider = LocalProvider("local", workers=2, entry_point="workloads:crashes_after_writing_once")
    result = run_experiment(config, providers={"local": provider})
    invocations = History(config.history).invocations(result.run_id)
    outcomes = collections.Counter((i["client_id"], i["outcome"], i["cause"]) for i in invocations)
    assert len(outcomes) == 8 and set(outcomes.values()) == {1}
    assert {outcome for _, outcome, _ in outcomes} == {"failed", "succeeded"}
    assert {cause for _, outcome, cause in outcomes if outcome == "failed"} == {"crash"}
    assert History(config.history).rounds(result.run_id)[0]["succeeded"] == 4

def test_a_late_result_of_an_earlier_round_is_discarded_not_aggregated(tiny_config):
    config = tiny_config(rounds=2, clients_per_round=3)
    provider = LocalProvider("local", workers=2, entry_point="workloads:answers_an_earlier_round")
    result = run_experiment(config, providers={"local": provider})
    invocations = History(config.history).invocations(result.run_id)
    by_round = {r: [i for i in invocations if i["round"] == r] for r in (1, 2)}
    assert [i["outcome"] for i in by_round[1]] == ["succeeded"] * 3
    assert [(i["outcome"], i["cause"]) for i in by_round[2]] == [("discarded", "late")] * 3
    assert "a late result of round 1 arrived in round 2" in by_round[2][0]["error"]
    assert result.round_metrics[1] == result.round_metrics[0], "round 2 kept round 1's model"


class _FailsFirstCall(LocalProvider):
    """A local provider whose first call for `client_id` crashes: that round misses its quorum once."""

    def __init__(self, client_id):
        super().__init__("local", workers=2)
        self.client_id, self.failed = client_id, False

    async def invoke(self, task):
        if task["client_id"] == self.client_id and not self.failed:
            self.failed = True
            raise InvocationError("injected fault: the function's process exited with code 137", "crash")
        return await super().invoke(task)


def test_a_repeated_round_is_answered_by_the_clients_that_succeeded_the_first_time(tiny_config):
    """The repeat writes the same update keys; the first run's updates are cleared, so no function refuses
    the repeat's task as a replay of its own earlier update."""
    config = tiny_config(clients=3, clients_per_round=3, rounds=1, min_successful=3, round_repeats=1, retries=0)
    result = run_experiment(config, providers={"local": _FailsFirstCall("client-0000")})
    assert result.status == "finished"
    invocations = History(config.history).invocations(result.run_id)
    assert [i["outcome"] for i in invocations].count("succeeded") == 2 + 3, [(i["client_id"], i["error"]) for i in invocations]
    assert [i["cause"] for i in invocations if i["outcome"] == "failed"] == ["crash"]


class _ResendsItsFirstResult(LocalProvider):
    """A compromised function of client-0001 that answers every task after its first with its first signed result."""

    def __init__(self):
        super().__init__("local", workers=2)
        self.first = None

    async def invoke(self, task):
        if task["client_id"] != "client-0001" or self.first is None:
            result = await super().invoke(task)
            self.first = result if task["client_id"] == "client-0001" else self.first
            return result
        return self.first


def test_an_async_client_resending_its_first_signed_result_is_discarded_as_late(tiny_config):
    """FedBuff takes a result for the task it dispatched only: the same signed result sent again for a later global
    version is late, never a second update in the buffer (its staleness is the controller's count, not a claim)."""
    config = tiny_config(clients=2, clients_per_round=2, rounds=3, retries=0, mode="async",
                         asynchronous={"concurrency": 2, "buffer_size": 2})
    result = run_experiment(config, providers={"local": _ResendsItsFirstResult()})
    resent = [i for i in History(config.history).invocations(result.run_id) if i["client_id"] == "client-0001"]
    assert [(i["round"], i["outcome"], i["cause"]) for i in resent] == [(1, "succeeded", None), (2, "discarded", "late"),
                                                                         (3, "discarded", "late")]
    assert "a late result of round 1 arrived in round 2" in resent[1]["error"]
