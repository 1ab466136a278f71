"""A background run's starting cell returns once its dashboard has shown the run's start: the widgets are that
cell's output. The cell used to return as soon as the run started, before the dashboard had shown it, so on a
loaded machine the widgets came after the cell had ended (test_kernel.py's reshown-dashboard test missed them)."""

import threading

from fedless_nb.notebook.execution import BackgroundRun
from fedless_nb.rounds.events import RunStarted


class Dashboard:
    """Notes, as it shows the start, whether the starting cell has already returned (waiting a second for it)."""

    def __init__(self, cell_returned):
        self.cell_returned = cell_returned
        self.shown_after_the_cell_returned = None

    def __call__(self, event):
        if isinstance(event, RunStarted):
            self.shown_after_the_cell_returned = self.cell_returned.wait(1)


def test_the_starting_cell_returns_after_the_dashboard_has_shown_the_start(tiny_config):
    cell_returned = threading.Event()
    dashboard = Dashboard(cell_returned)
    run = BackgroundRun(tiny_config(rounds=1), None, [dashboard], dashboard=dashboard)
    cell_returned.set()
    assert dashboard.shown_after_the_cell_returned is False
    assert run.future.result(300).status == "finished"
