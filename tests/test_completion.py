"""Calls as they finish, until the round's deadline (rounds/completion.py)."""

import asyncio
import time

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
