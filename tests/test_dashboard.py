"""The dashboard as an observer: events in, widgets or text out; the static record a run leaves."""
import base64
import dataclasses
import html

import pytest
from IPython import get_ipython
from IPython.testing.globalipapp import start_ipython

from fedless_nb.records.cost import CostModel
from fedless_nb.rounds.events import InvocationFinished, RoundFinished, RoundStarted, RunFinished, RunStarted
from fedless_nb.notebook.live_charts import whole_ticks
from fedless_nb.notebook.magics import run_labels
from fedless_nb.data import preview_config
from fedless_nb.data.partition_view import figure_png
from fedless_nb.experiment import ExperimentConfig
from fedless_nb.notebook.record import OUTCOME_COLORS, RECORD_DPI, RunRecord, compare_figure, magic_on_run, run_figure
from fedless_nb.notebook.dashboard import (
    TIMELINE_BARS, CompactDashboard, RunProgress, TextDashboard, WidgetDashboard, make_dashboard,
    frontend_renders_widgets,
)

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


def test_a_run_of_one_client_and_one_round_is_counted_in_the_singular():
    """It read 'Run r1: 1 clients, 1 rounds' (a quick try of one round)."""
    lines = []
    dashboard = TextDashboard(lines.append)
    for event in run_events(rounds=1, clients=("client-0000",), fail_last=False):
        dashboard(event)
    assert lines[0] == "Run r1: 1 client, 1 round"



def test_totals_of_one_read_in_the_singular_in_the_summary_the_record_and_the_widget():
    """'1 failures', '1 cold starts': the three places that word the totals each wrote '{value} {name}'."""
    events = list(run_events(rounds=1))  # two invocations, the second failing: one failure, one cold start
    lines = []
    text = TextDashboard(lines.append)
    widgets = WidgetDashboard()
    for event in events:
        text(event)
        widgets(event)
    assert lines[-1] == "Run r1 finished: 1/1 rounds, 2 invocations, 1 failure, 1 cold start"
    assert RunRecord(text.progress).text().endswith("; 1/1 rounds, 2 invocations, 1 failure, 1 cold start.")
    assert widgets.totals.value == "<b>2</b> invocations &nbsp; <b>1</b> failure &nbsp; <b>1</b> cold start"


def test_secure_aggregation_stages_are_named_next_to_the_invocations_they_are_part_of():
    progress = RunProgress()
    for event in run_events(rounds=1):
        progress.update(dataclasses.replace(event, stage="share") if isinstance(event, InvocationFinished) else event)
    assert progress.total_phrases() == ["2 invocations", "2 of them secure-aggregation stages", "1 failure",
                                        "1 cold start"]
    progress.stage_invocations = 1
    assert progress.total_phrases()[1] == "1 of them a secure-aggregation stage"

def test_progress_folds_the_events():
    progress = RunProgress()
    for event in run_events():
        progress.update(event)
    assert (progress.run_id, progress.rounds_done, progress.total_rounds, progress.status) == ("r1", 3, 3, "finished")
    assert progress.totals() == {"invocations": 6, "failures": 1, "cold starts": 2}
    assert progress.series("accuracy") == {"accuracy": [(1, 0.3), (2, 0.6), (3, pytest.approx(0.9))]}
    assert [bar[4] for bar in progress.bars] == ["cold", "cold", "warm", "warm", "warm", "failed"]
    assert progress.bars[0][:3] == ("client-0000", 10.0, 12.0)


def test_calls_cut_off_by_an_interrupt_are_no_failures():
    """Interrupting a run (Kernel > Interrupt) cancels the calls still running; its record counted them as failures and
    drew them red, as if clients had failed ('6/40 rounds, 35 invocations, 4 failures'), where the user had stopped the
    run. They are counted and drawn as cut off; the legend names that outcome only where a run has one."""
    events = list(run_events(rounds=2, fail_last=False))
    cut_off = InvocationFinished("r1", 3, "client-0001", "local", "failed", 130.0, 131.0,
                                 error="the run stopped while it ran", cause="interrupted")
    progress = RunProgress()
    for event in [*events[:-1], RoundStarted("r1", 3, ["client-0001"], 130.0), cut_off,
                  RunFinished("r1", "stopped", 131.0, 2, {"accuracy": 0.6}, error="interrupted")]:
        progress.update(event)
    assert progress.total_phrases() == ["5 invocations", "0 failures", "1 cut off by the run's end", "2 cold starts"]
    assert [bar[4] for bar in progress.bars][-1] == "cut off"
    timeline = run_figure(progress).axes[2]
    assert [t.get_text() for t in timeline.get_legend().get_texts()] == ["cold", "warm", "failed", "cut off"]
    widgets = WidgetDashboard()
    for event in [*events[:-1], RoundStarted("r1", 3, ["client-0001"], 130.0), cut_off]:
        widgets(event)
    assert widgets.timeline.bars.colors[-1] == OUTCOME_COLORS["cut off"] != OUTCOME_COLORS["failed"]


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
    assert lines[4] == "Run r1 finished: 3/3 rounds, 6 invocations, 1 failure, 2 cold starts"


