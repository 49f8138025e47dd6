"""ExponentialBackoff: the five jitter modes, their bounds, and reproducibility."""

from __future__ import annotations

import math
import random

import attrs
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience import ExponentialBackoff, Pipeline, ResilientTransport, Retry
from resilience.errors import ConfigurationError, RetriesExhausted
from resilience.testing import ScriptedTransport, VirtualClock, reply

JITTERS = ("none", "full", "equal", "decorrelated", "proportional")

# Floating-point slack for bounds computed two ways.
EPS = 1e-9


def bounds(b: ExponentialBackoff, retry: int, previous: float | None) -> tuple[float, float]:
    """The closed interval a delay of ``b`` must fall in, computed independently."""
    try:
        raw = b.initial * float(b.multiplier) ** retry
    except OverflowError:
        raw = math.inf
    if b.initial == 0:
        raw = 0.0  # zero times any growth, however large
    capped = min(raw, b.max_delay)
    if b.jitter == "none":
        return capped, capped
    if b.jitter == "full":
        return 0.0, capped
    if b.jitter == "equal":
        return capped / 2, capped
    if b.jitter == "proportional":
        return capped, capped * (1 + b.jitter_ratio)
    high = max(b.initial, (previous if previous is not None else b.initial) * 3)
    return min(b.initial, b.max_delay), min(high, b.max_delay)


def within(value: float, low: float, high: float) -> bool:
    """``value`` in ``[low, high]`` up to a relative rounding error."""
    slack = EPS * max(1.0, abs(high))
    return low - slack <= value <= high + slack


backoffs = st.builds(
    lambda initial, extra, multiplier, jitter, ratio, seed: ExponentialBackoff(
        initial=initial,
        multiplier=multiplier,
        max_delay=initial + extra,
        jitter=jitter,
        jitter_ratio=ratio,
        rng=random.Random(seed),
    ),
    initial=st.one_of(st.just(0.0), st.floats(0, 1000, allow_nan=False), st.integers(0, 50)),
    extra=st.one_of(st.just(0.0), st.floats(0, 10_000, allow_nan=False), st.integers(0, 100)),
    multiplier=st.one_of(st.floats(1, 100, allow_nan=False), st.integers(1, 10)),
    jitter=st.sampled_from(JITTERS),
    ratio=st.floats(0, 1),
    seed=st.integers(0, 2**32),
)


@given(b=backoffs, retries=st.lists(st.integers(0, 5000), min_size=1, max_size=20))
def test_every_delay_within_its_bounds(b: ExponentialBackoff, retries: list[int]) -> None:
    """For any valid parameters and retry numbers, every delay is finite and in bounds."""
    previous: float | None = None
    for retry in retries:
        delay = b.delay(retry, previous)
        low, high = bounds(b, retry, previous)
        assert math.isfinite(delay)
        assert delay >= 0
        assert within(delay, low, high), (b, retry, previous, delay, low, high)
        previous = delay


@given(b=backoffs, retry=st.integers(0, 10_000))
def test_base_is_capped_exponential(b: ExponentialBackoff, retry: int) -> None:
    """``base`` is ``initial * multiplier ** retry`` capped at ``max_delay``, never raising."""
    base = b.base(retry)
    low, high = bounds(attrs.evolve(b, jitter="none"), retry, None)
    assert isinstance(base, float)
    assert within(base, low, high)


def test_integer_parameters_do_not_overflow() -> None:
    """Integer arguments and a huge retry number give the cap (not an OverflowError)."""
    b = ExponentialBackoff(initial=1, multiplier=2, max_delay=30, jitter="none")
    assert b.delay(1100) == 30.0
    assert b.delay(2) == 4.0


def test_zero_initial_stays_zero_even_when_the_exponential_overflows() -> None:
    """``initial=0`` means no wait at all, whatever the retry number."""
    b = ExponentialBackoff(initial=0.0, multiplier=10.0, max_delay=5.0, jitter="none")
    assert b.delay(0) == 0.0
    assert b.delay(400) == 0.0


