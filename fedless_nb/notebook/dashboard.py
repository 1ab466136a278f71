"""The live dashboard: an observer of the controller's events, shown as ipywidgets or as plain text.

`RunProgress` folds events into what there is to show; `WidgetDashboard` and `TextDashboard`
only draw it. Widgets need an interactive frontend with a widget manager (JupyterLab, Notebook, VS Code);
under batch execution (nbconvert, nbclient, papermill) the text form is used. Either way a run
ends with its static record (record.py), which any notebook viewer renders.
"""

from __future__ import annotations

import collections
import html
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from ..records.cost import CostModel
from ..records.earlier import EarlierRounds, earlier_rounds
from ..rounds.events import Event, InvocationFinished, RoundFinished, RoundStarted, RunFinished, RunStarted
from ..stopping import ended_early
from ..wording import run_start_words
DASHBOARD_MODES = ("auto", "widgets", "text", "compact", "none")
# RunProgress.totals' counts as one of them reads: '1 failures', '1 invocations' read wrong (the other totals, cost
# and epsilon, are figures, whose name reads the same whatever the value)
ONE_OF = {"invocations": "invocation", "failures": "failure", "cold starts": "cold start",
          "of them secure-aggregation stages": "of them a secure-aggregation stage"}
TIMELINE_BARS = 400  # the newest invocations drawn; a long run's timeline stays bounded
CUT_OFF = "cut off by the run's end"  # the total of calls cancelled as the run ended (see timeline_outcome)


def timeline_outcome(outcome: str, cause: str | None, cold: bool | None) -> str:
    """What an invocation's bar shows: a call still running when the run ended (an interrupt, a stop of the kernel's,
    an error elsewhere: the controller's abandon, cause "interrupted") was cut off, no failure of its client's;
    otherwise failed, or its start cold or warm."""
    if outcome == "failed":
        return "cut off" if cause == "interrupted" else "failed"
    return "cold" if cold else "warm"


