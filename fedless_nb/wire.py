"""The wire contract between the controller and a function: one task in, one result out (DESIGN.md).

Both sides import this module, so it holds only the contract: pydantic models of a task and a
result, and the checks each side makes before it trusts what arrived. Each model is strict
(types as declared, finite numbers, bounds, lengths, string sizes): a reply that does not parse
is untrusted input, refused as a whole. It imports nothing from either side.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .wording import counted, noun_for

DP_SETTINGS = ("l2_norm_clip", "noise_multiplier", "num_microbatches", "sampling")
SECAGG_STAGES = ("keys", "shares", "check", "masked", "reveal")  # a secure round's stages, in the order they run
SECAGG_KEY_STAGES = ("keys", "shares", "check", "reveal")  # the stages that train nothing: they spend no privacy

MAX_ROUND = 10**9
MAX_EXAMPLES = 2**53  # an int every consumer (SQLite, float weights, JSON readers) holds exactly
MAX_SECONDS = 7 * 24 * 3600.0  # no invocation runs for a week: a larger timing is nonsense
MAX_METRICS = 64
MAX_DEPTH = 100  # JSON nesting a task may have (a Keras architecture needs about 10)

_Key = Annotated[str, Field(min_length=1, max_length=1024)]
_Name = Annotated[str, Field(min_length=1, max_length=256)]
_Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS)]
_Count = Annotated[int, Field(ge=0, le=MAX_EXAMPLES)]
_Positive = Annotated[float, Field(gt=0, le=1e12)]


class _Strict(BaseModel):
    """Strict types (no str -> int), no NaN or Inf, no unknown fields."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid", frozen=True)


class DpSettings(_Strict):
    """DP-SGD's settings in a task's train block."""

    l2_norm_clip: _Positive
    noise_multiplier: Annotated[float, Field(ge=0, le=1e12)]
    num_microbatches: Annotated[int, Field(ge=1, le=MAX_EXAMPLES)] | None = None
    sampling: Literal["poisson", "shuffle"] | None = None  # function/batching.py; None: poisson


class SecAggSettings(_Strict):
    """A secure round's stage for one client (function/secagg_stages.py): its peers and the protocol's parameters."""

    stage: Literal[SECAGG_STAGES]
    attempt: Annotated[int, Field(ge=0, le=MAX_ROUND)]
    threshold: Annotated[int, Field(ge=1, le=10**6)]
    peers: Annotated[list[_Name], Field(max_length=10**6)] = []
    dropped: Annotated[list[_Name], Field(max_length=10**6)] = []
    clipping_range: _Positive
    quantization_range: Annotated[int, Field(ge=2, le=2**32)]
    max_weight: Annotated[float, Field(ge=0, le=1e12)] = 0.0
    clip_norm: _Positive | None = None


class TrainSettings(_Strict):
    """The train settings a function understands; an unknown one means the function is older than the controller."""

    epochs: Annotated[int, Field(ge=1, le=10**6)]
    batch_size: Annotated[int, Field(ge=1, le=MAX_EXAMPLES)]
    optimizer: _Name
    learning_rate: _Positive
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] = 0
    proximal_mu: Annotated[float, Field(ge=0, le=1e12)] | None = None
    dp: DpSettings | None = None
    correction: _Key | None = None
    # Partial work: stop after this many seconds (the controller's share of the round) or this many epochs
    # (a simulated straggler) and return what was done.
    budget_seconds: Annotated[float, Field(gt=0, le=MAX_SECONDS)] | None = None
    budget_epochs: Annotated[float, Field(gt=0, le=10**6)] | None = None
    secagg: SecAggSettings | None = None  # a secure round's stage; its masked stage writes a masked update


class Task(_Strict):
    """Controller to function: what to train, from where, and the one key the function may write."""

    run_id: _Name
    round: Annotated[int, Field(ge=0, le=MAX_ROUND)]
    client_id: _Name
    model: dict[str, Any]
    weights: _Key
    data: _Key
    update: _Key
    train: TrainSettings
    store: dict[str, Any]
    token: Annotated[str, Field(max_length=16384)] | None = None
    deadline: Annotated[float, Field(gt=0)] | None = None


class Timings(_Strict):
    """Seconds the function spent on each part of the invocation, as it measured them."""

    cold_start: _Seconds = 0.0
    build: _Seconds = 0.0
    load: _Seconds = 0.0
    train: _Seconds = 0.0
    upload: _Seconds = 0.0
    total: _Seconds = 0.0


