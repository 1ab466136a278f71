"""Calls as they finish, until a deadline, in time proportional to the number of calls; and calls that
stand or fall together.

`asyncio.wait(pending, return_when=FIRST_COMPLETED)` in a loop registers and removes a callback on every
pending call each time one finishes: O(n) per finished call, O(n^2) per round, which at 1,000 clients
per round is a second of the controller's time. Here each call reports once, through a queue.
"""

from __future__ import annotations

import asyncio
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


async def all_or_none(calls: Iterable[Awaitable[T]]) -> list[T]:
    """The results of `calls`, run concurrently, in their order. When one raises (or the caller is cancelled), the
    others are cancelled and awaited before the error goes on: none outlives the step that needed them all, so
    nothing one of them would write or announce later is read or counted."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
