"""Snap start for local workers: fork them from a process that has already imported the function.

Most of a local worker's cold start is importing TensorFlow and Keras, seconds per process. A zygote pays
that once: it imports the function's libraries, then forks one worker per request, and each fork starts
with the import done, as AWS Lambda's SnapStart starts functions from an initialized snapshot. A forked
worker is still a fresh function process: nothing has run in the zygote (no TensorFlow context, no
invocation), it gets its provider's environment (run secret included, sent with the request), its
caller's working directory and import path, and its first invocation still reports a cold start (the
model build).

`shared_zygote()` starts one and names its socket in FEDLESS_WORKER_ZYGOTE, so every LocalProvider of the
process and of the processes it starts (terminal runs, kernels) forks its workers there: a sweep, a script
of runs, the test suite. Those workers are the zygote's children, not their controller's: the process-tree
memory (records/memory.py) of a terminal run or kernel leaves them out; unset the variable to measure one alone.

Written by hand because multiprocessing's forkserver serves only the process that started it, and cannot
give a worker the stdin, stdout and stderr pipes the local worker protocol runs on.

Protocol, one Unix-socket connection per worker: the caller sends one JSON line {"entry_point",
"environment", "cwd", "package" (its fedless_nb's directory, which must be the zygote's)} with three file
descriptors (the worker's stdin, stdout and stderr); the zygote answers {"pid": N} (or {"error": "..."})
and, when that worker exits, {"exit": code}, negative for a signal as subprocess reports it. A caller that
wants its worker killed writes "kill" on the same connection: the zygote, the worker's parent, sends the
signal, because only a parent knows that a pid still names its child (a pid the zygote has reaped may already
name another process: PIDs wrap, within minutes on a busy machine). The zygote exits when its stdin closes,
that is when whoever started it ends, and on Linux its workers are killed with it (PR_SET_PDEATHSIG); elsewhere
a worker whose zygote is gone ends when its caller closes its stdin.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import importlib
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, Iterator

ZYGOTE_VARIABLE = "FEDLESS_WORKER_ZYGOTE"
_REQUEST_LIMIT = 1 << 20
_REQUEST_SECONDS = 5.0
_PACKAGE = str(Path(__file__).resolve().parents[1])  # the fedless_nb this process runs


class ZygoteError(RuntimeError):
    """The zygote could not start a worker (or could not start itself)."""


# ---- the zygote process ----------------------------------------------------------------------------------

def _preload() -> None:
    """Import what every function imports, without running anything (no TensorFlow context, no threads)."""
    from .._tf import tensorflow

    tensorflow().keras.layers  # Keras loads lazily; touch it so the forks share it
    importlib.import_module("fedless_nb.function.handler")


class _Zygote:
    """The fork loop: requests on the listening socket, exits of children on SIGCHLD, the end on stdin EOF."""

    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.pid = os.getpid()
        self.reports: dict[int, socket.socket] = {}  # worker pid -> the connection its exit is reported on
        self.wakeup_read, self.wakeup_write = os.pipe()
        os.set_blocking(self.wakeup_read, False)
        os.set_blocking(self.wakeup_write, False)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a Python handler, so the wakeup fd is written
        signal.set_wakeup_fd(self.wakeup_write)
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ, self._accept)
        self.selector.register(self.wakeup_read, selectors.EVENT_READ, self._reap)
        self.selector.register(0, selectors.EVENT_READ, self._stdin)
        self.running = True

    def serve(self) -> None:
        while self.running:
            for key, _ in self.selector.select():
                key.data()

    def _stdin(self) -> None:
        if not os.read(0, 4096):
            self.running = False

    def _accept(self) -> None:
        connection, _ = self.listener.accept()
        connection.settimeout(_REQUEST_SECONDS)  # a caller that connects and stalls must not stall every fork
        try:
            request, fds = _receive_request(connection)
        except (OSError, ValueError) as error:
            _answer(connection, {"error": f"bad request: {error}"})
            return
        try:
            pid = os.fork()
        except OSError as error:
            pid = -1
            _answer(connection, {"error": f"fork failed: {error}"})
        if pid == 0:
            self._become_worker(request, fds, connection)  # does not return
        for fd in fds:  # the zygote keeps none of a worker's pipe ends, so its caller sees them close
            os.close(fd)
        if pid > 0 and _answer(connection, {"pid": pid}, close=False):  # else its caller is gone: nobody to report to
            self.reports[pid] = connection
            self.selector.register(connection, selectors.EVENT_READ, lambda: self._caller_says(pid, connection))

    def _caller_says(self, pid: int, connection: socket.socket) -> None:
        """A worker's caller wrote "kill" (kill the worker, if it has not been reaped) or hung up (it is gone: its
        worker ends when its stdin closes, and its exit goes unreported)."""
        try:
            said = connection.recv(64)
        except OSError:
            said = b""
        if said and pid in self.reports:  # not reaped, so the pid is still this worker's
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        elif not said:
            self.selector.unregister(connection)
            connection.close()
            if self.reports.get(pid) is connection:
                del self.reports[pid]

    def _become_worker(self, request: dict[str, Any], fds: list[int], connection: socket.socket) -> None:
        """In the child: drop the zygote's sockets and signal handling, take the caller's pipes, environment,
        directory and import path, and serve tasks as a local worker until stdin closes."""
        code = 1
        try:
            _end_with_the_zygote(self.pid)
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self.selector.close()
            for sock in (self.listener, connection, *self.reports.values()):
                sock.close()
            os.close(self.wakeup_read)
            os.close(self.wakeup_write)
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
                os.close(fd)
            os.environ.clear()
            os.environ.update(request["environment"])
            os.chdir(request["cwd"])
            caller_path = [p for p in request["environment"].get("PYTHONPATH", "").split(os.pathsep) if p]
            sys.path[:0] = [p for p in caller_path if p not in sys.path]
            import numpy

            numpy.random.seed()  # a fork copies the zygote's generator state; `random` reseeds itself at fork
            from .local_worker import main

            main(request["entry_point"])
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            with contextlib.suppress(BaseException):  # what an interpreter's exit does: TensorFlow deletes the
                atexit._run_exitfuncs()  # source files autograph wrote to the temporary directory
                sys.stderr.flush()
            os._exit(code)

    def _reap(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self.wakeup_read, 4096)
        while True:  # one SIGCHLD may stand for several exits
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            connection = self.reports.pop(pid, None)
            if connection is not None:
                self.selector.unregister(connection)
                _answer(connection, {"exit": os.waitstatus_to_exitcode(status)})


def _end_with_the_zygote(zygote_pid: int) -> None:
    """In a new worker on Linux: have the kernel kill it when the zygote, its parent, ends (as Zygote.close
    promises), so no caller ever signals a pid that may have been reused. ctypes, because the standard library
    has no prctl and the one call does not warrant a package."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != zygote_pid:  # the zygote ended before the call took effect
        os._exit(1)


