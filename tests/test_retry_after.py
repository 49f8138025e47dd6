"""Retry-After: both RFC 9110 forms, garbage, and how the hint sets the wait."""

from __future__ import annotations

import email.utils
import random

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience import (
    Action,
    ExponentialBackoff,
    Pipeline,
    Problem,
    ResilientTransport,
    Retry,
    Timeout,
    Verdict,
    parse_retry_after,
)
from resilience._classifier import HttpClassifier, response_date, retry_after_of
from resilience.errors import RetriesExhausted
from resilience.testing import ScriptedTransport, VirtualClock, reply

pytestmark = pytest.mark.anyio

NOW = 1_700_000_000.0  # a fixed Unix time (2023-11-14 22:13:20 UTC)
DAY = 86_400.0


def http_date(unix: float) -> str:
    """The IMF-fixdate of a Unix time."""
    return email.utils.formatdate(unix, usegmt=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0.0),
        ("7", 7.0),
        ("  120  ", 120.0),
        ("1.5", 1.0),  # lenient: fractions are truncated to whole seconds
        ("86400", DAY),
        ("86401", DAY),
        ("999999999999", DAY),
        ("9" * 40, DAY),  # huge numbers are clamped, not ignored
    ],
)
def test_delay_seconds(value: str, expected: float) -> None:
    """delay-seconds: a non-negative integer, clamped to a day."""
    assert parse_retry_after(value, now=NOW) == expected


@pytest.mark.parametrize(
    "form",
    [
        "%a, %d %b %Y %H:%M:%S GMT",  # IMF-fixdate
        "%A, %d-%b-%y %H:%M:%S GMT",  # obsolete RFC 850
        "%a %b %d %H:%M:%S %Y",  # obsolete asctime (no zone: GMT)
    ],
)
def test_http_date_all_three_forms(form: str) -> None:
    """An HTTP-date in any of RFC 9110's three forms is measured from ``now``."""
    import datetime

    when = datetime.datetime.fromtimestamp(NOW + 90, tz=datetime.timezone.utc)
    assert parse_retry_after(when.strftime(form), now=NOW) == 90.0


def test_http_date_in_the_past_means_no_wait() -> None:
    """A date in the past asks for no wait at all."""
    assert parse_retry_after(http_date(NOW - 3600), now=NOW) == 0.0


def test_http_date_far_future_is_clamped() -> None:
    """A date years ahead is clamped to a day."""
    assert parse_retry_after(http_date(NOW + 10 * 365 * DAY), now=NOW) == DAY


def test_http_date_without_now_uses_current_time() -> None:
    """Without ``now`` an HTTP-date is measured from the current time."""
    import time

    got = parse_retry_after(http_date(time.time() + 600))
    assert got is not None
    assert 590 <= got <= 601


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "-5",
        "-0.5",
        "+5",
        "soon",
        "five seconds",
        "1e309",
        "1e3",
        "inf",
        "NaN",
        "0x10",
        "5 s",
        "٣",  # a non-ASCII digit
        "Mon, 32 Jan 2020 00:00:00 GMT",
        "Mon, 01 Jan 2020 25:00:00 GMT",
        "Mon, 01 Jan 99999 00:00:00 GMT",
        "Mon, 01 Jan 2020 00:00:00 +9999",
        "x" * 10_000,
        "Wed, 21 Oct 2015 07:28:00 GMT" + " " * 100 + "garbage",
    ],
)
def test_garbage_is_none(value: str | None) -> None:
    """Garbage gives ``None`` (no hint), never an exception."""
    assert parse_retry_after(value, now=NOW) is None


@given(value=st.text(max_size=300), now=st.one_of(st.none(), st.floats(allow_nan=True)))
def test_parser_never_raises_and_stays_in_range(value: str, now: float | None) -> None:
    """For any text and any reference time: ``None`` or a wait in ``[0, 86400]``."""
    got = parse_retry_after(value, now=now)
    assert got is None or 0.0 <= got <= DAY


