"""Partial work before the deadline: a function stops at its time (or simulated straggler) budget and says
so; the controller checks the claim; FedAvg weights or drops it, FedProx accepts it, FedNova normalizes it."""

import numpy as np
import pytest

from fedless_nb.experiment import ConfigError
from fedless_nb.function import handler as client
from fedless_nb.function.batching import steps_under_cut
from fedless_nb.function.handler import handle
from fedless_nb.records.history import History
from fedless_nb.rounds.stragglers import Stragglers
from fedless_nb.runner import run_experiment
from fedless_nb.store import LocalStore, decode_arrays
from fedless_nb.strategies import ClientUpdate, RunContext, make_strategy
from fedless_nb.strategies.aggregate import fednova, local_solver_norm
from fedless_nb.wire import PayloadError, ResultError, check_progress, parse_result

from client_tasks import client_task, softmax_regression_dp_steps

TRAIN = {"epochs": 2, "batch_size": 10, "optimizer": "sgd", "learning_rate": 0.5}


@pytest.fixture(autouse=True)
def fresh_process_state(monkeypatch):
    monkeypatch.setattr(client, "_STATE", client._WarmState())


# -- the function -------------------------------------------------------------------------------


def test_a_function_given_a_short_budget_returns_partial_work(tmp_path):
    """40 examples in batches of 16: 3 steps an epoch, 60 planned over 20 epochs. Building the model alone
    outlasts a 1 ms budget, so the function takes its one guaranteed step and stops."""
    result = handle(client_task(tmp_path, epochs=20, budget_seconds=0.001))
    assert (result["steps"], result["partial"]) == (1, True)
    assert result["num_examples"] == 40 and np.isfinite(result["metrics"]["loss"])


def test_a_generous_budget_does_all_the_work(tmp_path):
    result = handle(client_task(tmp_path, epochs=2, budget_seconds=600.0))
    assert (result["steps"], result["partial"]) == (6, False)


def test_a_simulated_straggler_manages_its_share_of_the_epochs(tmp_path):
    task = client_task(tmp_path, epochs=4, budget_epochs=1.0)
    result = handle(task)
    assert (result["steps"], result["partial"]) == (3, True)
    # the steps the controller allows the claim and the accountant charges are the ones the function took
    settings = {name: value for name, value in task["train"].items() if name != "budget_epochs"}
    assert steps_under_cut(result["num_examples"], settings, 1.0) == 3


@pytest.mark.parametrize("value", [0, -1.0, "5", True])
def test_a_malformed_budget_is_refused(tmp_path, value):
    with pytest.raises(PayloadError, match=r"the task's train\.budget_seconds: "):
        handle(client_task(tmp_path, budget_seconds=value))


# -- the controller's check of the claim -----------------------------------------------------------


def _reply(**progress):
    return {"run_id": "r", "round": 1, "client_id": "c", "update": "u", "num_examples": 10, **progress}


def _claim(**progress):
    return parse_result(_reply(**progress), "r", 1, "c", "u")


def test_progress_claims_are_checked_against_the_plan():
    assert check_progress(_claim(), 6) == (6, False), "a result without the fields did the planned work"
    assert check_progress(_claim(steps=2, partial=True), 6) == (2, True)
    for claim, message in (({"steps": 7, "partial": True}, "1 to 6 were possible"),
                           ({"steps": 2, "partial": False}, "full work in 2 steps"),
                           ({"steps": 2}, "reports 2 steps but not whether its work is partial"),
                           ({"steps": 1}, "reports 1 step but not whether"),
                           ({"steps": 1, "partial": False}, "full work in 1 step, not the planned 6"),
                           ({"partial": True}, "None local steps")):
        with pytest.raises(ResultError, match=message):
            check_progress(_claim(**claim), 6)
    for claim in ({"steps": 0, "partial": True}, {"steps": 6, "partial": "yes"}):
        with pytest.raises(ResultError, match="the result is malformed"):
            _claim(**claim)


def test_a_straggler_claiming_more_steps_than_its_cut_allows_is_refused():
    """A cut of 2 of 6 planned steps: a claim of 3 is within the plan but not the cut, and a reply without the fields
    claims the planned work; both are over-claims (the accountant charges a straggler by its cut)."""
    assert check_progress(_claim(steps=2, partial=True), 6, 2) == (2, True)
    for claim in ({"steps": 3, "partial": True}, {"steps": 6, "partial": False}, {}):
        with pytest.raises(ResultError, match=r"^the result claims \d local steps; its straggler cut "
                                              r"\(train\.budget_epochs\) allows at most 2$"):
            check_progress(_claim(**claim), 6, 2)