class FakeHandle:
    """What IPython's display(..., display_id=True) returns: a handle whose updates replace the output."""

    def __init__(self, shown):
        self.shown = shown

    def update(self, data, raw=False):
        self.shown.append(("update", data["text/plain"]))


def test_compact_dashboard_is_one_line_rewritten_per_round():
    shown = []

    def show(data, raw, display_id):
        shown.append(("display", data["text/plain"]))
        return FakeHandle(shown)

    dashboard = CompactDashboard(show, label="[1/2] alpha=0.1")
    for event in run_events():
        dashboard(event)
    assert shown[0] == ("display", "[1/2] alpha=0.1 (r1): round 0/3")
    assert shown[1] == ("update", "[1/2] alpha=0.1 (r1): round 1/3  accuracy 0.300")
    assert shown[-1] == ("update", "[1/2] alpha=0.1 (r1): finished after 3/3 rounds  accuracy 0.900")
    assert [kind for kind, _ in shown].count("display") == 1


def test_widget_dashboard_updates_in_place():
    dashboard = WidgetDashboard()
    axis = dashboard.timeline.y_axis
    assert list(axis.tick_values) == [] and axis.num_ticks == 0, "no client row yet: no (automatic) ticks"
    events = list(run_events())
    for event in events[:8]:  # round 1, then round 2 started and its two invocations
        dashboard(event)
    assert dashboard.bar.max == 3 and dashboard.bar.value == 1 and dashboard.bar.description == "Round 2/3"
    assert "0.300" in dashboard.score.value
    for event in events[8:]:
        dashboard(event)
    assert dashboard.bar.value == 3 and dashboard.bar.bar_style == "success"
    assert "<b>Run demo</b> <code>r1</code>: finished, 3/3 rounds" in dashboard.title.value
    assert list(dashboard.accuracy.line.x) == [1, 2, 3] and list(dashboard.accuracy.x_axis.tick_values) == [1, 2, 3]
    assert list(dashboard.loss.line.y) == pytest.approx([2.0, 1.0, 2.0 / 3])
    assert dashboard.timeline.bars.colors == [OUTCOME_COLORS[o] for o in ["cold", "cold", "warm", "warm", "warm", "failed"]]
    assert dashboard.timeline.bars.x.shape == (6, 2) and list(dashboard.timeline.bars.y[:, 0]) == [0, 1] * 3
    assert list(axis.tick_values) == [0, 1] and axis.num_ticks is None, "a tick per client row (bqplot draws no " \
                                                                          "tick_values under num_ticks < 2)"
    assert "<b>1</b> failure " in dashboard.totals.value
    classes = {name for child in [dashboard.widget, *dashboard.widget.children] for name in child._dom_classes}
    assert {"fedless-dashboard", "fedless-totals"} <= classes
    assert "fedless-accuracy" in dashboard.accuracy.figure._dom_classes


def test_the_live_timeline_names_each_row_by_its_clients_number():
    """Its rows hold the clients seen so far, in order, and were labelled by row (0, 1): client-0003 and client-0007
    read as clients 0 and 1. The record already named them by number."""
    dashboard = WidgetDashboard()
    for event in run_events(rounds=1, clients=("client-0007", "client-0003")):
        dashboard(event)
    assert list(dashboard.timeline.y_axis.tick_values) == [0, 1]
    assert dashboard.timeline.y_axis.tick_labels == {0: "0003", 1: "0007"}


def test_ticks_are_whole_numbers_thinned_to_ten():
    assert whole_ticks(1, 3) == [1, 2, 3]
    assert whole_ticks(1, 50) == list(range(1, 51, 5))
    assert whole_ticks(0, 19) == list(range(0, 20, 2))