date_like = st.text(alphabet="0123456789 ,:-+GMTUCESTMonTueWedNovDecJan.", max_size=64)


@given(value=date_like, now=st.floats(-1e12, 1e12))
def test_date_like_text_never_raises(value: str, now: float) -> None:
    """Text made of date pieces exercises the HTTP-date parser; it never raises."""
    got = parse_retry_after(value, now=now)
    assert got is None or 0.0 <= got <= DAY
    response_date(httpx.Response(200, headers={"date": value}))


def test_hint_measured_from_the_response_date_header() -> None:
    """An HTTP-date hint is measured from the response's own ``Date`` header."""
    response = httpx.Response(
        503, headers={"Date": http_date(NOW), "Retry-After": http_date(NOW + 30)}
    )
    assert response_date(response) == NOW
    assert retry_after_of(response) == 30.0


async def test_http_date_hint_drives_the_wait_from_the_date_header() -> None:
    """A 503 whose Retry-After is its Date plus 30 s: the retry waits exactly 30 s,
    whatever the machine's own time."""
    clock = VirtualClock()
    headers = {"Date": http_date(NOW), "Retry-After": http_date(NOW + 30)}
    inner = ScriptedTransport.of(reply(503, headers=headers), reply(200))
    pipeline = Pipeline(
        [Retry(backoff=ExponentialBackoff(initial=1.0, jitter="none"), budget=None)],
        clock=clock,
        telemetry=False,
    )
    async with httpx.AsyncClient(transport=ResilientTransport(pipeline, inner=inner)) as client:
        r = await client.get("https://api.test/x")
    assert r.status_code == 200
    assert clock.sleeps == [30.0]
    assert r.extensions["resilience"].verdicts[0].retry_after == 30.0
    assert inner.unclosed() == []


def test_classifier_reads_the_hint_on_retryable_statuses_only() -> None:
    """The "http" classifier attaches Retry-After to RETRY verdicts (429, 503, ...)."""
    classifier = HttpClassifier()
    request = httpx.Request("GET", "https://api.test/")
    for status in (429, 503):
        verdict = classifier.classify(
            request, httpx.Response(status, headers={"Retry-After": "12"}), None
        )
        assert verdict.action is Action.RETRY
        assert verdict.retry_after == 12.0
    garbage = httpx.Response(429, headers={"Retry-After": "tomorrow-ish"})
    assert classifier.classify(request, garbage, None).retry_after is None


async def wait_for(
    *,
    retry_after: str | None = None,
    hint: float | None = None,
    backoff: ExponentialBackoff | None = None,
    max_delay: float | None = None,
    layers_before: tuple[object, ...] = (),
) -> tuple[list[float], int, str | None]:
    """Run one call whose first attempt is a 503 (with the given hint) and return
    the sleeps, the attempts and ``report.gave_up``."""
    clock = VirtualClock()
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    inner = ScriptedTransport.of(reply(503, headers=headers), reply(200))

    class HintClassifier(HttpClassifier):
        def classify(
            self,
            request: httpx.Request,
            response: httpx.Response | None,
            error: BaseException | None,
        ) -> Verdict:
            verdict = super().classify(request, response, error)
            if hint is not None and verdict.action is Action.RETRY:
                return Verdict(Action.RETRY, problem=verdict.problem, retry_after=hint)
            return verdict

    retry = Retry(
        max_attempts=2,
        backoff=backoff or ExponentialBackoff(initial=2.0, jitter="none"),
        budget=None,
        max_delay=max_delay,
    )
    pipeline = Pipeline(
        [*layers_before, retry],
        clock=clock,
        classifier=HintClassifier(),
        telemetry=False,
        raise_on_failure=False,
    )
    transport = ResilientTransport(pipeline, inner=inner)
    async with httpx.AsyncClient(transport=transport) as client:
        r = await client.get("https://api.test/x")
    report = r.extensions["resilience"]
    assert inner.unclosed() == []
    return clock.sleeps, report.attempts, report.gave_up