def test_the_controller_checks_a_stragglers_steps_against_its_cut(tmp_path):
    """40 examples in batches of 10 over 2 epochs: 8 planned steps; a straggler cut to 1 epoch may take 4. Its reply
    claiming 5 is refused as invalid, naming the cut; 4 pass, as 5 do for a client without a cut."""
    import asyncio
    import time

    from fedless_nb.store.keys import update_key

    controller, client = _controller(tmp_path, 60.0, {})
    failures = []
    controller.subscribe(lambda event: failures.append(event) if getattr(event, "outcome", None) == "failed" else None)

    async def collected(steps, cut):
        call = asyncio.get_running_loop().create_future()
        call.set_result({**_reply(steps=steps, partial=True), "client_id": client.client_id, "num_examples": 40,
                         "update": update_key("r", 1, client.client_id)})
        return await controller.collect_result(1, client, call, time.time(), cut)

    assert asyncio.run(collected(4, 1.0)) is not None and asyncio.run(collected(5, None)) is not None
    assert asyncio.run(collected(5, 1.0)) is None
    assert [(event.cause, event.error) for event in failures] == [
        ("invalid", "the result claims 5 local steps; its straggler cut (train.budget_epochs) allows at most 4")]


# -- strategies ------------------------------------------------------------------------------------


def _bound(name, **options):
    strategy = make_strategy(name, options)
    strategy.bind(RunContext("r", None, TRAIN, clients=2, clients_per_round=2))
    return strategy


# Two clients of 20 examples (2 steps an epoch, 4 planned): "full" did all 4 steps, "half" stopped after 1.
CURRENT = [np.zeros(2, np.float32)]
FULL = ClientUpdate("full", [np.array([-4.0, 4.0], np.float32)], 20, steps=4, partial=False)
HALF = ClientUpdate("half", [np.array([-2.0, 0.0], np.float32)], 20, steps=1, partial=True)


def test_fedavg_weights_partial_work_by_its_steps():
    # weights 20 and 20 * 1/4 = 5: (20 * full + 5 * half) / 25
    np.testing.assert_allclose(_bound("fedavg").aggregate(1, CURRENT, [FULL, HALF])[0], [-3.6, 3.2], rtol=1e-6)


def test_fedavg_can_drop_partial_work():
    strategy = _bound("fedavg", partial_work="drop")
    np.testing.assert_array_equal(strategy.aggregate(1, CURRENT, [FULL, HALF])[0], FULL.weights[0])
    np.testing.assert_array_equal(strategy.aggregate(1, CURRENT, [HALF])[0], CURRENT[0]), "nothing left: no change"


def test_fedprox_accepts_partial_work_as_it_is():
    np.testing.assert_allclose(_bound("fedprox", proximal_mu=1.0).aggregate(1, CURRENT, [FULL, HALF])[0], [-3.0, 2.0])


def test_fednova_agrees_with_a_hand_computed_case():
    """p = (1/2, 1/2); normalized changes (x - y_i) / tau_i: full (4, -4) / 4 = (1, -1), half (2, 0) / 1 = (2, 0);
    their mean (1.5, -0.5); tau_eff = (4 + 1) / 2 = 2.5; x+ = 0 - 2.5 (1.5, -0.5) = (-3.75, 1.25)."""
    expected = [-3.75, 1.25]
    np.testing.assert_allclose(fednova(CURRENT, [FULL.weights, HALF.weights], [20, 20], [4, 1])[0], expected)
    np.testing.assert_allclose(_bound("fednova").aggregate(1, CURRENT, [FULL, HALF])[0], expected)


def test_fednova_equals_fedavg_when_every_client_did_the_same_steps():
    other = ClientUpdate("other", [np.array([2.0, 2.0], np.float32)], 60, steps=4)
    np.testing.assert_allclose(_bound("fednova").aggregate(1, CURRENT, [FULL, other])[0],
                               _bound("fedavg").aggregate(1, CURRENT, [FULL, other])[0], rtol=1e-6)


