"""Derapi end to end: the preset, the token flow and the splitter against the simulator.

Most scenarios run the simulator in-process (``httpx.ASGITransport``) on the same
``VirtualClock`` as the pipeline; the last one serves it over loopback HTTP.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import httpx
import pytest
import resilience_derapi
from resilience_derapi import type_uri
from resilience_derapi.testing import Backend, DerapiSimulator

import resilience
from resilience import Action, CircuitBreaker, ExponentialBackoff, PartialFailureSplitter
from resilience.errors import AuthenticationError, PartialFailureError, PermanentError
from resilience.testing import Fault, FaultPlan, VirtualClock, serve

pytestmark = pytest.mark.anyio

BASE = "http://derapi.test"
CLIENT_ID = "derapi-client"
SECRET = "derapi-secret-never-logged"


def mixed_backends() -> dict[str, Backend]:
    """One healthy, one rejecting the vendor credentials, one flapping, one down."""
    return {
        "sma": Backend(),
        "solis": Backend.rejecting_credentials(),
        "solaredge": Backend.flapping(2),
        "tesla": Backend.timing_out(),
    }


def make(
    backends: Mapping[str, Backend] | None = None,
    *,
    plan: FaultPlan | None = None,
    sim_options: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> tuple[httpx.AsyncClient, DerapiSimulator, VirtualClock]:
    clock = VirtualClock()
    sim = resilience_derapi.simulator(
        plan=plan,
        clock=clock,
        client_id=CLIENT_ID,
        client_secret=SECRET,
        backends=backends,
        **(sim_options or {}),
    )
    auth = resilience_derapi.token_provider(
        client_id=CLIENT_ID, client_secret=SECRET, base_url=BASE, clock=clock
    )
    overrides.setdefault("backoff", ExponentialBackoff(jitter="none"))
    pipeline = resilience.standard_pipeline(
        "derapi", auth=auth, clock=clock, telemetry=False, **overrides
    )
    app: Any = sim  # an ASGI app (its Mapping-typed signature is wider than httpx's)
    transport = resilience.ResilientTransport(pipeline, inner=httpx.ASGITransport(app=app))
    return httpx.AsyncClient(transport=transport, base_url=BASE), sim, clock


def vendors(response: httpx.Response, key: str = "sites") -> list[str]:
    return [item["vendor"] for item in response.json()[key]]


# --------------------------------------------------------------------------------------
# Partial failures


async def test_mixed_backends_deliver_what_worked() -> None:
    """Healthy and recovered backends are delivered; the rejecting one is asked once;
    the one that is down is re-asked each round, then reported."""
    client, sim, clock = make(mixed_backends())
    async with client:
        response = await client.get("/sites")
    assert response.status_code == 200
    body = response.json()
    assert vendors(response) == ["sma", "sma", "solaredge", "solaredge"]
    assert body["errors"] == {
        "solis": "Unauthorized: https://solis.backend.example/v1/api/sites",
        "tesla": "Timeout: https://tesla.backend.example/v1/api/sites",
    }
    report = response.extensions["resilience"]
    failures = report.partial.failures
    assert failures["solis"].action is Action.FAIL
    assert failures["solis"].problem.code == type_uri("unauthorized")
    assert failures["tesla"].action is Action.RETRY
    assert report.partial.recovered == ("solaredge",)
    assert report.gave_up == "max_rounds"
    assert sim.asked("sma") == 1
    assert sim.asked("solis") == 1  # rejected credentials: never asked again
    assert sim.asked("solaredge") == 3
    assert sim.asked("tesla") == 4
    assert report.attempts == 6
    assert clock.sleeps == [1.0, 2.0, 4.0]
    asked_alone = [r.query for r in sim.requests_to("GET", "/sites") if "vendor=" in r.query]
    assert asked_alone == [
        "vendor=solaredge",
        "vendor=tesla",
        "vendor=solaredge",
        "vendor=tesla",
        "vendor=tesla",
    ]
    assert sim.tokens_issued == 1


async def test_every_list_endpoint_splits() -> None:
    """Batteries and solar inverters split and recover the same way."""
    client, _, _ = make({"sma": Backend(), "enphase": Backend.flapping(1)})
    async with client:
        batteries = await client.get("/batteries")
        inverters = await client.get("/solar-inverters")
    assert vendors(batteries, "batteries") == ["sma", "sma", "enphase", "enphase"]
    assert vendors(inverters, "solarInverters") == ["sma", "sma", "enphase", "enphase"]
    assert batteries.json()["errors"] == {}
    assert batteries.extensions["resilience"].partial.recovered == ("enphase",)
    assert inverters.extensions["resilience"].partial is None  # nothing failed this time


async def test_strict_mode_raises_with_the_partial_payload() -> None:
    """strict=True through the preset: PartialFailureError holding what worked."""
    client, _, _ = make(mixed_backends(), splitter=PartialFailureSplitter(strict=True))
    async with client:
        with pytest.raises(PartialFailureError) as caught:
            await client.get("/sites")
    error = caught.value
    assert isinstance(error, httpx.HTTPStatusError)
    assert error.response is not None
    assert sorted(set(vendors(error.response))) == ["sma", "solaredge"]
    assert sorted(error.report.partial.failures) == ["solis", "tesla"]
    assert "solis" in str(error)
    assert SECRET not in str(error)


async def test_unknown_backend_message_is_retried() -> None:
    """A backend message with no known error name is re-asked (and recovers)."""
    flaky = Backend(script=["raw:Connection reset by peer", None])
    client, sim, _ = make({"sma": Backend(), "tesla": flaky})
    async with client:
        response = await client.get("/sites")
    assert vendors(response) == ["sma", "sma", "tesla", "tesla"]
    assert sim.asked("tesla") == 2


async def test_pagination_keeps_pages_straight() -> None:
    """Each page is its own call; the re-request of a page carries that page's token,
    and every item comes exactly once, on its own page."""
    backends = {
        "sma": Backend(sites=3),
        "solaredge": Backend(sites=3, script=["network-timeout", None, "network-timeout", None]),
    }
    client, sim, _ = make(backends)
    pages: list[list[str]] = []
    reports = []
    async with client:
        params: dict[str, str] = {"pageSize": "2"}
        while True:
            response = await client.get("/sites", params=params)
            pages.append([item["id"] for item in response.json()["sites"]])
            reports.append(response.extensions["resilience"])
            token = response.json().get("nextPageToken")
            if token is None:
                break
            params = {"pageSize": "2", "pageToken": token}
    sma = [item["id"] for item in sim.items("sma")]
    edge = [item["id"] for item in sim.items("solaredge")]
    assert pages == [sma[:2] + edge[:2], sma[2:] + edge[2:]]
    assert [r.partial.recovered for r in reports] == [("solaredge",), ("solaredge",)]
    assert reports[0] is not reports[1]
    narrowed = [r.query for r in sim.requests_to("GET", "/sites") if "vendor=" in r.query]
    assert "pageToken" not in narrowed[0]
    assert "pageToken=" in narrowed[1]
    assert narrowed[1].endswith("vendor=solaredge")


async def test_per_backend_breaker_opens_and_skips() -> None:
    """A backend that keeps failing gets its own open breaker: later calls stop
    re-asking it (its failure is the open circuit), the others are still asked."""
    breaker = CircuitBreaker(minimum_calls=3, failure_ratio=0.5, window=60.0, break_duration=30.0)
    client, sim, _ = make(
        {"sma": Backend(), "tesla": Backend.timing_out()},
        breaker=breaker,
        splitter=PartialFailureSplitter(max_rounds=1),
    )
    codes = []
    async with client:
        for _ in range(3):
            response = await client.get("/sites")
            assert vendors(response) == ["sma", "sma"]
            codes.append(response.extensions["resilience"].partial.failures["tesla"].problem.code)
    assert codes[0] == type_uri("network-timeout")
    assert codes[-1] == "circuit_open"
    # Call 1 re-asked tesla alone; call 2's failure opened its breaker, so from then
    # on only the full list reached it (the vendor filter cannot leave a backend out).
    assert sim.asked("tesla") == 4
    assert sim.asked("sma") == 3
    registry = client._transport.pipeline.env.breakers[0]  # type: ignore[attr-defined]
    opened = [key for key in registry if registry.get(key).state.value == "open"]
    assert opened == ["derapi:tesla"]  # the host's own circuit stays closed


# --------------------------------------------------------------------------------------
# Single resources, auth, versions


async def test_vendor_credentials_rejected_is_permanent_and_no_refresh() -> None:
    """A resource whose backend rejects the vendor credentials: PermanentError, one
    attempt, our own token untouched (whatever the status)."""
    for status in (401, 403):
        client, sim, _ = make(
            {"solis": Backend.rejecting_credentials()},
            sim_options={"unauthorized_status": status},
        )
        site = sim.items("solis")[0]["id"]
        async with client:
            with pytest.raises(PermanentError) as caught:
                await client.get(f"/sites/{site}")
        error = caught.value
        assert error.problem is not None
        assert error.problem.code == type_uri("unauthorized")
        assert error.problem.status == status
        assert error.report.attempts == 1
        assert sim.tokens_issued == 1


async def test_expired_token_is_refreshed_once() -> None:
    """Our own token expired: a bare 401, one refresh, the call succeeds."""
    client, sim, clock = make({"sma": Backend()})
    async with client:
        first = await client.get("/sites")
        sim.expire_tokens()
        clock.advance(1.0)  # tokens carry whole-second times: the next one is newer
        second = await client.get("/sites")
    assert first.status_code == second.status_code == 200
    assert sim.tokens_issued == 2
    assert [v.action for v in second.extensions["resilience"].verdicts] == [
        Action.REFRESH_AUTH,
        Action.ACCEPT,
    ]


async def test_gateway_body_401_is_refreshed() -> None:
    """The gateway's ``{"message": "Unauthorized"}`` is about our token too."""
    client, sim, clock = make({"sma": Backend()}, sim_options={"gateway_body": True})
    async with client:
        await client.get("/sites")
        sim.expire_tokens()
        clock.advance(1.0)
        response = await client.get("/sites")
    assert response.status_code == 200
    assert sim.tokens_issued == 2


