"""Secure aggregation's arithmetic and cryptography (SecAgg+, Bell et al. 2020, after Bonawitz et al. 2017).

Pure functions, shared by the function side (function/secagg_stages.py) and the controller side
(rounds/secagg.py); no I/O. The pieces:

- the communication graph: each client shares its secrets with `degree` neighbours on a shuffled
  ring (a Harary graph, as SecAgg+), or with every other client (degree 0: SecAgg);
- key agreement: X25519 key pairs, HKDF-SHA256 over the shared secret;
- authenticated encryption of the Shamir shares for each neighbour: AES-GCM;
- Shamir secret sharing of 32-byte secrets as two 16-byte halves (pycryptodome's `Shamir`);
- masks: AES-256 in CTR mode as the pseudo-random generator, expanded to uint32 vectors;
- quantization with Flower's SecAgg+ parameters: clip to [-clipping_range, clipping_range],
  scale to [0, quantization_range], stochastic rounding, arithmetic modulo 2^32.

A client's masked vector is  q_i + PRG(b_i) + sum_j sign(i, j) PRG(s_ij)  (mod 2^32), with b_i its
self-mask seed and s_ij the seed it agrees with neighbour j; the pairwise masks cancel in the sum
of the clients that stayed, the controller removes the self-masks of those and the pairwise masks
of those that dropped from the secrets it reconstructs out of the neighbours' shares.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
from Crypto.Protocol.SecretSharing import Shamir
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from ..wording import counted

MODULUS_BITS = 32  # the masked arithmetic is uint32's: numpy wraps modulo 2^32 for free
MIN_CLIENTS = 3  # a secure round's fewest clients: the sum of two tells each the other's update
SECRET_BYTES = 32
SHARE_BYTES = 2 + SECRET_BYTES  # a Shamir share of a secret: its 1-based index, then one share per half
_HALF = 16  # pycryptodome's Shamir shares 16-byte secrets (GF(2^128))
_NONCE = 12
_TAG = 16  # AES-GCM's
SEALED_SHARE_BYTES = _NONCE + 2 * SHARE_BYTES + _TAG  # a holder's seed share and key share, sealed for it
MAX_RECOVERY_TRIES = 2000  # sets of shares tried per secret before its holders are deemed too dishonest


class SecAggError(ValueError):
    """A secret cannot be recovered or a message does not open: the round cannot be unmasked."""


@dataclass(frozen=True)
class QuantizationParams:
    """Flower's SecAgg+ defaults: values clipped to +-clipping_range map to [0, quantization_range]."""

    clipping_range: float = 8.0
    quantization_range: int = 2**22

    @property
    def step(self) -> float:
        """The width of one quantization level: the largest error stochastic rounding adds to a value."""
        return 2 * self.clipping_range / self.quantization_range


# -- the communication graph -----------------------------------------------------------------

def neighbours(client_ids: Sequence[str], degree: int, seed: int) -> dict[str, list[str]]:
    """Each client's neighbours: `degree` of them on a ring shuffled by `seed` (rounded up to even,
    half on each side), or all the others when `degree` is 0 or reaches len(client_ids) - 1."""
    ids = sorted(client_ids)
    count = len(ids)
    if degree <= 0 or degree >= count - 1:
        return {client: [other for other in ids if other != client] for client in ids}
    ring = ids[:]
    random.Random(seed).shuffle(ring)
    reach = (degree + 1) // 2
    graph = {}
    for position, client in enumerate(ring):
        near = {ring[(position + offset) % count] for step in range(1, reach + 1) for offset in (step, -step)}
        graph[client] = sorted(near - {client})
    return graph


def majority(holders: int) -> int:
    """The smallest threshold above half of a secret's holders (the default)."""
    return holders // 2 + 1


def mask_sign(client: str, peer: str) -> int:
    """+1 for the smaller id of a pair, -1 for the larger: the pair's masks cancel in the sum."""
    return 1 if client < peer else -1


# -- keys and encryption ---------------------------------------------------------------------

def new_keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 (private, public) key pair as raw 32-byte strings."""
    private = X25519PrivateKey.generate()
    return (private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()),
            private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def public_key(private: bytes) -> bytes:
    """The public half of a raw X25519 private key (checks a reconstructed key against the published one)."""
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def agrees(public: bytes) -> bool:
    """Whether an X25519 public key agrees a secret with others: one of low order (all zeros, say) agrees on none
    with any private key (X25519 refuses it), so every peer that seals shares or masks with it would fail."""
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        return False
    return True


def derive_key(material: bytes, purpose: str) -> bytes:
    """32 bytes from `material` by HKDF-SHA256, separated by `purpose`."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode()).derive(material)


