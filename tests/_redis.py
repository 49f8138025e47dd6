"""A real ``redis-server`` for the tests and the benchmark, and a worker process.

:func:`start_server` runs its own server on a free loopback port with no
persistence (``--save "" --appendonly no``); the tests kill it, pause it
(SIGSTOP) and start it again on the same port. Without ``redis-server`` the tests
skip, saying how to install it, except under ``CI=true``, where they fail.

Run as a script, it is one worker of a fleet: ``python tests/_redis.py URL PREFIX
START SECONDS RATE`` waits until the wall-clock time ``START``, then sends (as
:data:`CALLERS` concurrent callers that reserve a slot of one shared limit, ``RATE``
a second with burst :data:`BURST`, and sleep until it) for ``SECONDS``, and prints
how many it sent and the wall-clock times of its first and last.

``python tests/_redis.py budget URL PREFIX CALLS`` is one worker of a fleet
sharing a retry budget (:func:`run_budget_workers`): it prints ``ready``, reads
the start from stdin, makes ``CALLS`` calls that all fail through
``Retry(budget=RetryBudget(store=RedisStore(...)))``, and prints the retries it
sent and the seconds it took. ``python tests/_redis.py breaker URL PREFIX ROLE
CALLS`` is one worker sharing a breaker (:func:`run_breaker_workers`).

``python tests/_redis.py token URL PREFIX BASE - SECONDS SKEW`` is one worker of a
fleet sharing a token: it prints ``ready``, reads the wall-clock start from its
stdin, then :data:`CALLERS` callers call ``BASE/v1/x`` through
``AuthRefresh(store=RedisStore(...))`` against :class:`TokenApp`, and it prints
the calls that succeeded, those that failed, and the tokens it fetched itself.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

INSTALL_HINT = (
    "redis-server is not installed: apt-get install -y redis-server (Debian/Ubuntu), "
    "brew install redis (macOS); CI installs it in .ci/run"
)


#: The shared limit's burst in :func:`run_workers`: a few slots banked, so that a
#: slot freed between two workers' polls is not lost (burst 1 loses the poll delay).
BURST = 10
#: Concurrent callers per worker process, each with a reservation outstanding.
CALLERS = 4


#: The fleet's client credentials (the tests check the secret never reaches Redis).
CLIENT_ID = "fleet-client"
SECRET = "fleet-secret-value-42"
#: Seconds between starting the workers and their common start instant.
START_MARGIN = 2.0


def find_server() -> str | None:
    """The path of ``redis-server``, or ``None``."""
    return shutil.which("redis-server")


def missing_server_message() -> tuple[bool, str]:
    """Whether a missing server must fail the run (CI), and what to say."""
    return os.environ.get("CI", "").lower() == "true", INSTALL_HINT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: Commands only a client sends (never a script): each is one round trip.
_REQUESTS = tuple(
    f"cmdstat_{name}" for name in ("eval", "script", "client", "hello", "ping", "select", "auth")
)


class RedisServer:
    """One ``redis-server`` process on loopback that a test can kill, pause and restart."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="resilience-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if self.command(b"PING") == b"+PONG":
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.01)  # waiting for a server process to come up, not a test's time
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def command(self, *words: bytes) -> bytes | None:
        """One inline command; the first line of its reply, or ``None`` when unreachable."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(b" ".join(words) + b"\r\n")
                return sock.recv(65536).split(b"\r\n", 1)[0]
        except OSError:
            return None

    def commandstats(self) -> dict[str, int]:
        """Client requests per command since the last ``CONFIG RESETSTAT`` (``INFO
        commandstats``), counted by the server: the commands a client sends
        (``EVALSHA``, ``EVAL``, ``SCRIPT``, connection setup), not those the scripts
        run inside (they are counted there too), nor ``INFO`` and ``CONFIG``."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(b"INFO commandstats\r\n")
                header = b""
                while b"\r\n" not in header:
                    header += sock.recv(65536)
                size_text, reply = header[1:].split(b"\r\n", 1)
                while len(reply) < int(size_text) + 2:
                    reply += sock.recv(65536)
        except OSError:
            return {}
        stats = {}
        for line in reply.decode().splitlines():
            name, _, rest = line.partition(":")
            if name.startswith(_REQUESTS):
                stats[name[len("cmdstat_") :]] = int(rest.split(",", 1)[0].split("=", 1)[1])
        return stats

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None:
            self.resume()
            self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def run_workers(
    url: str, prefix: str, workers: int, seconds: float, rate: float
) -> tuple[list[int], float]:
    """Start ``workers`` processes sharing one limit: the slots each was given, and
    the seconds from the first slot given to the last (whoever got them)."""
    start = time.time() + START_MARGIN  # room for every interpreter to start and connect
    processes = [
        subprocess.Popen(
            [sys.executable, __file__, url, prefix, repr(start), repr(seconds), repr(rate)],
            stdout=subprocess.PIPE,
        )
        for _ in range(workers)
    ]
    counts, firsts, lasts = [], [], []
    for process in processes:
        out, _ = process.communicate(timeout=60)
        assert process.returncode == 0
        given, first, last = out.split()[-3:]
        counts.append(int(given))
        firsts.append(float(first))
        lasts.append(float(last))
    return counts, max(lasts) - min(firsts)


