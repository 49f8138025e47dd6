"""The Tellus simulator answers as the public docs (and PUBLIC-FACTS (c)) describe."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from resilience_tellus import TOKEN_PATH
from resilience_tellus.testing import TellusSimulator, render_error, simulator

from resilience.errors import ConfigurationError
from resilience.testing import FaultPlan, Outage, VirtualClock

pytestmark = pytest.mark.anyio

BASE = "http://tellus.test"


class Client:
    """An in-process client holding a token."""

    def __init__(self, sim: TellusSimulator) -> None:
        self.sim = sim
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url=BASE)
        self.headers: dict[str, str] = {}

    async def __aenter__(self) -> Client:
        await self.http.__aenter__()
        answer = await self.token()
        self.headers = {"Authorization": f"Bearer {answer.json()['access_token']}"}
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.__aexit__(*exc)

    async def token(self, **overrides: Any) -> httpx.Response:
        body = {
            "client_id": "sim-client",
            "client_secret": "sim-secret",
            "grant_type": "client_credentials",
            **overrides,
        }
        return await self.http.post(TOKEN_PATH, json=body)

    async def get(self, path: str, **params: Any) -> httpx.Response:
        return await self.http.get(path, params=params, headers=self.headers)

    async def post(self, path: str, body: Any) -> httpx.Response:
        return await self.http.post(path, json=body, headers=self.headers)


def sim(**kwargs: Any) -> TellusSimulator:
    return simulator(clock=VirtualClock(), **kwargs)


async def test_token_answer_is_unwrapped() -> None:
    """{access_token, token_type, expires_in}, not in the envelope."""
    async with Client(sim()) as c:
        body = (await c.token()).json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 86_400


@pytest.mark.parametrize(
    ("override", "status", "code"),
    [
        ({"client_secret": "nope"}, 401, 2001),
        ({"grant_type": "password"}, 400, 1001),
        ({"client_id": ""}, 400, 1002),
    ],
)
async def test_token_errors(override: dict[str, str], status: int, code: int) -> None:
    """Bad credentials 2001/401, a wrong grant 1001/400, a missing field 1002/400."""
    async with Client(sim()) as c:
        answer = await c.token(**override)
    assert answer.status_code == status
    assert answer.json()["code"] == code


async def test_sites_pagination() -> None:
    """page/size with total; past the end is empty; out of range is 1001."""
    async with Client(sim(sites=45)) as c:
        first = (await c.get("/v1/operator/sites", page=1, size=20)).json()
        last = (await c.get("/v1/operator/sites", page=3, size=20)).json()
        past = (await c.get("/v1/operator/sites", page=9, size=20)).json()
        active = (await c.get("/v1/operator/sites", status="inactive", size=100)).json()
        bad_size = await c.get("/v1/operator/sites", size=101)
        bad_page = await c.get("/v1/operator/sites", page="x")
    assert first["code"] == 0
    assert first["message"] == "success"
    assert len(first["data"]["items"]) == 20
    assert first["data"]["total"] == 45
    assert (first["data"]["page"], first["data"]["size"]) == (1, 20)
    assert first["data"]["items"][0]["site_id"] == "site_001"
    assert len(last["data"]["items"]) == 5
    assert past["data"]["items"] == []
    assert past["data"]["total"] == 45
    assert active["data"]["total"] == 4
    assert bad_size.status_code == 400
    assert bad_size.json()["code"] == 1001
    assert bad_size.json()["details"]["field"] == "size"
    assert bad_page.json()["code"] == 1001


async def test_devices_and_control() -> None:
    """Device details, start/stop, 1002/1001/4001/3001 as the page describes."""
    simulated = sim()
    device_id = next(iter(simulated.devices))
    start = f"/v1/operator/devices/{device_id}/connectors/1/start"
    async with Client(simulated) as c:
        device = (await c.get(f"/v1/operator/devices/{device_id}")).json()["data"]
        missing = await c.post(start, {})
        negative = await c.post(start, {"charge_power": -5})
        started = await c.post(start, {"charge_power": 7.4, "transaction_id": "t1"})
        again = await c.post(start, {"charge_power": 7.4, "transaction_id": "t2"})
        stopped = await c.post(f"/v1/operator/devices/{device_id}/connectors/1/stop", {})
        unknown = await c.get("/v1/operator/devices/dvc_nope")
        no_connector = await c.post(f"/v1/operator/devices/{device_id}/connectors/9/start", {})
        command_id = started.json()["data"]["command_id"]
        command = (await c.get(f"/v1/operator/commands/{command_id}")).json()["data"]
        no_command = await c.get("/v1/operator/commands/cmd_nope")
    assert device["device_id"] == device_id
    assert {"sn", "model", "connectors", "site_id"} <= set(device)
    assert (missing.status_code, missing.json()["code"]) == (400, 1002)
    assert missing.json()["details"] == {"field": "charge_power"}
    assert (negative.status_code, negative.json()["code"]) == (400, 1001)
    assert started.json()["data"]["status"] == "queued"
    assert (again.status_code, again.json()["code"]) == (409, 4001)
    assert stopped.json()["code"] == 0
    assert (unknown.status_code, unknown.json()["code"]) == (404, 3001)
    assert no_connector.json()["code"] == 3001
    assert command["status"] == "queued"
    assert no_command.json()["code"] == 3001


async def test_write_scope() -> None:
    """A client without the write scope gets 2003/403 on control calls."""
    simulated = sim(scopes=("read",))
    device_id = next(iter(simulated.devices))
    async with Client(simulated) as c:
        denied = await c.post(
            f"/v1/operator/devices/{device_id}/connectors/1/start", {"charge_power": 1}
        )
    assert (denied.status_code, denied.json()["code"]) == (403, 2003)


async def test_tokens() -> None:
    """No token or a garbage one: 2001; an expired one: 2002 (both HTTP 401)."""
    simulated = sim()
    async with Client(simulated) as c:
        none = await c.http.get("/v1/operator/sites")
        garbage = await c.http.get(
            "/v1/operator/sites", headers={"Authorization": "Bearer abc.def.ghi"}
        )
        simulated.expire_tokens()
        expired = await c.get("/v1/operator/sites")
    assert (none.status_code, none.json()["code"]) == (401, 2001)
    assert garbage.json()["code"] == 2001
    assert (expired.status_code, expired.json()["code"]) == (401, 2002)


async def test_short_token_ttl_is_announced_and_honoured() -> None:
    """FaultPlan(token_ttl=1) issued mid-second: ``expires_in`` is 1 and the token
    works for that second; a life under a second is refused when the plan is built."""
    with pytest.raises(ConfigurationError, match="token_ttl"):
        FaultPlan(token_ttl=0.5)
    clock = VirtualClock()
    async with Client(simulator(clock=clock, plan=FaultPlan(token_ttl=1))) as c:
        clock.advance(0.7)  # mid-second: the simulator's epoch is a whole second
        answer = (await c.token()).json()
        assert answer["expires_in"] == 1
        c.headers = {"Authorization": f"Bearer {answer['access_token']}"}
        clock.advance(0.9)
        assert (await c.get("/v1/operator/sites")).status_code == 200
        clock.advance(1.2)
        assert (await c.get("/v1/operator/sites")).json()["code"] == 2002


async def test_query_rate_limit() -> None:
    """60 queries a minute; the 61st is 5001 with retry_after_seconds and no header."""
    clock = VirtualClock()
    simulated = simulator(clock=clock)
    async with Client(simulated) as c:
        for _ in range(60):
            assert (await c.get("/v1/operator/sites")).status_code == 200
        clock.advance(12.5)
        limited = await c.get("/v1/operator/sites")
        clock.advance(48)
        after = await c.get("/v1/operator/sites")
    assert limited.status_code == 429
    assert limited.json() == {
        "code": 5001,
        "message": "Too many requests",
        "details": {"retry_after_seconds": 48},
    }
    assert not any(
        h.startswith(("retry-after", "x-ratelimit", "ratelimit")) for h in limited.headers
    )
    assert after.status_code == 200


async def test_control_rate_limit_and_optional_header() -> None:
    """30 control calls a minute; Retry-After only when asked for."""
    simulated = sim(retry_after_header=True)
    device_id = next(iter(simulated.devices))
    stop = f"/v1/operator/devices/{device_id}/connectors/2/stop"
    async with Client(simulated) as c:
        for _ in range(30):
            assert (await c.post(stop, {})).status_code == 200
        limited = await c.post(stop, {})
        query = await c.get("/v1/operator/sites")
    assert limited.json()["code"] == 5001
    assert limited.headers["retry-after"] == "60"
    assert query.status_code == 200


async def test_outage_answers_9001() -> None:
    """A plan outage answers Tellus's internal error by default."""
    clock = VirtualClock()
    simulated = simulator(clock=clock, plan=FaultPlan(outages=[Outage(start=0, duration=5)]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=simulated), base_url=BASE) as c:
        answer = await c.get("/v1/operator/sites")
    assert (answer.status_code, answer.json()["code"]) == (500, 9001)


def test_render_error_for_every_code() -> None:
    """render_error gives the documented status and the numeric code."""
    assert render_error("2002").status == 401
    assert render_error("5001").status == 429
    assert render_error("9001", 503).status == 503
    unknown = render_error("7777")
    assert unknown.status == 500
    assert b'"code":7777' in unknown.body
