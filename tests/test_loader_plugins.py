"""The built-in ``"http"`` classifier is a plugin like the vendors': a VendorPlugin
found by name through the loader, with codes, a renderer and the generic preset,
and it passes the plugin conformance suite."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

import resilience
from resilience import Action, HttpClassifier, Pipeline, VendorPlugin, standard_pipeline
from resilience import _loader as loader_module
from resilience._loader import BUILTIN_PLUGINS, load_plugin
from resilience.testing import PluginConformance, VirtualClock

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - pytest brings tomli on 3.10
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

ROOT = Path(__file__).resolve().parent.parent
HTTP = load_plugin("http")


class TestHttpPluginConformance(PluginConformance):
    """The conformance suite, on the core's own plugin (the checks that need a
    simulator or a token flow skip: the generic classifier ships neither)."""

    plugin = HTTP


def test_http_is_a_vendor_plugin() -> None:
    """``load_plugin("http")`` is a VendorPlugin carrying the generic classifier,
    its status table and the generic preset."""
    assert isinstance(HTTP, VendorPlugin)
    assert HTTP.name == "http"
    assert isinstance(HTTP.classifier, HttpClassifier)
    assert HTTP.codes.codes_for(Action.REFRESH_AUTH) == ["401"]
    assert set(HTTP.codes.codes_for(Action.RETRY)) == {
        "408",
        "425",
        "429",
        "500",
        "502",
        "503",
        "504",
    }
    assert HTTP.codes["429"].title == "Too Many Requests"
    assert HTTP.description
    assert repr(HTTP) == "<resilience plugin 'http'>"


def test_http_codes_are_what_the_classifier_says() -> None:
    """Every entry of the table is the generic reading of that status."""
    request = httpx.Request("GET", "https://api.test/")
    for code, entry in HTTP.codes.items():
        assert HTTP.render_error is not None
        response = HTTP.render_error(code)
        assert response.status_code == int(code)
        assert HTTP.classifier.classify(request, response, None).action is entry.action, code


def test_standard_pipeline_http_goes_through_the_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    """``standard_pipeline("http")`` calls the plugin's preset, like any vendor's:
    there is no second path for the built-in name."""
    built: list[dict[str, Any]] = []
    sentinel = Pipeline([], telemetry=False)

    def preset(**kwargs: Any) -> Pipeline:
        built.append(kwargs)
        return sentinel

    swapped = VendorPlugin(name="http", classifier=HttpClassifier(), preset=preset)
    monkeypatch.setattr(loader_module, "_cache", {"http": swapped})
    clock = VirtualClock()
    assert standard_pipeline("http", clock=clock, max_attempts=2) is sentinel
    assert built == [{"auth": None, "clock": clock, "max_attempts": 2}]


def test_http_preset_through_the_plugin() -> None:
    """The real preset, by name: the generic classifier, the preset's layers, and
    the overrides applied."""
    pipeline = standard_pipeline("http", clock=VirtualClock(), max_attempts=2, breaker=None)
    assert pipeline.env.vendor == "http"
    names = [type(layer).__name__ for layer in pipeline.layers]
    assert "Retry" in names
    assert "CircuitBreaker" not in names
    retry = next(layer for layer in pipeline.layers if type(layer).__name__ == "Retry")
    assert retry.max_attempts == 2


def test_the_plugins_command_lists_http(capsys: pytest.CaptureFixture[str]) -> None:
    """``resilience plugins`` shows the built-in plugin and its description."""
    from resilience._demo import main

    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert any(line.startswith("http ") and HTTP.description in line for line in out.splitlines())


def test_pyproject_declares_each_builtin_plugin() -> None:
    """The entry points pyproject.toml installs name the same objects the loader
    finds without metadata, so both ways to the built-ins agree."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = data["project"]["entry-points"][loader_module.ENTRY_POINT_GROUP]
    assert {name: declared.get(name) for name in BUILTIN_PLUGINS} == dict(BUILTIN_PLUGINS)


def test_public_kit_names() -> None:
    """The plugin kit exports the shared HTTP rules plugins used to copy."""
    for name in ("IDEMPOTENT_METHODS", "MAX_HINT_SECONDS", "is_idempotent", "safe_classify"):
        assert name in resilience.__all__
