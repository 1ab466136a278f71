"""Flower's published aggregation rules, restated as plain numpy for the agreement tests.

flwr is not a dependency of the project or its CI, so the rules are restated here from Flower's
source as released in flwr 1.23.0 (flwr/server/strategy/ and flwr/common/differential_privacy.py);
bench/check_against_flower.py runs fedless_nb against the real flwr in its own environment, and every
disagreement it found is a case in tests/test_aggregate.py or tests/test_central_dp.py.
  aggregate.py   aggregate (sample-weighted mean; FedAvg's default in-place variant computes the same
                 mean in float32 and differs by rounding only), aggregate_median, aggregate_krum with
                 _compute_distances (the float32 norm of each difference, squared: exact ties come out
                 as its rounding makes them), aggregate_trimmed_avg with _trim_mean (np.partition,
                 int(proportiontocut * n) cut from each end)
  fedavgm.py     aggregate_fit: plain FedAvg unless lr != 1 or momentum != 0; pseudo-gradient =
                 current - fedavg; momentum v = m v + g after round 1
  aggregate.py   aggregate_bulyan with aggregate_krum as its rule (Flower's Bulyan must be given
                 to_keep=0 for it) and _aggregate_n_closest_weights (np.argpartition of |median - w|)
  fedadam.py, fedyogi.py, fedadagrad.py   aggregate_fit: delta = fedavg - current, m, v, then
                 current + eta m / (sqrt(v) + tau) (FedAdagrad: beta_1 = 0, v += delta^2); FedAdam
                 uses eta_norm = eta sqrt(1 - beta_2^(server_round + 1)) / (1 - beta_1^(server_round + 1))
                 in place of eta (bias_correction=True here; False is Flower before 1.13, Reddi et al.'s
                 rule); FedYogi and FedAdagrad have no bias correction
  dp_fixed_clipping.py, dp_adaptive_clipping.py, common/differential_privacy.py   server-side clipping
                 of each update (FlatClip), the inner strategy on the clipped models, noise of std
                 z C / num_sampled_clients on its output; adaptive: norm_bit = the update was clipped,
                 C *= exp(-lr (noised clipped fraction - target_clipped_quantile)), noise from the new C,
                 and compute_adaptive_noise_params
Each function keeps Flower's order of operations and dtypes (float32 in, float32 arithmetic).
"""

import math
from functools import reduce

import numpy as np


def aggregate(results):
    total = sum(n for _, n in results)
    weighted = [[layer * n for layer in weights] for weights, n in results]
    return [reduce(np.add, layers) / total for layers in zip(*weighted)]


def aggregate_median(results):
    return [np.median(np.asarray(layer), axis=0) for layer in zip(*[w for w, _ in results])]


def _distances(weights):
    flat = [np.concatenate([layer.flatten() for layer in w]) for w in weights]
    matrix = np.zeros((len(weights), len(weights)))
    for i, a in enumerate(flat):
        for j, b in enumerate(flat):
            matrix[i, j] = np.linalg.norm(a - b) ** 2
    return matrix


def aggregate_krum(results, num_malicious, to_keep):
    weights = [w for w, _ in results]
    matrix = _distances(weights)
    num_closest = max(1, len(weights) - num_malicious - 2)
    closest = [np.argsort(row)[1 : num_closest + 1].tolist() for row in matrix]
    scores = [np.sum(matrix[i, closest[i]]) for i in range(len(matrix))]
    if to_keep > 0:
        best = np.argsort(scores)[::-1][len(scores) - to_keep :]
        return aggregate([results[i] for i in best])
    return weights[int(np.argmin(scores))]


def _trim_mean(array, proportiontocut):
    n = array.shape[0]
    lower = int(proportiontocut * n)
    upper = n - lower
    partitioned = np.partition(array, (lower, upper - 1), 0)
    return np.mean(partitioned[lower:upper], axis=0)


def aggregate_trimmed_avg(results, proportiontocut):
    return [_trim_mean(np.asarray(layer), proportiontocut) for layer in zip(*[w for w, _ in results])]


class FedAvgM:
    def __init__(self, initial, server_learning_rate, server_momentum):
        self.current, self.lr, self.momentum, self.vector = initial, server_learning_rate, server_momentum, None

    def aggregate_fit(self, server_round, results):
        fedavg_result = aggregate(results)
        if self.momentum == 0.0 and self.lr == 1.0:  # Flower's server_opt is False: plain FedAvg
            self.current = fedavg_result
            return self.current
        pseudo_gradient = [x - y for x, y in zip(self.current, fedavg_result)]
        if self.momentum > 0.0:
            if server_round > 1:
                self.vector = [self.momentum * x + y for x, y in zip(self.vector, pseudo_gradient)]
            else:
                self.vector = pseudo_gradient
            pseudo_gradient = self.vector
        self.current = [x - self.lr * y for x, y in zip(self.current, pseudo_gradient)]
        return self.current


def _find_reference_weights(reference, list_of_weights):
    for index, weights in enumerate(list_of_weights):
        if len(weights) == len(reference) and all(np.array_equal(a, b) for a, b in zip(weights, reference)):
            return index
    raise ValueError("The reference weights not found in list_of_weights.")


