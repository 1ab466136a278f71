"""An aiohttp application served from its own daemon thread and event loop.

Both sides of a classroom need a server that keeps answering while the notebook's cells run
(and while the teacher's run loop trains): the teacher's join service and each student's
function server. One thread and loop per server keeps them independent of the kernel's loops.

Anyone on the room's network can connect, so a server holds a bounded number of connections
(each is a file descriptor of the kernel it runs in, which the run's store and history need too),
and a bounded number from any one address, so that one student's machine cannot take them all and
lock the rest of the class out; it closes one that stays idle or is still sending its request's
headers after IDLE_TIMEOUT seconds (a slow-loris client); aiohttp's own default keeps an idle
connection for an hour.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Coroutine

from aiohttp import web

from .addresses import url_host

CONNECTION_LIMIT = 256  # connections a server holds at once; one past it is closed as soon as it is accepted
PER_ADDRESS_LIMIT = 16  # connections it holds from one address; one past it is answered 429 and closed (0: no limit)
REFUSAL_SECONDS = 1.0  # a refused connection is closed once its client is done, or after this
ACCEPT_BACKLOG = 32  # connections accepted in one go, before the count above sees them: a burst may pass it by two
IDLE_TIMEOUT = 15.0  # seconds a connection may wait idle or spend on its request's headers


def _refusal(per_address: int) -> bytes:
    """The one answer a connection past its address's limit gets, before it is closed unread."""
    text = (f"more than {per_address} connections from your address: close some and try again (a class behind one "
            "address: the teacher raises --per-address)").encode()
    return (b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(text), text))


def _address(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


class _Gate(asyncio.Protocol):
    """A new connection: handed to what the site admits it to (the server's handler, or a refusal), or closed."""

    def __init__(self, site: "_BoundedSite") -> None:
        self._site = site

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        protocol = self._site.admit(_address(transport))
        if protocol is None:
            transport.abort()
        else:
            transport.set_protocol(protocol)
            protocol.connection_made(transport)


class _Refused(asyncio.Protocol):
    """A connection past its address's limit: answered 429 at once, what it sends read and dropped, closed when its
    client is done or after REFUSAL_SECONDS (closed unread, the client would get a reset instead of the answer)."""

    def __init__(self, site: "_BoundedSite") -> None:
        self._site = site
        self._closing: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._site.refusing += 1
        transport.write(_refusal(self._site.per_address))  # type: ignore[attr-defined]
        transport.write_eof()  # type: ignore[attr-defined]
        self._closing = asyncio.get_running_loop().call_later(REFUSAL_SECONDS, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        self._site.refusing -= 1
        if self._closing is not None:
            self._closing.cancel()


class _BoundedSite(web.BaseSite):
    """A TCP site that serves at most `limit` connections at once (a burst may pass it by two accept backlogs)
    and at most `per_address` from one address (0: no such limit)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, limit: int, per_address: int) -> None:
        super().__init__(runner, backlog=ACCEPT_BACKLOG)
        self._host, self._port, self._limit, self.per_address = host, port, limit, per_address
        self.refusing = 0  # refused connections not closed yet: bounded by `limit` too

    @property
    def name(self) -> str:
        return f"http://{url_host(self._host)}:{self._port}"

    def admit(self, address: str) -> asyncio.Protocol | None:
        """What serves a new connection from `address`: the server's handler, a refusal past the address's limit,
        or None past the server's (closed unanswered)."""
        server = self._runner.server
        assert server is not None
        if len(server.connections) >= self._limit:
            return None
        if self.per_address and sum(_address(handler.transport) == address for handler in server.connections
                                    if handler.transport is not None) >= self.per_address:
            return _Refused(self) if self.refusing < self._limit else None
        return server()

    async def start(self) -> None:
        await super().start()
        self._server = await asyncio.get_running_loop().create_server(lambda: _Gate(self), self._host, self._port,
                                                                        backlog=self._backlog)


class ServerThread:
    """`app` listening on `host`:`port` (0: a free port) until `stop()`; `port` is the bound one; at most `per_address`
    connections from one address (0: no limit but the server's)."""

    def __init__(self, app: web.Application, host: str, port: int, per_address: int = PER_ADDRESS_LIMIT) -> None:
        self.host, self.per_address = host, per_address
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
        site = _BoundedSite(self._runner, host, port, CONNECTION_LIMIT, self.per_address)
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
