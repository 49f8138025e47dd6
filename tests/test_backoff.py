"""ExponentialBackoff (the five jitter modes, their bounds, reproducibility, whose
randomness), and the retry decision that Retry and the splitter share."""

from __future__ import annotations

import math
import random

import attrs
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience import ExponentialBackoff, Pipeline, ResilientTransport, Retry
from resilience._backoff import decide, default_cap, wait_for
from resilience._report import GaveUp
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


# -- the decision (resilience._backoff.decide), without any I/O ----------------------

finite = st.floats(0.0, 1e6, allow_nan=False)
waits = st.one_of(finite, st.just(math.nan), st.just(math.inf), st.floats(-1e3, 0.0))
hints = st.one_of(st.none(), finite, st.just(math.nan), st.just(math.inf))


@given(
    attempt=st.integers(1, 10),
    max_attempts=st.integers(1, 10),
    backoff=waits,
    hint=hints,
    cap=finite,
    remaining=st.one_of(st.none(), st.floats(-10.0, 1e6, allow_nan=False)),
    budget_ok=st.booleans(),
)
def test_a_decided_wait_is_bounded(
    attempt: int,
    max_attempts: int,
    backoff: float,
    hint: float | None,
    cap: float,
    remaining: float | None,
    budget_ok: bool,
) -> None:
    """Whatever the inputs, a wait is a finite number in ``[0, cap]`` that ends
    before the deadline, honours a server hint up to the cap, reads a NaN backoff
    as no wait; otherwise the reason is the first that applies (attempts, deadline,
    budget)."""
    decision = decide(
        attempt,
        max_attempts=max_attempts,
        backoff=backoff,
        hint=hint,
        cap=cap,
        remaining=remaining,
        budget_ok=budget_ok,
    )
    if attempt >= max_attempts:
        assert decision is GaveUp.MAX_ATTEMPTS
        return
    wanted = wait_for(backoff, hint, cap)
    assert math.isfinite(wanted)
    assert 0.0 <= wanted <= cap
    if hint is not None and not math.isnan(hint):
        assert wanted >= min(hint, cap)
    if math.isnan(backoff) or backoff < 0:
        assert wanted == (min(hint, cap) if hint is not None and hint > 0 else 0.0)
    if remaining is not None and wanted > remaining:
        assert decision is GaveUp.DEADLINE
    elif not budget_ok:
        assert decision is GaveUp.BUDGET
    else:
        assert decision == wanted


@given(
    delay=st.floats(0.0, 100.0),
    blocked=st.one_of(st.floats(0.0, 200.0), st.just(math.inf)),
    remaining=st.one_of(st.none(), st.floats(0.0, 300.0)),
    wait=st.booleans(),
)
def test_an_open_breaker_below_is_waited_for_only_when_asked_and_in_time(
    delay: float, blocked: float, remaining: float | None, wait: bool
) -> None:
    """A breaker below that opens up later than the wait: the call stops
    (``circuit_open``) unless asked to wait and the breaker half-opens before the
    deadline; then the wait is exactly until it does."""
    decision = decide(
        1,
        max_attempts=3,
        backoff=delay,
        hint=None,
        cap=100.0,
        remaining=remaining,
        blocked=blocked,
        wait_for_blocked=wait,
    )
    if blocked <= delay:
        fits = remaining is None or delay <= remaining
        assert decision == (delay if fits else GaveUp.DEADLINE)
    elif wait and math.isfinite(blocked) and (remaining is None or blocked <= remaining):
        assert decision == blocked
    else:
        assert decision is GaveUp.CIRCUIT_OPEN


def test_the_default_cap_counts_proportional_jitter() -> None:
    """One rule for Retry and the splitter: the longest wait the backoff can choose
    (proportional jitter included) or 60 s, whichever is more."""
    assert default_cap(ExponentialBackoff(max_delay=100.0)) == 100.0
    tellus = ExponentialBackoff(max_delay=100.0, jitter="proportional", jitter_ratio=0.3)
    assert default_cap(tellus) == pytest.approx(130.0)
    assert default_cap(ExponentialBackoff(max_delay=5.0)) == 60.0


# -- randomness belongs to the bound pipeline -----------------------------------------


@pytest.mark.anyio
async def test_pipelines_built_from_one_seeded_backoff_wait_alike_and_apart() -> None:
    """``seed=``: every pipeline built from the configuration draws the same
    reproducible delays, and one pipeline's draws never shift another's."""

    async def delays(pipeline: Pipeline) -> list[float]:
        inner = ScriptedTransport.of(reply(503))
        with pytest.raises(RetriesExhausted) as info:
            await ResilientTransport(pipeline, inner=inner).handle_async_request(
                httpx.Request("GET", "https://api.test/x")
            )
        return info.value.report.delays

    retry = Retry(max_attempts=4, budget=None, backoff=ExponentialBackoff(seed=5))
    first = Pipeline([retry], clock=VirtualClock(), telemetry=False)
    second = Pipeline([retry], clock=VirtualClock(), telemetry=False)
    a = await delays(first)
    assert await delays(second) == a
    assert await delays(first) != a  # the first pipeline's generator moved on


@pytest.mark.anyio
async def test_a_given_rng_is_copied_per_pipeline_not_advanced() -> None:
    """``rng=``: each pipeline draws from its own copy of the generator, so the
    caller's generator is left where it was and two pipelines wait alike."""
    rng = random.Random(9)
    state = rng.getstate()
    backoff = ExponentialBackoff(rng=rng)
    inner = ScriptedTransport.of(reply(503))
    clock = VirtualClock()
    pipeline = Pipeline([Retry(max_attempts=3, backoff=backoff, budget=None)], clock=clock)
    with pytest.raises(RetriesExhausted):
        await ResilientTransport(pipeline, inner=inner).handle_async_request(
            httpx.Request("GET", "https://api.test/x")
        )
    assert rng.getstate() == state
    twin = random.Random(9)
    assert clock.sleeps == [twin.uniform(0.0, 1.0), twin.uniform(0.0, 2.0)]


def test_seed_and_rng_together_are_refused() -> None:
    """Two sources of randomness for one backoff is a configuration error naming both."""
    with pytest.raises(ConfigurationError, match="seed or rng"):
        ExponentialBackoff(seed=1, rng=random.Random(1))
    with pytest.raises(ConfigurationError, match="seed"):
        ExponentialBackoff(seed=-1)