def agree(private: bytes, peer_public: bytes, purpose: str) -> bytes:
    """The key two clients agree on (X25519 then HKDF): the same from either side."""
    shared = X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(peer_public))
    return derive_key(shared, purpose)


def seal(key: bytes, plaintext: bytes, context: str) -> bytes:
    """AES-GCM under `key`, bound to `context` (who sends what to whom, in which round): nonce + ciphertext."""
    nonce = os.urandom(_NONCE)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, context.encode())


def unseal(key: bytes, sealed: bytes, context: str) -> bytes:
    """The plaintext of `seal(key, plaintext, context)`; SecAggError if it was altered or is for another context."""
    from cryptography.exceptions import InvalidTag

    try:
        return AESGCM(key).decrypt(sealed[:_NONCE], sealed[_NONCE:], context.encode())
    except (InvalidTag, ValueError):
        raise SecAggError(f"a sealed message for {context!r} does not open: altered, or sealed for another") from None


def commitment(secret: bytes) -> str:
    """A public digest of a 256-bit random secret, to tell a correct reconstruction from a wrong one."""
    return hashlib.sha256(b"fedless-nb secagg commitment\0" + secret).hexdigest()


# -- Shamir secret sharing -------------------------------------------------------------------

def share_secret(secret: bytes, threshold: int, holders: int) -> list[bytes]:
    """`holders` shares of a 32-byte secret, any `threshold` of which recover it; each share is
    its 1-based index (2 bytes) and two 16-byte Shamir shares, one per half of the secret."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"secrets are {SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= holders:
        raise ValueError(f"the threshold must be between 1 and the {holders} holders, got {threshold}")
    halves = [Shamir.split(threshold, holders, secret[start:start + _HALF]) for start in (0, _HALF)]
    return [index.to_bytes(2, "big") + first + second for (index, first), (_, second) in zip(*halves)]


def recover_secret(shares: Iterable[bytes], threshold: int) -> bytes:
    """The secret from at least `threshold` distinct shares, every one as dealt (`recover_checked` when a holder
    may have revealed a wrong one); SecAggError with fewer, where Shamir would silently return a wrong value."""
    distinct = {share[:2]: share for share in shares}
    if len(distinct) < threshold:
        raise SecAggError(f"{counted(len(distinct), 'share')} of a secret arrived, the threshold is {threshold}")
    return _combine(list(distinct.values())[:threshold])


def _combine(chosen: Sequence[bytes]) -> bytes:
    halves = [Shamir.combine([(int.from_bytes(s[:2], "big"), s[2 + start:2 + start + _HALF]) for s in chosen])
              for start in (0, _HALF)]
    return halves[0] + halves[1]


def _matches(chosen: Sequence[bytes], is_secret: Callable[[bytes], bool]) -> bytes | None:
    """The secret `chosen` combine to, if `is_secret` accepts it (a wrong share makes Shamir return garbage)."""
    try:
        secret = _combine(chosen)
    except ValueError:  # two shares with one index, or a share of the wrong length
        return None
    return secret if is_secret(secret) else None


def recover_checked(shares: Mapping[str, bytes], threshold: int, is_secret: Callable[[bytes], bool],
                    indices: Mapping[str, int], tries: int = MAX_RECOVERY_TRIES) -> tuple[bytes, list[str]]:
    """The secret from holder -> revealed share, when some holders may have revealed a wrong one (a compromised
    peer): a share without its holder's index in `indices` (the owner dealt share i to its i-th holder) is wrong;
    of the others, sets of `threshold` are combined, those that leave out the fewest holders first, until
    `is_secret` (the owner's commitment or public key) accepts one. Returns it and the holders whose share
    disagrees with it (sought only when the first set failed: a wrong share that no set used did no harm, and
    checking each share costs a combination); SecAggError with fewer than `threshold` shares, or when no set
    among the first `tries` recovers it (too few honest holders). Below the threshold Shamir itself would
    silently return a wrong value."""
    misplaced = [h for h, share in shares.items() if int.from_bytes(share[:2], "big") != indices.get(h)]
    holders = sorted(set(shares) - set(misplaced))
    if len(holders) < threshold:
        raise SecAggError(f"{counted(len(holders), 'share')} of a secret arrived, the threshold is {threshold}")
    tried = 0
    for left_out in range(len(holders) - threshold + 1):
        window = holders[:threshold + left_out]  # each set once: the window's last holder in it, `left_out` before it not
        for excluded in itertools.combinations(window[:-1], left_out):
            if tried == tries:
                break
            tried += 1
            chosen = [h for h in window if h not in excluded]
            secret = _matches([shares[h] for h in chosen], is_secret)
            if secret is not None and tried == 1:
                return secret, sorted(misplaced)
            if secret is not None:
                base = [shares[h] for h in chosen[:threshold - 1]]
                liars = [h for h in holders if h not in chosen and _matches([*base, shares[h]], secret.__eq__) is None]
                return secret, sorted(liars + misplaced)
    raise SecAggError(f"none of {tried} sets of {threshold} of its {len(holders)} revealed shares recovers it: "
                      "too many of its holders revealed a wrong share")


# -- quantization and masks ------------------------------------------------------------------

def quantize(values: np.ndarray, params: QuantizationParams, rng: np.random.Generator) -> np.ndarray:
    """Clip to +-clipping_range, scale to [0, quantization_range] and round stochastically (unbiased)."""
    scale = params.quantization_range / (2 * params.clipping_range)
    scaled = (np.clip(np.asarray(values, np.float64), -params.clipping_range, params.clipping_range)
              + params.clipping_range) * scale
    floor = np.floor(scaled)
    return (floor + (rng.random(scaled.shape) < scaled - floor)).astype(np.uint32)


def dequantize_sum(total: np.ndarray, params: QuantizationParams, count: int) -> np.ndarray:
    """The float sum of `count` clients' values from the sum of their quantized vectors (mod 2^32)."""
    scale = params.quantization_range / (2 * params.clipping_range)
    return np.asarray(total, np.uint32).astype(np.float64) / scale - count * params.clipping_range


def sum_range_problem(total: np.ndarray, params: QuantizationParams, count: int) -> str | None:
    """Why an unmasked sum of `count` clients' vectors cannot be one (each value of each is in [0,
    quantization_range], its weight at most 1), or None. Masking hides a client that sends values outside that
    range (its values are not checked one by one), so only their sum can show it."""
    total = np.asarray(total, np.uint32)
    outside = int(np.count_nonzero(total > count * params.quantization_range))
    if outside:
        return (f"the unmasked sum of {count} clients has {counted(outside, 'value')} larger than {count} quantized "
                "values can add up to: a client sent values outside its quantization range")
    weights = float(dequantize_sum(total[:1], params, count)[0])
    if weights > count * (1 + params.step):
        return f"the clients' weights add up to {weights:.4g}, more than the {count} that {count} clients can have"
    return None


def max_clients(params: QuantizationParams) -> int:
    """How many quantized vectors fit in a sum before it wraps modulo 2^32."""
    return (2**MODULUS_BITS - 1) // params.quantization_range


def expand_mask(seed: bytes, length: int) -> np.ndarray:
    """`length` pseudo-random uint32 values from a 32-byte seed: AES-256-CTR's keystream."""
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    return np.frombuffer(encryptor.update(bytes(4 * length)) + encryptor.finalize(), dtype="<u4").astype(np.uint32)


def pairwise_seed(private: bytes, peer_public: bytes) -> bytes:
    """The mask seed s_ij two neighbours agree on."""
    return agree(private, peer_public, "fedless-nb secagg pairwise mask")


def masked_vector(quantized: np.ndarray, self_seed: bytes, pairwise: dict[str, bytes], client: str) -> np.ndarray:
    """q + PRG(b) + sum over peers of sign(client, peer) PRG(s_ij), modulo 2^32."""
    masked = quantized.astype(np.uint32) + expand_mask(self_seed, quantized.size)
    for peer, seed in pairwise.items():
        mask = expand_mask(seed, quantized.size)
        masked = masked + mask if mask_sign(client, peer) > 0 else masked - mask
    return masked


def remove_masks(total: np.ndarray, self_seeds: Iterable[bytes],
                 dropped_pairs: Iterable[tuple[str, str, bytes]]) -> np.ndarray:
    """The sum of the survivors' quantized vectors: `total` less each survivor's self-mask and less the
    pairwise mask each survivor added for a dropped neighbour ((survivor, dropped, seed) triples)."""
    result = np.asarray(total, np.uint32).copy()
    for seed in self_seeds:
        result -= expand_mask(seed, result.size)
    for survivor, dropped, seed in dropped_pairs:
        mask = expand_mask(seed, result.size)
        result = result - mask if mask_sign(survivor, dropped) > 0 else result + mask
    return result
