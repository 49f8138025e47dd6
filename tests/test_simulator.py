"""The simulator toolkit: fault plans, routing, tokens, rate limits, records, serve()."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from resilience.errors import ConfigurationError
from resilience.testing import (
    Fault,
    FaultPlan,
    LimitState,
    Outage,
    RateLimit,
    SimRequest,
    SimResponse,
    Simulator,
    Slowness,
    TokenCheck,
    VirtualClock,
    route,
    serve,
)

pytestmark = pytest.mark.anyio

BASE = "http://toy.test"


class ToySimulator(Simulator):
    """A vendor of two endpoints, whose errors are ``{"err": code}``."""

    vendor = "toy"
    default_token_ttl = 100.0
    default_rate_limits = (RateLimit(limit=3, window=60.0, methods={"POST"}, name="write"),)
    outage_code = "down"
    not_found_code = "missing"

    def render_error(self, code: str, status: int | None, request: SimRequest) -> SimResponse:
        return SimResponse.json(status or 500, {"err": code}, code=code)

    def render_rate_limited(self, request: SimRequest, state: LimitState) -> SimResponse:
        return SimResponse.json(
            429, {"err": "busy", "wait": state.retry_after, "reset": state.reset_at}, code="busy"
        )

    def reject_token(self, request: SimRequest, check: TokenCheck) -> SimResponse:
        return SimResponse.json(401, {"err": check.state}, code=check.state)

    @route("POST", "/token", auth=False)
    async def token(self, request: SimRequest) -> SimResponse:
        body = request.json() or {}
        if not self.credentials_match(body.get("id"), body.get("secret")):
            return SimResponse.json(401, {"err": "credentials"}, code="credentials")
        value, life = self.issue_token(body["id"])
        return SimResponse.json(200, {"token": value, "life": life})

    @route("GET", "/things/{thing_id}")
    async def get_thing(self, request: SimRequest, thing_id: str) -> SimResponse:
        return SimResponse.json(200, {"id": thing_id, "params": dict(request.params)})

    @route("POST", "/things")
    async def create_thing(self, request: SimRequest) -> SimResponse:
        return SimResponse.json(201, {"created": request.json()})


async def _token(client: httpx.AsyncClient) -> str:
    response = await client.post("/token", json={"id": "sim-client", "secret": "sim-secret"})
    assert response.status_code == 200
    return str(response.json()["token"])


class Harness:
    """A simulator and an in-process client with a token."""

    def __init__(self, plan: FaultPlan | None = None, **kwargs: Any) -> None:
        self.clock = VirtualClock()
        self.sim = ToySimulator(plan=plan, clock=self.clock, **kwargs)
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.sim), base_url=BASE)
        self.token = ""

    async def __aenter__(self) -> Harness:
        await self.client.__aenter__()
        self.token = await _token(self.client)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.__aexit__(*exc)

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        return await self.client.get(path, headers=headers, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        return await self.client.post(path, headers=headers, **kwargs)


# ---- routing and records ---------------------------------------------------------------


async def test_routing_and_record() -> None:
    """Path parameters reach the handler; every request is recorded with its answer."""
    async with Harness() as h:
        ok = await h.get("/things/42?x=1", headers={"Idempotency-Key": "k1"})
        assert ok.json() == {"id": "42", "params": {"thing_id": "42"}}
        assert (await h.get("/nowhere")).json() == {"err": "missing"}
        assert (await h.client.delete("/things/1")).status_code == 405
    first, second, third, fourth = h.sim.received
    assert (first.method, first.path, first.status, first.fault) == ("POST", "/token", 200, None)
    assert "secret" not in repr(first)
    assert (second.path, second.query, second.idempotency_key) == ("/things/42", "x=1", "k1")
    assert (third.code, fourth.status) == ("missing", 405)
    assert h.sim.requests_to("GET", "/things/*") == [second]


async def test_replayed_finds_identical_non_idempotent_requests() -> None:
    """The same POST body twice without an idempotency key is a replay."""
    async with Harness() as h:
        await h.post("/things", json={"n": 1})
        await h.post("/things", json={"n": 2})
        await h.post("/things", json={"n": 1})
        await h.post("/things", json={"n": 1}, headers={"Idempotency-Key": "k"})
    replays = h.sim.replayed()
    assert len(replays) == 1
    assert json.loads(replays[0].body) == {"n": 1}


async def test_date_header_follows_the_clock() -> None:
    """The Date header is the simulator's epoch plus the clock's elapsed time."""
    clock = VirtualClock()
    sim = ToySimulator(clock=clock, epoch=1_700_000_000)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url=BASE) as c:
        clock.advance(3600)
        response = await c.get("/nowhere")
    assert response.headers["date"] == "Tue, 14 Nov 2023 23:13:20 GMT"
    assert sim.wall() == 1_700_003_600


async def test_oversized_body_and_lifespan() -> None:
    """Bodies over 10 MiB are refused; lifespan messages are answered."""
    sim = ToySimulator(clock=VirtualClock())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url=BASE) as c:
        response = await c.post("/things", content=b"x" * (10 * 1024 * 1024 + 1))
    assert response.status_code == 413

    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: Any) -> None:
        sent.append(dict(message))

    await sim({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    await sim({"type": "websocket"}, receive, send)  # ignored


# ---- tokens ---------------------------------------------------------------------------


async def test_tokens_expire_on_the_clock() -> None:
    """A token is valid for its life on the simulator's clock, then expired."""
    async with Harness() as h:
        assert (await h.get("/things/1")).status_code == 200
        h.clock.advance(99)
        assert (await h.get("/things/1")).status_code == 200
        h.clock.advance(2)
        assert (await h.get("/things/1")).json() == {"err": "expired"}
        assert (await h.client.get("/things/1")).json() == {"err": "missing"}
        bad = {"Authorization": "Bearer a.b.c"}
        assert (await h.client.get("/things/1", headers=bad)).json() == {"err": "invalid"}
        forged = h.token[:-2] + ("AA" if not h.token.endswith("AA") else "BB")
        forged_auth = {"Authorization": f"Bearer {forged}"}
        assert (await h.client.get("/things/1", headers=forged_auth)).json() == {"err": "invalid"}
    assert h.sim.tokens_issued == 1


