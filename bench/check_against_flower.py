"""fedless_nb's strategies against real Flower's, end to end, on many random cases; one JSON line per strategy.

Both sides get the same client models and sample counts: Flower through its public strategy objects
(`aggregate_fit` on `FitRes` built with `ndarrays_to_parameters`), fedless_nb through `make_strategy` /
`CentralDP` and `aggregate`. Server optimizers run several rounds, each side from its own previous model.
Cases vary the number of clients (1, 2, 3, 4, 5, 7, 10), layer shapes (scalars, biases, matrices, 3-d),
float32 values at several scales, equal and unequal sample counts, and identical updates.

Each line: the strategy, the cases run, the largest absolute difference over every value of every case
(`max_abs_diff`), the tolerance it is held to and `agree`. Server optimizers also run Flower on the same models in
float64 (`max_rel_diff_from_flower_in_float64`): a case agrees when ours is within the tolerance of either, since
their step multiplies Flower's float32 rounding by up to eta / tau (BENCHMARKS.md). DP wrappers are compared on their deterministic
parts: numpy's normal draws are replaced by "exactly one standard deviation" on both sides, so the noise
std formula is compared too. Lines with `"kind": "difference"` measure the deliberate differences
(README, "Where fedless_nb and Flower differ"); they print what was measured and never count as failures.

Runs in Flower's own virtual environment (it imports fedless_nb's pure numpy code and pydantic, not TensorFlow):

    bash bench/setup_flower_env.sh
    PYTHONPATH=. bench/flower-venv/bin/python bench/check_against_flower.py --cases 200

Exits 1 when a strategy disagrees beyond its tolerance.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import sys
from typing import Any, Callable, Iterator
from unittest import mock

import numpy as np
import flwr
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
try:  # flwr 1.23 and earlier
    from flwr.common.differential_privacy import compute_adaptive_noise_params
except ImportError:  # later releases moved it
    from flwr.supercore.differential_privacy import compute_adaptive_noise_params
from flwr.server import strategy as flower

from fedless_nb.strategies import ClientUpdate, RunContext, make_strategy
from fedless_nb.strategies.central_dp import CentralDP, update_noise_multiplier

SHAPES = [(), (1,), (3,), (4, 3), (2, 3, 2), (5,)]
CLIENT_COUNTS = [1, 2, 3, 4, 5, 7, 10, 11, 12]
ROUNDS = 4
TOLERANCE = {"default": 1e-6, "rounds": 1e-5}  # relative; float32 arithmetic on both sides, rounds compound it


def random_case(rng: np.random.Generator, clients: int | None = None) -> dict[str, Any]:
    """Client models, their sample counts and the current global model, all float32 arrays. Some cases
    are identical updates; some take small integer values, so Krum scores and coordinates tie."""
    clients = clients or int(rng.choice(CLIENT_COUNTS))
    shapes = [SHAPES[i] for i in rng.choice(len(SHAPES), size=int(rng.integers(1, 4)), replace=False)]
    kind = rng.choice(["random", "identical", "ties"], p=[0.7, 0.15, 0.15])
    scale = float(rng.choice([1e-3, 1.0, 30.0]))

    def draw(shape: tuple, around: Any = 0.0) -> np.ndarray:
        noise = rng.integers(-2, 3, shape) if kind == "ties" else rng.standard_normal(shape) * scale
        return np.asarray(around + noise, dtype=np.float32)

    current = [draw(shape) for shape in shapes]
    models = [[draw(np.shape(c), c) for c in current] for _ in range(clients)]
    if kind == "identical":
        models = [[layer.copy() for layer in models[0]] for _ in range(clients)]
    counts = [int(rng.integers(1, 200))] * clients if rng.random() < 0.3 else \
        [int(n) for n in rng.integers(1, 200, size=clients)]
    return {"current": current, "models": models, "counts": counts, "kind": str(kind)}


def models_like(rng: np.random.Generator, current: list[np.ndarray], clients: int) -> list[list[np.ndarray]]:
    """A later round's client models: the global model plus noise, in its shapes."""
    return [[np.asarray(c + rng.standard_normal(np.shape(c)), dtype=np.float32) for c in current] for _ in range(clients)]


