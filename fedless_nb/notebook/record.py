"""The lasting record of a run: a matplotlib figure and a one-paragraph summary.

Live widgets need the kernel that drew them: a saved notebook shows "model not found" where they
were, and GitHub or nbconvert's HTML show their text form. The record is plain HTML and PNG, so any
viewer renders it; the dashboard puts it in place of the widgets when a run ends.
"""

from __future__ import annotations

import base64
import html
import shlex
from typing import TYPE_CHECKING, Any, Sequence

import matplotlib
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from ..data.partition_view import figure_png
from ..experiment import ExperimentConfig
from ..records.history import DEFAULT_HISTORY
from ..stopping import builder_needs_trust, resumable, stopped_line

if TYPE_CHECKING:
    from .dashboard import RunProgress

OUTCOME_COLORS = {"cold": "#1f77b4", "warm": "#2ca02c", "failed": "#d62728", "cut off": "#7f7f7f"}
LEGEND_ALWAYS = ("cold", "warm", "failed")  # "cut off" is named only in a timeline that has one
RECORD_DPI = 96
STYLE = {"font.size": 12, "axes.titlesize": 13, "axes.spines.top": False, "axes.spines.right": False}


def client_label(client_id: str) -> str:
    """A timeline row's name: the client's own number ('0003' for client-0003), since rows hold only the clients
    seen so far, in order, and a row's index is not the client's."""
    return client_id.removeprefix("client-")

Points = Sequence[tuple[float, float]]


def _plot_metric(axes: "matplotlib.axes.Axes", series: dict[str, Points], metric: str) -> None:
    """One line per series; whole rounds on x, accuracy on a fixed 0-1 axis, the legend outside the data."""
    for label, points in series.items():
        axes.plot([x for x, _ in points], [y for _, y in points], marker="o", label=label)
    axes.set_xlabel("round")
    axes.set_ylabel(metric)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # one round in view is one tick
    if metric == "accuracy":
        axes.set_ylim(0.0, 1.0)
    else:
        axes.set_ylim(bottom=0.0)
    axes.grid(alpha=0.3)
    if len(series) > 1:
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def _plot_timeline(axes: "matplotlib.axes.Axes", bars: Sequence[tuple[str, float, float, str, str]],
                   time_label: str) -> None:
    """A row per client, a bar per invocation from its start to its end, coloured cold, warm, failed or cut off; `time_label`
    names when its clock starts (RunProgress.timeline_axis_label)."""
    clients = sorted({bar[0] for bar in bars})
    rows = {client: index for index, client in enumerate(clients)}
    for outcome, color in OUTCOME_COLORS.items():
        spans = [(start, max(finish - start, 1e-3), rows[client])
                 for client, start, finish, _, kind in bars if kind == outcome]
        for start, width, row in spans:
            axes.broken_barh([(start, width)], (row - 0.4, 0.8), color=color)
    axes.set_yticks(range(len(clients)), [client_label(client) for client in clients])
    if len(clients) > 20:
        axes.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=10))
    axes.set_ylabel("client")
    axes.set_xlabel(time_label)
    axes.set_title("client timeline")
    shown = {bar[4] for bar in bars}
    legend = [Patch(color=color, label=outcome) for outcome, color in OUTCOME_COLORS.items()
              if outcome in LEGEND_ALWAYS or outcome in shown]
    axes.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def partition_png(config: dict[str, Any]) -> bytes | None:
    """The label distribution of the split the run trained on (data.preview_config, rebuilt from the run's
    config), or None when it cannot be rebuilt here (e.g. a dataset file that has moved since)."""
    from ..data import preview_config
    from ..errors import UserError

    try:
        preview = preview_config(ExperimentConfig.from_dict(config))
    except UserError:
        return None
    return figure_png(preview.figure(), dpi=RECORD_DPI)


def run_figure(progress: "RunProgress") -> Figure:
    """Accuracy and loss per round side by side, the clients' timeline below."""
    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=(11, 6.5), layout="constrained")
        grid = figure.add_gridspec(2, 2)
        for column, metric in enumerate(("accuracy", "loss")):
            axes = figure.add_subplot(grid[0, column])
            _plot_metric(axes, progress.series(metric), metric)
            axes.set_title(f"test {metric}")
        _plot_timeline(figure.add_subplot(grid[1, :]), list(progress.bars), progress.timeline_axis_label())
    return figure


