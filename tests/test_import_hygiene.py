"""The runtime never loads test tooling: building any installed vendor's pipeline, in a
fresh interpreter, imports neither pytest, uvicorn, hypothesis, ``resilience.testing``
nor a plugin's ``testing`` module; those load only when a test or the demo asks.
A plain ``import resilience`` loads the engine only: no asyncio, OpenTelemetry or
redis, and the layers, token providers, stores, presets and plugin kit load when
first named (issue 12's import-time target)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

import resilience
from resilience.errors import ConfigurationError

#: Modules (and their submodules) the runtime must never import.
FORBIDDEN = ("pytest", "_pytest", "uvicorn", "hypothesis", "resilience.testing")


def _run(code: str) -> dict[str, list[str]]:
    """Run ``code`` in a fresh interpreter; it prints a JSON object last."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, list[str]] = json.loads(done.stdout.splitlines()[-1])
    return result


_BUILD_EVERY_PIPELINE = """
    import json, sys
    import resilience
    from resilience import Pipeline, StaticToken, available_classifiers, standard_pipeline
    from resilience._loader import load_plugin

    built = []
    for name in available_classifiers():
        Pipeline([], classifier=name)
        plugin = load_plugin(name)
        factory = getattr(plugin, "token_provider", None)
        if factory is not None:
            auth = factory(
                client_id="dummy-id",
                client_secret="dummy-secret",
                base_url="https://vendor.example",
            )
        else:
            auth = StaticToken("dummy-token")
        standard_pipeline(name, auth=auth)
        built.append(name)
    print(json.dumps({"built": built, "modules": sorted(sys.modules)}))
"""


def _forbidden(modules: list[str]) -> list[str]:
    plugin_testing = {
        f"{ep.value.partition(':')[0].split('.')[0]}.testing"
        for ep in metadata.entry_points(group="resilience.classifiers")
    }
    return [
        m
        for m in modules
        if m in plugin_testing
        or any(m == bad or m.startswith(bad + ".") for bad in FORBIDDEN)
        or (m.startswith("resilience_") and m.endswith(".testing"))
    ]


def test_building_every_vendor_pipeline_imports_no_test_tooling() -> None:
    """``Pipeline([], classifier=name)`` and ``standard_pipeline(name, auth=...)`` for
    every installed plugin leave no test tool in ``sys.modules``."""
    result = _run(_BUILD_EVERY_PIPELINE)
    installed = resilience.available_classifiers()
    assert result["built"] == installed
    assert {"http", "tellus", "turris", "derapi"} <= set(installed)
    assert _forbidden(result["modules"]) == []


def test_import_resilience_imports_no_test_tooling() -> None:
    """``import resilience`` alone loads no test tool either."""
    result = _run("import json, sys, resilience; print(json.dumps({'m': sorted(sys.modules)}))")
    assert _forbidden(result["m"]) == []


def test_resilience_testing_imports_neither_pytest_nor_uvicorn() -> None:
    """A script may use ``resilience.testing`` (a VirtualClock in a benchmark) without
    pytest, hypothesis or uvicorn being imported."""
    result = _run(
        "import json, sys, resilience.testing; print(json.dumps({'m': sorted(sys.modules)}))"
    )
    loaded = [m for m in result["m"] if m.split(".")[0] in ("pytest", "_pytest", "uvicorn")]
    assert loaded == []
    assert not any(m.split(".")[0] == "hypothesis" for m in result["m"])


def test_plugin_simulator_loads_on_first_call() -> None:
    """The plugin object names its simulator lazily: the testing module is imported
    when the simulator is called, and old import paths still work."""
    result = _run(
        """
        import json, sys
        from resilience._loader import load_plugin

        plugin = load_plugin("tellus")
        before = "resilience_tellus.testing" in sys.modules
        app = plugin.simulator(client_id="c", client_secret="s")
        after = "resilience_tellus.testing" in sys.modules
        from resilience_tellus import TellusSimulator
        from resilience_tellus.testing import TellusSimulator as Moved
        rendered = plugin.render_error("2002")
        print(json.dumps({
            "flags": [str(before), str(after), str(isinstance(app, Moved)),
                      str(TellusSimulator is Moved), str(rendered.status_code)],
        }))
        """
    )
    assert result["flags"] == ["False", "True", "True", "True", "401"]


def test_unknown_plugin_attribute_still_raises() -> None:
    """The lazy compatibility names do not turn typos into imports."""
    import resilience_tellus

    with pytest.raises(AttributeError, match="no_such_name"):
        resilience_tellus.no_such_name  # noqa: B018


@pytest.mark.parametrize("target", ["", "no colon", "mod:", ":attr", "a:b:c", "1mod:x"])
def test_vendor_plugin_refuses_a_malformed_lazy_reference(target: str) -> None:
    """A ``simulator`` or ``render_error`` string that is not ``"module:attribute"``
    fails when the plugin is built, naming the argument."""
    classifier = resilience.HttpClassifier()
    with pytest.raises(ConfigurationError, match="VendorPlugin: simulator"):
        resilience.VendorPlugin(name="x", classifier=classifier, simulator=target)
    with pytest.raises(ConfigurationError, match="VendorPlugin: render_error"):
        resilience.VendorPlugin(name="x", classifier=classifier, render_error=target)


def test_vendor_plugin_refuses_a_part_that_is_not_callable() -> None:
    """A simulator that is neither callable nor a reference is refused at once."""
    with pytest.raises(ConfigurationError, match="VendorPlugin: simulator"):
        resilience.VendorPlugin(
            name="x",
            classifier=resilience.HttpClassifier(),
            simulator=42,  # type: ignore[arg-type]
        )


