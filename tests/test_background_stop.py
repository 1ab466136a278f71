"""A background run's stop (run.stop(), %fedless_stop) asked at each stage of the run ends it after the round in
progress. The stage is held with an event on the run's thread while the stop is asked, not reached by sleeping."""

import threading

import pytest

from fedless_nb.notebook.execution import BackgroundRun
from fedless_nb.rounds.events import InvocationFinished, RoundFinished, RoundStarted, RunStarted

STAGES = {
    "starting": lambda event: isinstance(event, RunStarted),
    "round 1 set up": lambda event: isinstance(event, RoundStarted) and event.round == 1,
    "round 1 training": lambda event: isinstance(event, InvocationFinished) and event.round == 1,
    "between rounds 1 and 2": lambda event: isinstance(event, RoundFinished) and event.round == 1,
    "round 2 set up": lambda event: isinstance(event, RoundStarted) and event.round == 2,
}


class HoldAt:
    """An observer that holds the run's thread at the first event `stage` matches until the test has asked the stop."""

    def __init__(self, stage):
        self.stage, self.reached, self.release = stage, threading.Event(), threading.Event()

    def __call__(self, event):
        if not self.reached.is_set() and self.stage(event):
            self.reached.set()
            assert self.release.wait(60), "the test never released the run"


@pytest.mark.parametrize("stage", STAGES, ids=list(STAGES))
def test_a_stop_asked_at_any_stage_ends_the_run_after_the_round_in_progress(tiny_config, stage):
    hold, started, runs = HoldAt(STAGES[stage]), threading.Event(), []

    def stop_while_held():  # as %fedless_stop in the next cell: once the starting cell has returned
        if hold.reached.wait(60) and started.wait(60):
            runs[0].stop()
        hold.release.set()

    asker = threading.Thread(target=stop_while_held, daemon=True)
    asker.start()
    runs.append(BackgroundRun(tiny_config(rounds=6), None, [hold]))
    started.set()
    asker.join(60)
    result = runs[0].future.result(300)
    assert result.status == "stopped"
    assert len(result.round_metrics) == (2 if stage == "round 2 set up" else 1)


def test_a_stop_asked_in_the_last_round_says_the_run_finishes(tiny_config):
    """A stop asked in the last round skips no round: the run finishes. The line used to say it stops after its current
    round and how to continue it, while it finished every round."""
    hold = HoldAt(lambda event: isinstance(event, RoundStarted) and event.round == 2)
    run = BackgroundRun(tiny_config(rounds=2), None, [hold])
    assert hold.reached.wait(300), "the run never began its last round"
    try:
        line = run.stop()
    finally:
        hold.release.set()
    assert line == f"Run {run.run_id} has no round left to skip: it finishes after round 2"
    assert run.future.result(300).status == "finished"


def test_a_second_stop_says_the_run_is_already_stopping(tiny_config):
    """A second %fedless_stop repeated the first one's line, as if the first had not been heard."""
    hold = HoldAt(lambda event: isinstance(event, RoundStarted) and event.round == 1)
    run = BackgroundRun(tiny_config(rounds=4), None, [hold])
    assert hold.reached.wait(300), "the run never began its first round"
    try:
        first, second = run.stop(), run.stop()
    finally:
        hold.release.set()
    assert first.startswith(f"Run {run.run_id} stops after its current round")
    assert second.startswith(f"Run {run.run_id} is already stopping after its current round")
    assert run.future.result(300).status == "stopped"
