"""Layer order: an order that cannot mean what the user wants is reported when the
pipeline is built (ConfigurationError when certainly wrong, LayerOrderWarning when
dubious); the recommended orders stay silent."""

from __future__ import annotations

import warnings

import httpx
import pytest

import resilience
from resilience import (
    AuthRefresh,
    CircuitBreaker,
    Fallback,
    Hedge,
    LayerOrderWarning,
    PartialFailureSplitter,
    Pipeline,
    Retry,
    StaticToken,
    Timeout,
)
from resilience.errors import CircuitOpenError, ConfigurationError


def fallback_answer(request: httpx.Request, error: Exception) -> httpx.Response:
    return httpx.Response(200, json=[])


def build(*layers: object) -> Pipeline:
    return Pipeline(list(layers), telemetry=False)  # type: ignore[arg-type]


def test_the_recommended_order_is_silent() -> None:
    """The full stack in the documented order raises and warns nothing."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build(
            Fallback(fallback_answer, on=(CircuitOpenError,)),
            Timeout(total=60.0),
            PartialFailureSplitter(),
            Retry(),
            Hedge(),
            CircuitBreaker(),
            AuthRefresh(StaticToken("k")),
            Timeout(attempt=10.0),
        )
        for vendor in resilience.available_classifiers():
            resilience.standard_pipeline(vendor, telemetry=False)


def test_total_timeout_below_retry_is_refused() -> None:
    """Timeout(total=...) below Retry would bound each attempt, not the call."""
    with pytest.raises(ConfigurationError) as caught:
        build(Retry(), CircuitBreaker(), Timeout(total=5.0, attempt=1.0))
    message = str(caught.value)
    assert "layers[2] is Timeout(total=...) below the Retry at layers[0]" in message
    assert "Timeout(attempt=...)" in message


def test_attempt_timeout_below_retry_is_fine() -> None:
    """Timeout(attempt=...) bounds each attempt wherever it sits."""
    build(Timeout(attempt=1.0), Retry(), Timeout(attempt=2.0))


def test_two_retry_layers_are_refused() -> None:
    """Two Retry layers multiply their attempts: refused, naming both."""
    with pytest.raises(ConfigurationError, match=r"layers\[0\] and layers\[2\] are both Retry"):
        build(Retry(), CircuitBreaker(), Retry())


def test_splitter_below_retry_warns() -> None:
    """A splitter below Retry works, but its re-requests are not retried."""
    with pytest.warns(LayerOrderWarning, match=r"layers\[1\] is a PartialFailureSplitter below"):
        build(Retry(), PartialFailureSplitter())


def test_total_timeout_below_the_splitter_warns() -> None:
    """The splitter keeps its reserve from the deadline: a total timeout below it
    bounds each round instead."""
    with pytest.warns(LayerOrderWarning, match="below the PartialFailureSplitter"):
        build(PartialFailureSplitter(), Timeout(total=5.0))


@pytest.mark.parametrize("over", [Retry(), Timeout(total=5.0)])
def test_fallback_below_retry_or_the_deadline_warns(over: object) -> None:
    """Fallback belongs outermost: below Retry or the total timeout it answers first."""
    with pytest.warns(LayerOrderWarning, match=f"below the {type(over).__name__} at layers"):
        build(over, Fallback(fallback_answer, on=(CircuitOpenError,)))


def test_hedge_above_retry_warns() -> None:
    """Each hedge above Retry would run a whole retry loop."""
    with pytest.warns(LayerOrderWarning, match=r"layers\[0\] is a Hedge above the Retry"):
        build(Hedge(), Retry())


def test_breaker_and_auth_above_retry_are_allowed() -> None:
    """A breaker above Retry counts logical calls, AuthRefresh above Retry refreshes
    once per call: both are meaningful choices, reported by neither."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build(CircuitBreaker(), AuthRefresh(StaticToken("k")), Retry())


def test_the_warning_points_at_the_callers_line() -> None:
    """The warning is attributed to the line that built the pipeline."""
    with pytest.warns(LayerOrderWarning) as caught:
        Pipeline([Hedge(), Retry()], telemetry=False)
    assert caught[0].filename == __file__


def test_the_warning_can_be_silenced() -> None:
    """A user who means the order silences the category as usual."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", LayerOrderWarning)
        build(Hedge(), Retry())
    assert issubclass(LayerOrderWarning, UserWarning)
