"""The student's side: one client function served from the student's kernel, on its own thread.

`StudentFunction.join` starts an aiohttp server that answers POST / with the ordinary client
step (function/serving.py) and nothing else, registers its URL with the teacher's join service
and keeps the student's own key, with which it checks every task's token: a task signed with
any other key (another classroom, another run) is refused. The student's own drawings stay in
this kernel (handed to the client step directly); a share of the teacher's dataset arrives
through the task's signed URLs. Each call is logged for the student: round, examples, time
and how the update compared to the class average (seen one round later, in the next global model).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import secrets
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from aiohttp import web

from ..function.serving import NESTED_TOO_DEEPLY, error_reply, invoke, refused_unparsed
from ..model import ModelModules, is_module_name
from ..security import new_secret
from ..store import PresignedStore, decode_arrays
from ..store.roots import StoreRoots, StoreRootsError
from ..wire import PayloadError
from .addresses import check_reaches, reachable_address, shown_address, url_host
from .errors import ClassroomError
from .roster import leave_proof
from .served_store import STORE_PATH
from .server_thread import ServerThread

TASK_LIMIT = 8 * 2**20  # bytes a task may have (the model's architecture, never its weights)
TASK_SECONDS = 30.0  # a task's body arrives within this once its headers have, or its connection is not held for it
# What a student's function tells the teacher whose model names a module the student did not allow at joining.
CLASSROOM_REMEDY = ("a student's function imports Keras's layers and the modules the student allowed when joining: "
                    "build the model from Keras's built-in layers, or have each student install {named} and join "
                    "again with %fedless_join ... {options}")


# The calls a student's function keeps, the latest, for its table: anyone in the room may call it (a refused call is
# listed too, as the student should see it), and each call redraws the table; unbounded, a loop of forged tasks grew
# it without end and made every redraw send the browser all of it.
CALLS_KEPT = 200


@dataclass
class Call:
    """One invocation of the student's function, as the student sees it."""

    round: int
    examples: int
    seconds: float
    outcome: str  # succeeded, or the reason it failed
    compared: str = ""  # the previous round's update against the class average


def _store_refusal(store: Any, roots: StoreRoots, served: str) -> str | None:
    """Why a task's store is not the join service's signed URLs (`roots`, under `served`), or None. Whoever holds the
    student's key signs tasks: a "local" store would name a folder of this machine, and URLs elsewhere would make
    this kernel call this machine's or the room's other services."""
    if found := roots.outside(store):
        return f"a classroom task reads and writes through the join service's signed URLs ({served}...) only, not {found}"
    return None


def compare_with_class(start: list[np.ndarray], mine: list[np.ndarray], aggregated: list[np.ndarray]) -> str:
    """How the student's step (start -> mine) compared to the class's (start -> aggregated): direction and size."""
    own = np.concatenate([(m - s).ravel() for m, s in zip(mine, start)])
    classes = np.concatenate([(a - s).ravel() for a, s in zip(aggregated, start)])
    norms = float(np.linalg.norm(own)) * float(np.linalg.norm(classes))
    cosine = float(own @ classes) / norms if norms else 0.0
    ratio = float(np.linalg.norm(own)) / max(float(np.linalg.norm(classes)), 1e-12)
    return f"cosine {cosine:.2f} with the class average, {ratio:.1f}x its size"


