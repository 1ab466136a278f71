"""Secure aggregation's arithmetic and cryptography (privacy/secagg.py), on its own."""

import numpy as np
import pytest
from Crypto.Protocol.SecretSharing import Shamir
from scipy import stats

from fedless_nb.privacy import secagg
from fedless_nb.privacy.secagg import QuantizationParams, SecAggError


def _clients(count):
    return [f"client-{index:04d}" for index in range(count)]


def test_the_graph_is_symmetric_with_the_asked_degree_or_complete():
    ids = _clients(10)
    sparse = secagg.neighbours(ids, 4, seed=3)
    assert all(len(peers) == 4 and client not in peers for client, peers in sparse.items())
    assert all(client in sparse[peer] for client, peers in sparse.items() for peer in peers)
    assert secagg.neighbours(ids, 4, seed=3) == sparse and secagg.neighbours(ids, 4, seed=4) != sparse
    complete = secagg.neighbours(ids, 0, seed=3)
    assert all(len(peers) == 9 for peers in complete.values())
    assert secagg.neighbours(ids, 3, seed=0)["client-0000"].__len__() == 4  # odd degrees round up to even


def test_both_sides_agree_on_a_pairwise_key_and_a_third_party_does_not():
    (a_private, a_public), (b_private, b_public), (c_private, _) = (secagg.new_keypair() for _ in range(3))
    assert secagg.agree(a_private, b_public, "x") == secagg.agree(b_private, a_public, "x")
    assert secagg.agree(c_private, b_public, "x") != secagg.agree(a_private, b_public, "x")
    assert secagg.public_key(a_private) == a_public


def test_sealed_messages_open_only_with_their_key_and_context():
    key, other = b"k" * 32, b"o" * 32
    sealed = secagg.seal(key, b"share", "round 1: a -> b")
    assert secagg.unseal(key, sealed, "round 1: a -> b") == b"share"
    for wrong_key, context in ((other, "round 1: a -> b"), (key, "round 1: a -> c")):
        with pytest.raises(SecAggError, match="does not open"):
            secagg.unseal(wrong_key, sealed, context)
    tampered = bytearray(sealed)
    tampered[-1] ^= 1
    with pytest.raises(SecAggError):
        secagg.unseal(key, bytes(tampered), "round 1: a -> b")


def test_shares_reconstruct_at_the_threshold_and_fail_below():
    secret = bytes(range(32))
    shares = secagg.share_secret(secret, threshold=3, holders=5)
    assert len(shares) == 5 and len({share[:2] for share in shares}) == 5
    for chosen in (shares[:3], shares[2:], [shares[0], shares[4], shares[2]]):
        assert secagg.recover_secret(chosen, 3) == secret
    with pytest.raises(SecAggError, match="^2 shares of a secret arrived, the threshold is 3$"):
        secagg.recover_secret([shares[0], shares[0], shares[1]], 3)  # a duplicated share is not a second share
    with pytest.raises(SecAggError, match="^1 share of a secret arrived, the threshold is 3$"):
        secagg.recover_secret([shares[0]], 3)
    holders = dict(zip("abcde", shares))
    indices = {holder: index for index, holder in enumerate("abcde", start=1)}
    for chosen in ("abc", "cde", "aec"):
        assert secagg.recover_checked({h: holders[h] for h in chosen}, 3, secret.__eq__, indices) == (secret, [])
    with pytest.raises(SecAggError, match="^2 shares of a secret arrived"):
        secagg.recover_checked({h: holders[h] for h in "ab"}, 3, secret.__eq__, indices)
    with pytest.raises(SecAggError, match="^1 share of a secret arrived"):
        secagg.recover_checked({"a": holders["a"]}, 3, secret.__eq__, indices)
    with pytest.raises(SecAggError):  # a duplicated share is not a second share
        secagg.recover_checked({"a": holders["a"], "b": holders["a"], "c": holders["b"]}, 3, secret.__eq__, indices)
    # below the threshold Shamir itself yields a value unrelated to the secret
    below = Shamir.combine([(int.from_bytes(s[:2], "big"), s[2:18]) for s in shares[:2]])
    assert below != secret[:16]


def test_a_secret_is_recovered_past_holders_that_reveal_wrong_shares_and_they_are_named():
    secret = bytes(range(32))
    shares = dict(zip("abcde", secagg.share_secret(secret, threshold=3, holders=5)))
    lies = {**shares, "a": shares["a"][:2] + bytes(32), "c": shares["b"]}  # a wrong value; another holder's share
    indices = {holder: index for index, holder in enumerate("abcde", start=1)}
    assert secagg.recover_checked(lies, 3, secret.__eq__, indices) == (secret, ["a", "c"])
    assert secagg.recover_checked(shares, 3, secret.__eq__, indices) == (secret, [])
    with pytest.raises(SecAggError, match="too many of its holders revealed a wrong share"):
        secagg.recover_checked({**lies, "d": lies["a"]}, 3, secret.__eq__, indices)  # 2 honest of 5, threshold 3
    with pytest.raises(SecAggError, match="none of 1 sets"):
        secagg.recover_checked({**shares, "a": lies["a"]}, 3, secret.__eq__, indices, tries=1)


