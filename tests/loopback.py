"""A stand-in platform for the tests: an aiohttp app on 127.0.0.1 at a free port."""

from contextlib import asynccontextmanager

from aiohttp import web


@asynccontextmanager
async def serving(*routes):
    """Serve `routes` (aiohttp RouteDefs, e.g. web.post(path, handler)); yields the base URL, then shuts down."""
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    finally:
        await runner.cleanup()
