"""Every Python block in README.md, CONTRIBUTING.md, docs/ and the plugin READMEs runs as pasted.

The rules a block follows (docs/testing.md says the same for contributors):

* A ```` ```python ```` block is a whole program: it is run as ``__main__`` in a
  process of its own (``tests/example_worker.py``), offline (a server it needs is
  a vendor simulator on loopback), under asyncio and under trio when it calls
  ``anyio.run``. It must not fail, warn nor hang.
* What it prints is checked: a block that prints is followed by an
  ```` ```output ```` block holding the expected text (``...`` matches anything, as
  in doctest's ELLIPSIS), and a block with no output block must print nothing.
* A block that is only a fragment (it uses a ``client`` or a ``pipeline`` built
  elsewhere, it shows one call) says so with ``<!-- fragment -->`` on the line
  before it. A fragment is parsed (top-level ``await`` allowed) and type-checked
  with ``mypy --strict`` inside an ``async def``, after :data:`FRAGMENT_PRELUDE`,
  which declares the names fragments may use without defining them.
* Every block, whole or fragment, is type-checked in one mypy run.

A small collector rather than sybil or pytest-examples: those run blocks in the
pytest process (a block that sets the global OpenTelemetry providers or starts
uvicorn would leak into the other tests), check output in doctest or inline
``#>`` forms that do not read as a user's terminal, and neither type-checks
fragments; the rules above need about as much code as configuring them would.
"""

from __future__ import annotations

import ast
import doctest
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("example_worker.py")


def documents() -> list[Path]:
    """The Markdown files whose examples must run."""
    found = [ROOT / "README.md", ROOT / "CONTRIBUTING.md"]
    found += sorted((ROOT / "docs").rglob("*.md"))
    found += sorted((ROOT / "plugins").glob("*/README.md"))
    return [path for path in found if path.is_file()]