def fit_results(models: list, counts: list) -> list:
    status = Status(Code.OK, "")
    return [(None, FitRes(status, ndarrays_to_parameters(m), int(n), {})) for m, n in zip(models, counts)]


def plain_mean(strategy: Any) -> Any:
    """Flower's strategy with its FedAvg step on `aggregate` (float32 n_i x_i summed, then one division) rather
    than the default in-place mean (float32 x_i n_i / n summed). Both leave a residue of an ulp where every client
    agrees with the global model, which FedOpt's tiny tau turns into a step of eta; the plain one is exact for
    the small integers of the "ties" cases, so the agreement runs use it and a difference line measures the rest."""
    strategy.inplace = False
    return strategy


def flower_aggregate(strategy: Any, round_number: int, models: list, counts: list) -> list[np.ndarray]:
    parameters, _ = strategy.aggregate_fit(round_number, fit_results(models, counts), [])
    return parameters_to_ndarrays(parameters)


def updates(models: list, counts: list) -> list[ClientUpdate]:
    return [ClientUpdate(f"c{i}", [layer.copy() for layer in m], int(n)) for i, (m, n) in enumerate(zip(models, counts))]


def differences_of(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[float, float]:
    """The largest absolute difference, and that difference relative to max(1, the reference's largest value)."""
    if len(a) != len(b) or any(np.shape(x) != np.shape(y) for x, y in zip(a, b)):
        return math.inf, math.inf
    absolute = max((float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)), initial=0.0))
                    for x, y in zip(a, b)), default=0.0)
    largest = max((float(np.max(np.abs(np.asarray(y, np.float64)), initial=0.0)) for y in b), default=0.0)
    return absolute, absolute / max(1.0, largest)


def max_abs_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return differences_of(a, b)[0]


class Tally:
    """The worst differences over a strategy's cases, and the case that gave the worst relative one. Two
    float32 computations in different orders differ by a few ulps, so agreement is judged relative to the
    values' size: |ours - Flower's| <= tolerance * max(1, max |Flower's|). Where a case also has `exact`, ours'
    differences from Flower's rule computed in float64, that one may hold instead: a server optimizer's step
    multiplies Flower's float32 rounding by up to eta / tau, so ours can be nearer the rule than Flower is."""

    def __init__(self, strategy: str, tolerance: float) -> None:
        self.strategy, self.tolerance, self.cases = strategy, tolerance, 0
        self.worst_abs, self.worst_rel, self.worst_case = 0.0, 0.0, None
        self.worst_judged, self.worst_exact = 0.0, None

    def add(self, differences: tuple[float, float], case: str, exact: tuple[float, float] | None = None) -> None:
        self.cases += 1
        self.worst_abs = max(self.worst_abs, differences[0]) if not math.isnan(differences[0]) else math.inf
        self.worst_rel = max(self.worst_rel, differences[1]) if not math.isnan(differences[1]) else math.inf
        judged = differences[1] if exact is None or math.isnan(exact[1]) else min(differences[1], exact[1])
        if exact is not None:
            self.worst_exact = max(self.worst_exact or 0.0, exact[1]) if not math.isnan(exact[1]) else math.inf
        if not judged <= self.worst_judged:  # also catches inf and nan
            self.worst_judged, self.worst_case = judged, case

    def line(self) -> dict[str, Any]:
        agree = self.worst_judged <= self.tolerance
        line = {"strategy": self.strategy, "kind": "agreement", "cases": self.cases, "max_abs_diff": self.worst_abs,
                "max_rel_diff": self.worst_rel, "tolerance": self.tolerance, "agree": agree}
        if self.worst_exact is not None:
            line["max_rel_diff_from_flower_in_float64"] = self.worst_exact
        if not agree:
            line["worst_case"] = self.worst_case
        return line


