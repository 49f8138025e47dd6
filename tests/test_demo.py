"""The ``resilience`` command line: the demo and the plugin listing."""

from __future__ import annotations

import re

import pytest

from resilience._demo import main


def test_plugins_lists_every_installed_classifier(capsys: pytest.CaptureFixture[str]) -> None:
    """``resilience plugins`` names the generic classifier and the three first-party plugins."""
    assert main(["plugins"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["derapi", "http", "tellus", "turris"]


def test_demo_runs_the_preset_against_the_served_simulator(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The demo serves Tellus on loopback, injects errors, and every call is accounted for."""
    assert main(["demo", "--vendor", "tellus", "--calls", "12", "--error-rate", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "tellus: 12 calls to GET /v1/operator/sites at http://127.0.0.1:" in out
    counts = [
        int(n) for n in re.findall(r"^  (?:success|\w+Error|RetriesExhausted)\s+(\d+)$", out, re.M)
    ]
    assert sum(counts) == 12
    attempts = int(re.search(r"attempts sent\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    assert attempts > 12  # half the requests failed at first: some calls were retried


def test_demo_rejects_an_unknown_vendor(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown vendor name is an error that lists the installed classifiers."""
    assert main(["demo", "--vendor", "nosuch"]) == 2
    assert "installed classifiers" in capsys.readouterr().err
