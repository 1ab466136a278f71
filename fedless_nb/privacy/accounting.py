"""Privacy accounting on the controller's side: epsilon of DP rounds, budgets and reports.

`DpRound` is one round of a DP mechanism as the controller planned it (steps, sampling, noise),
and `epsilon(rounds)` composes a whole history with dp-accounting (RDP or PLD): the reference.
`PrivacyLedger` keeps the same figure incrementally, one round at a time: per subject the RDP
vector over the accountant's orders (additive under composition) or the running composed PLD,
with each distinct round's loss computed once and shared (cached by its parameters), so a
round's accounting costs the same in round 1 and round 1,000. `ExampleLevelAccountant` runs a
ledger for DP-SGD clients in a worker thread, off the event loop, from the controller's own facts
(its DP settings and the partition sizes it wrote); a function's reported facts are only
cross-checked. With PLD, composing round by round (as a PLDAccountant fed one round at a time does)
discretizes and truncates each composition, so the figure differs from dp-accounting's one-shot
self-composition of all the steps, either way: by a relative 2e-10 at 1,000 steps, 1.5e-6 at 100,000 steps a round
(measured 2026-11-27); both are dp-accounting's pessimistic estimates, upper bounds on the same mechanism's
epsilon. RDP figures agree to float rounding.
`PrivacyReport` states the guarantee the way "How to DP-fy ML" (Ponomareva et al.
2023, Sec. 5.3) asks: epsilon at delta, accountant, unit, sampling, adjacency and parameters.
"""

from __future__ import annotations

import asyncio
import math
import threading
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from collections import Counter, OrderedDict
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import UserError
from ..wire import DECLARED_CAUSES, SECAGG_KEY_STAGES
from ..wording import counted

ACCOUNTANTS = ("rdp", "pld")
SAMPLINGS = ("poisson", "shuffle")
ADJACENCY = {"poisson": "add-or-remove-one", "shuffle": "replace-one"}
SAMPLING_DESCRIPTIONS = {
    "poisson": "Poisson (each {unit} joins each {step} independently with probability q)",
    "shuffle": "fixed-size, uniformly without replacement at each {step}",
    "fixed": "a fixed number of clients per round, uniformly without replacement",
}
PLD_DISCRETIZATION = 1e-4  # dp-accounting's PLDAccountant default
# dp-accounting's PLD of a Gaussian of noise multiplier z spans about 1 / z^2 / PLD_DISCRETIZATION values:
# 1.5 million (0.4 GB, half a minute per distinct round) at 0.1, 76 GiB (a MemoryError) at 0.001.
PLD_MIN_NOISE_MULTIPLIER = 0.1


class PrivacyBudgetExhausted(UserError):
    """The next round would spend more privacy than `target_epsilon` allows; the run stops cleanly."""


class PrivacyBudgetUnreachable(UserError):
    """`target_epsilon` is below what a single round costs, so the run would stop before training anything."""


class WeakDeltaWarning(UserWarning):
    """delta is not below 1/n: a mechanism that publishes one record in the clear meets such a delta."""


class NoPrivacyWarning(UserWarning):
    """A noise multiplier of 0: nothing is noised, so the run has no differential privacy (its epsilon is inf)."""


def warn_if_no_noise(noise_multiplier: float, key: str) -> None:
    """Say so when `noise_multiplier` is 0: DP settings without noise clip but give no privacy guarantee."""
    if noise_multiplier == 0:
        warnings.warn(f"{key} is 0: no noise is added, so this run has no differential privacy (its epsilon is inf); "
                      f"set {key} above 0 for a guarantee", NoPrivacyWarning, stacklevel=3)


def warn_if_weak_delta(delta: float, records: int, key: str, unit: str) -> None:
    """Warn when `delta` >= 1/`records` ("How to DP-fy ML", Sec. 5.3 asks delta well below 1/n)."""
    if records > 0 and delta >= 1.0 / records:
        warnings.warn(f"{key} {delta:g} is not below 1/n = 1/{records} (one {unit} of {records}): such a delta "
                      f"allows publishing one {unit} in the clear; set it well below {1.0 / records:.2g}",
                      WeakDeltaWarning, stacklevel=3)