def test_fednova_refuses_an_update_of_zero_steps_rather_than_take_it_for_the_planned_ones():
    """No client takes 0 steps (the controller refuses such a claim), but given one through the strategy API FedNova
    (and SCAFFOLD) took it for the planned 4 steps (0 is falsy) and weighted it as a full client's."""
    zero = ClientUpdate("zero", [np.array([0.0, 0.0], np.float32)], 20, steps=0, partial=True)
    with pytest.raises(ValueError, match="at least one local step, got 0"):
        _bound("fednova").aggregate(1, CURRENT, [FULL, zero])
    assert zero.steps_taken(TRAIN) == 0 and ClientUpdate("unreported", [], 20).steps_taken(TRAIN) == 4


def test_fednova_norm_of_the_proximal_local_solver():
    assert local_solver_norm(4, 0.5) == 4.0
    # alpha = lr * mu = 0.5: 1 + 0.5 + 0.25 + 0.125
    assert local_solver_norm(4, 0.5, proximal_mu=1.0) == pytest.approx(1.875)
    assert _bound("fednova", proximal_mu=1.0).configure_round(1, ["a"]) == {"a": {"proximal_mu": 1.0}}


@pytest.mark.parametrize("name", ["fednova", "fedprox"])
def test_a_proximal_step_that_does_not_contract_is_refused_before_the_run(name):
    """A plain SGD step scales w - w_global by 1 - lr mu: at lr mu = 2 FedNova-Prox's step norm sum_k (1 - lr mu)^k
    was 0 for an even number of steps (a ZeroDivisionError inside the round), above 2 negative (negative weights),
    and the clients' proximal iteration diverges. Refused in one line; below 2, and with Adam (whose steps the
    coefficients do not describe), accepted."""
    from fedless_nb.experiment import ConfigError, ExperimentConfig

    def config(mu, optimizer="sgd"):
        return ExperimentConfig.from_dict({"clients": 4, "strategy": {"name": name, "options": {"proximal_mu": mu}},
                                           "train": {"learning_rate": 0.1, "optimizer": optimizer}})

    with pytest.raises(ConfigError, match=r"^strategy.options.proximal_mu: 20 with train.learning_rate 0.1 makes each "
                                          r"SGD step scale the distance to the global model by 1 - 2, which never "
                                          r"shrinks it .*; keep train.learning_rate x proximal_mu below 2") as raised:
        config(20)
    assert "\n" not in str(raised.value)
    assert config(19.9).strategy.options == {"proximal_mu": 19.9}
    if name == "fedprox":
        assert config(20, "adam").strategy.options == {"proximal_mu": 20}
    with pytest.raises(ValueError, match="learning_rate x proximal_mu must be below 2, got 2"):
        local_solver_norm(2, 0.1, proximal_mu=20)


def test_fednova_prox_normalizes_dp_sgd_clients_by_the_proximal_solvers_coefficients(tmp_path, tiny_config):
    """Under DP-SGD the proximal pull joins each step after the clip and noise, so every step pulls by exactly
    lr mu (w - x) and a client's change is lr sum_k (1 - lr mu)^(K-1-k) g_k over its private gradients g_k: FedNova-Prox's
    normalization holds. By hand: two clients on the same 12 examples (noise 0, a clip that bites every example, whole
    batches), one taking its 3 steps, a straggler 1 (the other's first); p = (1/2, 1/2)."""
    mu, lr = 0.5, 0.5
    task = client_task(tmp_path, examples=12, hidden_units=(), epochs=3, batch_size=12, learning_rate=lr,
                       proximal_mu=mu, dp={"l2_norm_clip": 0.3, "noise_multiplier": 0.0, "sampling": "shuffle"})
    results = [handle({**task, "update": "full"}),
               handle({**task, "update": "straggler", "train": {**task["train"], "budget_epochs": 1.0}})]
    assert [(r["steps"], r["partial"]) for r in results] == [(3, False), (1, True)]
    store = LocalStore(task["store"]["root"])
    current = decode_arrays(store.get("global"))
    _, gradients = softmax_regression_dp_steps(*decode_arrays(store.get("data/a")), current, 3, lr, 0.3, mu, 0.0)
    coefficients = [(1 - lr * mu) ** (2 - k) for k in range(3)]  # a step's gradient decays by (1 - lr mu) per later step
    full = [sum(c * g[layer] for c, g in zip(coefficients, gradients)) / sum(coefficients) for layer in range(2)]
    straggler = gradients[0]  # normalized by its one coefficient, 1
    tau_effective = (sum(coefficients) + 1) / 2
    expected = [w - lr * tau_effective * (a + b) / 2 for w, a, b in zip(current, full, straggler)]
    strategy = make_strategy("fednova", {"proximal_mu": mu})
    strategy.bind(RunContext("r", None, task["train"], clients=2, clients_per_round=2))
    updates = [ClientUpdate(r["update"], decode_arrays(store.get(r["update"])), 12, steps=r["steps"], partial=r["partial"])
               for r in results]
    for aggregated, by_hand in zip(strategy.aggregate(1, current, updates), expected):
        np.testing.assert_allclose(aggregated, by_hand, rtol=1e-5, atol=1e-6)
    tiny_config(strategy={"name": "fednova", "options": {"proximal_mu": 0.1}},
                train={"epochs": 1, "batch_size": 32, "learning_rate": 0.1, "dp": {"noise_multiplier": 1.0}})