async def test_wait_is_the_larger_of_backoff_and_hint() -> None:
    """Hint 7 s over a 2 s backoff: 7 s; hint 1 s under a 2 s backoff: 2 s."""
    assert (await wait_for(retry_after="7"))[0] == [7.0]
    assert (await wait_for(retry_after="1"))[0] == [2.0]


async def test_garbage_hint_falls_back_to_backoff() -> None:
    """Garbage in Retry-After: the backoff alone decides."""
    for garbage in ("-5", "1e309", "soon", "", "Mon, 32 Jan 2020 00:00:00 GMT"):
        sleeps, attempts, _ = await wait_for(retry_after=garbage)
        assert sleeps == [2.0]
        assert attempts == 2


async def test_hint_in_the_past_falls_back_to_backoff() -> None:
    """A date already past gives a zero hint: the backoff decides."""
    sleeps, _, _ = await wait_for(retry_after=http_date(NOW - 60))
    assert sleeps == [2.0]


async def test_hint_clamped_to_default_cap_of_at_least_60s() -> None:
    """By default a hint is honoured up to max(backoff.max_delay, 60 s)."""
    assert (await wait_for(retry_after="3600"))[0] == [60.0]
    assert (await wait_for(retry_after="45"))[0] == [45.0]
    long_backoff = ExponentialBackoff(initial=2.0, max_delay=120.0, jitter="none")
    assert (await wait_for(retry_after="3600", backoff=long_backoff))[0] == [120.0]


async def test_hint_clamped_to_explicit_max_delay() -> None:
    """``Retry(max_delay=...)`` caps every wait, server hints included."""
    assert (await wait_for(retry_after="3600", max_delay=10.0))[0] == [10.0]
    assert (await wait_for(hint=500.0, max_delay=10.0))[0] == [10.0]


async def test_classifier_hint_is_honoured() -> None:
    """A hint the classifier found (in a body, say) counts like Retry-After."""
    assert (await wait_for(hint=12.0))[0] == [12.0]


async def test_hint_that_cannot_fit_the_deadline_gives_up_at_once() -> None:
    """A 30 s hint with 10 s left: no sleep, one attempt, gave_up == "deadline"."""
    sleeps, attempts, gave_up = await wait_for(
        retry_after="30", layers_before=(Timeout(total=10.0),)
    )
    assert sleeps == []
    assert attempts == 1
    assert gave_up == "deadline"


async def test_retry_after_on_429_with_jittered_backoff() -> None:
    """With full jitter the wait is still at least the hint."""
    clock = VirtualClock()
    inner = ScriptedTransport.of(reply(429, headers={"Retry-After": "5"}), reply(200))
    backoff = ExponentialBackoff(initial=1.0, max_delay=30.0, jitter="full", rng=random.Random(3))
    pipeline = Pipeline([Retry(backoff=backoff, budget=None)], clock=clock, telemetry=False)
    async with httpx.AsyncClient(transport=ResilientTransport(pipeline, inner=inner)) as client:
        r = await client.get("https://api.test/x")
    assert r.status_code == 200
    assert clock.sleeps == [5.0]


async def test_exhausted_error_carries_the_hint() -> None:
    """When retries run out, the last verdict still says what the server asked."""
    clock = VirtualClock()
    inner = ScriptedTransport.of(reply(503, headers={"Retry-After": "3"}))
    pipeline = Pipeline([Retry(max_attempts=2, budget=None)], clock=clock, telemetry=False)
    async with httpx.AsyncClient(transport=ResilientTransport(pipeline, inner=inner)) as client:
        with pytest.raises(RetriesExhausted) as info:
            await client.get("https://api.test/x")
    assert [v.retry_after for v in info.value.verdicts] == [3.0, 3.0]
    assert clock.sleeps == [3.0]
    assert isinstance(info.value.problem, Problem)