class TokenApp:
    """A loopback token endpoint and API (ASGI) that counts the tokens it issues.

    ``POST /oauth2/token`` (Basic auth with :data:`CLIENT_ID` and :data:`SECRET`)
    takes 0.1 s, then issues ``tok-N`` living :attr:`expires_in` seconds.
    ``GET /v1/x`` answers 200 to a token it issued and 401 otherwise; with
    :attr:`revoke_after`, every token issued before that many seconds after the
    first one is revoked from then on.
    """

    def __init__(self, expires_in: float) -> None:
        self.expires_in = expires_in
        self.revoke_after: float | None = None
        self.issued = 0
        self.rejected = 0
        self.first: float | None = None
        self.tokens: dict[str, float] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        import asyncio
        import base64
        import json

        if scope["type"] != "http":
            return
        headers = dict(scope["headers"])
        auth = headers.get(b"authorization", b"").decode()
        now = time.monotonic()
        if scope["path"] == "/oauth2/token":
            expected = base64.b64encode(f"{CLIENT_ID}:{SECRET}".encode()).decode()
            if auth != f"Basic {expected}":
                status, body = 401, {"error": "invalid_client"}
            else:
                await asyncio.sleep(0.1)  # a token endpoint is slow: misses overlap
                self.issued += 1
                value = f"tok-{self.issued}"
                self.tokens[value] = time.monotonic()
                if self.first is None:
                    self.first = self.tokens[value]
                status = 200
                body = {
                    "access_token": value,
                    "token_type": "Bearer",
                    "expires_in": self.expires_in,
                }
        else:
            issued = self.tokens.get(auth.removeprefix("Bearer "))
            cut = (
                None
                if self.revoke_after is None or self.first is None
                else self.first + self.revoke_after
            )
            revoked = issued is not None and cut is not None and now >= cut > issued
            status = 200 if issued is not None and not revoked else 401
            if status == 401:
                self.rejected += 1
            body = {"ok": status == 200}
        data = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": data})