@pytest.mark.parametrize("ttl", [0, 0.5, 0.999, -1.0, float("nan"), float("inf"), "60"])
def test_plan_token_ttl_below_a_second_is_refused(ttl: Any) -> None:
    """A token life under one second (or not a number) is refused when the plan is
    built, naming token_ttl: it would be announced as ``expires_in: 0`` and be
    expired when issued."""
    with pytest.raises(ConfigurationError, match="FaultPlan: token_ttl"):
        FaultPlan(token_ttl=ttl)


@pytest.mark.parametrize("ttl", [1, 1.5, 7])
@pytest.mark.parametrize("issued_at", [0.0, 0.3, 0.7, 0.999])
async def test_tokens_live_at_least_their_announced_life(ttl: float, issued_at: float) -> None:
    """Whatever the fraction of a second a token is issued at, it is valid for the
    whole seconds a token endpoint announces, and expired one second after its life."""
    clock = VirtualClock()
    sim = ToySimulator(clock=clock, plan=FaultPlan(token_ttl=ttl))
    clock.advance(issued_at)  # the simulator's epoch is a whole second
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url=BASE) as c:
        answer = (await c.post("/token", json={"id": "sim-client", "secret": "sim-secret"})).json()
        announced = int(answer["life"])  # vendors announce whole seconds
        assert announced >= 1
        token = {"Authorization": f"Bearer {answer['token']}"}
        clock.advance(announced - 0.001)
        assert (await c.get("/things/1", headers=token)).status_code == 200
        clock.advance(ttl + 1.0 - announced)
        assert (await c.get("/things/1", headers=token)).json() == {"err": "expired"}


async def test_plan_token_ttl_and_expire_tokens() -> None:
    """The plan shortens token life; expire_tokens() kills every token issued so far."""
    async with Harness(FaultPlan(token_ttl=5)) as h:
        assert h.sim.token_ttl == 5
        h.clock.advance(6)
        assert (await h.get("/things/1")).json() == {"err": "expired"}
        h.token = await _token(h.client)
        assert (await h.get("/things/1")).status_code == 200
        h.sim.expire_tokens()
        assert (await h.get("/things/1")).json() == {"err": "expired"}
        h.clock.advance(1)
        h.token = await _token(h.client)
        assert (await h.get("/things/1")).status_code == 200