def test_quantization_error_is_bounded_by_one_level_and_unbiased():
    params = QuantizationParams(clipping_range=2.0, quantization_range=2**16)
    rng = np.random.default_rng(0)
    values = rng.uniform(-2, 2, 20000)
    quantized = secagg.quantize(values, params, rng)
    assert quantized.dtype == np.uint32 and quantized.max() <= params.quantization_range
    restored = secagg.dequantize_sum(quantized, params, count=1)
    assert np.max(np.abs(restored - values)) <= params.step
    assert abs(np.mean(restored - values)) < params.step / 20  # stochastic rounding: no drift
    clipped = secagg.dequantize_sum(secagg.quantize(np.array([5.0, -9.0]), params, rng), params, 1)
    np.testing.assert_allclose(clipped, [2.0, -2.0])


def _masked_round(updates, dropped=()):
    """Masked vectors of every client; the masks of `dropped` clients (who never sent theirs) removed."""
    params = QuantizationParams()
    ids = _clients(len(updates))
    graph = secagg.neighbours(ids, 0, seed=0)
    keys = {client: secagg.new_keypair() for client in ids}
    seeds = {client: np.random.default_rng(index).bytes(32) for index, client in enumerate(ids)}
    rng = np.random.default_rng(7)
    masked, quantized = {}, {}
    for client, update in zip(ids, updates):
        quantized[client] = secagg.quantize(update, params, rng)
        pairwise = {peer: secagg.pairwise_seed(keys[client][0], keys[peer][1]) for peer in graph[client]}
        masked[client] = secagg.masked_vector(quantized[client], seeds[client], pairwise, client)
    survivors = [client for client in ids if client not in dropped]
    total = np.sum([masked[client] for client in survivors], axis=0, dtype=np.uint32)
    pairs = [(survivor, gone, secagg.pairwise_seed(keys[gone][0], keys[survivor][1]))
             for gone in dropped for survivor in graph[gone] if survivor in survivors]
    unmasked = secagg.remove_masks(total, [seeds[client] for client in survivors], pairs)
    return params, ids, masked, quantized, survivors, unmasked


def test_masks_cancel_and_the_unmasked_sum_is_the_sum_of_the_updates():
    rng = np.random.default_rng(1)
    updates = [rng.normal(0, 0.5, 1000) for _ in range(5)]
    params, ids, _, quantized, survivors, unmasked = _masked_round(updates)
    np.testing.assert_array_equal(unmasked, np.sum([quantized[c] for c in ids], axis=0, dtype=np.uint32))
    total = secagg.dequantize_sum(unmasked, params, len(survivors))
    assert np.max(np.abs(total - np.sum(updates, axis=0))) <= len(updates) * params.step


def test_masks_of_dropped_clients_are_removed_from_their_reconstructed_keys():
    rng = np.random.default_rng(2)
    updates = [rng.normal(0, 0.5, 500) for _ in range(6)]
    params, ids, _, _, survivors, unmasked = _masked_round(updates, dropped=("client-0001", "client-0004"))
    kept = [update for client, update in zip(ids, updates) if client in survivors]
    total = secagg.dequantize_sum(unmasked, params, len(survivors))
    assert np.max(np.abs(total - np.sum(kept, axis=0))) <= len(kept) * params.step


def test_a_masked_vector_looks_uniform_and_is_independent_of_its_update():
    rng = np.random.default_rng(3)
    update = np.linspace(-1, 1, 40000) ** 3  # a very non-uniform update
    _, ids, masked, quantized, _, _ = _masked_round([update, rng.normal(0, 1, update.size), rng.normal(0, 1, update.size)])
    vector = masked[ids[0]]
    counts, _ = np.histogram(vector, bins=64, range=(0, 2**32))
    assert stats.chisquare(counts).pvalue > 0.001
    assert abs(np.corrcoef(vector.astype(np.float64), update)[0, 1]) < 0.03
    assert abs(np.corrcoef(vector.astype(np.float64), quantized[ids[0]].astype(np.float64))[0, 1]) < 0.03
    raw_counts, _ = np.histogram(quantized[ids[0]], bins=64, range=(0, 2**32))
    assert stats.chisquare(raw_counts).pvalue < 1e-6  # the unmasked vector is far from uniform


def test_the_sum_fits_the_modulus_for_the_documented_number_of_clients():
    params = QuantizationParams()
    assert secagg.max_clients(params) == 1023  # Flower's 2^22 levels: up to 1023 clients per round
