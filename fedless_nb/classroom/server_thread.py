"""An aiohttp application served from its own daemon thread and event loop.

Both sides of a classroom need a server that keeps answering while the notebook's cells run
(and while the teacher's run loop trains): the teacher's join service and each student's
function server. One thread and loop per server keeps them independent of the kernel's loops.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Coroutine

from aiohttp import web


class ServerThread:
    """`app` listening on `host`:`port` (0: a free port) until `stop()`; `port` is the bound one."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self.host = host
        self.loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(app, access_log=None)
        self.thread = threading.Thread(target=self.loop.run_forever, name=f"fedless-server-{host}", daemon=True)
        self.thread.start()
        try:
            self.port = self.call(self._start(host, port))
        except BaseException:
            self.loop.call_soon_threadsafe(self.loop.stop)
            raise

    async def _start(self, host: str, port: int) -> int:
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

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
