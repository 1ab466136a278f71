"""Scale on this machine's local provider: hundreds and a thousand client functions, memory bounded by the pool.

Each run is tiny (digits, a small MLP, 2-3 rounds); what grows is the number of clients. The
peak RSS of the whole process tree (pytest, which is the controller, plus its workers) must not
grow with the number of clients: it is the controller plus one process per worker.
"""

import pytest

from fedless_nb.records.history import History
from fedless_nb.records.memory import TreeMemorySampler
from fedless_nb.runner import run_experiment


def _run(tiny_config, clients, per_round, rounds):
    config = tiny_config(clients=clients, clients_per_round=per_round, rounds=rounds,
                         providers=[{"kind": "local", "workers": 2}])
    with TreeMemorySampler() as sampler:
        result = run_experiment(config)
    assert result.status == "finished"
    history = History(config.history)
    invocations = history.invocations(result.run_id)
    assert len(invocations) == per_round * rounds
    assert all(i["outcome"] == "succeeded" for i in invocations)
    assert [r["round"] for r in history.rounds(result.run_id)] == list(range(1, rounds + 1))
    return sampler.peak_mb, result


@pytest.mark.slow
def test_200_clients_50_per_round_and_1000_clients_in_bounded_memory(exec_workers, tiny_config):
    baseline, _ = _run(tiny_config, 20, 20, 2)
    peak_200, result_200 = _run(tiny_config, 200, 50, 3)
    peak_1000, result_1000 = _run(tiny_config, 1000, 1000, 2)
    assert len(result_1000.round_metrics) == 2 and result_1000.final_accuracy is not None
    # Generous: the controller's own heap drifts between runs in one process; a per-client cost of
    # even 1 MB would add ~1 GB at 1,000 clients.
    assert peak_200 < baseline * 1.3 + 150, (baseline, peak_200)
    assert peak_1000 < baseline * 1.3 + 400, (baseline, peak_1000)
