"""The teacher's join service: registrations, leaves, and the run's store through signed URLs.

It listens where the teacher says (`--host`, `--port`) on its own thread, so it keeps
answering while the run trains. Routes: POST /join (code, name, the student's function URL;
answers the student's own key), POST /leave, and GET/POST /store/KEY for signed URLs only (a POST is a form upload, as
to S3, within the size its URL was signed for).
It serves nothing else.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..providers.base import InvocationError
from ..providers.http import HttpProvider
from ..providers.retry import RetryPolicy
from ..rounds.events import InvocationFinished
from .address_names import NamesPerAddress, checked_limit
from .addresses import reachable_address, shown_address, url_host
from .errors import ClassroomError
from .function_hosts import FunctionHosts
from .join_limit import TooManyWrongCodes
from .roster import OWN_EXAMPLES_LIMIT, JoinCode, Roster, Student
from .served_store import STORE_PATH, ServedStore
from .server_thread import PER_ADDRESS_LIMIT, ServerThread

if TYPE_CHECKING:
    from ..experiment import ExperimentConfig

REGISTRATION_LIMIT = 4096  # bytes a join or leave message may have
MESSAGE_SECONDS = 10.0  # a join or leave message arrives within this, or the connection is not held for it
UPDATE_LIMIT = 64 * 2**20  # bytes a student's update may have


class _StudentProvider(HttpProvider):
    """A student's function, refused once the teacher removed the student (or their name joined again with another
    key): a run holds its providers from its start, so the roster is asked on every call and again on its result."""

    def __init__(self, roster: Roster, name: str, **options: Any) -> None:
        super().__init__(name, **options)
        self._roster = roster

    def _check(self) -> None:
        if not self._roster.admits(self.name, self.secret or ""):
            raise InvocationError(f"the teacher removed {self.name} from the class (or the name joined again with another key): "
                                  "their function's result is refused",
                                  "error")

    async def invoke(self, task: dict[str, Any]) -> dict[str, Any]:
        self._check()
        result = await super().invoke(task)
        self._check()
        return result


def check_options(code_minutes: float, timeout: float, per_address: int, allow_hosts: tuple[str, ...],
                  max_own_examples: int, names_per_address: int) -> None:
    """ClassroomError, one line naming the option, for a value no classroom opens with: checked before the open
    classroom is closed to open another, so that a mistyped option leaves the class open."""
    if not (math.isfinite(code_minutes) and code_minutes > 0):
        raise ClassroomError(f"--minutes {code_minutes:g}: give how many minutes the join code admits students (above 0)")
    if not (math.isfinite(timeout) and timeout > 0):
        raise ClassroomError(f"--timeout {timeout:g}: give the seconds a student's function may take per round (above 0)")
    if per_address < 0:
        raise ClassroomError(f"--per-address {per_address}: give the connections one address may hold (0: no limit)")
    FunctionHosts.parse(allow_hosts)
    if max_own_examples < 1:
        raise ClassroomError(f"--max-own-examples {max_own_examples}: give the most examples of their own a student "
                             "may train on (1 or more)")
    checked_limit(names_per_address)


class ClassroomService:
    """An open classroom: its roster, its served store and its server thread. A student's function URL must name
    the address they join from, or one of `allow_hosts` (names, *.domains, addresses, networks: function_hosts.py);
    a student training on examples of their own may claim at most `max_own_examples` (FedAvg's weight); one address
    (an IPv6 /64) may register at most `names_per_address` names (0: no limit, for a class behind one address)."""

    def __init__(self, host: str | None, port: int, code_minutes: float, store_root: str, timeout: float = 60.0,
                 per_address: int = PER_ADDRESS_LIMIT, allow_hosts: tuple[str, ...] = (),
                 max_own_examples: int = OWN_EXAMPLES_LIMIT, names_per_address: int = 0) -> None:
        check_options(code_minutes, timeout, per_address, allow_hosts, max_own_examples, names_per_address)
        self.roster = Roster(JoinCode.fresh(code_minutes), FunctionHosts.parse(allow_hosts), max_own_examples,
                             NamesPerAddress(names_per_address))
        self.timeout = timeout
        self._uploading: set[str] = set()  # keys with an upload in progress (the server's loop is its only user)
        app = web.Application(client_max_size=UPDATE_LIMIT)
        app.router.add_post("/join", self._join)
        app.router.add_post("/leave", self._leave)
        app.router.add_get(STORE_PATH + "{key:.+}", self._get)
        app.router.add_post(STORE_PATH + "{key:.+}", self._post)
        bind = host or reachable_address()
        self._server = ServerThread(app, bind, port, per_address)
        self.url = f"http://{url_host(shown_address(bind))}:{self._server.port}"
        self.store = ServedStore(store_root, self.url)

    @property
    def code(self) -> str:
        return self.roster.code.code

    @property
    def port(self) -> int:
        """The port the join service listens on (the one it picked, when asked for 0)."""
        return self._server.port

    def join_command(self) -> str:
        return f"%fedless_join {self.url} {self.code} --name YOUR_NAME"

    def close(self) -> None:
        self._server.stop()

    def wait_for_students(self, count: int, minutes: float = 5.0) -> int:
        """Wait until `count` students are present or `minutes` pass; returns how many are present."""
        deadline = time.time() + 60 * minutes
        while len(self.roster.present()) < count and time.time() < deadline:
            time.sleep(0.5)
        return len(self.roster.present())

    def __repr__(self) -> str:
        return f"ClassroomService(url={self.url!r}, code={self.code!r}, present={len(self.roster.present())})"

    # -- what a run over the class needs ------------------------------------------------------
    def provider_configs(self) -> list[dict[str, Any]]:
        """One HTTP provider per student present, one client each, in joining order (client i is student i)."""
        students = self.roster.present()
        if not students:
            raise ClassroomError("no student has joined yet: show the class the join command and wait for the roster")
        return [{"kind": "http", "name": student.name, "url": student.url, "clients": 1, "workers": 1,
                 "timeout": self.timeout, "secret_env": None} for student in students]

    def providers(self) -> dict[str, HttpProvider]:
        """The functions of the students present, each signing with that student's own key; a gone student fails fast."""
        return {s.name: self._provider(s) for s in self.roster.present()}

    def _provider(self, student: Student) -> HttpProvider:
        return _StudentProvider(self.roster, student.name, url=student.url, timeout=self.timeout, concurrency=1,
                                secret=student.secret, retry=RetryPolicy(attempts=2, initial_wait=0.2, max_wait=1.0))

    def run_options(self, config: ExperimentConfig) -> dict[str, Any]:
        """What a run of `config` (its providers from provider_configs(), client i on provider i) takes besides it: the
        store, each provider's student's function and, for those who train on their own examples, how many. Read by
        the providers' names in one look at the roster: a student who leaves or joins after the config was made
        shifts nobody's function or example count onto another client."""
        from ..runner import client_ids

        students = self.roster.named([provider.name for provider in config.providers])
        return {"store": self.store, "providers": {s.name: self._provider(s) for s in students},
                "own_data_sizes": {client_id: s.own_examples for client_id, s in zip(client_ids(config.clients), students)
                                   if s.own_examples is not None}}

    @property
    def names_per_address(self) -> int:
        """The most names one address may register (0: no limit)."""
        return self.roster.names_limit.limit

    @names_per_address.setter
    def names_per_address(self, limit: int) -> None:
        """The teacher changes the limit while the class is open (a class found behind one address: 0)."""
        self.roster.limit_names_per_address(checked_limit(limit))

    def remove(self, name: str) -> None:
        """Take a student out of the class (Roster.remove): a run in progress refuses their function's next result."""
        self.roster.remove(name)

    def observe(self, event: Any) -> None:
        """Each invocation's outcome on the roster (an observer of the run)."""
        if not isinstance(event, InvocationFinished) or event.provider not in self.roster.students:
            return
        answered = event.outcome == "succeeded"
        text = (f"round {event.round}: {event.num_examples} examples in {event.finished_at - event.started_at:.1f}s"
                if answered else f"round {event.round}: {event.outcome} ({event.cause})")
        self.roster.record_answer(event.provider, text, event.num_examples if answered else None, answered)

    # -- routes --------------------------------------------------------------------------------
    async def _message(self, request: web.Request) -> dict[str, Any]:
        body = bytearray()  # read to its end (a body may arrive in several pieces), or one byte past the limit
        try:
            async with asyncio.timeout(MESSAGE_SECONDS):
                while len(body) <= REGISTRATION_LIMIT and (chunk := await request.content.read(
                        REGISTRATION_LIMIT + 1 - len(body))):
                    body += chunk
        except TimeoutError:
            raise ClassroomError(f"the message did not arrive within {MESSAGE_SECONDS:g} s") from None
        try:
            message = json.loads(body) if len(body) <= REGISTRATION_LIMIT else None
        except (ValueError, RecursionError):  # RecursionError: a few thousand nested brackets
            message = None
        if not isinstance(message, dict):
            raise ClassroomError(f"a classroom message is a JSON object of at most {REGISTRATION_LIMIT} bytes")
        return message

    async def _join(self, request: web.Request) -> web.Response:
        try:
            student = self.roster.register(await self._message(request), request.remote or "")
        except TooManyWrongCodes as error:
            return web.json_response({"error": str(error)}, status=429, headers={"Retry-After": str(error.seconds)})
        except ClassroomError as error:
            return web.json_response({"error": str(error)}, status=403)
        return web.json_response({"name": student.name, "secret": student.secret})

    async def _leave(self, request: web.Request) -> web.Response:
        try:
            message = await self._message(request)
            self.roster.leave(str(message.get("name", "")), str(message.get("proof", "")))
        except ClassroomError as error:
            return web.json_response({"error": str(error)}, status=403)
        return web.json_response({"left": True})

    def _refusal(self, request: web.Request, method: str) -> web.Response | None:
        key = request.match_info["key"]
        problem = self.store.allows(method, key, request.query.get("expires", ""), request.query.get("signature", ""),
                                    request.query.get("limit", ""))
        return None if problem is None else web.Response(status=403, text=problem)

    async def _get(self, request: web.Request) -> web.Response:
        if (refused := self._refusal(request, "GET")) is not None:
            return refused
        path = self.store.file(request.match_info["key"])  # streamed from disk: a reader that never reads holds
        if not path.is_file():                              # a connection, not a copy of the model
            return web.Response(status=404, text="no such key")
        return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})

    async def _post(self, request: web.Request) -> web.Response:
        """The form's `file` part becomes the key's bytes, unless it is longer than the URL's signed limit."""
        if (refused := self._refusal(request, "POST")) is not None:
            return refused
        key = request.match_info["key"]
        if key in self._uploading:  # one upload per key at a time: parallel ones would each hold `limit` bytes here
            return web.Response(status=409, text=f"an upload to {key} is already in progress")
        self._uploading.add(key)
        try:  # a slow upload holds its connection until its URL expires, no longer
            async with asyncio.timeout(max(0.0, int(request.query["expires"]) - time.time())):
                return await self._upload(request, int(request.query.get("limit") or UPDATE_LIMIT))
        except TimeoutError:
            return web.Response(status=408, text="the upload did not finish before its URL expired")
        finally:
            self._uploading.discard(key)

    async def _upload(self, request: web.Request, limit: int) -> web.Response:
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None and getattr(part, "name", None) != "file":
                await part.release()
        except (ValueError, AssertionError):
            return web.Response(status=400, text="the upload is not a multipart form")
        if part is None:
            return web.Response(status=400, text="the form has no file part")
        data = bytearray()
        while chunk := await part.read_chunk():
            data += chunk
            if len(data) > limit:
                return web.Response(status=400, content_type="application/xml",  # S3's shape: the function names the cause
                                    text=f"<Error><Code>EntityTooLarge</Code><Message>the upload is over the {limit} "
                                         "bytes its URL allows</Message></Error>")
        self.store.put(request.match_info["key"], bytes(data))
        return web.Response(status=200)