class PrivacyFacts(_Strict):
    """The function's account of its DP-SGD (a claim: the controller's accountant uses its own settings)."""

    steps: _Count
    sampling_rate: Annotated[float, Field(gt=0, le=1)]
    batch_size: Annotated[int, Field(ge=1, le=MAX_EXAMPLES)]
    num_examples: Annotated[int, Field(ge=1, le=MAX_EXAMPLES)]
    noise_multiplier: Annotated[float, Field(ge=0, le=1e12)]
    l2_norm_clip: _Positive
    microbatch_size: Annotated[int, Field(ge=1, le=MAX_EXAMPLES)]
    sampling: Literal["poisson", "shuffle"]


class SignedReply(_Strict):
    """What every function's reply says about itself: whose answer to which round it is, where its object
    is in the store (and its digest), its timings and the signature over it. Client results and the
    aggregator's partial sums (aggregate_wire.py) add their own claims."""

    run_id: _Name
    round: Annotated[int, Field(ge=0, le=MAX_ROUND)]
    client_id: _Name
    update: _Key
    update_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    timings: Timings = Timings()
    cold: bool = False
    signature: Annotated[str, Field(max_length=512)] | None = None


class Result(SignedReply):
    """Function to controller: where the update is and what the function claims about it."""

    num_examples: Annotated[int, Field(ge=1, le=MAX_EXAMPLES)]
    metrics: Annotated[dict[Annotated[str, Field(min_length=1, max_length=128)], float],
                       Field(max_length=MAX_METRICS)] = {}
    privacy: PrivacyFacts | None = None
    # The local steps taken and whether they stopped short of the planned epochs (check_progress);
    # a function older than partial work reports neither.
    steps: Annotated[int, Field(ge=1, le=MAX_EXAMPLES)] | None = None
    partial: bool | None = None


# Why a function refused a task, declared in its error reply ({"error": {..., "cause"}}; a Lambda error, which carries
# no field of ours, by its type): the controller decides by the cause, never by the message's words, which anyone may
# reword and a platform may wrap.
CANNOT_AGGREGATE = "cannot_aggregate"  # a function deployed for one client refused an aggregator's task
REFUSED = "refused"  # a function refused a bad task (PayloadError; ModelError, CodecError) before any training step
DECLARED_CAUSES = frozenset({CANNOT_AGGREGATE, REFUSED})


def declared_cause(value: Any) -> str | None:
    """`value` if it is a cause a function declares (DECLARED_CAUSES), else None: a reply is untrusted input, and an
    exception's own `cause` (a ResultError's, say) is no declaration."""
    return value if isinstance(value, str) and value in DECLARED_CAUSES else None


class PayloadError(ValueError):
    """The task is malformed or not for this function; nothing was read or written. Raised only before the function's
    first training step, so its reply declares REFUSED and privacy accounting charges nothing for it: a check that can
    fail after training raises another error."""

    cause = REFUSED


class ResultError(ValueError):
    """A result does not answer its task; `cause` is the history's name for why ("late" or "invalid"); a late one
    names the earlier round it answers (`answered_round`)."""

    def __init__(self, message: str, cause: str, answered_round: int | None = None) -> None:
        super().__init__(message)
        self.cause, self.answered_round = cause, answered_round


def make_task(*, run_id: str, round_number: int, client_id: str, model: dict[str, Any], weights: str, data: str,
              update: str, train: dict[str, Any], store: dict[str, Any], deadline: float) -> dict[str, Any]:
    """A task as the contract spells it, unsigned (`token` is set by the controller's run key)."""
    return {
        "run_id": run_id, "round": round_number, "client_id": client_id, "model": model, "weights": weights,
        "data": data, "update": update, "train": train, "store": store, "token": None, "deadline": deadline,
    }


def task_reads(task_train: dict[str, Any], weights: str, data: str, update: str) -> list[str]:
    """The store keys a task may read: the global weights, its data, its own update key (a function refuses
    a task whose update exists: a replay) and SCAFFOLD's correction when the strategy sends one."""
    correction = task_train.get("correction")
    return [weights, data, update, *([correction] if correction else [])]


def _where(location: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in location) or "the message"


