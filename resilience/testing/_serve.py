"""``serve``: any ASGI app (a vendor simulator) on a real loopback port, for tests.

uvicorn is imported when a server starts, never when :mod:`resilience.testing` is.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio

from .._clock import SYSTEM_CLOCK

__all__ = ["serve"]


@contextlib.asynccontextmanager
async def serve(
    app: Callable[..., Awaitable[None]], *, host: str = "127.0.0.1", startup_timeout: float = 10.0
) -> AsyncIterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port; yield its base URL.

    The server runs in a thread with its own asyncio event loop, so the test may
    run under asyncio or trio. Leaving the context stops the server and joins the
    thread. Needs ``uvicorn`` (the ``dev`` and ``demo`` extras)::

        async with serve(resilience_tellus.testing.simulator()) as base_url:
            async with httpx.AsyncClient(base_url=base_url) as client:
                ...
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit it: without it, headers and body go out as
        # two small writes and Nagle plus delayed ACKs add ~40 ms to every answer.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    except BaseException:
        sock.close()
        raise
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        log_level="warning",
        access_log=False,
        date_header=False,
        server_header=False,
        loop="asyncio",
        http="h11",
        ws="none",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # reported to the test below
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"resilience-serve-{port}", daemon=True)
    thread.start()
    try:
        with anyio.fail_after(startup_timeout):
            # Polling is the portable way to wait on another thread's loop from
            # either backend; it only runs while the server starts.
            while not server.started:
                if not thread.is_alive():
                    raise RuntimeError(f"uvicorn failed to start: {failure!r}")
                await SYSTEM_CLOCK.sleep(0.005)  # real time: another thread is starting
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(thread.join, startup_timeout)
            if thread.is_alive():  # pragma: no cover - a wedged connection
                server.force_exit = True
                await anyio.to_thread.run_sync(thread.join, startup_timeout)
        sock.close()
