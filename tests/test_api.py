"""The public API: names, their order, and where they say they come from."""

from __future__ import annotations

import pytest

import resilience
import resilience._clock
import resilience.errors
import resilience.testing

CONTRACT = [
    "Pipeline",
    "ResilientTransport",
    "AsyncClient",
    "Action",
    "Verdict",
    "Problem",
    "Classifier",
    "Retry",
    "ExponentialBackoff",
    "CircuitBreaker",
    "AuthRefresh",
    "PartialFailureSplitter",
    "Timeout",
    "Token",
    "TokenProvider",
    "OAuth2ClientCredentials",
    "StaticToken",
    "standard_pipeline",
]


def test_all_is_sorted_and_unique() -> None:
    """``resilience.__all__`` is sorted (case-sensitive, like httpx) without repeats."""
    assert resilience.__all__ == sorted(resilience.__all__)
    assert len(set(resilience.__all__)) == len(resilience.__all__)


@pytest.mark.parametrize("name", resilience.__all__)
def test_every_public_name_is_importable(name: str) -> None:
    """Every name in ``__all__`` exists, and public classes say ``resilience``."""
    obj = getattr(resilience, name)
    module = getattr(obj, "__module__", None)
    if isinstance(obj, type) and module is not None:
        assert not module.startswith("resilience._"), (name, module)


@pytest.mark.parametrize("name", CONTRACT)
def test_contract_names_are_exported(name: str) -> None:
    """Every name PRODUCT.md's quickstart imports is public."""
    assert name in resilience.__all__
    exec(f"from resilience import {name}", {})


def test_errors_module_names() -> None:
    """``resilience.errors`` exports every error of the contract, all exceptions."""
    expected = {
        "ResilienceError",
        "PermanentError",
        "RetriesExhausted",
        "CircuitOpenError",
        "ConcurrencyLimitExceeded",
        "RateLimitExceeded",
        "AuthenticationError",
        "PartialFailureError",
        "ConfigurationError",
    }
    assert expected <= set(resilience.errors.__all__)
    assert resilience.errors.__all__ == sorted(resilience.errors.__all__)
    for name in resilience.errors.__all__:
        obj = getattr(resilience.errors, name)
        assert issubclass(obj, resilience.errors.ResilienceError)
        assert obj.__module__ == "resilience.errors"


def test_testing_module_names() -> None:
    """``resilience.testing`` exports the test helpers, sorted, each importable."""
    for name in ("VirtualClock", "ScriptedTransport", "reply", "ClosingStream"):
        assert name in resilience.testing.__all__
    for name in ("FaultPlan", "Simulator", "serve", "PluginConformance", "through"):
        assert name in resilience.testing.__all__
    assert resilience.testing.__all__ == sorted(resilience.testing.__all__)
    for name in resilience.testing.__all__:
        assert hasattr(resilience.testing, name), name
    assert resilience.testing.VirtualClock is resilience._clock.VirtualClock


def test_reprs_say_resilience() -> None:
    """Reprs show the public module, not the private one."""
    assert resilience.Pipeline.__module__ == "resilience"
    assert resilience.Retry.__module__ == "resilience"
    assert resilience.errors.PermanentError.__module__ == "resilience.errors"


def test_version() -> None:
    """The package has a version string."""
    assert isinstance(resilience.__version__, str)
