"""Norm screening at any round size: an absolute bound, the round's median from 3 updates on, and the median
of recent rounds' accepted updates, in synchronous rounds and in FedBuff's buffers."""

import re

import numpy as np
import pytest

from fedless_nb.experiment import ExperimentConfig
from fedless_nb.providers import LocalProvider
from fedless_nb.records.history import History
from fedless_nb.rounds.screening import NormScreen
from fedless_nb.runner import run_experiment
from fedless_nb.store import LocalStore, decode_arrays
from fedless_nb.rounds.checkpoint import checkpoint_key, decode_checkpoint
from fedless_nb.store.keys import global_weights_key


def test_the_absolute_bound_screens_even_the_first_round_of_two():
    rejected = NormScreen(ratio=10, absolute=1000).outliers({"a": 1.0, "b": 1e6})
    assert list(rejected) == ["b"] and "exceeds max_update_norm 1000" in rejected["b"]


def test_recent_rounds_screen_a_round_of_one():
    screen = NormScreen(ratio=10, absolute=0)
    assert screen.outliers({"a": 1.0, "b": 1.2, "c": 0.9}) == {}
    rejected = screen.outliers({"d": 50.0})
    assert list(rejected) == ["d"] and "median of the recent rounds' updates 1" in rejected["d"]
    assert screen.outliers({"e": 5.0}) == {}, "within 10x of the recent median"


def test_a_minority_cannot_raise_the_recent_bound():
    screen = NormScreen(ratio=10, absolute=0, window=5)
    for _ in range(4):
        screen.outliers({"honest-1": 1.0, "honest-2": 1.1, "attacker": 9.0})  # just under 10x, accepted
    assert list(screen.outliers({"attacker": 80.0})) == ["attacker"]


def test_a_round_whose_every_update_grew_together_moves_the_recent_bound():
    """Every update of round 2 is 20x round 1's (warm functions take more steps): the recent rule rejected them all,
    and, learning from accepted updates only, every later round too; the model stopped without a word."""
    screen = NormScreen(ratio=10, absolute=0)
    assert screen.outliers({"a": 1.0, "b": 1.1, "c": 0.9}) == {}
    grown = {"a": 20.0, "b": 22.0, "c": 21.0, "d": 500.0}
    assert list(screen.outliers(grown)) == ["d"], "the round's own median still rejects its outlier"
    assert screen.outliers({"a": 19.0}) == {}, "the window learned the new scale"
    assert list(screen.outliers({"a": 1.0, "b": 1.1, "c": 30.0})) == ["c"], "a minority that grew is still rejected"


def test_zero_turns_each_rule_off():
    screen = NormScreen(ratio=0, absolute=0)
    assert screen.outliers({"a": 1.0}) == {} and screen.outliers({"b": 1e9}) == {}


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_boosted_signed_update_is_rejected_with_two_clients(tiny_config, mode):
    config = tiny_config(clients=2, clients_per_round=2, rounds=2, retries=0, mode=mode,
                         asynchronous={"concurrency": 2, "buffer_size": 2})
    result = run_experiment(config, providers={"local": LocalProvider("local", workers=2, entry_point="workloads:boosts_client_1")})
    initial = decode_arrays(LocalStore(config.store.path).get(global_weights_key(result.run_id, 0)))
    invocations = History(config.history).invocations(result.run_id)
    boosted = [i for i in invocations if i["client_id"] == "client-0001"]
    assert boosted and all(i["outcome"] == "failed" and i["cause"] == "rejected" for i in boosted)
    assert all("max_update_norm" in i["error"] for i in boosted)
    assert all(i["outcome"] == "succeeded" for i in invocations if i["client_id"] == "client-0000")
    moved = max(float(np.max(np.abs(w - w0))) for w, w0 in zip(result.weights, initial))
    assert moved < 10, f"the global model moved {moved:g}"


def test_max_update_norm_is_checked():
    with pytest.raises(ValueError, match="max_update_norm: must be >= 0"):
        ExperimentConfig.from_dict({"max_update_norm": -1})


def _raised_setting(reason):
    """(key, value) a rejection tells its reader to raise, as the line words it."""
    key, value = re.search(r"to accept it, raise (max_norm_ratio|max_update_norm) (?:from \S+ )?to ([\d.]+), or set "
                           r"it to 0 to turn", reason).groups()
    return key, float(value)


@pytest.mark.parametrize("earlier, last", [
    ([], {"a": 1.0, "b": 1.1, "c": 0.9, "d": 9.87}),  # the round's median
    ([{"a": 1.0, "b": 1.2, "c": 0.9}], {"d": 12.34}),  # the recent rounds' median
    ([], {"a": 1.0, "b": 1234.5}),  # the absolute bound
])
def test_a_rejection_names_the_setting_that_rejected_it_and_the_value_that_accepts_the_update(earlier, last):
    """tutorials/07 quotes max_norm_ratio, but a median rule's line said only 'more than 3x the round's median': its
    reader could not tell which setting to change, nor to what."""
    def screened(ratio, absolute):
        screen = NormScreen(ratio=ratio, absolute=absolute)
        for distances in earlier:
            assert screen.outliers(distances) == {}
        return screen.outliers(last)

    settings = {"max_norm_ratio": 3.0, "max_update_norm": 20.0}
    (client, reason), = screened(settings["max_norm_ratio"], settings["max_update_norm"]).items()
    key, value = _raised_setting(reason)
    assert value > settings[key] and "\n" not in reason
    settings[key] = value
    assert screened(settings["max_norm_ratio"], settings["max_update_norm"]) == {}, "the value named accepts it"


def test_a_resumed_run_screens_a_round_of_one_by_the_recent_rounds_it_checkpointed(tiny_config):
    """The recent rounds' window was not in the checkpoint: a resumed run started with it empty, so a round of 1 or 2
    updates was screened by max_update_norm alone (an update 100x the others' passed) until the window filled again."""
    config = tiny_config(rounds=2, clients_per_round=3)
    result = run_experiment(config)
    checkpoint = decode_checkpoint(LocalStore(config.store.path).get(checkpoint_key(result.run_id)))
    recent = checkpoint.observer_state["screening"]["recent"]
    assert len(recent) == 2 and all(len(distances) == 3 for distances in recent)
    resumed = NormScreen(ratio=10, absolute=1000)
    resumed.load_state(checkpoint.observer_state["screening"])
    boosted = 100 * float(np.median(recent))
    assert list(resumed.outliers({"client-0001": boosted})) == ["client-0001"]
    assert NormScreen(ratio=10, absolute=1000).outliers({"client-0001": boosted}) == {}, "what an empty window let pass"


def test_fednova_screens_an_update_by_what_its_claimed_steps_make_it_count(tiny_config):
    """FedNova divides each change by its claimed local steps: a compromised client that trained its planned steps but
    claimed partial work of 1 step counted its change ~30 times over, and its distance alone passed every norm rule."""
    config = tiny_config(clients=4, clients_per_round=4, rounds=2, retries=0, strategy={"name": "fednova"},
                         train={"epochs": 2, "batch_size": 16, "learning_rate": 0.05})
    result = run_experiment(config, providers={"local": LocalProvider("local", workers=2,
                                                                      entry_point="workloads:claims_one_step_on_client_1")})
    invocations = History(config.history).invocations(result.run_id)
    claimed = [i for i in invocations if i["client_id"] == "client-0001"]
    assert claimed and all(i["outcome"] == "failed" and i["cause"] == "rejected" for i in claimed)
    assert all(i["outcome"] == "succeeded" for i in invocations if i["client_id"] != "client-0001")
