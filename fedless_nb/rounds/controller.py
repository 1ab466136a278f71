"""The controller of one run and its round interface: the primitives every schedule is built from.

A schedule (rounds/synchronous.py, rounds/fedbuff.py, a multi-stage round) decides which clients
train when; the controller gives it the same primitives, all public: build a client's task,
invoke it, collect and check its result, screen a round's updates, record a failure, publish a
global version, emit an event. The controller knows nothing of notebooks or terminals; observers
subscribe to its events. It never trusts a result blindly: a result must answer the task it was
given (wire.parse_result, a strict model), be signed with its client's key, claim the example count the
controller wrote, and its update must pass screening.py's checks, or it counts as failed. Observers
never end a run: an observer's error is logged once and counted in the run's record.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import inspect
import logging
import time
import zlib
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

from .checkpoint import Checkpoint, checkpoint_key, encode_checkpoint
from .events import InvocationFinished, InvocationSent, Observer, RoundFinished, RunFinished, RunStarted, UpdateRejected
from ..function.batching import local_steps, steps_under_cut
from ..model import ModelSpec
from ..privacy.accounting import PrivacyBudgetExhausted, may_have_trained
from ..providers.base import InvocationError, Provider
from .resilience import FailureTally, RoundPolicy, invoke_with_retries
from ..security import ResultSignatureError, RunKey, client_key
from ..wire import Result, ResultError, check_progress, make_task, parse_result, task_reads
from .selection import SelectionPolicy
from .stragglers import Stragglers
from .synchronous import SynchronousRounds
from .tree import TreeOptions
from ..store import Store, decode_arrays, encode_arrays
from ..store.keys import global_weights_key, round_prefix, update_key
from ..strategies.base import ClientUpdate, RunContext, Strategy, Weights
from .screening import NormScreen, update_distance, update_problem
from ..wording import counted


log = logging.getLogger(__name__)

# Produces the rounds of a run: given the initial weights, yields (round number, global weights) per round.
# A schedule is built on a Controller and uses only its public round interface.
Schedule = Callable[[Weights], AsyncIterator[tuple[int, Weights]]]

# The share of an invocation's time (the round's rest or the provider's timeout) a client may train before it
# stops and returns partial work; the rest is for loading, uploading and the way back.
BUDGET_SHARE = 0.8


def update_size_limit(model_bytes: int) -> int:
    """The bytes a client's write may have: an update is the global model's encoding (the same arrays), a
    secure round's masked vector no larger, its key and share objects a few kilobytes; so the model's size,
    an eighth more and 64 KiB. Tasks carry it (a presigned POST's content-length-range, a local store's
    write limit) and the controller checks it again before reading."""
    return model_bytes + model_bytes // 8 + 2**16


class LateReply(InvocationError):
    """A result of one of the client's earlier rounds (`answered_round`), delivered late: discarded."""

    def __init__(self, error: ResultError) -> None:
        super().__init__(str(error), "late")
        self.answered_round = error.answered_round


@dataclass(frozen=True)
class ClientRef:
    """A client function: its id, where its data lives, which provider runs it and how many examples it has
    (the controller's fact, which weights its update; the client's own claim is only cross-checked)."""

    client_id: str
    data_key: str
    provider: str
    num_examples: int | None = None  # the size of the partition the controller wrote; None: not known here


@dataclass(frozen=True)
class RoundPlan:
    """What every round shares: how many clients, which train settings, how long it may take."""

    rounds: int
    clients_per_round: int
    train: dict[str, Any]
    round_deadline: float
    seed: int = 0
    policy: RoundPolicy = RoundPolicy()
    stragglers: Stragglers | None = None
    aggregation: TreeOptions = TreeOptions()  # where a sum-based round is summed (rounds/tree.py)


def _observer_name(observer: Observer) -> str:
    owner = getattr(observer, "__self__", observer)
    return getattr(observer, "__qualname__", None) or type(owner).__name__


def weighted_metrics(updates: Sequence[ClientUpdate]) -> dict[str, float]:
    """Each training metric averaged over clients, weighted by their sample counts (as shares of the total, so
    a client's huge but finite claim cannot overflow the average to Inf)."""
    total = sum(update.num_examples for update in updates)
    names = {name for update in updates for name in update.metrics}
    return {
        name: sum(u.metrics.get(name, 0.0) * (u.num_examples / total) for u in updates) for name in sorted(names)
    } if total else {}