def test_none_jitter_sequence() -> None:
    """Without jitter: 1, 2, 4, 8, then capped at max_delay."""
    b = ExponentialBackoff(initial=1.0, multiplier=2.0, max_delay=10.0, jitter="none")
    assert [b.delay(n) for n in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_proportional_is_tellus_formula() -> None:
    """Tellus: ``min(1s * 2^n, 30s)`` plus up to 30% of it."""
    b = ExponentialBackoff(
        initial=1.0, multiplier=2.0, max_delay=30.0, jitter="proportional", jitter_ratio=0.3
    )
    for n in range(10):
        base = min(2.0**n, 30.0)
        for _ in range(50):
            assert base <= b.delay(n) <= base * 1.3


def test_decorrelated_grows_from_previous() -> None:
    """Decorrelated jitter draws from ``[initial, 3 * previous]``, capped at max_delay."""
    first = [
        ExponentialBackoff(
            initial=1.0, max_delay=100.0, jitter="decorrelated", rng=random.Random(seed)
        ).delay(0)
        for seed in range(200)
    ]
    # With no previous wait the range is [initial, 3 * initial].
    assert all(1.0 <= d <= 3.0 for d in first)
    assert max(first) > 2.0
    b = ExponentialBackoff(initial=1.0, max_delay=100.0, jitter="decorrelated")
    later = [b.delay(3, 20.0) for _ in range(200)]
    assert all(1.0 <= d <= 60.0 for d in later)
    assert max(later) > 40.0
    assert all(b.delay(3, 1000.0) <= 100.0 for _ in range(200))


@pytest.mark.parametrize("jitter", JITTERS)
def test_same_seed_same_delays(jitter: str) -> None:
    """``rng=random.Random(seed)`` makes the delays reproducible."""

    def run(seed: int) -> list[float]:
        b = ExponentialBackoff(initial=0.5, max_delay=20.0, jitter=jitter, rng=random.Random(seed))
        out: list[float] = []
        previous = None
        for n in range(8):
            previous = b.delay(n, previous)
            out.append(previous)
        return out

    assert run(42) == run(42)
    if jitter != "none":
        assert run(42) != run(43)


@pytest.mark.anyio
@pytest.mark.parametrize("jitter", JITTERS)
async def test_attempts_and_delays_through_the_pipeline(jitter: str) -> None:
    """Each jitter mode: 4 attempts, 3 delays slept on the clock, each within bounds,
    and the same delays as a backoff with the same seed computes by itself."""
    clock = VirtualClock()
    backoff = ExponentialBackoff(
        initial=1.0, multiplier=2.0, max_delay=8.0, jitter=jitter, rng=random.Random(7)
    )
    pipeline = Pipeline(
        [Retry(max_attempts=4, backoff=backoff, budget=None)], clock=clock, telemetry=False
    )
    inner = ScriptedTransport.of(reply(503))
    async with httpx.AsyncClient(transport=ResilientTransport(pipeline, inner=inner)) as client:
        with pytest.raises(RetriesExhausted) as info:
            await client.get("https://api.test/x")
    report = info.value.report
    assert report.attempts == 4
    assert len(inner.requests) == 4
    assert clock.sleeps == report.delays
    assert len(report.delays) == 3
    twin = ExponentialBackoff(
        initial=1.0, multiplier=2.0, max_delay=8.0, jitter=jitter, rng=random.Random(7)
    )
    expected: list[float] = []
    previous = None
    for n, delay in enumerate(report.delays):
        low, high = bounds(twin, n, previous)
        assert within(delay, low, high)
        previous = twin.delay(n, previous)
        expected.append(previous)
    assert report.delays == expected
    assert report.gave_up == "max_attempts"
    assert inner.unclosed() == []


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"initial": -1.0}, "initial"),
        ({"max_delay": -0.5, "initial": 0.0}, "max_delay"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"jitter": "random"}, "jitter"),
        ({"jitter_ratio": 1.5}, "jitter_ratio"),
        ({"jitter_ratio": -0.1}, "jitter_ratio"),
        ({"initial": "1"}, "initial"),
        ({"initial": math.nan}, "initial"),
        ({"max_delay": math.inf}, "max_delay"),
        ({"multiplier": True}, "multiplier"),
        ({"initial": 5.0, "max_delay": 1.0}, "max_delay"),
        ({"rng": 42}, "rng"),
    ],
)
def test_bad_configuration_names_the_argument(kwargs: dict[str, object], argument: str) -> None:
    """Bad arguments fail at construction with a ConfigurationError (a ValueError)."""
    with pytest.raises(ConfigurationError, match=argument) as info:
        ExponentialBackoff(**kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    assert "ExponentialBackoff" in str(info.value)