# -- stateless rules ------------------------------------------------------------------------------

def one_round_rules() -> list[tuple[str, Callable[[dict], Any], Callable[[dict], Any], Callable[[dict], bool]]]:
    """(name, fedless_nb strategy, Flower strategy, whether a case applies)."""
    rules = [
        ("fedavg", lambda c: make_strategy("fedavg"), lambda c: flower.FedAvg(), lambda c: True),
        ("fedavg(inplace=False)", lambda c: make_strategy("fedavg"), lambda c: flower.FedAvg(inplace=False),
         lambda c: True),
        ("fedprox", lambda c: make_strategy("fedprox", {"proximal_mu": 0.1}),
         lambda c: flower.FedProx(proximal_mu=0.1), lambda c: True),
        ("fedmedian", lambda c: make_strategy("fedmedian"), lambda c: flower.FedMedian(), lambda c: True),
    ]
    for beta in (0.0, 0.1, 0.2, 0.25, 0.3, 0.45, 0.49):
        rules.append((f"trimmed_mean(beta={beta})", lambda c, b=beta: make_strategy("trimmed_mean", {"beta": b}),
                      lambda c, b=beta: flower.FedTrimmedAvg(beta=b), lambda c: True))
    for f in (0, 1, 2, 3):
        rules.append((f"krum(num_malicious={f})", lambda c, f=f: make_strategy("krum", {"num_malicious": f}),
                      lambda c, f=f: flower.Krum(num_malicious_clients=f), lambda c: True))
        for keep in (1, 2, 3, 5):
            rules.append((f"multi_krum(num_malicious={f}, to_keep={keep})",
                          lambda c, f=f, k=keep: make_strategy("krum", {"num_malicious": f, "to_keep": k}),
                          lambda c, f=f, k=keep: flower.Krum(num_malicious_clients=f, num_clients_to_keep=k),
                          lambda c, f=f, k=keep: k + f <= len(c["models"])))
    for f in (0, 1, 2):
        rules.append((f"bulyan(num_malicious={f})", lambda c, f=f: make_strategy("bulyan", {"num_malicious": f}),
                      lambda c, f=f: flower.Bulyan(num_malicious_clients=f, to_keep=0),  # its Krum needs to_keep
                      lambda c, f=f: len(c["models"]) >= 4 * f + 3))
    return rules


def check_one_round_rules(cases: list[dict], tallies: dict[str, Tally]) -> None:
    for name, ours, theirs, applies in one_round_rules():
        tally = tallies.setdefault(name, Tally(name, TOLERANCE["default"]))
        for index, case in enumerate(cases):
            if not applies(case):
                continue
            mine = ours(case).aggregate(1, case["current"], updates(case["models"], case["counts"]))
            reference = flower_aggregate(theirs(case), 1, case["models"], case["counts"])
            tally.add(differences_of(mine, reference), f"case {index} ({case['kind']}): {len(case['models'])} clients")


# -- server optimizers over rounds ----------------------------------------------------------------

