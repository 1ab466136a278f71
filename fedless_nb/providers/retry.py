"""The retry policy remote providers share: back off on throttling and transient failures only.

A platform that says "too many requests" or fails on its own side (5xx, a dropped
connection) is asked again after an exponential, jittered wait; a request the platform
rejects as wrong (4xx validation, a missing function) fails at once, since asking again
cannot help. Each provider says which of its errors are transient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random

T = TypeVar("T")

# Throttling (429) and server-side failures; every other status is the caller's to fix.
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """At most `attempts` calls in all, waiting `initial_wait` * 2**n (capped at `max_wait`) plus jitter between them."""

    attempts: int = 5
    initial_wait: float = 0.5
    max_wait: float = 10.0


async def call_with_retries(
    call: Callable[[], Awaitable[T]], transient: Callable[[BaseException], bool], policy: RetryPolicy
) -> T:
    """`await call()`, again while it raises an error `transient` accepts; the last error is re-raised as is."""
    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.attempts),
        wait=wait_exponential(multiplier=policy.initial_wait, max=policy.max_wait) + wait_random(0, policy.initial_wait),
        retry=retry_if_exception(transient),
        reraise=True,
    )

    async def attempt() -> T:  # a coroutine function, so tenacity awaits it (a lambda would not be)
        return await call()

    return await retrying(attempt)
