"""Calls as they finish, until a deadline, in time proportional to the number of calls; and calls that
stand or fall together, all at once or a window of them at a time.

`asyncio.wait(pending, return_when=FIRST_COMPLETED)` in a loop registers and removes a callback on every
pending call each time one finishes: O(n) per finished call, O(n^2) per round, which at 1,000 clients
per round is a second of the controller's time. Here each call reports once, through a queue.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any, AsyncIterator, Awaitable, Iterable, TypeVar

T = TypeVar("T")


async def finished_by(calls: Iterable[asyncio.Future[Any]], deadline: float) -> AsyncIterator[asyncio.Future[Any]]:
    """Each of `calls` as it finishes, until all have or the `deadline` (epoch seconds) passes. The caller
    deals with the ones it was not given; a call finishing later only drops into this generator's queue."""
    finished: asyncio.Queue[asyncio.Future[Any]] = asyncio.Queue()
    calls = list(calls)
    for call in calls:
        call.add_done_callback(finished.put_nowait)
    for _ in calls:
        remaining = deadline - time.time()
        if remaining <= 0:
            return
        try:
            yield await asyncio.wait_for(finished.get(), remaining)
        except asyncio.TimeoutError:
            return


async def in_order(calls: Iterable[Awaitable[T]], window: int | None = None) -> AsyncIterator[T]:
    """The results of `calls` in their order, at most `window` of them running at once (None: all), the next started
    as each result is taken: a caller that folds each result as it comes holds `window` of them, never all. When one
    raises (or the caller is cancelled, or closes the generator: contextlib.aclosing), the running ones are cancelled
    and awaited, and those not started are closed, before the error goes on: none outlives the step that needed
    them, so nothing one of them would write or announce later is read or counted. O(1) per call: the generator
    waits on the next result and on a first failure, never on every call."""
    waiting, running = iter(calls), collections.deque[asyncio.Future[T]]()
    failed: asyncio.Future[asyncio.Future[T]] = asyncio.get_running_loop().create_future()

    def report_failure(task: asyncio.Future[T]) -> None:
        if not failed.done() and (task.cancelled() or task.exception() is not None):
            failed.set_result(task)

    def start() -> None:
        while window is None or len(running) < window:
            call = next(waiting, None)
            if call is None:
                return
            running.append(asyncio.ensure_future(call))
            running[-1].add_done_callback(report_failure)

    try:
        start()
        while running:
            if not running[0].done():
                await asyncio.wait([running[0], failed], return_when=asyncio.FIRST_COMPLETED)
            if failed.done():
                failed.result().result()  # raises its error (or CancelledError)
            result = running.popleft().result()
            start()
            yield result
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        for call in waiting:  # never started: a coroutine left unawaited would warn
            getattr(call, "close", lambda: None)()


async def all_or_none(calls: Iterable[Awaitable[T]]) -> list[T]:
    """The results of `calls`, run concurrently, in their order; when one raises, the others are cancelled and
    awaited before the error goes on (`in_order` with no window)."""
    return [result async for result in in_order(calls)]
