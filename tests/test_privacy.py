"""DP-SGD in the client step, the accountant against tensorflow-privacy, budgets, reports, and a DP run on digits."""

import asyncio
import re

import numpy as np
import pytest

from fedless_nb.function import handler as client
from fedless_nb.function.batching import local_steps
from fedless_nb.function.handler import handle
from fedless_nb.wire import SECAGG_STAGES, PayloadError
from fedless_nb.privacy.accounting import DpRound, ExampleLevelAccountant, PrivacyBudgetExhausted, PrivacyReport, epsilon
from fedless_nb.rounds.selection import BudgetedSelection, RandomSelection
from fedless_nb.store import LocalStore, decode_arrays

from client_tasks import client_task
from dp_reference import releases_epsilon


@pytest.fixture(autouse=True)
def fresh_process_state(monkeypatch):
    monkeypatch.setattr(client, "_STATE", client._WarmState())


@pytest.fixture
def dp_task(tmp_path):
    return client_task(tmp_path, dp={"l2_norm_clip": 1.0, "noise_multiplier": 1.1, "num_microbatches": 4,
                                     "sampling": "shuffle"})


def _change(task):
    store = LocalStore(task["store"]["root"])
    return max(float(np.max(np.abs(u - g))) for u, g in zip(decode_arrays(store.get(task["update"])),
                                                            decode_arrays(store.get("global"))))


def test_fixed_size_dp_sgd_reports_its_steps(dp_task):
    result = handle(dp_task)
    # 40 examples, batch 16: two fixed-size batches per epoch
    assert result["privacy"] == {"steps": 4, "sampling_rate": 0.4, "batch_size": 16, "num_examples": 40,
                                 "noise_multiplier": 1.1, "l2_norm_clip": 1.0, "microbatch_size": 4, "sampling": "shuffle"}
    assert set(result["metrics"]) == {"loss", "accuracy"} and np.isfinite(result["metrics"]["loss"])


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_dp_optimizers_train_when_microbatches_do_not_divide_the_batch(dp_task, optimizer):
    dp_task["train"].update(optimizer=optimizer, dp={"l2_norm_clip": 1.0, "noise_multiplier": 0.5, "num_microbatches": 3,
                                                        "sampling": "shuffle"})
    result = handle(dp_task)
    assert result["privacy"]["batch_size"] == 15 and result["privacy"]["steps"] == 4
    assert _change(dp_task) > 0
    from tensorflow_privacy.privacy.optimizers import dp_optimizer_keras as dp

    expected = dp.GenericDPSGDOptimizer if optimizer == "sgd" else dp.GenericDPAdamOptimizer
    assert isinstance(client._STATE.compiled.model.optimizer, expected)


def test_clipping_bounds_each_step_and_dp_settings_key_the_cache(dp_task):
    dp_task["train"].update(epochs=1, dp={"l2_norm_clip": 1e-4, "noise_multiplier": 0.0, "num_microbatches": 16,
                                          "sampling": "shuffle"})
    handle(dp_task)
    first = client._STATE.compiled
    # SGD without noise moves a weight by at most lr * clip per step: 2 steps * 0.1 * 1e-4
    assert 0 < _change(dp_task) <= 2 * 0.1 * 1e-4 * 1.0001
    dp_task["train"]["dp"] = {"l2_norm_clip": 1.0, "noise_multiplier": 0.0, "num_microbatches": 16, "sampling": "shuffle"}
    handle(dp_task)
    assert client._STATE.compiled is not first, "a new clip norm builds a new DP optimizer"
    assert _change(dp_task) > 2 * 0.1 * 1e-4


@pytest.mark.parametrize("realized", [1, 4])
def test_poisson_dp_sgd_noise_does_not_scale_with_the_realized_batch_size(realized):
    """Under Poisson sampling the realized batch size is secret (it tells whether an example was drawn):
    the noised sum is divided by the expected size, so the noise an update shows is the same for any batch."""
    from fedless_nb._tf import tensorflow
    from fedless_nb.privacy.dp_sgd import make_dp_optimizer, set_expected_batch_size

    tf = tensorflow()
    x = tf.constant([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [3.0, 0.0]])
    w = tf.Variable([0.0, 0.0])
    exact = make_dp_optimizer("sgd", 1.0, 100.0, 0.0, None, poisson=True)
    set_expected_batch_size(exact, 5)
    with tf.GradientTape() as tape:
        loss = tf.linalg.matvec(x[:realized], w)
    exact.minimize(loss, [w], tape=tape)
    np.testing.assert_allclose(w.numpy(), -np.sum(x[:realized], axis=0) / 5, rtol=1e-6)

    wide = tf.Variable(tf.zeros([40_000]))
    noisy = make_dp_optimizer("sgd", 1.0, 1.0, 2.0, None, poisson=True)
    set_expected_batch_size(noisy, 5)
    with tf.GradientTape() as tape:
        loss = tf.linalg.matvec(tf.zeros([realized, 40_000]), wide)
    noisy.minimize(loss, [wide], tape=tape)
    assert np.std(wide.numpy()) == pytest.approx(2.0 * 1.0 / 5, rel=0.03)


