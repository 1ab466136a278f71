"""The live dashboard's charts, drawn by bqplot (widgets rendered with d3: nice ticks, updated in place
as the kernel sends new arrays, no redraw of the whole figure per round)."""

from __future__ import annotations

from typing import Any, Sequence

import bqplot
import ipywidgets as widgets
import numpy as np

from .record import LEGEND_ALWAYS, OUTCOME_COLORS, client_label

LINE_COLOR = "#1f77b4"
MARGIN = {"top": 40, "bottom": 50, "left": 60, "right": 20}


def whole_ticks(first: int, last: int, most: int = 10) -> list[int]:
    """Whole numbers first..last, thinned to at most `most` ticks (rounds, client rows)."""
    step = max(1, -(-(last - first + 1) // most))
    return list(range(first, last + 1, step))


class MetricChart:
    """A metric per round: one line with its points, rounds as whole numbers on x."""

    def __init__(self, title: str, label: str, y_max: float | None = None) -> None:
        self.x_scale = bqplot.LinearScale(min=1.0, max=2.0)
        self.y_scale = bqplot.LinearScale(min=0.0, max=y_max)
        self.line = bqplot.Lines(x=np.zeros(0), y=np.zeros(0), scales={"x": self.x_scale, "y": self.y_scale},
                                 colors=[LINE_COLOR], marker="circle", stroke_width=2.5)
        self.x_axis = bqplot.Axis(scale=self.x_scale, label="round", tick_format="d", tick_values=np.array([1, 2]))
        self.y_axis = bqplot.Axis(scale=self.y_scale, side="left", label=label, tick_format=".2~f")
        self.figure = bqplot.Figure(marks=[self.line], axes=[self.x_axis, self.y_axis], title=title,
                                    fig_margin=MARGIN, layout=widgets.Layout(width="460px", height="300px"))

    def draw(self, points: Sequence[tuple[float, float]]) -> None:
        last = max(2, int(points[-1][0])) if points else 2
        with self.line.hold_sync():
            self.line.x = np.array([x for x, _ in points], dtype=float)
            self.line.y = np.array([y for _, y in points], dtype=float)
        self.x_scale.max = float(last)
        self.x_axis.tick_values = np.array(whole_ticks(1, last))

    def widgets(self) -> list[Any]:
        return [self.figure, self.line, self.x_axis, self.y_axis, self.x_scale, self.y_scale]


class TimelineChart:
    """A row per client, a bar per invocation from its start to its end, coloured cold, warm or failed."""

    def __init__(self) -> None:
        self.x_scale = bqplot.LinearScale(min=0.0)
        self.y_scale = bqplot.LinearScale(min=-0.5, max=0.5)
        self.bars = bqplot.Lines(x=np.zeros((0, 2)), y=np.zeros((0, 2)), scales={"x": self.x_scale, "y": self.y_scale},
                                 stroke_width=7, colors=[OUTCOME_COLORS["warm"]])
        self.x_axis = bqplot.Axis(scale=self.x_scale, label="seconds since the run started", tick_format="~g")
        # no tick until a client has a row: empty tick_values mean automatic ticks, which label the empty
        # -0.5..0.5 range "-1 0 0 0 ... 1" under the whole-number format; num_ticks=0 draws none (and hides
        # tick_values too, so draw() lifts it)
        self.y_axis = bqplot.Axis(scale=self.y_scale, side="left", label="client", tick_format="d",
                                  tick_values=np.zeros(0), num_ticks=0, label_offset="6ex")  # clear of '0003'
        legend = " &nbsp; ".join(f'<span style="color:{color}">&#9632;</span> {outcome}'
                                 for outcome, color in OUTCOME_COLORS.items() if outcome in LEGEND_ALWAYS)
        self.figure = bqplot.Figure(marks=[self.bars], axes=[self.x_axis, self.y_axis], title="client timeline",
                                    fig_margin=MARGIN, layout=widgets.Layout(width="920px", height="260px"))
        self.legend = widgets.HTML(legend)
        self.view = widgets.VBox([self.figure, self.legend])

    def draw(self, bars: Sequence[tuple[str, float, float, str, str]]) -> None:
        clients = sorted({bar[0] for bar in bars})
        rows = {client: index for index, client in enumerate(clients)}
        with self.bars.hold_sync():
            self.bars.x = np.array([[start, max(finish, start + 0.02)] for _, start, finish, _, _ in bars])
            self.bars.y = np.array([[rows[client]] * 2 for client, *_ in bars], dtype=float)
            self.bars.colors = [OUTCOME_COLORS[outcome] for *_, outcome in bars]
        self.y_scale.min, self.y_scale.max = -0.5, len(clients) - 0.5
        ticks = whole_ticks(0, len(clients) - 1)
        # the labels in a message of their own, before the ticks: bqplot draws new ticks in a transition that writes
        # their text as it starts, with the labels it had when the ticks arrived (in one message: the old ones)
        self.y_axis.tick_labels = {row: client_label(clients[row]) for row in ticks}
        with self.y_axis.hold_sync():
            self.y_axis.tick_values = np.array(ticks)
            self.y_axis.num_ticks = None if ticks else 0

    def widgets(self) -> list[Any]:
        return [self.view, self.figure, self.bars, self.x_axis, self.y_axis, self.x_scale, self.y_scale, self.legend]
