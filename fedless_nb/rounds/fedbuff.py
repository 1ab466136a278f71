"""Asynchronous rounds: FedBuff (Nguyen et al. 2022), buffered asynchronous aggregation.

`concurrency` clients train at all times: as soon as one returns, another is dispatched with
the newest global model. Every `buffer_size` arrived updates make one round: each update is the
client's model minus the global model it started from, weighted by a function of its staleness
(how many global versions appeared meanwhile), averaged and applied. A straggler therefore holds
back only its own slot, never a round. Each update's staleness is recorded with its invocation.

This is a schedule for the Controller (`controller.run(weights, schedule=FedBuff(...))`): it
uses only the controller's public round interface (tasks, invocations, result checks, events,
round publication), as rounds/synchronous.py does.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

from .controller import ClientRef, Controller
from .events import RoundStarted
from ..experiment import AsyncConfig
from ..privacy.accounting import PrivacyBudgetExhausted
from ..providers.base import InvocationError
from ..strategies.aggregate import STALENESS_FUNCTIONS, fedbuff, staleness_weight, subtract
from ..strategies.base import ClientUpdate, Weights

__all__ = ["FedBuff", "STALENESS_FUNCTIONS"]


def _staleness_weight(options: AsyncConfig, staleness: int) -> float:
    return staleness_weight(options.staleness, staleness, options.exponent, options.hinge_a, options.hinge_b)


@dataclass(frozen=True)
class _Dispatch:
    client: ClientRef
    version: int  # the global version it trains from; its task is for round version + 1
    started: float
    deadline: float


@dataclass(frozen=True)
class _Arrival:
    update: ClientUpdate
    version: int
    staleness: int


class FedBuff:
    """Schedule for Controller.run: `controller.plan.rounds` aggregations of `buffer_size` updates each."""

    def __init__(self, controller: Controller, options: AsyncConfig) -> None:
        self.controller, self.options = controller, options

    def _dispatch(self, in_flight: dict[asyncio.Future[Any], _Dispatch], version: int, tasked: set[str]) -> None:
        """Start clients until `concurrency` are training. A client trains at most once at a time and once
        per global version: a second task from the same model would redo the same work under the same
        update key, which the function rightly refuses as a replay. Where the privacy budget refuses every
        client not training, the ones training still finish (each fitted the budget when it started, and
        may fit it again): the run ends once none is left training."""
        controller = self.controller
        while len(in_flight) < self.options.concurrency:
            idle = [client_id for client_id in controller.clients if client_id not in tasked]
            if not idle:
                return
            try:
                (client_id,) = controller.selection.select(version + 1, idle, 1)
            except PrivacyBudgetExhausted:
                if in_flight:
                    return
                raise
            client = controller.clients[client_id]
            started = time.time()
            deadline = started + controller.plan.round_deadline
            overrides = controller.strategy.configure_round(version + 1, [client_id]).get(client_id, {})
            task = controller.task(version + 1, client, overrides, deadline)
            call = controller.invoke(version + 1, client, task, started, retry=False)
            in_flight[call] = _Dispatch(client, version, started, deadline)
            tasked.add(client_id)

    async def __call__(self, weights: Weights) -> AsyncIterator[tuple[int, Weights]]:
        controller, options = self.controller, self.options
        versions = {0: weights}  # global models that in-flight clients started from
        in_flight: dict[asyncio.Future[Any], _Dispatch] = {}
        buffer: list[_Arrival] = []
        version, window_started, window_failed, announced = 0, time.time(), 0, False
        tasked: set[str] = set()  # clients tasked from the current version, or still training
        try:
            while version < controller.plan.rounds:
                self._dispatch(in_flight, version, tasked)
                if in_flight or buffer:
                    if not announced:
                        ids = [d.client.client_id for d in in_flight.values()]
                        controller.emit(RoundStarted(controller.run_id, version + 1, ids, window_started))
                        announced = True
                    timeout = max(0.0, min(d.deadline for d in in_flight.values()) - time.time())
                    done, _ = await asyncio.wait(in_flight, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                    for call in done:
                        if len(buffer) == options.buffer_size:
                            break  # the rest stay in flight and arrive against the next global version
                        dispatch = in_flight.pop(call)
                        staleness = version - dispatch.version
                        update = await controller.collect(dispatch.version + 1, dispatch.client, call,
                                                           versions[dispatch.version], dispatch.started, staleness)
                        if update is None:
                            window_failed += 1
                        else:
                            buffer.append(_Arrival(update, dispatch.version, staleness))
                    window_failed += await self._expire(in_flight)
                    # Aggregate a full buffer, or a short one when every client has had its turn at this version.
                    if not buffer or (len(buffer) < options.buffer_size and (in_flight or len(tasked) < len(controller.clients))):
                        continue
                    screened = self._screen(buffer, versions)
                    window_failed += len(buffer) - len(screened)
                    buffer = screened
                    if not buffer:
                        continue
                    deltas = [subtract(a.update.weights, versions[a.version]) for a in buffer]
                    weights = fedbuff(weights, deltas, [_staleness_weight(options, a.staleness) for a in buffer],
                                      options.server_learning_rate)
                # else every client had its turn at this version and none gave a valid update: the version keeps the
                # model, as a synchronous round with none does, and every client trains from it again; the controller
                # ends a run whose first rounds all failed, by their causes (resilience.FailureTally): NothingTrainedError
                version += 1
                versions[version] = weights
                tasked = {dispatch.client.client_id for dispatch in in_flight.values()}
                for old in [v for v in versions if v != version and v not in {d.version for d in in_flight.values()}]:
                    del versions[old]
                await controller.publish(version, weights, window_started, len(buffer) + window_failed,
                                          [a.update for a in buffer])
                buffer, window_started, window_failed, announced = [], time.time(), 0, False
                yield version, weights
        except BaseException:  # torn down: the invocations still running are recorded (and charged) too
            await controller.abandon({call: (d.version + 1, d.client, d.started) for call, d in in_flight.items()})
            in_flight.clear()
            raise
        finally:  # the run is over: no invocation outlives it, and those its last version left running are recorded
            # (and charged) too: their functions may train and write their updates all the same
            await controller.abandon({call: (d.version + 1, d.client, d.started) for call, d in in_flight.items()},
                                     finished=True)

    def _screen(self, buffer: list[_Arrival], versions: dict[int, Weights]) -> list[_Arrival]:
        """The buffer's updates that pass the controller's norm screening, each against the global version it
        trained from (and under its own task's round, where a rejection is recorded)."""
        kept: set[str] = set()
        for version in sorted({arrival.version for arrival in buffer}):
            updates = [arrival.update for arrival in buffer if arrival.version == version]
            kept.update(update.client_id for update in self.controller.screen(version + 1, updates, versions[version]))
        return [arrival for arrival in buffer if arrival.update.client_id in kept]

    async def _expire(self, in_flight: dict[asyncio.Future[Any], _Dispatch]) -> int:
        """Cancel and record as failed the invocations past their deadline; returns how many."""
        now = time.time()
        expired = [call for call, dispatch in in_flight.items() if dispatch.deadline <= now]
        for call in expired:
            dispatch = in_flight.pop(call)
            call.cancel()
            await asyncio.gather(call, return_exceptions=True)
            missed = InvocationError(f"missed its deadline of {self.controller.plan.round_deadline:g}s", "deadline")
            self.controller.record_failure(dispatch.version + 1, dispatch.client, missed, dispatch.started)
        return len(expired)
