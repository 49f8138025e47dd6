"""The layer contract: typed state layers share through ``PipelineEnv``, and the
contract module stands apart from the engine and telemetry (no import circle)."""

from __future__ import annotations

import ast
import pathlib

import pytest

import resilience
from resilience import (
    CircuitBreaker,
    CircuitRegistry,
    ConcurrencyLimit,
    Pipeline,
    PresetSettings,
    Retry,
)
from resilience.errors import ConfigurationError


def test_breakers_are_listed_innermost_first_and_found_by_layer() -> None:
    """Two breakers: ``env.breakers`` holds both registries, the innermost first, and
    ``CircuitRegistry.of`` finds each by its layer (the innermost by default)."""
    outer, inner = CircuitBreaker(), CircuitBreaker(minimum_calls=5)
    pipeline = Pipeline([Retry(), outer, inner], telemetry=False)
    first, second = pipeline.env.breakers
    assert first.config is inner
    assert second.config is outer
    assert CircuitRegistry.of(pipeline) is first
    assert CircuitRegistry.of(pipeline, inner) is first
    assert CircuitRegistry.of(pipeline, outer) is second
    with pytest.raises(LookupError):
        CircuitRegistry.of(pipeline, CircuitBreaker())
    with pytest.raises(LookupError):
        CircuitRegistry.of(Pipeline([Retry()], telemetry=False))


def test_no_retry_no_budget() -> None:
    """The retry budget is made by a Retry layer that keeps one, and only then."""
    assert Pipeline([CircuitBreaker()], telemetry=False).env.budget is None
    assert Pipeline([Retry(budget=None)], telemetry=False).env.budget is None
    assert Pipeline([Retry()], telemetry=False).env.budget is not None


def test_concurrency_limits_are_listed_for_health_checks() -> None:
    """Each bound ConcurrencyLimit is in ``env.concurrency_limits``, outermost last."""
    pipeline = Pipeline(
        [ConcurrencyLimit(limit=4), Retry(), ConcurrencyLimit(limit=1)], telemetry=False
    )
    limits = pipeline.env.concurrency_limits
    assert len(limits) == 2
    assert [limit.in_flight("https://api.test:443") for limit in limits] == [0, 0]
    assert [limit.keys() for limit in limits] == [0, 0]


@pytest.mark.parametrize("field", ["breaker", "splitter"])
def test_preset_layer_fields_must_be_layers(field: str) -> None:
    """A preset's ``breaker`` or ``splitter`` that is no layer fails when the settings
    are made, naming the field (not later, as an anonymous ``layers[i]``)."""
    with pytest.raises(ConfigurationError, match=f"PresetSettings: {field} must have a bind"):
        PresetSettings(**{field: "circuit"})
    assert getattr(PresetSettings(**{field: None}), field) is None


ROOT = pathlib.Path(resilience.__file__).parent


def _imports_of(module: str) -> set[str]:
    """The ``resilience`` modules ``module`` imports anywhere in its text: at the top,
    in a function, or under ``TYPE_CHECKING`` (an arrow either way)."""
    tree = ast.parse((ROOT / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    names = {path.stem for path in ROOT.glob("*.py")}
    return {name: _imports_of(name) & names for name in names}


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        for target in graph[node]:
            if target == goal:
                return True
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return False


def test_the_contract_sits_below_the_engine_and_telemetry() -> None:
    """``_layer`` imports neither the engine, nor telemetry, nor any layer; ``_bodies``
    imports nothing of the package; and none of the engine, the contract, the body
    reader and telemetry is on an import circle."""
    graph = _graph()
    below = {"_bodies", "_classifier", "_clock", "_events", "_report", "_verdict"}
    assert graph["_layer"] <= below | {"errors", "_http", "_loader", "_layer_events"}
    assert "_pipeline" not in graph["_telemetry"]
    assert "_layer" in graph["_telemetry"]
    assert graph["_bodies"] == set()
    for module in ("_bodies", "_layer", "_pipeline", "_telemetry"):
        assert not _reaches(graph, module, module), f"{module} is on an import circle"
