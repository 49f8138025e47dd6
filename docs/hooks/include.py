"""MkDocs hook: pages that show a file kept elsewhere in the repository include it.

A line ``--8<-- "plugins/tellus/README.md"`` is replaced by that file, so a plugin's
README or the benchmark results have one copy to keep right. Relative links in the
included file are rebased: one that points into ``docs/`` (the benchmark figure)
is rewritten relative to the page; any other stays as written, and a strict build
reports it. (pymdownx.snippets includes text but cannot rebase its links.)
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

_INCLUDE = re.compile(r'^--8<-- "(?P<path>[^"]+)"\s*$', re.MULTILINE)
_LINK = re.compile(r"(?P<prefix>!?\[[^\]]*\]\()(?P<target>[^)\s]+)(?P<suffix>[^)]*\))")
_ROOT = Path(__file__).resolve().parents[2]


def _rebase(text: str, source: str, page: str) -> str:
    def fix(match: re.Match[str]) -> str:
        target = match["target"]
        if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", target):
            return match[0]
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(source), target))
        if not resolved.startswith("docs/"):
            return match[0]
        inside = resolved.removeprefix("docs/")
        rebased = posixpath.relpath(inside, posixpath.dirname(page) or ".")
        return f"{match['prefix']}{rebased}{match['suffix']}"

    return _LINK.sub(fix, text)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    page_path = page.file.src_uri

    def include(match: re.Match[str]) -> str:
        source = match["path"]
        text = (_ROOT / source).read_text("utf-8")
        return _rebase(text, source, page_path)

    return _INCLUDE.sub(include, markdown)
