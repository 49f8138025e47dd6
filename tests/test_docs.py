"""The documentation site builds: ``mkdocs build --strict``, offline.

Strict mode turns every warning into a failure: a broken link or anchor between
pages, a page missing from the nav, an API reference entry (``::: resilience``)
that no longer resolves, a docstring griffe cannot read, a snippet whose file
moved. The theme is told not to load fonts (``theme.font: false``) and no plugin
fetches anything, so the build needs no network.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _need_mkdocs() -> None:
    if importlib.util.find_spec("mkdocs") is None:
        if os.environ.get("CI"):
            pytest.fail("mkdocs is not installed, and CI must build the docs (the dev extra)")
        pytest.skip("mkdocs is not installed: pip install -e '.[dev]' to build the docs")


def test_docs_build_strict(tmp_path: Path) -> None:
    """The site builds in strict mode with no warning, and links nothing off the machine."""
    _need_mkdocs()
    site = tmp_path / "site"
    env = dict(
        os.environ,
        # Material prints a banner about MkDocs 2.0 on every build; it is not a warning.
        NO_MKDOCS_2_WARNING="1",
        # Anything that tries the network fails at once instead of waiting.
        HTTP_PROXY="http://127.0.0.1:9",
        HTTPS_PROXY="http://127.0.0.1:9",
        NO_PROXY="",
    )
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    pages = list(site.rglob("*.html"))
    assert (site / "index.html").is_file()
    assert (site / "reference" / "resilience" / "index.html").is_file()
    for page in pages:
        html = page.read_text("utf-8")
        assert "fonts.googleapis.com" not in html, f"{page} loads web fonts"
    reference = (site / "reference" / "resilience" / "index.html").read_text("utf-8")
    # The API reference is generated from the docstrings, not left empty.
    for name in ("resilience.Pipeline", "resilience.Retry", "resilience.CircuitBreaker"):
        assert name in reference, f"{name} is missing from the API reference"


def test_docs_link_nothing_outside_the_repository() -> None:
    """No page points at a path outside the repository (the design notes are not in it)."""
    pattern = re.compile(r"\.\./shared/|\]\(\.\./\.\./")
    offenders = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "docs").rglob("*.md"))
        if pattern.search(path.read_text("utf-8"))
    ]
    assert offenders == []


def test_every_page_is_in_the_nav() -> None:
    """Every page under docs/ is reachable from the site's navigation."""
    config = (ROOT / "mkdocs.yml").read_text("utf-8")
    pages = sorted(
        path.relative_to(ROOT / "docs").as_posix() for path in (ROOT / "docs").rglob("*.md")
    )
    missing = [page for page in pages if f" {page}" not in config]
    assert missing == []