def test_a_poisson_client_divides_by_its_expected_batch_size(tmp_path):
    task = client_task(tmp_path, examples=40, epochs=1, batch_size=6,
                       dp={"l2_norm_clip": 1.0, "noise_multiplier": 1.0, "sampling": "poisson"})
    handle(task)
    assert float(client._STATE.compiled.model.optimizer.expected_batch_size.numpy()) == 6.0


def test_a_client_with_fewer_examples_than_microbatches_is_refused(dp_task):
    dp_task["train"]["dp"]["num_microbatches"] = 64
    with pytest.raises(PayloadError, match="40 examples, fewer than dp.num_microbatches"):
        handle(dp_task)


def test_local_steps_with_and_without_dp():
    assert local_steps(40, {"epochs": 2, "batch_size": 16}) == 6
    assert local_steps(40, {"epochs": 2, "batch_size": 16, "dp": {"num_microbatches": 4, "sampling": "shuffle"}}) == 4
    assert local_steps(40, {"epochs": 2, "batch_size": 16, "dp": {}}) == 5, "Poisson: ceil(epochs * n / batch)"
    assert local_steps(10, {"epochs": 1, "batch_size": 16, "dp": {"sampling": "shuffle"}}) == 1


# accounting ---------------------------------------------------------------------------------

def _statement_epsilon(n, batch_size, epochs, noise, delta, microbatching, accountant):
    from tensorflow_privacy.privacy.analysis import compute_dp_sgd_privacy_lib as lib

    statement = lib.compute_dp_sgd_privacy_statement(
        number_of_examples=n, batch_size=batch_size, num_epochs=epochs, noise_multiplier=noise, delta=delta,
        used_microbatching=microbatching, accountant_type=lib.AccountantType[accountant.upper()])
    return float(re.search(r"Epsilon assuming Poisson sampling \(\*\):\s+([0-9.]+)", statement).group(1))


