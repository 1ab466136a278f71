"""The function side of a secure round (SecAgg+): what one invocation does in each stage.

A function is stateless and cannot talk to its peers, so every stage is an invocation and the store
is the relay: a stage reads what its peers wrote in the stage before (through the task's store
descriptor: local paths or presigned URLs) and writes one object, its task's update key. What a
client must remember between stages (its private keys, its self-mask seed, its example count) is
sealed with AES-GCM under a key derived for this client from the function's state secret, which the controller
never holds (fedless_nb/state_secret.py), inside the public object it writes in the first stage.

Stages (train.secagg.stage), after Bell et al. 2020:
  keys     two X25519 key pairs (one to encrypt shares, one to agree masks) and a self-mask seed;
           publishes the public keys and a commitment to the seed
  shares   Shamir-shares the seed and the mask private key among its peers and itself, each share
           sealed for its holder under the key they agree on
  check    opens the shares its peers sealed for it and reports the peers whose share does not open (or
           does not hold two shares): the controller drops those before anyone masks with them
  masked   trains, quantizes its update and adds the pairwise masks and its self-mask: only the
           masked vector is written
  reveal   opens the shares its peers sealed for it and reveals, per peer, the seed share of one that
           sent a masked vector or the key share of one that dropped (never both)
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any, Callable

import numpy as np

from ..privacy import secagg
from ..security import RunKey
from ..state_secret import STATE_SECRET_VARIABLE, sealing_key
from ..store import encode_arrays
from ..store.keys import secagg_key, secagg_relay_key
from ..wire import SECAGG_STAGES, PayloadError

MASKED_STAGE = "masked"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def stage_of(task: dict[str, Any]) -> str | None:
    """The secure-round stage a task asks for, or None for plain training."""
    settings = task["train"].get("secagg")
    if settings is None:
        return None
    if not isinstance(settings, dict) or settings.get("stage") not in SECAGG_STAGES:
        raise PayloadError(f"the task's train.secagg must name a stage ({', '.join(SECAGG_STAGES)})")
    return settings["stage"]


class _Round:
    """One client's view of one secure round: its settings and how to reach its and its peers' objects."""

    def __init__(self, task: dict[str, Any], store: Any, key: RunKey | None, state_secret: str | None) -> None:
        if key is None:
            raise PayloadError("secure aggregation needs a function deployed with a run secret "
                               "(it signs the client's stage objects)")
        if not state_secret:
            raise PayloadError(f"secure aggregation needs this function deployed with {STATE_SECRET_VARIABLE}, a secret "
                               "of its own that the controller never holds (it seals the client's private keys between "
                               "stages): deploy it again with the command `fedless-nb package` prints")
        self.task, self.store, self.settings = task, store, task["train"]["secagg"]
        self.client = str(task["client_id"])
        self.peers = [str(peer) for peer in self.settings.get("peers", [])]
        if self.client in self.peers:
            raise PayloadError("a client is not its own peer")
        self.threshold = int(self.settings["threshold"])
        self._secret = sealing_key(state_secret, key, self.client, "secagg state")

    def key(self, client: str, stage: str) -> str:
        return secagg_key(self.task["run_id"], self.task["round"], client, stage, int(self.settings["attempt"]))

    def read(self, client: str, stage: str) -> dict[str, Any]:
        """A stage object as the controller accepted it (its relayed copy, which no client can write)."""
        relayed = secagg_relay_key(self.task["run_id"], self.task["round"], client, stage, int(self.settings["attempt"]))
        return json.loads(self.store.get(relayed))

    def context(self, sender: str, holder: str) -> str:
        """What a sealed share is bound to: the run, round, attempt, sender and holder."""
        return f"{self.task['run_id']}/{self.task['round']}/{self.settings['attempt']}: {sender} -> {holder}"

    def state(self) -> dict[str, bytes | int]:
        """The private state this client sealed in its keys stage."""
        sealed = _unb64(self.read(self.client, "keys")["state"])
        state = json.loads(secagg.unseal(self._secret, sealed, self.key(self.client, "keys")))
        return {name: value if name == "num_examples" else _unb64(value) for name, value in state.items()}

    def publish_keys(self, num_examples: int) -> bytes:
        share_private, share_public = secagg.new_keypair()
        mask_private, mask_public = secagg.new_keypair()
        seed = os.urandom(secagg.SECRET_BYTES)
        state = {"share_private": _b64(share_private), "mask_private": _b64(mask_private), "seed": _b64(seed),
                 "num_examples": num_examples}
        sealed = secagg.seal(self._secret, json.dumps(state).encode(), self.task["update"])
        return json.dumps({"share_public": _b64(share_public), "mask_public": _b64(mask_public),
                           "seed_commitment": secagg.commitment(seed), "state": _b64(sealed)}).encode()

    def share(self, state: dict[str, Any]) -> bytes:
        holders = sorted({*self.peers, self.client})
        if len(holders) < self.threshold:
            raise PayloadError(f"{len(holders)} holders cannot hold shares with threshold {self.threshold}")
        seed_shares = secagg.share_secret(state["seed"], self.threshold, len(holders))
        key_shares = secagg.share_secret(state["mask_private"], self.threshold, len(holders))
        sealed = {}
        for holder, seed_share, key_share in zip(holders, seed_shares, key_shares):
            public = _unb64(self.read(holder, "keys")["share_public"])
            key = secagg.agree(state["share_private"], public, "fedless-nb secagg shares")
            sealed[holder] = _b64(secagg.seal(key, seed_share + key_share, self.context(self.client, holder)))
        return json.dumps({"shares": sealed}).encode()

    def mask(self, state: dict[str, Any], start: list[np.ndarray], trained: list[np.ndarray]) -> bytes:
        """[weight, weight * update], quantized and masked; the update clipped to clip_norm first if set."""
        delta = np.concatenate([(np.asarray(t, np.float64) - s).ravel() for t, s in zip(trained, start)])
        clip_norm = self.settings.get("clip_norm")
        norm = float(np.linalg.norm(delta))
        if clip_norm and norm > clip_norm:
            delta *= clip_norm / norm
        max_weight = float(self.settings.get("max_weight") or 0.0)
        weight = min(int(state["num_examples"]) / max_weight, 1.0) if max_weight > 0 else 1.0
        params = secagg.QuantizationParams(float(self.settings["clipping_range"]), int(self.settings["quantization_range"]))
        quantized = secagg.quantize(np.concatenate([[weight], weight * delta]), params, np.random.default_rng())
        pairwise = {peer: secagg.pairwise_seed(state["mask_private"], _unb64(self.read(peer, "keys")["mask_public"]))
                    for peer in self.peers}
        return encode_arrays([secagg.masked_vector(quantized, state["seed"], pairwise, self.client)])

    def opened(self, state: dict[str, Any], sender: str) -> bytes:
        """The seed share and key share `sender` sealed for this client; SecAggError if they do not open or are
        not two shares."""
        public = _unb64(self.read(sender, "keys")["share_public"])
        key = secagg.agree(state["share_private"], public, "fedless-nb secagg shares")
        sealed = _unb64(self.read(sender, "shares")["shares"][self.client])
        opened = secagg.unseal(key, sealed, self.context(sender, self.client))
        if len(opened) != 2 * secagg.SHARE_BYTES:
            raise secagg.SecAggError(f"{sender}'s sealed share holds {len(opened)} bytes, not two shares")
        return opened

    def check(self, state: dict[str, Any]) -> bytes:
        """The peers whose sealed shares this client cannot open: reported so that no one masks with them."""
        unopened = []
        for sender in self.peers:
            try:
                self.opened(state, sender)
            except secagg.SecAggError:
                unopened.append(sender)
        return json.dumps({"unopened": sorted(unopened)}).encode()

    def reveal(self, state: dict[str, Any]) -> bytes:
        dropped = {str(peer) for peer in self.settings.get("dropped", [])}
        if not dropped <= set(self.peers):
            raise PayloadError("train.secagg.dropped must name peers only")
        seeds, keys = {}, {}
        for sender in sorted({*self.peers, self.client}):
            opened = self.opened(state, sender)
            half = secagg.SHARE_BYTES
            if sender in dropped:
                keys[sender] = _b64(opened[half:])
            else:
                seeds[sender] = _b64(opened[:half])
        return json.dumps({"seed_shares": seeds, "key_shares": keys}).encode()


def key_stage(task: dict[str, Any], store: Any, key: RunKey | None, state_secret: str | None,
              num_examples: Callable[[], int]) -> tuple[bytes, int]:
    """The object a keys, shares, check or reveal stage writes, and the client's example count."""
    client = _Round(task, store, key, state_secret)
    stage = task["train"]["secagg"]["stage"]
    if stage == "keys":
        count = num_examples()
        return client.publish_keys(count), count
    state = client.state()
    output = {"shares": client.share, "check": client.check, "reveal": client.reveal}[stage](state)
    return output, int(state["num_examples"])


def masking(task: dict[str, Any], store: Any, key: RunKey | None,
            state_secret: str | None) -> Callable[[list[np.ndarray], list[np.ndarray]], bytes]:
    """The masked stage's object, (start, trained) -> the client's quantized, masked update (see the module docstring).
    Its task's checks run now, before the stage trains: a PayloadError is a refusal before any training step."""
    client = _Round(task, store, key, state_secret)
    return lambda start, trained: client.mask(client.state(), start, trained)
