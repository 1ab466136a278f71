"""SCAFFOLD (Karimireddy et al. 2020): control variates correct the client drift of non-IID data.

The server keeps its control variate c in memory (and in `state()`), every client's c_i in the
store under the round that wrote it (`state()` keeps which round that is: a run that died after a round's
aggregation but before its checkpoint resumes with the c_i that its checkpointed c goes with; a c_i kept
under one fixed key was already the next round's). Before a round it writes each selected client's correction c - c_i to the store; the
client adds it to every gradient (fedless_nb/function/handler.py). After the round the server derives
each c_i+ with option II from what it already knows (start and returned model, the client's
local step count and learning rate), so clients never need write access beyond their update.

A checkpoint written before c_i were stored per round has no "written" in its state; its c_i are under one fixed
key per client (store/keys.py's legacy_control_variate_key), which a resumed run reads until it replaces them
(its own checkpoints say so, for the clients it has not selected yet).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..store import decode_arrays, encode_arrays
from ..store.keys import control_variate_key, correction_key, legacy_control_variate_key
from .aggregate import add_scaled, fedavg, scaffold_controls, subtract
from .base import ClientUpdate, RunContext, Strategy, Weights
from .options import require


class Scaffold(Strategy):
    """`server_learning_rate`: eta_g of the paper (1.0: the new model is the sample-weighted average)."""

    name = "scaffold"

    def __init__(self, server_learning_rate: float = 1.0) -> None:
        require(server_learning_rate > 0, "server_learning_rate", f"must be > 0, got {server_learning_rate}")
        self.server_learning_rate = float(server_learning_rate)
        self.context: RunContext | None = None
        self.control: Weights | None = None
        self.written: dict[str, int] = {}  # client -> the round whose aggregation wrote its c_i
        self.superseded: list[tuple[int, str]] = []  # (round that replaced it, key) of c_i no checkpoint needs soon
        self.legacy = False  # resumed from a checkpoint whose c_i are under legacy_control_variate_key

    def bind(self, context: RunContext) -> None:
        self.context = context

    def initialize(self, weights: Weights) -> Weights:
        # c in float64 whatever the layers' dtypes: in float16 a c of (x - y_i) / (K eta_l) overflowed to inf (then
        # nan corrections), and an integer layer's was rounded
        self.control = [np.zeros(np.shape(w), np.float64) for w in weights]
        return weights

    def _client_control(self, client_id: str) -> Weights:
        """c_i in float64, as c: one written before c_i were stored in float64 is widened."""
        context = self._bound()
        if client_id in self.written:
            stored = context.store.get(control_variate_key(context.run_id, self.written[client_id], client_id))
        elif self.legacy and context.store.exists(legacy := legacy_control_variate_key(context.run_id, client_id)):
            stored = context.store.get(legacy)
        else:
            return [np.zeros_like(c) for c in self.control or []]
        return [np.asarray(c, np.float64) for c in decode_arrays(stored)]

    def _store_client_control(self, round_number: int, client_id: str, control: Weights) -> None:
        """Write c_i under this round, in float64 as c (only the controller reads it; in float32 each round's
        rounding drifted c away from the mean of the c_i it sums); the c_i it replaces is deleted a round later,
        once this round's checkpoint (which points past it) is written."""
        context = self._bound()
        if client_id in self.written and self.written[client_id] != round_number:
            self.superseded.append((round_number, control_variate_key(context.run_id, self.written[client_id], client_id)))
        elif client_id not in self.written and self.legacy:
            self.superseded.append((round_number, legacy_control_variate_key(context.run_id, client_id)))
        context.store.put(control_variate_key(context.run_id, round_number, client_id),
                          encode_arrays([np.asarray(c, np.float64) for c in control]))
        self.written[client_id] = round_number

    def _bound(self) -> RunContext:
        if self.context is None:
            raise RuntimeError("SCAFFOLD keeps its control variates in the run's store: call bind() before round 1")
        return self.context

    def configure_round(self, round_number: int, client_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        context, overrides = self._bound(), {}
        for client_id in client_ids:
            key = correction_key(context.run_id, round_number, client_id)
            correction = subtract(self.control or [], self._client_control(client_id))
            # the correction travels in float32: the function adds it to float32 gradients (handler.py casts it to
            # each variable's dtype), so float64 would double what it reads for nothing
            context.store.put(key, encode_arrays([c.astype(np.float32) for c in correction]))
            overrides[client_id] = {"correction": key}
        return overrides

    def aggregate(self, round_number: int, current: Weights, updates: Sequence[ClientUpdate]) -> Weights:
        context, control = self._bound(), self.control or []
        for key in [key for replaced, key in self.superseded if replaced < round_number]:
            context.store.delete(key)
        self.superseded = [(replaced, key) for replaced, key in self.superseded if replaced >= round_number]
        deltas = []
        for update in updates:
            old = self._client_control(update.client_id)
            new = scaffold_controls(old, control, current, update.weights, update.steps_taken(context.train),
                                    float(context.train["learning_rate"]))
            self._store_client_control(round_number, update.client_id, new)
            deltas.append(subtract(new, old))
        average = fedavg([u.weights for u in updates], [u.num_examples for u in updates])
        self.control = add_scaled(control, fedavg(deltas, [1.0] * len(deltas)), len(updates) / context.clients)
        return add_scaled(current, subtract(average, current), self.server_learning_rate)

    def state(self) -> dict[str, Any]:
        return {"control": self.control, "written": dict(self.written), "superseded": [list(s) for s in self.superseded],
                "legacy": self.legacy}

    def load_state(self, state: dict[str, Any]) -> None:
        control = state.get("control")
        self.control = None if control is None else [np.asarray(c, np.float64) for c in control]  # float32 before
        self.written = {c: int(r) for c, r in state.get("written", {}).items()}
        self.legacy = bool(state.get("legacy", "written" not in state))  # later checkpoints keep saying so
        self.superseded = [(int(replaced), str(key)) for replaced, key in state.get("superseded", [])]
