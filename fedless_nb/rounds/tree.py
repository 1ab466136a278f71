"""Tree aggregation: a sum-based round summed by aggregator functions where the updates are stored.

The controller checks each result's claims without reading its update (Controller.collect_result),
splits the round's results into shards of `fan_in` per provider (an aggregator can verify only the
clients of its own provider's secret), invokes an aggregator function per shard in parallel
(function/aggregator.py), and, while a provider has more than `fan_in` partial sums, merges them in
further aggregators a level up; it merges the last few itself and hands the strategy the same sum
the controller would have folded (reduction.py). What the controller downloads is one partial sum per
shard instead of every update. An update an aggregator refuses is rejected with its reason; an
aggregator that fails takes its shard's updates out of the round, which goes on. The norm screening's
rules that need the whole round work on the distances the aggregators report; an update they reject
is taken back out by summing it again in a correction aggregator and subtracting that partial sum.
Rules that need every update (strategy.sum_spec() is None) never get here: they aggregate centrally.
A secure round's masked vectors go through the same tree (`masked_sum`): summed modulo 2^32, with no
screening and no weights, so the controller reads the round's masked sum and never a single vector.
Each attempt at an aggregator invocation writes its own key and carries its own token, so a retry is
never refused as a replay of the attempt before.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import UserError
from ..aggregate_wire import AGGREGATE, AggregateResult, SummedUpdate, parse_aggregate_result
from ..providers.base import InvocationError
from ..reduction import MaskedSum, SumSpec, WeightedSum, partial_sum_limit
from ..security import ResultSignatureError
from ..store.keys import aggregate_key, global_weights_key
from ..strategies.base import ClientUpdate, SumStrategy, Weights
from ..wire import CANNOT_AGGREGATE, ResultError
from .events import AggregationFinished, UpdateRejected
from .completion import all_or_none
from .partial_sums import Contents, accounting_problem, sum_problem, update_bound
from .resilience import invoke_with_retries

if TYPE_CHECKING:
    from .controller import ClientRef, Controller

WHERE = ("auto", "controller", "functions")


@dataclass(frozen=True)
class TreeOptions:
    """`where`: "controller" always folds in the controller, "functions" always sums in aggregator functions,
    "auto" switches to functions when a round's updates (clients selected x the model's bytes) reach
    `threshold_bytes`; `fan_in`: the updates (or partial sums) one aggregator reads."""

    where: str = "auto"
    fan_in: int = 50
    threshold_bytes: int = 256 * 2**20

    def in_functions(self, strategy: Any, updates: int, model_bytes: int) -> bool:
        """Whether a round of `updates` updates of `model_bytes` each is summed by aggregator functions."""
        if not isinstance(strategy, SumStrategy) or self.where == "controller":
            return False
        return self.where == "functions" or updates * model_bytes >= self.threshold_bytes


class AggregatorsRefused(Exception):
    """A provider's function refused an aggregator's task because it serves one client (security.check_may_aggregate;
    the invocation's cause is CANNOT_AGGREGATE, as the function declared it):
    under `where: auto` the controller sums the round instead; asked for by name, the run ends (`fall_back`, which
    rounds/synchronous.py and rounds/secagg.py call)."""

    def __init__(self, provider: str, refusal: str) -> None:
        super().__init__(f"aggregation: {{where: functions}}, but the functions of provider {provider!r} cannot "
                         f"aggregate: {refusal}")

    def fall_back(self, controller: Controller) -> None:
        """Under `where: auto`, have the controller sum this round (the caller's part) and every later one; asked for
        by name (`where: functions`), end the run in one line naming the remedy."""
        if controller.plan.aggregation.where != "auto":
            raise UserError(str(self)) from None
        controller.aggregate_in_controller()


@dataclass
class Arrival:
    """A client result whose claims checked out, waiting for its shard: the update without arrays, the reply."""

    client: ClientRef
    update: ClientUpdate
    reply: dict[str, Any]


@dataclass
class TreeRound:
    """A round summed by the tree: the merged sum, the distances of the updates in it and how each counted."""

    strategy: SumStrategy
    current: Weights
    total: WeightedSum = field(default_factory=WeightedSum)
    distances: dict[str, float] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)  # sha256 of each summed update's bytes
    added: set[str] = field(default_factory=set)

    def aggregate(self, round_number: int) -> Weights:
        distances = [self.distances[client_id] for client_id in self.added]
        return self.strategy.aggregate_total(round_number, self.current, self.total, distances)


class TreeAggregation:
    """Sums one round's arrivals through aggregator functions (the module docstring)."""

    def __init__(self, controller: Controller, options: TreeOptions, round_run: int = 1, *,
                 refusal_ends_tree: bool = False) -> None:
        """`round_run`: which run of the round this is (a round below its quorum runs again): it names the
        aggregators' keys, which the first run's functions already wrote. `refusal_ends_tree`: a function that cannot
        aggregate (it serves one client) raises AggregatorsRefused instead of failing its shard."""
        self.controller, self.options, self.round_run = controller, options, round_run
        self.refusal_ends_tree = refusal_ends_tree
        self._invocations = 0
        self._contents: dict[str, Contents] = {}  # partial sum key -> what it must hold (rounds/partial_sums.py)
        self._current: Weights = []  # the global model the round trained from

    async def reduce(self, round_number: int, current: Weights, arrivals: Sequence[Arrival],
                     deadline: float) -> TreeRound:
        """The round's sum over the arrivals the aggregators accept, with their distances; refusals are announced."""
        strategy = self.controller.strategy
        assert isinstance(strategy, SumStrategy)
        spec, tree = strategy.sum_spec(), TreeRound(strategy, current)
        self._current = current
        entries = {}
        for arrival in arrivals:
            term = strategy.sum_term(arrival.update)
            entries[arrival.update.client_id] = (arrival, term)
            if term is not None:
                tree.added.add(arrival.update.client_id)
        partials = await self._reduce(round_number, spec, [(a, self._entry(a, term)) for a, term in entries.values()],
                                      deadline)
        for summed, facts, refused in partials:
            tree.total.merge(summed)  # type: ignore[arg-type]
            tree.distances.update({fact.client_id: fact.distance for fact in facts})  # type: ignore[misc]
            tree.digests.update({fact.client_id: fact.sha256 for fact in facts})
            tree.added -= refused
        return tree

    async def masked_sum(self, round_number: int, arrivals: Sequence[Arrival], length: int,
                         deadline: float) -> tuple[MaskedSum, set[str]]:
        """A secure round's masked vectors of `length` values summed modulo 2^32 by aggregator functions, and
        the clients whose vectors are in the sum; each refused vector is announced (rounds/secagg.py then
        counts its client as dropped)."""
        partials = await self._reduce(round_number, SumSpec.masked(length),
                                      [(arrival, self._entry(arrival, None)) for arrival in arrivals], deadline)
        total, summed = MaskedSum(length), set()
        for partial, facts, _ in partials:
            total.merge(partial)  # type: ignore[arg-type]
            summed |= {fact.client_id for fact in facts}
        return total, summed

    async def _reduce(self, round_number: int, spec: SumSpec, entries: Sequence[tuple[Arrival, dict[str, Any]]],
                      deadline: float) -> list[tuple[WeightedSum | MaskedSum, list[SummedUpdate], set[str]]]:
        """Each provider's entries reduced by its own aggregators (they can verify only its clients)."""
        by_provider: dict[str, list[dict[str, Any]]] = {}
        for arrival, entry in entries:
            by_provider.setdefault(arrival.client.provider, []).append(entry)
        # one provider's refusal (AggregatorsRefused) ends the tree: the others' aggregators are cancelled with it
        return await all_or_none(self._reduce_provider(round_number, provider, spec, level_entries, deadline)
                                 for provider, level_entries in by_provider.items())

    async def round_sum(self, round_number: int, current: Weights,
                        arrivals: Sequence[Arrival]) -> tuple[list[ClientUpdate], TreeRound]:
        """The round's screened updates (no arrays) and their sum: `reduce`, then the controller's norm screening
        on the reported distances, each update it rejects taken back out (`remove`)."""
        deadline = time.time() + self.controller.plan.round_deadline
        tree = await self.reduce(round_number, current, arrivals, deadline)
        rejected = self.controller.screen_distances(round_number, tree.distances, [a.update for a in arrivals])
        if not await self.remove(round_number, tree, [a for a in arrivals if a.update.client_id in rejected], deadline):
            # a rejected update changed in the store after it was summed, so it cannot be subtracted: sum the
            # round again without the rejected ones (the aggregators refuse any update whose bytes changed)
            kept = [a for a in arrivals if a.update.client_id in tree.distances and a.update.client_id not in rejected]
            tree = await self.reduce(round_number, current, kept, deadline)
        return [a.update for a in arrivals if a.update.client_id in tree.distances and
                a.update.client_id not in rejected], tree

    async def remove(self, round_number: int, tree: TreeRound, arrivals: Sequence[Arrival], deadline: float) -> bool:
        """Take `arrivals` back out of `tree`'s sum: sum them again in an aggregator and subtract that, if it summed
        the very bytes it summed before (their digests). False when one's bytes changed since (its client may
        write its key until the deadline) or its correction aggregator failed: the sum cannot be corrected."""
        strategy = tree.strategy
        for arrival in arrivals:
            client_id = arrival.update.client_id
            if client_id not in tree.added:
                continue
            entry = self._entry(arrival, strategy.sum_term(arrival.update))
            try:
                summed, result, _ = await self._invoke(round_number, arrival.client.provider, 0, strategy.sum_spec(),
                                                    [entry], deadline, correction=True)
            except InvocationError:
                return False
            if [s.sha256 for s in result.summed] != [tree.digests.get(client_id)]:
                return False
            tree.total.merge(summed, sign=-1.0)  # type: ignore[arg-type]
            tree.added.discard(client_id)
        return True

    @staticmethod
    def _entry(arrival: Arrival, term: Any) -> dict[str, Any]:
        return {"client_id": arrival.update.client_id, "key": arrival.reply["update"], "result": arrival.reply,
                "term": None if term is None else {"scale": term.scale, "weight": term.weight, "extras": term.extras}}

    async def _reduce_provider(self, round_number: int, provider: str, spec: SumSpec, entries: list[dict[str, Any]],
                               deadline: float) -> tuple[WeightedSum | MaskedSum, list[SummedUpdate], set[str]]:
        """One provider's updates summed level by level until at most `fan_in` partial sums are left. The controller
        reads only those last partial sums: each lower one is read, and its signature checked, by the aggregator a
        level up that merges it."""
        fan_in, level = self.options.fan_in, 0
        shards = [entries[i:i + fan_in] for i in range(0, len(entries), fan_in)]
        outcomes = await all_or_none(self._shard(round_number, provider, spec, shard, deadline,
                                                 read=len(shards) <= fan_in) for shard in shards)
        facts = [fact for _, result, _ in outcomes if result for fact in result.summed]
        partials = [outcome for outcome in outcomes if outcome[1] is not None]
        lost: set[str] = set()  # clients in partial sums whose merging aggregator failed
        # unread sums (more shards than fan_in) go a level up even when failed shards leave fan_in or fewer
        while len(partials) > fan_in or any(summed is None for summed, _, _ in partials):
            level += 1
            groups = [partials[i:i + fan_in] for i in range(0, len(partials), fan_in)]
            merged = await all_or_none(self._merge(round_number, provider, level, spec, group, deadline,
                                                   read=len(groups) <= fan_in, lost=lost) for group in groups)
            partials = [outcome for outcome in merged if outcome is not None]
        facts = [fact for fact in facts if fact.client_id not in lost]
        refused = {entry["client_id"] for entry in entries} - {fact.client_id for fact in facts}
        total = spec.empty_sum()
        for summed, _, _ in partials:
            total.merge(summed)  # type: ignore[arg-type]
        return total, facts, refused

    async def _merge(self, round_number: int, provider: str, level: int, spec: SumSpec, group: list[Any],
                     deadline: float, *, read: bool, lost: set[str]) -> Any:
        """A level-up aggregator's merge of `group`'s partial sums, or None when it failed: then the updates in
        them are out of the round (added to `lost`), each announced, and the round goes on."""
        try:
            return await self._invoke(round_number, provider, level, spec, [
                {"client_id": result.client_id, "key": result.update, "result": reply}
                for _, result, reply in group], deadline, read=read)
        except InvocationError as error:
            stage = "masked" if spec.is_masked else None
            for _, result, _ in group:
                for client_id in sorted(self._contents[result.update].clients):
                    lost.add(client_id)
                    self.controller.emit(UpdateRejected(self.controller.run_id, round_number, client_id,
                                                        f"the aggregator merging its shard failed: {error}", stage))
            return None

    async def _shard(self, round_number: int, provider: str, spec: SumSpec, shard: list[dict[str, Any]],
                     deadline: float, *, read: bool) -> tuple[WeightedSum | MaskedSum | None, AggregateResult | None,
                                                              dict[str, Any]]:
        """A level-0 shard's partial sum (if `read`), its refusals announced; a failed aggregator refuses its whole shard."""
        stage = "masked" if spec.is_masked else None  # a secure round's masked stage: its other stages stand
        try:
            summed, result, reply = await self._invoke(round_number, provider, 0, spec, shard, deadline, read=read)
        except InvocationError as error:
            for entry in shard:
                self.controller.emit(UpdateRejected(self.controller.run_id, round_number, entry["client_id"],
                                                    f"its aggregator function failed: {error}", stage))
            return spec.empty_sum(), None, {}
        for refusal in result.rejected:
            self.controller.emit(UpdateRejected(self.controller.run_id, round_number, refusal.client_id,
                                                f"{refusal.cause}: {refusal.reason}", stage))
        return summed, result, reply

    async def _invoke(self, round_number: int, provider: str, level: int, spec: SumSpec,
                      entries: list[dict[str, Any]], deadline: float, *, correction: bool = False,
                      read: bool = True) -> tuple[WeightedSum | MaskedSum | None, AggregateResult, dict[str, Any]]:
        """Invoke one aggregator (retrying where safe, each attempt with its own key and token), check its signed
        result and, if `read`, read its partial sum; returns the sum (None unread), the parsed result and the
        signed reply (a level up checks it again)."""
        from .controller import ClientRef

        controller = self.controller
        self._invocations += 1
        aggregator = ClientRef(f"aggregator-{'c' if correction else level}-{self._invocations:05d}", "", provider)
        weights_key = global_weights_key(controller.run_id, round_number - 1)
        signing_key = controller.signing_key(aggregator)
        attempts: list[str] = []  # the key of each attempt; the last one answered

        def attempt_task() -> dict[str, Any]:
            key = aggregate_key(controller.run_id, round_number, aggregator.client_id, self.round_run, len(attempts) + 1)
            attempts.append(key)
            task = {
                "kind": AGGREGATE, "run_id": controller.run_id, "round": round_number,
                "client_id": aggregator.client_id, "level": level, "weights": weights_key, "update": key,
                "spec": spec.to_wire(), "max_update_norm": controller.plan.policy.max_update_norm,
                "max_update_bytes": controller.update_limit, "entries": entries, "token": None, "deadline": deadline,
                # it reads the model and its entries, and checks that its own key is still unwritten (a replay)
                # its partial sum is the model in float64 plus a small header: at most twice an update's limit
                "store": controller.store.task_descriptor([weights_key, key, *(entry["key"] for entry in entries)],
                                                          [key], deadline, max_write_bytes=2 * controller.update_limit),
            }
            if signing_key is not None:
                task["token"] = signing_key.issue_token(task)
            return task

        started = time.time()

        def failed(error: InvocationError) -> None:
            controller.emit(AggregationFinished(controller.run_id, round_number, aggregator.client_id, provider, level,
                                                "failed", started, time.time(), len(entries), error=str(error)))

        async def invoke_by_deadline(task: dict[str, Any]) -> dict[str, Any]:
            """The provider's call, cut at the deadline (a provider's own timeout may be far longer)."""
            try:
                return await asyncio.wait_for(controller.providers[provider].invoke(task), max(0.0, deadline - time.time()))
            except asyncio.TimeoutError:
                raise InvocationError(f"missed the aggregation deadline of {controller.plan.round_deadline:g}s",
                                      "deadline") from None

        try:
            reply = await invoke_with_retries(invoke_by_deadline, attempt_task, controller.plan.policy, deadline, failed)
            key = attempts[-1]
            result = parse_aggregate_result(reply, controller.run_id, round_number, aggregator.client_id, key)
            if level == 0 and not spec.is_masked and any(fact.distance is None for fact in result.summed):
                raise ResultError("the aggregator's result lacks an update's distance", "invalid")
            if problem := accounting_problem(level, entries, result):
                raise ResultError(problem, "invalid")
            bound = update_bound(controller.plan.policy.max_update_norm, spec.clip)
            contents = (Contents.of_shard(entries, result, spec.is_masked, bound) if level == 0
                        else Contents.merged([self._contents[entry["key"]] for entry in entries]))
            self._contents[key] = contents
            size = await controller.store.asize(key)
            if size > partial_sum_limit(controller.update_limit):
                raise InvocationError("the partial sum is larger than a model's float64 sum can be", "rejected")
            summed = None
            if read:
                data = await controller.store.aget(key)
                if signing_key is not None:
                    signing_key.verify_result(reply, data)
                summed = spec.read_sum(data)
                if problem := sum_problem(summed, contents, self._current, spec.term):
                    raise ResultError(problem, "invalid")
        except (ResultError, ResultSignatureError, ValueError) as error:
            failure = InvocationError(f"{type(error).__name__}: {error}", "invalid")
            failed(failure)
            raise failure from None
        except asyncio.CancelledError:  # the tree ended (another aggregator's refusal) or the run is torn down
            failed(InvocationError("cancelled before it answered: the round stopped waiting for its aggregators",
                                   "cancelled"))
            raise
        except InvocationError as error:
            if self.refusal_ends_tree and error.cause == CANNOT_AGGREGATE:
                fallback = ("; aggregation: {where: auto} sums this run's rounds in the controller from this one on"
                            if self.options.where == "auto" else "")
                failed(InvocationError(f"{error}{fallback}", error.cause))
                raise AggregatorsRefused(provider, str(error)) from None
            failed(error)
            raise
        controller.emit(AggregationFinished(
            controller.run_id, round_number, aggregator.client_id, provider, level, "succeeded", started, time.time(),
            len(entries), summed=len(result.summed) if level == 0 else result.count, rejected=len(result.rejected),
            bytes_read=result.bytes_read, bytes_written=size))
        return summed, result, reply