async def test_too_many_requests_waits_for_retry_after() -> None:
    """A 429 with Retry-After is retried after the server's wait."""
    client, sim, clock = make({"tesla": Backend(script=["too-many-requests", None])})
    site = sim.items("tesla")[0]["id"]
    async with client:
        response = await client.get(f"/sites/{site}")
    assert response.json()["id"] == site
    assert clock.sleeps == [1.0]
    assert response.extensions["resilience"].verdicts[0].retry_after == 1.0


async def test_internal_error_is_retried_twice_then_permanent() -> None:
    """Derapi Internal Error on a GET: two retries at most, whatever max_attempts."""
    plan = FaultPlan(errors=[Fault(code=type_uri("derapi-internal-error"), path="/sites/*")])
    client, sim, _ = make({"sma": Backend()}, plan=plan, max_attempts=6)
    site = sim.items("sma")[0]["id"]
    async with client:
        with pytest.raises(PermanentError) as caught:
            await client.get(f"/sites/{site}")
    verdicts = caught.value.report.verdicts
    assert [v.action for v in verdicts] == [Action.RETRY, Action.RETRY, Action.FAIL]
    assert caught.value.problem is not None
    assert caught.value.problem.code == type_uri("derapi-internal-error")


async def test_backend_server_error_on_a_resource_is_retried() -> None:
    """A resource whose backend failed once (502 backend-server-error) is retried."""
    client, sim, _ = make({"sma": Backend(script=["backend-server-error", None])})
    site = sim.items("sma")[0]["id"]
    async with client:
        response = await client.get(f"/sites/{site}")
    assert response.status_code == 200
    assert response.extensions["resilience"].attempts == 2


