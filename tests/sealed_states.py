"""The check that a secure round's sealed client state opens for its function alone (fedless_nb/state_secret.py)."""

import base64
import json

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedless_nb.privacy import secagg
from fedless_nb.security import RunKey
from fedless_nb.state_secret import sealing_key
from fedless_nb.store.keys import secagg_key


def _run_key_derivation(run_key: RunKey, client: str) -> bytes:
    """The key a client's state was sealed with before the state secret: derived from its run key alone, which the
    controller derives too (it signs the client's tasks with it)."""
    info = b"fedless-nb client secret\0secagg state\0" + client.encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(run_key._key)


def assert_sealed_for_the_function_alone(store, run_id, client, run_key, state_secret, controller_secrets=()):
    """`client`'s keys object of round 1 holds its private keys sealed under `state_secret` (its function's), and
    neither under its run key nor, as a state secret, under any of `controller_secrets` (what the controller holds)."""
    key_name = secagg_key(run_id, 1, client, "keys")
    sealed = base64.b64decode(json.loads(store.get(key_name))["state"])
    attempts = [_run_key_derivation(run_key, client)]
    attempts += [sealing_key(secret, run_key, client, "secagg state") for secret in controller_secrets]
    for attempt in attempts:
        with pytest.raises(secagg.SecAggError):
            secagg.unseal(attempt, sealed, key_name)
    state = json.loads(secagg.unseal(sealing_key(state_secret, run_key, client, "secagg state"), sealed, key_name))
    assert sorted(state) == ["mask_private", "num_examples", "seed", "share_private"] and state["num_examples"] > 0
