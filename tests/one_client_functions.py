"""Runs over functions deployed for one client each (workloads.serves_one_client_each), which cannot aggregate."""

import pytest

from fedless_nb.errors import UserError
from fedless_nb.providers.local import LocalProvider
from fedless_nb.records.history import History
from fedless_nb.runner import run_experiment


def ended_at_the_refusal(config):
    """Run `config` (aggregation {where: functions}) over such functions: it ends at the first refusal in the one line
    that names the remedy, failed, with no round completed; its history row."""
    provider = LocalProvider("local", workers=2, entry_point="workloads:serves_one_client_each")
    with pytest.raises(UserError) as raised:
        run_experiment(config, providers={"local": provider})
    assert str(raised.value) == (
        "aggregation: {where: functions}, but the functions of provider 'local' cannot aggregate: AggregatorTaskRefused: "
        "this function serves client-0000 only, so it cannot aggregate: aggregate in the controller (aggregation: "
        "{where: controller}), or give the aggregators the provider's shared function (its secret, without "
        "FEDLESS_CLIENT_ID)")
    (run,) = History(config.history).runs()
    assert run["status"] == "failed" and run["rounds_completed"] == 0
    return run