async def test_not_found_and_vcm() -> None:
    """Unknown ids are not-found; VCM endpoints say vcm-not-configured until it is."""
    client, _, _ = make({"sma": Backend()})
    async with client:
        with pytest.raises(PermanentError) as missing:
            await client.get("/sites/site-doesnotexist")
        with pytest.raises(PermanentError) as vcm:
            await client.get("/vendor-credentials")
    assert missing.value.problem is not None
    assert missing.value.problem.code == type_uri("not-found")
    assert vcm.value.problem is not None
    assert vcm.value.problem.code == type_uri("vcm-not-configured")
    assert vcm.value.report.attempts == 1
    client, _, _ = make({"sma": Backend()}, sim_options={"vcm_configured": True})
    async with client:
        response = await client.get("/vendor-credentials")
    assert response.json() == {"vendorCredentials": [{"vendor": "sma"}]}


async def test_api_version_and_bad_parameters() -> None:
    """A known (or absent) api-version works; others, and bad paging, are
    validation errors with field errors."""
    client, _, _ = make({"sma": Backend()})
    async with client:
        ok = await client.get("/sites", headers={"api-version": "v2024-09-01"})
        assert ok.headers["api-version"] == "v2024-09-01"
        for params, headers in [
            ({}, {"api-version": "v1999-01-01"}),
            ({"pageSize": "0"}, {}),
            ({"pageToken": "garbage"}, {}),
            ({"vendor": "nosuchvendor"}, {}),
        ]:
            with pytest.raises(PermanentError) as caught:
                await client.get("/sites", params=params, headers=headers)
            problem = caught.value.problem
            assert problem is not None
            assert problem.code == type_uri("validation-error")
            assert problem.title == "Invalid request"
            assert problem.errors
            assert caught.value.report.attempts == 1