def server_optimizers() -> list[tuple[str, dict, Callable[[list], Any], float]]:
    """(fedless_nb name, its options, Flower strategy from the initial parameters, tolerance)."""
    params = ndarrays_to_parameters
    runs = []
    for lr, momentum in ((1.0, 0.0), (0.7, 0.0), (1.0, 0.9), (0.5, 0.5), (1.3, 0.99)):
        runs.append(("fedavgm", {"server_learning_rate": lr, "server_momentum": momentum},
                     lambda w, lr=lr, m=momentum: flower.FedAvgM(initial_parameters=params(w), server_learning_rate=lr,
                                                                 server_momentum=m), TOLERANCE["rounds"]))
    settings = [{}, {"eta": 0.05, "beta_1": 0.8, "beta_2": 0.95, "tau": 1e-3},
                {"eta": 1.0, "beta_1": 0.0, "beta_2": 0.5, "tau": 0.1}, {"eta": 0.3, "beta_1": 0.99, "beta_2": 0.999}]
    flower_kind = {"fedadam": flower.FedAdam, "fedyogi": flower.FedYogi}
    for name, cls in flower_kind.items():
        for options in settings:
            # eta_l is the clients' learning rate; Flower keeps it but its aggregation never reads it
            runs.append((name, options,
                         lambda w, cls=cls, o=options: plain_mean(cls(initial_parameters=params(w), eta_l=0.37, **o)),
                         TOLERANCE["rounds"]))
    for options in ({}, {"eta": 0.3}, {"eta": 1.0, "tau": 0.01}):
        runs.append(("fedadagrad", options,
                     lambda w, o=options: plain_mean(flower.FedAdagrad(initial_parameters=params(w), **o)),
                     TOLERANCE["rounds"]))
    return runs


def check_server_optimizers(rng: np.random.Generator, count: int, tallies: dict[str, Tally]) -> None:
    for name, options, theirs, tolerance in server_optimizers():
        label = f"{name}({', '.join(f'{k}={v}' for k, v in options.items())})"
        tally = tallies.setdefault(label, Tally(label, tolerance))
        for index in range(count):
            first = random_case(rng)
            ours, reference = make_strategy(name, options), theirs([layer.copy() for layer in first["current"]])
            exact = theirs(in_float64(first["current"]))  # Flower's own rule, without its float32 rounding
            mine, worst, worst_exact = first["current"], (0.0, 0.0), (0.0, 0.0)
            for round_number in range(1, ROUNDS + 1):
                models, counts = (first["models"], first["counts"]) if round_number == 1 else \
                    (models_like(rng, mine, len(first["models"])), first["counts"])
                mine = ours.aggregate(round_number, mine, updates(models, counts))
                now = differences_of(mine, flower_aggregate(reference, round_number, models, counts))
                worst = (max(worst[0], now[0]), max(worst[1], now[1]))
                now = differences_of(mine, flower_aggregate(exact, round_number, [in_float64(m) for m in models], counts))
                worst_exact = (max(worst_exact[0], now[0]), max(worst_exact[1], now[1]))
            tally.add(worst, f"case {index}: {len(first['models'])} clients, {ROUNDS} rounds", worst_exact)