@pytest.mark.parametrize("n, batch_size, epochs, noise, microbatching, accountant", [
    (1000, 50, 3, 1.1, False, "rdp"),
    (1000, 50, 3, 1.1, True, "rdp"),
    (600, 60, 5, 0.8, False, "rdp"),
    (1000, 50, 3, 1.1, False, "pld"),
])
def test_epsilon_agrees_with_tensorflow_privacys_statement(n, batch_size, epochs, noise, microbatching, accountant):
    delta = 1e-5
    expected = _statement_epsilon(n, batch_size, epochs, noise, delta, microbatching, accountant)
    round_ = DpRound(steps=epochs * n // batch_size, sampling_rate=batch_size / n, noise_multiplier=noise,
                     microbatch_size=2 if microbatching else 1)
    assert epsilon([round_], delta, accountant) == pytest.approx(expected, abs=1e-3)
    # the same steps spread over rounds compose to the same epsilon
    per_round = DpRound(n // batch_size, batch_size / n, noise, microbatch_size=round_.microbatch_size)
    assert epsilon([per_round] * epochs, delta, accountant) == pytest.approx(expected, abs=2e-3)


def test_epsilon_grows_with_rounds_and_falls_with_noise():
    rounds = [DpRound(20, 0.1, 1.0)]
    assert epsilon(rounds * 2, 1e-5) > epsilon(rounds, 1e-5) > 0
    assert epsilon([DpRound(20, 0.1, 2.0)], 1e-5) < epsilon(rounds, 1e-5)
    assert epsilon([], 1e-5) == 0.0 and epsilon([DpRound(20, 0.1, 0.0)], 1e-5) == float("inf")


class _Invocation:
    def __init__(self, client_id, outcome="succeeded", stage=None, cause=None):
        self.client_id, self.outcome, self.stage, self.cause = client_id, outcome, stage, cause


def _facts(steps=20, sampling_rate=0.1, noise=1.0, clip=1.0):
    return {"steps": steps, "sampling_rate": sampling_rate, "batch_size": 4, "num_examples": 40,
            "noise_multiplier": noise, "l2_norm_clip": clip, "microbatch_size": 1, "sampling": "poisson"}


def test_budget_skips_exhausted_clients_or_stops_the_run():
    one_round = epsilon([DpRound(20, 0.1, 1.0)], 1e-5)
    two_rounds = epsilon([DpRound(20, 0.1, 1.0)] * 2, 1e-5)
    accountant = ExampleLevelAccountant(1e-5, target_epsilon=(one_round + two_rounds) / 2,
                                        expected_facts={c: _facts() for c in "abc"})
    accountant(_Invocation("a"))
    accountant(_Invocation("b", outcome="failed", cause="throttled"))  # never ran
    assert accountant.epsilon("a") == pytest.approx(one_round) and accountant.epsilon("b") == 0.0
    assert not accountant.allows("a") and accountant.allows("b") and accountant.allows("c")

    skipping = BudgetedSelection(RandomSelection(0), accountant)
    assert skipping.select(2, ["a", "b", "c"], 2) == ["b", "c"]
    assert accountant.round_metrics(2)["clients_skipped"] == 1.0
    assert accountant.round_metrics(2)["epsilon_max"] == pytest.approx(one_round)
    assert skipping.select(2, ["a", "b"], 2) == ["b"], "fewer clients when too few have budget"
    with pytest.raises(PrivacyBudgetExhausted, match="round 2 would take 1 client past target_epsilon"):
        BudgetedSelection(RandomSelection(0), accountant, stop_run=True).select(2, ["a", "b", "c"], 2)
    with pytest.raises(PrivacyBudgetExhausted):
        skipping.select(3, ["a"], 1)
    accountant.close()


def test_a_budget_checks_each_selected_client_at_the_round_its_straggler_draw_gave_it():
    """A cut round (10 steps) fits the target, a planned one (20) does not: every client may be selected, and the
    draw decides; a client it leaves its full epochs sits the round out (skip_client) or ends the run (stop_run)."""
    cut, planned = epsilon([DpRound(10, 0.1, 1.0)], 1e-5), epsilon([DpRound(20, 0.1, 1.0)], 1e-5)
    accountant = ExampleLevelAccountant(1e-5, target_epsilon=(cut + planned) / 2,
                                        expected_facts={c: _facts() for c in "abcd"},
                                        straggler_steps=lambda client, budget_epochs: 10, straggler_cut=0.5)
    accountant.check_reachable(stop_run=True)  # one cut round fits every client
    skipping = BudgetedSelection(RandomSelection(0), accountant)
    assert skipping.select(1, list("abcd"), 4) == list("abcd")
    assert skipping.admit(1, list("abcd"), {"a": 0.5, "c": 0.5}) == ["a", "c"]
    assert accountant.round_metrics(1)["clients_skipped"] == 2.0
    with pytest.raises(PrivacyBudgetExhausted, match="round 1's straggler draw leaves 2 of its 4 clients their full epochs"):
        BudgetedSelection(RandomSelection(0), accountant, stop_run=True).admit(1, list("abcd"), {"a": 0.5, "c": 0.5})
    with pytest.raises(PrivacyBudgetExhausted, match="leaves 2 of its 2 clients their full epochs"):  # none fits: the run ends
        skipping.admit(2, ["b", "d"], {})
    accountant.charge("a", 0.5)
    assert accountant.epsilon("a") == pytest.approx(cut)
    assert not accountant.allows("a") and accountant.allows("b"), "a second cut round is a planned one's 20 steps"
    accountant.close()


def test_a_secure_round_spends_one_dp_round_though_every_stage_succeeds():
    import dp_accounting

    accountant = ExampleLevelAccountant(1e-5, expected_facts={"a": _facts()})
    for stage in SECAGG_STAGES:
        accountant(_Invocation("a", stage=stage))
    step = dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.0))
    reference = dp_accounting.rdp.RdpAccountant().compose(dp_accounting.SelfComposedDpEvent(step, 20)).get_epsilon(1e-5)
    assert accountant.epsilon("a") == pytest.approx(reference, rel=1e-9)
    assert accountant.report("a").rounds == 1
    accountant.close()


