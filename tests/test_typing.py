"""Type checkers catch the mistakes the API's types rule out, and accept its uses.

``tests/typing/check_api.py`` (the uses) and one snippet per mistake are checked
in a single ``mypy --strict`` run; each mistake must be reported on its line and
the uses must pass clean. Also here: ``report_of``, the typed way to a report.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from resilience import CallReport, HttpClassifier, Retry, Verdict, report_of
from resilience.testing import ScriptedTransport, reply, through

ROOT = Path(__file__).resolve().parents[1]
USES = ROOT / "tests" / "typing" / "check_api.py"

HEADER = "from resilience import *  # noqa: F403\nimport httpx\n"

#: name -> (snippet, what mypy must say about its last line)
MISTAKES: dict[str, tuple[str, str]] = {
    "jitter_typo": ('ExponentialBackoff(jitter="ful")', r'"ful".*JitterMode|Literal'),
    "classifier_type": ("Pipeline(classifier=42)", r'"classifier".*"int"'),
    "non_layer": ('Pipeline([Retry(), "Timeout"])', r'List item 1 has incompatible type "str"'),
    "statuses_type": ('HttpClassifier(retry_statuses="429")', r'"retry_statuses".*"str"'),
    "report_field": (
        "def f(r: httpx.Response) -> None:\n    print(report_of(r).gave_upp)",
        r'"CallReport" has no attribute "gave_upp"',
    ),
    "report_not_optional": (
        "def f(r: httpx.Response) -> None:\n    x: None = report_of(r)",
        r'"CallReport".*"None"',
    ),
}


def _mypy(*files: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec("mypy") is None:  # pragma: no cover - dev extra missing
        if os.environ.get("CI"):
            pytest.fail("mypy is not installed, and CI must type-check the API")
        pytest.skip("mypy is not installed (pip install -e '.[dev]')")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            "--hide-error-context",
            "--show-error-codes",
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            "--python-version",
            f"{sys.version_info[0]}.{sys.version_info[1]}",
            *files,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_api_type_checks_and_its_misuses_do_not(tmp_path: Path) -> None:
    """mypy --strict accepts every use in check_api.py and reports each mistake
    (jitter="ful", a classifier of the wrong type, a non-layer in Pipeline([...]),
    ...) on the mistaken line."""
    names = []
    for name, (snippet, _) in MISTAKES.items():
        path = tmp_path / f"mistake_{name}.py"
        path.write_text(HEADER + snippet + "\n", "utf-8")
        names.append(path.name)
    uses = tmp_path / "check_api.py"
    uses.write_text(USES.read_text("utf-8"), "utf-8")
    done = _mypy(uses.name, *names, cwd=tmp_path)
    assert done.returncode in (0, 1), done.stderr
    reported: dict[str, list[str]] = {}
    for line in done.stdout.splitlines():
        match = re.match(r"^([\w.]+\.py):(\d+): (error|note): (.*)$", line)
        assert match is not None, line
        if match[3] == "note":
            continue
        reported.setdefault(match[1], []).append(f"{match[2]}: {match[4]}")
    assert reported.pop("check_api.py", []) == []
    for name, (snippet, expected) in MISTAKES.items():
        last = HEADER.count("\n") + snippet.count("\n") + 1
        found = reported.get(f"mistake_{name}.py", [])
        assert any(line.startswith(f"{last}: ") and re.search(expected, line) for line in found), (
            name,
            found,
        )


@pytest.mark.anyio
async def test_report_of_a_pipeline_response() -> None:
    """report_of gives the CallReport of a response the pipeline returned."""
    inner = ScriptedTransport.of(reply(503), reply(200))
    seen: list[CallReport] = []

    class Watching(HttpClassifier):
        def classify(
            self,
            request: httpx.Request,
            response: httpx.Response | None,
            error: BaseException | None,
        ) -> Verdict:
            seen.append(report_of(request))
            return super().classify(request, response, error)

    transport = through(inner, Retry(), classifier=Watching())
    async with httpx.AsyncClient(transport=transport) as client:
        r = await client.get("https://api.example.test/")
    report = report_of(r)
    assert isinstance(report, CallReport)
    assert report is r.extensions["resilience"]
    assert report.attempts == 2
    # During the call the request carried the same report (what classifiers read),
    # and it does not keep it after.
    assert seen == [report, report]
    assert "resilience" not in r.request.extensions


def test_report_of_a_response_from_elsewhere_says_so() -> None:
    """A response that never went through a pipeline is a clear LookupError."""
    with pytest.raises(LookupError, match="did not come through a resilience Pipeline"):
        report_of(httpx.Response(200))
    with pytest.raises(LookupError):
        report_of(httpx.Response(200, extensions={"resilience": "forged"}))
    with pytest.raises(LookupError, match="this request did not come through"):
        report_of(httpx.Request("GET", "https://api.example.test/"))
    with pytest.raises(TypeError, match=r"httpx\.Response"):
        report_of(object())  # type: ignore[arg-type]
