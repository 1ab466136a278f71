"""A deadline on a request's body, for servers that hand a function the body as a stream (the Functions Framework).

Anyone who can reach a function's URL can send headers and then trickle the body a byte at a time: the function
reads it before it can check any token, and the Functions Framework's gunicorn holds one of its few threads per
request with no timeout of its own, so a handful of such connections left the function answering nobody, for as
long as they trickled. The deadline shuts the reading side of the connection once it passes, which ends a read
blocked on it; the reply (408) still goes out on the writing side.
"""

from __future__ import annotations

import os
import socket
import threading
from types import TracebackType

from ..security import MisconfiguredError

BODY_SECONDS_VARIABLE = "FEDLESS_BODY_SECONDS"
DEFAULT_BODY_SECONDS = 30.0  # a task of a few MB arrives in well under this; a slow network's deployer raises it


def body_seconds(environment: dict[str, str] | None = None) -> float:
    """The seconds a request's body may take to arrive (FEDLESS_BODY_SECONDS); MisconfiguredError if it is no number > 0."""
    text = (os.environ if environment is None else environment).get(BODY_SECONDS_VARIABLE, "").strip()
    if not text:
        return DEFAULT_BODY_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise MisconfiguredError(f"{BODY_SECONDS_VARIABLE}={text!r} is not a number of seconds above 0: fix it where "
                                 "the function is deployed")
    return seconds


class BodyDeadline:
    """`with BodyDeadline(connection, seconds):` around reading a request's body; `expired` tells whether the deadline
    cut it short. Without a connection (a server that names none) it does nothing."""

    def __init__(self, connection: socket.socket | None, seconds: float) -> None:
        self.connection, self.seconds, self.expired = connection, seconds, False
        self._lock, self._done = threading.Lock(), False
        self._timer = threading.Timer(seconds, self._expire) if connection is not None else None

    def __enter__(self) -> "BodyDeadline":
        if self._timer is not None:
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        with self._lock:
            self._done = True
        if self._timer is not None:
            self._timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            if self._done or self.connection is None:
                return
            self.expired = True
            try:
                self.connection.shutdown(socket.SHUT_RD)
            except OSError:  # the client is gone already
                pass
