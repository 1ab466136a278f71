"""Where notebook runs execute: one thread and event loop per kernel, apart from the cells.

A Jupyter kernel runs cells on its own event loop in its main thread, so a run on that loop stalls
whenever a cell computes. Every run therefore goes to the kernel's run loop, a daemon thread that
lives as long as the kernel: background runs keep training while cells compute, and the local
workers a run leaves warm (see pool.py) stay bound to the loop that started them.

A run is handed over from the cell's thread with `call_soon_threadsafe`, which carries a copy of the
cell's context: ipykernel keeps a cell's output destination in a ContextVar, so the run's prints,
displays and widget messages go to the cell that started it. ipykernel's iopub socket may be sent
on from any thread; each run's dashboard is touched by its run's thread only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import sys
import threading
import traceback
from typing import Any, Callable, Coroutine, Sequence

from ..errors import UserError
from ..experiment import ExperimentConfig
from ..records.history import History
from ..rounds.controller import Controller
from ..rounds.events import Observer, RunStarted
from ..runner import ResumePoint, RunResult, run_experiment_async
from ..stopping import resumable, stopped_line
from .record import resume_command


class RunStopped(UserError):
    """The stop button (or Ctrl-C) ended a run: one line, not a traceback through library code."""


class RunLoop:
    """An event loop running forever in a daemon thread; it ends with the kernel's process."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fedless-runs", daemon=True)
        self.thread.start()

    def submit(self, coroutine: Coroutine[Any, Any, Any]) -> "Submitted":
        return Submitted(self.loop, coroutine)

    def call(self, function: Callable[..., Any], *args: Any) -> None:
        """Call `function` on the run loop's thread, soon."""
        self.loop.call_soon_threadsafe(function, *args)

    def wait(self, coroutine: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
        """Run `coroutine` on the run loop and wait for its result here."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)


_run_loop: RunLoop | None = None
_run_loop_lock = threading.Lock()


def run_loop() -> RunLoop:
    """The kernel's run loop, started on first use."""
    global _run_loop
    with _run_loop_lock:
        if _run_loop is None:
            _run_loop = RunLoop()
        return _run_loop


class Submitted:
    """A coroutine running as a task on another thread's loop; `future` settles when the task has
    ended, cleanup included (a cancelled task's future is cancelled only once the task is done)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, Any]) -> None:
        self.loop = loop
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        self._task: asyncio.Task | None = None
        loop.call_soon_threadsafe(self._start, coroutine)  # runs in a copy of the caller's context

    def _start(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        self._task = self.loop.create_task(coroutine)
        self._task.add_done_callback(self._settle)

    def _settle(self, task: asyncio.Task) -> None:
        if task.cancelled():
            self.future.cancel()
            self.future.set_running_or_notify_cancel()  # wakes concurrent.futures.wait as well
        elif (error := task.exception()) is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(task.result())

    def cancel(self) -> None:
        self.loop.call_soon_threadsafe(lambda: self._task is not None and self._task.cancel())


def _rounds_done(controllers: list[Controller]) -> int:
    return len(controllers[0].round_metrics) if controllers else 0


def _stop_on_interrupt(run: Submitted, controllers: list[Controller], until: Callable[[], bool],
                       continue_with: Callable[[str], str] | None = None, resumed: ResumePoint | None = None) -> None:
    """Wait here until `until()` or the run's end; an interrupt (the notebook's stop button, Ctrl-C) cancels the
    run, waits while it records its end (a second interrupt waits too) and ends the cell with one line, which
    names the magic that continues the run (`continue_with(run_id)`) once it has a round to continue from;
    `resumed` is the run a resume continues, which stands where its history left it until its controller is built."""
    try:
        while not until() and not run.future.done():
            concurrent.futures.wait([run.future], timeout=0.1)
        return
    except KeyboardInterrupt:
        run.cancel()
    while True:
        try:
            concurrent.futures.wait([run.future])
            break
        except KeyboardInterrupt:
            continue
    raise _stopped(controllers, continue_with, resumed)


def _stopped(controllers: list[Controller], continue_with: Callable[[str], str] | None,
             resumed: ResumePoint | None = None) -> RunStopped:
    """The one line an interrupted run ends its cell with (see stopped_line); a resume stopped before its controller
    was built, or had restored its checkpoint, is still the run it continues (`resumed`)."""
    resumed_id, recorded = (resumed.run_id, resumed.rounds_completed) if resumed else (None, 0)
    run_id = controllers[0].run_id if controllers else resumed_id
    return RunStopped(stopped_line(run_id, max(_rounds_done(controllers), recorded),
                                   continue_with(run_id) if continue_with is not None and run_id is not None else None,
                                   run_again="%fedless_train"))


def run_to_end(config: ExperimentConfig, model: Any, observers: Sequence[Observer], model_name: str | None = None,
               resumed: ResumePoint | None = None, **options: Any) -> RunResult:
    """Run `config` (continuing the run `resumed`) on the run loop while the cell waits; `options` go to
    `run_experiment_async`. An interrupt stops the run: its invocations are stopped, the history keeps every finished
    round; `model_name` (the notebook variable holding `model`) goes into the line that says how to continue it."""
    controllers: list[Controller] = []
    run = run_loop().submit(run_experiment_async(config, model=model, observers=observers,
                                                 on_controller=controllers.append,
                                                 resume=resumed.run_id if resumed else None, **options))
    _stop_on_interrupt(run, controllers, until=lambda: False,
                       continue_with=functools.partial(resume_command, config=config, model_name=model_name)
                       if resumable(config) else None, resumed=resumed)
    return run.future.result()


def kernel_reads_comms_while_a_cell_awaits() -> bool:
    """Whether a widget's click reaches the kernel while a cell awaits: ipykernel 7.4 reads comm messages then, earlier
    ones only once the cell has ended."""
    ipykernel = sys.modules.get("ipykernel")
    return ipykernel is not None and getattr(ipykernel, "version_info", (0,)) >= (7, 4)


class BackgroundRun:
    """A run going on on the kernel's run loop while cells run; it is returned once the run has started
    (its data and model are ready). `await run` gives its RunResult; `run.stop()` (or `%fedless_stop`)
    ends it after the current round."""

    def __init__(self, config: ExperimentConfig, model: Any, observers: Sequence[Observer], dashboard: Any = None,
                 model_name: str | None = None, **options: Any) -> None:
        self.config, self.model_name = config, model_name  # model_name: the notebook variable holding `model`
        self.dashboard = dashboard  # one of `observers`; a cell that shows the run shows it again (see _ipython_display_)
        self._controllers: list[Controller] = []
        self._stop_requested = False
        offer_stop = getattr(dashboard, "offer_stop", None)  # the widget dashboard's Stop button
        if offer_stop is not None:
            offer_stop(self.stop)
        started = threading.Event()
        # the cell returns once the dashboard has shown the start, so its widgets are that cell's output; the other
        # observers see the start after the cell may have returned
        shows_first = [observer for observer in observers if observer is dashboard]
        observers = [*shows_first, lambda event: isinstance(event, RunStarted) and started.set(),
                     *(observer for observer in observers if observer is not dashboard)]
        self._run = run_loop().submit(run_experiment_async(
            config, model=model, observers=observers, on_controller=self._attach, **options))
        self.future = self._run.future
        # the cell waits for the start, so a mistake found while preparing (data, model) is its one-line error
        _stop_on_interrupt(self._run, self._controllers, until=started.is_set)
        if self.future.done() and not self.future.cancelled() and self.future.exception() is not None:
            raise self.future.exception()
        self.future.add_done_callback(self._finished)

    def _attach(self, controller: Controller) -> None:
        self._controllers.append(controller)
        if self._stop_requested:
            controller.request_stop()

    @property
    def controller(self) -> Controller | None:
        return self._controllers[0] if self._controllers else None

    @property
    def run_id(self) -> str | None:
        return self.controller.run_id if self.controller is not None else None

    @property
    def status(self) -> str:
        if not self.future.done():
            return "running" if self.controller is not None else "starting"
        if self.future.cancelled():
            return "stopped"
        return "failed" if self.future.exception() is not None else self.future.result().status

    def done(self) -> bool:
        return self.future.done()

    def continue_with(self) -> str | None:
        """The magic that continues this run after it stopped, or None (no run id yet, or async rounds)."""
        if self.run_id is None or not resumable(self.config):
            return None
        return resume_command(self.run_id, self.config, self.model_name)

    def stop(self) -> str:
        """End the run after its current round (after round 1 if it is still preparing its data and model); the line
        that says so and how to continue the run, which %fedless_stop prints and the dashboard shows.
        The flags are set here, in the caller's thread: a stop handed to the run's loop waited for its next turn,
        which a round that had just finished did not give before the next round began, so that round ran too.
        The flag goes first and `_attach` appends first, so a controller attached meanwhile is stopped by one.
        In its last round there is no round left to skip: the run finishes, and the line says so, not that it stops.
        A second stop says the run is already stopping (it repeated the first line, as if the first had not taken).
        The dashboard hears of it on the run's thread, which alone touches its widgets."""
        if self.controller is not None and _rounds_done(self._controllers) >= self.config.rounds - 1:
            line = f"Run {self.run_id} has no round left to skip: it finishes after round {self.config.rounds}"
        else:
            command = self.continue_with()
            stops = "is already stopping after its current round" if self._stop_requested else "stops after its current round"
            line = f"Run {self.run_id or '(starting)'} {stops}" + (f"; continue it later with: {command}" if command else "")
            self._stop_requested = True
            if self.controller is not None:
                self.controller.request_stop()
        stopping = getattr(self.dashboard, "stopping", None)
        if stopping is not None:
            run_loop().call(stopping, line)
        return line

    def result(self) -> RunResult:
        if not self.future.done():
            raise UserError(f"run {self.run_id or '(starting)'} is still going on; `await run` waits for it")
        return self.future.result()

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
        return self._wait().__await__()

    async def _wait(self) -> RunResult:
        """The run's result, awaited in a cell. An interrupt stops the run, as a foreground run's does, with the same
        one line. ipykernel interrupts an awaiting cell by cancelling its task from another thread, which wakes no
        loop: awaiting the run's future itself, the stop button did nothing until the run ended, then showed an
        empty CancelledError. Waking every 0.1 s lets the cancellation land."""
        offer_interrupt = getattr(self.dashboard, "offer_interrupt", None)
        if offer_interrupt is not None and not kernel_reads_comms_while_a_cell_awaits():
            run_loop().call(offer_interrupt)  # the Stop button's click would be read only once the run has ended
        try:
            await self._until_done()
        except asyncio.CancelledError:
            self._run.cancel()
            await self._until_done()
            resume = functools.partial(resume_command, config=self.config, model_name=self.model_name)
            raise _stopped(self._controllers, resume if resumable(self.config) else None) from None
        return self.future.result()

    async def _until_done(self) -> None:
        while not self.future.done():
            await asyncio.sleep(0.1)

    def __repr__(self) -> str:
        return f"BackgroundRun(run_id={self.run_id!r}, status={self.status!r})"

    def _ipython_display_(self) -> None:
        """A cell ending in `run` shows its live dashboard again (a browser reload before saving loses the view the
        starting cell had), or its record once it has ended; without a widget dashboard, the line above."""
        show_again = getattr(self.dashboard, "show_again", None)
        if show_again is None or not show_again():
            print(repr(self))

    def _finished(self, future: concurrent.futures.Future) -> None:
        """Say why a background run failed: no cell is waiting on it to show the error."""
        if not future.cancelled() and (error := future.exception()) is not None:
            if isinstance(error, UserError):
                print(f"error: {error}", file=sys.stderr)
            else:
                traceback.print_exception(error, file=sys.stderr)
