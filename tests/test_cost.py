"""Cost accounting: list prices per kind, per-invocation arithmetic, the history's cost columns, the server comparison."""

import pytest

from fedless_nb.records.cost import AWS_LAMBDA, GOOGLE_CLOUD_RUN, LIST_PRICES, CostModel, Pricing, function_price
from fedless_nb.experiment import ConfigError, ExperimentConfig
from fedless_nb.records.history import History, run_cost
from fedless_nb.runner import run_experiment


def test_every_list_price_names_its_source_and_date():
    for kind, pricing in LIST_PRICES.items():
        assert pricing.source and pricing.as_of, kind
        assert pricing.gb_second > 0 and pricing.request > 0


def test_lambda_bills_gb_seconds_rounded_up_to_the_millisecond_plus_the_request():
    lambda_2gb = function_price({"name": "aws", "kind": "lambda", "memory_mb": 2048})
    assert lambda_2gb.invocation(1.0004) == pytest.approx(1.001 * 2 * AWS_LAMBDA.gb_second + 0.2e-6)
    assert lambda_2gb.invocation(0.0) == pytest.approx(0.2e-6), "a request costs even when it does nothing"


def test_google_bills_vcpu_seconds_by_memory_size_in_100ms_steps():
    google = function_price({"name": "g", "kind": "gcf", "memory_mb": 1024})
    assert google.vcpus == pytest.approx(0.583)
    expected = 0.2 * (1 * GOOGLE_CLOUD_RUN.gb_second + 0.583 * GOOGLE_CLOUD_RUN.vcpu_second) + 0.4e-6
    assert google.invocation(0.15) == pytest.approx(expected)


def test_self_hosted_is_free_unless_priced_in_the_config():
    assert function_price({"name": "local", "kind": "local"}).invocation(10.0) == 0.0
    priced = function_price({"name": "local", "kind": "local"},
                            {"name": "local", "memory_mb": 512, "pricing": {"gb_second": 0.00002, "request": 0}})
    assert priced.invocation(2.0) == pytest.approx(2.0 * 0.5 * 0.00002)
    assert priced.pricing.source == "configured in the experiment"
    overridden = function_price({"name": "aws", "kind": "lambda", "memory_mb": 1024}, {"name": "aws", "pricing": {"request": 0}})
    assert overridden.pricing.gb_second == AWS_LAMBDA.gb_second and overridden.pricing.request == 0


def test_failed_invocations_are_billed_for_the_wall_time_the_controller_saw():
    model = CostModel([{"name": "aws", "kind": "lambda", "memory_mb": 1024}])
    assert model.invocation("aws", 100.0, 103.0, {}) == pytest.approx(3.0 * AWS_LAMBDA.gb_second + 0.2e-6)
    assert model.invocation("aws", 100.0, 103.0, {"total": 1.0}) == pytest.approx(1.0 * AWS_LAMBDA.gb_second + 0.2e-6)
    assert model.invocation("unknown", 0, 1, {}) == 0.0


@pytest.mark.parametrize("pricing, message", [
    ({"gb_secnd": 1}, r"providers\[0\]\.pricing\.gb_secnd: unknown pricing field"),
    ({"request": -1}, r"providers\[0\]\.pricing\.request: must be a price >= 0"),
])
def test_config_refuses_bad_pricing_naming_the_key(pricing, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig.from_dict({"providers": [{"kind": "local", "pricing": pricing}]})


def test_a_run_records_its_cost_per_invocation_round_and_run(tiny_config):
    price = Pricing(gb_second=0.00002, request=1e-6)
    config = tiny_config(providers=[{"kind": "local", "memory_mb": 2048,
                                     "pricing": {"gb_second": price.gb_second, "request": price.request}}])
    result = run_experiment(config)
    history = History(config.history)
    invocations = history.invocations(result.run_id)
    for row in invocations:
        assert row["cost"] == pytest.approx(price.invocation(row["t_total"], 2048, 1.0))
    rounds = history.rounds(result.run_id)
    for row in rounds:
        assert row["cost"] == pytest.approx(sum(i["cost"] for i in invocations if i["round"] == row["round"]))
    run = history.run(result.run_id)
    assert run["cost"] == pytest.approx(sum(i["cost"] for i in invocations)) and run["cost"] > 0

    report = run_cost(config.history, result.run_id, server_hourly_price=0.10)
    assert report["serverless_cost"] == pytest.approx(run["cost"])
    assert report["per_round"] == pytest.approx({r["round"]: r["cost"] for r in rounds})
    assert report["server_cost"] == pytest.approx(0.10 * (run["finished_at"] - run["started_at"]) / 3600)
    assert report["serverless_to_server"] == pytest.approx(report["serverless_cost"] / report["server_cost"])
    assert report["prices"]["local"]["source"] == "configured in the experiment"


def test_a_local_run_costs_nothing_by_default(tiny_config):
    config = tiny_config(rounds=1)
    result = run_experiment(config)
    assert {row["cost"] for row in History(config.history).invocations(result.run_id)} == {0.0}
    assert run_cost(History(config.history), result.run_id)["serverless_cost"] == 0.0
