"""Two ways to run from a notebook: to the end (the cell waits) or in the background (the kernel stays free).

A Jupyter kernel's event loop is already running in the cell's thread, so a blocking run cannot
use it: `run_to_end` runs on a fresh loop in a helper thread and hands the events back to the
cell's thread, where the dashboard draws them. `BackgroundRun` schedules the run as a task on the
kernel's own loop, which keeps running between cells.
"""

from __future__ import annotations

import asyncio
import queue
import sys
import threading
import traceback
from typing import Any, Callable, Sequence

from ..rounds.controller import Controller
from ..errors import UserError
from ..rounds.events import Observer
from ..experiment import ExperimentConfig
from ..records.history import History
from ..runner import RunResult, run_experiment_async

_DONE = object()


def run_to_end(config: ExperimentConfig, model: Any, observers: Sequence[Observer]) -> RunResult:
    """Run `config` to the end; the helper thread is joined before this returns, so nothing outlives the run.

    An interrupt (the notebook's stop button, Ctrl-C) cancels the run: its workers are stopped,
    the history keeps every finished round and marks the run stopped, and KeyboardInterrupt is re-raised.
    """
    events: queue.SimpleQueue[Any] = queue.SimpleQueue()
    loop = asyncio.new_event_loop()
    task = loop.create_task(run_experiment_async(config, model=model, observers=[events.put]))
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["result"] = loop.run_until_complete(task)
        except BaseException as error:  # handed to the cell's thread, which raises it
            outcome["error"] = error
        finally:
            loop.close()
            events.put(_DONE)

    thread = threading.Thread(target=work, name="fedless-run")
    thread.start()
    interrupted = False
    while True:
        try:
            event = events.get()
            if event is _DONE:
                break
            for observer in observers:
                observer(event)
        except KeyboardInterrupt:
            interrupted = True
            loop.call_soon_threadsafe(task.cancel)
    thread.join()
    if interrupted:
        raise KeyboardInterrupt
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


class BackgroundRun:
    """A run going on on the kernel's event loop. `await run` gives its RunResult;
    `run.stop()` (or `%fedless_stop`) ends it after the current round."""

    def __init__(self, config: ExperimentConfig, model: Any, observers: Sequence[Observer],
                 on_done: Callable[["BackgroundRun"], None] | None = None) -> None:
        self.config = config
        self.controller: Controller | None = None
        self._stop_requested = False
        self.task = asyncio.get_running_loop().create_task(run_experiment_async(
            config, model=model, observers=observers, on_controller=self._attach,
        ))
        self._on_done = on_done
        self.task.add_done_callback(self._finished)

    def _attach(self, controller: Controller) -> None:
        self.controller = controller
        if self._stop_requested:
            controller.request_stop()

    @property
    def run_id(self) -> str | None:
        return self.controller.run_id if self.controller is not None else None

    @property
    def status(self) -> str:
        if not self.task.done():
            return "running" if self.controller is not None else "starting"
        if self.task.cancelled():
            return "stopped"
        error = self.task.exception()
        return "failed" if error is not None else self.task.result().status

    def done(self) -> bool:
        return self.task.done()

    def stop(self) -> None:
        """End the run after its current round (after round 1 if it is still preparing its data and model)."""
        self._stop_requested = True
        if self.controller is not None:
            self.controller.request_stop()

    def result(self) -> RunResult:
        if not self.task.done():
            raise UserError(f"run {self.run_id or '(starting)'} is still going on; `await run` waits for it")
        return self.task.result()

    def rounds_frame(self) -> Any:
        """The rounds finished so far, from the history (it is written round by round)."""
        if self.run_id is None:
            raise UserError("the run has not started its first round yet")
        history = History(self.config.history)
        try:
            return history.rounds_frame(self.run_id)
        finally:
            history.close()

    def __await__(self) -> Any:
        return self.task.__await__()

    def __repr__(self) -> str:
        return f"BackgroundRun(run_id={self.run_id!r}, status={self.status!r})"

    def _finished(self, task: asyncio.Task) -> None:
        """Say why a background run failed: no cell is waiting on it to show the error."""
        if not task.cancelled() and (error := task.exception()) is not None:
            if isinstance(error, UserError):
                print(f"error: {error}", file=sys.stderr)
            else:
                traceback.print_exception(error, file=sys.stderr)
        if self._on_done is not None:
            self._on_done(self)

