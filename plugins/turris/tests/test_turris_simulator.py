"""The Turris simulator answers as the public docs (and PUBLIC-FACTS (c)) describe."""

from __future__ import annotations

import email.utils
import re
from typing import Any

import httpx
import pytest
from resilience_turris import TOKEN_PATH
from resilience_turris.testing import TurrisSimulator, render_error, simulator

from resilience.testing import FaultPlan, Outage, VirtualClock

pytestmark = pytest.mark.anyio

REQUEST_ID = re.compile(
    r"^dev-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
)
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class Client:
    """An in-process client holding a token."""

    def __init__(self, sim: TurrisSimulator) -> None:
        self.sim = sim
        transport = httpx.ASGITransport(app=sim)
        self.http = httpx.AsyncClient(transport=transport, base_url="http://turris.test")
        self.headers: dict[str, str] = {}

    async def __aenter__(self) -> Client:
        await self.http.__aenter__()
        answer = await self.http.post(
            TOKEN_PATH, json={"clientId": "sim-client", "clientSecret": "sim-secret"}
        )
        self.headers = {"Authorization": f"Bearer {answer.json()['data']['accessToken']}"}
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.__aexit__(*exc)

    async def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return await self.http.request(method, path, headers=headers, **kwargs)


def assert_error(response: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    assert response.status_code == status
    assert set(body) == {"statusCode", "requestId", "errorType", "errorMessage", "timestamp"}
    assert body["statusCode"] == status
    assert body["errorType"] == error_type
    assert REQUEST_ID.match(body["requestId"]), body["requestId"]
    assert TIMESTAMP.match(body["timestamp"]), body["timestamp"]
    assert isinstance(body["errorMessage"], list)
    assert all(isinstance(m, str) for m in body["errorMessage"])
    return body


async def test_token_answer() -> None:
    """201 {statusCode, data: {accessToken}, timestamp}: no expires_in, no token_type."""
    async with Client(simulator(clock=VirtualClock())) as c:
        answer = await c.http.post(
            TOKEN_PATH, json={"clientId": "sim-client", "clientSecret": "sim-secret"}
        )
    body = answer.json()
    assert answer.status_code == 201
    assert set(body) == {"statusCode", "data", "timestamp"}
    assert set(body["data"]) == {"accessToken"}
    assert TIMESTAMP.match(body["timestamp"])


async def test_unauthorized_variants() -> None:
    """No header, a bad token and an expired one are all 401 unauthorized."""
    sim = simulator(clock=VirtualClock())
    async with Client(sim) as c:
        missing = await c.http.get("/v1/auth/test-oauth")
        bad = await c.http.get("/v1/auth/test-oauth", headers={"Authorization": "Bearer x.y.z"})
        sim.expire_tokens()
        expired = await c.send("GET", "/v1/auth/test-oauth")
    assert assert_error(missing, 401, "unauthorized")["errorMessage"] == [
        "Missing Authorization header"
    ]
    assert_error(bad, 401, "unauthorized")
    assert assert_error(expired, 401, "unauthorized")["errorMessage"] == ["JWT token has expired"]


async def test_invented_producers() -> None:
    """The invented resource: list, get, create (400/422), patch, delete, not_found."""
    sim = simulator(clock=VirtualClock(), producers=3)
    async with Client(sim) as c:
        listing = (await c.send("GET", "/v1/producers", params={"limit": 2})).json()
        producer_id = listing["data"]["items"][0]["id"]
        got = await c.send("GET", f"/v1/producers/{producer_id}")
        missing = await c.send("GET", "/v1/producers/000000000000000000000000")
        no_npn = await c.send("POST", "/v1/producers", json={"firstName": "A"})
        bad_npn = await c.send("POST", "/v1/producers", json={"npn": "12ab"})
        created = await c.send("POST", "/v1/producers", json={"npn": "555"})
        duplicate = await c.send("POST", "/v1/producers", json={"npn": "555"})
        patched = await c.send("PATCH", f"/v1/producers/{producer_id}", json={"lastName": "Z"})
        deleted = await c.send("DELETE", f"/v1/producers/{producer_id}")
        deleted_again = await c.send("DELETE", f"/v1/producers/{producer_id}")
        bad_page = await c.send("GET", "/v1/producers", params={"page": 0})
    assert listing["statusCode"] == 200
    assert REQUEST_ID.match(listing["requestId"])
    assert listing["data"]["total"] == 3
    assert len(listing["data"]["items"]) == 2
    assert re.fullmatch(r"[0-9a-f]{24}", producer_id)
    assert got.json()["data"]["id"] == producer_id
    assert_error(missing, 404, "not_found")
    assert assert_error(no_npn, 400, "invalid_input")["errorMessage"] == ["Field 'npn' is required"]
    assert_error(bad_npn, 422, "invalid_input")
    assert created.status_code == 201
    assert created.json()["data"]["npn"] == "555"
    assert_error(duplicate, 400, "invalid_input")
    assert patched.json()["data"]["lastName"] == "Z"
    assert deleted.status_code == 200
    assert_error(deleted_again, 404, "not_found")
    assert_error(bad_page, 400, "invalid_input")


async def test_idempotency_key_replays_the_first_answer() -> None:
    """A repeated Idempotency-Key returns the first answer and creates nothing new."""
    sim = simulator(clock=VirtualClock(), producers=0)
    async with Client(sim) as c:
        key = {"Idempotency-Key": "6f1c7a0e-2d4b-4c1e-9a7d-0c2f3e4b5a69"}
        first = await c.send("POST", "/v1/producers", json={"npn": "1"}, headers=key)
        second = await c.send("POST", "/v1/producers", json={"npn": "1"}, headers=key)
    assert first.json() == second.json()
    assert len(sim.producers) == 1


async def test_read_only_client_is_forbidden_to_write() -> None:
    """403 forbidden on writes; reads still work."""
    async with Client(simulator(clock=VirtualClock(), read_only=True)) as c:
        write = await c.send("POST", "/v1/producers", json={"npn": "1"})
        read = await c.send("GET", "/v1/producers")
    assert_error(write, 403, "forbidden")
    assert read.status_code == 200


async def test_write_rate_limit_and_headers() -> None:
    """60 writes a minute with X-RateLimit-* on each; the 61st is rate_limit_exceeded.
    GETs are never limited and carry no rate-limit headers."""
    clock = VirtualClock()
    sim = simulator(clock=clock, producers=0, epoch=1_700_000_000)
    async with Client(sim) as c:
        answers = [await c.send("POST", "/v1/producers", json={"npn": str(n)}) for n in range(60)]
        clock.advance(20)
        limited = await c.send("POST", "/v1/producers", json={"npn": "999"})
        reads = [await c.send("GET", "/v1/producers") for _ in range(100)]
    assert all(a.status_code == 201 for a in answers)
    assert answers[0].headers["x-ratelimit-limit"] == "60"
    assert answers[0].headers["x-ratelimit-remaining"] == "59"
    assert answers[-1].headers["x-ratelimit-remaining"] == "0"
    assert answers[0].headers["x-ratelimit-reset"] == "1700000060"
    body = assert_error(limited, 429, "rate_limit_exceeded")
    assert body["errorMessage"] == ["Rate limit exceeded. Please retry after 40 seconds."]
    assert limited.headers["x-ratelimit-reset"] == "1700000060"
    assert limited.headers["x-ratelimit-remaining"] == "0"
    assert "retry-after" not in limited.headers
    date = email.utils.parsedate_to_datetime(limited.headers["date"]).timestamp()
    assert int(limited.headers["x-ratelimit-reset"]) - date == 40
    assert all(r.status_code == 200 for r in reads)
    assert "x-ratelimit-limit" not in reads[0].headers


async def test_headers_only_when_exceeded() -> None:
    """rate_limit_headers=False: only the 429 carries them."""
    sim = simulator(clock=VirtualClock(), producers=0, rate_limit_headers=False)
    async with Client(sim) as c:
        ok = await c.send("POST", "/v1/producers", json={"npn": "1"})
    assert "x-ratelimit-reset" not in ok.headers


async def test_outage_is_a_load_balancer_page() -> None:
    """An outage answers an HTML 503 (no Turris body), the token endpoint included."""
    sim = simulator(clock=VirtualClock(), plan=FaultPlan(outages=[Outage(start=0, duration=10)]))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=sim), base_url="http://turris.test"
    ) as http:
        page = await http.post(TOKEN_PATH, json={})
    assert page.status_code == 503
    assert page.headers["content-type"] == "text/html"


def test_render_error() -> None:
    """Documented statuses; 422 on request; a fresh request id each time."""
    assert render_error("unauthorized").status == 401
    assert render_error("invalid_input", 422).status == 422
    assert render_error("rate_limit_exceeded").status == 429
    first = render_error("internal_error").to_httpx().json()
    second = render_error("internal_error").to_httpx().json()
    assert first["requestId"] != second["requestId"]
    assert REQUEST_ID.match(first["requestId"])