@attrs.frozen
class Block:
    """One fenced code block and what the text around it says about it."""

    path: str
    """The document, relative to the repository root."""
    line: int
    """The line of the block's first line of code (1-based)."""
    code: str
    fragment: bool
    output: str | None
    """The expected stdout, from the ```output block that follows, if any."""

    @property
    def name(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def backends(self) -> tuple[str, ...]:
        return ("asyncio", "trio") if "anyio.run(" in self.code else ("sync",)


_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
_FRAGMENT = re.compile(r"^\s*<!--\s*fragment\b.*-->\s*$")


def _fenced(lines: list[str]) -> Iterator[tuple[int, str, str, str]]:
    """Yield (first code line index, language, code, the line before the fence)."""
    index = 0
    previous = ""
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            if lines[index].strip():
                previous = lines[index]
            index += 1
            continue
        indent = len(opening["indent"])
        fence = opening["fence"]
        language = opening["info"].strip().split(" ")[0].lower() if opening["info"] else ""
        body: list[str] = []
        index += 1
        start = index
        while index < len(lines):
            closing = lines[index].strip()
            if closing.startswith(fence[0] * len(fence)) and not closing.strip(fence[0]):
                break
            body.append(lines[index][indent:] if lines[index][:indent].isspace() else lines[index])
            index += 1
        yield start, language, "\n".join(body) + "\n", previous
        previous = lines[start - 1]
        index += 1


def blocks_of(path: Path) -> tuple[list[Block], list[str]]:
    """The Python blocks of a document, and its problems (an output block with no code)."""
    relative = path.relative_to(ROOT).as_posix()
    found: list[Block] = []
    problems: list[str] = []
    pending: Block | None = None
    for start, language, code, previous in _fenced(path.read_text("utf-8").splitlines()):
        if language == "output":
            if pending is None or pending.fragment:
                problems.append(f"{relative}:{start}: an output block that follows no example")
            else:
                found[-1] = attrs.evolve(pending, output=code)
            pending = None
            continue
        pending = None
        if language not in ("python", "py"):
            continue
        block = Block(relative, start + 1, code, bool(_FRAGMENT.match(previous)), None)
        found.append(block)
        pending = block
    return found, problems


def all_blocks() -> list[Block]:
    return [block for path in documents() for block in blocks_of(path)[0]]


BLOCKS = all_blocks()
RUNNABLE = [
    pytest.param(block, backend, id=f"{block.name}-{backend}")
    for block in BLOCKS
    if not block.fragment
    for backend in block.backends
]
FRAGMENTS = [pytest.param(block, id=block.name) for block in BLOCKS if block.fragment]


def run_examples(requests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Run examples in the worker process; their results by request id."""
    done = subprocess.run(
        [sys.executable, str(WORKER)],
        input="".join(json.dumps(request) + "\n" for request in requests),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        timeout=600,
        check=False,
    )
    results = {}
    for line in done.stdout.splitlines():
        result: dict[str, Any] = json.loads(line)
        results[result["id"]] = result
    missing = {"status": f"not run: the worker exited {done.returncode}\n{done.stderr}"}
    return {request["id"]: results.get(request["id"], missing) for request in requests}


@pytest.fixture(scope="module")
def results() -> dict[str, dict[str, Any]]:
    """Every whole example, run once for the module (a few at a time)."""
    requests = [
        {
            "id": f"{block.name}-{backend}",
            "code": block.code,
            "filename": block.name,
            "backend": backend,
        }
        for block in BLOCKS
        if not block.fragment
        for backend in block.backends
    ]
    return run_examples(requests)


@pytest.mark.parametrize(("block", "backend"), RUNNABLE)
def test_example_runs(block: Block, backend: str, results: dict[str, dict[str, Any]]) -> None:
    """A whole example runs as pasted and prints exactly what its output block shows."""
    result = results[f"{block.name}-{backend}"]
    assert result["status"] == "ok", (
        f"{block.name} {result['status']} under {backend}:\n"
        f"{result.get('stderr', '')}{result.get('stdout', '')}"
    )
    assert result["stderr"] == "", f"{block.name} wrote to stderr:\n{result['stderr']}"
    printed: str = result["stdout"]
    if block.output is None:
        assert printed == "", (
            f"{block.name} prints, so an ```output block must follow it; it printed:\n{printed}"
        )
        return
    checker = doctest.OutputChecker()
    flags = doctest.ELLIPSIS
    assert checker.check_output(block.output, printed, flags), (
        f"{block.name} printed something else than its output block says:\n"
        + checker.output_difference(doctest.Example("", block.output), printed, flags)
    )


@pytest.mark.parametrize("block", FRAGMENTS)
def test_fragment_parses(block: Block) -> None:
    """A fragment is valid Python (top-level await allowed)."""
    try:
        compile(block.code, block.name, "exec", ast.PyCF_ALLOW_TOP_LEVEL_AWAIT | ast.PyCF_ONLY_AST)
    except SyntaxError as exc:
        pytest.fail(f"{block.name}: {exc}")


def test_every_output_block_follows_an_example() -> None:
    """An ```output block is the output of the whole example just above it."""
    problems = [problem for path in documents() for problem in blocks_of(path)[1]]
    assert problems == []


def test_examples_are_found() -> None:
    """The collector sees the documents' examples (a broken parser would pass vacuously)."""
    assert len(RUNNABLE) >= 20
    assert len(FRAGMENTS) >= 5
    assert {block.path for block in BLOCKS} >= {"README.md", "docs/getting-started.md"}


# Names a fragment may use without defining them, as if the page's previous
# example had made them. Fragments run inside ``async def``, so ``await`` works.
FRAGMENT_PRELUDE = """\
from __future__ import annotations

import anyio
import httpx
import resilience
from resilience import *  # noqa: F403

client: httpx.AsyncClient
pipeline: resilience.Pipeline
auth: resilience.TokenProvider
response: httpx.Response
r: httpx.Response
"""


def _fragment_source(block: Block) -> str:
    body = textwrap.indent(block.code, "    ")
    return f"{FRAGMENT_PRELUDE}\n\nasync def _fragment() -> None:\n{body}    pass\n"


def _prelude_lines() -> int:
    return FRAGMENT_PRELUDE.count("\n") + 3


def test_examples_type_check(tmp_path: Path) -> None:
    """Every block, whole or fragment, passes ``mypy --strict``."""
    if importlib.util.find_spec("mypy") is None:
        if os.environ.get("CI"):
            pytest.fail("mypy is not installed, and CI must type-check the examples")
        pytest.skip("mypy is not installed (pip install -e '.[dev]')")
    files: dict[str, tuple[Block, int]] = {}
    for number, block in enumerate(BLOCKS):
        slug = re.sub(r"\W+", "_", block.path.removesuffix(".md")).strip("_").lower()
        name = f"ex_{slug}_{block.line}_{number}.py"
        source = _fragment_source(block) if block.fragment else block.code
        (tmp_path / name).write_text(source, "utf-8")
        files[name] = (block, _prelude_lines() if block.fragment else 0)
    env = dict(os.environ)
    # The template plugin is not installed; its docs import it as a copy would.
    extra = str(ROOT / "plugins" / "_template" / "src")
    env["MYPYPATH"] = os.pathsep.join(filter(None, [extra, env.get("MYPYPATH")]))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            "--hide-error-context",
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            "--python-version",
            f"{sys.version_info[0]}.{sys.version_info[1]}",
            *sorted(files),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    errors = []
    for line in done.stdout.splitlines():
        match = re.match(r"^(ex_\w+\.py):(\d+): (.*)$", line)
        if match is None:
            errors.append(line)
            continue
        block, offset = files[match[1]]
        errors.append(f"{block.path}:{block.line + int(match[2]) - 1 - offset}: {match[3]}")
    assert not errors, "\n".join(errors)
    assert done.returncode == 0, done.stderr
