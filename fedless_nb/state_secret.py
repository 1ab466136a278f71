"""The state secret: what a function seals its own private state with between invocations, out of the controller's reach.

A secure round's client must remember its private keys and self-mask seed from one stage (one invocation) to the next,
and a function keeps nothing between invocations, so it writes them sealed into the store. Sealed under a key derived
from the run secret, the controller, which holds that secret to sign tasks, could open them and unmask every update:
the honest-but-curious server SecAgg+ is built against. So the key is derived from a second secret deployed with the
function alone, `FEDLESS_STATE_SECRET` (or a file `FEDLESS_STATE_SECRET_FILE` names), which nothing sends to the
controller: `fedless-nb package`/`deploy` draw a fresh one for each deployment, a local provider for its workers, a
classroom student's kernel keeps one in memory. Whoever can read the function's configuration on its platform can
read it too; that is the deployer, not the controller's code.
"""

from __future__ import annotations

from typing import Mapping

from .security import RunKey, deployed_secret

STATE_SECRET_VARIABLE = "FEDLESS_STATE_SECRET"
STATE_SECRET_FILE_VARIABLE = "FEDLESS_STATE_SECRET_FILE"
# What a printed deploy command sets the variable to: a fresh secret drawn in the deployer's shell, never printed.
DRAWN_IN_THE_SHELL = "$(fedless-nb new-secret)"


def state_secret(environment: Mapping[str, str] | None = None) -> str | None:
    """The state secret this function was deployed with, or None."""
    return deployed_secret(STATE_SECRET_VARIABLE, STATE_SECRET_FILE_VARIABLE, "the state secret", environment)


def sealing_key(secret: str, key: RunKey, client_id: str, purpose: str) -> bytes:
    """32 bytes for one client, run and `purpose` (HKDF-SHA256 of the state `secret`, salted with the client's run
    key), e.g. the AES-GCM key a function seals its secure-aggregation state with between stages. Only the function
    holds `secret`; the run key keeps a secret reused across runs from sealing two runs' states alike."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    info = b"fedless-nb sealed state\0" + purpose.encode() + b"\0" + client_id.encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=key._key, info=info).derive(secret.encode())