def run_token_workers(
    url: str, prefix: str, base: str, workers: int, seconds: float, *, skew: float
) -> list[tuple[int, int, int]]:
    """Start ``workers`` processes sharing one token: each one's (calls that
    succeeded, calls that failed, tokens it fetched)."""
    processes = [
        subprocess.Popen(
            [sys.executable, __file__, "token", url, prefix, base, "-", repr(seconds), repr(skew)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for _ in range(workers)
    ]
    # 8 interpreters starting at once on a busy machine take seconds: each says
    # when it is ready, and only then do all get the same start instant.
    for process in processes:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == b"ready"
    start = time.time() + 0.2
    for process in processes:
        assert process.stdin is not None
        process.stdin.write(f"{start!r}\n".encode())
        process.stdin.flush()  # communicate() closes it
    results = []
    for process in processes:
        out, _ = process.communicate(timeout=60)
        assert process.returncode == 0
        ok, failed, fetched = out.split()[-3:]
        results.append((int(ok), int(failed), int(fetched)))
    return results


def _token_worker(url: str, prefix: str, base: str, seconds: float, skew: float) -> None:
    import asyncio

    import httpx

    from resilience import (
        AuthRefresh,
        OAuth2ClientCredentials,
        Pipeline,
        RedisStore,
        ResilientTransport,
        TokenRefreshed,
    )

    async def main() -> tuple[int, int, int]:
        store = RedisStore(url=url, prefix=prefix, timeout=1.0)
        await store.take_slot("warmup", 0.0, 1e-6, 1000, 0.0)  # connect before the start
        fetched = []
        provider = OAuth2ClientCredentials(f"{base}/oauth2/token", CLIENT_ID, SECRET)
        pipeline = Pipeline(
            [AuthRefresh(provider, store=store, skew=skew)],
            telemetry=False,
            hooks=[lambda e: fetched.append(e) if isinstance(e, TokenRefreshed) else None],
            raise_on_failure=False,
        )
        transport = ResilientTransport(pipeline, inner=httpx.AsyncHTTPTransport())
        results = {"ok": 0, "failed": 0}
        print("ready", flush=True)
        start = float(sys.stdin.readline())
        async with httpx.AsyncClient(base_url=base, transport=transport) as client:
            await asyncio.sleep(max(0.0, start - time.time()))
            end = start + seconds

            async def caller() -> None:
                while time.time() < end:
                    response = await client.get("/v1/x")
                    results["ok" if response.status_code == 200 else "failed"] += 1
                    await asyncio.sleep(0.1)

            await asyncio.gather(*(caller() for _ in range(CALLERS)))
        await store.aclose()
        assert store.fallback_calls == 0
        return results["ok"], results["failed"], len(fetched)

    print(*asyncio.run(main()))


def _worker(url: str, prefix: str, start: float, seconds: float, rate: float) -> None:
    import asyncio

    from resilience import RedisStore

    async def main() -> tuple[int, float, float]:
        store = RedisStore(url=url, prefix=prefix, timeout=1.0)
        await store.take_slot("warmup", 0.0, 1e-6, 1000, 0.0)  # connect before the start
        await asyncio.sleep(max(0.0, start - time.time()))
        end = time.time() + seconds
        sent: list[float] = []

        async def caller() -> None:
            # As the layer does: reserve the next slot, sleep until it, send.
            while True:
                admitted, wait = await store.take_slot("shared", 0.0, 1.0 / rate, BURST, 1.0)
                if admitted:
                    await asyncio.sleep(wait)
                    now = time.time()
                    if now >= end:
                        return
                    sent.append(now)

        await asyncio.gather(*(caller() for _ in range(CALLERS)))
        await store.aclose()
        assert store.fallback_calls == 0
        return len(sent), min(sent, default=math.inf), max(sent, default=0.0)

    print(*asyncio.run(main()))


def run_budget_workers(url: str, prefix: str, workers: int, calls: int) -> list[tuple[int, float]]:
    """Start ``workers`` processes sharing one retry budget (ratio 0, floor
    :data:`BUDGET_FLOOR`), each making ``calls`` calls that all fail: each one's
    (retries it sent, seconds from its first call to its last)."""
    return [
        (int(retries), float(span))
        for retries, span in _fleet(["budget", url, prefix, str(calls)], workers)
    ]


def _fleet(args: list[str], workers: int, last: int = 2) -> list[list[bytes]]:
    """Start ``workers`` processes of ``args``; each says ``ready``, all get one start
    instant on stdin; the last words each printed."""
    processes = [
        subprocess.Popen(
            [sys.executable, __file__, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        for _ in range(workers)
    ]
    for process in processes:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == b"ready"
    start = time.time() + 0.2
    for process in processes:
        assert process.stdin is not None
        process.stdin.write(f"{start!r}\n".encode())
        process.stdin.flush()
    results = []
    for process in processes:
        out, _ = process.communicate(timeout=60)
        assert process.returncode == 0
        results.append(out.split()[-last:])
    return results


#: The fleet budget's floor in :func:`run_budget_workers` (retries a second).
BUDGET_FLOOR = 5


def _budget_worker(url: str, prefix: str, calls: int) -> None:
    import asyncio

    import httpx

    from resilience import (
        ExponentialBackoff,
        Pipeline,
        RedisStore,
        ResilientTransport,
        Retry,
        RetryBudget,
    )

    async def main() -> tuple[int, float]:
        store = RedisStore(url=url, prefix=prefix, timeout=1.0)
        await store.update_budget("warmup", 0.0, calls=0, take=False, ratio=0.0, floor=0.0)
        sent = [0]

        def fail(request: httpx.Request) -> httpx.Response:
            sent[0] += 1
            return httpx.Response(503)

        budget = RetryBudget(ratio=0.0, min_per_second=BUDGET_FLOOR, store=store, key="fleet")
        retry = Retry(max_attempts=4, backoff=ExponentialBackoff(initial=0.0), budget=budget)
        pipeline = Pipeline([retry], telemetry=False, raise_on_failure=False)
        transport = ResilientTransport(pipeline, inner=httpx.MockTransport(fail))
        print("ready", flush=True)
        start = float(sys.stdin.readline())
        async with httpx.AsyncClient(transport=transport) as client:
            await asyncio.sleep(max(0.0, start - time.time()))
            began = time.monotonic()
            for _ in range(calls):
                await client.get("https://vendor.test/v1/x")
            span = time.monotonic() - began
        await store.aclose()
        assert store.fallback_calls == 0
        return sent[0] - calls, span

    print(*asyncio.run(main()))


def run_breaker_workers(url: str, prefix: str, role: str, workers: int, calls: int) -> list[str]:
    """Start ``workers`` processes of one shared breaker, each making ``calls``
    calls to a vendor that fails (``role`` "fail") or answers (``role`` "ok"):
    each one's "<sent> <rejected> <opened>" (its own circuit's openings)."""
    return [
        " ".join(word.decode() for word in words)
        for words in _fleet(["breaker", url, prefix, role, str(calls)], workers, last=3)
    ]


def _breaker_worker(url: str, prefix: str, role: str, calls: int) -> None:
    import asyncio

    import httpx

    from resilience import (
        CircuitBreaker,
        CircuitStateChanged,
        Pipeline,
        RedisStore,
        ResilientTransport,
    )
    from resilience.errors import CircuitOpenError

    async def main() -> tuple[int, int, int]:
        store = RedisStore(url=url, prefix=prefix, timeout=1.0)
        await store.update_budget("warmup", 0.0, calls=0, take=False, ratio=0.0, floor=0.0)
        sent = [0]

        def vendor(request: httpx.Request) -> httpx.Response:
            sent[0] += 1
            return httpx.Response(503 if role == "fail" else 200)

        opened = []
        breaker = CircuitBreaker(
            store=store, consecutive_failures=3, minimum_calls=1000, break_duration=60.0
        )
        pipeline = Pipeline(
            [breaker],
            telemetry=False,
            raise_on_failure=False,
            hooks=[
                lambda e: (
                    opened.append(e)
                    if isinstance(e, CircuitStateChanged) and e.new == "open"
                    else None
                )
            ],
        )
        transport = ResilientTransport(pipeline, inner=httpx.MockTransport(vendor))
        rejected = 0
        print("ready", flush=True)
        start = float(sys.stdin.readline())
        async with httpx.AsyncClient(transport=transport) as client:
            await asyncio.sleep(max(0.0, start - time.time()))
            for _ in range(calls):
                try:
                    await client.get("https://vendor.test/v1/x")
                except CircuitOpenError:
                    rejected += 1
        await store.aclose()
        assert store.fallback_calls == 0
        return sent[0], rejected, len(opened)

    print(*asyncio.run(main()))


if __name__ == "__main__" and sys.argv[1] == "breaker":
    _breaker_worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
elif __name__ == "__main__" and sys.argv[1] == "budget":
    _budget_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
elif __name__ == "__main__" and sys.argv[1] == "token":
    _token_worker(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[6]), float(sys.argv[7]))
elif __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]))