def test_the_record_is_a_paragraph_and_a_figure_any_viewer_renders():
    progress = RunProgress()
    for event in run_events():
        progress.update(event)
    record = RunRecord(progress)
    bundle = record._repr_mimebundle_()
    assert base64.b64decode(bundle["image/png"]).startswith(b"\x89PNG")
    assert bundle["text/plain"] == ("Run demo (r1) finished: final test accuracy 0.900; 3/3 rounds, "
                                    "6 invocations, 1 failure, 2 cold starts.")
    assert 'font-size:2.5em;font-weight:bold">0.900</span>' in bundle["text/html"]
    assert 'src="data:image/png;base64,' in bundle["text/html"]
    figure = run_figure(progress)
    accuracy, loss, timeline = figure.axes
    assert accuracy.get_ylim() == (0.0, 1.0) and [t.get_text() for t in timeline.get_yticklabels()] == ["0000", "0001"]
    assert [t.get_text() for t in timeline.get_legend().get_texts()] == ["cold", "warm", "failed"]
    assert all(tick == int(tick) for tick in accuracy.get_xticks()), "whole rounds only"


def test_a_run_stopped_after_one_round_has_whole_rounds_on_its_axis():
    """One point on the axis: matplotlib's integer ticks need two whole numbers in view and fell back to 0.945, 0.96..."""
    progress = RunProgress()
    for event in [event for event in run_events(rounds=40) if getattr(event, "round", 1) == 1]:
        progress.update(event)
    for axes in run_figure(progress).axes[:2]:
        low, high = axes.get_xlim()
        assert [tick for tick in axes.get_xticks() if low <= tick <= high] == [1.0]


def test_the_record_shows_the_split_the_run_trained_on():
    """With the run's config, the record carries the partition's label-distribution figure (issue 17)."""
    config = ExperimentConfig.from_dict({"clients": 6, "data": {"partition": "pathological", "labels_per_client": 2}})
    progress = RunProgress()
    for event in run_events():
        progress.update(dataclasses.replace(event, config=config.to_dict()) if isinstance(event, RunStarted) else event)
    record = RunRecord(progress)
    assert record.partition is not None and record.partition.startswith(b"\x89PNG")
    expected = figure_png(preview_config(config).figure(), dpi=RECORD_DPI)
    assert record.partition == expected, "the same figure %fedless_partition shows for that split"
    assert record.html().count('src="data:image/png;base64,') == 2
    assert "label distribution of the clients" in record.html()
    assert RunRecord(RunProgress()).partition is None, "no config, no partition figure"


@pytest.mark.parametrize("history, where", [
    ("fedless_history.db", " History: fedless_history.db; its rounds: %fedless_history r1"),
    ("runs/my runs.db", " History: runs/my runs.db; its rounds: %fedless_history r1 --history 'runs/my runs.db'"),
])
def test_the_record_says_where_the_run_is_recorded_and_which_magic_shows_it(history, where):
    """A new user's first run ended without a word on the history: where it went and how to look at it."""
    config = ExperimentConfig.from_dict({"clients": 4, "history": history}).to_dict()
    progress = RunProgress()
    for event in run_events():
        progress.update(dataclasses.replace(event, config=config) if isinstance(event, RunStarted) else event)
    record = RunRecord(progress)
    assert record.text().endswith(f"2 cold starts.{where}")
    assert f"2 cold starts.{html.escape(where)}</p>" in record.html()


@pytest.mark.parametrize("config, model_name, rounds, next_step", [
    ({}, None, 2, "Run r1 stopped after round 2; the history keeps every finished round. Continue it with: "
                  "%fedless_resume r1"),
    ({"history": "runs.db"}, "net", 2, "Run r1 stopped after round 2; the history keeps every finished round. Continue "
                                       "it with: %fedless_resume r1 net --history runs.db"),
    ({"mode": "async"}, None, 2, "Run r1 stopped after round 2; the history keeps every finished round"),
    ({"model": {"builder": "own_model:build"}}, None, 2, "Run r1 stopped after round 2; the history keeps every "
                                                       "finished round. Continue it with: %fedless_resume r1 "
                                                       "--trust-builder"),
    ({"model": {"builder": "own_model:build"}}, "net", 2, "Run r1 stopped after round 2; the history keeps every "
                                                        "finished round. Continue it with: %fedless_resume r1 net"),
    ({}, None, 0, "Run r1 stopped after round 0; no round finished, so there is nothing to continue: run "
                  "%fedless_train again"),
])
def test_a_stopped_runs_record_ends_with_what_to_do_next(config, model_name, rounds, next_step):
    """A background run's record replaced its dashboard and the line its Stop button had put there: a saved notebook
    kept 'stopped' and no word on how to continue (test_kernel clicks the button)."""
    config = ExperimentConfig.from_dict({"clients": 4, **config}).to_dict()
    progress = RunProgress(model_name=model_name)
    for event in run_events(rounds=5):
        if isinstance(event, RunStarted):
            progress.update(dataclasses.replace(event, config=config))
        elif getattr(event, "round", 0) <= rounds and not isinstance(event, RunFinished):
            progress.update(event)
    progress.update(RunFinished("r1", "stopped", 200.0, rounds, {}))
    text = RunRecord(progress).text()
    assert text.endswith(f"{magic_on_run('%fedless_history', 'r1', config['history'])}. {next_step}"), text
    assert html.escape(next_step) + "</p>" in RunRecord(progress).html()