def first_problem(error: ValidationError) -> str:
    """One line for the first thing a model refused: where, and why (never the whole input)."""
    detail = error.errors(include_url=False, include_input=False)[0]
    return f"{_where(detail['loc'])}: {detail['msg']}"


def check_task(payload: Any) -> Task:
    """The task, if it is one: all fields, known train settings, a well-formed DP block, before its deadline."""
    if not isinstance(payload, dict):
        raise PayloadError(f"the task must be a JSON object, got {type(payload).__name__}")
    if _depth(payload) > MAX_DEPTH:
        raise PayloadError(f"the task nests deeper than {MAX_DEPTH} levels")
    try:
        task = Task.model_validate(payload)
    except ValidationError as error:
        raise PayloadError(_task_problem(error)) from None
    if task.deadline is not None and time.time() > task.deadline:
        raise PayloadError("the task arrived after its round deadline")
    return task


def _depth(value: Any) -> int:
    """How deeply JSON data nests, counted without recursion (a hostile body may nest a million levels)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if deepest > MAX_DEPTH:
                return deepest
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _task_problem(error: ValidationError) -> str:
    details = error.errors(include_url=False, include_input=False)
    missing = [_where(d["loc"]) for d in details if d["type"] == "missing" and len(d["loc"]) == 1]
    if missing:
        return f"the task lacks {', '.join(missing)}"
    unknown = sorted(str(d["loc"][1]) for d in details if d["type"] == "extra_forbidden" and d["loc"][0] == "train"
                     and len(d["loc"]) == 2)
    if unknown:
        return (f"this function does not support the train {noun_for(len(unknown), 'setting')} "
                f"{', '.join(unknown)}; "
                "redeploy it with the fedless_nb version of the controller")
    if details[0]["loc"][:2] == ("train", "dp"):
        return f"the task's train.dp must give l2_norm_clip and noise_multiplier as numbers ({first_problem(error)})"
    return f"the task's {first_problem(error)}"


def parse_result(reply: Any, run_id: str, round_number: int, client_id: str, update: str) -> Result:
    """The reply as a Result, if it answers exactly that task; ResultError otherwise ("late" for an earlier round's)."""
    if not isinstance(reply, dict):
        raise ResultError(f"the function returned {type(reply).__name__}, not a result object", "invalid")
    answered_round = reply.get("round")
    if (reply.get("run_id") == run_id and type(answered_round) is int and answered_round < round_number
            and reply.get("client_id") == client_id):
        # an earlier round's result, delivered late: never mixed into this round
        raise ResultError(f"a late result of round {answered_round} arrived in round {round_number}", "late",
                          answered_round)
    try:
        result = Result.model_validate(reply)
    except ValidationError as error:
        raise ResultError(f"the result is malformed: {first_problem(error)}", "invalid") from None
    answered = (result.run_id, result.round, result.client_id, result.update)
    if answered != (run_id, round_number, client_id, update):
        raise ResultError(f"the result answers another task: {answered}", "invalid")
    return result



def check_progress(result: Result, planned_steps: int, allowed_steps: int | None = None) -> tuple[int, bool]:
    """The (steps, partial) a result reports, checked against the `planned_steps` the controller expects and
    the `allowed_steps` a simulated straggler's cut (its task's budget_epochs) leaves of them.

    A full update took exactly the planned steps; a partial one between 1 and the planned steps. A result
    that reports neither field (a function older than partial work) did the planned work. No claim may pass
    the cut: the accountant charges a straggler the steps its cut allows.
    """
    steps, partial = result.steps, result.partial
    if steps is None and partial is None:
        steps, partial = planned_steps, False
    elif partial is None:
        raise ResultError(f"the result reports {counted(steps, 'step')} but not whether its work is partial", "invalid")
    elif steps is None or not 1 <= steps <= planned_steps:
        raise ResultError(f"the result claims {steps!r} local steps; 1 to {planned_steps} were possible", "invalid")
    elif not partial and steps != planned_steps:
        raise ResultError(f"the result claims full work in {counted(steps, 'step')}, not the planned {planned_steps}", "invalid")
    if allowed_steps is not None and steps > allowed_steps:
        raise ResultError(f"the result claims {counted(steps, 'local step')}; its straggler cut (train.budget_epochs) allows at "
                          f"most {allowed_steps}", "invalid")
    return steps, partial