class Controller:
    """Runs the rounds of one run over the given clients and providers.

    The round interface, for schedules: `task`, `invoke`, `collect` (or `receive` for a stage's object, or
    `collect_result` and `receive_result` when aggregator functions read the update), `screen` (or `screen_distances`), `record_failure`, `publish` and `emit`, plus the run's `clients`, `providers`, `strategy`, `selection`, `plan`,
    `run_id` and `resumed_round` (the checkpointed round a resumed run continues after).
    """

    def __init__(
        self,
        *,
        run_id: str,
        name: str,
        config: dict[str, Any],
        spec: ModelSpec,
        strategy: Strategy,
        selection: SelectionPolicy,
        clients: Sequence[ClientRef],
        providers: dict[str, Provider],
        store: Store,
        evaluate: Callable[[Weights], dict[str, float]],
        plan: RoundPlan,
    ) -> None:
        self.run_id, self.name, self.config = run_id, name, config
        self.strategy, self.selection, self.store, self.evaluate = strategy, selection, store, evaluate
        self.clients = {client.client_id: client for client in clients}
        self.providers = providers
        # Each provider's secret; a client's tokens and result signatures use its own key, derived from it.
        self._secrets = {name: p.secret for name, p in providers.items() if getattr(p, "secret", None)}
        self._client_keys: dict[str, RunKey] = {}
        self.plan = plan
        self._norm_screen = NormScreen(plan.policy.max_norm_ratio, plan.policy.max_update_norm)
        self._update_limit = 0  # bytes an update may have: set from the global model's encoding at the start
        self._model_wire = spec.to_wire()
        self._failures = FailureTally()  # why a run that trained nothing failed
        self._observers: list[Observer] = [self._failures]
        self._updates_published = 0  # valid updates in the rounds this process ran
        self.observer_errors: dict[str, int] = {}  # observer name -> how many events it failed on
        self._stop_requested = False
        self.resumed_round = 0  # the checkpointed round a resumed run continues after
        self.round_metrics: list[dict[str, float]] = []
        # Sources of a round's "privacy" figures (the example-level accountant); called as source(round),
        # returning the figures or an awaitable of them (work done off the event loop).
        self.privacy_sources: list[Callable[[int], Any]] = []
        # Checks of a result against the controller's own facts (e.g. the accountant's privacy facts):
        # check(client_id, result) -> why it is rejected, or None.
        self.result_checks: list[Callable[[str, dict[str, Any]], str | None]] = []
        # What the checkpoint keeps the state of (name -> object with state() and load_state(state)): the norm
        # screening's recent rounds, and observers the runner adds.
        self.checkpointed: dict[str, Any] = {"screening": self._norm_screen}
        # Called with a resumed run's checkpoint once its state is restored, before the first round runs again.
        self.on_restore: list[Callable[[Checkpoint], None]] = []
        # What dedupes a late reply's charge (_charged): each client's last round with a charged invocation, and the
        # (round, client) pairs whose invocations so far were all uncharged (refused before training: few)
        self._last_charged: dict[str, int] = {}
        self._uncharged: set[tuple[int, str]] = set()
        # The write-ahead record (InvocationSent): the last attempt's seq, and each attempt still running by (round,
        # client, stage), whose InvocationFinished carries its seq; a checkpoint keeps both (what its accountants count)
        self._last_sent = 0
        self._running: dict[tuple[int, str, str | None], int] = {}
        # Only a run whose accountant charges each invocation needs that record (the runner sets this): it costs a
        # history commit per attempt on the event loop, which a run without example-level DP need not pay.
        self.writes_ahead = False

    def subscribe(self, observer: Observer) -> None:
        self._observers.append(observer)

    def emit(self, event: Any) -> None:
        """Hand `event` to every observer (history, dashboard, accountant, progress). An observer that raises
        is logged (once) and counted in `observer_errors`, which RunFinished carries; the run goes on."""
        for observer in self._observers:
            self._observed(observer, event)

    def _observed(self, observer: Callable[[Any], Any], argument: Any) -> Any:
        """`observer(argument)`, or None when it raises (logged once per observer, counted)."""
        try:
            return observer(argument)
        except Exception:
            self._observer_failed(observer, argument)
            return None

    def _observer_failed(self, observer: Callable[[Any], Any], argument: Any) -> None:
        name = _observer_name(observer)
        if name not in self.observer_errors:
            log.exception("observer %s failed on %s; the run goes on without it", name, type(argument).__name__)
        self.observer_errors[name] = self.observer_errors.get(name, 0) + 1

    async def _observed_figures(self, source: Callable[[int], Any], round_number: int) -> Any:
        """A privacy source's figures for the round (awaited when it computes them off the event loop), or
        None when it fails (logged once per source, counted), like any observer."""
        figures = self._observed(source, round_number)
        if not inspect.isawaitable(figures):
            return figures
        try:
            return await figures
        except Exception:
            self._observer_failed(source, round_number)
            return None

    def request_stop(self) -> None:
        """Finish the current round, then end the run as "stopped". Any thread may call it (a notebook's cell):
        the flag is read after each round."""
        self._stop_requested = True

    async def run(self, weights: Weights, schedule: Schedule | None = None, resume: Checkpoint | None = None) -> Weights:
        """All rounds from `weights`; returns the final global model.

        `schedule` produces the rounds (default: rounds.synchronous.SynchronousRounds; rounds.fedbuff has FedBuff).
        With `resume` (the run's last checkpoint, `weights` its global model), the rounds after the checkpoint's.
        """
        weights = await self._start(weights, resume)
        status, error, completed = "finished", None, self.resumed_round
        try:
            async with contextlib.aclosing((schedule or SynchronousRounds(self))(weights)) as rounds:
                async for round_number, weights in rounds:
                    completed = round_number
                    if not self.resumed_round and self._failures.futile() and round_number < self.plan.rounds:
                        raise self._failures.nothing_trained(completed, self.plan.rounds)
                    if self._stop_requested and round_number < self.plan.rounds:
                        status = "stopped"
                        break
            if status == "finished" and not self.resumed_round and completed and not self._updates_published:
                raise self._failures.nothing_trained(completed, self.plan.rounds)  # a resumed run trained before its checkpoint
        except PrivacyBudgetExhausted as exhausted:
            status, error = "stopped", str(exhausted)
        except (asyncio.CancelledError, KeyboardInterrupt):
            status, error = "stopped", "interrupted"
            raise
        except Exception as exception:
            status, error = "failed", f"{type(exception).__name__}: {exception}"
            raise
        finally:
            final = self.round_metrics[-1] if self.round_metrics else {}
            self.emit(RunFinished(self.run_id, status, time.time(), completed, final, error,
                                  observer_errors=dict(self.observer_errors)))
        return weights

    async def _start(self, weights: Weights, resume: Checkpoint | None) -> Weights:
        """Bind the strategy; initialize it and store the initial model, or restore a checkpoint's state;
        announce the run."""
        self.strategy.bind(RunContext(self.run_id, self.store, dict(self.plan.train), len(self.clients),
                                      self.plan.clients_per_round))
        if resume is None:
            weights = self.strategy.initialize(weights)
            await self.store.aput(global_weights_key(self.run_id, 0), encode_arrays(weights))
        else:
            # What the round after the checkpoint wrote before the process died (updates of functions that
            # finished after it) would make each function refuse its task as a replay when the round runs again.
            self.store.delete_prefix(round_prefix(self.run_id, resume.round + 1))
            self.strategy.load_state(resume.strategy_state)
            self.round_metrics = list(resume.round_metrics)
            for name, observer in self.checkpointed.items():
                observer.load_state(resume.observer_state.get(name, {}))
            for restored in self.on_restore:
                restored(resume)
            self._last_sent = resume.sent_through
        self._update_limit = update_size_limit(len(encode_arrays(weights)))
        self.resumed_round = resume.round if resume else 0
        self.emit(RunStarted(
            self.run_id, self.name, self.config, self.plan.rounds, len(self.clients),
            [provider.describe() for provider in self.providers.values()], time.time(), resumed_from=self.resumed_round,
        ))
        return weights

    def task(self, round_number: int, client: ClientRef, overrides: dict[str, Any], deadline: float, *,
             update: str | None = None, reads: Sequence[str] = ()) -> dict[str, Any]:
        """The client's signed task for `round_number` (wire.make_task); its shuffling seed differs per
        run seed, round and client. A multi-stage round names the stage's own `update` key (default: the
        round's update key) and the other objects the stage may `read` (e.g. its peers' public keys)."""
        seed = zlib.crc32(f"{self.plan.seed}/{round_number}/{client.client_id}".encode())
        train = {**self.plan.train, **overrides, "seed": seed, "budget_seconds": self.time_budget(client, deadline)}
        weights_key = global_weights_key(self.run_id, round_number - 1)
        update = update or update_key(self.run_id, round_number, client.client_id)
        granted = [*task_reads(train, weights_key, client.data_key, update), *reads]
        store = self.store.task_descriptor(granted, [update], deadline, max_write_bytes=self._update_limit)
        task = make_task(run_id=self.run_id, round_number=round_number, client_id=client.client_id,
                         model=self._model_wire, weights=weights_key, data=client.data_key, update=update,
                         train=train, store=store, deadline=deadline)
        key = self.signing_key(client)
        if key is not None:
            task["token"] = key.issue_token(task)
        return task

    def signing_key(self, client: ClientRef) -> RunKey | None:
        """The client's own key in this run (None: its provider runs unsigned)."""
        secret = self._secrets.get(client.provider)
        if secret is None:
            return None
        if client.client_id not in self._client_keys:
            self._client_keys[client.client_id] = client_key(secret, self.run_id, client.client_id)
        return self._client_keys[client.client_id]

    @property
    def update_limit(self) -> int:
        """Bytes an update of this run's model may have (twice its encoding, and some)."""
        return self._update_limit

    def time_budget(self, client: ClientRef, deadline: float) -> float:
        """Seconds the client may work before it stops and returns partial work: BUDGET_SHARE of the round's
        rest or of its provider's timeout, whichever is shorter, and at most the config's train.budget_seconds."""
        timeout = getattr(self.providers[client.provider], "timeout", None)
        budget = BUDGET_SHARE * min(deadline - time.time(), timeout if timeout is not None else float("inf"))
        configured = self.plan.train.get("budget_seconds")
        return max(0.001, budget if configured is None else min(budget, float(configured)))

    def invoke(self, round_number: int, client: ClientRef, task: dict[str, Any], started: float, *,
               retry: bool = True, stage: str | None = None) -> asyncio.Future[dict[str, Any]]:
        """Start the client's invocation. With `retry`, safe failures are retried until the task's deadline
        (resilience.py), each failed attempt recorded (with its `stage` in a multi-stage round); collect
        the future's outcome with `collect` (or `receive` for a stage that writes no model update)."""
        provider = self.providers[client.provider]

        def invoke(task: dict[str, Any]) -> Awaitable[dict[str, Any]]:
            self._sent(round_number, client, task, stage)  # before the attempt can train
            return provider.invoke(task)

        if not retry:
            return asyncio.ensure_future(invoke(task))
        retried = functools.partial(self.record_failure, round_number, client, started=started, stage=stage)
        attempts = 0

        async def attempt(task: dict[str, Any]) -> dict[str, Any]:
            nonlocal attempts
            attempts += 1
            if attempts == 1:
                return await invoke(task)
            await self.store.adelete(task["update"])  # what a failed attempt wrote must not make this a replay
            return await invoke(self._reissued(client, task))

        return asyncio.ensure_future(invoke_with_retries(attempt, task, self.plan.policy, task["deadline"], retried))

    def _sent(self, round_number: int, client: ClientRef, task: dict[str, Any], stage: str | None) -> None:
        """Announce an attempt as it is sent (InvocationSent, which the history writes at once), under a seq that grows
        across resumes too (nanoseconds since the epoch, or one more than the last)."""
        if not self.writes_ahead:
            return
        self._last_sent = max(self._last_sent + 1, time.time_ns())
        self._running[round_number, client.client_id, stage] = self._last_sent
        self.emit(InvocationSent(self.run_id, round_number, client.client_id, client.provider, self._last_sent,
                                 time.time(), stage, task["train"].get("budget_epochs")))

    def _finished(self, round_number: int, client_id: str, stage: str | None) -> int | None:
        """The seq of the attempt of (round, client, stage) that just ended (None: none was announced)."""
        return self._running.pop((round_number, client_id, stage), None)

    def _reissued(self, client: ClientRef, task: dict[str, Any]) -> dict[str, Any]:
        """`task` with a fresh token, for its retry. A function refuses a task whose token it has spent or whose
        update exists (a replay), and an attempt that timed out or crashed may have done either before it failed;
        the controller deletes that update before the retry, the token is new."""
        key = self.signing_key(client)
        return task if key is None else {**task, "token": key.issue_token(task)}

    def screen(self, round_number: int, updates: Sequence[ClientUpdate], weights: Weights) -> list[ClientUpdate]:
        """The updates of `round_number`'s tasks, trained from `weights`, that pass the norm screening
        (screening.NormScreen, which remembers recent rounds); each rejection is announced."""
        outliers = self.screen_distances(round_number, {update.client_id: update_distance(update.weights, weights)
                                                        for update in updates}, updates)
        return [update for update in updates if update.client_id not in outliers]

    def screen_distances(self, round_number: int, distances: dict[str, float],
                         updates: Sequence[ClientUpdate]) -> set[str]:
        """`screen` for `updates` given by their L2 distances from the global model (a streamed round's): the
        client ids rejected, each rejection announced. Each distance is judged as the strategy weighs it
        (Strategy.screened_distance: FedNova's by the steps it claims)."""
        claims = {update.client_id: update for update in updates}
        outliers = self._norm_screen.outliers({client_id: self.strategy.screened_distance(claims[client_id], distance)
                                               for client_id, distance in distances.items()})
        for client_id, reason in outliers.items():
            self.emit(UpdateRejected(self.run_id, round_number, client_id, reason))
        return set(outliers)

    async def publish(self, round_number: int, weights: Weights, started: float, selected: int,
                      updates: Sequence[ClientUpdate]) -> None:
        """Store global version `round_number`, evaluate it, announce the finished round, then checkpoint it."""
        await self.store.aput(global_weights_key(self.run_id, round_number), encode_arrays(weights))
        self._updates_published += len(updates)
        eval_metrics = self.evaluate(weights)
        self.round_metrics.append(eval_metrics)
        privacy = dict(self.strategy.round_metrics())
        for source in self.privacy_sources:
            privacy.update(await self._observed_figures(source, round_number) or {})
        self.emit(RoundFinished(
            self.run_id, round_number, started, time.time(), selected, len(updates),
            selected - len(updates), eval_metrics, weighted_metrics(updates), privacy,
        ))
        checkpoint = Checkpoint(round_number, self.strategy.state(), self.round_metrics,
                                {name: observer.state() for name, observer in self.checkpointed.items()},
                                self._last_sent, sorted(self._running.values()))
        await self.store.aput(checkpoint_key(self.run_id), encode_checkpoint(checkpoint))

    async def collect(
        self, round_number: int, client: ClientRef, call: asyncio.Future[dict[str, Any]], weights: Weights, started: float,
        staleness: int | None = None, budget_epochs: float | None = None,
    ) -> ClientUpdate | None:
        """The client's update if its finished call succeeded and the result checks out against `weights`
        (the global model it trained from); otherwise the failure is recorded and the answer is None.
        `budget_epochs`: the task's simulated straggler cut, which the event carries (the accountant charges by it)."""
        checked = await self._checking(round_number, client, started, self._read_update(round_number, client, call,
                                                                                           weights, budget_epochs))
        if checked is None:
            return None
        update, result = checked
        self._succeeded(round_number, client, result, started, update.num_examples, update.metrics,
                        staleness=staleness, steps=update.steps, partial=update.partial, budget_epochs=budget_epochs)
        return update

    async def collect_result(self, round_number: int, client: ClientRef, call: asyncio.Future[dict[str, Any]],
                             started: float, budget_epochs: float | None = None,
                             ) -> tuple[ClientUpdate, dict[str, Any]] | None:
        """`collect` without reading the update (an aggregator function reads, verifies and sums it where it is
        stored: rounds/tree.py): the update without arrays and the client's reply, if the result answers its task
        and its claims check out; otherwise the failure is recorded and the answer is None."""
        checked = await self._checking(round_number, client, started, self._checked_result(round_number, client, call,
                                                                                              budget_epochs))
        if checked is None:
            return None
        update, result = checked
        self._succeeded(round_number, client, result, started, update.num_examples, update.metrics,
                        steps=update.steps, partial=update.partial, budget_epochs=budget_epochs)
        return update, call.result()

    async def _checking(self, round_number: int, client: ClientRef, started: float, check: Any, *,
                        stage: str | None = None) -> Any:
        """The awaited `check`, or None with its failure recorded: a function's bad reply never ends a round."""
        try:
            return await check
        except InvocationError as error:
            self.record_failure(round_number, client, error, started, stage=stage)
        except Exception as error:
            failure = InvocationError(f"{type(error).__name__}: {error}", "error")
            self.record_failure(round_number, client, failure, started, stage=stage)
        return None

    async def receive(self, round_number: int, client: ClientRef, call: asyncio.Future[dict[str, Any]], started: float,
                      key: str, *, stage: str) -> tuple[dict[str, Any], bytes] | None:
        """A stage's result and the bytes it wrote at `key` (its task's update key), if its finished call
        succeeded and the result answers the task, claims the client's true example count and is signed
        over those bytes; otherwise the failure is recorded and the answer is None. The schedule checks
        what the bytes mean."""
        checked = await self._checking(round_number, client, started, self._verified(round_number, client, call, key),
                                       stage=stage)
        if checked is None:
            return None
        result, data = checked
        self._succeeded(round_number, client, result, started, result.num_examples, dict(result.metrics), stage=stage)
        return call.result(), data

    async def receive_result(self, round_number: int, client: ClientRef, call: asyncio.Future[dict[str, Any]],
                             started: float, key: str, *, stage: str) -> dict[str, Any] | None:
        """`receive` without reading the bytes at `key` (aggregator functions read, verify and sum them where they
        are stored: rounds/tree.py): the stage's reply, if it answers the task and claims the client's true
        example count; otherwise the failure is recorded and the answer is None."""
        checked = await self._checking(round_number, client, started, self._counted(round_number, client, call, key),
                                       stage=stage)
        if checked is None:
            return None
        self._succeeded(round_number, client, checked, started, checked.num_examples, dict(checked.metrics), stage=stage)
        return call.result()

    async def _counted(self, round_number: int, client: ClientRef, call: asyncio.Future[dict[str, Any]],
                       key: str) -> Result:
        """The reply parsed as a Result for this very task, if it claims the client's true example count."""
        return self._example_count_checked(self._parsed(round_number, client, call.result(), key), client)

    def _succeeded(self, round_number: int, client: ClientRef, result: Result, started: float,
                   num_examples: int, metrics: dict[str, float], **facts: Any) -> None:
        finished = time.time()
        self.emit(InvocationFinished(
            self.run_id, round_number, client.client_id, client.provider, "succeeded",
            max(started, finished - result.timings.total), finished,
            cold=result.cold, num_examples=num_examples, metrics=metrics, timings=result.timings.model_dump(),
            privacy=None if result.privacy is None else result.privacy.model_dump(),
            charged=self._charged(round_number, client.client_id, "succeeded", None, facts.get("stage")),
            sent=self._finished(round_number, client.client_id, facts.get("stage")), **facts,
        ))

    def _charged(self, round_number: int, client_id: str, outcome: str, cause: str | None, stage: str | None,
                 answered_round: int | None = None) -> bool:
        """Whether privacy accounting charges this invocation: once for each that may have trained
        (accounting.may_have_trained; every attempt of a retried one is its own), and a late reply only where no
        invocation of the round it answers was charged (a resent reply, or the late result of an attempt charged when
        it timed out, is the same training). A client's attempts at one round end one after the other."""
        trained = may_have_trained(outcome, cause, stage)
        if outcome == "discarded":
            late = (answered_round, client_id)
            trained = trained and late in self._uncharged
            self._uncharged.discard(late)
        elif trained:
            self._last_charged[client_id] = round_number
            self._uncharged.discard((round_number, client_id))
        elif outcome == "failed" and self._last_charged.get(client_id) != round_number:
            self._uncharged.add((round_number, client_id))
        return trained

    async def _verified(self, round_number: int, client: ClientRef, call: asyncio.Future[dict[str, Any]],
                        key: str) -> tuple[Result, bytes]:
        """`_verified_reply` of the finished call's reply (a failed call raises its error here, inside `_checking`)."""
        return await self._verified_reply(round_number, client, call.result(), key)

    async def _verified_reply(self, round_number: int, client: ClientRef, reply: dict[str, Any],
                              key: str) -> tuple[Result, bytes]:
        """The reply parsed as a Result for this very task and the bytes at `key`, if the result claims the
        client's true example count and this client signed it over those bytes (read only when their size
        is one an update of this model can have)."""
        result = self._parsed(round_number, client, reply, key)
        size = await self.store.asize(key)
        if size > self._update_limit:  # checked before reading: an update is the global model's size
            raise InvocationError(f"the update is {size} bytes, more than the {self._update_limit} an update of this "
                                  "model can take; it was not read", "rejected")
        data = await self.store.aget(key)
        if len(data) > self._update_limit:  # rewritten between the two calls: refused all the same
            raise InvocationError(f"the update grew to {len(data)} bytes while it was read, more than the "
                                  f"{self._update_limit} an update of this model can take", "rejected")
        run_key = self.signing_key(client)
        if run_key is not None:
            try:
                run_key.verify_result(reply, data)
            except ResultSignatureError as error:
                raise InvocationError(str(error), "signature") from None
        return self._example_count_checked(result, client), data

    def _parsed(self, round_number: int, client: ClientRef, reply: Any, key: str) -> Result:
        """The reply parsed as a Result for this very task."""
        try:
            return parse_result(reply, self.run_id, round_number, client.client_id, key)
        except ResultError as error:
            raise (LateReply(error) if error.cause == "late" else InvocationError(str(error), error.cause)) from None

    @staticmethod
    def _example_count_checked(result: Result, client: ClientRef) -> Result:
        """`result`, if it claims the client's true example count."""
        if client.num_examples is not None and result.num_examples != client.num_examples:
            raise InvocationError(f"the result claims {counted(result.num_examples, 'example')}, but the client's partition "
                                  f"has {client.num_examples}", "rejected")
        return result

    async def _read_update(self, round_number: int, client: ClientRef, call: asyncio.Future[dict[str, Any]],
                           weights: Weights, budget_epochs: float | None) -> tuple[ClientUpdate, Result]:
        """The update a reply points at, weighted by what the controller knows (_verified), whose DP facts
        and progress fit its task and whose arrays fit the global model."""
        result, data = await self._verified(round_number, client, call,
                                            update_key(self.run_id, round_number, client.client_id))
        update = self._claims_checked(result, client, budget_epochs)
        return self._with_arrays(update, data, weights), result

    @staticmethod
    def _with_arrays(update: ClientUpdate, data: bytes, weights: Weights) -> ClientUpdate:
        """`update` with the arrays `data` holds, if they fit the global model `weights`."""
        arrays = decode_arrays(data)
        if problem := update_problem(arrays, weights):
            raise InvocationError(problem, "rejected")
        return dataclasses.replace(update, weights=arrays)

    async def read_collected(self, round_number: int, client: ClientRef, update: ClientUpdate, reply: dict[str, Any],
                             weights: Weights) -> ClientUpdate | None:
        """The arrays of an update `collect_result` checked without reading (its aggregators refused to sum it), read
        and verified as `collect` does; None when they fail, the update announced as rejected (its invocation stands)."""
        return await self.read_received(round_number, client, reply, update_key(self.run_id, round_number,
                                                                               client.client_id),
                                        lambda data: self._with_arrays(update, data, weights))

    async def read_received(self, round_number: int, client: ClientRef, reply: dict[str, Any], key: str,
                            accept: Callable[[bytes], Any], *, stage: str | None = None) -> Any:
        """`accept` of the bytes at `key` of a reply checked without reading them (`collect_result`, `receive_result`:
        their aggregators refused to sum them), verified as `receive` does; None when they fail or `accept` raises
        ValueError, announced as rejected (the invocation stands)."""
        try:
            _, data = await self._verified_reply(round_number, client, reply, key)
            return accept(data)
        except (InvocationError, ValueError) as error:
            self.emit(UpdateRejected(self.run_id, round_number, client.client_id, str(error), stage))
            return None

    def aggregate_in_controller(self) -> None:
        """Sum every later round in the controller: `where: auto` met functions that cannot aggregate."""
        self.plan = dataclasses.replace(self.plan, aggregation=dataclasses.replace(self.plan.aggregation,
                                                                                  where="controller"))

    async def _checked_result(self, round_number: int, client: ClientRef, call: asyncio.Future[dict[str, Any]],
                              budget_epochs: float | None) -> tuple[ClientUpdate, Result]:
        """The result parsed and its claims checked, its update (no arrays) not read."""
        result = self._parsed(round_number, client, call.result(), update_key(self.run_id, round_number,
                                                                               client.client_id))
        return self._claims_checked(self._example_count_checked(result, client), client, budget_epochs), result

    def _claims_checked(self, result: Result, client: ClientRef, budget_epochs: float | None) -> ClientUpdate:
        """The update (no arrays yet) of a result whose DP facts, other checks and progress fit its task, a
        simulated straggler's (`budget_epochs`, its cut) within the steps that cut allows."""
        if problem := self._privacy_problem(result, client):
            raise InvocationError(problem, "invalid")
        facts = result.model_dump()
        for check in self.result_checks:
            if problem := check(client.client_id, facts):
                raise InvocationError(problem, "rejected")
        try:
            train, examples = self.plan.train, result.num_examples
            allowed = None if budget_epochs is None else steps_under_cut(examples, train, budget_epochs)
            steps, partial = check_progress(result, local_steps(examples, train), allowed)
        except ResultError as error:
            raise InvocationError(str(error), error.cause) from None
        return ClientUpdate(client.client_id, [], result.num_examples, dict(result.metrics), steps, partial)

    def _privacy_problem(self, result: Result, client: ClientRef) -> str | None:
        """Why the result's DP-SGD facts cannot be the ones of the task it was given, or None. Epsilon is
        the accountant's business; this only keeps a claim the controller's settings rule out from reaching it."""
        dp, facts = self.plan.train.get("dp"), result.privacy
        if facts is None or dp is None:
            return None if facts is None and dp is None else (
                f"the result {'lacks' if facts is None else 'has'} a privacy block, but its task "
                f"{'asked for' if dp is not None else 'did not ask for'} DP-SGD")
        claimed = (facts.noise_multiplier, facts.l2_norm_clip, facts.num_examples)
        expected = (float(dp["noise_multiplier"]), float(dp["l2_norm_clip"]), client.num_examples or facts.num_examples)
        if claimed != expected:
            return (f"the result's privacy block claims noise {claimed[0]:g}, clip {claimed[1]:g}, "
                    f"{counted(claimed[2], 'example')}; its task set noise {expected[0]:g}, clip {expected[1]:g}, "
                    f"{counted(expected[2], 'example')}")
        return None

    async def abandon(self, calls: dict[asyncio.Future[Any], tuple[int, ClientRef, float]], *, stage: str | None = None,
                      finished: bool = False) -> None:
        """Cancel the calls (round, client, start) still running as the run is torn down (interrupted, or an error),
        each recorded as failed with cause "interrupted", or as it ends (`finished`: an asynchronous run's last version
        left them running) with cause "unfinished": its function may train and write its update all the same, so
        privacy accounting charges it, and a resume finds it in the history. `stage`: a secure round's."""
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        failure = (InvocationError("the run finished while it ran", "unfinished") if finished
                   else InvocationError("the run stopped while it ran", "interrupted"))
        for round_number, client, started in calls.values():
            self.record_failure(round_number, client, failure, started, stage=stage)

    def record_failure(self, round_number: int, client: ClientRef, error: InvocationError, started: float, *,
                       stage: str | None = None) -> None:
        """A failed invocation, or a late result "discarded"; its start is the round's, since no function reported one."""
        outcome = "discarded" if error.cause == "late" else "failed"
        answered = getattr(error, "answered_round", None)
        self.emit(InvocationFinished(
            self.run_id, round_number, client.client_id, client.provider, outcome, started, time.time(),
            error=str(error), cause=error.cause, stage=stage, answered_round=answered,
            charged=self._charged(round_number, client.client_id, outcome, error.cause, stage, answered),
            sent=self._finished(round_number, client.client_id, stage),
        ))