def in_float64(layers: list[np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(layer, np.float64) for layer in layers]


# -- central DP --------------------------------------------------------------------------------------

def unit_normal(loc: Any = 0.0, scale: Any = 1.0, size: Any = None) -> Any:
    """A "draw" of exactly one standard deviation above the mean: the noise's std made visible and exact."""
    return loc + scale if size is None else loc + scale * np.ones(size)


class UnitNoise(np.random.Generator):
    """A Generator whose normal draws are exactly one std (other draws, e.g. scipy's on import, stay random)."""

    def normal(self, loc: Any = 0.0, scale: Any = 1.0, size: Any = None) -> Any:
        return unit_normal(loc, scale, size)


@contextlib.contextmanager
def unit_noise() -> Iterator[None]:
    """Every numpy normal draw on both sides becomes mean + one std (Flower draws with np.random.normal,
    fedless_nb with a Generator)."""
    with mock.patch("numpy.random.normal", unit_normal), \
            mock.patch("numpy.random.default_rng", lambda *args, **kwargs: UnitNoise(np.random.PCG64(0))):
        yield


def central_dp(inner: str, clients: int, **options: Any) -> CentralDP:
    strategy = CentralDP(make_strategy(inner), **options)
    strategy.bind(RunContext("check", None, {}, clients * 2, clients))
    return strategy


def check_central_dp(cases: list[dict], tallies: dict[str, Tally]) -> None:
    fixed = tallies.setdefault("central_dp(fixed clipping)", Tally("central_dp(fixed clipping)", TOLERANCE["default"]))
    update_rule = tallies.setdefault("central_dp(adaptive: clip-norm update, mirrored)",
                                     Tally("central_dp(adaptive: clip-norm update, mirrored)", 1e-9))
    noise_rule = tallies.setdefault("central_dp(adaptive: update noise multiplier)",
                                    Tally("central_dp(adaptive: update noise multiplier)", 1e-9))
    for index, case in enumerate(cases):
        # Flower weights its inner FedAvg by sample count and divides by the clients that answered; with equal
        # counts and every sampled client answering, both are the mean of the clipped updates plus z C / m.
        current, models, clients = case["current"], case["models"], len(case["models"])
        counts = [10] * clients
        if any(max_abs_diff(m, current) == 0.0 for m in models) or any(np.ndim(layer) == 0 for layer in current):
            continue  # Flower fails on a zero update and leaves 0-d layers unclipped: see the difference lines
        for z, clip in ((0.0, 1.0), (1.3, 0.5), (0.7, 100.0), (2.0, 1e-3)):
            with unit_noise():
                mine = central_dp("fedavg", clients, noise_multiplier=z, clip_norm=clip).aggregate(
                    1, current, updates(models, counts))
                dp = flower.DifferentialPrivacyServerSideFixedClipping(flower.FedAvg(), z, clip, clients)
                dp.current_round_params = [layer.copy() for layer in current]
                reference = flower_aggregate(dp, 1, models, counts)
            fixed.add(differences_of(mine, reference), f"case {index}: z={z}, C={clip}")
        # The geometric clip-norm update without count noise. Flower counts the *clipped* updates against
        # target_clipped_quantile; fedless_nb (Andrew et al.) the unclipped ones against target_quantile, and
        # the two log-steps are exact negatives of each other when target_clipped_quantile = 1 - target_quantile.
        for target, lr, clip in ((0.5, 0.2, 1.0), (0.3, 0.5, 0.1), (0.9, 0.05, 10.0)):
            strategy = central_dp("fedavg", clients, noise_multiplier=0.0, clip_norm=clip, adaptive=True,
                                  target_quantile=target, clip_learning_rate=lr, clipped_count_stddev=0.0)
            strategy.aggregate(1, current, updates(models, counts))
            dp = flower.DifferentialPrivacyServerSideAdaptiveClipping(
                flower.FedAvg(), 0.0, clients, initial_clipping_norm=clip, target_clipped_quantile=1 - target,
                clip_norm_lr=lr, clipped_count_stddev=0.0)
            dp.current_round_params = [layer.copy() for layer in current]
            flower_aggregate(dp, 1, models, counts)
            ours_step, flower_step = math.log(strategy.clip_norm / clip), math.log(dp.clipping_norm / clip)
            update_rule.add((abs(ours_step + flower_step),) * 2, f"case {index}: target={target}, lr={lr}, C={clip}")
    for z in (0.1, 0.5, 1.0, 2.0):
        for count_stddev in (z / 2 + 0.01, z, 3 * z, 10.0):
            ours = update_noise_multiplier(z, count_stddev)
            _, theirs = compute_adaptive_noise_params(z, 10, count_stddev)
            noise_rule.add((abs(ours - theirs),) * 2, f"z={z}, clipped_count_stddev={count_stddev}")


def differences(rng: np.random.Generator) -> list[dict[str, Any]]:
    """The deliberate differences, each measured once on a small case."""
    lines = []
    case = random_case(rng, 3)
    current, models = case["current"], case["models"]

    rule = make_strategy("krum", {"num_malicious": 0, "to_keep": 5})
    reference = flower_aggregate(flower.Krum(num_malicious_clients=0, num_clients_to_keep=5), 1, models, [1, 2, 3])
    lines.append({"strategy": "multi_krum", "kind": "difference", "case": "to_keep 5 > 3 clients",
                  "fedless_nb": rule.too_few_updates(len(models)),
                  "flower_kept_mean": float(np.mean([np.mean(layer) for layer in reference])),
                  "why": "Flower's slice argsort(scores)[::-1][n - to_keep:] starts at a negative index and keeps "
                         "the to_keep - n = 2 best models; fedless_nb needs to_keep + num_malicious updates a round "
                         "(Multi-Krum keeps m <= n - f): the round is below its quorum"})

    agreeing = [np.array([0.1, 1.7, 0.5], np.float32)]
    agreeing_models = [[np.array([0.1, 1.7, 3.0], np.float32)], [np.array([0.1, 1.7, -1.0], np.float32)]]
    mine = make_strategy("fedadagrad").aggregate(1, agreeing, updates(agreeing_models, [1, 2]))
    default = flower.FedAdagrad(initial_parameters=ndarrays_to_parameters(agreeing))
    plain = plain_mean(flower.FedAdagrad(initial_parameters=ndarrays_to_parameters(agreeing)))
    lines.append({"strategy": "fedadagrad", "kind": "difference",
                  "case": "both clients equal the global model (0.1, 1.7) in 2 of 3 values, counts 1 and 2",
                  "max_abs_diff": max_abs_diff(mine, flower_aggregate(default, 1, agreeing_models, [1, 2])),
                  "max_abs_diff_flower_inplace_false": max_abs_diff(
                      mine, flower_aggregate(plain, 1, agreeing_models, [1, 2])),
                  "why": "Flower's float32 mean (in place or not) of 0.1 with counts 1 and 2 is 0.10000001; tau 1e-9 "
                         "turns that ulp into a step of eta. fedless_nb sums in float64: delta 0, no step"})

    counts = [1, 5, 50]
    with unit_noise():
        mine = central_dp("fedavg", 3, noise_multiplier=0.0, clip_norm=0.1).aggregate(1, current, updates(models, counts))
        dp = flower.DifferentialPrivacyServerSideFixedClipping(flower.FedAvg(), 0.0, 0.1, 3)
        dp.current_round_params = [layer.copy() for layer in current]
        reference = flower_aggregate(dp, 1, models, counts)
    lines.append({"strategy": "central_dp", "kind": "difference", "case": "unequal sample counts 1, 5, 50",
                  "max_abs_diff": max_abs_diff(mine, reference),
                  "why": "fedless_nb: every clipped update counts 1 / clients_per_round (the noise z C / m is "
                         "calibrated to that); Flower: the inner FedAvg weights them by sample count"})

    with unit_noise():
        mine = central_dp("fedadam", 3, noise_multiplier=1.0, clip_norm=0.1).aggregate(1, current, updates(models, [1] * 3))
        dp = flower.DifferentialPrivacyServerSideFixedClipping(
            flower.FedAdam(initial_parameters=ndarrays_to_parameters(current)), 1.0, 0.1, 3)
        dp.current_round_params = [layer.copy() for layer in current]
        reference = flower_aggregate(dp, 1, models, [1] * 3)
    lines.append({"strategy": "central_dp(fedadam)", "kind": "difference", "case": "z=1, C=0.1, 3 clients",
                  "max_abs_diff": max_abs_diff(mine, reference),
                  "why": "fedless_nb noises the clipped mean and then runs the server optimizer on it (post-"
                         "processing); Flower runs the inner strategy first and noises its output"})

    clip = 1.0
    with unit_noise():
        strategy = central_dp("fedavg", 3, noise_multiplier=1.0, clip_norm=clip, adaptive=True, clipped_count_stddev=5.0)
        mine = strategy.aggregate(1, current, updates(models, [1] * 3))
        dp = flower.DifferentialPrivacyServerSideAdaptiveClipping(
            flower.FedAvg(), 1.0, 3, initial_clipping_norm=clip, clipped_count_stddev=5.0)
        dp.current_round_params = [layer.copy() for layer in current]
        flower_aggregate(dp, 1, models, [1] * 3)
    lines.append({"strategy": "central_dp(adaptive)", "kind": "difference",
                  "case": "noise std after one round, C_0 = 1",
                  "fedless_nb_noise_clip": clip, "flower_noise_clip": dp.clipping_norm,
                  "why": "fedless_nb calibrates a round's noise to the clip norm that bounded its updates; Flower "
                         "to the norm after that round's geometric update"})

    try:
        dp = flower.DifferentialPrivacyServerSideFixedClipping(flower.FedAvg(), 1.0, 1.0, 2)
        dp.current_round_params = [layer.copy() for layer in current]
        flower_aggregate(dp, 1, [current, models[0]], [1, 1])
        outcome = "no error"
    except ZeroDivisionError as error:
        outcome = f"ZeroDivisionError: {error}"
    lines.append({"strategy": "central_dp", "kind": "difference", "case": "a client returns the global model unchanged",
                  "flower": outcome, "fedless_nb": "its update of norm 0 is left as it is"})

    scalar_current = [np.zeros(3, np.float32), np.asarray(0.0, np.float32)]
    scalar_models = [[np.ones(3, np.float32), np.asarray(10.0, np.float32)]] * 2
    mine = central_dp("fedavg", 2, noise_multiplier=0.0, clip_norm=1.0).aggregate(1, scalar_current,
                                                                                  updates(scalar_models, [1, 1]))
    dp = flower.DifferentialPrivacyServerSideFixedClipping(flower.FedAvg(), 0.0, 1.0, 2)
    dp.current_round_params = [layer.copy() for layer in scalar_current]
    reference = flower_aggregate(dp, 1, scalar_models, [1, 1])
    lines.append({"strategy": "central_dp", "kind": "difference", "case": "a 0-d layer (update [1, 1, 1] and 10, C = 1)",
                  "fedless_nb": [float(x) for x in np.concatenate([np.ravel(layer) for layer in mine])],
                  "flower": [float(x) for x in np.concatenate([np.ravel(layer) for layer in reference])],
                  "why": "Flower clips in place with `array *= factor`, which rebinds a 0-d layer's numpy scalar "
                         "instead of scaling it, so that layer stays unclipped"})

    try:
        _, theirs = compute_adaptive_noise_params(1.0, 10, None)
        outcome = f"noise multiplier {theirs}"
    except ValueError as error:
        outcome = f"ValueError: {str(error)[:60]}..."
    lines.append({"strategy": "central_dp(adaptive)", "kind": "difference",
                  "case": "clipped_count_stddev unset, z = 1, 10 clients per round",
                  "flower": outcome, "fedless_nb": f"clipped_count_stddev max(m / 20, z) = 1.0, update noise "
                                                  f"multiplier {update_noise_multiplier(1.0, 1.0):.6f}"})
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200, help="random cases per stateless rule")
    parser.add_argument("--optimizer-cases", type=int, default=40, help="multi-round runs per server optimizer setting")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.ERROR)
    rng = np.random.default_rng(args.seed)
    cases = [random_case(rng, clients) for clients in CLIENT_COUNTS] + [random_case(rng) for _ in range(args.cases)]
    tallies: dict[str, Tally] = {}
    check_one_round_rules(cases, tallies)
    check_server_optimizers(rng, args.optimizer_cases, tallies)
    check_central_dp(cases, tallies)
    print(json.dumps({"flwr": flwr.__version__, "numpy": np.__version__, "seed": args.seed}))
    failed = False
    for tally in tallies.values():
        line = tally.line()
        failed |= not line["agree"]
        print(json.dumps(line))
    for line in differences(rng):
        print(json.dumps(line))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
