"""How a RunResult shows as a cell's value: under the run's record, what the object is and what to call on it.

The record (notebook/record.py) already shows the run's figures and totals; a cell ending in `run` shows the object
too, whose plain repr said nothing of how to reach the rounds or the model. Plain HTML and text: no IPython needed.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .runner import RunResult


def result_summary(result: "RunResult") -> str:
    """`run NAME (ID) finished: 5/5 rounds, final test accuracy 0.911`, worded as the run's record words it."""
    accuracy = result.final_accuracy
    score = "no round finished" if accuracy is None else f"final test accuracy {accuracy:.3f}"
    return (f"run {result.config.name} ({result.run_id}) {result.status}: "
            f"{len(result.round_metrics)}/{result.config.rounds} rounds, {score}")


def result_calls(result: "RunResult") -> list[tuple[str, str]]:
    """(call, what it gives) for each thing to read from the result; the privacy report only when DP is on."""
    calls = [(".rounds_frame()", "each round's counts, seconds and test metrics, as a DataFrame"),
             (".invocations_frame()", "each function invocation: client, outcome, cold start, timings"),
             (".model()", "the Keras model with the trained global weights")]
    if result.privacy_reports():
        calls.append((".privacy_report()", "the run's differential-privacy guarantee"))
    return calls


def result_text(result: "RunResult") -> str:
    calls = result_calls(result)
    width = max(len(call) for call, _ in calls)
    return "\n".join([f"RunResult: {result_summary(result)}",
                      *(f"  {call.ljust(width)}  {what}" for call, what in calls)])


def result_html(result: "RunResult") -> str:
    rows = "".join(f"<tr><td style=\"text-align:left\"><code>{html.escape(call)}</code></td>"
                   f"<td style=\"text-align:left\">{html.escape(what)}</td></tr>" for call, what in result_calls(result))
    return (f'<div class="fedless-result"><p><b>RunResult</b>: {html.escape(result_summary(result))}</p>'
            f"<table>{rows}</table></div>")
