"""Calls as they finish, until the round's deadline (rounds/completion.py)."""

import asyncio
import gc
import time

import pytest

from fedless_nb.rounds.completion import finished_by


def test_calls_come_in_the_order_they_finish_and_the_late_one_is_left_to_the_caller():
    async def scenario():
        loop = asyncio.get_running_loop()
        calls = [loop.create_future() for _ in range(4)]
        for index, delay in ((2, 0.01), (0, 0.02), (3, 0.03)):
            loop.call_later(delay, calls[index].set_result, index)
        loop.call_later(2.0, calls[1].set_result, 1)  # after the deadline
        started = time.time()
        seen = [call.result() async for call in finished_by(calls, time.time() + 0.3)]
        return seen, time.time() - started, calls[1].done()

    seen, elapsed, late_done = asyncio.run(scenario())
    assert seen == [2, 0, 3]
    assert 0.25 < elapsed < 1.5, "the generator ends at the deadline, not when the late call finishes"
    assert not late_done


def test_calls_already_finished_and_a_past_deadline():
    async def scenario():
        loop = asyncio.get_running_loop()
        calls = [loop.create_future() for _ in range(3)]
        for index, call in enumerate(calls):
            call.set_result(index)
        everything = sorted([call.result() async for call in finished_by(calls, time.time() + 5)])
        nothing = [call async for call in finished_by(calls, time.time() - 1)]
        return everything, nothing

    assert asyncio.run(scenario()) == ([0, 1, 2], [])


def test_in_order_gives_the_calls_results_in_their_order_with_at_most_its_window_started_and_not_taken():
    """The later calls finish first; the results still come in the calls' order, and no more than the window are
    started and not yet taken by the caller (what it holds at once)."""
    from fedless_nb.rounds.completion import in_order

    started, running, most_running = [], 0, 0

    async def call(index):
        nonlocal running, most_running
        started.append(index)
        running += 1
        most_running = max(most_running, running)
        await asyncio.sleep(0.001 * (20 - index % 8))
        running -= 1
        return index

    async def scenario():
        taken, held = [], []
        async for result in in_order((call(index) for index in range(20)), window=8):
            held.append(len(started) - len(taken))  # started and not yet taken, this one included
            taken.append(result)
        return taken, held

    taken, held = asyncio.run(scenario())
    assert taken == list(range(20)) and max(held) == 8 and most_running == 8


def test_in_order_cancels_the_running_calls_and_closes_the_unstarted_ones_when_one_fails(recwarn):
    from fedless_nb.rounds.completion import all_or_none, in_order

    cancelled, ran = [], []

    async def call(index):
        ran.append(index)
        try:
            if index == 1:
                raise ValueError("read failed")
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(index)
            raise

    async def windowed():
        return [result async for result in in_order((call(index) for index in range(10)), window=3)]

    with pytest.raises(ValueError, match="^read failed$"):
        asyncio.run(windowed())
    assert ran == [0, 1, 2] and sorted(cancelled) == [0, 2], "the others cancelled, the rest never started"
    ran.clear(), cancelled.clear()

    async def listed():  # coroutines made at once: the ones never started are closed, not left to warn
        calls = [call(index) for index in range(6)]
        return [result async for result in in_order(calls, window=2)]

    with pytest.raises(ValueError):
        asyncio.run(listed())
    gc.collect()
    assert ran == [0, 1] and cancelled == [0]
    assert not [w for w in recwarn if "never awaited" in str(w.message)]
    ran.clear(), cancelled.clear()
    with pytest.raises(ValueError):
        asyncio.run(all_or_none(call(index) for index in range(4)))
    assert ran == [0, 1, 2, 3] and sorted(cancelled) == [0, 2, 3]
