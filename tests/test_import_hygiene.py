"""The runtime never loads test tooling: building any installed vendor's pipeline, in a
fresh interpreter, imports neither pytest, uvicorn, hypothesis, ``resilience.testing``
nor a plugin's ``testing`` module; those load only when a test or the demo asks."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from importlib import metadata

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
