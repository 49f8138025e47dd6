"""``CallReport.gave_up`` is a ``GaveUp`` string enum that still reads as the old strings."""

from __future__ import annotations

import json
import re

import httpx
import pytest

import resilience
from resilience import CallReport, ExponentialBackoff, GaveUp, Retry, RetryBudget, Timeout
from resilience.errors import RetriesExhausted
from resilience.testing import ScriptedTransport, VirtualClock, reply, through

pytestmark = pytest.mark.anyio

URL = "https://api.test/v1/things"
ONE = ExponentialBackoff(initial=1.0, jitter="none")
NO_BUDGET = RetryBudget(ratio=0.0, min_per_second=0.0, initial=0.0)


def test_every_value_is_its_old_string() -> None:
    """Each member equals, hashes, prints and serialises as the string it replaced."""
    old = {
        "max_attempts",
        "deadline",
        "budget",
        "not_idempotent",
        "body_not_replayable",
        "circuit_open",
        "max_rounds",
    }
    assert {member.value for member in GaveUp} == old
    for member in GaveUp:
        assert member == member.value
        assert member in old  # a set of the plain strings finds it
        assert str(member) == f"{member}" == format(member) == member.value
        assert json.dumps(member) == json.dumps(member.value)
        assert GaveUp(member.value) is member


def test_public_and_documented() -> None:
    """Exported from ``resilience``, and its docstring names every value."""
    assert resilience.GaveUp is GaveUp
    assert "GaveUp" in resilience.__all__
    documented = set(re.findall(r'``"([a-z_]+)"``', GaveUp.__doc__ or ""))
    assert documented == {member.value for member in GaveUp}


async def test_a_report_holds_the_enum_and_the_message_its_value() -> None:
    """Retries used up: ``gave_up`` is ``GaveUp.MAX_ATTEMPTS``, equal to the old
    string, and the error's message reads ``gave up: max_attempts``."""
    inner = ScriptedTransport.of(reply(503))
    transport = through(inner, Retry(max_attempts=2))
    with pytest.raises(RetriesExhausted) as info:
        await transport.handle_async_request(httpx.Request("GET", URL))
    gave_up = info.value.report.gave_up
    assert gave_up is GaveUp.MAX_ATTEMPTS
    assert gave_up == "max_attempts"
    assert "gave up: max_attempts (" in str(info.value)
    assert inner.unclosed() == []


@pytest.mark.parametrize(
    ("layers", "method", "expected"),
    [
        ((Retry(max_attempts=3, budget=NO_BUDGET),), "GET", GaveUp.BUDGET),
        ((Retry(max_attempts=3),), "POST", GaveUp.NOT_IDEMPOTENT),
        ((Timeout(total=0.5), Retry(max_attempts=3, backoff=ONE)), "GET", GaveUp.DEADLINE),
    ],
)
async def test_each_layer_reports_a_member(
    layers: tuple[object, ...], method: str, expected: GaveUp
) -> None:
    """Budget, idempotency and deadline stops each report their ``GaveUp`` member."""
    inner = ScriptedTransport.of(reply(503))
    transport = through(inner, *layers, clock=VirtualClock())
    with pytest.raises(RetriesExhausted) as info:
        await transport.handle_async_request(httpx.Request(method, URL))
    assert info.value.report.gave_up is expected
    assert inner.unclosed() == []


@pytest.mark.parametrize("member", list(GaveUp))
def test_every_member_is_explained_in_messages(member: GaveUp) -> None:
    """An error's message names why the call gave up, with the reason in words."""
    error = RetriesExhausted("acme HTTP 503")
    error.report = CallReport(attempts=2, gave_up=member)
    text = str(error)
    assert f"2 attempts, gave up: {member.value} (" in text
    assert "GaveUp" not in text
