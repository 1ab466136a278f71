"""Secure rounds (SecAgg+ over serverless clients): the controller learns only the sum of the updates.

Each round runs five stages, each one invocation per client still in the protocol, with the store
as the relay between them (function/secagg_stages.py says what a function does in each):
keys -> shares -> check -> masked (the clients train here) -> reveal. A client whose sealed shares a
holder reports it cannot open (check) is dropped before anyone masks with it. Then the controller sums the masked
vectors, removes the self-masks of the clients that sent one and the pairwise masks they added for
neighbours that dropped, from the secrets it reconstructs out of the revealed Shamir shares;
dequantizes; and hands the average (one update) to the strategy, or the clipped sum to central DP,
which adds its noise after unmasking. It never reads a single update: none is written in the clear.
When plan.aggregation says so (TreeOptions.in_functions, by the masked vectors' bytes), aggregator
functions read, verify and sum the masked vectors modulo 2^32 where they are stored (rounds/tree.py):
the controller then checks each masked-stage result without reading its vector, reads only the
round's masked sum, and counts a client whose vector an aggregator refused (or whose aggregator
failed) as dropped, so its neighbours reveal its mask key and its pairwise masks leave the sum. Functions that
cannot aggregate (deployed for one client each) end the run under `where: functions`; under `auto` the controller
reads the masked vectors itself, as under `where: controller`.

The keys and shares objects a client's peers read are the controller's copies of what it accepted (a
client may overwrite its own key until the stage deadline), and a secret is recovered from whichever
`threshold` of its revealed shares its commitment or public key accepts, so a client that reveals wrong
shares loses its reveal, not the round. An unmasked sum out of the range its clients' quantized values can
add up to (a client that skipped its quantization: masking hides it) fails the round rather than move the
model. A client that fails a stage drops out of the later ones. The round still completes while each
stage keeps at least `threshold` clients and every secret to reconstruct keeps `threshold` holders;
otherwise it fails with the reason in the history (RoundFailed), and the quorum rules
(resilience.py) decide whether it runs again. Built only on the controller's public round interface.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Callable

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from ..experiment import SecureAggregationConfig
from ..privacy import secagg
from ..providers.base import InvocationError
from ..reduction import MaskedSum, masked_vector_problem
from ..store import decode_arrays
from ..store.keys import secagg_key, secagg_relay_key
from ..wire import first_problem
from ..wording import counted
from ..strategies.base import ClientUpdate, Weights
from ..strategies.central_dp import CentralDP
from .completion import all_or_none, finished_by
from .events import RoundFailed, RoundStarted, UpdateRejected
from .resilience import check_quorum
from .synchronous import SynchronousRounds
from .tree import AggregatorsRefused, Arrival, TreeAggregation

if TYPE_CHECKING:
    from .controller import ClientRef, Controller

RELAYED_STAGES = ("keys", "shares")  # the stages whose objects later stages' peers read
SECURE_CLIENT_ID = "secure-aggregate"  # the one update a strategy receives from a secure round


def _base64_of(size: int) -> AfterValidator:
    """A base64 text that decodes to exactly `size` bytes."""
    def check(text: str) -> str:
        try:
            decoded = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("not base64") from None
        if len(decoded) != size:
            raise ValueError(f"{len(decoded)} bytes, not {size}")
        return text
    return AfterValidator(check)


def _agreeing(text: str) -> str:
    """A public key any peer can agree a secret with (one of low order would fail every peer that uses it)."""
    if not secagg.agrees(base64.b64decode(text)):
        raise ValueError("an X25519 public key of low order, which agrees on no secret")
    return text


_Key = Annotated[str, Field(max_length=64), _base64_of(32), AfterValidator(_agreeing)]  # an X25519 public key
_Share = Annotated[str, Field(max_length=64), _base64_of(secagg.SHARE_BYTES)]  # a Shamir share: index, two halves
_Peer = Annotated[str, Field(min_length=1, max_length=256)]


class _StageObject(BaseModel):
    """What a client of a secure round wrote in a stage other than the masked one: untrusted input, parsed
    strictly before the controller keeps it (and before any peer is granted to read it)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class _KeysObject(_StageObject):
    share_public: _Key
    mask_public: _Key
    seed_commitment: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    state: Annotated[str, Field(max_length=4096)]  # sealed for the client itself: only it can tell


