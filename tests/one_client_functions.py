"""Runs over functions deployed for one client each (workloads.serves_one_client_each), which cannot aggregate."""

import asyncio

import pytest

from fedless_nb.errors import UserError
from fedless_nb.providers.local import LocalProvider
from fedless_nb.records.history import History
from fedless_nb.runner import run_experiment
from fedless_nb.store import LocalStore


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


class SlowReadsStore(LocalStore):
    """The local store whose async reads of the keys `slow(key)` picks (what the controller reads where those functions
    refused to aggregate) take a while, as a remote store's do, counting how many are in flight at once."""

    def __init__(self, root, slow):
        super().__init__(root)
        self.slow, self.in_flight, self.most_in_flight = slow, 0, 0

    async def aget(self, key):
        if not self.slow(key):
            return self.get(key)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.05)
            return self.get(key)
        finally:
            self.in_flight -= 1
