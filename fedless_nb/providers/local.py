"""The embedded local provider: a bounded pool of long-lived worker processes that behaves like FaaS.

- cold start: a worker process starts on first use, and the function reports that invocation as cold;
- warm reuse: later invocations on the same worker find their model and data already loaded;
- a concurrency limit: at most `workers` invocations run at once, the rest wait for a free worker;
- a per-invocation timeout: a worker that overruns is killed and the invocation reported failed;
- a crashed worker is replaced on the next invocation and its invocation reported failed;
- snap start, when FEDLESS_WORKER_ZYGOTE names a zygote (zygote.py): workers are forked with TensorFlow imported.

Memory therefore grows with the pool size, never with the number of clients.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import sys
import warnings
from typing import Any

from ..model import ANY_MODULE, MODEL_MODULES_VARIABLE
from ..security import CLIENT_ID_VARIABLE, SECRET_FILE_VARIABLE, SECRET_VARIABLE, new_secret
from ..state_secret import STATE_SECRET_FILE_VARIABLE, STATE_SECRET_VARIABLE
from ..store.roots import STORE_ROOTS_VARIABLE
from .base import REPLY_LIMIT, InvocationError, Provider, reply_json
from .zygote import ZYGOTE_VARIABLE, ZygoteError, fork_worker
from ..wire import declared_cause

DEFAULT_ENTRY_POINT = "fedless_nb.function.handler:handle"  # what a worker calls: the client function
# What a worker inherits: the system's basics, Python's and TensorFlow's settings, fedless's own function settings.
_WORKER_VARIABLES = re.compile(r"PATH|HOME|USER|LANG|LC_\w+|TZ|TMPDIR|VIRTUAL_ENV|PYTHON\w*|TF_\w+|OMP_\w+|KMP_\w+"
                               r"|FEDLESS_\w+")
# Never a worker's: the secrets and client id (its provider gives its own), the zygote's socket, and a deployed function's
# store roots (exported for a deploy command, they would refuse the run's own store).
_NOT_INHERITED = (SECRET_VARIABLE, SECRET_FILE_VARIABLE, STATE_SECRET_VARIABLE, STATE_SECRET_FILE_VARIABLE,
                  CLIENT_ID_VARIABLE, STORE_ROOTS_VARIABLE, ZYGOTE_VARIABLE)


def function_environment(threads: int) -> dict[str, str]:
    """Only what a function needs from the caller's environment (a worker is a function: it gets no store
    or cloud credentials, no tokens of the user's, no run secret but its provider's), with its import path
    (like multiprocessing's spawn) and quiet, lean TensorFlow on `threads` threads."""
    environment = {name: value for name, value in os.environ.items() if _WORKER_VARIABLES.fullmatch(name)
                   and name not in _NOT_INHERITED}
    environment["PYTHONPATH"] = os.pathsep.join(path for path in sys.path if path)
    environment.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    environment["TF_NUM_INTRAOP_THREADS"] = str(threads)
    environment["TF_NUM_INTEROP_THREADS"] = str(threads)
    environment["OMP_NUM_THREADS"] = str(threads)
    return environment


class _Worker:
    """One worker process and the tail of its stderr (for crash messages)."""

    def __init__(self, process: asyncio.subprocess.Process, reply_limit: int) -> None:
        self.process, self.reply_limit = process, reply_limit
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        self._drain = asyncio.ensure_future(self._drain_stderr())

    @classmethod
    async def start(cls, entry_point: str, environment: dict[str, str], reply_limit: int) -> "_Worker":
        """A new worker process: forked from the zygote FEDLESS_WORKER_ZYGOTE names (zygote.py), else a fresh
        interpreter; a zygote that does not answer is passed over with a warning."""
        zygote = os.environ.get(ZYGOTE_VARIABLE)
        if zygote:
            try:
                return cls(await fork_worker(zygote, entry_point, environment, reply_limit), reply_limit)
            except ZygoteError as error:
                warnings.warn(f"{error}; starting the worker without it (unset {ZYGOTE_VARIABLE} to stop trying)",
                              RuntimeWarning, stacklevel=2)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fedless_nb.providers.local_worker", entry_point,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=environment, limit=reply_limit,
        )
        return cls(process, reply_limit)

    async def _drain_stderr(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.stderr_tail.append(line.decode(errors="replace").rstrip())

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def call(self, task: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            self.process.stdin.write(json.dumps(task).encode() + b"\n")
            await self.process.stdin.drain()
            line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        except asyncio.TimeoutError:
            await self.kill()
            raise InvocationError(f"timed out after {timeout:g}s; the worker was stopped", "timeout") from None
        except (BrokenPipeError, ConnectionResetError):
            line = b""
        except ValueError:  # the reply overran the limit; the rest of it is still in the pipe
            await self.kill()
            raise InvocationError(f"the reply exceeded {self.reply_limit} bytes; the worker was stopped", "invalid") from None
        if not line:  # the process is gone or going: let it exit by itself so its exit code is kept
            await self.stop()
            raise InvocationError(self._crash_message(), "crash")
        try:
            reply = reply_json(line)
            if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
                raise ValueError("not a worker's reply")
        except ValueError as error:
            await self.kill()
            raise InvocationError(f"the reply is not JSON ({error}): {line[:80]!r}; the worker was stopped",
                                  "invalid") from None
        if not reply["ok"]:
            raise InvocationError(str(reply.get("error")), declared_cause(reply.get("cause")) or "error")
        return reply.get("result")

    def _crash_message(self) -> str:
        code = self.process.returncode
        last = next((line for line in reversed(self.stderr_tail) if line.strip()), "")
        return f"worker process exited with code {code}" + (f": {last}" if last else "")

    async def stop(self, grace: float = 5.0) -> None:
        """Close stdin so the worker exits by itself; kill it if it has not after `grace` seconds."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), grace)
        except asyncio.TimeoutError:
            pass
        await self.kill()

    async def kill(self) -> None:
        if self.alive:
            self.process.kill()
        await self.process.wait()
        await asyncio.wait([self._drain], timeout=1.0)


class LocalProvider(Provider):
    """FaaS on this machine: `workers` processes, each running the client step one task at a time."""

    kind = "local"

    def __init__(
        self,
        name: str = "local",
        *,
        workers: int = 2,
        timeout: float = 120.0,
        threads_per_worker: int = 1,
        entry_point: str = DEFAULT_ENTRY_POINT,
        secret: str | None = None,
        reply_limit: int = REPLY_LIMIT,
    ) -> None:
        if workers < 1:
            raise ValueError("a local provider needs at least 1 worker")
        self.name = name
        self.workers = workers
        self.timeout = timeout
        self.threads_per_worker = threads_per_worker
        self.entry_point = entry_point
        self.secret = secret or new_secret()  # fresh for each provider (the runner makes one per run); workers inherit it
        self._state_secret = new_secret()  # its workers' own (fedless_nb/state_secret.py): the run is never given it
        self.reply_limit = reply_limit
        self._slots: asyncio.LifoQueue[_Worker | None] | None = None
        self._running: set[_Worker] = set()

    def _environment(self) -> dict[str, str]:
        # Its workers are reached by the controller only (the run's own secret): they import the model's modules.
        return {**function_environment(self.threads_per_worker), SECRET_VARIABLE: self.secret,
                STATE_SECRET_VARIABLE: self._state_secret, MODEL_MODULES_VARIABLE: ANY_MODULE}

    def _pool(self) -> asyncio.LifoQueue[_Worker | None]:
        if self._slots is None:
            self._slots = asyncio.LifoQueue()  # warm workers first, like a FaaS platform
            for _ in range(self.workers):
                self._slots.put_nowait(None)
        return self._slots

    async def invoke(self, task: dict[str, Any]) -> dict[str, Any]:
        slots = self._pool()
        worker = await slots.get()
        try:
            if worker is None or not worker.alive:
                worker = await _Worker.start(self.entry_point, self._environment(), self.reply_limit)
                self._running.add(worker)
            return await worker.call(task, self.timeout)
        except asyncio.CancelledError:
            if worker is not None:
                await asyncio.shield(worker.kill())
            raise
        finally:
            if worker is not None and not worker.alive:
                self._running.discard(worker)
                worker = None
            slots.put_nowait(worker)

    async def close(self) -> None:
        """Stop every worker; the pool starts afresh if the provider is used again."""
        workers, self._running = list(self._running), set()
        await asyncio.gather(*(worker.stop() for worker in workers))
        self._slots = None

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for tests and monitoring)."""
        return [worker.process.pid for worker in self._running if worker.alive]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "workers": self.workers, "timeout": self.timeout}