def test_privacy_report_states_what_dp_fy_ml_asks():
    accountant = ExampleLevelAccountant(1e-5, accountant="pld",
                                        expected_facts={"a": _facts(30, 0.05, 1.3, 0.8)})
    accountant(_Invocation("a"))
    report = accountant.worst_case()
    assert isinstance(report, PrivacyReport) and report.granularity == "example-level"
    text = str(report)
    for needle in ("epsilon = ", "delta = 1e-05", "PLD accountant", "unit: one example", "add-or-remove-one adjacency",
                   "Poisson", "example-level", "noise multiplier 1.3", "clip norm 0.8", "30 steps", "sampling rate 0.05",
                   "over 1 release"):  # one release, counted in the singular (it read 'over 1 round(s)')
        assert needle in text, needle
    assert "round(s)" not in text
    assert report.to_dict()["epsilon"] == pytest.approx(accountant.epsilon("a"))
    assert report.to_dict()["unit"] == "example" and report.to_dict()["sampling"] == "poisson"
    accountant.close()


# a whole DP run ------------------------------------------------------------------------------

@pytest.mark.slow
def test_fedprox_and_scaffold_spend_the_epsilon_fedavg_spends(tiny_config):
    """Their local terms depend on no example and join DP-SGD's gradient after its clip and noise (post-processing):
    each round's epsilon is FedAvg's, from the same accountant facts, which every client reports as FedAvg's do."""
    from fedless_nb.records.history import History
    from fedless_nb.runner import run_experiment

    epsilons = {}
    for strategy in ({"name": "fedavg"}, {"name": "fedprox", "options": {"proximal_mu": 0.5}}, {"name": "scaffold"}):
        config = tiny_config(name=strategy["name"], strategy=strategy, clients=4, clients_per_round=2,
                             train={"epochs": 1, "batch_size": 32, "learning_rate": 0.1,
                                    "dp": {"l2_norm_clip": 1.0, "noise_multiplier": 1.0}})
        result = run_experiment(config)
        epsilons[strategy["name"]] = [r["privacy_epsilon_max"] for r in History(config.history).rounds(result.run_id)]
    assert len(epsilons["fedavg"]) == 2 and all(0 < epsilon < np.inf for epsilon in epsilons["fedavg"])
    assert epsilons["fedprox"] == epsilons["fedavg"] and epsilons["scaffold"] == epsilons["fedavg"]


@pytest.mark.slow
def test_more_noise_means_lower_epsilon_and_lower_accuracy_on_digits(tiny_config):
    from fedless_nb.records.history import History
    from fedless_nb.runner import run_experiment

    outcomes = []
    for noise in (0.5, 2.0, 8.0):
        config = tiny_config(
            name=f"dp-{noise}", clients=4, clients_per_round=4, rounds=3,
            model={"builder": "mlp", "options": {"hidden_units": [32]}},
            train={"epochs": 1, "batch_size": 16, "learning_rate": 0.5,
                   "dp": {"l2_norm_clip": 1.0, "noise_multiplier": noise}},
        )
        result = run_experiment(config)
        rounds = History(config.history).rounds(result.run_id)
        epsilons = [r["privacy_epsilon_max"] for r in rounds]
        assert epsilons == sorted(epsilons) and epsilons[0] > 0, "epsilon grows round by round"
        report = result.privacy_report()
        assert report.epsilon == pytest.approx(epsilons[-1]) and report.noise_multiplier == noise
        outcomes.append((noise, result.final_accuracy, epsilons[-1]))
    print(outcomes)
    (_, low_noise_accuracy, low_noise_eps), _, (_, high_noise_accuracy, high_noise_eps) = outcomes
    assert [eps for _, _, eps in outcomes] == sorted([eps for _, _, eps in outcomes], reverse=True)
    assert low_noise_eps > high_noise_eps
    assert low_noise_accuracy > high_noise_accuracy + 0.1


