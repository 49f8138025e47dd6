"""Every async test runs under asyncio and under trio; `redis_server` starts a real Redis."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _hypothesis_profile() -> None:
    # Shared CI machines are noisy: a per-example deadline would only add flakes.
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "default", deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    settings.load_profile("default")


_hypothesis_profile()


@pytest.fixture
def redis_server() -> Iterator[Any]:
    """A fresh ``redis-server`` on loopback (``tests/_redis.py``), stopped afterwards.

    Skipped with a message saying how to install it when the binary is missing,
    except under ``CI=true``, where a missing server fails the test.
    """
    helper = _redis_helper()
    binary = helper.find_server()
    if binary is None:
        must, message = helper.missing_server_message()
        if must:
            pytest.fail(message)
        pytest.skip(message)
    server = helper.RedisServer(binary)
    server.start()
    # By now the test process holds the objects of every test before this one: a
    # full collection of them pauses the event loop for 100 ms and more (Python
    # 3.13), longer than the store's 0.1 s timeout, and a round trip it straddles
    # would count as a Redis outage. Frozen, they are left out of collections while
    # this test runs; what the test allocates is collected as usual.
    gc.freeze()
    try:
        yield server
    finally:
        gc.unfreeze()
        server.stop()


@pytest.fixture(scope="session")
def redis_helper() -> Any:
    """``tests/_redis.py`` (server, worker processes, constants), loaded once."""
    return _redis_helper()


def _redis_helper() -> Any:
    # The tests run with --import-mode=importlib: load the helper by its path.
    import importlib.util
    import sys
    from pathlib import Path

    module = sys.modules.get("_redis_helper")
    if module is None:
        spec = importlib.util.spec_from_file_location(
            "_redis_helper", Path(__file__).parent / "tests" / "_redis.py"
        )
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["_redis_helper"] = module
        spec.loader.exec_module(module)
    return module