@dataclass
class RunProgress:
    """What the dashboard shows, folded from a run's events."""

    run_id: str = ""
    name: str = ""
    config: dict[str, Any] = field(default_factory=dict)  # the run's config, for the record's partition figure
    total_rounds: int = 0
    rounds_done: int = 0
    round_running: int = 0
    started_at: float = 0.0
    status: str = "starting"
    metrics: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    bars: collections.deque = field(default_factory=lambda: collections.deque(maxlen=TIMELINE_BARS))
    invocations: int = 0
    stage_invocations: int = 0  # secure aggregation's protocol stages (part of `invocations`)
    failures: int = 0
    cut_off: int = 0  # calls cancelled as the run ended (timeline_outcome), not counted as failures
    cold_starts: int = 0
    cost: float = 0.0  # estimated from the providers' prices, as the history records it (see cost.py)
    prices: CostModel | None = None
    privacy: dict[str, float] = field(default_factory=dict)  # the last round's epsilon figures, when DP is on
    last_round: RoundFinished | None = None
    model_name: str | None = None  # the notebook variable holding the run's model, which resuming it needs again
    stop_reason: str | None = None  # why the run stopped before its last round on its own (stopping.ended_early)
    resumed_from: int = 0  # a resumed run: the round its checkpoint had finished; its totals count the rounds before

    def update(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.run_id, self.name, self.total_rounds, self.started_at = event.run_id, event.name, event.rounds, event.started_at
            self.config = event.config
            self.prices = CostModel.for_run({"providers": event.providers, "config": event.config})
            self.status = "running"
            if event.resumed_from:
                self.resumed_from = self.rounds_done = event.resumed_from
                self._count_earlier(earlier_rounds(event.config.get("history"), event.run_id, event.resumed_from))
        elif isinstance(event, RoundStarted):
            self.round_running = event.round
        elif isinstance(event, InvocationFinished):
            self.invocations += 1
            self.stage_invocations += event.stage is not None
            outcome = timeline_outcome(event.outcome, event.cause, event.cold)
            self._count_outcome(outcome)
            self.cold_starts += bool(event.cold)
            if self.prices is not None:
                self.cost += self.prices.invocation(event.provider, event.started_at, event.finished_at, event.timings)
            self.bars.append((event.client_id, event.started_at - self.started_at,
                              event.finished_at - self.started_at, event.provider, outcome))
        elif isinstance(event, RoundFinished):
            self.rounds_done, self.last_round = event.round, event
            self.metrics.append((event.round, event.eval_metrics))
            self.privacy = dict(event.privacy_metrics)
        elif isinstance(event, RunFinished):
            self.status, self.stop_reason = event.status, ended_early(event.status, event.error)

    def _count_earlier(self, earlier: EarlierRounds) -> None:
        """A resumed run's rounds before its checkpoint, from its history, in its metrics and totals: the run's id and
        round numbers are the whole run's, and so are its totals (its timeline shows this session's invocations)."""
        self.metrics = [(row["round"], {name.removeprefix("eval_"): value for name, value in row.items()
                                        if name.startswith("eval_") and value is not None}) for row in earlier.rounds]
        if earlier.rounds:
            self.privacy = {name.removeprefix("privacy_"): value for name, value in earlier.rounds[-1].items()
                            if name.startswith("privacy_") and value is not None}
        for row in earlier.invocations:
            self.invocations += 1
            self.stage_invocations += row["stage"] is not None
            self._count_outcome(timeline_outcome(row["outcome"], row["cause"], row["cold"]))
            self.cold_starts += bool(row["cold"])
            self.cost += row["cost"] or 0.0

    def _count_outcome(self, outcome: str) -> None:
        self.failures += outcome == "failed"
        self.cut_off += outcome == "cut off"

    def series(self, name: str) -> dict[str, list[tuple[float, float]]]:
        return {name: [(r, values[name]) for r, values in self.metrics if name in values]}

    @property
    def final_accuracy(self) -> float | None:
        """The accuracy after the last finished round."""
        return self.metrics[-1][1].get("accuracy") if self.metrics else None

    def totals(self) -> dict[str, int | str]:
        """Counts, plus the estimated cost on a priced platform and the privacy spent so far when DP is on."""
        totals: dict[str, int | str] = {"invocations": self.invocations}
        if self.stage_invocations:  # named next to the invocations they are part of
            totals["of them secure-aggregation stages"] = self.stage_invocations
        totals["failures"] = self.failures
        if self.cut_off:
            totals[CUT_OFF] = self.cut_off
        totals["cold starts"] = self.cold_starts
        if self.cost > 0:
            totals["estimated cost (USD)"] = f"{self.cost:.6f}"
        if "epsilon_max" in self.privacy:
            totals["epsilon, worst client (example-level)"] = f"{self.privacy['epsilon_max']:.3g}"
        if "central_epsilon" in self.privacy:
            totals["epsilon (client-level, central DP)"] = f"{self.privacy['central_epsilon']:.3g}"
        return totals

    def total_phrases(self, shown: Callable[[str], str] = str) -> list[str]:
        """The totals as the summary line, the record and the widget word them ('1 failure', '2 cold starts'), each
        value through `shown` (the widget's bold)."""
        return [f"{shown(str(value))} {ONE_OF.get(name, name) if value == 1 else name}"
                for name, value in self.totals().items()]

    def rounds_count(self) -> str:
        """`3/5 rounds`, and where a resumed run resumed: its rounds count the whole run."""
        resumed = f" (resumed after round {self.resumed_from})" if self.resumed_from else ""
        return f"{self.rounds_done}/{self.total_rounds} rounds{resumed}"

    def timeline_axis_label(self) -> str:
        """The timeline's time axis, the live widget's and the saved record's: its clock starts at the run's start, a
        resumed run's at the resume, since its earlier invocations ran in another session and are not drawn."""
        since = f"the resume after round {self.resumed_from}" if self.resumed_from else "the run started"
        return f"seconds since {since}"

    def round_line(self) -> str:
        event = self.last_round
        assert event is not None
        metrics = "  ".join(f"{name} {value:.4f}" for name, value in event.eval_metrics.items())
        return (f"Round {event.round}/{self.total_rounds}  {metrics}  {event.succeeded}/{event.selected} ok  "
                f"{event.finished_at - event.started_at:.2f}s")

    def summary_line(self) -> str:
        totals = ", ".join(self.total_phrases())
        reason = f"; {self.stop_reason}" if self.stop_reason else ""
        return f"Run {self.run_id} {self.status}: {self.rounds_count()}, {totals}{reason}"


class TextDashboard:
    """One line when the run starts, one per finished round, a summary at the end."""

    def __init__(self, write: Callable[[str], None] | None = None,
                 show_record: Callable[[Any], Any] | None = None) -> None:
        self.progress = RunProgress()
        self.write = write or (lambda line: print(line, flush=True))
        self.show_record = show_record  # IPython's display in a notebook: the run's RunRecord at its end

    def __call__(self, event: Event) -> None:
        self.progress.update(event)
        if isinstance(event, RunStarted):
            self.write(f"Run {event.run_id}{run_start_words(event.clients, event.rounds, event.resumed_from)}")
        elif isinstance(event, RoundFinished):
            self.write(self.progress.round_line())
        elif isinstance(event, RunFinished):
            self.write(self.progress.summary_line())
            if self.show_record is not None:
                from .record import RunRecord

                self.show_record(RunRecord(self.progress))


class CompactDashboard:
    """One line per run, rewritten in place as rounds finish: for loops and sweeps, where a dashboard per run
    would stack up. `label` names the run in the line (a sweep's grid values); default the run's name."""

    def __init__(self, show: Callable[..., Any], label: str | None = None) -> None:
        self.progress = RunProgress()
        self.show, self.label = show, label
        self.handle: Any = None

    def line(self) -> str:
        state = self.progress
        accuracy = "" if state.final_accuracy is None else f"  accuracy {state.final_accuracy:.3f}"
        status = f"round {state.rounds_done}/{state.total_rounds}" if state.status == "running" else (
            f"{state.status} after {state.rounds_done}/{state.total_rounds} rounds")
        return f"{self.label or state.name} ({state.run_id}): {status}{accuracy}"

    def __call__(self, event: Event) -> None:
        self.progress.update(event)
        if isinstance(event, RunStarted):
            self.handle = self.show({"text/plain": self.line()}, raw=True, display_id=True)
        elif isinstance(event, (RoundFinished, RunFinished)) and self.handle is not None:
            self.handle.update({"text/plain": self.line()}, raw=True)


STOP_BY_INTERRUPT = "Stop: interrupt the kernel"
STOP_AFTER_ROUND = "Stop after this round"
STOPPING = "Stopping after this round"
INTERRUPT_TOOLTIP = ("A cell waits for this run, so the kernel reads no click until the run ends: interrupt the kernel "
                     "(the toolbar's ■, or I, I) to stop the run. A --background run's Stop button works while no cell "
                     "waits for it.")


class WidgetDashboard:
    """Round progress, a Stop button, the latest accuracy, accuracy and loss charts (bqplot), the client timeline and
    running totals, updated in place; when the run ends its display is replaced by the static RunRecord.

    The kernel reads a click (a comm message) only while no cell blocks it: a foreground run's cell waits for the run,
    so its button stays disabled and says to interrupt the kernel; a background run offers its stop (`offer_stop`)
    until a cell waits for it where the kernel reads no comm then (`offer_interrupt`)."""

    def __init__(self, show: Callable[..., Any] | None = None) -> None:
        import ipywidgets as widgets

        from .live_charts import MetricChart, TimelineChart

        self.progress = RunProgress()
        self.show = show  # IPython's display: the widgets appear once the run has started, never empty above an error
        self.handle: Any = None  # the DisplayHandle they were shown with
        self.ended = False  # the run has ended and its record replaced the widgets
        self.title = widgets.HTML("<b>fedless_nb</b>: starting")
        self.score = widgets.HTML()
        self.bar = widgets.IntProgress(value=0, min=0, max=1, description="Round 0", bar_style="info",
                                       style={"description_width": "initial"}, layout=widgets.Layout(width="480px"))
        self.accuracy = MetricChart("test accuracy", "accuracy", y_max=1.0)
        self.loss = MetricChart("test loss", "loss")
        self.timeline = TimelineChart()
        self.totals = widgets.HTML()
        self.stop_button = widgets.Button(description=STOP_BY_INTERRUPT, tooltip=INTERRUPT_TOOLTIP, disabled=True,
                                          icon="stop", layout=widgets.Layout(width="auto"))  # until offer_stop
        self.stop_button.on_click(self._stop_clicked)
        self.stop_note = widgets.HTML()  # the line a stop prints: what comes next
        self._stop: Callable[[], Any] | None = None
        self.stop_asked = False
        for widget, name in ((self.bar, "progress"), (self.score, "score"), (self.accuracy.figure, "accuracy"),
                             (self.loss.figure, "loss"), (self.timeline.figure, "timeline"), (self.totals, "totals"),
                             (self.stop_button, "stop"), (self.stop_note, "stop-note")):
            widget.add_class(f"fedless-{name}")
        self.widget = widgets.VBox([self.title, widgets.HBox([self.bar, self.stop_button, self.score]), self.stop_note,
                                    widgets.HBox([self.accuracy.figure, self.loss.figure]),
                                    self.timeline.view, self.totals])
        self.widget.add_class("fedless-dashboard")

    def offer_interrupt(self) -> None:
        """The kernel reads no click while a cell waits for the run: the button is disabled and says to interrupt the
        kernel, which stops the run. Called on the run thread once the run has started."""
        if self.ended or self.stop_asked:
            return
        self.stop_button.disabled, self.stop_button.description = True, STOP_BY_INTERRUPT
        self.stop_button.tooltip = INTERRUPT_TOOLTIP

    def offer_stop(self, stop: Callable[[], Any]) -> None:
        """Let the Stop button call `stop` (a background run's `stop`, as %fedless_stop does): no cell waits for the
        run, so the kernel reads the click. Call it before the run starts: the widgets are then the run thread's."""
        self._stop = stop
        self.stop_button.disabled = False
        self.stop_button.description = STOP_AFTER_ROUND
        self.stop_button.tooltip = "End the run after its current round; the history keeps every finished round"

    def _stop_clicked(self, _: Any) -> None:
        if self._stop is not None and not self.stop_button.disabled:  # a comm message can click a disabled button
            self._stop()

    def stopping(self, line: str) -> None:
        """A stop was asked (the button, %fedless_stop, run.stop()): the button is spent and `line` says what comes
        next. Called on the run thread, which alone touches the widgets."""
        if self.ended:
            return
        self.stop_asked = True
        self.stop_button.disabled, self.stop_button.description = True, STOPPING
        self.stop_note.value = html.escape(line)

    def __call__(self, event: Event) -> None:
        state = self.progress
        state.update(event)
        if isinstance(event, RunStarted):
            self.bar.max = event.rounds
            self.timeline.x_axis.label = state.timeline_axis_label()
            self._draw_rounds()  # a resumed run's rounds before its checkpoint, and its totals so far
            if state.resumed_from:
                self._draw_totals()
            if self.show is not None:
                self.handle = self.show(self.widget, display_id=True)
        elif isinstance(event, RoundStarted):
            self.bar.description = f"Round {event.round}/{state.total_rounds}"
        elif isinstance(event, InvocationFinished):
            self.timeline.draw(list(state.bars))
            self._draw_totals()
        elif isinstance(event, RoundFinished):
            self._draw_rounds()
        elif isinstance(event, RunFinished):
            self.bar.bar_style = {"finished": "success", "stopped": "warning"}.get(event.status, "danger")
            self.stop_button.disabled, self.stop_button.description = True, f"Run {event.status}"
            self._draw_title()
            self._leave_record()

    def show_again(self) -> bool:
        """Show the dashboard once more in the current cell (a page reloaded before the notebook was saved has lost
        its view): the live widgets while the run trains, its record once it has ended. Shown under the same display
        id, so the record replaces this view too. False if the dashboard was never shown."""
        if self.handle is None or self.show is None:
            return False
        from .record import RunRecord

        self.show(RunRecord(self.progress) if self.ended else self.widget, display_id=self.handle.display_id)
        return True

    def _leave_record(self) -> None:
        """Put the static record where the widgets were, and free the widgets: the kernel keeps no view of a past run."""
        self.ended = True
        if self.handle is None:
            return
        from .record import RunRecord

        self.handle.update(RunRecord(self.progress))
        for widget in (*_descendants(self.widget), *self.accuracy.widgets(), *self.loss.widgets(),
                       *self.timeline.widgets()):
            widget.close()

    def _draw_rounds(self) -> None:
        """The bar, the charts, the score and the title as of the last finished round."""
        state = self.progress
        self.bar.value = state.rounds_done
        self.accuracy.draw(state.series("accuracy")["accuracy"])
        self.loss.draw(state.series("loss")["loss"])
        if state.final_accuracy is not None:
            self.score.value = (f'<span style="font-size:2em;font-weight:bold">{state.final_accuracy:.3f}</span>'
                                " test accuracy")
        self._draw_title()

    def _draw_title(self) -> None:
        state = self.progress
        self.title.value = (f"<b>Run {html.escape(state.name)}</b> <code>{html.escape(state.run_id)}</code>: "
                            f"{state.status}, {state.rounds_count()}")

    def _draw_totals(self) -> None:
        self.totals.value = " &nbsp; ".join(self.progress.total_phrases(lambda value: f"<b>{value}</b>"))


def _descendants(widget: Any) -> list[Any]:
    """`widget` and every widget in its boxes, nested."""
    return [widget, *(child for box in getattr(widget, "children", ()) for child in _descendants(box))]


def frontend_renders_widgets(shell: Any) -> bool:
    """True in a Jupyter kernel whose current frontend is an interactive one.

    Interactive frontends (JupyterLab, Notebook, VS Code) let the kernel ask for input; batch
    execution (nbclient, nbconvert, papermill) sends its cells with allow_stdin false, and no
    widget would ever render there. A widget manager that has opened ipywidgets' control comm
    (to restore the kernel's widgets) is direct evidence too, whatever the stdin setting.
    """
    kernel = getattr(shell, "kernel", None)
    if kernel is None:
        return False
    if getattr(kernel, "_allow_stdin", False):
        return True
    widgets = sys.modules.get("ipywidgets")
    return widgets is not None and widgets.Widget._control_comm is not None


def make_dashboard(mode: str, shell: Any, model_name: str | None = None) -> Callable[[Event], None] | None:
    """The observer for `mode` (see DASHBOARD_MODES), shown in the current cell once the run starts; None for "none".
    `model_name` (the notebook variable holding the model) goes into the line of a stopped run's record that resumes it."""
    if mode == "auto":
        mode = "widgets" if frontend_renders_widgets(shell) else "text"
    if mode == "none":
        return None
    from IPython.display import display

    if mode == "text":
        dashboard: TextDashboard | CompactDashboard | WidgetDashboard = TextDashboard(show_record=display)
    elif mode == "compact":
        dashboard = CompactDashboard(display)
    else:
        dashboard = WidgetDashboard(show=display)
    dashboard.progress.model_name = model_name
    return dashboard