def _receive_request(connection: socket.socket) -> tuple[dict[str, Any], list[int]]:
    data, fds, _, _ = socket.recv_fds(connection, _REQUEST_LIMIT, 3)
    try:
        while not data.endswith(b"\n") and len(data) < _REQUEST_LIMIT:
            more = connection.recv(_REQUEST_LIMIT)
            if not more:
                break
            data += more
        if len(fds) != 3:
            raise ValueError(f"expected 3 file descriptors, got {len(fds)}")
        request = json.loads(data)
        if not (isinstance(request, dict) and isinstance(request.get("entry_point"), str)
                and isinstance(request.get("cwd"), str) and isinstance(request.get("environment"), dict)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in request["environment"].items())):
            raise ValueError("a request gives entry_point, cwd and environment (names to strings)")
        if request.get("package") != _PACKAGE:  # a fork runs the zygote's code, which must be the caller's
            raise ValueError(f"the zygote runs fedless_nb from {_PACKAGE}, the caller from {request.get('package')}")
    except (OSError, ValueError):  # the zygote keeps no descriptor of a request it refuses
        for fd in fds:
            os.close(fd)
        raise
    return request, fds


def _answer(connection: socket.socket, message: dict[str, Any], *, close: bool = True) -> bool:
    """One JSON line to a caller, who may be gone already (nobody to tell, and no reason for the zygote to end);
    whether the connection is still open."""
    try:
        connection.sendall(json.dumps(message).encode() + b"\n")
    except OSError:
        close = True
    if close:
        connection.close()
    return not close


