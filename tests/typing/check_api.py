"""What a type checker must accept: checked with ``mypy --strict`` by tests/test_typing.py.

Every line here is a way the public API is meant to be used; none carries a
``type: ignore``. ``assert_type`` pins the types users see. (The cases mypy must
refuse are in tests/test_typing.py, each checked on its own.)
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx
from typing_extensions import assert_type

import resilience
from resilience import (
    CallReport,
    CircuitBreaker,
    Classifier,
    ExponentialBackoff,
    HttpClassifier,
    JitterMode,
    Layer,
    Pipeline,
    Retry,
    Timeout,
    report_of,
)
from resilience.testing import VirtualClock, set_testing, virtual_time

# One argument narrows what is retried; the object is a Classifier.
narrow = HttpClassifier(retry_statuses={429, 503}, fail_statuses=[500], accept_statuses=(404,))
assert_type(narrow.retry_statuses, frozenset[int])
classifier: Classifier = narrow
by_name = Pipeline(classifier="http")
by_object = Pipeline(classifier=narrow)

# Jitter modes are a closed set.
modes: list[JitterMode] = ["none", "full", "equal", "decorrelated", "proportional"]
backoffs = [ExponentialBackoff(jitter=mode) for mode in modes]
assert_type(backoffs[0].jitter, JitterMode)

# Pipeline takes any sequence of layers.
layers: Sequence[Layer] = (Timeout(total=60.0), Retry(), CircuitBreaker(), Timeout(attempt=5.0))
pipeline = Pipeline(layers, clock=VirtualClock())
listed = Pipeline([Timeout(total=60.0), Retry(backoff=ExponentialBackoff(jitter="none"))])
assert_type(pipeline.layers, tuple[Layer, ...])


def report(response: httpx.Response) -> int:
    """The report of a response, typed."""
    got = report_of(response)
    assert_type(got, CallReport)
    return got.attempts + len(got.delays)


def test_time() -> float:
    """One switch for virtual time; its clock is a VirtualClock."""
    with virtual_time() as clock:
        assert_type(clock, VirtualClock)
        built = resilience.standard_pipeline("http")
        clock.advance(1.0)
    on = set_testing(True, clock=VirtualClock(autojump=True))
    assert_type(on, VirtualClock | None)
    set_testing(False)
    return built.clock.now()
