"""The dashboard as an observer: events in, widgets or text out; its SVG charts are well-formed XML."""

import xml.etree.ElementTree as ET

import pytest
from IPython import get_ipython
from IPython.testing.globalipapp import start_ipython

from fedless_nb.records.cost import CostModel
from fedless_nb.rounds.events import InvocationFinished, RoundFinished, RoundStarted, RunFinished, RunStarted
from fedless_nb.notebook.chart import line_chart, timeline_chart
from fedless_nb.notebook.dashboard import (
    TIMELINE_BARS, RunProgress, TextDashboard, WidgetDashboard, make_dashboard, frontend_renders_widgets,
)

SVG = "{http://www.w3.org/2000/svg}"


def run_events(rounds=3, clients=("client-0000", "client-0001"), fail_last=True):
    """The events of a short run as the controller emits them: one cold start per client, the last call failing."""
    yield RunStarted("r1", "demo", {}, rounds, len(clients), [{"name": "local"}], 100.0)
    for round_number in range(1, rounds + 1):
        start = 100.0 + 10 * round_number
        yield RoundStarted("r1", round_number, list(clients), start)
        for index, client in enumerate(clients):
            failed = fail_last and round_number == rounds and index == len(clients) - 1
            yield InvocationFinished("r1", round_number, client, "local", "failed" if failed else "succeeded",
                                     start, start + 2 + index, cold=None if failed else round_number == 1,
                                     error="boom" if failed else None)
        yield RoundFinished("r1", round_number, start, start + 4, len(clients), len(clients) - (round_number == rounds),
                            int(round_number == rounds), {"loss": 2.0 / round_number, "accuracy": 0.3 * round_number},
                            {})
    yield RunFinished("r1", "finished", 200.0, rounds, {"accuracy": 0.9})


def test_progress_folds_the_events():
    progress = RunProgress()
    for event in run_events():
        progress.update(event)
    assert (progress.run_id, progress.rounds_done, progress.total_rounds, progress.status) == ("r1", 3, 3, "finished")
    assert progress.totals() == {"invocations": 6, "failures": 1, "cold starts": 2}
    assert progress.series("accuracy") == {"accuracy": [(1, 0.3), (2, 0.6), (3, pytest.approx(0.9))]}
    assert [bar[4] for bar in progress.bars] == ["cold", "cold", "warm", "warm", "warm", "failed"]
    assert progress.bars[0][:3] == ("client-0000", 10.0, 12.0)


def test_totals_show_estimated_cost_and_privacy_when_there_are_any():
    """A priced platform adds its estimated cost (as the history prices it); DP rounds add their epsilon."""
    lambda_provider = {"name": "aws", "kind": "lambda", "memory_mb": 2048}
    progress = RunProgress()
    progress.update(RunStarted("r2", "dp", {"providers": [{"name": "aws", "kind": "lambda"}]}, 1, 1, [lambda_provider], 0.0))
    progress.update(InvocationFinished("r2", 1, "client-0000", "aws", "succeeded", 0.0, 2.0, cold=True,
                                       timings={"total": 1.5}))
    progress.update(RoundFinished("r2", 1, 0.0, 2.0, 1, 1, 0, {"accuracy": 0.5}, {},
                                  {"epsilon_max": 3.14159, "epsilon_mean": 2.0}))
    expected = CostModel.for_run({"providers": [lambda_provider]}).invocation("aws", 0.0, 2.0, {"total": 1.5})
    assert expected > 0
    totals = progress.totals()
    assert totals["estimated cost (USD)"] == f"{expected:.6f}"
    assert totals["epsilon, worst client (example-level)"] == "3.14"
    assert "epsilon (client-level, central DP)" not in totals
    local = RunProgress()
    for event in run_events():
        local.update(event)
    assert set(local.totals()) == {"invocations", "failures", "cold starts"}, "a free local run shows no cost"


