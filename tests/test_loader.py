"""The entry-point loader: classifiers found by name in ``resilience.classifiers``.

Each test installs fake distributions into a temporary directory on ``sys.path``
(a ``*.dist-info`` folder with METADATA and entry_points.txt, plus the modules),
exactly as ``pip install`` of a plugin would leave them.
"""

from __future__ import annotations

import logging
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from resilience import Action, Pipeline, ResilientTransport, available_classifiers
from resilience import _loader as loader_module
from resilience._loader import load_plugin, resolve_classifier
from resilience.errors import ConfigurationError
from resilience.testing import ScriptedTransport, reply

FAKE_MODULE = '''
import httpx
from resilience import Action, Problem, Verdict


class FakeClassifier:
    """Every 418 is a transient teapot; the rest is ACCEPT."""

    vendor = "fake"
    needs_body = False

    def classify(self, request, response, error):
        if response is not None and response.status_code == 418:
            problem = Problem(vendor="fake", status=418, code="teapot")
            return Verdict(Action.RETRY, problem=problem)
        return Verdict(Action.ACCEPT)


class Plugin:
    name = "fake"
    classifier = FakeClassifier()


PLUGIN = Plugin()
classifier = FakeClassifier()  # for the entry point naming the module itself


def factory():
    return FakeClassifier()
'''

BROKEN_MODULE = """
raise ImportError("fakeplugin_broken needs a dependency that is missing")
"""

MODULES = ("fakeplugin_mod", "fakeplugin_broken")


def install(root: Path, name: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """Write a fake installed distribution ``name`` into ``root``."""
    info = root / f"{name}-0.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.0\n")
    lines = "\n".join(f"{ep} = {target}" for ep, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[resilience.classifiers]\n{lines}\n")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Fake plugins on sys.path: "fake", "fakeclass", "fakefactory", "fakemodule"
    (all working) and "broken" (raises on import); a fresh plugin cache."""
    install(
        tmp_path,
        "fakeplugin",
        {
            "fake": "fakeplugin_mod:PLUGIN",
            "fakeclass": "fakeplugin_mod:FakeClassifier",
            "fakefactory": "fakeplugin_mod:factory",
            "fakemodule": "fakeplugin_mod",
        },
        {"fakeplugin_mod": FAKE_MODULE},
    )
    install(
        tmp_path,
        "fakeplugin_broken",
        {"broken": "fakeplugin_broken:PLUGIN"},
        {"fakeplugin_broken": BROKEN_MODULE},
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(loader_module, "_cache", {})
    yield tmp_path
    for module in MODULES:
        sys.modules.pop(module, None)


def test_http_is_always_available() -> None:
    """The built-in "http" classifier needs no plugin."""
    assert "http" in available_classifiers()
    assert load_plugin("http").classifier.vendor == "http"


@pytest.mark.usefixtures("plugins")
def test_installed_plugin_is_found_by_name() -> None:
    """A plugin's entry point is listed and its classifier resolved by name."""
    names = available_classifiers()
    assert {"http", "fake", "fakeclass", "fakefactory", "fakemodule"} <= set(names)
    assert names == sorted(names)
    assert resolve_classifier("fake").vendor == "fake"  # type: ignore[attr-defined]


@pytest.mark.usefixtures("plugins")
@pytest.mark.parametrize("name", ["fake", "fakeclass", "fakefactory", "fakemodule"])
def test_plugin_object_class_factory_or_module(name: str) -> None:
    """An entry point may name a plugin object, a classifier class, a factory, or a
    module with a ``classifier``: each resolves to a working classifier instance."""
    classifier = resolve_classifier(name)
    request = httpx.Request("GET", "https://api.test/")
    verdict = classifier.classify(request, httpx.Response(418), None)
    assert verdict.action is Action.RETRY
    assert verdict.reason == "teapot"


@pytest.mark.anyio
@pytest.mark.usefixtures("plugins")
async def test_pipeline_uses_a_plugin_by_name() -> None:
    """``Pipeline(classifier="fake")`` classifies with the plugin."""
    inner = ScriptedTransport.of(reply(418))
    pipeline = Pipeline([], classifier="fake", telemetry=False)
    assert pipeline.env.vendor == "fake"
    async with httpx.AsyncClient(transport=ResilientTransport(pipeline, inner=inner)) as client:
        with pytest.raises(Exception, match="code=teapot"):
            await client.get("https://api.test/")


@pytest.mark.usefixtures("plugins")
def test_broken_plugin_is_logged_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    """A plugin that fails to import is logged (name, target, reason) and skipped."""
    with caplog.at_level(logging.WARNING, logger="resilience"):
        names = available_classifiers()
    assert "broken" not in names
    assert "fake" in names
    assert "'broken'" in caplog.text
    assert "fakeplugin_broken:PLUGIN" in caplog.text
    assert "needs a dependency that is missing" in caplog.text


@pytest.mark.usefixtures("plugins")
def test_broken_plugin_by_name_fails_at_pipeline_construction() -> None:
    """Asking for the broken plugin raises LookupError when the pipeline is built."""
    with pytest.raises(LookupError, match="'broken' failed to import") as info:
        Pipeline([], classifier="broken", telemetry=False)
    assert "'fake'" in str(info.value)


@pytest.mark.usefixtures("plugins")
def test_unknown_name_lists_the_names_that_exist() -> None:
    """An unknown name raises LookupError listing the installed classifiers."""
    with pytest.raises(LookupError) as info:
        Pipeline([], classifier="nosuchvendor", telemetry=False)
    message = str(info.value)
    assert "'nosuchvendor' is not installed" in message
    for name in ("'http'", "'fake'", "'fakeclass'"):
        assert name in message
    assert "'broken'" not in message.split("installed classifiers:")[1].split(".")[0]


def test_unknown_name_without_plugins() -> None:
    """Even with no plugin installed, the message lists "http"."""
    with pytest.raises(LookupError, match=r"installed classifiers: .*'http'"):
        load_plugin("tellus-but-misspelt")


@pytest.mark.usefixtures("plugins")
def test_plugins_are_loaded_once() -> None:
    """A loaded plugin is cached: the same object every time."""
    assert load_plugin("fake") is load_plugin("fake")
    assert "fake" in loader_module._cache


def test_a_classifier_object_is_used_as_is() -> None:
    """Passing an object with classify() skips the loader."""

    class Mine:
        def classify(self, request: object, response: object, error: object) -> object:
            raise NotImplementedError

    mine = Mine()
    assert resolve_classifier(mine) is mine  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"classifier must be .*classify\(\).*got int"):
        resolve_classifier(42)  # type: ignore[arg-type]