@dataclass(frozen=True)
class DpRound:
    """One round of a subsampled Gaussian mechanism: `steps` steps, each sampling at `sampling_rate`
    from `population` records (examples, or clients for client-level DP).

    Poisson sampling is accounted under add-or-remove-one adjacency. With microbatches of more than
    one example, adding or removing one changes a microbatch's clipped gradient by up to twice the
    clip norm, so the effective noise multiplier is halved (as tensorflow-privacy's
    compute_dp_sgd_privacy_statement does). Fixed-size sampling without replacement is accounted
    under replace-one adjacency, where one record's change moves the clipped sum by up to twice
    the clip norm: the noise multiplier is halved too.
    """

    steps: int
    sampling_rate: float
    noise_multiplier: float
    l2_norm_clip: float = 1.0
    microbatch_size: int = 1
    sampling: str = "poisson"
    population: int = 0

    def __post_init__(self) -> None:
        problems = [text for bad, text in (
            (self.steps < 0, f"steps must be >= 0, got {self.steps}"),
            (not 0 <= self.sampling_rate <= 1, f"sampling_rate must be in [0, 1], got {self.sampling_rate}"),
            (not self.noise_multiplier >= 0, f"noise_multiplier must be >= 0, got {self.noise_multiplier}"),
            (self.microbatch_size < 1, f"microbatch_size must be >= 1, got {self.microbatch_size}"),
            (self.sampling not in SAMPLINGS, f"sampling must be one of {', '.join(SAMPLINGS)}, got {self.sampling!r}"),
            (self.sampling == "shuffle" and self.population < 1, "shuffle sampling needs the population size"),
        ) if bad]
        if problems:
            raise ValueError(f"DpRound: {problems[0]}")

    @property
    def effective_noise_multiplier(self) -> float:
        halved = self.sampling == "shuffle" or self.microbatch_size > 1
        return self.noise_multiplier / 2 if halved else self.noise_multiplier

    @property
    def adjacency(self) -> str:
        return ADJACENCY[self.sampling]

    def event(self) -> Any:
        """The round as a dp-accounting event: its steps as one self-composed subsampled Gaussian."""
        import dp_accounting

        gaussian = dp_accounting.GaussianDpEvent(self.effective_noise_multiplier)
        if self.sampling == "poisson":
            step = dp_accounting.PoissonSampledDpEvent(self.sampling_rate, gaussian)
        else:
            step = dp_accounting.SampledWithoutReplacementDpEvent(
                self.population, round(self.sampling_rate * self.population), gaussian)
        return dp_accounting.SelfComposedDpEvent(step, self.steps)

    @classmethod
    def from_facts(cls, facts: dict[str, Any]) -> "DpRound":
        """From function/batching.py's privacy_facts (as the controller computes them)."""
        return cls(int(facts["steps"]), float(facts["sampling_rate"]), float(facts["noise_multiplier"]),
                   float(facts.get("l2_norm_clip", 1.0)), int(facts.get("microbatch_size", 1)),
                   str(facts.get("sampling", "poisson")), int(facts.get("num_examples", 0)))


