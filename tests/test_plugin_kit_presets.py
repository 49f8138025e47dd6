"""Presets: PresetSettings, overrides, the "http" preset and the plugin presets."""

from __future__ import annotations

from typing import Any

import pytest

import resilience
from resilience import (
    AuthRefresh,
    CircuitBreaker,
    ExponentialBackoff,
    PartialFailureSplitter,
    Pipeline,
    PresetSettings,
    Retry,
    StaticToken,
    Timeout,
)
from resilience.errors import ConfigurationError
from resilience.testing import VirtualClock


def kinds(pipeline: Pipeline) -> list[str]:
    return [type(layer).__name__ for layer in pipeline.layers]


def layer(pipeline: Pipeline, kind: type[Any]) -> Any:
    found = [item for item in pipeline.layers if isinstance(item, kind)]
    assert len(found) == 1, kinds(pipeline)
    return found[0]


def test_layer_order_and_defaults() -> None:
    """Total timeout, retry, breaker, auth, attempt timeout: outermost first."""
    pipeline = PresetSettings().build("http", auth=StaticToken("t"), clock=VirtualClock())
    assert kinds(pipeline) == ["Timeout", "Retry", "CircuitBreaker", "AuthRefresh", "Timeout"]
    assert pipeline.layers[0] == Timeout(total=120.0)
    assert pipeline.layers[-1] == Timeout(attempt=10.0)


def test_overrides_change_layers() -> None:
    """Every settings field is an override; None drops a layer."""
    splitter = PartialFailureSplitter()
    pipeline = PresetSettings().build(
        "http",
        max_attempts=7,
        total_timeout=None,
        attempt_timeout=None,
        breaker=None,
        splitter=splitter,
        idempotent_methods=["get"],
        budget=None,
        raise_on_failure=False,
        telemetry=False,
    )
    assert kinds(pipeline) == ["PartialFailureSplitter", "Retry"]
    retry = layer(pipeline, Retry)
    assert retry.max_attempts == 7
    assert retry.idempotent_methods == frozenset({"GET"})
    assert retry.budget is None
    assert pipeline.raise_on_failure is False


def test_whole_retry_and_ready_auth_layer() -> None:
    """retry= replaces the Retry layer; an auth layer given as auth= is used as is."""
    mine = Retry(max_attempts=2)
    auth_layer = AuthRefresh(StaticToken("t"), skew=5)
    pipeline = PresetSettings(auth_skew=300).build("http", auth=auth_layer, retry=mine)
    assert layer(pipeline, Retry) is mine
    assert layer(pipeline, AuthRefresh) is auth_layer


def test_auth_skew() -> None:
    """auth_skew reaches AuthRefresh; without it AuthRefresh keeps its default."""
    skewed = PresetSettings(auth_skew=300).build("http", auth=StaticToken("t"))
    assert layer(skewed, AuthRefresh).skew == 300
    plain = PresetSettings().build("http", auth=StaticToken("t"))
    assert layer(plain, AuthRefresh).skew == AuthRefresh(StaticToken("t")).skew


def test_unknown_override_names_the_accepted_ones() -> None:
    """A typo is a ConfigurationError listing what is accepted."""
    with pytest.raises(ConfigurationError, match="max_attemps") as caught:
        resilience.standard_pipeline("http", max_attemps=3)
    assert "max_attempts" in str(caught.value)
    with pytest.raises(ConfigurationError):
        PresetSettings(max_attempts=0)
    with pytest.raises(ConfigurationError):
        PresetSettings(idempotent_methods="GET")  # type: ignore[arg-type]


def test_http_preset() -> None:
    """The generic preset: 3 attempts, full jitter, a 20-call breaker."""
    pipeline = resilience.standard_pipeline("http", clock=VirtualClock())
    assert pipeline.env.vendor == "http"
    retry = layer(pipeline, Retry)
    assert retry.max_attempts == 3
    assert retry.backoff.jitter == "full"
    assert layer(pipeline, CircuitBreaker).minimum_calls == 20


def test_unknown_vendor_lists_installed_plugins() -> None:
    """A name nobody installed: LookupError naming what is there."""
    with pytest.raises(LookupError) as caught:
        resilience.standard_pipeline("nonexistent-vendor")
    assert "'http'" in str(caught.value)


def test_tellus_preset_is_what_the_page_recommends() -> None:
    """5 attempts, min(1 s * 2^n, 30 s) + up to 30%, hints to 60 s, refresh at 60 s."""
    pytest.importorskip("resilience_tellus")
    pipeline = resilience.standard_pipeline("tellus", auth=StaticToken("t"), clock=VirtualClock())
    retry = layer(pipeline, Retry)
    assert retry.max_attempts == 5
    assert retry.backoff == ExponentialBackoff(
        initial=1.0, multiplier=2.0, max_delay=30.0, jitter="proportional", jitter_ratio=0.3
    )
    assert retry.max_delay is not None
    assert retry.max_delay >= 60
    assert layer(pipeline, CircuitBreaker).minimum_calls == 20
    assert layer(pipeline, AuthRefresh).skew == 60
    delays = [retry.backoff.delay(n) for n in range(6)]
    for n, delay in enumerate(delays):
        base = min(2.0**n, 30.0)
        assert base <= delay <= base * 1.3
    tuned = resilience.standard_pipeline("tellus", max_attempts=2, breaker=None)
    assert layer(tuned, Retry).max_attempts == 2
    assert "CircuitBreaker" not in kinds(tuned)


def test_turris_preset_is_what_the_page_recommends() -> None:
    """Writes replay only with a key; tokens renewed 5 minutes early."""
    pytest.importorskip("resilience_turris")
    pipeline = resilience.standard_pipeline("turris", auth=StaticToken("t"), clock=VirtualClock())
    retry = layer(pipeline, Retry)
    assert retry.idempotent_methods == frozenset({"GET", "HEAD", "OPTIONS"})
    assert retry.retry_non_idempotent is False
    assert retry.max_delay is not None
    assert retry.max_delay >= 60
    assert layer(pipeline, AuthRefresh).skew == 300
    assert layer(pipeline, CircuitBreaker).minimum_calls == 20