def test_a_run_its_privacy_budget_stopped_says_why_in_its_summary_and_record_not_to_resume_it():
    """Its record said 'Continue it with: %fedless_resume r1', which stops again at once: the reason was only in the
    history's error column."""
    reason = ("privacy budget spent: round 3 would take 4 clients past target_epsilon 2 (epsilon reached: 1.9); the "
              "run is done within its budget; to train longer, raise train.dp.target_epsilon or the noise and start a "
              "new run")
    progress = RunProgress()
    for event in run_events(rounds=5):
        if isinstance(event, RunStarted):
            progress.update(dataclasses.replace(event, config=ExperimentConfig.from_dict({"clients": 4}).to_dict()))
        elif getattr(event, "round", 0) <= 2 and not isinstance(event, RunFinished):
            progress.update(event)
    progress.update(RunFinished("r1", "stopped", 200.0, 2, {}, error=reason))
    assert progress.summary_line().endswith(f"; {reason}")
    assert RunRecord(progress).text().endswith(f". {reason}") and "%fedless_resume" not in RunRecord(progress).text()


def test_compare_names_each_run_in_a_legend_beside_the_data():
    figure = compare_figure({"fedavg": [(1, 0.5), (2, 0.7)], "fedprox": [(1, 0.4), (2, 0.8)]}, "accuracy")
    (axes,) = figure.axes
    assert [t.get_text() for t in axes.get_legend().get_texts()] == ["fedavg", "fedprox"]
    assert axes.get_legend().get_bbox_to_anchor().x0 > axes.get_window_extent().x1 - 1, "the legend sits right of the axes"
    assert run_labels({"a-1-x1": "a", "b-1-y2": "b"}) == {"a-1-x1": "a", "b-1-y2": "b"}
    assert run_labels({"a-1-x1": "a", "a-2-y2": "a"}) == {"a-1-x1": "a (x1)", "a-2-y2": "a (y2)"}


def test_a_stopped_run_shows_as_a_warning():
    dashboard = WidgetDashboard()
    for event in list(run_events())[:-1]:
        dashboard(event)
    dashboard(RunFinished("r1", "stopped", 200.0, 3, {}))
    assert dashboard.bar.bar_style == "warning"


def test_the_stop_button_says_to_interrupt_a_foreground_run_and_stops_a_background_run_once():
    """A foreground run's cell blocks the kernel, which reads no click until the run ends: the button is disabled and
    says what stops the run. A background run's button calls its stop, and is spent once a stop was asked."""
    foreground = WidgetDashboard()
    for event in list(run_events())[:3]:
        foreground(event)
    assert foreground.stop_button.disabled and foreground.stop_button.description == "Stop: interrupt the kernel"
    assert "fedless-stop" in foreground.stop_button._dom_classes

    stops = []
    background = WidgetDashboard()
    background.offer_stop(lambda: stops.append("stop"))
    for event in list(run_events())[:3]:
        background(event)
    assert not background.stop_button.disabled and background.stop_button.description == "Stop after this round"
    awaited = WidgetDashboard()
    awaited.offer_stop(lambda: stops.append("awaited"))
    awaited.offer_interrupt()  # a cell awaits the run where the kernel reads no click then
    awaited.stop_button.click()
    assert awaited.stop_button.disabled and awaited.stop_button.description == "Stop: interrupt the kernel"
    background.stop_button.click()
    assert stops == ["stop"]
    background.stopping("Run r1 stops after its current round; continue it later with: %fedless_resume r1")
    assert background.stop_button.disabled and background.stop_button.description == "Stopping after this round"
    assert background.stop_note.value.endswith("continue it later with: %fedless_resume r1")
    background.stop_button.click()  # what a late comm message does: the frontend sends no click to a disabled button
    background.offer_interrupt()  # a cell awaits the run now: the stop asked stays on the button
    assert stops == ["stop"] and background.stop_button.description == "Stopping after this round"
    background(RunFinished("r1", "stopped", 200.0, 1, {}))
    assert background.stop_button.disabled and background.stop_button.description == "Run stopped"


