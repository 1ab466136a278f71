"""The numeric kernels of every strategy: pure functions of arrays, no orchestration, no state.

Each function takes lists of layers (a model is a list of numpy arrays) and returns new
arrays; server-side optimizer state goes in and comes out explicitly, so a strategy class
only keeps it between rounds. Where Flower has the same rule, these follow its definitions as of
Flower 1.23 (flwr/server/strategy/{aggregate,fedavgm,fedadam,fedyogi,fedadagrad}.py: FedAdam with its
bias-corrected server learning rate, Bulyan with Krum as its selection rule, Krum's distances and ties
computed as Flower computes them); tests/test_aggregate.py checks them against restatements of that code
(tests/flower_reference.py) and bench/check_against_flower.py against flwr itself. Where they differ on
purpose (float64 sums, Multi-Krum's to_keep above n), the README's "Where fedless_nb and Flower differ" says.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..reduction import in_dtype
from ..wording import counted
from .fedavg import fedavg

Layers = list[np.ndarray]

__all__ = [
    "fedavg", "fedavgm", "fedopt", "median", "trimmed_mean", "squared_distances", "krum", "bulyan", "scaffold_controls",
    "subtract", "add_scaled", "global_norm", "clip_to_norm", "staleness_weight", "fedbuff", "fednova",
    "local_solver_norm",
]


def subtract(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> Layers:
    """a - b layer by layer, in float64: in a layer's own dtype an integer difference wraps (uint8's 3 - 5 was 254)
    and a float16 one overflows from 65504."""
    return [np.asarray(x, np.float64) - np.asarray(y, np.float64) for x, y in zip(a, b)]


def add_scaled(base: Sequence[np.ndarray], direction: Sequence[np.ndarray], scale: float) -> Layers:
    """base + scale * direction, layer by layer, in base's dtype (an integer layer rounded: reduction.in_dtype)."""
    return [in_dtype(np.asarray(x) + scale * np.asarray(d), np.asarray(x).dtype) for x, d in zip(base, direction)]


def _float64(layers: Sequence[np.ndarray]) -> Layers:
    return [np.asarray(layer, np.float64) for layer in layers]


def global_norm(layers: Sequence[np.ndarray]) -> float:
    """The L2 norm of all layers flattened into one vector."""
    return float(np.sqrt(sum(np.sum(np.square(np.asarray(layer, dtype=np.float64))) for layer in layers)))


def clip_to_norm(layers: Sequence[np.ndarray], bound: float) -> tuple[Layers, float]:
    """Scale `layers` down so their global L2 norm is at most `bound`; returns them and the original norm."""
    norm = global_norm(layers)
    scale = min(1.0, bound / norm) if norm > 0 else 1.0
    return [np.asarray(layer) * scale for layer in layers], norm


def fedavgm(
    current: Sequence[np.ndarray], average: Sequence[np.ndarray], momentum: Layers | None,
    server_learning_rate: float, server_momentum: float,
) -> tuple[Layers, Layers | None]:
    """FedAvgM (Hsu et al. 2019): SGD with momentum on the pseudo-gradient current - average.

    Returns the new model and the momentum vector (None when server_momentum is 0), as Flower's FedAvgM.
    """
    pseudo_gradient = subtract(current, average)
    if server_momentum > 0.0:
        momentum = pseudo_gradient if momentum is None else [server_momentum * m + g for m, g in zip(momentum, pseudo_gradient)]
        pseudo_gradient = momentum
    return add_scaled(current, pseudo_gradient, -server_learning_rate), momentum if server_momentum > 0.0 else None


