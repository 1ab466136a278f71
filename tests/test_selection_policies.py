"""FedLesScan-style selection learns from invocation events: fresh first, fast preferred, failures rest."""

from fedless_nb.rounds.checkpoint import Checkpoint, decode_checkpoint, encode_checkpoint
from fedless_nb.rounds.events import InvocationFinished
from fedless_nb.rounds.selection import FedLesScanSelection, RandomSelection, make_selection


def _event(client_id, round_number, seconds, outcome="succeeded"):
    return InvocationFinished("r", round_number, client_id, "local", outcome, 100.0, 100.0 + seconds)


def test_unmeasured_clients_come_first_then_the_fastest():
    policy = FedLesScanSelection(seed=0)
    clients = ["a", "b", "c", "d"]
    first = policy.select(1, clients, 2)
    assert len(set(first)) == 2
    for client_id, seconds in (("a", 5.0), ("b", 1.0), ("c", 3.0)):
        policy.observe(_event(client_id, 1, seconds))
    assert policy.select(2, clients, 2) == ["d", "b"], "d was never measured; b is the fastest"
    policy.observe(_event("d", 2, 2.0))
    assert policy.select(3, clients, 2) == ["b", "d"]


def test_failed_clients_rest_with_exponential_backoff_and_fill_in_last():
    policy = FedLesScanSelection(seed=0)
    for client_id in "abc":
        policy.observe(_event(client_id, 1, 1.0))
    policy.observe(_event("a", 2, 0.5, outcome="failed"))
    assert policy.resting("a", 3) and not policy.resting("a", 4)
    assert policy.select(3, ["a", "b", "c"], 2) == ["b", "c"]
    assert policy.select(3, ["a", "b", "c"], 3)[-1] == "a", "a resting client fills in when too few remain"
    policy.observe(_event("a", 4, 0.5, outcome="failed"))
    assert policy.resting("a", 6) and not policy.resting("a", 7), "two failures in a row: two rounds of rest"


def test_failure_rate_and_waiting_shape_the_ranking():
    policy = FedLesScanSelection(seed=0, fairness=0.0)
    policy.observe(_event("fast-flaky", 1, 1.0))
    policy.observe(_event("fast-flaky", 2, 1.0, outcome="failed"))
    policy.observe(_event("fast-flaky", 3, 1.0))
    policy.observe(_event("steady", 3, 1.2))
    assert policy.select(5, ["fast-flaky", "steady"], 1) == ["steady"], "1.0 s * (1 + 1/3) > 1.2 s"
    waiting = FedLesScanSelection(seed=0, fairness=0.5)
    waiting.observe(_event("fast", 9, 1.0))
    waiting.observe(_event("slow-but-waiting", 1, 1.5))
    assert waiting.select(10, ["fast", "slow-but-waiting"], 1) == ["slow-but-waiting"]


def test_make_selection_by_name():
    assert isinstance(make_selection("random", 1), RandomSelection)
    assert isinstance(make_selection("fedlesscan", 1), FedLesScanSelection)


def test_what_fedlesscan_learned_survives_a_checkpoint():
    policy = FedLesScanSelection(seed=0)
    for client_id, seconds in (("a", 5.0), ("b", 1.0), ("c", 3.0)):
        policy.observe(_event(client_id, 1, seconds))
    policy.observe(_event("a", 2, 0.5, outcome="failed"))
    restored = FedLesScanSelection(seed=0)
    restored.load_state(decode_checkpoint(encode_checkpoint(Checkpoint(2, observer_state={"selection": policy.state()})))
                        .observer_state["selection"])
    assert restored.records == policy.records
    for round_number in (3, 4, 5):
        assert restored.select(round_number, ["a", "b", "c", "d"], 3) == policy.select(round_number, ["a", "b", "c", "d"], 3)
    assert FedLesScanSelection(seed=0).select(3, ["a", "b", "c", "d"], 3) != policy.select(3, ["a", "b", "c", "d"], 3), \
        "a policy that forgot would choose otherwise"