def test_text_dashboard_writes_a_line_per_round_and_a_summary():
    lines = []
    dashboard = TextDashboard(lines.append)
    for event in run_events():
        dashboard(event)
    assert lines[0] == "Run r1: 2 clients, 3 rounds"
    assert lines[1] == "Round 1/3  loss 2.0000  accuracy 0.3000  2/2 ok  4.00s"
    assert lines[3].startswith("Round 3/3") and "1/2 ok" in lines[3]
    assert lines[4] == "Run r1 finished: 3/3 rounds, 6 invocations, 1 failures, 2 cold starts"


def test_widget_dashboard_updates_in_place():
    dashboard = WidgetDashboard()
    events = list(run_events())
    for event in events[:8]:  # round 1, then round 2 started and its two invocations
        dashboard(event)
    assert dashboard.bar.max == 3 and dashboard.bar.value == 1 and dashboard.bar.description == "Round 2/3"
    for event in events[8:]:
        dashboard(event)
    assert dashboard.bar.value == 3 and dashboard.bar.bar_style == "success"
    assert "r1</b>: finished, 3/3 rounds" in dashboard.title.value
    accuracy = ET.fromstring(dashboard.accuracy.value)
    (line,) = accuracy.iter(f"{SVG}polyline")
    assert len(line.get("points").split()) == 3 and line.get("data-name") == "accuracy"
    timeline = ET.fromstring(dashboard.timeline.value)
    outcomes = [rect.get("data-outcome") for rect in timeline.iter(f"{SVG}rect") if rect.get("data-outcome")]
    assert outcomes == ["cold", "cold", "warm", "warm", "warm", "failed"]
    assert "<b>1</b> failures" in dashboard.totals.value
    classes = {name for child in [dashboard.widget, *dashboard.widget.children] for name in child._dom_classes}
    assert {"fedless-dashboard", "fedless-progress", "fedless-timeline", "fedless-totals"} <= classes


def test_a_stopped_run_shows_as_a_warning():
    dashboard = WidgetDashboard()
    for event in list(run_events())[:-1]:
        dashboard(event)
    dashboard(RunFinished("r1", "stopped", 200.0, 3, {}))
    assert dashboard.bar.bar_style == "warning"


def test_the_timeline_keeps_only_the_newest_invocations():
    progress = RunProgress()
    progress.update(RunStarted("r1", "demo", {}, 1, 1, [], 0.0))
    for index in range(TIMELINE_BARS + 50):
        progress.update(InvocationFinished("r1", 1, "client-0000", "local", "succeeded", index, index + 1, cold=False))
    assert len(progress.bars) == TIMELINE_BARS and progress.bars[0][1] == 50
    assert progress.invocations == TIMELINE_BARS + 50


def test_charts_are_well_formed_svg_with_escaped_labels():
    chart = ET.fromstring(line_chart({"a<b": [(1, 0.5), (2, 0.7)], "c": [(1, 0.1)]}, title="t & u", y_label="loss"))
    assert chart.get("class") == "fedless-chart"
    assert [p.get("data-name") for p in chart.iter(f"{SVG}polyline")] == ["a<b", "c"]
    empty = ET.fromstring(line_chart({}, title="nothing yet", y_label="accuracy", y_range=(0.0, 1.0)))
    assert list(empty.iter(f"{SVG}polyline")) == []
    timeline = ET.fromstring(timeline_chart([("c1", 0.0, 1.5, "aws", "cold"), ("c2", 0.5, 0.5, "aws", "failed")]))
    rects = [r for r in timeline.iter(f"{SVG}rect") if r.get("data-outcome")]
    assert float(rects[1].get("width")) >= 1.0, "a zero-length invocation stays visible"
    assert rects[0].find(f"{SVG}title").text == "c1 on aws: cold, 0.00s to 1.50s"


def test_outside_a_kernel_the_dashboard_is_text():
    shell = start_ipython() or get_ipython()  # a terminal IPython: no kernel, no widgets
    assert not frontend_renders_widgets(shell)
    assert isinstance(make_dashboard("auto", shell), TextDashboard)
    assert make_dashboard("none", shell) is None
