"""What AuthRefresh sends: the caller's headers, with its own in place of any
header of the same name, on a copy (the caller's request never holds a token)."""

from __future__ import annotations

import httpx
import pytest

from resilience import AuthRefresh, Pipeline, ResilientTransport, StaticToken
from resilience.testing import ScriptedTransport, VirtualClock, reply

pytestmark = pytest.mark.anyio

URL = "https://api.test/v1/things"


async def test_the_token_replaces_every_header_of_its_name_on_a_copy() -> None:
    """Two caller headers named like the token's (any case) give way to exactly one
    token header; the other headers keep their order and values; the caller's
    request is left as it was; the body goes along."""
    inner = ScriptedTransport.of(reply(200))
    pipeline = Pipeline(
        [AuthRefresh(StaticToken("t0ken"), origins=["https://api.test"])],
        clock=VirtualClock(),
        telemetry=False,
    )
    transport = ResilientTransport(pipeline, inner=inner)
    headers = [("Authorization", "old"), ("X-One", "1"), ("AUTHORIZATION", "old2"), ("x-two", "2")]
    request = httpx.Request("POST", URL, headers=headers, content=b"payload")
    before = request.headers.multi_items()
    response = await transport.handle_async_request(request)
    await response.aclose()
    sent = inner.requests[0]
    assert sent.headers.get_list("authorization") == ["Bearer t0ken"]
    kept = [(k, v) for k, v in sent.headers.multi_items() if k != "authorization"]
    assert kept == [(k, v) for k, v in before if k not in ("authorization",)]
    assert request.headers.multi_items() == before
    assert sent.content == b"payload"
    assert sent is not request


async def test_a_foreign_origin_gets_no_token_after_many_calls_to_ours() -> None:
    """The remembered answer is per origin: after calls to the token's origin, a
    call to another host (or another port) still goes without the token."""
    inner = ScriptedTransport.of(reply(200))
    pipeline = Pipeline(
        [AuthRefresh(StaticToken("t0ken"), origins=["https://api.test"])],
        clock=VirtualClock(),
        telemetry=False,
    )
    transport = ResilientTransport(pipeline, inner=inner)
    for url in [URL, URL, "https://other.test/x", "https://api.test:8443/x", URL]:
        response = await transport.handle_async_request(httpx.Request("GET", url))
        await response.aclose()
    carried = ["authorization" in r.headers for r in inner.requests]
    assert carried == [True, True, False, False, True]