def _engine(accountant: str, adjacency: str) -> Any:
    """A fresh dp-accounting accountant for `adjacency`."""
    import dp_accounting

    if accountant not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {accountant!r}: choose one of {', '.join(ACCOUNTANTS)}")
    relation = (dp_accounting.NeighboringRelation.REPLACE_ONE if adjacency == "replace-one"
                else dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
    if accountant == "rdp":
        return dp_accounting.rdp.RdpAccountant(neighboring_relation=relation)
    if adjacency == "replace-one":
        raise ValueError("dp-accounting's PLD accountant cannot account sampling without replacement; use rdp")
    return dp_accounting.pld.PLDAccountant(relation, value_discretization_interval=PLD_DISCRETIZATION)


def _adjacency(rounds: Sequence[DpRound]) -> str:
    kinds = {r.adjacency for r in rounds}
    if len(kinds) > 1:
        raise ValueError(f"cannot compose rounds under different adjacencies: {', '.join(sorted(kinds))}")
    return kinds.pop() if kinds else "add-or-remove-one"


def epsilon(rounds: Sequence[DpRound], delta: float, accountant: str = "rdp") -> float:
    """Epsilon at `delta` of composing every round, recomposed from scratch (the reference the
    incremental `PrivacyLedger` is tested against)."""
    import dp_accounting

    active = [r for r in rounds if r.steps > 0]
    if not active:
        return 0.0
    if any(r.effective_noise_multiplier == 0 for r in active):
        return math.inf
    engine = _engine(accountant, _adjacency(active))
    if accountant == "rdp":  # RDP adds up: each distinct round's vector (_round_rdp) times its count
        from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

        total = sum(count * _round_rdp(r) for r, count in Counter(active).items())
        return float(compute_epsilon(engine.orders, total, delta)[0])
    # Equal rounds compose as one event times their count: under PLD the self-composition discretizes in its own
    # way (1.7e-9 apart from round by round over 200 rounds), at a fraction of the time, since each round's loss
    # distribution is built once.
    events = [dp_accounting.SelfComposedDpEvent(r.event(), count) for r, count in Counter(active).items()]
    return float(engine.compose(dp_accounting.ComposedDpEvent(events)).get_epsilon(delta))


def _round_rdp(round_: DpRound) -> np.ndarray:
    """The round's RDP over dp-accounting's orders, as its RdpAccountant composes it. At a noise multiplier so large
    (from about 1e5 at small sampling rates) that dp-accounting's log-space arithmetic cancels below 0 (its
    compute_epsilon then refuses the vector) or fails, the round's RDP is the un-subsampled Gaussian's,
    steps * alpha / (2 z^2): an upper bound (sampling only amplifies privacy), within float rounding of the truth."""
    engine = _engine("rdp", round_.adjacency)
    gaussian = round_.steps * np.asarray(engine.orders) / (2 * round_.effective_noise_multiplier ** 2)
    try:
        rdp = np.asarray(engine.compose(round_.event()).rdp)
    except ValueError:  # "The result of subtraction must be non-negative" (its _log_sub)
        return gaussian
    return np.where(rdp < 0, gaussian, rdp)


class _RoundLosses:
    """Each distinct round's privacy loss, computed once: an RDP vector over the accountant's orders
    or a PLD (None for a round that spends nothing, math.inf for a round without noise)."""

    def __init__(self, accountant: str) -> None:
        self.accountant = accountant
        self._losses: dict[DpRound, Any] = {}
        self._lock = threading.Lock()
        self.orders = np.asarray(_engine("rdp", "add-or-remove-one").orders) if accountant == "rdp" else None

    def __call__(self, round_: DpRound) -> Any:
        with self._lock:
            if round_ not in self._losses:
                self._losses[round_] = self._compute(round_)
            return self._losses[round_]

    def _compute(self, round_: DpRound) -> Any:
        if round_.steps <= 0 or round_.sampling_rate == 0:
            return None
        if round_.effective_noise_multiplier == 0:
            return math.inf
        if self.accountant == "rdp":
            return _round_rdp(round_)
        from dp_accounting.pld import privacy_loss_distribution as pld

        return pld.from_gaussian_mechanism(
            standard_deviation=round_.effective_noise_multiplier, sampling_prob=round_.sampling_rate,
            value_discretization_interval=PLD_DISCRETIZATION).self_compose(round_.steps)


def _extended(history: tuple[tuple[DpRound, int], ...], round_: DpRound,
              count: int = 1) -> tuple[tuple[DpRound, int], ...]:
    """`history` (runs of identical rounds, in order) with `count` more `round_`s."""
    if history and history[-1][0] == round_:
        return (*history[:-1], (round_, history[-1][1] + count))
    return (*history, (round_, count))


@dataclass
class _Subject:
    """One subject's composed loss and what it is made of (runs of identical rounds, in order)."""

    total: Any = None  # RDP vector or PLD; None before any round
    private: bool = True
    history: tuple[tuple[DpRound, int], ...] = ()

    @property
    def rounds(self) -> int:
        return sum(count for _, count in self.history)

    @property
    def steps(self) -> int:
        return sum(r.steps * count for r, count in self.history)

    @property
    def last(self) -> DpRound | None:
        return self.history[-1][0] if self.history else None


class PrivacyLedger:
    """Per subject (a client, or the run), the composition of its rounds so far, one round at a time.

    Adding a round adds its cached RDP vector (or composes its cached PLD) into the subject's
    total, exactly as dp-accounting's accountants do when they compose the whole history, so the
    incremental epsilon equals `epsilon(history)`. Not thread-safe: one thread updates it.
    """

    def __init__(self, delta: float, accountant: str = "rdp") -> None:
        self.delta, self.accountant = delta, accountant
        self.losses = _RoundLosses(accountant)
        self.orders = self.losses.orders
        self.subjects: dict[str, _Subject] = {}
        # Composed totals by history: subjects with the same rounds (e.g. equal partitions, equal
        # participation) share one composition. Bounded, since a PLD total can be megabytes.
        self._totals: OrderedDict[tuple[tuple[DpRound, int], ...], tuple[Any, bool]] = OrderedDict()
        self.shared_histories = 256

    def add(self, subject: str, round_: DpRound, count: int = 1) -> None:
        """Compose `count` more `round_`s into the subject's total (a checkpoint's run of equal rounds in one call)."""
        state = self.subjects.setdefault(subject, _Subject())
        if state.last is not None and state.last.adjacency != round_.adjacency:
            raise ValueError(f"{subject}: cannot compose rounds under different adjacencies")
        history = _extended(state.history, round_, count)
        if history in self._totals:  # another subject already composed this exact history
            self._totals.move_to_end(history)
            state.total, state.private = self._totals[history]
        else:
            state.total, state.private = self._compose(state, round_, count)
            self._totals[history] = (state.total, state.private)
            if len(self._totals) > self.shared_histories:
                self._totals.popitem(last=False)
        state.history = history

    def _compose(self, state: _Subject, round_: DpRound, count: int = 1) -> tuple[Any, bool]:
        loss = self.losses(round_)
        if loss is None:
            return state.total, state.private
        if isinstance(loss, float):  # math.inf: a round without noise
            return state.total, False
        total = state.total
        if total is None:  # dp-accounting's accountants start from zeros (RDP) or the identity (PLD)
            from dp_accounting.pld import privacy_loss_distribution as pld

            total = np.zeros_like(loss) if self.accountant == "rdp" else \
                pld.identity(value_discretization_interval=PLD_DISCRETIZATION)
        for _ in range(count):  # one round at a time, as `count` calls of add compose them: the same bits
            total = total + loss if self.accountant == "rdp" else total.compose(loss)
        return total, state.private

    def _epsilon(self, total: Any, private: bool) -> float:
        if not private:
            return math.inf
        if total is None:
            return 0.0
        if self.accountant == "rdp":
            from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

            return float(compute_epsilon(self.orders, total, self.delta)[0])
        return float(total.get_epsilon_for_delta(self.delta))

    def epsilon(self, subject: str) -> float:
        state = self.subjects.get(subject, _Subject())
        return self._epsilon(state.total, state.private)

    def projected_epsilon(self, subject: str, round_: DpRound) -> float:
        """Epsilon after one more `round_`: the subject's state plus one round, nothing recomposed."""
        return self._epsilon(*self._compose(self.subjects.get(subject, _Subject()), round_))

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps: each subject's runs of rounds (replayed in order on load)."""
        return {subject: [[asdict(r), count] for r, count in s.history] for subject, s in self.subjects.items()}

    def load_state(self, state: dict[str, Any]) -> None:
        """Replay a checkpoint's rounds in their order: the same sums as the run that wrote it, each run of equal
        rounds in one call (subjects with the same runs share their composition, however long the run was)."""
        self.subjects = {}
        for subject, runs in state.items():
            for round_dict, count in runs:
                self.add(subject, DpRound(**round_dict), int(count))


@dataclass(frozen=True)
class PrivacyReport:
    """A DP guarantee with everything needed to interpret it ("How to DP-fy ML", Sec. 5.3)."""

    epsilon: float
    delta: float
    accountant: str
    granularity: str  # "example-level" | "client-level"
    adjacency: str = "add-or-remove-one"
    sampling: str = "poisson"
    noise_multiplier: float = 0.0
    clip_norm: float = 0.0
    adaptive_clipping: bool = False  # clip_norm is then the last round's, as the history's clip-norm column shows
    steps: int = 0
    sampling_rate: float = 0.0
    # client-level: the rounds noised; example-level: the client's releases, each invocation that may have trained
    # (a round's, and each retried attempt's too), which the report words "over N releases"
    rounds: int = 0
    subject: str = ""

    @property
    def unit(self) -> str:
        return "example" if self.granularity == "example-level" else "client"

    @property
    def step(self) -> str:
        """What the mechanism runs once per: a DP-SGD step, or a round for client-level DP (its steps are rounds)."""
        return "step" if self.granularity == "example-level" else "round"

    def __str__(self) -> str:
        who = f" for {self.subject}" if self.subject else ""
        sampling = SAMPLING_DESCRIPTIONS.get(self.sampling, self.sampling).format(unit=self.unit, step=self.step)
        clipping = f"clip norm {self.clip_norm:g}" + (" in the last round (adaptive)" if self.adaptive_clipping else "")
        rounds = "" if self.step == "round" else f" over {counted(self.rounds, 'release')}"
        return (
            f"{self.granularity} DP{who}: epsilon = {self.epsilon:.3f} at delta = {self.delta:g} "
            f"({self.accountant.upper()} accountant, unit: one {self.unit}, {self.adjacency} adjacency, "
            f"sampling {sampling}); noise multiplier {self.noise_multiplier:g}, {clipping}, "
            f"{counted(self.steps, self.step)} at sampling rate {self.sampling_rate:.4g}{rounds}"
        )

    def to_dict(self) -> dict[str, Any]:
        """The report's fields and its unit. Client-level DP runs its mechanism once a round, so its count is `rounds`
        alone: no DP-SGD step is behind it (its `steps` field, the same number, only words `str`)."""
        fields = {**self.__dict__, "unit": self.unit}
        if self.step == "round":
            del fields["steps"]
        return fields


# A failed invocation's causes that show its function never trained: it refused the task's token before reading
# anything ("auth"), the platform never ran it ("throttled"), or the function declared why it refused the task
# (wire.DECLARED_CAUSES). Any other failure may have trained and written its update first: a timeout, a crash, a
# deadline the controller stopped waiting at, a lost connection, an error raised after the upload.
UNTRAINED_CAUSES = frozenset({"auth", "throttled", *DECLARED_CAUSES})


def may_have_trained(outcome: str | None, cause: str | None, stage: str | None) -> bool:
    """Whether an invocation (its outcome, cause and secure-round stage, as events and the history give them) may have
    trained on its client's data and written its update to the store, where whoever reads the store (the server's
    operator, the store's provider) sees it: a succeeded one, a late reply (discarded), and a failed one unless its
    cause shows it never trained (UNTRAINED_CAUSES). A secure round's key stages (keys, shares, reveal) never train."""
    if stage in SECAGG_KEY_STAGES:
        return False
    return outcome in ("succeeded", "discarded") or (outcome == "failed" and cause not in UNTRAINED_CAUSES)


def charged(outcome: str | None, cause: str | None, stage: str | None, decided: bool | None) -> bool:
    """Whether the accountant charges an invocation: the controller's decision where it made one (`decided`, the event's
    and the history's `charged`: once per invocation, a late reply only where nothing of its round was charged);
    else (an event made elsewhere, a history from before the column) `may_have_trained`, a late reply never (the
    invocation it answers was charged when it ended)."""
    if decided is not None:
        return decided
    return outcome != "discarded" and may_have_trained(outcome, cause, stage)


StragglerSteps = Callable[[str, float], int]  # (client, its task's budget_epochs) -> the steps that cut allows it


class ExampleLevelAccountant:
    """Per client, the DP-SGD rounds it took part in and their epsilon at `delta`.

    `planned` is each client's round as the controller makes it (its DP settings, its partition
    size); `expected_facts` the privacy facts a function must report for it. An observer of the
    controller's events: each invocation that may have trained (`charged`: succeeded, or failed in a way that
    may have trained and written its update, such as a timeout; each attempt of a retried one on its own)
    adds its planned round to its client's ledger, in a worker thread: DP-SGD on the clients protects against
    whoever reads the store, so every update that may have reached it counts, not only the published ones. `fits` answers whether a client may train once more, in the round a
    round's draw gives it (its planned round, or a straggler's with its cut), without exceeding
    `target_epsilon`; `allows` whether its cheapest next round does (the cut one where a draw may cut it,
    `straggler_cut`): who may be selected before the draw. Reads wait for queued work (usually
    microseconds: events are cached); the event loop awaits `settled()` instead.

    A simulated straggler (the `stragglers` option) is charged the steps its cut allows
    (`straggler_steps(client, budget_epochs)`, the cut its invocation event carries), not its planned
    ones. That is exact and safe: the cut is drawn from the config's seed and the partition sizes,
    before any example is read, so the mechanism released is a shorter run fixed in advance. A real
    time budget's stop (train.budget_seconds, the round's deadline) stays charged as planned: how many
    steps fit in the time depends on the secret Poisson batch sizes, so the count taken is itself
    data-dependent, and the planned steps bound it. On resume, the attempts the checkpoint does not count
    (a round published before the crash and redone, an interrupted round whose updates the resume clears, the calls
    in flight when the controller was killed) are charged from the history's write-ahead record as they were
    charged, or as ones that may have trained where they never finished, each with the cut it had (a history from
    before that column: as planned; runner._released_after).
    """

    def __init__(self, delta: float, accountant: str = "rdp", target_epsilon: float | None = None, *,
                 expected_facts: dict[str, dict[str, Any]] | None = None,
                 straggler_steps: StragglerSteps | None = None, straggler_cut: float | None = None) -> None:
        self.delta, self.accountant, self.target_epsilon = delta, accountant, target_epsilon
        self.expected_facts = dict(expected_facts or {})
        self.straggler_steps = straggler_steps
        self.planned = {client: DpRound.from_facts(facts) for client, facts in self.expected_facts.items()}
        # The cuts a client's next round may have: none (its planned round) and the one a straggler draw may give it
        self.cheapest_cut = straggler_cut if straggler_steps is not None else None
        self._next_cuts = (None,) if self.cheapest_cut is None else (None, self.cheapest_cut)
        for noise in {r.noise_multiplier for r in self.planned.values()}:
            warn_if_no_noise(noise, "train.dp.noise_multiplier")
        if self.planned:  # n: the examples the model is trained on, every client's (a mechanism that publishes each
            # with probability delta leaks delta * n of them; the smallest client's n was the most lenient test)
            warn_if_weak_delta(delta, sum(r.population for r in self.planned.values()), "train.dp.delta", "example")
        self.ledger = PrivacyLedger(delta, accountant)
        self.skipped: dict[int, list[str]] = {}
        self._epsilon: dict[str, float] = {}
        self._projected: dict[str, dict[float | None, float]] = {}  # client -> cut -> epsilon after that round
        self._fresh_projection: dict[DpRound, float] = {}  # clients with no round yet share their projection
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="fedless-accountant")
        self._pending: Future[Any] | None = None

    def __call__(self, event: Any) -> None:
        if charged(getattr(event, "outcome", None), getattr(event, "cause", None), getattr(event, "stage", None),
                   getattr(event, "charged", None)):
            self.charge(event.client_id, getattr(event, "budget_epochs", None))

    def charge(self, client_id: str, budget_epochs: float | None = None) -> None:
        """Add an invocation that may have trained to the client's ledger (one an event reports, or one recorded after
        the checkpoint a resumed run restarts from): its planned round, or with a simulated straggler's cut
        (`budget_epochs`) the shorter one that cut allows."""
        if client_id in self.planned:
            self._pending = self._worker.submit(self._add, client_id, self._taken(client_id, budget_epochs))

    def _taken(self, client_id: str, budget_epochs: float | None) -> DpRound:
        """The client's planned round, or the shorter one a straggler's cut (`budget_epochs`) allows."""
        planned = self.planned[client_id]
        if budget_epochs is None or self.straggler_steps is None:
            return planned
        return replace(planned, steps=self.straggler_steps(client_id, budget_epochs))

    def _add(self, client_id: str, taken: DpRound) -> None:
        self.ledger.add(client_id, taken)
        self._epsilon[client_id] = self.ledger.epsilon(client_id)
        self._project(client_id)

    def _project(self, client_id: str) -> None:
        """Keep the client's epsilon after each round it may be given next (the budget's questions), from its state."""
        if self.target_epsilon is not None and client_id in self.planned:
            self._projected[client_id] = {cut: self.ledger.projected_epsilon(client_id, self._taken(client_id, cut))
                                          for cut in self._next_cuts}

    def check_result(self, client_id: str, result: dict[str, Any]) -> str | None:
        """Why a result's reported privacy facts cannot be accepted (they differ from the controller's), or None."""
        expected, claimed = self.expected_facts.get(client_id), result.get("privacy")
        if expected is None:
            return f"{client_id} has no DP-SGD round planned (too few examples for its microbatches)"
        if claimed != expected:
            return f"its reported privacy facts {claimed} differ from the controller's {expected}"
        return None

    def settle(self) -> None:
        """Wait until every queued round is in the ledger."""
        if self._pending is not None:
            self._pending.result()

    async def settled(self) -> None:
        """`settle` for the event loop: waits without blocking it."""
        await asyncio.wrap_future(self._worker.submit(lambda: None))

    async def round_metrics_async(self, round_number: int) -> dict[str, float]:
        await self.settled()
        return self.round_metrics(round_number)

    def close(self) -> None:
        self._worker.shutdown(wait=True)

    def epsilon(self, client_id: str) -> float:
        self.settle()
        return self._epsilon.get(client_id, 0.0)

    def projected_epsilon(self, client_id: str, budget_epochs: float | None = None) -> float | None:
        """Epsilon after one more round: the planned one, or the shorter one a straggler's cut (`budget_epochs`)
        allows; None when the client has no planned round."""
        self.settle()
        if budget_epochs in self._projected.get(client_id, {}):
            return self._projected[client_id][budget_epochs]
        if client_id not in self.planned:
            return None
        next_round = self._taken(client_id, budget_epochs)
        if client_id in self.ledger.subjects:
            return self.ledger.projected_epsilon(client_id, next_round)
        if next_round not in self._fresh_projection:
            self._fresh_projection[next_round] = self.ledger.projected_epsilon(client_id, next_round)
        return self._fresh_projection[next_round]

    def check_reachable(self, stop_run: bool = False) -> None:
        """Refuse a `target_epsilon` that a single round already exceeds for every client (or, when the run
        stops at the first exhausted client, for any): the run would end before it trained anything."""
        if self.target_epsilon is None or not self.planned:
            return
        first = {client: self.projected_epsilon(client, self.cheapest_cut) or 0.0 for client in self.planned}
        over = [epsilon for epsilon in first.values() if epsilon > self.target_epsilon]
        if over and (stop_run or len(over) == len(first)):
            who, cost = ("every client", min(first.values())) if len(over) == len(first) else (
                f"{counted(len(over), 'client')}, and on_budget: stop_run ends the run there", max(over))
            raise PrivacyBudgetUnreachable(
                f"train.dp.target_epsilon {self.target_epsilon:g} is below the epsilon of one round for {who} "
                f"(one round spends {cost:.3g}): raise train.dp.target_epsilon or train.dp.noise_multiplier, "
                "or lower train.epochs")

    def fits(self, client_id: str, budget_epochs: float | None = None) -> bool:
        """Whether the client stays within `target_epsilon` after one more round: the planned one, or the shorter one
        a straggler's cut (`budget_epochs`) allows, which is what the round's draw will charge it."""
        if self.target_epsilon is None:
            return True
        projected = self.projected_epsilon(client_id, budget_epochs)
        return projected is None or projected <= self.target_epsilon

    def allows(self, client_id: str) -> bool:
        """Whether the client may be selected: its cheapest next round (its cut one, where a draw may cut it) fits."""
        return self.fits(client_id, self.cheapest_cut)

    def round_metrics(self, round_number: int) -> dict[str, float]:
        """The run's worst-case and mean epsilon so far, for the history's "privacy" scope."""
        self.settle()
        values = list(self._epsilon.values())
        metrics = {"epsilon_max": max(values), "epsilon_mean": sum(values) / len(values)} if values else {}
        metrics["delta"] = self.delta
        metrics["clients_skipped"] = float(len(self.skipped.get(round_number, [])))
        return metrics

    def report(self, client_id: str) -> PrivacyReport:
        self.settle()
        subject = self.ledger.subjects.get(client_id)
        last = (subject.last if subject else None) or self.planned.get(client_id) or DpRound(0, 0.0, 0.0)
        return PrivacyReport(
            epsilon=self.epsilon(client_id), delta=self.delta, accountant=self.accountant,
            granularity="example-level", adjacency=last.adjacency, sampling=last.sampling,
            noise_multiplier=last.noise_multiplier, clip_norm=last.l2_norm_clip,
            steps=subject.steps if subject else 0, sampling_rate=last.sampling_rate,
            rounds=subject.rounds if subject else 0, subject=f"the examples of {client_id}",
        )

    def worst_case(self) -> PrivacyReport | None:
        """The report of the client with the largest epsilon (the run's guarantee for every example)."""
        self.settle()
        if not self.ledger.subjects:
            return None
        return self.report(max(self.ledger.subjects, key=lambda client_id: self._epsilon[client_id]))

    def state(self) -> dict[str, Any]:
        self.settle()
        return {"ledger": self.ledger.state()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.settle()
        self.ledger.load_state(state.get("ledger", {}))
        for client_id in self.ledger.subjects:
            self._epsilon[client_id] = self.ledger.epsilon(client_id)
            self._project(client_id)