def serve(socket_path: str) -> None:
    """The zygote's main: preload, listen on `socket_path`, say "ready" on stdout, fork until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is for the run, not for the zygote
    _preload()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(64)
    print("ready", flush=True)
    _Zygote(listener).serve()


# ---- the caller's side -----------------------------------------------------------------------------------

class ForkedWorker:
    """A worker the zygote forked, with the parts of asyncio.subprocess.Process a LocalProvider uses
    (pid, stdin, stdout, stderr, returncode, wait, kill); its exit code comes from the zygote."""

    def __init__(self, pid: int, stdin: asyncio.StreamWriter, stdout: asyncio.StreamReader,
                 stderr: asyncio.StreamReader, report: asyncio.StreamReader, report_writer: asyncio.StreamWriter) -> None:
        self.pid, self.stdin, self.stdout, self.stderr = pid, stdin, stdout, stderr
        self.returncode: int | None = None
        self._report_writer = report_writer
        self._exited = asyncio.ensure_future(self._await_exit(report))

    async def _await_exit(self, report: asyncio.StreamReader) -> None:
        try:
            self.returncode = int(json.loads(await report.readline())["exit"])
        except (ValueError, KeyError, TypeError, ConnectionError):  # the zygote ended first, and killed the worker
            self.returncode = -signal.SIGKILL  # on Linux; elsewhere the worker ends when its stdin closes
            self.stdin.close()
        finally:
            self._report_writer.close()

    async def wait(self) -> int:
        await asyncio.shield(self._exited)
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        """Ask the zygote to kill the worker: never os.kill here, where the worker's pid may name another process
        by now (the zygote may have reaped the worker, its exit still on the way)."""
        if self.returncode is None and not self._report_writer.is_closing():
            self._report_writer.write(b"kill\n")


async def fork_worker(socket_path: str, entry_point: str, environment: dict[str, str], reply_limit: int) -> ForkedWorker:
    """A local worker running `entry_point`, forked by the zygote listening on `socket_path`."""
    loop = asyncio.get_running_loop()
    stdin_read, stdin_write = os.pipe()
    stdout_read, stdout_write = os.pipe()
    stderr_read, stderr_write = os.pipe()
    theirs, ours = (stdin_read, stdout_write, stderr_write), (stdin_write, stdout_read, stderr_read)
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.setblocking(False)
        await loop.sock_connect(connection, socket_path)
        request = json.dumps({"entry_point": entry_point, "environment": environment, "cwd": os.getcwd(),
                              "package": _PACKAGE}).encode()
        connection.setblocking(True)
        socket.send_fds(connection, [request + b"\n"], list(theirs))
        connection.setblocking(False)
        report, report_writer = await asyncio.open_unix_connection(sock=connection)
        answer = json.loads(await report.readline() or b"{}")
    except (OSError, ValueError) as error:
        connection.close()
        for fd in (*theirs, *ours):
            os.close(fd)
        raise ZygoteError(f"the zygote at {socket_path} did not answer: {error}") from None
    for fd in theirs:
        os.close(fd)
    if "pid" not in answer:
        report_writer.close()
        for fd in ours:
            os.close(fd)
        raise ZygoteError(f"the zygote at {socket_path} could not start a worker: {answer.get('error', 'no answer')}")
    stdout = await _reader(loop, stdout_read, reply_limit)
    stderr = await _reader(loop, stderr_read, 2**16)
    transport, protocol = await loop.connect_write_pipe(lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()),
                                                        os.fdopen(stdin_write, "wb", buffering=0))
    stdin = asyncio.StreamWriter(transport, protocol, None, loop)
    return ForkedWorker(int(answer["pid"]), stdin, stdout, stderr, report, report_writer)


async def _reader(loop: asyncio.AbstractEventLoop, fd: int, limit: int) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=limit)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0))
    return reader


class Zygote:
    """A running zygote process (started by `start`), its socket path, and `close()` to end it."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.socket_path = str(Path(directory) / "zygote.sock")
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls, environment: dict[str, str], timeout: float = 300.0) -> "Zygote":
        """Start a zygote with `environment` (a function's, without any run secret) and wait until it is ready."""
        # private (0700): only this user may ask for forks; under /tmp when TMPDIR is too deep for a socket's path
        # (about 100 bytes on Linux and macOS)
        zygote = cls(tempfile.mkdtemp(prefix="fedless-zygote-", dir=None if len(tempfile.gettempdir()) < 64 else "/tmp"))
        log = Path(zygote.directory) / "zygote.log"  # a file, not a pipe nobody reads: the zygote must never block on it
        with log.open("wb") as stderr:
            process = zygote.process = subprocess.Popen(
                [sys.executable, "-m", "fedless_nb.providers.zygote", zygote.socket_path],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=environment)
        assert process.stdout is not None
        try:
            ready = _readline(process.stdout, timeout)
        except TimeoutError:
            ready = b"not ready after %gs" % timeout
        if ready.strip() != b"ready":
            process.kill()
            process.wait()
            why = log.read_text(errors="replace").strip()[-2000:] or ready.decode(errors="replace")
            zygote.close()
            raise ZygoteError(f"the zygote did not start: {why}")
        return zygote

    def close(self) -> None:
        """End the zygote. Its workers end with it: their callers stop them when it is gone (they could no longer
        learn how a worker exited), and a LocalProvider starts the next ones without it."""
        assert self.process is not None, "a Zygote comes from Zygote.start"
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def _readline(stream: Any, timeout: float) -> bytes:
    """One line from a blocking pipe, or TimeoutError."""
    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)
    try:
        if not selector.select(timeout):
            raise TimeoutError
    finally:
        selector.close()
    return stream.readline()


@contextlib.contextmanager
def shared_zygote(threads_per_worker: int = 1) -> Iterator[Zygote]:
    """Start a zygote and point FEDLESS_WORKER_ZYGOTE at it for this process and the processes it starts;
    on exit, end it and restore the variable."""
    from .local import function_environment

    zygote = Zygote.start(function_environment(threads_per_worker))
    previous = os.environ.get(ZYGOTE_VARIABLE)
    os.environ[ZYGOTE_VARIABLE] = zygote.socket_path
    try:
        yield zygote
    finally:
        if previous is None:
            os.environ.pop(ZYGOTE_VARIABLE, None)
        else:
            os.environ[ZYGOTE_VARIABLE] = previous
        zygote.close()


if __name__ == "__main__":
    serve(sys.argv[1])
