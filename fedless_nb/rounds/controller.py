"""The controller of one run and its round interface: the primitives every schedule is built from.

A schedule (rounds/synchronous.py, rounds/fedbuff.py, a multi-stage round) decides which clients
train when; the controller gives it the same primitives, all public: build a client's task,
invoke it, collect and check its result, screen a round's updates, record a failure, publish a
global version, emit an event. The controller knows nothing of notebooks or terminals; observers
subscribe to its events. It never trusts a result blindly: a result must answer the task it was
given (wire.check_result) and its update must pass screening.py's checks, or it counts as failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import time
import zlib
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Sequence

import numpy as np

from .checkpoint import Checkpoint, checkpoint_key, encode_checkpoint
from .events import InvocationFinished, Observer, RoundFinished, RoundStarted, RunFinished, RunStarted, UpdateRejected
from ..model import ModelSpec
from ..privacy.accounting import PrivacyBudgetExhausted
from ..providers.base import InvocationError, Provider
from .resilience import RoundPolicy, invoke_with_retries
from ..security import ResultSignatureError, RunKey
from ..wire import ResultError, check_result, make_task, task_reads
from .selection import SelectionPolicy
from .synchronous import SynchronousRounds
from ..store import Store, decode_arrays, encode_arrays
from ..store.keys import global_weights_key, update_key
from ..strategies.base import ClientUpdate, RunContext, Strategy, Weights
from .screening import norm_outliers, update_problem


# Produces the rounds of a run: given the initial weights, yields (round number, global weights) per round.
# A schedule is built on a Controller and uses only its public round interface.
Schedule = Callable[[Weights], AsyncIterator[tuple[int, Weights]]]


@dataclass(frozen=True)
class ClientRef:
    """A client function: its id, where its data lives and which provider runs it."""

    client_id: str
    data_key: str
    provider: str


@dataclass(frozen=True)
class RoundPlan:
    """What every round shares: how many clients, which train settings, how long it may take."""

    rounds: int
    clients_per_round: int
    train: dict[str, Any]
    round_deadline: float
    seed: int = 0
    policy: RoundPolicy = RoundPolicy()


def weighted_metrics(updates: Sequence[ClientUpdate]) -> dict[str, float]:
    """Each training metric averaged over clients, weighted by their sample counts."""
    total = sum(update.num_examples for update in updates)
    names = {name for update in updates for name in update.metrics}
    return {
        name: sum(u.metrics.get(name, 0.0) * u.num_examples for u in updates) / total for name in sorted(names)
    } if total else {}


class Controller:
    """Runs the rounds of one run over the given clients and providers.

    The round interface, for schedules: `task`, `invoke`, `collect`, `screen`, `record_failure`,
    `publish` and `emit`, plus the run's `clients`, `providers`, `strategy`, `selection`, `plan`,
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
        # Each provider's functions hold its secret; tokens and result signatures use the run's key from it.
        self._keys = {name: RunKey(p.secret, run_id) for name, p in providers.items() if getattr(p, "secret", None)}
        self.plan = plan
        self._model_wire = spec.to_wire()
        self._observers: list[Observer] = []
        self._stop_requested = False
        self.resumed_round = 0  # the checkpointed round a resumed run continues after
        self.round_metrics: list[dict[str, float]] = []
        # Sources of a round's "privacy" figures (the example-level accountant); called as source(round),
        # returning the figures or an awaitable of them (work done off the event loop).
        self.privacy_sources: list[Callable[[int], Any]] = []
        # Checks of a result against the controller's own facts (e.g. the accountant's privacy facts):
        # check(client_id, result) -> why it is rejected, or None.
        self.result_checks: list[Callable[[str, dict[str, Any]], str | None]] = []
        # Observers whose state the checkpoint keeps (name -> object with state() and load_state(state)).
        self.checkpointed: dict[str, Any] = {}

    def subscribe(self, observer: Observer) -> None:
        self._observers.append(observer)

    def emit(self, event: Any) -> None:
        """Hand `event` to every observer (history, dashboard, accountant, progress)."""
        for observer in self._observers:
            observer(event)

    def request_stop(self) -> None:
        """Finish the current round, then end the run as "stopped"."""
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
                    if self._stop_requested and round_number < self.plan.rounds:
                        status = "stopped"
                        break
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
            self.emit(RunFinished(self.run_id, status, time.time(), completed, final, error))
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
            self.strategy.load_state(resume.strategy_state)
            self.round_metrics = list(resume.round_metrics)
            for name, observer in self.checkpointed.items():
                observer.load_state(resume.observer_state.get(name, {}))
        self.resumed_round = resume.round if resume else 0
        self.emit(RunStarted(
            self.run_id, self.name, self.config, self.plan.rounds, len(self.clients),
            [provider.describe() for provider in self.providers.values()], time.time(), resumed_from=self.resumed_round,
        ))
        return weights

    def task(self, round_number: int, client: ClientRef, overrides: dict[str, Any], deadline: float) -> dict[str, Any]:
        """The client's signed task for `round_number` (wire.make_task); its shuffling seed differs per
        run seed, round and client."""
        seed = zlib.crc32(f"{self.plan.seed}/{round_number}/{client.client_id}".encode())
        train = {**self.plan.train, **overrides, "seed": seed}
        weights_key = global_weights_key(self.run_id, round_number - 1)
        update = update_key(self.run_id, round_number, client.client_id)
        store = self.store.task_descriptor(task_reads(train, weights_key, client.data_key, update), [update], deadline)
        task = make_task(run_id=self.run_id, round_number=round_number, client_id=client.client_id,
                         model=self._model_wire, weights=weights_key, data=client.data_key, update=update,
                         train=train, store=store, deadline=deadline)
        key = self._keys.get(client.provider)
        if key is not None:
            task["token"] = key.issue_token(task)
        return task

    def invoke(self, round_number: int, client: ClientRef, task: dict[str, Any], started: float, *,
               retry: bool = True) -> asyncio.Future[dict[str, Any]]:
        """Start the client's invocation. With `retry`, safe failures are retried until the task's deadline
        (resilience.py), each failed attempt recorded; collect the future's outcome with `collect`."""
        invoke = self.providers[client.provider].invoke
        if not retry:
            return asyncio.ensure_future(invoke(task))
        retried = functools.partial(self.record_failure, round_number, client, started=started)
        return asyncio.ensure_future(invoke_with_retries(invoke, task, self.plan.policy, task["deadline"], retried))

    def screen(self, round_number: int, updates: Sequence[ClientUpdate], weights: Weights) -> list[ClientUpdate]:
        """The round's updates without norm outliers (screening.py); each rejection is announced."""
        outliers = norm_outliers(updates, weights, self.plan.policy.max_norm_ratio)
        for client_id, reason in outliers.items():
            self.emit(UpdateRejected(self.run_id, round_number, client_id, reason))
        return [update for update in updates if update.client_id not in outliers]

    async def publish(self, round_number: int, weights: Weights, started: float, selected: int,
                      updates: Sequence[ClientUpdate]) -> None:
        """Store global version `round_number`, evaluate it, announce the finished round, then checkpoint it."""
        await self.store.aput(global_weights_key(self.run_id, round_number), encode_arrays(weights))
        eval_metrics = self.evaluate(weights)
        self.round_metrics.append(eval_metrics)
        privacy = dict(self.strategy.round_metrics())
        for source in self.privacy_sources:
            figures = source(round_number)
            privacy.update(await figures if inspect.isawaitable(figures) else figures)
        self.emit(RoundFinished(
            self.run_id, round_number, started, time.time(), selected, len(updates),
            selected - len(updates), eval_metrics, weighted_metrics(updates), privacy,
        ))
        checkpoint = Checkpoint(round_number, self.strategy.state(), self.round_metrics,
                                {name: observer.state() for name, observer in self.checkpointed.items()})
        await self.store.aput(checkpoint_key(self.run_id), encode_checkpoint(checkpoint))

    async def collect(
        self, round_number: int, client: ClientRef, call: asyncio.Future[dict[str, Any]], weights: Weights, started: float,
        staleness: int | None = None,
    ) -> ClientUpdate | None:
        """The client's update if its finished call succeeded and the result checks out against `weights`
        (the global model it trained from); otherwise the failure is recorded and the answer is None."""
        try:
            result = call.result()
            update = await self._read_update(round_number, client, result, weights)
        except InvocationError as error:
            self.record_failure(round_number, client, error, started)
            return None
        except Exception as error:  # a function's bad reply must not end the round
            self.record_failure(round_number, client, InvocationError(f"{type(error).__name__}: {error}", "error"), started)
            return None
        timings = {k: float(v) for k, v in (result.get("timings") or {}).items()}
        finished = time.time()
        self.emit(InvocationFinished(
            self.run_id, round_number, client.client_id, client.provider, "succeeded",
            max(started, finished - timings.get("total", 0.0)), finished,
            cold=bool(result.get("cold")), num_examples=update.num_examples, metrics=update.metrics, timings=timings,
            privacy=result.get("privacy") if isinstance(result.get("privacy"), dict) else None, staleness=staleness,
        ))
        return update

    async def _read_update(self, round_number: int, client: ClientRef, result: Any, weights: Weights) -> ClientUpdate:
        expected = update_key(self.run_id, round_number, client.client_id)
        try:
            num_examples = check_result(result, {"run_id": self.run_id, "round": round_number,
                                                 "client_id": client.client_id, "update": expected})
        except ResultError as error:
            raise InvocationError(str(error), error.cause) from None
        for check in self.result_checks:
            if problem := check(client.client_id, result):
                raise InvocationError(problem, "rejected")
        data = await self.store.aget(expected)
        key = self._keys.get(client.provider)
        if key is not None:
            try:
                key.verify_result(result, data)
            except ResultSignatureError as error:
                raise InvocationError(str(error), "signature") from None
        arrays = decode_arrays(data)
        if problem := update_problem(arrays, weights):
            raise InvocationError(problem, "rejected")
        metrics = {k: float(v) for k, v in (result.get("metrics") or {}).items() if np.isscalar(v)}
        return ClientUpdate(client.client_id, arrays, num_examples, metrics)

    def record_failure(self, round_number: int, client: ClientRef, error: InvocationError, started: float) -> None:
        """A failed invocation, or a late result "discarded"; its start is the round's, since no function reported one."""
        outcome = "discarded" if error.cause == "late" else "failed"
        self.emit(InvocationFinished(
            self.run_id, round_number, client.client_id, client.provider, outcome, started, time.time(),
            error=str(error), cause=error.cause,
        ))