def compare_figure(series: dict[str, Points], metric: str) -> Figure:
    """A metric per round of several runs, one line each, named in a legend beside the axes."""
    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=(9, 4.5), layout="constrained")
        axes = figure.add_subplot()
        _plot_metric(axes, series, metric)
        axes.set_title(f"test {metric} per round")
    return figure


def magic_on_run(magic: str, run_id: str, history: str, *arguments: str) -> str:
    """`%MAGIC RUN_ID [ARGUMENTS] [--history FILE]`, naming the history file unless it is the default."""
    return " ".join([magic, run_id, *arguments, *(["--history", shlex.quote(history)] if history != DEFAULT_HISTORY else [])])


def resume_command(run_id: str, config: ExperimentConfig, model_name: str | None = None) -> str:
    """The magic that continues run `run_id` of `config`: `%fedless_resume RUN_ID [MODEL] [--trust-builder]
    [--history FILE]`. A model given again is trusted as it is; without one, a 'module:function' builder read back
    from the history runs only with --trust-builder, and the line without it was refused."""
    trust = ["--trust-builder"] if model_name is None and builder_needs_trust(config) else []
    return magic_on_run("%fedless_resume", run_id, str(config.history), *([model_name] if model_name else []), *trust)


class RunRecord:
    """The summary paragraph with the figure below it; `text/html` for notebooks, `image/png` and
    `text/plain` for viewers that render no HTML."""

    def __init__(self, progress: "RunProgress") -> None:
        self.progress = progress
        self.png = figure_png(run_figure(progress), dpi=RECORD_DPI)
        self.partition = partition_png(progress.config) if progress.config else None

    def facts(self) -> list[str]:
        state = self.progress
        facts = [state.rounds_count()]
        facts += state.total_phrases()
        return facts

    def text(self) -> str:
        state = self.progress
        accuracy = state.final_accuracy
        score = "no round finished" if accuracy is None else f"final test accuracy {accuracy:.3f}"
        return f"Run {state.name} ({state.run_id}) {state.status}: {score}; {', '.join(self.facts())}.{self._tail()}"

    def _tail(self) -> str:
        """Where the run is recorded and, for a stopped run, what to do next; no full stop after the last command,
        which is copied as it stands."""
        sentences = [sentence for sentence in (self._where(), self._next()) if sentence]
        return f" {'. '.join(sentences)}" if sentences else ""

    def _where(self) -> str:
        """Where the run is recorded and the magic that shows it, for a user who has not met %fedless_history."""
        history = (self.progress.config or {}).get("history")
        if history is None:
            return ""
        return f"History: {history}; its rounds: {magic_on_run('%fedless_history', self.progress.run_id, str(history))}"

    def _next(self) -> str:
        """A stopped run's line of what to do next, as its cell's interrupt words it (stopping.stopped_line): the record
        replaces the dashboard, and with it the line a Stop button or %fedless_stop had put under the button."""
        state = self.progress
        if state.stop_reason:  # no stop of the user's: why it ended is what to know, and resuming would end it again
            return state.stop_reason
        if state.status != "stopped" or not state.config:
            return ""
        config = ExperimentConfig.from_dict(state.config)
        command = resume_command(state.run_id, config, state.model_name) if resumable(config) else None
        return stopped_line(state.run_id, state.rounds_done, command, run_again="%fedless_train")

    def html(self) -> str:
        state = self.progress
        accuracy = "&ndash;" if state.final_accuracy is None else f"{state.final_accuracy:.3f}"
        image = base64.b64encode(self.png).decode()
        return (
            f'<div class="fedless-record">'
            f'<p><span style="font-size:2.5em;font-weight:bold">{accuracy}</span> final test accuracy &middot; '
            f"run <b>{html.escape(state.name)}</b> <code>{html.escape(state.run_id)}</code> {html.escape(state.status)}: "
            f"{html.escape(', '.join(self.facts()))}.{html.escape(self._tail())}</p>"
            f'<img src="data:image/png;base64,{image}" alt="accuracy, loss and client timeline of the run" '
            f'style="max-width:100%"/>{self._partition_html()}</div>'
        )

    def _partition_html(self) -> str:
        if self.partition is None:
            return ""
        image = base64.b64encode(self.partition).decode()
        return (f'<p>The split it trained on: examples per class of each client.</p><img src="data:image/png;base64,'
                f'{image}" alt="label distribution of the clients\' data" style="max-width:100%"/>')

    def _repr_mimebundle_(self, include: object = None, exclude: object = None) -> dict[str, str]:
        return {"text/html": self.html(), "image/png": base64.b64encode(self.png).decode(), "text/plain": self.text()}