def test_vendor_plugin_lazy_reference_resolves_when_called() -> None:
    """A well-formed reference is not imported when the plugin is built; calling it
    imports the target and calls it; an unknown module fails only then."""
    plugin = resilience.VendorPlugin(
        name="x",
        classifier=resilience.HttpClassifier(),
        simulator="json:dumps",
        render_error="no_such_module_for_resilience:render",
    )
    assert plugin.simulator is not None
    assert plugin.simulator([1]) == "[1]"
    assert "json:dumps" in repr(plugin.simulator)
    assert plugin.render_error is not None
    with pytest.raises(ModuleNotFoundError):
        plugin.render_error("code")


# -- what ``import resilience`` costs (issue 12) ------------------------------------

#: What a plain ``import resilience`` must leave unloaded: asyncio (anyio picks the
#: backend when a call runs), OpenTelemetry (the first pipeline with telemetry
#: loads it), redis (a RedisStore loads it), and the modules of the lazy names.
NOT_ON_IMPORT = (
    "asyncio",
    "opentelemetry",
    "redis",
    "resilience._telemetry",
    "resilience._events",
    "resilience._auth",
    "resilience._tokens",
    "resilience._presets",
    "resilience._plugin",
    "resilience._redis_store",
    "resilience._splitter",
    "resilience._hedge",
)


def _loaded(modules: list[str], roots: tuple[str, ...]) -> list[str]:
    return [m for m in modules if any(m == r or m.startswith(r + ".") for r in roots)]


def test_import_resilience_leaves_asyncio_opentelemetry_redis_and_the_layers_unloaded() -> None:
    """``import resilience`` in a fresh interpreter imports none of asyncio,
    OpenTelemetry, redis or the modules behind the lazily loaded names."""
    result = _run("import json, sys, resilience; print(json.dumps({'m': sorted(sys.modules)}))")
    assert _loaded(result["m"], NOT_ON_IMPORT) == []
    assert "resilience._pipeline" in result["m"]  # the engine itself does load


def test_opentelemetry_loads_with_the_first_pipeline_that_has_telemetry() -> None:
    """A pipeline built with ``telemetry=False`` leaves OpenTelemetry unloaded; the
    first one with telemetry loads it (and records spans as before)."""
    result = _run(
        """
        import json, sys
        import resilience
        resilience.Pipeline([resilience.Retry()], telemetry=False)
        off = "opentelemetry" in sys.modules
        resilience.Pipeline([resilience.Retry()])
        on = "opentelemetry.trace" in sys.modules
        print(json.dumps({"flags": [str(off), str(on)]}))
        """
    )
    assert result["flags"] == ["False", "True"]


def test_request_hook_and_resend_key_are_the_telemetry_modules_own() -> None:
    """``resilience.request_hook`` and ``RESEND_COUNT_EXTENSION`` (now defined without
    OpenTelemetry) are the very objects ``resilience._telemetry`` uses."""
    from resilience import _telemetry

    assert resilience.request_hook is _telemetry.request_hook
    assert resilience.RESEND_COUNT_EXTENSION == _telemetry.RESEND_COUNT_EXTENSION
    assert resilience.RESEND_COUNT_EXTENSION == "resilience.resend_count"


def test_every_lazy_name_loads_on_first_use_and_says_resilience() -> None:
    """In a fresh interpreter, a lazy name is absent from the package's namespace
    until used; then it is its module's object, and its module's public classes
    say ``resilience`` (their module's other names arrive with it)."""
    result = _run(
        """
        import json, sys
        import resilience
        before = [n for n in ("Retry", "ExponentialBackoff", "Hedge") if n in vars(resilience)]
        retry = resilience.Retry
        import resilience._retry as module
        print(json.dumps({
            "before": before,
            "same": [str(retry is module.Retry)],
            "module": [retry.__module__, module.ExponentialBackoff.__module__],
            "arrived": [n for n in ("ExponentialBackoff", "Hedge") if n in vars(resilience)],
        }))
        """
    )
    assert result["before"] == []
    assert result["same"] == ["True"]
    assert result["module"] == ["resilience", "resilience"]
    assert result["arrived"] == ["ExponentialBackoff"]


def test_star_import_and_dir_show_every_public_name() -> None:
    """``from resilience import *`` binds every name of ``__all__`` (loading the lazy
    ones), and ``dir(resilience)`` lists them before they are loaded."""
    result = _run(
        """
        import json
        import resilience
        listed = sorted(set(resilience.__all__) - set(dir(resilience)))
        namespace = {}
        exec("from resilience import *", namespace)
        missing = sorted(set(resilience.__all__) - set(namespace))
        print(json.dumps({"unlisted": listed, "missing": missing}))
        """
    )
    assert result == {"unlisted": [], "missing": []}


def test_unknown_name_raises_attribute_error() -> None:
    """A misspelt name is an ``AttributeError`` naming it, never an import."""
    with pytest.raises(AttributeError, match="'Rety'"):
        resilience.Rety  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(ImportError, match="Rety"):
        exec("from resilience import Rety", {})


def test_lazy_table_matches_what_type_checkers_see() -> None:
    """The names ``__getattr__`` loads are exactly those imported under
    ``TYPE_CHECKING`` in ``resilience/__init__.py``, each from the same module, and
    every name of ``__all__`` is either imported at once or lazy."""
    source = Path(resilience.__file__).read_text(encoding="utf-8")
    seen: dict[str, str] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for child in node.body:
                assert isinstance(child, ast.ImportFrom)
                assert child.module is not None
                for alias in child.names:
                    seen[alias.name] = child.module
    lazy = resilience._LAZY
    assert seen == lazy
    eager = {name for name in resilience.__all__ if name in vars(resilience)} - set(lazy)
    assert eager | set(lazy) == set(resilience.__all__)