async def test_bad_credentials() -> None:
    """Only the configured client gets a token."""
    sim = ToySimulator(clock=VirtualClock(), client_id="me", client_secret="pw")
    assert "pw" not in repr(sim)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url=BASE) as c:
        wrong = await c.post("/token", json={"id": "me", "secret": "nope"})
        assert wrong.status_code == 401
        assert (await c.post("/token", json={"id": 1, "secret": None})).status_code == 401


# ---- faults -------------------------------------------------------------------------------


async def _statuses(plan: FaultPlan, n: int) -> list[int]:
    async with Harness(plan) as h:
        return [(await h.get(f"/things/{i}")).status_code for i in range(n)]


async def test_error_rates_are_seeded() -> None:
    """The same seed gives the same faults; rates are roughly honoured."""
    plan = FaultPlan(errors={"boom": 0.3}, seed=5)
    first = await _statuses(plan, 200)
    assert first == await _statuses(plan, 200)
    assert 30 <= first.count(500) <= 90
    assert await _statuses(FaultPlan(errors={"boom": 0.0}), 20) == [200] * 20
    other = await _statuses(FaultPlan(errors={"boom": 0.3}, seed=6), 200)
    assert other != first


async def test_fault_scope_and_window() -> None:
    """Faults apply to their methods, paths and time window; never the token endpoint
    unless it is named."""
    plan = FaultPlan(
        errors=[
            Fault(code="gone", status=404, methods={"POST"}, start=10, end=20),
            Fault(code="auth", status=503, path="/token"),
        ]
    )
    clock = VirtualClock()
    sim = ToySimulator(plan=plan, clock=clock)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url=BASE) as c:
        assert (await c.post("/token", json={"id": "sim-client", "secret": "x"})).status_code == 503
    token, _ = sim.issue_token("sim-client")
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url=BASE) as c:
        assert (await c.post("/things", json={}, headers=headers)).status_code == 201
        clock.advance(10)
        assert (await c.post("/things", json={}, headers=headers)).json() == {"err": "gone"}
        assert (await c.get("/things/1", headers=headers)).status_code == 200
        clock.advance(10)
        assert (await c.post("/things", json={}, headers=headers)).status_code == 201
    assert [r.fault for r in sim.received] == ["fault", None, "fault", None, None]


async def test_outage_hits_everything_in_its_window() -> None:
    """An outage answers every request, token endpoint included, then ends."""
    plan = FaultPlan(
        outages=[Outage(start=5, duration=10), Outage(start=30, duration=5, code="http:502")]
    )
    async with Harness(plan) as h:
        assert (await h.get("/things/1")).status_code == 200
        h.clock.advance(5)
        assert (await h.get("/things/1")).json() == {"err": "down"}
        assert (await h.client.post("/token", json={})).json() == {"err": "down"}
        h.clock.advance(10)
        assert (await h.get("/things/1")).status_code == 200
        h.clock.advance(15)
        page = await h.get("/things/1")
        assert page.status_code == 502
        assert page.headers["content-type"] == "text/html"
        assert b"502 Bad Gateway" in page.content
    assert [r.fault for r in h.sim.received].count("outage") == 3


async def test_slowness_goes_through_the_clock() -> None:
    """Slow answers move the virtual clock on and never sleep for real."""
    plan = FaultPlan(slow=[Slowness(delay=30.0, methods={"GET"})])
    started = time.perf_counter()
    async with Harness(plan) as h:
        for i in range(5):
            await h.get(f"/things/{i}")
    assert time.perf_counter() - started < 5
    assert h.clock.sleeps == [30.0] * 5
    assert h.clock.now() == 150.0
    assert h.sim.received[-1].at == 150.0


async def test_rate_limit_in_fixed_windows() -> None:
    """Three POSTs a minute per client; the fourth is refused until the window ends."""
    async with Harness(epoch=1_000_000_000) as h:
        for n in range(3):
            assert (await h.post("/things", json={"n": n})).status_code == 201
        h.clock.advance(20)
        refused = await h.post("/things", json={"n": 3})
        assert refused.status_code == 429
        body = refused.json()
        assert body["wait"] == 40
        assert body["reset"] == 1_000_000_060
        assert (await h.get("/things/1")).status_code == 200  # GETs are not limited
        h.clock.advance(40)
        assert (await h.post("/things", json={"n": 3})).status_code == 201
    assert [r.fault for r in h.sim.received].count("rate_limit") == 1