@pytest.mark.usefixtures("plugins")
def test_a_misspelt_name_gets_a_suggestion() -> None:
    """``classifier="htp"`` names the closest installed classifier (case and
    stray spaces ignored); a name like none of them gets no guess."""
    with pytest.raises(LookupError, match=r"'htp' is not installed \(did you mean 'http'\?\)"):
        Pipeline([], classifier="htp", telemetry=False)
    with pytest.raises(LookupError, match=r"did you mean 'fake'\?"):
        load_plugin(" FAKE")
    with pytest.raises(LookupError) as info:
        load_plugin("qqqqqqqqqq")
    assert "did you mean" not in str(info.value)
    assert "installed classifiers: " in str(info.value)


def test_http_needs_no_package_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default classifier is found without reading any distribution's metadata
    (a source checkout has none): building a default pipeline never scans it."""
    from importlib import metadata

    def no_metadata(**_: object) -> object:
        raise AssertionError("entry points were read")

    monkeypatch.setattr(metadata, "entry_points", no_metadata)
    monkeypatch.setattr(loader_module, "_cache", {})
    assert Pipeline([], telemetry=False).env.vendor == "http"
    assert load_plugin("http").name == "http"


def test_an_installed_http_entry_point_does_not_replace_the_builtin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another distribution registering ``http`` cannot swap the core's classifier."""
    install(
        tmp_path, "impostor", {"http": "fakeplugin_mod:PLUGIN"}, {"fakeplugin_mod": FAKE_MODULE}
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(loader_module, "_cache", {})
    try:
        assert "http" in available_classifiers()
        assert load_plugin("http").classifier.vendor == "http"
        assert Pipeline([], telemetry=False).env.vendor == "http"
    finally:
        sys.modules.pop("fakeplugin_mod", None)


def test_entry_point_values_with_extras_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry point written with extras (``module:attr [extra]``) loads like any."""
    install(
        tmp_path,
        "extras",
        {"fakex": "fakeplugin_mod:PLUGIN [fast]"},
        {"fakeplugin_mod": FAKE_MODULE},
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(loader_module, "_cache", {})
    try:
        assert resolve_classifier("fakex").vendor == "fake"  # type: ignore[attr-defined]
    finally:
        sys.modules.pop("fakeplugin_mod", None)


def test_a_plugin_without_a_classifier_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry point naming something that cannot classify fails when the pipeline
    is built, with a ConfigurationError naming the classifier and what it got."""
    install(tmp_path, "odd", {"odd": "fakeplugin_odd:NUMBER"}, {"fakeplugin_odd": "NUMBER = 42\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(loader_module, "_cache", {})
    try:
        with pytest.raises(ConfigurationError, match=r"classifier 'odd'.*int.*classify\(\)"):
            Pipeline([], classifier="odd", telemetry=False)
    finally:
        sys.modules.pop("fakeplugin_odd", None)
