"""``resilience demo --workers N --redis URL``: a fleet of processes sharing one Redis.

The run goes through the real command against the Tellus simulator on loopback
and a ``redis-server`` the test starts (skipped, failed under CI=true, when it is
missing, as the other Redis tests). The workers are other processes, so the run
takes real time: 2 workers for 5 s.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from typing import Any

import pytest

from resilience._demo import main
from resilience._demo_fleet import _report, expected_fetches


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit:
            code = int(exit.code or 0)
    return code, out.getvalue(), err.getvalue()


#: Seconds of the fleet run the tests share.
SECONDS = 5


@pytest.fixture(scope="module")
def redis_url(redis_helper: Any) -> Iterator[str]:
    """A redis-server on loopback for this module; skipped (failed under CI) when missing."""
    binary = redis_helper.find_server()
    if binary is None:
        must, message = redis_helper.missing_server_message()
        if must:
            pytest.fail(message)
        pytest.skip(message)
    server = redis_helper.RedisServer(binary)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def fleet(redis_url: str) -> dict[str, Any]:
    """One JSON fleet run: 2 workers, 5 s, Tellus (shared by the tests below).

    5 s, not less: calls that meet the open breaker are held until a probe
    succeeds after the 1.5 s outage, and the fleet must see some of them through."""
    code, out, err = _run(
        ["demo", "--workers", "2", "--redis", redis_url, "--seconds", str(SECONDS), "--json"]
    )
    assert code == 0, err
    return dict(json.loads(out))


def test_the_fleet_holds_the_rate_limit(fleet: dict[str, Any]) -> None:
    """Both workers got answers, the fleet's calls (retries aside: a call takes one
    slot) stayed within the limiter's bound, and the simulator (which enforces
    Tellus's 60 queries a minute) answered none over it."""
    assert fleet["vendor"] == "tellus"
    # The fleet shares 12 slots, handed out in the order they are asked for: a
    # worker whose callers queued behind the other's may finish none. So
    # each worker is only known to have run, and the fleet to have been answered.
    assert len({w["pid"] for w in fleet["per_worker"]}) == 2
    assert sum(w["ok"] for w in fleet["per_worker"]) > 0
    assert fleet["limiter"]["name"] == "tellus-queries"
    assert 0 < fleet["calls"] <= fleet["limiter"]["bound"]
    assert fleet["sent"] >= fleet["limiter"]["burst"]
    assert fleet["over_limit_answers"] == 0
    assert fleet["redis_fallback_calls"] == 0


def test_the_fleet_fetches_one_token_per_expiry(fleet: dict[str, Any]) -> None:
    """A 4 s token refreshed at 2 s, 5 s of run: at most 3 token requests for the
    fleet (the last refresh is due only if a call comes after 4 s), never one per
    worker and refresh (6)."""
    requests = fleet["token_requests"]
    assert expected_fetches(SECONDS) == 3
    assert 2 <= requests <= 3
    assert sum(w["fetched"] for w in fleet["per_worker"]) == requests


def test_the_shared_breaker_opens_once_for_the_fleet(fleet: dict[str, Any]) -> None:
    """The 1.5 s outage at the start opens the breaker (10 failures in a row) although
    no worker saw 10 failures of its own: the failures are counted for the fleet.
    Each worker's circuit opened at most once (no flapping), and the outage drew
    fewer failed requests than 10 per worker would have."""
    assert fleet["outage"] == 1.5
    workers = fleet["per_worker"]
    assert fleet["breaker_opened"] >= 1
    assert all(w["opened"] <= 1 for w in workers)
    assert all(w["outage_answers"] < 10 for w in workers if w["opened"])
    assert 10 <= fleet["outage_answers"] < 10 * len(workers)


def test_the_text_report_says_what_is_shared(fleet: dict[str, Any]) -> None:
    """The text names the limit held, the token count, and the shared breaker."""
    text = "\n".join(_report(fleet))
    assert "tellus-queries" in text
    assert "answered 0 of them over its limit" in text
    assert f"{fleet['token_requests']} token request(s) from the whole fleet" in text
    assert "the circuit breaker in Redis" in text
    assert "so it opened once for the fleet" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--workers", "2"], "--workers needs --redis"),
        (["demo", "--redis", "redis://127.0.0.1:1/0"], "--redis applies to a fleet run"),
        (["demo", "--workers", "2", "--redis", "http://x"], "--redis must be a redis://"),
        (
            ["demo", "--workers", "2", "--redis", "redis://127.0.0.1:1/0", "--serve"],
            "--workers needs --redis",
        ),
    ],
)
def test_fleet_options_are_checked(argv: list[str], message: str) -> None:
    """Fleet options without a fleet, or a fleet without Redis, are usage errors."""
    code, _, err = _run(argv)
    assert code == 2
    assert message in err


def test_an_unreachable_redis_is_said_plainly(redis_helper: Any) -> None:
    """Nothing listening: exit 2 and a line naming host and port, no traceback."""
    port = redis_helper.free_port()
    code, out, err = _run(["demo", "--workers", "2", "--redis", f"redis://:pw@127.0.0.1:{port}/0"])
    assert code == 2
    assert f"Redis at 127.0.0.1:{port} does not answer" in err
    assert "pw" not in err
    assert out == ""