async def test_rate_limits_are_per_client_and_can_be_off() -> None:
    """Another client has its own quota; rate_limits=() turns limits off."""
    async with Harness() as h:
        for n in range(3):
            await h.post("/things", json={"n": n})
        other, _ = h.sim.issue_token("someone-else")
        response = await h.client.post(
            "/things", json={}, headers={"Authorization": f"Bearer {other}"}
        )
        assert response.status_code == 201
    async with Harness(FaultPlan(rate_limits=())) as h:
        for n in range(10):
            assert (await h.post("/things", json={"n": n})).status_code == 201


def test_plan_validation() -> None:
    """Rates are probabilities, times are finite and non-negative: a
    ConfigurationError (a ValueError) naming the argument."""
    with pytest.raises(ConfigurationError, match="Fault: rate"):
        Fault(code="x", rate=1.5)
    with pytest.raises(ConfigurationError, match="Outage: start"):
        Outage(start=-1, duration=5)
    with pytest.raises(ConfigurationError, match="Slowness: delay"):
        Slowness(delay=float("inf"))
    with pytest.raises(ConfigurationError, match="Fault: end"):
        Fault(code="x", end=-1.0)
    with pytest.raises(ValueError, match="rate"):
        FaultPlan(errors={"x": -0.1})
    plan = FaultPlan(errors={"a": 0.5})
    assert plan.errors == (Fault(code="a", rate=0.5),)
    assert FaultPlan().rate_limits is None
    assert Fault(code="x", methods="get").methods == frozenset({"GET"})


def test_sim_response_helpers() -> None:
    """JSON and HTML builders, header lookup, conversion to httpx."""
    response = SimResponse.json(418, {"a": 1}, headers=[("X-A", "b")], code="tea")
    assert response.header("x-a") == "b"
    assert response.header("missing") is None
    converted = response.to_httpx()
    assert converted.status_code == 418
    assert converted.json() == {"a": 1}
    assert converted.headers["content-length"] == str(len(response.body))
    page = SimResponse.html(503)
    assert page.code == "http:503"
    assert b"Service Unavailable" in page.body


# ---- serve() -------------------------------------------------------------------------------


async def test_serve_runs_a_real_loopback_server() -> None:
    """serve() answers over real HTTP on 127.0.0.1 and stops when the block ends."""
    sim = ToySimulator(clock=VirtualClock())
    async with serve(sim) as base_url:
        assert base_url.startswith("http://127.0.0.1:")
        async with httpx.AsyncClient(base_url=base_url) as client:
            token = await _token(client)
            response = await client.get("/things/7", headers={"Authorization": f"Bearer {token}"})
            assert response.json()["id"] == "7"
            assert "date" in response.headers
            assert "server" not in response.headers
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=base_url) as client:
            await client.get("/things/7")
    assert [r.path for r in sim.received] == ["/token", "/things/7"]


async def test_serve_reports_a_failing_app() -> None:
    """An app that raises gives a 500 from uvicorn, not a hung test."""

    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    async with serve(broken) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        assert (await client.get("/")).status_code == 500


def test_rate_limit_validation() -> None:
    """A limit is a non-negative integer per a positive window."""
    with pytest.raises(ConfigurationError, match="RateLimit: window"):
        RateLimit(limit=1, window=0)
    with pytest.raises(ConfigurationError, match="RateLimit: limit"):
        RateLimit(limit=-1)
    with pytest.raises(ConfigurationError, match="RateLimit: limit must be an integer"):
        RateLimit(limit=1.5)  # type: ignore[arg-type]


async def test_rate_limit_memory_stays_bounded() -> None:
    """Many clients over many windows: past windows are dropped."""

    class Small(ToySimulator):
        max_windows = 50

    clock = VirtualClock()
    sim = Small(clock=clock, plan=FaultPlan(token_ttl=10**6))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url=BASE) as c:
        tokens = [sim.issue_token(f"client-{n}")[0] for n in range(20)]
        for _ in range(10):
            for token in tokens:
                await c.post("/things", json={}, headers={"Authorization": f"Bearer {token}"})
            clock.advance(60)
    assert len(sim._windows) <= 50
    assert all(r.status == 201 for r in sim.received)
