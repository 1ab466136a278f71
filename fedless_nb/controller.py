"""The round loop: select clients, invoke their functions concurrently, aggregate, evaluate, announce.

The controller knows nothing of notebooks or terminals; observers subscribe to its events.
It never trusts a result blindly: a result must answer the task it was given (run, round,
client, update key) and its update must pass validation.py's checks, or it counts as failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import zlib
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Sequence

import numpy as np

from .checkpoint import Checkpoint, checkpoint_key, encode_checkpoint
from .events import InvocationFinished, Observer, RoundFinished, RoundStarted, RunFinished, RunStarted, UpdateRejected
from .model import ModelSpec
from .privacy import PrivacyBudgetExhausted
from .providers.base import InvocationError, Provider
from .resilience import RoundPolicy, check_quorum, invoke_with_retries
from .security import ResultSignatureError, RunKey
from .selection import SelectionPolicy
from .store import Store, decode_arrays, encode_arrays
from .store.keys import global_weights_key, update_key
from .strategies.base import ClientUpdate, RunContext, Strategy, Weights
from .validation import norm_outliers, update_problem


# Produces the rounds of a run: given the initial weights, yields (round number, global weights) per round.
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
    """Runs the rounds of one run over the given clients and providers."""

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
        self._resumed_round = 0  # the checkpointed round a resumed run continues after
        self.round_metrics: list[dict[str, float]] = []
        # Sources of a round's "privacy" figures (the example-level accountant); called as source(round).
        self.privacy_sources: list[Callable[[int], dict[str, float]]] = []

    def subscribe(self, observer: Observer) -> None:
        self._observers.append(observer)

    def _emit(self, event: Any) -> None:
        for observer in self._observers:
            observer(event)

    def request_stop(self) -> None:
        """Finish the current round, then end the run as "stopped"."""
        self._stop_requested = True

    async def run(self, weights: Weights, schedule: Schedule | None = None, resume: Checkpoint | None = None) -> Weights:
        """All rounds from `weights`; returns the final global model.

        `schedule` produces the rounds (default: synchronous rounds; fedless_nb.async_rounds has FedBuff).
        With `resume` (the run's last checkpoint, `weights` its global model), the rounds after the checkpoint's.
        """
        weights = await self._start(weights, resume)
        status, error, completed = "finished", None, self._resumed_round
        try:
            async with contextlib.aclosing((schedule or self._sync_rounds)(weights)) as rounds:
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
            self._emit(RunFinished(self.run_id, status, time.time(), completed, final, error))
        return weights

    async def _sync_rounds(self, weights: Weights) -> AsyncIterator[tuple[int, Weights]]:
        for round_number in range(self._resumed_round + 1, self.plan.rounds + 1):
            weights = await self._round(round_number, weights)
            yield round_number, weights

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
        self._resumed_round = resume.round if resume else 0
        self._emit(RunStarted(
            self.run_id, self.name, self.config, self.plan.rounds, len(self.clients),
            [provider.describe() for provider in self.providers.values()], time.time(), resumed_from=self._resumed_round,
        ))
        return weights

    def _task(self, round_number: int, client: ClientRef, overrides: dict[str, Any], deadline: float) -> dict[str, Any]:
        """The task of DESIGN.md's contract; its shuffling seed differs per run seed, round and client."""
        seed = zlib.crc32(f"{self.plan.seed}/{round_number}/{client.client_id}".encode())
        train = {**self.plan.train, **overrides, "seed": seed}
        weights_key = global_weights_key(self.run_id, round_number - 1)
        update = update_key(self.run_id, round_number, client.client_id)
        task = {
            "run_id": self.run_id,
            "round": round_number,
            "client_id": client.client_id,
            "model": self._model_wire,
            "weights": weights_key,
            "data": client.data_key,
            "update": update,
            "train": train,
            # The function may read its own update key: it refuses a task whose update already exists (a replay).
            "store": self.store.task_descriptor(
                [weights_key, client.data_key, update, *([train["correction"]] if train.get("correction") else [])],
                [update], deadline),
            "token": None,
            "deadline": deadline,
        }
        key = self._keys.get(client.provider)
        if key is not None:
            task["token"] = key.issue_token(task)
        return task

    async def _round(self, round_number: int, weights: Weights) -> Weights:
        """One round, run again while it is below its quorum and repeats are left (see resilience.py)."""
        runs = 0
        while True:
            runs += 1
            started, selected, updates = await self._invoke_round(round_number, weights)
            if check_quorum(round_number, len(updates), len(selected), self.plan.policy, runs):
                break
        if updates:
            weights = self.strategy.aggregate(round_number, weights, updates)
        await self._publish(round_number, weights, started, len(selected), updates)
        return weights

    async def _invoke_round(self, round_number: int, weights: Weights) -> tuple[float, list[str], list[ClientUpdate]]:
        """Invoke the round's clients (retrying where safe) until they answer or the deadline passes."""
        started = time.time()
        selected = self.selection.select(round_number, list(self.clients), self.plan.clients_per_round)
        overrides = self.strategy.configure_round(round_number, selected)
        self._emit(RoundStarted(self.run_id, round_number, selected, started))
        deadline = started + self.plan.round_deadline
        calls: dict[asyncio.Future[dict[str, Any]], ClientRef] = {}
        for client_id in selected:
            client = self.clients[client_id]
            task = self._task(round_number, client, overrides.get(client_id, {}), deadline)
            retried = functools.partial(self._record_failure, round_number, client, started=started)
            call = invoke_with_retries(self.providers[client.provider].invoke, task, self.plan.policy, deadline, retried)
            calls[asyncio.ensure_future(call)] = client

        updates: list[ClientUpdate] = []
        pending = set(calls)
        try:
            while pending and (remaining := deadline - time.time()) > 0:
                done, pending = await asyncio.wait(pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                for call in done:
                    update = await self._collect(round_number, calls[call], call, weights, started)
                    if update is not None:
                        updates.append(update)
        finally:  # the deadline passed, or the run is being torn down: no call outlives its round
            for call in pending:
                call.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for call in pending:
            missed = InvocationError(f"missed the round deadline of {self.plan.round_deadline:g}s", "deadline")
            self._record_failure(round_number, calls[call], missed, started)
        outliers = norm_outliers(updates, weights, self.plan.policy.max_norm_ratio)
        for client_id, reason in outliers.items():
            self._emit(UpdateRejected(self.run_id, round_number, client_id, reason))
        return started, selected, [update for update in updates if update.client_id not in outliers]

    async def _publish(self, round_number: int, weights: Weights, started: float, selected: int,
                       updates: Sequence[ClientUpdate]) -> None:
        """Store the new global model, evaluate it, announce the finished round, then checkpoint it."""
        await self.store.aput(global_weights_key(self.run_id, round_number), encode_arrays(weights))
        eval_metrics = self.evaluate(weights)
        self.round_metrics.append(eval_metrics)
        privacy = dict(self.strategy.round_metrics())
        for source in self.privacy_sources:
            privacy.update(source(round_number))
        self._emit(RoundFinished(
            self.run_id, round_number, started, time.time(), selected, len(updates),
            selected - len(updates), eval_metrics, weighted_metrics(updates), privacy,
        ))
        checkpoint = Checkpoint(round_number, self.strategy.state(), self.round_metrics)
        await self.store.aput(checkpoint_key(self.run_id), encode_checkpoint(checkpoint))

    async def _collect(
        self, round_number: int, client: ClientRef, call: asyncio.Future[dict[str, Any]], weights: Weights, started: float,
        staleness: int | None = None,
    ) -> ClientUpdate | None:
        """The client's update if its call succeeded and the result checks out; else record why not."""
        try:
            result = call.result()
            update = await self._read_update(round_number, client, result, weights)
        except InvocationError as error:
            self._record_failure(round_number, client, error, started)
            return None
        except Exception as error:  # a function's bad reply must not end the round
            self._record_failure(round_number, client, InvocationError(f"{type(error).__name__}: {error}", "error"), started)
            return None
        timings = {k: float(v) for k, v in (result.get("timings") or {}).items()}
        finished = time.time()
        self._emit(InvocationFinished(
            self.run_id, round_number, client.client_id, client.provider, "succeeded",
            max(started, finished - timings.get("total", 0.0)), finished,
            cold=bool(result.get("cold")), num_examples=update.num_examples, metrics=update.metrics, timings=timings,
            privacy=result.get("privacy") if isinstance(result.get("privacy"), dict) else None, staleness=staleness,
        ))
        return update

    async def _read_update(self, round_number: int, client: ClientRef, result: Any, weights: Weights) -> ClientUpdate:
        expected = update_key(self.run_id, round_number, client.client_id)
        if not isinstance(result, dict):
            raise InvocationError(f"the function returned {type(result).__name__}, not a result object", "invalid")
        answered = (result.get("run_id"), result.get("round"), result.get("client_id"), result.get("update"))
        late = answered[0] == self.run_id and isinstance(answered[1], int) and answered[1] < round_number
        if late:  # an earlier round's result, delivered late: never mixed into this round
            raise InvocationError(f"a late result of round {answered[1]} arrived in round {round_number}", "late")
        if answered != (self.run_id, round_number, client.client_id, expected):
            raise InvocationError(f"the result answers another task: {answered}", "invalid")
        num_examples = result.get("num_examples")
        if not isinstance(num_examples, int) or num_examples <= 0:
            raise InvocationError(f"the result has an invalid num_examples {num_examples!r}", "invalid")
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

    def _record_failure(self, round_number: int, client: ClientRef, error: InvocationError, started: float) -> None:
        """A failed invocation, or a late result "discarded"; its start is the round's, since no function reported one."""
        outcome = "discarded" if error.cause == "late" else "failed"
        self._emit(InvocationFinished(
            self.run_id, round_number, client.client_id, client.provider, outcome, started, time.time(),
            error=str(error), cause=error.cause,
        ))