def _aggregate_n_closest_weights(reference_weights, results, beta_closest):
    list_of_weights = [weights for weights, _ in results]
    aggregated = []
    for layer_id, layer_weights in enumerate(reference_weights):
        others = np.array([other[layer_id] for other in list_of_weights])
        diff = np.abs(layer_weights - others)
        indices = np.argpartition(diff, kth=beta_closest - 1, axis=0)
        aggregated.append(np.mean(np.take_along_axis(others, indices=indices, axis=0)[:beta_closest], axis=0))
    return aggregated


def aggregate_bulyan(results, num_malicious):
    results = list(results)
    if len(results) < 4 * num_malicious + 3:
        raise ValueError("Bulyan needs 4 * num_malicious + 3 clients")
    selected = []
    theta = len(results) - 2 * num_malicious
    beta = theta - 2 * num_malicious
    for _ in range(theta):
        best_model = aggregate_krum(results, num_malicious, 0)
        best_idx = _find_reference_weights(best_model, [w for w, _ in results])
        selected.append(results[best_idx])
        results.pop(best_idx)
    median_vect = aggregate_median(selected)
    return _aggregate_n_closest_weights(median_vect, selected, beta_closest=beta)


class FedOpt:
    def __init__(self, kind, initial, eta, beta_1, beta_2, tau, bias_correction=False):
        self.kind, self.current, self.eta, self.beta_1, self.beta_2, self.tau = kind, initial, eta, beta_1, beta_2, tau
        self.bias_correction = bias_correction
        self.m_t, self.v_t = None, None

    def aggregate_fit(self, server_round, results):
        fedavg_weights = aggregate(results)
        delta_t = [x - y for x, y in zip(fedavg_weights, self.current)]
        if not self.m_t:
            self.m_t = [np.zeros_like(x) for x in delta_t]
        self.m_t = [np.multiply(self.beta_1, x) + (1 - self.beta_1) * y for x, y in zip(self.m_t, delta_t)]
        if not self.v_t:
            self.v_t = [np.zeros_like(x) for x in delta_t]
        if self.kind == "adam":
            self.v_t = [self.beta_2 * x + (1 - self.beta_2) * np.multiply(y, y) for x, y in zip(self.v_t, delta_t)]
        elif self.kind == "yogi":
            self.v_t = [x - (1.0 - self.beta_2) * np.multiply(y, y) * np.sign(x - np.multiply(y, y))
                        for x, y in zip(self.v_t, delta_t)]
        else:  # adagrad
            self.v_t = [x + np.multiply(y, y) for x, y in zip(self.v_t, delta_t)]
        eta = self.eta
        if self.bias_correction:
            eta = (self.eta * np.sqrt(1 - np.power(self.beta_2, server_round + 1.0))
                   / (1 - np.power(self.beta_1, server_round + 1.0)))
        self.current = [x + eta * y / (np.sqrt(z) + self.tau) for x, y, z in zip(self.current, self.m_t, self.v_t)]
        return self.current


def get_norm(arrays):
    return float(np.sqrt(sum(np.linalg.norm(array.flat) ** 2 for array in arrays)))


def clip_update(model, current, clipping_norm):
    """compute_clip_model_update: current + the update scaled by min(1, C / norm) (ZeroDivisionError at norm 0)."""
    update = [np.subtract(x, y) for x, y in zip(model, current)]
    factor = min(1, clipping_norm / get_norm(update))
    return [c + u * factor for c, u in zip(current, update)], factor < 1


def compute_stdv(noise_multiplier, clipping_norm, num_sampled_clients):
    return float((noise_multiplier * clipping_norm) / num_sampled_clients)


def dp_fixed_clipping_fedavg(current, results, noise_multiplier, clipping_norm, num_sampled_clients, noise):
    """DifferentialPrivacyServerSideFixedClipping around FedAvg; `noise(std, shape)` stands for the normal draw."""
    clipped = [(clip_update(weights, current, clipping_norm)[0], n) for weights, n in results]
    std = compute_stdv(noise_multiplier, clipping_norm, num_sampled_clients)
    return [layer + noise(std, layer.shape).astype(layer.dtype) for layer in aggregate(clipped)]


def adaptive_clip_norm_update(current, models, clipping_norm, target_clipped_quantile, clip_norm_lr, count_noise):
    """DifferentialPrivacyServerSideAdaptiveClipping's geometric update; `count_noise` stands for the count's noise."""
    clipped_count = sum(clip_update(model, current, clipping_norm)[1] for model in models)
    fraction = (clipped_count + count_noise) / len(models)
    return clipping_norm * math.exp(-clip_norm_lr * (fraction - target_clipped_quantile))


def compute_adaptive_noise_params(noise_multiplier, num_sampled_clients, clipped_count_stddev):
    if noise_multiplier > 0:
        if clipped_count_stddev is None:
            clipped_count_stddev = num_sampled_clients / 20
        if noise_multiplier >= 2 * clipped_count_stddev:
            raise ValueError("clipped_count_stddev too low")
        return clipped_count_stddev, (noise_multiplier ** (-2) - (2 * clipped_count_stddev) ** (-2)) ** -0.5
    return (0.0 if clipped_count_stddev is None else clipped_count_stddev), 0.0