def fedopt(
    kind: str, current: Sequence[np.ndarray], average: Sequence[np.ndarray],
    m: Layers | None, v: Layers | None, *, eta: float, beta_1: float, beta_2: float, tau: float,
    bias_corrected_round: int | None = None,
) -> tuple[Layers, Layers, Layers]:
    """One server step of FedAdam, FedYogi or FedAdagrad (Reddi et al. 2021, Algorithm 2).

    delta = average - current; m = beta_1 m + (1 - beta_1) delta; v by the method's rule;
    new = current + eta_t m / (sqrt(v) + tau). Returns (new model in the model's dtypes, m, v). eta_t = eta
    (Reddi et al.), or with `bias_corrected_round` r Adam's bias-corrected rate as Flower 1.13+ computes it:
    eta sqrt(1 - beta_2^(r+1)) / (1 - beta_1^(r+1)) (Kingma & Ba, the line before Sec. 2.1).
    delta, m and v are float64 (m and v from an earlier float32 state too): a float32 model's squared change
    overflows float32 from |delta| ~ 1.8e19, which left v inf (the model stuck) or, for Yogi, nan the round after.
    """
    delta = subtract(average, current)
    m = [np.zeros_like(d) for d in delta] if m is None else _float64(m)
    v = [np.zeros_like(d) for d in delta] if v is None else _float64(v)
    m = [beta_1 * x + (1 - beta_1) * d for x, d in zip(m, delta)]
    if kind == "adam":
        v = [beta_2 * x + (1 - beta_2) * d * d for x, d in zip(v, delta)]
    elif kind == "yogi":
        v = [x - (1.0 - beta_2) * d * d * np.sign(x - d * d) for x, d in zip(v, delta)]
    elif kind == "adagrad":
        v = [x + d * d for x, d in zip(v, delta)]
    else:
        raise ValueError(f"unknown server optimizer {kind!r}: choose adam, yogi or adagrad")
    if bias_corrected_round is not None:
        eta = eta * np.sqrt(1 - np.power(beta_2, bias_corrected_round + 1.0)) / (
            1 - np.power(beta_1, bias_corrected_round + 1.0))
    new = [in_dtype(np.asarray(x) + eta * y / (np.sqrt(z) + tau), np.asarray(x).dtype) for x, y, z in zip(current, m, v)]
    return new, m, v


def _median(stacked: np.ndarray) -> np.ndarray:
    """np.median over axis 0, taken in float64 and returned in the values' float dtype: Flower's float32 median to
    the bit (the mean of the two middle values, rounded once either way), but finite where their float32 sum
    overflows (two values near float32's largest)."""
    dtype = stacked.dtype if np.issubdtype(stacked.dtype, np.floating) else np.float64
    return np.median(stacked.astype(np.float64), axis=0).astype(dtype)


def _mean(values: np.ndarray) -> np.ndarray:
    """np.mean over axis 0 in the values' dtype, the sums Flower makes to the bit, except in a coordinate where that
    sum overflows the dtype though every value is finite: there the float64 mean, finite as the values are."""
    with np.errstate(over="ignore", invalid="ignore"):
        mean = np.mean(values, axis=0)
    overflowed = ~np.isfinite(mean)
    return np.where(overflowed, np.mean(values, axis=0, dtype=np.float64), mean) if overflowed.any() else mean


def median(updates: Sequence[Sequence[np.ndarray]]) -> Layers:
    """Coordinate-wise median of the client models (FedMedian, Yin et al. 2018); sample counts are ignored."""
    if not updates:
        raise ValueError("median needs at least one update")
    return [in_dtype(_median(np.stack(layers)), layers[0].dtype) for layers in zip(*updates)]


def trimmed_mean(updates: Sequence[Sequence[np.ndarray]], beta: float) -> Layers:
    """Coordinate-wise mean after dropping the int(beta * n) smallest and largest values (Yin et al. 2018),
    found by np.partition as Flower's _trim_mean finds them, so the same values are summed in the same order."""
    n = len(updates)
    if n == 0:
        raise ValueError("trimmed_mean needs at least one update")
    if not 0 <= beta < 0.5:
        raise ValueError(f"beta must be in [0, 0.5), got {beta}")
    cut = int(beta * n)
    result = []
    for layers in zip(*updates):
        parted = np.partition(np.stack(layers), (cut, n - cut - 1), axis=0)
        result.append(in_dtype(_mean(parted[cut : n - cut]), layers[0].dtype))
    return result