def test_a_finished_runs_stop_button_is_disabled_and_says_so():
    dashboard = WidgetDashboard()
    dashboard.offer_stop(lambda: None)
    for event in run_events():
        dashboard(event)
    assert dashboard.stop_button.disabled and dashboard.stop_button.description == "Run finished"
    dashboard.stopping("Run r1 stops after its current round")  # %fedless_stop racing the end changes nothing
    assert dashboard.stop_button.description == "Run finished" and dashboard.stop_note.value == ""


def test_the_timeline_keeps_only_the_newest_invocations():
    progress = RunProgress()
    progress.update(RunStarted("r1", "demo", {}, 1, 1, [], 0.0))
    for index in range(TIMELINE_BARS + 50):
        progress.update(InvocationFinished("r1", 1, "client-0000", "local", "succeeded", index, index + 1, cold=False))
    assert len(progress.bars) == TIMELINE_BARS and progress.bars[0][1] == 50
    assert progress.invocations == TIMELINE_BARS + 50


def test_outside_a_kernel_the_dashboard_is_text():
    shell = start_ipython() or get_ipython()  # a terminal IPython: no kernel, no widgets
    assert not frontend_renders_widgets(shell)
    assert isinstance(make_dashboard("auto", shell), TextDashboard)
    assert make_dashboard("none", shell) is None


def test_tables_show_three_decimals_and_no_all_zero_cost_column():
    import pandas as pd

    from fedless_nb.notebook.tables import tidy_table

    frame = tidy_table(pd.DataFrame({"eval_accuracy": [0.123456, 0.9], "cost": [0.0, 0.0], "t_cost": [None, None],
                                     "priced_cost": [0.0, 0.00012], "round": [1, 2]}))
    assert list(frame.columns) == ["eval_accuracy", "priced_cost", "round"]
    assert list(frame["eval_accuracy"]) == [0.123, 0.9] and list(frame["round"]) == [1, 2]
    assert list(frame["priced_cost"]) == [0.0, 0.00012], "costs keep their digits"


def test_a_resumed_run_says_it_resumes_and_its_totals_and_charts_are_the_whole_runs(tmp_path):
    """Its first line read as a new run's ('Run r1: 2 clients, 3 rounds') and its totals, charts and bar held only
    the rounds after the resume; the rounds before it are read back from the history."""
    from fedless_nb.records.history import History

    config = {"history": str(tmp_path / "runs.db")}
    events = [dataclasses.replace(event, config=config) if isinstance(event, RunStarted) else event
              for event in run_events(rounds=3)]
    history = History(config["history"])
    history.start_run(events[0])
    invocations = []
    for event in events[1:]:  # rounds 1 and 2 were recorded before the run stopped
        if isinstance(event, InvocationFinished):
            invocations.append(event)
        elif isinstance(event, RoundFinished) and event.round <= 2:
            history.record_round(event, invocations)
            invocations = []
    history.close()
    resumed = [dataclasses.replace(events[0], resumed_from=2),
               *(event for event in events[1:] if getattr(event, "round", 3) == 3)]
    lines = []
    text, widgets = TextDashboard(lines.append), WidgetDashboard()
    text(resumed[0])
    widgets(resumed[0])
    assert lines == ["Run r1 resumes from round 3 of 3: 2 clients, 2 rounds done before"]
    assert widgets.bar.value == 2 and list(widgets.accuracy.line.x) == [1, 2]
    assert "2/3 rounds (resumed after round 2)" in widgets.title.value and "<b>4</b> invocations" in widgets.totals.value
    assert widgets.timeline.x_axis.label == "seconds since the resume after round 2", "its bars start at the resume"
    for event in resumed[1:]:
        text(event)
        widgets(event)
    assert lines[-1] == "Run r1 finished: 3/3 rounds (resumed after round 2), 6 invocations, 1 failure, 2 cold starts"
    assert [round_number for round_number, _ in text.progress.metrics] == [1, 2, 3]
    timeline = run_figure(widgets.progress).axes[-1]
    assert (timeline.get_title(), timeline.get_xlabel()) == ("client timeline", "seconds since the resume after round 2")