def test_unknown_partial_work_choice_names_the_option(tiny_config):
    with pytest.raises(ConfigError, match="strategy.options.partial_work: choose one of weight, drop, accept"):
        tiny_config(strategy={"name": "fedavg", "options": {"partial_work": "keep"}})


# -- simulated stragglers ----------------------------------------------------------------------------


def test_stragglers_are_the_given_share_of_each_round_and_repeatable():
    selected = [f"client-{i}" for i in range(10)]
    stragglers = Stragglers(fraction=0.9, work=0.25, seed=3)
    first = stragglers.overrides(1, selected, epochs=20)
    assert len(first) == 9 and all(o == {"budget_epochs": 5.0} for o in first.values())
    assert first == stragglers.overrides(1, selected, epochs=20)
    assert Stragglers(0.5, 0.5, seed=3).overrides(1, selected, 4).keys() != Stragglers(0.5, 0.5, seed=3).overrides(2, selected, 4).keys()


@pytest.mark.parametrize("stragglers, message", [
    ({"fraction": 1.5}, "stragglers.fraction: must be between 0 and 1"),
    ({"work": 1.0}, "stragglers.work: must be between 0 and 1"),
])
def test_straggler_settings_are_checked(tiny_config, stragglers, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(stragglers=stragglers)


def test_a_run_with_stragglers_aggregates_their_partial_work(tiny_config):
    """Half of each round's 4 clients straggle through the local provider's real function processes, each
    doing one of its two epochs; the history records who stopped short and after how many steps."""
    config = tiny_config(rounds=2, stragglers={"fraction": 0.5, "work": 0.5},
                         train={"epochs": 2, "batch_size": 32, "learning_rate": 0.1},
                         strategy={"name": "fedavg", "options": {"partial_work": "drop"}})
    result = run_experiment(config)
    history = History(config.history)
    assert result.status == "finished" and [r["succeeded"] for r in history.rounds(result.run_id)] == [4, 4]
    invocations = history.invocations(result.run_id)
    # digits: 1437 training examples over 6 clients, about 240 each, 8 steps an epoch at batch 32
    stragglers = [row for row in invocations if row["partial"]]
    assert len(stragglers) == 4, "two stragglers a round"
    for row in invocations:
        planned = 2 * -(-row["num_examples"] // 32)
        assert row["steps"] == (planned // 2 if row["partial"] else planned)


# -- the budget a task carries -------------------------------------------------------------------------


def _controller(tmp_path, provider_timeout, train):
    from fedless_nb import zoo
    from fedless_nb.model import model_spec_from
    from fedless_nb.providers import LocalProvider
    from fedless_nb.rounds.controller import ClientRef, Controller, RoundPlan
    from fedless_nb.rounds.selection import make_selection

    spec, _ = model_spec_from(zoo.mlp, builder_context={"input_shape": (8,), "num_classes": 3, "hidden_units": [4]})
    client = ClientRef("client-0000", "data/a", "local")
    controller = Controller(
        run_id="r", name="budget", config={}, spec=spec, strategy=make_strategy("fedavg"),
        selection=make_selection("random", 0), clients=[client],
        providers={"local": LocalProvider("local", workers=1, timeout=provider_timeout)}, store=LocalStore(tmp_path),
        evaluate=lambda weights: {}, plan=RoundPlan(1, 1, {**TRAIN, "budget_seconds": None, **train}, 600.0))
    return controller, client


@pytest.mark.parametrize("provider_timeout, rest, configured, expected", [
    (120.0, 30.0, None, 24.0),   # the round's rest is shorter: 80% of it
    (10.0, 30.0, None, 8.0),     # the provider's timeout is shorter: 80% of it
    (120.0, 30.0, 5.0, 5.0),     # the config's train.budget_seconds caps both
])
def test_a_task_carries_its_invocations_time_budget(tmp_path, provider_timeout, rest, configured, expected):
    import time

    controller, client = _controller(tmp_path, provider_timeout, {"budget_seconds": configured})
    task = controller.task(1, client, {}, deadline=time.time() + rest)
    assert task["train"]["budget_seconds"] == pytest.approx(expected, abs=0.05)


def test_a_budget_below_zero_is_refused_by_config(tiny_config):
    with pytest.raises(ConfigError, match="train.budget_seconds: must be > 0 seconds or null"):
        tiny_config(train={"epochs": 1, "budget_seconds": 0})


# -- what DP-SGD charges a client that stopped short ---------------------------------------------------


def _dp_run(tiny_config, rounds=2, **overrides):
    """A DP-SGD run of 4 clients (about 360 digits each, q = 32 / n, 23 planned Poisson steps over 2 epochs),
    its history's invocations, the epsilon the run states per client and its status."""
    config = tiny_config(clients=4, clients_per_round=4, rounds=rounds,
                         train={"epochs": 2, "batch_size": 32, "learning_rate": 0.1, **overrides.pop("train", {}),
                                "dp": {"noise_multiplier": 1.1, "l2_norm_clip": 1.0, "delta": 1e-3,
                                       **overrides.pop("dp", {})}}, **overrides)
    result = run_experiment(config)
    rows = [row for row in History(config.history).invocations(result.run_id) if row["outcome"] == "succeeded"]
    return rows, {row["client_id"]: result.accountant.epsilon(row["client_id"]) for row in rows}, result.status


def _dp_accounting_epsilon(steps_by_round, num_examples):
    """dp-accounting's RDP epsilon at delta 1e-3 of Poisson rounds at q = 32 / n and noise 1.1."""
    import dp_accounting as dpa

    accountant = dpa.rdp.RdpAccountant()
    for steps in steps_by_round:
        accountant.compose(dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(32 / num_examples, dpa.GaussianDpEvent(1.1)), steps))
    return accountant.get_epsilon(1e-3)


def test_a_simulated_straggler_is_charged_the_steps_it_took(tiny_config):
    """Half of each round's clients straggle (one of two epochs): the config fixes that cut before any example is
    read, so each client's epsilon is dp-accounting's for the steps it took, not for the planned 23 a round."""
    rows, stated, _ = _dp_run(tiny_config, stragglers={"fraction": 0.5, "work": 0.5})
    assert sum(row["partial"] for row in rows) == 4, "two stragglers a round"
    for client_id, epsilon in stated.items():
        own = [row for row in rows if row["client_id"] == client_id]
        assert any(row["partial"] for row in own)
        assert epsilon == pytest.approx(_dp_accounting_epsilon([row["steps"] for row in own], own[0]["num_examples"]),
                                        rel=1e-9)


def test_a_target_epsilon_is_projected_with_the_cut_when_every_selected_client_straggles(tiny_config):
    """90% of 4 clients a round rounds to all 4, so every round is every client's straggler round: 11 of its 23
    planned steps. A target between one and two such rounds trains one round and stops, each client charged
    dp-accounting's epsilon for its 11 steps (the budget projected a planned round of 23 steps, which passes the
    target, and refused the run before it trained)."""
    one, two = ([_dp_accounting_epsilon([11] * rounds, n) for n in (359, 360)] for rounds in (1, 2))
    assert max(one) < min(two)
    target = (max(one) + min(two)) / 2
    rows, stated, status = _dp_run(tiny_config, stragglers={"fraction": 0.9, "work": 0.5},
                                   dp={"target_epsilon": target, "on_budget": "skip_client"})
    assert status == "stopped" and len(rows) == 4 and all((row["steps"], row["partial"]) == (11, 1) for row in rows)
    for row in rows:
        assert row["num_examples"] in (359, 360)
        assert stated[row["client_id"]] == pytest.approx(_dp_accounting_epsilon([11], row["num_examples"]), rel=1e-9)
        assert stated[row["client_id"]] <= target < _dp_accounting_epsilon([11, 11], row["num_examples"])


def test_a_target_epsilon_charges_each_round_as_its_straggler_draw_made_it(tiny_config):
    """Half of each round's 4 clients straggle (11 of their 23 planned steps). The target lets a client take two cut
    rounds (22 steps) but never a full one (23): the budget used to project a full round before the draw and refused
    the run before it trained. Now each round trains exactly the clients its draw cuts while they have budget
    left (the others sit it out, counted as skipped), every client is charged dp-accounting's epsilon for the
    steps it took, within the target, and the run ends at the first round whose draw cuts none of them."""
    def reference(steps, n):
        return _dp_accounting_epsilon([steps], n)

    sizes = (359, 360)
    assert max(reference(22, n) for n in sizes) < min(reference(23, n) for n in sizes)
    target = (max(reference(22, n) for n in sizes) + min(reference(23, n) for n in sizes)) / 2
    rows, stated, status = _dp_run(tiny_config, rounds=6, stragglers={"fraction": 0.5, "work": 0.5},
                                   dp={"target_epsilon": target, "on_budget": "skip_client"})
    assert rows and all((row["steps"], row["partial"]) == (11, 1) for row in rows), "no full round fits"
    for client_id, epsilon in stated.items():
        own = [row for row in rows if row["client_id"] == client_id]
        assert epsilon == pytest.approx(_dp_accounting_epsilon([11] * len(own), own[0]["num_examples"]), rel=1e-9)
        assert epsilon <= target and len(own) <= 2
    # every round that fits: replay the run's draws (every client with budget left is selected, 4 a round)
    steps = {f"client-{index:04d}": 0 for index in range(4)}
    for round_number in range(1, 7):
        selected = [client for client, taken in steps.items() if taken + 11 <= 22]
        cut = Stragglers(0.5, 0.5, seed=0).overrides(round_number, selected, 2) if selected else {}
        trained = sorted(row["client_id"] for row in rows if row["round"] == round_number)
        assert trained == sorted(cut), f"round {round_number}"
        if not cut:
            assert status == "stopped" and not any(row["round"] > round_number for row in rows)
            break
        steps.update({client: steps[client] + 11 for client in cut})


def test_the_cut_a_draw_may_give_is_known_unless_no_selection_has_a_straggler():
    assert Stragglers(0.9, 0.5).possible_cut(5, epochs=2) == 1.0
    assert Stragglers(0.5, 0.5).possible_cut(4, epochs=2) == 1.0, "half of 2 to 4 clients rounds to one or more"
    assert Stragglers(0.4, 0.5).possible_cut(1, epochs=2) is None, "40% of one client rounds to none"
    assert Stragglers(0.5, 0.5).possible_cut(1, epochs=2) is None, "half of one rounds to none (half to even)"
    assert Stragglers(1.0, 0.25).possible_cut(1000, epochs=4) == 1.0


def test_a_time_budget_stop_is_charged_the_planned_steps(tiny_config):
    """A 1 ms time budget stops every client after its one guaranteed step; how many steps fit in the time depends
    on the secret Poisson batch sizes, so each is charged the planned steps all the same."""
    rows, stated, _ = _dp_run(tiny_config, train={"budget_seconds": 0.001})
    assert all((row["steps"], row["partial"]) == (1, True) for row in rows)
    for client_id, epsilon in stated.items():
        n = next(row["num_examples"] for row in rows if row["client_id"] == client_id)
        assert epsilon == pytest.approx(_dp_accounting_epsilon([-(-2 * n // 32)] * 2, n), rel=1e-9)


def test_stragglers_are_refused_with_secure_aggregation(tiny_config):
    with pytest.raises(ConfigError, match="stragglers: are not simulated in secure aggregation's rounds"):
        tiny_config(stragglers={"fraction": 0.5, "work": 0.5}, strategy={"name": "fedavg"},
                    max_norm_ratio=0, secure_aggregation={"clip_norm": 1.0})