def squared_distances(updates: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """Squared L2 distances between the flattened models, computed as Flower's _compute_distances does: the
    norm of the difference in the models' dtype (float32 for float32 models), then squared. Exact ties in
    exact arithmetic come out as Flower's rounding makes them, so Krum breaks them the same way. One pair
    at a time: memory stays at a few models, whatever the number of clients. A model of integer or float16 layers
    only is compared in float32 at least (Flower's own dtype wrapped uint8's differences, and float16's norms
    overflowed from 256, so every score was inf and Krum took the first model)."""
    flat = [np.concatenate([np.ravel(layer) for layer in update]) for update in updates]
    flat = [vector.astype(np.result_type(vector.dtype, np.float32), copy=False) for vector in flat]
    matrix = np.zeros((len(flat), len(flat)))
    for i, a in enumerate(flat):
        for j in range(i + 1, len(flat)):
            matrix[i, j] = matrix[j, i] = np.linalg.norm(a - flat[j]) ** 2
    return matrix


def krum(
    updates: Sequence[Sequence[np.ndarray]], num_examples: Sequence[int], num_malicious: int, to_keep: int = 0,
) -> tuple[Layers, list[int]]:
    """Krum (Blanchard et al. 2017), or Multi-Krum when `to_keep` > 0.

    Each model scores the sum of squared distances to its n - f - 2 nearest others; Krum returns
    the best-scoring model (the first of equal ones), Multi-Krum the sample-weighted mean of the
    `to_keep` best (chosen by np.argsort, as Flower's aggregate_krum, so ties fall alike), at most the
    n - f that are not the f (Flower takes any to_keep: robust.Krum says where it differs).
    Returns the result and the indices it was built from.
    """
    if not updates:
        raise ValueError("krum needs at least one update")
    if to_keep > 0 and to_keep > len(updates) - num_malicious:  # plain Krum's 2f + 3 is the strategy's quorum
        raise ValueError(f"multi-krum keeps at most n - num_malicious = {len(updates) - num_malicious} of "
                         f"{counted(len(updates), 'update')}, got to_keep {to_keep}")
    squared = squared_distances(updates)
    closest = max(1, len(updates) - num_malicious - 2)
    scores = [np.sum(np.sort(np.delete(row, i))[:closest]) for i, row in enumerate(squared)]
    if to_keep > 0:
        kept = [int(i) for i in np.argsort(scores)[:to_keep]]
        return fedavg([updates[i] for i in kept], [num_examples[i] for i in kept]), kept
    best = int(np.argmin(scores))
    return [np.array(layer) for layer in updates[best]], [best]


def bulyan(updates: Sequence[Sequence[np.ndarray]], num_malicious: int) -> tuple[Layers, list[int]]:
    """Bulyan (El Mhamdi et al. 2018) with Krum as its selection rule, as Flower's aggregate_bulyan.

    Needs n >= 4f + 3 models. Krum picks theta = n - 2f models one at a time (each pick leaves the
    pool; Krum scores within what is left); then, per coordinate, the mean of the beta = theta - 2f
    selected values closest to their median, the beta found by np.argpartition as Flower finds them
    (values equally far from the median are a tie either way; this takes the ones Flower takes).
    Returns the result and the indices selected.
    """
    n = len(updates)
    if n < 4 * num_malicious + 3:
        raise ValueError(f"bulyan needs at least 4 * num_malicious + 3 = {4 * num_malicious + 3} updates, got {n}")
    theta = n - 2 * num_malicious
    beta = theta - 2 * num_malicious
    remaining, selected = list(range(n)), []
    for _ in range(theta):
        _, (best,) = krum([updates[i] for i in remaining], [1] * len(remaining), num_malicious)
        selected.append(remaining.pop(best))
    result = []
    for layers in zip(*(updates[i] for i in selected)):
        stacked = np.stack(layers)
        with np.errstate(over="ignore"):  # a distance past float32's range is inf: farthest, as it is
            distance = np.abs(_median(stacked) - stacked)
        nearest = np.argpartition(distance, kth=beta - 1, axis=0)
        closest = np.take_along_axis(stacked, nearest, axis=0)[:beta]
        result.append(in_dtype(_mean(closest), layers[0].dtype))
    return result, selected


def scaffold_controls(
    client_control: Sequence[np.ndarray], server_control: Sequence[np.ndarray],
    start: Sequence[np.ndarray], trained: Sequence[np.ndarray], steps: int, learning_rate: float,
) -> Layers:
    """SCAFFOLD's option II (Karimireddy et al. 2020): c_i+ = c_i - c + (x - y_i) / (K * eta_l)."""
    if steps <= 0:
        raise ValueError("scaffold needs at least one local step")
    scale = 1.0 / (steps * learning_rate)
    return [ci - c + scale * (np.asarray(x, np.float64) - np.asarray(y, np.float64))
            for ci, c, x, y in zip(client_control, server_control, start, trained)]


STALENESS_FUNCTIONS = ("constant", "polynomial", "hinge")


def staleness_weight(kind: str, staleness: int, exponent: float = 0.5, hinge_a: float = 10.0, hinge_b: float = 4.0) -> float:
    """How much an update `staleness` global versions old counts (Xie et al. 2019, used by FedBuff):
    constant 1; polynomial (1 + s)^-exponent; hinge 1 if s <= b, else 1 / (a (s - b) + 1)."""
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0, got {staleness}")
    if kind == "constant":
        return 1.0
    if kind == "polynomial":
        return float((1 + staleness) ** -exponent)
    if kind == "hinge":
        return 1.0 if staleness <= hinge_b else 1.0 / (hinge_a * (staleness - hinge_b) + 1.0)
    raise ValueError(f"unknown staleness function {kind!r}: choose one of {', '.join(STALENESS_FUNCTIONS)}")


def fedbuff(
    current: Sequence[np.ndarray], deltas: Sequence[Sequence[np.ndarray]], weights: Sequence[float],
    server_learning_rate: float = 1.0,
) -> Layers:
    """FedBuff's server step (Nguyen et al. 2022): current + lr * sum(weight_i * delta_i) / len(deltas),
    each delta being a client's model minus the global model it started from."""
    if not deltas:
        raise ValueError("fedbuff needs at least one update")
    total = [np.zeros(np.shape(layer), np.float64) for layer in current]
    for delta, weight in zip(deltas, weights):
        total = [t + weight * np.asarray(d, np.float64) for t, d in zip(total, delta)]
    return add_scaled(current, total, server_learning_rate / len(deltas))


def local_solver_norm(steps: int, learning_rate: float, proximal_mu: float = 0.0) -> float:
    """||a_i||_1 of FedNova (Wang et al. 2020, section 4): the sum of the coefficients with which a client's
    `steps` local gradients enter its change. Plain SGD: steps. With FedProx's term (alpha = lr * mu), each
    gradient decays by (1 - alpha) per later step: sum_{k < steps} (1 - alpha)^k."""
    if steps <= 0:
        raise ValueError(f"a client update needs at least one local step, got {steps}")
    alpha = learning_rate * proximal_mu
    if alpha >= 2:  # |1 - alpha| >= 1: the proximal solver does not contract, and the norm is 0 or negative
        raise ValueError(f"learning_rate x proximal_mu must be below 2, got {alpha:g}")
    if alpha == 0.0:
        return float(steps)
    return float((1.0 - (1.0 - alpha) ** steps) / alpha)


def fednova(
    current: Sequence[np.ndarray], updates: Sequence[Sequence[np.ndarray]], num_examples: Sequence[int],
    norms: Sequence[float],
) -> Layers:
    """FedNova's server step: x - tau_eff * sum_i p_i (x - y_i) / ||a_i||_1, with p_i = n_i / n and
    tau_eff = sum_i p_i ||a_i||_1 (Wang et al. 2020, eq. 6 with the server learning rate 1)."""
    if not updates:
        raise ValueError("fednova needs at least one update")
    shares = np.asarray(num_examples, np.float64) / float(np.sum(num_examples, dtype=np.float64))
    tau_effective = float(np.dot(shares, norms))
    step = [np.zeros(np.shape(layer), np.float64) for layer in current]
    for update, share, norm in zip(updates, shares, norms):
        step = [s + (share / norm) * (np.asarray(x, np.float64) - np.asarray(y, np.float64))
                for s, x, y in zip(step, current, update)]
    return add_scaled(current, step, -tau_effective)
