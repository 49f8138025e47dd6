"""The loopback server of the outage benchmark: healthy, then HTTP 500, then healthy.

``benchmarks/outage.py`` starts one of these per run (``python
benchmarks/_outage_server.py --max-seconds N``) and reads the port it bound on
127.0.0.1 from its first line of output. A bare ASGI app under uvicorn (httptools
when installed), so the server's own cost stays small next to the clients'.

The client starts the clock with ``POST /_bench/start?healthy=H&outage=O``: the
answer is ``t0`` on ``time.monotonic()``, which on Linux is one clock for every
process, so the client schedules its arrivals on the same timeline. From then on
the server answers 200 before ``t0 + H``, 500 until ``t0 + H + O``, 200 after,
and counts every request it receives in 0.1 s buckets (``GET /_bench/stats``).
The ``/_bench/`` requests are never counted.

The first path segment picks the body shape: ``/tellus/...``, ``/turris/...`` and
``/derapi/...`` get that vendor's documented internal-error body (rendered by the
installed plugin, so its classifier reads it as a 500 server error), anything else
a small JSON body. Success bodies are a Tellus-style envelope with code 0, which
every classifier reads as a success. Auth headers are ignored.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

BUCKET = 0.1
"""Seconds per counting bucket."""
MAX_BUCKETS = 20_000
"""Bound on the counting buffer (2,000 s at 0.1 s): a start asking for more is cut."""

OK_BODY = json.dumps({"code": 0, "message": "OK", "data": {"id": 1}}).encode()
GENERIC_ERROR = (b"application/json", json.dumps({"error": "internal server error"}).encode())

# The code each vendor's docs give its own internal server error.
VENDOR_ERROR_CODES = {
    "tellus": "9001",
    "turris": "internal_error",
    "derapi": "derapi-internal-error",
}


def vendor_error_bodies() -> dict[str, tuple[bytes, bytes]]:
    """Each installed vendor plugin's 500 body, as (content type, bytes)."""
    bodies: dict[str, tuple[bytes, bytes]] = {}
    try:
        from resilience._loader import load_plugin
    except Exception:
        return bodies
    for vendor, code in VENDOR_ERROR_CODES.items():
        try:
            rendered = load_plugin(vendor).render_error(code, 500)
            content_type = rendered.headers.get("content-type", "application/json")
            bodies[vendor] = (content_type.encode(), rendered.content)
        except Exception:  # plugin missing or changed: the generic body still reads as a 500
            continue
    return bodies


class Counter:
    """Requests received, by 0.1 s bucket from ``t0``, split into 200s and 500s."""

    def __init__(self) -> None:
        self.t0 = float("inf")
        self.healthy_until = float("inf")
        self.outage_until = float("inf")
        self.ok: list[int] = []
        self.failed: list[int] = []
        self.before = 0
        self.after = 0

    def start(self, healthy: float, outage: float, horizon: float, lead: float) -> float:
        self.t0 = time.monotonic() + lead
        self.healthy_until = self.t0 + healthy
        self.outage_until = self.healthy_until + outage
        buckets = min(int(horizon / BUCKET) + 1, MAX_BUCKETS)
        self.ok = [0] * buckets
        self.failed = [0] * buckets
        self.before = 0
        self.after = 0
        return self.t0

    def record(self, now: float) -> bool:
        """Count one request at ``now``; whether the server is in its outage."""
        failing = self.healthy_until <= now < self.outage_until
        index = int((now - self.t0) / BUCKET) if now >= self.t0 else -1
        if index < 0:
            self.before += 1
        elif index >= len(self.ok):
            self.after += 1
        elif failing:
            self.failed[index] += 1
        else:
            self.ok[index] += 1
        return failing

    def stats(self) -> dict[str, Any]:
        return {
            "bucket": BUCKET,
            "t0": self.t0,
            "ok": self.ok,
            "failed": self.failed,
            "before": self.before,
            "after": self.after,
        }


def make_app(counter: Counter, errors: dict[str, tuple[bytes, bytes]]) -> Any:
    """The ASGI app over ``counter``."""

    async def respond(send: Send, status: int, content_type: bytes, body: bytes) -> None:
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def control(path: str, query: bytes, send: Send) -> None:
        if path == "/_bench/start":
            args = {k: float(v[0]) for k, v in parse_qs(query.decode()).items()}
            t0 = counter.start(
                healthy=args.get("healthy", 4.0),
                outage=args.get("outage", 8.0),
                horizon=args.get("horizon", 60.0),
                lead=args.get("lead", 0.2),
            )
            body = json.dumps({"t0": t0}).encode()
        elif path == "/_bench/stats":
            body = json.dumps(counter.stats()).encode()
        else:
            await respond(send, 404, b"text/plain", b"unknown control path")
            return
        await respond(send, 200, b"application/json", body)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path.startswith("/_bench/"):
            await control(path, scope.get("query_string", b""), send)
            return
        if counter.record(time.monotonic()):
            vendor = path.split("/", 2)[1] if path.count("/") >= 2 else ""
            content_type, body = errors.get(vendor, GENERIC_ERROR)
            await respond(send, 500, content_type, body)
        else:
            await respond(send, 200, b"application/json", OK_BODY)

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--max-seconds", type=float, default=300.0, help="exit on its own after this long"
    )
    args = parser.parse_args(argv)

    import uvicorn

    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say they are
    # TCP, and accepted sockets copy the listener's; with Nagle on, the body written
    # after the headers waits for the client's delayed ACK (40 ms per response).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        make_app(Counter(), vendor_error_bodies()),
        log_level="warning",
        access_log=False,
        lifespan="off",
        loop="asyncio",
        backlog=4096,
        timeout_keep_alive=60,
    )
    server = uvicorn.Server(config)
    # The server stops by itself even if the benchmark that started it dies.
    timer = threading.Timer(args.max_seconds, lambda: setattr(server, "should_exit", True))
    timer.daemon = True
    timer.start()
    print(sock.getsockname()[1], flush=True)
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
