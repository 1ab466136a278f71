"""Fault injection: wrap any provider so its invocations time out, crash, throttle, start slowly or
answer garbage at configured rates, the way real FaaS platforms misbehave.

Used by the tests and by researchers who study FL under faults. The faults are deterministic
under a seed: each invocation's draw is a hash of (seed, round, client, attempt), so the same
config injects the same faults into every run, and a retried invocation gets a fresh draw.

    providers: [{kind: local, workers: 2, faults: {crash: 0.1, timeout: 0.05, throttle: 0.05, seed: 1}}]

At most one failure is injected per invocation (their rates add up to at most 1); a slow cold
start is drawn independently and only delays the call.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any

from .base import InvocationError, Provider

# The failures, in the order their rates are stacked on one uniform draw.
FAILURES = ("timeout", "crash", "throttle", "garbage")
# The kinds of garbage a function can answer with; the controller must refuse each of them.
GARBAGE = ("not_an_object", "wrong_fields", "malformed")


@dataclass(frozen=True)
class FaultRates:
    """Per-invocation probabilities of each fault, and how long injected delays last (seconds)."""

    timeout: float = 0.0
    crash: float = 0.0
    throttle: float = 0.0
    garbage: float = 0.0
    slow_start: float = 0.0
    slow_start_seconds: float = 2.0
    timeout_seconds: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in (*FAILURES, "slow_start"):
            rate = getattr(self, name)
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
                raise ValueError(f"{name}: must be a rate between 0 and 1, got {rate!r}")
        for name in ("slow_start_seconds", "timeout_seconds"):
            seconds = getattr(self, name)
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
                raise ValueError(f"{name}: must be >= 0 seconds, got {seconds!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed: must be an int, got {self.seed!r}")
        total = sum(getattr(self, name) for name in FAILURES)
        if total > 1:
            raise ValueError(f"{' + '.join(FAILURES)}: the failure rates add up to {total:g}, more than 1")

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "FaultRates":
        """Rates from a config mapping; a ValueError names the offending key."""
        known = [field.name for field in dataclasses.fields(cls)]
        for key in options:
            if key not in known:
                raise ValueError(f"{key}: unknown fault setting; choose from {', '.join(known)}")
        return cls(**options)

    def draw(self, round_number: Any, client_id: Any, attempt: int) -> tuple[str | None, str | None, bool]:
        """(failure or None, garbage kind or None, slow start?) for one invocation, from the seed alone."""
        failure_draw, kind_draw, slow_draw = _uniforms(f"{self.seed}/{round_number}/{client_id}/{attempt}", 3)
        failure, edge = None, 0.0
        for name in FAILURES:
            edge += getattr(self, name)
            if failure_draw < edge:
                failure = name
                break
        garbage = GARBAGE[int(kind_draw * len(GARBAGE))] if failure == "garbage" else None
        return failure, garbage, slow_draw < self.slow_start


def _uniforms(key: str, count: int) -> list[float]:
    """`count` numbers in [0, 1) that depend only on `key` (independent of PYTHONHASHSEED and process)."""
    digest = hashlib.sha256(key.encode()).digest()
    return [int.from_bytes(digest[8 * i:8 * i + 8], "big") / 2**64 for i in range(count)]


class FaultyProvider(Provider):
    """`inner`, with faults injected before (timeout, crash, throttle, slow start) or after (garbage) its call."""

    def __init__(self, inner: Provider, rates: FaultRates) -> None:
        self.inner, self.rates = inner, rates
        self.name, self.kind = inner.name, inner.kind
        self._attempts: collections.Counter[tuple[Any, Any]] = collections.Counter()
        self.injected: collections.Counter[str] = collections.Counter()

    @property
    def secret(self) -> str | None:  # type: ignore[override]
        """The wrapped platform's run secret: its functions check the tokens and sign the results."""
        return self.inner.secret

    @property
    def invoked(self) -> int:
        """Invocations made through this provider, retries included (what the history must account for)."""
        return sum(self._attempts.values())

    async def deploy(self, bundle: Any = None) -> None:
        await self.inner.deploy(bundle)

    async def invoke(self, task: dict[str, Any]) -> dict[str, Any]:
        key = (task.get("round"), task.get("client_id"))
        attempt = self._attempts[key]
        self._attempts[key] += 1
        failure, garbage, slow = self.rates.draw(*key, attempt)
        if slow:
            self.injected["slow_start"] += 1
            await asyncio.sleep(self.rates.slow_start_seconds)
        if failure is not None:
            self.injected[failure] += 1
        if failure == "timeout":
            await asyncio.sleep(self.rates.timeout_seconds)
            raise InvocationError(f"injected fault: timed out after {self.rates.timeout_seconds:g}s", "timeout")
        if failure == "crash":
            raise InvocationError("injected fault: the function's process exited with code 137", "crash")
        if failure == "throttle":
            raise InvocationError("injected fault: 429 Too Many Requests (rate exceeded)", "throttled")
        result = await self.inner.invoke(task)
        return _garble(result, garbage) if garbage else result

    async def close(self) -> None:
        await self.inner.close()

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "faults": dataclasses.asdict(self.rates)}


def _garble(result: dict[str, Any], kind: str) -> Any:
    """A function's reply gone wrong: not an object, the wrong task's fields, or malformed values."""
    if kind == "not_an_object":
        return "Internal Server Error"
    if kind == "wrong_fields":
        return {key: value for key, value in result.items() if key not in ("update", "client_id")}
    return {**result, "num_examples": "many", "metrics": "n/a", "timings": None}
