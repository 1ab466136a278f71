"""The provider interface: how the controller reaches a client function on some platform."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any

from ..errors import UserError

REPLY_LIMIT = 64 * 2**20  # an aggregator's reply lists each update it summed (up to 100,000); weights never travel in it
RESULT_REPLY_LIMIT = 2**20  # a client step's result: its fields are bounded by the wire contract to well under 64 KB
MESSAGE_LIMIT = 2000  # characters of a failure's message kept (the history records one per failed invocation)


def reply_json(data: bytes | str) -> Any:
    """A function's reply as JSON data; ValueError when it is not JSON, or nests too deeply to parse (a hostile
    reply of 100,000 opening brackets is only 200 KB, and the parser would raise RecursionError)."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("the reply nests too deeply to be a result") from None


def reply_limit_for(task: dict[str, Any], limit: int) -> int:
    """The most bytes of the reply to `task` worth reading. A client step's result is small (wire.Result), and a
    function holding its secret could otherwise answer every task with `limit` bytes of JSON, which costs the
    controller about 8 bytes of memory per byte parsed; an aggregator's reply grows with its shard."""
    from ..aggregate_wire import is_aggregate_task

    return limit if is_aggregate_task(task) else min(limit, RESULT_REPLY_LIMIT)


class ProviderSetupError(UserError):
    """A provider cannot work as configured (no such function, no role to create one, no region)."""


class InvocationError(Exception):
    """An invocation did not return a result; `cause` says why, for the history and retry decisions.

    Causes: "timeout" (the platform's per-invocation limit), "crash" (the function's process
    died), "error" (the function raised, or the platform rejected the call), "deadline" (the round
    closed first), "interrupted" (the run was torn down while it ran), "unfinished" (an asynchronous run ended
    while it ran), "throttled" (the platform still
    refused for capacity after retries), "network" (the platform could not be reached), "auth" (the function refused the task's token), "signature" (the
    result's signature or update digest did not match), "invalid" (the result does not answer its task),
    "late" (a result of an earlier round, discarded), or a cause the function declared in its reply
    (wire.DECLARED_CAUSES: "cannot_aggregate", a function deployed for one client refused an aggregator's task;
    "refused", a function refused a bad task before any training step).
    """

    def __init__(self, message: str, cause: str) -> None:
        if len(message) > MESSAGE_LIMIT:  # a function's own text: bounded before it reaches the history
            message = f"{message[:MESSAGE_LIMIT]}... ({len(message) - MESSAGE_LIMIT} more characters)"
        super().__init__(message)
        self.cause = cause


class Provider(ABC):
    """A FaaS platform, or a stand-in for one, that runs `fedless_nb.function.handler.handle` per task."""

    name: str
    kind: str
    # The secret this provider's functions hold (see security.py): tasks for them carry tokens and
    # their results must be signed. None: they run unsigned tasks. Never part of describe().
    secret: str | None = None

    async def deploy(self, bundle: Any = None) -> None:
        """Make the function callable; platforms without a deploy step need not override this."""

    @abstractmethod
    async def invoke(self, task: dict[str, Any]) -> dict[str, Any]:
        """Run one task and return the function's result; raise InvocationError when there is none."""

    @abstractmethod
    async def close(self) -> None:
        """Release every process, session and connection the provider holds."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Name, kind and sizing, recorded with the run in the history."""