class StudentFunction:
    """A joined student's function server; `calls` lists its latest CALLS_KEPT invocations, `on_call` hears of each."""

    def __init__(self, teacher_url: str, code: str, name: str, *, host: str | None = None, port: int = 0,
                 data: tuple[np.ndarray, np.ndarray] | None = None, timeout: float = 10.0,
                 model_modules: Sequence[str] = ()) -> None:
        self.teacher_url, self.code, self.name, self.data = teacher_url.rstrip("/"), code, name, data
        if refused := [module for module in model_modules if not is_module_name(module)]:
            raise ClassroomError(f"--model-module {refused[0]!r}: give the dotted name of the installed module that "
                                 "holds the teacher's custom layers, such as my_layers")
        # Only what the student names here: the teacher, and whoever holds the student's key, cannot widen it.
        self.model_modules = ModelModules(frozenset(model_modules), CLASSROOM_REMEDY)
        self.calls: list[Call] = []
        self.on_call: Callable[[Call], None] | None = None
        self._previous: tuple[int, list[np.ndarray], list[np.ndarray]] | None = None  # round, start, mine
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fedless-student")
        self._lock = threading.Lock()
        teacher_host = urllib.parse.urlsplit(self.teacher_url).hostname
        if not teacher_host:
            raise ClassroomError(f"{teacher_url!r} is not the teacher's address: copy it from the join command")
        try:
            self._store_roots = StoreRoots.parse([self.teacher_url + STORE_PATH])
        except StoreRootsError:
            raise ClassroomError(f"{teacher_url!r} is not the teacher's address: copy it from the join command") from None
        app = web.Application(client_max_size=TASK_LIMIT)
        app.router.add_post("/", self._call)
        own_address = reachable_address(teacher_host)  # what the teacher sees a registration come from
        check_reaches(host or own_address, teacher_host)
        self._server = ServerThread(app, host or own_address, port)
        self.url = f"http://{url_host(shown_address(self._server.host, teacher_host))}:{self._server.port}/"
        self._state_secret = new_secret()  # seals a secure round's private keys; the teacher never sees it
        try:
            self._secret = self._register(code, timeout)
        except BaseException:
            self._server.stop()
            raise

    def _post(self, path: str, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        request = urllib.request.Request(self.teacher_url + path, data=json.dumps(message).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            try:
                reason = json.loads(error.read()).get("error") or error.reason
            except ValueError:
                reason = error.reason
            raise ClassroomError(f"the teacher refused: {reason}") from None
        except (urllib.error.URLError, OSError) as error:
            raise ClassroomError(f"cannot reach the teacher at {self.teacher_url}: {getattr(error, 'reason', error)}; "
                                 "check the address in the join command and that you are on the room's network") from None

    def registration(self, code: str) -> dict[str, Any]:
        """The join message: a fresh nonce and the time, so that it cannot be replayed."""
        return {"code": code, "name": self.name, "url": self.url, "nonce": secrets.token_hex(16), "sent_at": time.time(),
                "own_examples": None if self.data is None else int(len(self.data[0]))}

    def _register(self, code: str, timeout: float) -> str:
        return str(self._post("/join", self.registration(code), timeout)["secret"])

    def leave(self) -> None:
        """Tell the teacher and stop serving; the teacher's next call to this function fails at once."""
        try:
            self._post("/leave", {"name": self.name, "proof": leave_proof(self._secret, self.name)}, timeout=10)
        finally:
            self._server.stop()
            self._worker.shutdown(wait=False)

    # -- the function ------------------------------------------------------------------------
    async def _call(self, request: web.Request) -> web.Response:
        try:  # anyone in the room may connect: a body that trickles in would hold the connection for as long
            async with asyncio.timeout(TASK_SECONDS):
                body = await request.read()
        except TimeoutError:
            late = PayloadError(f"the task did not arrive within {TASK_SECONDS:g} s")
            return web.json_response(error_reply(408, late), status=408)
        status, reply = await asyncio.get_running_loop().run_in_executor(self._worker, self._invoke, body)
        return web.json_response(reply, status=status)

    def _invoke(self, body: bytes) -> tuple[int, dict[str, Any]]:
        started = time.perf_counter()
        if (refusal := refused_unparsed(body, self._secret)) is not None:
            return refusal
        try:
            task = json.loads(body)
            if not isinstance(task, dict):
                raise ValueError("not an object")
        except ValueError as error:
            return 400, error_reply(400, PayloadError(f"the request body is not a task: {error}"))
        except RecursionError:  # a few thousand nested brackets, which anyone in the room may send
            return 400, error_reply(400, PayloadError(NESTED_TOO_DEEPLY))
        if problem := _store_refusal(task.get("store"), self._store_roots, self.teacher_url + STORE_PATH):
            return 400, error_reply(400, PayloadError(problem))
        status, reply = invoke(task, secret=self._secret, state_secret=self._state_secret, data=self.data,
                               model_modules=self.model_modules)
        self._log(task, status, reply, time.perf_counter() - started)
        return status, reply

    def _log(self, task: dict[str, Any], status: int, reply: dict[str, Any], seconds: float) -> None:
        """Note the call for the student; compare last round's update with the class average when this task's
        global model is the one that update went into."""
        round_number = task["round"] if type(task.get("round")) is int else 0  # a refused task's may be any JSON
        if status != 200:
            call = Call(round_number, 0, seconds, reply.get("error", {}).get("message", "failed"))
        else:
            call = Call(round_number, int(reply["num_examples"]), seconds, "succeeded", self._compared(task))
        with self._lock:
            self.calls.append(call)
            del self.calls[:-CALLS_KEPT]
        if self.on_call is not None:
            self.on_call(call)

    def _compared(self, task: dict[str, Any]) -> str:
        try:
            store = PresignedStore.from_descriptor(task["store"])
            start = decode_arrays(store.get(task["weights"]))
            mine = decode_arrays(store.get(task["update"]))
        except Exception:  # the comparison is a courtesy: a failed read never fails the call
            return ""
        previous, self._previous = self._previous, (int(task["round"]), start, mine)
        if previous is None or previous[0] != int(task["round"]) - 1:
            return ""
        return compare_with_class(previous[1], previous[2], start)

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"round": c.round, "examples": c.examples, "seconds": round(c.seconds, 2), "outcome": c.outcome,
                     "your last update": c.compared} for c in self.calls]