def test_fedbuff_with_a_privacy_budget_lets_the_clients_in_flight_finish(tiny_config):
    """FedBuff, two clients training at a time, one update per version, a target that fits one round per client. The
    third version leaves every client not training out of budget while the fourth still trains: the run ended there
    and cancelled it (3 versions, one client never charged); now it ends once that client is back, each client charged
    dp-accounting's epsilon for its one round."""
    import dp_accounting as dpa

    from fedless_nb.records.history import History
    from fedless_nb.runner import run_experiment

    def reference(n, rounds):
        event = dpa.PoissonSampledDpEvent(32 / n, dpa.GaussianDpEvent(1.0))
        return dpa.rdp.RdpAccountant().compose(dpa.SelfComposedDpEvent(event, -(-n // 32) * rounds)).get_epsilon(1e-4)

    sizes = (359, 360)
    target = (max(reference(n, 1) for n in sizes) + min(reference(n, 2) for n in sizes)) / 2
    config = tiny_config(clients=4, clients_per_round=2, rounds=10, mode="async",
                         asynchronous={"concurrency": 2, "buffer_size": 1},
                         train={"epochs": 1, "batch_size": 32, "learning_rate": 0.1,
                                "dp": {"noise_multiplier": 1.0, "delta": 1e-4, "target_epsilon": target}})
    result = run_experiment(config)
    rows = [row for row in History(config.history).invocations(result.run_id) if row["outcome"] == "succeeded"]
    assert result.status == "stopped" and len(result.round_metrics) == 4
    assert sorted(row["client_id"] for row in rows) == [f"client-{i:04d}" for i in range(4)]
    for row in rows:
        epsilon = result.accountant.epsilon(row["client_id"])
        assert epsilon == pytest.approx(reference(row["num_examples"], 1), rel=1e-9) and epsilon <= target


class _ScriptedProvider:
    """The local provider, with scripted misfortunes on the first attempt of some (round, client): "timeout" trains
    and writes its update, then reports a timeout (the function ran to its end, its reply was lost); "refused" fails
    as a function refusing its token would, without running; "ran_refused" runs, then reports that refusal; "resend"
    answers with the client's round-1 reply (a resent late reply); "malformed" sends the task without its update key,
    which the function refuses; "old_refusal" fails as a function older than the declared refusal refuses it; "slow"
    runs for an hour. Every other call runs as it is."""

    def __init__(self, script):
        from fedless_nb.providers import LocalProvider

        self.inner, self.script, self.replies, self.attempts = LocalProvider("local", workers=2), script, {}, set()
        self.name, self.kind, self.secret = self.inner.name, self.inner.kind, self.inner.secret

    async def deploy(self, bundle=None):
        await self.inner.deploy(bundle)

    async def invoke(self, task):
        from fedless_nb.providers import InvocationError

        key = (task["round"], task["client_id"])
        fault = None if key in self.attempts else self.script.get(key)
        self.attempts.add(key)
        if fault == "refused":
            raise InvocationError("HTTP 403: the task's token was already used", "auth")
        if fault == "malformed":  # the real function refuses it (wire.check_task), before anything is read
            return await self.inner.invoke({name: value for name, value in task.items() if name != "update"})
        if fault == "slow":  # still running when the run ends
            await asyncio.sleep(3600)
        if fault == "old_refusal":  # a function from before the declared cause refuses it: the cause is "error"
            raise InvocationError("HTTP 400: PayloadError: the task lacks update", "error")
        if fault == "resend":
            return self.replies[1, task["client_id"]]
        reply = await self.inner.invoke(task)
        self.replies[key] = reply
        if fault in ("timeout", "ran_refused"):
            raise InvocationError("no reply within 60s", "timeout") if fault == "timeout" else \
                InvocationError("HTTP 403: the task's token was already used", "auth")
        return reply

    async def close(self):
        await self.inner.close()

    def describe(self):
        return self.inner.describe()


def test_every_invocation_that_may_have_trained_is_charged_once(tiny_config):
    """Round 1: client 0 trains and writes its update but its reply is lost (a timeout), and its retry trains again;
    client 1 is refused before it runs; client 3 trains, then reports a refusal. Round 2: client 2 resends its round-1
    reply and client 3 its own (both late, discarded). Each client is charged every invocation that may have trained,
    once: client 0 three times (both attempts of round 1, and round 2), client 1 once (round 2 only), client 2 once (its
    late reply is the round-1 invocation already charged), client 3 once (its late reply shows that the invocation it
    answers trained, which nothing charged). Each epsilon is dp-accounting's for those steps."""
    from fedless_nb.records.history import History
    from fedless_nb.runner import run_experiment

    config = tiny_config(clients=4, clients_per_round=4, rounds=2, retries=1, retry_backoff=0.0,
                         train={"epochs": 1, "batch_size": 32, "learning_rate": 0.1, "dp": {"noise_multiplier": 1.0}})
    provider = _ScriptedProvider({(1, "client-0000"): "timeout", (1, "client-0001"): "refused",
                                  (1, "client-0003"): "ran_refused", (2, "client-0002"): "resend",
                                  (2, "client-0003"): "resend"})
    result = run_experiment(config, providers={"local": provider})
    accountant = result.accountant
    releases = {"client-0000": 3, "client-0001": 1, "client-0002": 1, "client-0003": 1}
    for client_id, count in releases.items():
        assert accountant.ledger.subjects[client_id].rounds == count, client_id
        assert accountant.epsilon(client_id) == pytest.approx(
            releases_epsilon(accountant.planned[client_id], count, 1e-5), rel=1e-9), client_id
    rows = [(i["round"], i["client_id"], i["outcome"], i["cause"], i["charged"])
            for i in History(config.history).invocations(result.run_id)]
    assert sorted(rows) == sorted([
        (1, "client-0000", "failed", "timeout", 1), (1, "client-0000", "succeeded", None, 1),
        (1, "client-0001", "failed", "auth", 0), (1, "client-0002", "succeeded", None, 1),
        (1, "client-0003", "failed", "auth", 0),
        (2, "client-0000", "succeeded", None, 1), (2, "client-0001", "succeeded", None, 1),
        (2, "client-0002", "discarded", "late", 0), (2, "client-0003", "discarded", "late", 1)])


def test_a_task_the_function_refuses_before_training_is_not_charged(tiny_config):
    """A function refuses a bad task (here one without its update key) before any training step and says so (cause
    "refused"): nothing of its client's data was trained on, so nothing is charged. A function from before that cause
    answers the same refusal as an error, which may have come after training: it stays charged. Each epsilon is
    dp-accounting's. (On the old code the refusal's cause was "error" and client 0 was charged one release.)"""
    from fedless_nb.records.history import History
    from fedless_nb.runner import run_experiment

    config = tiny_config(clients=3, clients_per_round=3, rounds=1,
                         train={"epochs": 1, "batch_size": 32, "learning_rate": 0.1, "dp": {"noise_multiplier": 1.0}})
    provider = _ScriptedProvider({(1, "client-0000"): "malformed", (1, "client-0001"): "old_refusal"})
    result = run_experiment(config, providers={"local": provider})
    rows = [(i["client_id"], i["outcome"], i["cause"], i["charged"]) for i in History(config.history).invocations(result.run_id)]
    assert sorted(rows) == [("client-0000", "failed", "refused", 0), ("client-0001", "failed", "error", 1),
                            ("client-0002", "succeeded", None, 1)]
    accountant = result.accountant
    assert "client-0000" not in accountant.ledger.subjects and accountant.epsilon("client-0000") == 0.0
    for client_id in ("client-0001", "client-0002"):
        assert accountant.epsilon(client_id) == pytest.approx(
            releases_epsilon(accountant.planned[client_id], 1, 1e-5), rel=1e-9), client_id


def test_every_function_path_declares_a_refusal_before_training(tmp_path, monkeypatch):
    """The HTTP reply (serving.invoke, every template's adapter) declares "refused" for a bad task; a secure masked
    stage's own checks (here: an unsigned function cannot seal its state) refuse it before it trains (they ran after
    training on the old code, so the refusal came from a function that had trained)."""
    from fedless_nb.function import serving

    task = client_task(tmp_path)
    status, reply = serving.invoke({name: value for name, value in task.items() if name != "update"})
    assert status == 400 and reply["error"]["cause"] == "refused"

    def trains(*args, **kwargs):
        raise AssertionError("the function trained before refusing its task")

    monkeypatch.setattr(client, "train_client", trains)
    masked = {**task, "train": {**task["train"], "secagg": {"stage": "masked", "peers": ["client-0001"], "threshold": 2,
                                                              "attempt": 1, "clipping_range": 8.0,
                                                              "quantization_range": 2**16}}}
    status, reply = serving.invoke(masked)
    assert status == 400 and reply["error"]["cause"] == "refused", reply
    assert "needs a function deployed with a run secret" in reply["error"]["message"]


@pytest.mark.parametrize("broken, refusal", [
    ("model", "ModelError: the model spec does not rebuild"), ("weights", "CodecError: "), ("data", "CodecError: ")])
def test_a_task_whose_model_or_stored_bytes_the_function_cannot_use_is_refused_before_training(
        tmp_path, monkeypatch, broken, refusal):
    """Its model does not rebuild, or its global weights' or its data's bytes are not a blob the codec wrote: the
    function cannot start training, so every path declares "refused" (charged nothing): the HTTP reply by its cause,
    keeping the error's type, and Lambda's direct invoke by the PayloadError type, the error's type leading its
    message. (On the old code these were errors, charged as if the client had trained.)"""
    from fedless_nb.function import serving

    def trains(*args, **kwargs):
        raise AssertionError("the function trained before refusing its task")

    monkeypatch.setattr(client, "train_client", trains)
    task = client_task(tmp_path)
    if broken == "model":
        task["model"] = {**task["model"], "architecture": "[1, 2]"}
    else:
        LocalStore(tmp_path).put(task[broken], b"not a weights blob")
    status, reply = serving.invoke(task)
    error_type, message = refusal.split(": ", 1)
    assert (status, reply["error"]["type"], reply["error"]["cause"]) == (400, error_type, "refused"), reply
    assert reply["error"]["message"].startswith(message)
    with pytest.raises(PayloadError, match=f"^{re.escape(refusal)}"):
        serving.handle_direct(task)


def test_fedbuff_charges_the_calls_its_last_version_left_running(tiny_config):
    """FedBuff ends once its last version is published, cancelling the clients still training: their functions may
    train and write their updates all the same (a cancelled call stops only the controller's wait), so each is
    recorded (cause "unfinished") and charged, and the published round keeps its rows. Client 0 is still running when
    version 1 is published from clients 1 and 2: every client is charged one release, dp-accounting's epsilon (client
    0 was charged nothing and had no row on the old code)."""
    from fedless_nb.records.history import History
    from fedless_nb.runner import run_experiment

    config = tiny_config(clients=3, clients_per_round=3, rounds=1, mode="async",
                         asynchronous={"concurrency": 3, "buffer_size": 2},
                         train={"epochs": 1, "batch_size": 32, "learning_rate": 0.1, "dp": {"noise_multiplier": 1.0}})
    result = run_experiment(config, providers={"local": _ScriptedProvider({(1, "client-0000"): "slow"})})
    rows = [(i["round"], i["client_id"], i["outcome"], i["cause"], i["charged"])
            for i in History(config.history).invocations(result.run_id)]
    assert sorted(rows) == [(1, "client-0000", "failed", "unfinished", 1), (1, "client-0001", "succeeded", None, 1),
                            (1, "client-0002", "succeeded", None, 1)]
    for client_id in ("client-0000", "client-0001", "client-0002"):
        assert result.accountant.epsilon(client_id) == pytest.approx(
            releases_epsilon(result.accountant.planned[client_id], 1, 1e-5), rel=1e-9), client_id


def test_a_secure_rounds_masked_calls_cancelled_at_teardown_are_recorded_and_charged(tmp_path):
    """Ctrl-C as the first client of round 1's masked stage finishes: the other four were
    still training. Each is recorded (cause "interrupted") and charged, as a plain round's are: its function may train
    and write its masked update all the same (on the old code they had no row, so nothing charged them, nor a resume)."""
    from fedless_nb.experiment import ExperimentConfig
    from fedless_nb.records.history import History
    from fedless_nb.rounds.events import InvocationFinished
    from fedless_nb.runner import run_experiment

    config = ExperimentConfig.from_dict({
        "name": "secure", "clients": 5, "clients_per_round": 5, "rounds": 1, "retries": 0, "max_norm_ratio": 0,
        "history": str(tmp_path / "history.db"), "store": {"path": str(tmp_path / "store")},
        "model": {"builder": "mlp", "options": {"hidden_units": [16]}},
        "train": {"epochs": 1, "batch_size": 32, "learning_rate": 0.1},
        "providers": [{"kind": "local", "workers": 2}], "secure_aggregation": {}})

    interrupted = []

    def interrupt_at_the_first_masked_invocation(event):
        if isinstance(event, InvocationFinished) and event.stage == "masked" and not interrupted:
            interrupted.append(event)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, observers=[interrupt_at_the_first_masked_invocation])
    history = History(config.history)
    (run,) = history.runs()
    masked = [(i["outcome"], i["cause"], i["charged"]) for i in history.invocations(run["run_id"]) if i["stage"] == "masked"]
    assert len(masked) == 5 and masked.count(("failed", "interrupted", 1)) >= 3, masked
    assert all(charged == 1 for _, _, charged in masked)
