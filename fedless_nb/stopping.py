"""The one line a stopped run ends with, worded alike in the terminal and in a notebook."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .experiment import ExperimentConfig


def resumable(config: "ExperimentConfig") -> bool:
    """Whether a stopped run of `config` can be continued: async rounds' buffer is not checkpointed
    (runner.resume_point refuses them)."""
    return config.mode != "async"


def builder_needs_trust(config: "ExperimentConfig") -> bool:
    """Whether resuming a run of `config` needs --trust-builder: its model.builder is code named in the history
    ('package.module:function'), which runner.resume_point runs only when trusted. A built-in is named by its bare
    name, never with a colon (zoo.builder refuses any other), so this is known without importing the zoo's Keras."""
    return ":" in config.model.builder


def ended_early(status: str, error: str | None) -> str | None:
    """Why a run ended before its last round without a mistake (its privacy budget spent: the reason, with what to do,
    that the history keeps in its error column), said where the run ends; None for a run that finished or failed
    (its error is its own line), or that was stopped by its user (the stop line says where it stopped)."""
    return error if status == "stopped" and error not in (None, "interrupted") else None


def stopped_line(run_id: str | None, rounds: int, continue_with: str | None, run_again: str) -> str:
    """Where a stopped run stopped and what to do next: the command that continues it (`continue_with`, None for a
    run that cannot be resumed) or, with no round finished, the command that starts it again (`run_again`): a run
    with no checkpoint has nothing to continue, and one stopped before it had a run id recorded nothing."""
    if run_id is None:
        return (f"Run stopped while preparing its data and model, before its first round; nothing was recorded: "
                f"run {run_again} again")
    if rounds == 0:
        return (f"Run {run_id} stopped after round 0; no round finished, so there is nothing to continue: "
                f"run {run_again} again")
    line = f"Run {run_id} stopped after round {rounds}; the history keeps every finished round"
    return line if continue_with is None else f"{line}. Continue it with: {continue_with}"