async def test_token_endpoint_errors() -> None:
    """Wrong credentials: a TokenFetchError naming derapi, never the secret; the
    endpoint speaks RFC 6749 errors."""
    sim: Any = resilience_derapi.simulator(client_id=CLIENT_ID, client_secret=SECRET)
    wrong = resilience_derapi.token_provider(
        client_id=CLIENT_ID, client_secret="wrong-one", base_url=BASE
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url=BASE) as http:
        with pytest.raises(AuthenticationError) as caught:
            await wrong.fetch(http)
        assert "derapi" in str(caught.value)
        assert "wrong-one" not in f"{caught.value} {caught.value!r} {wrong!r}"
        assert caught.value.problem is not None
        assert caught.value.problem.code == "invalid_client"
        grant = await http.post("/oauth2/token", data={"grant_type": "password"}, auth=("a", "b"))
        assert (grant.status_code, grant.json()) == (400, {"error": "unsupported_grant_type"})
        bare = await http.post("/oauth2/token", data={})
        assert (bare.status_code, bare.json()) == (400, {"error": "invalid_request"})
        form = await http.post(
            "/oauth2/token",
            data={"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": "x"},
        )
        assert (form.status_code, form.json()) == (400, {"error": "invalid_client"})
        good = await resilience_derapi.token_provider(
            client_id=CLIENT_ID, client_secret=SECRET, base_url=BASE
        ).fetch(http)
        assert good.expires_in == 3600


def test_preset_shape() -> None:
    """The preset: Timeout, splitter (with Retry's backoff), Retry, breaker, auth, Timeout."""
    backoff = ExponentialBackoff(initial=2.0, jitter="none")
    auth = resilience.StaticToken("t")
    pipeline = resilience.standard_pipeline("derapi", auth=auth, backoff=backoff)
    names = [type(layer).__name__ for layer in pipeline.layers]
    assert names == [
        "Timeout",
        "PartialFailureSplitter",
        "Retry",
        "CircuitBreaker",
        "AuthRefresh",
        "Timeout",
    ]
    splitter = pipeline.layers[1]
    assert splitter.backoff is backoff
    assert splitter.max_delay == 60.0
    assert pipeline.layers[3].minimum_calls == 20
    assert pipeline.layers[2].max_attempts == 4
    without = resilience.standard_pipeline("derapi", splitter=None)
    assert "PartialFailureSplitter" not in [type(layer).__name__ for layer in without.layers]


# --------------------------------------------------------------------------------------
# Over loopback HTTP


async def test_end_to_end_over_loopback() -> None:
    """The simulator served by uvicorn on 127.0.0.1; the preset with the Derapi token
    flow; a partial list recovered and reported; under asyncio and trio."""
    sim = resilience_derapi.simulator(
        client_id=CLIENT_ID, client_secret=SECRET, backends=mixed_backends()
    )
    clock = VirtualClock()
    async with serve(sim) as base_url:
        auth = resilience_derapi.token_provider(
            client_id=CLIENT_ID, client_secret=SECRET, base_url=base_url
        )
        pipeline = resilience.standard_pipeline("derapi", auth=auth, clock=clock, telemetry=False)
        transport = resilience.ResilientTransport(pipeline)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            response = await client.get("/sites", params={"pageSize": "10"})
            site = sim.items("sma")[0]["id"]
            one = await client.get(f"/sites/{site}")
            with pytest.raises(PermanentError):
                await client.get(f"/sites/{sim.items('solis')[0]['id']}")
    assert sorted(set(vendors(response))) == ["sma", "solaredge"]
    assert sorted(response.json()["errors"]) == ["solis", "tesla"]
    report = response.extensions["resilience"]
    assert report.partial.recovered == ("solaredge",)
    assert sorted(report.partial.failures) == ["solis", "tesla"]
    assert sim.asked("solis", "/sites") == 1
    assert one.json()["id"] == site
    assert len(clock.sleeps) == 3
    assert sim.tokens_issued == 1


async def test_token_request_is_a_form_with_http_basic() -> None:
    """The token flow on the wire: ``POST /oauth2/token``, form body
    ``grant_type=client_credentials`` only, the id and secret in HTTP Basic; the life
    is ``expires_in``."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200, json={"access_token": "eyJ.x.y", "token_type": "Bearer", "expires_in": 3600}
        )

    provider = resilience_derapi.token_provider(client_id=CLIENT_ID, client_secret=SECRET)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        token = await provider.fetch(http)
    assert (token.value, token.expires_in) == ("eyJ.x.y", 3600)
    [request] = seen
    assert (request.method, str(request.url)) == ("POST", "https://api.derapi.com/oauth2/token")
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.content == b"grant_type=client_credentials"
    scheme, _, encoded = request.headers["authorization"].partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(encoded).decode() == f"{CLIENT_ID}:{SECRET}"
