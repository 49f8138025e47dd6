"""Packaging: the distribution names, one version each, the pins between them, the
licence, and install hints that name distributions that exist.

`.ci/run` builds every wheel and sdist and runs `twine check --strict`; these tests
keep the metadata honest between runs, and build the core's two artefacts once to
see what they carry.
"""

from __future__ import annotations

import re
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import resilience
from resilience._demo import main

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - pytest brings tomli on 3.10
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = sorted(p.parent for p in (ROOT / "plugins").glob("*/pyproject.toml"))
PROJECTS = [ROOT, *PLUGINS]


def project(folder: Path) -> dict[str, Any]:
    """The ``[project]`` table of a folder's pyproject.toml (with its tool tables)."""
    data = tomllib.loads((folder / "pyproject.toml").read_text())
    return {**data["project"], "tool": data.get("tool", {})}


def names() -> set[str]:
    """Every distribution this repository publishes."""
    return {project(folder)["name"] for folder in PROJECTS}


def test_distribution_names() -> None:
    """The core is httpx-resilience; each plugin is httpx-resilience-<vendor> and
    still imports as resilience_<vendor> under the same entry-point group."""
    assert project(ROOT)["name"] == "httpx-resilience"
    assert project(ROOT)["scripts"] == {"resilience": "resilience._demo:main"}
    assert "http" in project(ROOT)["entry-points"]["resilience.classifiers"]
    vendors = set()
    for folder in PLUGINS:
        meta = project(folder)
        vendor = meta["name"].removeprefix("httpx-resilience-")
        vendors.add(vendor)
        assert meta["name"] == f"httpx-resilience-{vendor}"
        assert meta["entry-points"]["resilience.classifiers"] == {
            vendor: f"resilience_{vendor}:plugin"
        }
        assert meta["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == [
            f"src/resilience_{vendor}"
        ]
    assert {"tellus", "turris", "derapi", "acme"} <= vendors


@pytest.mark.parametrize("folder", PROJECTS, ids=lambda f: f.name)
def test_one_place_for_the_version(folder: Path) -> None:
    """The version is dynamic, read from ``__version__`` in the package (one place)."""
    meta = project(folder)
    assert "version" not in meta
    assert meta["dynamic"] == ["version"]
    source = folder / meta["tool"]["hatch"]["version"]["path"]
    assert re.search(r'^__version__ = "\d+\.\d+\.\d+[^"]*"', source.read_text(), re.M), source


@pytest.mark.parametrize("folder", PLUGINS, ids=lambda f: f.name)
def test_plugins_pin_the_core_s_compatible_range(folder: Path) -> None:
    """Each plugin needs httpx-resilience at this minor version and refuses the next
    one (and never the unrelated ``resilience`` on the public index)."""
    requirements = [Requirement(r) for r in project(folder)["dependencies"]]
    core = [r for r in requirements if r.name == "httpx-resilience"]
    assert len(core) == 1
    assert not [r for r in requirements if r.name == "resilience"]
    version = Version(resilience.__version__)
    next_minor = Version(f"{version.major}.{version.minor + 1}.0")
    assert core[0].specifier.contains(version)
    assert not core[0].specifier.contains(next_minor)


@pytest.mark.parametrize("folder", PROJECTS, ids=lambda f: f.name)
def test_every_distribution_has_the_mit_licence(folder: Path) -> None:
    """A LICENSE sits beside each pyproject.toml and the metadata names it."""
    text = (folder / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert "Copyright (c) 2026 the resilience authors" in text
    meta = project(folder)
    assert (meta["license"], meta["license-files"]) == ("MIT", ["LICENSE"])
    assert meta["classifiers"]
    assert meta["keywords"]
    assert meta["authors"] == [{"name": "the resilience authors"}]
    for url in meta["urls"].values():
        assert url.startswith("https://github.com/resilience-dev/httpx-resilience")


def test_install_hints_name_real_distributions() -> None:
    """Every ``pip install X`` the code can print names a distribution published
    from here (with a known extra, if any)."""
    published = names()
    extras = set(project(ROOT)["optional-dependencies"])
    sources = [*(ROOT / "resilience").rglob("*.py")]
    for folder in PLUGINS:
        sources += (folder / "src").rglob("*.py")
    found = 0
    for path in sources:
        for hint in re.findall(r"pip install ([^\"`\n]+)", path.read_text()):
            # The words after "pip install" up to the first that is no requirement
            # ("(or -turris, -derapi)", the end of a sentence); options are skipped.
            for word in hint.split():
                if word.startswith("-"):
                    continue
                word = word.strip("'").rstrip(").,;:'")
                if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*(\[[a-z,]+\])?", word):
                    break
                requirement = Requirement(word)
                assert requirement.name in published, (path.name, word)
                assert requirement.extras <= extras, (path.name, word)
                found += 1
    assert found >= 3


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """``resilience --version`` prints the distribution's name and version."""
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"httpx-resilience {resilience.__version__}\n"


def test_the_core_s_wheel_and_sdist(tmp_path: Path) -> None:
    """Built as a user's pip would: the wheel carries the package and the licence,
    the sdist carries the core alone (no plugins, no CI scripts, no benchmarks)."""
    build = pytest.importorskip("build")
    pytest.importorskip("hatchling")
    builder = build.ProjectBuilder(ROOT)
    sdist = Path(builder.build("sdist", tmp_path))
    wheel = Path(builder.build("wheel", tmp_path))
    assert wheel.name == f"httpx_resilience-{resilience.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        members = archive.namelist()
    assert "resilience/__init__.py" in members
    assert "resilience/py.typed" in members
    assert any(m.endswith(".dist-info/licenses/LICENSE") for m in members)
    assert not [m for m in members if m.startswith(("tests/", "plugins/"))]
    with tarfile.open(sdist) as archive:
        top = {name.split("/")[1] for name in archive.getnames() if "/" in name}
    assert {"resilience", "tests", "LICENSE", "README.md", "pyproject.toml"} <= top
    assert {"CHANGELOG.md", "CONTRIBUTING.md"} <= top
    assert not top & {"plugins", ".ci", "benchmarks", ".venv", ".git"}