class _SharesObject(_StageObject):
    # each sealed for its holder, who alone can open it: anything but base64 of a sealed pair of shares failed every
    # holder's check stage, decoding it, where a sealed share that does not open has its sender reported
    shares: dict[_Peer, Annotated[str, Field(max_length=4 * secagg.SEALED_SHARE_BYTES // 3 + 4),
                                  _base64_of(secagg.SEALED_SHARE_BYTES)]]


class _CheckObject(_StageObject):
    unopened: Annotated[list[_Peer], Field(max_length=10**6)]  # peers whose sealed share for the client does not open


class _RevealObject(_StageObject):
    seed_shares: dict[_Peer, _Share]
    key_shares: dict[_Peer, _Share]


_STAGE_OBJECTS: dict[str, type[_StageObject]] = {"keys": _KeysObject, "shares": _SharesObject, "check": _CheckObject,
                                                  "reveal": _RevealObject}


class SecureRoundFailed(Exception):
    """Too many clients dropped for this run of the round to be unmasked; the message says where."""


@dataclass
class _Attempt:
    """One run of a secure round: its clients' neighbours and what each stage left in the store."""

    round_number: int
    attempt: int
    started: float
    graph: dict[str, list[str]]
    threshold: int
    size: int  # the model's number of values: a masked vector holds one more (the clients' weight)
    objects: dict[str, dict[str, bytes]]  # stage -> client id -> the object it wrote (masked: controller sums only)
    results: dict[str, dict[str, Any]]  # the masked stage's results (example counts, metrics)
    in_functions: bool = False  # aggregator functions sum the masked vectors (rounds/tree.py)
    holders: dict[str, list[str]] = field(default_factory=dict)  # client -> who holds its shares, in their order
    masking: set[str] = field(default_factory=set)  # the clients invoked to mask: their shares all opened
    total: MaskedSum | None = None  # their sum, when they did

    def survivors(self, stage: str) -> list[str]:
        return sorted(self.results if stage == "masked" else self.objects.get(stage, {}))


class SecureAggregationRounds(SynchronousRounds):
    """Schedule for Controller.run: `plan.rounds` secure rounds (see the module docstring), one after the
    other as synchronous rounds are; only a round itself differs."""

    def __init__(self, controller: Controller, options: SecureAggregationConfig) -> None:
        super().__init__(controller)
        self.options = options
        self.params = secagg.QuantizationParams(options.clipping_range, options.quantization_range)
        self.central = controller.strategy if isinstance(controller.strategy, CentralDP) else None

    async def round(self, round_number: int, weights: Weights) -> Weights:
        """One secure round, run again while it fails or is below its quorum and repeats are left."""
        controller, runs = self.controller, 0
        while True:
            runs += 1
            started = time.time()
            selected = controller.selection.select(round_number, list(controller.clients), controller.plan.clients_per_round)
            controller.emit(RoundStarted(controller.run_id, round_number, selected, started))
            new_weights, contributions = weights, []
            try:
                new_weights, contributions = await self.secure_round(round_number, runs, selected, weights, started)
            except SecureRoundFailed as failure:
                controller.emit(RoundFailed(controller.run_id, round_number, time.time(), str(failure)))
            if check_quorum(round_number, len(contributions), len(selected), controller.plan.policy, runs):
                break
        await controller.publish(round_number, new_weights, started, len(selected), contributions)
        return new_weights

    async def secure_round(self, round_number: int, attempt_number: int, selected: list[str], weights: Weights,
                           started: float) -> tuple[Weights, list[ClientUpdate]]:
        """The five stages and the unmasking; the new global model and, per client whose masked update
        is in it, its example count and training metrics (no weights).

        The invariant that keeps every update hidden: for no client does the controller obtain both the shares of its
        self-mask seed and its pairwise-mask secret. A client whose masked vector is in the sum has only its seed
        revealed (and only its pairwise seeds with dropped peers removed); one that dropped after the check stage has
        only its mask key revealed; one dropped before (its shares do not open) has neither. Nothing is revealed
        unless at least secagg.MIN_CLIENTS masked vectors are in the sum, whatever the threshold. Each reveal task names
        the dropped peers, and a reveal with a share of the other secret is rejected (_accepted). A round drawn with
        fewer than secagg.MIN_CLIENTS clients (a privacy budget left only these) invokes none: their sum would
        tell each of them the others' updates, or the controller the one's."""
        if len(selected) < secagg.MIN_CLIENTS:
            raise SecureRoundFailed(f"secure aggregation: the round drew {counted(len(selected), 'client')}, fewer than the "
                                    f"{secagg.MIN_CLIENTS} it needs to hide each update; no client was invoked")
        degree = self.options.neighbours
        graph = secagg.neighbours(selected, degree, seed=self.controller.plan.seed * 100_003 + round_number)
        holders = len(graph[selected[0]]) + 1
        threshold = self.options.threshold or secagg.majority(holders)
        size = sum(layer.size for layer in weights)
        in_functions = self.controller.plan.aggregation.in_functions(self.controller.strategy, len(selected),
                                                                     4 * (1 + size))
        attempt = _Attempt(round_number, attempt_number, started, graph, threshold, size, {}, {}, in_functions)
        overrides = self.controller.strategy.configure_round(round_number, selected)

        await self._stage(attempt, "keys", {client: {"peers": []} for client in selected}, overrides)
        advertised = set(attempt.survivors("keys"))
        sharing = {client: sorted(set(graph[client]) & advertised) for client in advertised}
        attempt.holders = {client: sorted({client, *peers}) for client, peers in sharing.items()}
        await self._stage(attempt, "shares", {c: {"peers": peers} for c, peers in sharing.items()
                                              if len(peers) + 1 >= threshold}, overrides)
        shared = set(attempt.survivors("shares"))
        await self._stage(attempt, "check", {c: {"peers": sorted(set(graph[c]) & shared)} for c in shared}, overrides)
        masking = attempt.masking = self._drop_unopened(attempt)
        _check_hidden(len(masking), len(selected), "are left to mask their update")
        await self._stage(attempt, "masked", {c: {"peers": sorted(set(graph[c]) & masking)} for c in masking}, overrides)
        if attempt.in_functions:
            await self._sum_in_functions(attempt)
        masked = set(attempt.survivors("masked"))
        _check_hidden(len(masked), len(masking), "sent a masked vector")
        await self._stage(attempt, "reveal", {c: {"peers": sorted(set(graph[c]) & masking),
                                                  "dropped": sorted(set(graph[c]) & (masking - masked))}
                                              for c in masked}, overrides)
        total = self._unmask(attempt)
        if problem := secagg.sum_range_problem(total, self.params, len(masked)):
            raise SecureRoundFailed(f"secure aggregation: {problem}; the round's sum is refused")
        vector = secagg.dequantize_sum(total, self.params, len(masked))
        contributions = [ClientUpdate(client, [], int(attempt.results[client]["num_examples"]),
                                      _numbers(attempt.results[client].get("metrics")))
                         for client in sorted(masked)]
        return self._aggregate(round_number, weights, vector, contributions), contributions

    def _settings(self, attempt: _Attempt, stage: str, peers: dict[str, Any]) -> dict[str, Any]:
        options = self.options
        return {"stage": stage, "attempt": attempt.attempt, "threshold": attempt.threshold, **peers,
                "clipping_range": options.clipping_range, "quantization_range": options.quantization_range,
                # central DP clips every client to its clip norm and weighs them equally
                "max_weight": 0.0 if self.central else options.max_weight,
                "clip_norm": self.central.clip_norm if self.central else options.clip_norm}

    def _reads(self, attempt: _Attempt, stage: str, client: str, peers: list[str]) -> list[str]:
        """The objects of earlier stages a client's stage reads, as the controller relayed them: its own and its peers'
        keys, and the shares sealed for it."""
        key = self.controller.run_id, attempt.round_number
        earlier = {"keys": (), "shares": ("keys",), "check": ("keys", "shares"), "masked": ("keys",),
                   "reveal": ("keys", "shares")}[stage]
        return [secagg_relay_key(*key, owner, kind, attempt.attempt) for owner in sorted({client, *peers})
                for kind in earlier]

    async def _stage(self, attempt: _Attempt, stage: str, clients: dict[str, dict[str, Any]],
                     overrides: dict[str, dict[str, Any]]) -> None:
        """Invoke `stage` on `clients` (client id -> its peers) and keep what each successful one wrote;
        SecureRoundFailed when fewer than the threshold are left."""
        controller = self.controller
        deadline = time.time() + controller.plan.round_deadline  # the round deadline applies to each stage
        calls: dict[asyncio.Future[dict[str, Any]], tuple[ClientRef, str]] = {}
        for client_id, peers in clients.items():
            client = controller.clients[client_id]
            key = secagg_key(controller.run_id, attempt.round_number, client_id, stage, attempt.attempt)
            train = {**overrides.get(client_id, {}), "secagg": self._settings(attempt, stage, peers)}
            task = controller.task(attempt.round_number, client, train, deadline, update=key,
                                   reads=self._reads(attempt, stage, client_id, peers["peers"]))
            calls[controller.invoke(attempt.round_number, client, task, attempt.started, stage=stage)] = (client, key)
        summing = stage == "masked" and attempt.in_functions  # aggregator functions read the masked vectors
        kept: dict[str, bytes] = {}
        pending = set(calls)
        try:
            async for call in finished_by(calls, deadline):
                pending.discard(call)
                client, key = calls[call]
                if summing:
                    reply = await controller.receive_result(attempt.round_number, client, call, attempt.started, key,
                                                            stage=stage)
                    attempt.results.update({client.client_id: reply} if reply is not None else {})
                    continue
                received = await controller.receive(attempt.round_number, client, call, attempt.started, key, stage=stage)
                if received is not None and self._accepted(attempt, stage, client.client_id, clients[client.client_id],
                                                           *received):
                    kept[client.client_id] = received[1]
                    if stage in RELAYED_STAGES:  # the bytes checked, out of reach of their writer's grant
                        relayed = secagg_relay_key(controller.run_id, attempt.round_number, client.client_id, stage,
                                                   attempt.attempt)
                        await controller.store.aput(relayed, received[1])
        except BaseException:  # the run is being torn down: the calls still running are recorded (a masked one charged)
            await controller.abandon({call: (attempt.round_number, calls[call][0], attempt.started) for call in pending},
                                     stage=stage)
            pending.clear()
            raise
        finally:  # no call outlives its stage
            for call in pending:
                call.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for call in pending:
            missed = InvocationError(f"missed the stage deadline of {controller.plan.round_deadline:g}s", "deadline")
            controller.record_failure(attempt.round_number, calls[call][0], missed, attempt.started, stage=stage)
        attempt.objects[stage] = kept
        _check_threshold(attempt, len(attempt.survivors(stage)), len(clients), f"finished the {stage} stage")

    async def _sum_in_functions(self, attempt: _Attempt) -> None:
        """The masked vectors summed by aggregator functions (rounds/tree.py); a client whose vector is not in
        the sum (refused, or its aggregator failed) leaves the round's survivors of the masked stage. Functions that
        cannot aggregate (deployed for one client each) end the run under `where: functions`; under `auto` the
        controller reads the masked vectors (`_read_masked`): still masked, so it learns only their sum."""
        controller, sent = self.controller, len(attempt.results)
        arrivals = [Arrival(controller.clients[client], ClientUpdate(client, [], int(reply["num_examples"])), reply)
                    for client, reply in sorted(attempt.results.items())]
        tree = TreeAggregation(controller, controller.plan.aggregation, attempt.attempt, refusal_ends_tree=True)
        deadline = time.time() + controller.plan.round_deadline
        try:
            attempt.total, summed = await tree.masked_sum(attempt.round_number, arrivals, 1 + attempt.size, deadline)
        except AggregatorsRefused as refused:
            refused.fall_back(controller)
            await self._read_masked(attempt)
            _check_threshold(attempt, len(attempt.results), sent, "sent a masked vector the controller accepted")
            return
        attempt.results = {client: reply for client, reply in attempt.results.items() if client in summed}
        if attempt.total.count != len(attempt.results):
            raise RuntimeError(f"the aggregators' masked sum counts {attempt.total.count} vectors, "
                               f"their results {len(attempt.results)}")
        _check_threshold(attempt, len(attempt.results), sent, "sent a masked vector the aggregators accepted")

    async def _read_masked(self, attempt: _Attempt) -> None:
        """The masked vectors of the masked stage's results read and checked by the controller, as a round it sums
        itself reads them (`_stage`), all at once; a client whose vector fails leaves the stage's survivors, announced."""
        controller = self.controller

        async def read(client_id: str, reply: dict[str, Any]) -> bytes | None:
            key = secagg_key(controller.run_id, attempt.round_number, client_id, "masked", attempt.attempt)
            return await controller.read_received(attempt.round_number, controller.clients[client_id], reply, key,
                                                  lambda data: _masked_vector(data, attempt.size), stage="masked")

        clients = sorted(attempt.results)  # read concurrently: a remote store bounds its own connections
        vectors = await all_or_none(read(client_id, attempt.results[client_id]) for client_id in clients)
        kept = {client_id: data for client_id, data in zip(clients, vectors) if data is not None}
        attempt.objects["masked"] = kept
        attempt.results = {client: reply for client, reply in attempt.results.items() if client in kept}

    def _accepted(self, attempt: _Attempt, stage: str, client_id: str, peers: dict[str, Any], result: dict[str, Any],
                  data: bytes) -> bool:
        """Whether a stage's object has the form the controller and the client's peers need (a masked vector of
        the model's size, or the stage's JSON object: its keys, a share sealed for each of its holders, shares
        revealed of its peers and itself only); a malformed one is rejected like a bad update."""
        try:
            if stage == "masked":
                _masked_vector(data, attempt.size)
                attempt.results[client_id] = result
            else:
                parsed = _STAGE_OBJECTS[stage].model_validate_json(data)
                holders = {client_id, *peers.get("peers", [])}
                if isinstance(parsed, _SharesObject) and set(parsed.shares) != holders:
                    raise ValueError("shares for other clients than its peers and itself")
                if isinstance(parsed, _CheckObject) and not set(parsed.unopened) <= holders - {client_id}:
                    raise ValueError("a report of other clients than its peers")
                dropped = set(peers.get("dropped", []))
                if isinstance(parsed, _RevealObject) and not (set(parsed.seed_shares) <= holders - dropped
                                                              and set(parsed.key_shares) <= dropped):
                    raise ValueError("shares of other clients than its peers and itself, or of the wrong secret")
        except ValidationError as error:
            self._rejected(attempt, stage, client_id, first_problem(error))
            return False
        except ValueError as error:
            self._rejected(attempt, stage, client_id, str(error))
            return False
        return True

    def _drop_unopened(self, attempt: _Attempt) -> set[str]:
        """The clients that finished the check stage, less those whose sealed shares a holder reported it cannot open.
        As Bonawitz et al.'s U2 holds only clients whose shares reached their holders, those are dropped before the
        masked stage: no one masks with them, so none of their secrets is ever needed, and their shares stage is
        recorded as rejected. The controller cannot tell a holder that lies from a sender that sealed garbage (it
        would need a private key to check), so a compromised holder can have an honest peer dropped, by name."""
        reports = {holder: _CheckObject.model_validate_json(data).unopened
                   for holder, data in attempt.objects["check"].items()}
        accusers: dict[str, list[str]] = {}
        for holder, unopened in sorted(reports.items()):
            for sender in unopened:
                accusers.setdefault(sender, []).append(holder)
        for sender, holders in sorted(accusers.items()):
            self.controller.emit(UpdateRejected(
                self.controller.run_id, attempt.round_number, sender,
                f"its sealed shares for {', '.join(holders)} do not open (they reported it); "
                "dropped before the masked stage", stage="shares"))
        masking = set(reports) - set(accusers)
        _check_threshold(attempt, len(masking), len(reports), "sealed shares that all their holders could open")
        return masking

    def _rejected(self, attempt: _Attempt, stage: str, client_id: str, problem: str) -> None:
        self.controller.emit(UpdateRejected(self.controller.run_id, attempt.round_number, client_id,
                                            f"the {stage} stage wrote a malformed object ({problem})", stage=stage))

    def _unmask(self, attempt: _Attempt) -> np.ndarray:
        """The sum of the surviving clients' quantized updates (SecureRoundFailed if a secret cannot be recovered):
        the aggregators' masked sum, or the controller's own of the masked vectors, less the masks."""
        keys = {client: json.loads(data) for client, data in attempt.objects["keys"].items()}
        reveals = {client: json.loads(data) for client, data in attempt.objects["reveal"].items()}
        masked, masking = set(attempt.survivors("masked")), attempt.masking
        refused: set[str] = set()

        def recover(owner: str, kind: str, is_secret: Callable[[bytes], bool]) -> bytes:
            shares = {holder: _unb64(reveal[kind][owner]) for holder, reveal in reveals.items() if owner in reveal[kind]}
            try:
                indices = {holder: index for index, holder in enumerate(attempt.holders[owner], start=1)}
                secret, liars = secagg.recover_checked(shares, attempt.threshold, is_secret, indices)
            except secagg.SecAggError as error:  # too few shares, or too many holders revealed a bad one
                raise SecureRoundFailed(f"secure aggregation: the masks of {owner} cannot be removed: {error}") from None
            for liar in sorted(set(liars) - refused):  # its reveal is refused; its own masked vector stays in the sum
                refused.add(liar)
                self._rejected(attempt, "reveal", liar, f"a share of {owner}'s secret that does not recover it")
            return secret

        seeds = [recover(client, "seed_shares", lambda seed, client=client:
                         secagg.commitment(seed) == keys[client]["seed_commitment"]) for client in sorted(masked)]
        pairs = []
        for gone in sorted(masking - masked):
            public = _unb64(keys[gone]["mask_public"])
            private = recover(gone, "key_shares", lambda private, public=public: _is_private_key(private, public))
            pairs += [(peer, gone, secagg.pairwise_seed(private, _unb64(keys[peer]["mask_public"])))
                      for peer in attempt.graph[gone] if peer in masked]
        if attempt.total is not None:
            return secagg.remove_masks(attempt.total.total, seeds, pairs)
        vectors = [decode_arrays(attempt.objects["masked"][client])[0] for client in sorted(masked)]
        return secagg.remove_masks(np.sum(vectors, axis=0, dtype=np.uint32), seeds, pairs)

    def _aggregate(self, round_number: int, weights: Weights, vector: np.ndarray,
                   contributions: list[ClientUpdate]) -> Weights:
        """The strategy's next model from the unmasked [sum of client weights, sum of weighted updates]."""
        layers, offset = [], 1
        for layer in weights:
            layers.append(vector[offset:offset + layer.size].reshape(layer.shape))
            offset += layer.size
        if self.central is not None:
            return self.central.aggregate_sum(round_number, weights, layers)
        if vector[0] <= 0:
            raise SecureRoundFailed("secure aggregation: the clients' weights sum to zero")
        model = [(w + layer / vector[0]).astype(w.dtype) for w, layer in zip(weights, layers)]
        examples = sum(c.num_examples for c in contributions)
        return self.controller.strategy.aggregate(round_number, weights, [ClientUpdate(SECURE_CLIENT_ID, model, examples)])


def _check_threshold(attempt: _Attempt, kept: int, of: int, what: str) -> None:
    """SecureRoundFailed when fewer than the threshold of `of` clients `what`."""
    if kept < attempt.threshold:
        raise SecureRoundFailed(f"secure aggregation: {kept} of {of} clients {what}, fewer than the threshold "
                                f"{attempt.threshold}; the round cannot be unmasked")


def _check_hidden(kept: int, of: int, what: str) -> None:
    """SecureRoundFailed when fewer than secagg.MIN_CLIENTS of `of` clients `what`: whatever the threshold, the sum
    of two, published as the new model, tells each of them the other's update (and that of one, anyone its update)."""
    if kept < secagg.MIN_CLIENTS:
        raise SecureRoundFailed(f"secure aggregation: {kept} of {of} clients {what}, fewer than the {secagg.MIN_CLIENTS} "
                                "a sum needs to hide each update; no secret was revealed")


def _masked_vector(data: bytes, size: int) -> bytes:
    """`data`, if it is one masked vector of a model of `size` values (and the weight); ValueError naming why not."""
    if problem := masked_vector_problem(decode_arrays(data), 1 + size):
        raise ValueError(problem)
    return data


def _numbers(metrics: Any) -> dict[str, float]:
    """The numeric metrics of a result (it is untrusted input)."""
    if not isinstance(metrics, dict):
        return {}
    return {str(k): float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _is_private_key(private: bytes, public: bytes) -> bool:
    """Whether `private` is the X25519 private key of `public` (a wrong share recovers other bytes)."""
    try:
        return secagg.public_key(private) == public
    except ValueError:
        return False


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)
