"""An aiohttp application served from its own daemon thread and event loop.

Both sides of a classroom need a server that keeps answering while the notebook's cells run
(and while the teacher's run loop trains): the teacher's join service and each student's
function server. One thread and loop per server keeps them independent of the kernel's loops.

Anyone on the room's network can connect, so a server holds a bounded number of connections
(each is a file descriptor of the kernel it runs in, which the run's store and history need too)
and closes one that stays idle or is still sending its request's headers after IDLE_TIMEOUT
seconds (a slow-loris client); aiohttp's own default keeps an idle connection for an hour.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Coroutine

from aiohttp import web

CONNECTION_LIMIT = 256  # connections a server holds at once; one past it is closed as soon as it is accepted
ACCEPT_BACKLOG = 32  # connections accepted in one go, before the count above sees them: a burst may pass it by two
IDLE_TIMEOUT = 15.0  # seconds a connection may wait idle or spend on its request's headers


class _Closed(asyncio.Protocol):
    """A connection past the limit: closed at once, never read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()


class _BoundedSite(web.BaseSite):
    """A TCP site that serves at most `limit` connections at once (a burst may pass it by two accept backlogs)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, limit: int) -> None:
        super().__init__(runner, backlog=ACCEPT_BACKLOG)
        self._host, self._port, self._limit = host, port, limit

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None

        def connection() -> asyncio.Protocol:
            return server() if len(server.connections) < self._limit else _Closed()

        self._server = await asyncio.get_running_loop().create_server(connection, self._host, self._port,
                                                                        backlog=self._backlog)


class ServerThread:
    """`app` listening on `host`:`port` (0: a free port) until `stop()`; `port` is the bound one."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self.host = host
        self.loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(app, access_log=None, keepalive_timeout=IDLE_TIMEOUT)
        self.thread = threading.Thread(target=self.loop.run_forever, name=f"fedless-server-{host}", daemon=True)
        self.thread.start()
        try:
            self.port = self.call(self._start(host, port))
        except BaseException:
            self.loop.call_soon_threadsafe(self.loop.stop)
            raise

    async def _start(self, host: str, port: int) -> int:
        await self._runner.setup()
        site = _BoundedSite(self._runner, host, port, CONNECTION_LIMIT)
        await site.start()
        return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    @property
    def connections(self) -> int:
        """The connections the server holds now."""
        server = self._runner.server
        return 0 if server is None else len(server.connections)

    def call(self, coroutine: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        """Run `coroutine` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        """Stop listening (open connections are dropped) and end the thread."""
        if not self.loop.is_running():
            return
        self.call(self._runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
