"""Synchronous rounds (FedAvg's schedule): select clients, invoke them all, wait for the round, aggregate.

A round that ends below its quorum runs again while repeats are left (resilience.py). The
default schedule of Controller.run, built only on the controller's public round interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any, AsyncIterator

from ..providers.base import InvocationError
from ..store.keys import round_updates_prefix, update_key
from ..strategies.base import ClientUpdate, SumStrategy, Weights
from .completion import finished_by, in_order
from .events import RoundStarted, UpdateRejected
from .streaming import StreamingRound
from .tree import AggregatorsRefused, Arrival, TreeAggregation, TreeRound
from .resilience import check_quorum

if TYPE_CHECKING:
    from .controller import ClientRef, Controller

READS_IN_FLIGHT = 8  # updates the controller reads at once where it sums what aggregator functions refused


class SynchronousRounds:
    """Schedule for Controller.run: rounds `resumed_round + 1` to `plan.rounds`, one after the other."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    async def __call__(self, weights: Weights) -> AsyncIterator[tuple[int, Weights]]:
        for round_number in range(self.controller.resumed_round + 1, self.controller.plan.rounds + 1):
            weights = await self.round(round_number, weights)
            yield round_number, weights

    async def round(self, round_number: int, weights: Weights) -> Weights:
        """One round, run again while it is below its quorum and repeats are left; returns the new global model."""
        controller, runs = self.controller, 0
        while True:
            runs += 1
            if runs > 1:  # the repeat writes the same update keys: clear the first run's, or functions refuse a replay
                controller.store.delete_prefix(round_updates_prefix(controller.run_id, round_number))
            started, selected, updates, streamed = await self.invoke_round(round_number, weights, runs)
            shortfall = controller.strategy.too_few_updates(len(updates)) if selected else None
            if not selected or check_quorum(round_number, len(updates), len(selected), controller.plan.policy, runs,
                                            shortfall):
                break
        if updates or not selected:  # a Poisson-sampled empty round still aggregates (central DP's noise)
            weights = (streamed.aggregate(round_number) if streamed is not None
                       else controller.strategy.aggregate(round_number, weights, updates))
        await controller.publish(round_number, weights, started, len(selected), updates)
        return weights

    async def invoke_round(
        self, round_number: int, weights: Weights, run: int = 1,
    ) -> tuple[float, list[str], list[ClientUpdate], StreamingRound | TreeRound | None]:
        """Invoke the round's clients (retrying where safe) until they answer or the deadline passes;
        returns when it started, whom it selected, the screened updates and, for a sum-based strategy, the
        streamed sum they were folded into as they came, or the sum aggregator functions made of them where
        they are stored (rounds/tree.py; plan.aggregation says when): the updates then carry no arrays. `run`:
        which run of the round this is (a round below its quorum runs again)."""
        controller = self.controller
        started = time.time()
        selected = controller.selection.select(round_number, list(controller.clients), controller.plan.clients_per_round)
        slow = ({} if controller.plan.stragglers is None else
                controller.plan.stragglers.overrides(round_number, selected, int(controller.plan.train["epochs"])))
        # the privacy budget checks each client's round as drawn: a straggler is charged its cut
        selected = controller.selection.admit(round_number, selected,
                                              {cid: cut["budget_epochs"] for cid, cut in slow.items()})
        strategy, options = controller.strategy, controller.plan.aggregation
        in_functions = options.in_functions(strategy, len(selected), sum(layer.nbytes for layer in weights))
        streamed = StreamingRound(strategy, weights) if isinstance(strategy, SumStrategy) and not in_functions else None
        arrivals: list[Arrival] = []
        overrides = controller.strategy.configure_round(round_number, selected)
        overrides = {cid: {**overrides.get(cid, {}), **slow.get(cid, {})} for cid in {*overrides, *slow}}
        controller.emit(RoundStarted(controller.run_id, round_number, selected, started))
        deadline = started + controller.plan.round_deadline
        calls: dict[asyncio.Future[dict[str, Any]], ClientRef] = {}
        for client_id in selected:
            client = controller.clients[client_id]
            task = controller.task(round_number, client, overrides.get(client_id, {}), deadline)
            calls[controller.invoke(round_number, client, task, started)] = client

        updates: list[ClientUpdate] = []
        pending = set(calls)
        try:
            async for call in finished_by(calls, deadline):
                pending.discard(call)
                cut = overrides.get(calls[call].client_id, {}).get("budget_epochs")  # a straggler's, kept in its record
                if in_functions:
                    arrived = await controller.collect_result(round_number, calls[call], call, started, cut)
                    arrivals.extend([Arrival(calls[call], *arrived)] if arrived else [])
                    continue
                update = await controller.collect(round_number, calls[call], call, weights, started, budget_epochs=cut)
                if update is not None:
                    updates.append(update if streamed is None else streamed.add(update))
        except BaseException:  # the run is being torn down: the calls still running are recorded (and charged) too
            await controller.abandon({call: (round_number, calls[call], started) for call in pending})
            pending.clear()
            raise
        finally:  # the deadline passed: no call outlives its round
            for call in pending:
                call.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for call in pending:
            missed = InvocationError(f"missed the round deadline of {controller.plan.round_deadline:g}s", "deadline")
            controller.record_failure(round_number, calls[call], missed, started)
        if in_functions:
            try:
                tree = TreeAggregation(controller, options, run, refusal_ends_tree=True)
                return started, selected, *await tree.round_sum(round_number, weights, arrivals)
            except AggregatorsRefused as refused:  # functions that serve one client each
                refused.fall_back(controller)
                streamed = StreamingRound(strategy, weights)
                updates = await self.read_refused(round_number, weights, arrivals, streamed)
        if streamed is None:
            return started, selected, controller.screen(round_number, updates, weights), None
        rejected = controller.screen_distances(round_number, {u.client_id: streamed.distances[u.client_id] for u in updates},
                                               updates)
        keys = {u.client_id: update_key(controller.run_id, round_number, u.client_id) for u in updates}
        changed = await streamed.remove(controller.store, keys, rejected)
        for client_id in changed:
            controller.emit(UpdateRejected(controller.run_id, round_number, client_id,
                                           "its update changed in the store after it was verified and summed"))
        return started, selected, [u for u in updates if u.client_id not in rejected | changed], streamed

    async def read_refused(self, round_number: int, weights: Weights, arrivals: list[Arrival],
                           streamed: StreamingRound) -> list[ClientUpdate]:
        """The updates the aggregator functions refused to sum, read from the store READS_IN_FLIGHT at a time (one
        after the other, a remote store took N round trips) and folded into `streamed` in the arrivals' order, so
        the sum is the same whatever read finishes first and at most READS_IN_FLIGHT updates are held; an update
        that fails its checks is left out, announced as rejected (Controller.read_collected)."""
        controller, updates = self.controller, []
        reads = (controller.read_collected(round_number, arrival.client, arrival.update, arrival.reply, weights)
                 for arrival in arrivals)
        async with contextlib.aclosing(in_order(reads, READS_IN_FLIGHT)) as read:
            async for update in read:
                updates.extend([streamed.add(update)] if update is not None else [])
        return updates
