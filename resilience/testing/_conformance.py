"""The plugin conformance suite: what every vendor plugin must do, as pytest tests.

A plugin's tests run it in a few lines::

    import resilience_acme
    from resilience.testing import PluginConformance

    class TestAcmeConformance(PluginConformance):
        plugin = resilience_acme.plugin

The suite checks, for the plugin object registered under its entry point:

* every code in the plugin's :class:`~resilience.CodeTable`, rendered as the vendor
  sends it (``plugin.render_error``) at each documented status, produces the
  declared action through a real :class:`~resilience.Pipeline` (attempts, error
  type, problem code);
* the classifier never raises and never hangs on garbage: random statuses,
  headers and bodies (hypothesis), invalid JSON, HTML, wrong types, 100 000
  nested lists, several megabytes;
* the token provider fetches a token from the plugin's simulator, the token
  opens the simulator's probe path, wrong credentials give an
  :class:`~resilience.errors.AuthenticationError` that never shows the secret;
* the preset builds (also through ``standard_pipeline``), accepts overrides, and
  survives a fault plan: every call ends in a response or a typed error.

Async tests ask for the ``anyio_backend`` fixture, so anyio's pytest plugin runs
them under each backend the host project's fixture names (without a mark, whose
decorator would need pytest at import). pytest and hypothesis are imported only
when the tests run: importing :mod:`resilience.testing` needs neither, and the
runtime never imports this module.
"""

from __future__ import annotations

import json
import time
from typing import Any, ClassVar, NoReturn

import httpx

from .._auth import AuthRefresh
from .._clock import VirtualClock
from .._loader import available_classifiers, load_plugin
from .._pipeline import Pipeline
from .._plugin import CodeEntry, VendorPlugin
from .._retry import ExponentialBackoff, Retry
from .._tokens import Token
from .._transport import ResilientTransport
from .._verdict import Action, Verdict
from ..errors import (
    AuthenticationError,
    PermanentError,
    ResilienceError,
    RetriesExhausted,
)
from ._faults import FaultPlan, Outage, Slowness
from ._transports import ScriptedTransport, reply

__all__ = ["PluginConformance"]


class _CountingToken:
    """A token provider that hands out a new token each time and counts fetches."""

    def __init__(self) -> None:
        self.fetches = 0

    async def fetch(self, http: httpx.AsyncClient) -> Token:
        self.fetches += 1
        return Token(f"conformance-token-{self.fetches}")


BASE_URL = "http://vendor.test"

_EXPECTED_ERROR: dict[Action, type[ResilienceError]] = {
    Action.RETRY: RetriesExhausted,
    Action.FAIL: PermanentError,
    Action.REFRESH_AUTH: AuthenticationError,
}


def _dumps(value: Any) -> bytes:
    # Python's encoder writes NaN and Infinity, which are not JSON: more garbage.
    return json.dumps(value).encode()


def _garbage_bodies() -> list[bytes]:
    """Hostile bodies every classifier must survive quickly."""
    depth = 100_000
    return [
        b"",
        b"null",
        b"[]",
        b"{",
        b"{}",
        b'{"code": NaN, "message": Infinity}',
        b"<html><body><h1>502 Bad Gateway</h1></body></html>",
        b"\xff\xfe\x00garbage\x00",
        b"\xef\xbb\xbf{}",
        "{}".encode("utf-16"),
        b"[" * depth + b"]" * depth,
        b'{"a":' * depth + b"1" + b"}" * depth,
        b'{"code": ' + b"9" * 50_000 + b"}",
        b'{"code": [1, 2], "message": {"x": 1}, "details": "nope", "errors": 7}',
        b'{"code": {"nested": true}, "errorType": 5, "errorMessage": null, "requestId": []}',
        b'{"type": 1, "title": [], "errors": {"a": "b"}, "detail": false}',
        b'{"code": 1e400}',
        b'{"code": -0.0, "statusCode": true}',
        b" " * 3_000_000 + b'{"code": 9001}',
        b'{"pad": "' + b"x" * 4_000_000 + b'", "code": 9001}',
        b"\x00" * 2_000_000,
    ]


class PluginConformance:
    """Base class of a plugin's conformance tests: set :attr:`plugin`.

    Optional settings: :attr:`client_id` / :attr:`client_secret` (the credentials
    the simulator is built with), :attr:`hypothesis_examples`.
    """

    plugin: ClassVar[VendorPlugin]
    """The plugin object under test (what the entry point resolves to)."""
    client_id: ClassVar[str] = "conformance-client"
    """The client id given to the simulator and to the token provider."""
    client_secret: ClassVar[str] = "conformance-secret-do-not-log"
    """The secret; the suite checks it never appears in reprs or errors."""
    hypothesis_examples: ClassVar[int] = 300
    """How many random responses the classifier is fed."""

    # ---- parametrisation -----------------------------------------------------------

    def pytest_generate_tests(self, metafunc: Any) -> None:
        """Give ``code_case`` one value per (code, documented status) of the table."""
        if "code_case" in metafunc.fixturenames:
            cases: list[tuple[str, int | None]] = []
            for code, entry in self.plugin.codes.items():
                statuses: tuple[int | None, ...] = entry.statuses or (None,)
                cases.extend((code, status) for status in statuses)
            ids = [f"{code}-{status}" for code, status in cases]
            metafunc.parametrize("code_case", cases, ids=ids)

    # ---- helpers -------------------------------------------------------------------

    def _skip(self, reason: str) -> NoReturn:
        import pytest

        pytest.skip(reason)

    def _simulator(self, clock: VirtualClock, plan: FaultPlan | None = None) -> Any:
        plugin = self.plugin
        if plugin.simulator is None:
            self._skip(f"plugin {plugin.name!r} ships no simulator")
        return plugin.simulator(
            plan=plan, clock=clock, client_id=self.client_id, client_secret=self.client_secret
        )

    def _provider(self, secret: str | None = None) -> Any:
        plugin = self.plugin
        if plugin.token_provider is None:
            self._skip(f"plugin {plugin.name!r} ships no token provider")
        return plugin.token_provider(
            client_id=self.client_id,
            client_secret=self.client_secret if secret is None else secret,
            base_url=BASE_URL,
        )

    def _rendered(self, code: str, status: int | None) -> httpx.Response:
        plugin = self.plugin
        if plugin.render_error is None:
            self._skip(f"plugin {plugin.name!r} has no render_error")
        return plugin.render_error(code, status)

    # ---- the plugin object ----------------------------------------------------------

    def test_plugin_shape(self) -> None:
        """The plugin names itself, its classifier says the same vendor, and its
        codes are a table."""
        plugin = self.plugin
        assert isinstance(plugin, VendorPlugin)
        assert plugin.name
        assert plugin.name == plugin.name.strip().lower()
        assert getattr(plugin.classifier, "vendor", None) == plugin.name
        assert len(plugin.codes) > 0, "a plugin maps at least one vendor code"
        for code, entry in plugin.codes.items():
            assert isinstance(code, str)
            assert isinstance(entry, CodeEntry)

    def test_entry_point_registered(self) -> None:
        """``pip install`` is all it takes: the entry point resolves to the plugin."""
        if self.plugin.name not in available_classifiers():
            self._skip(f"plugin {self.plugin.name!r} is not installed (no entry point)")
        assert load_plugin(self.plugin.name) is self.plugin

    # ---- every code, through a real pipeline -----------------------------------------

    async def test_code_gives_declared_action(
        self, anyio_backend: str, code_case: tuple[str, int | None]
    ) -> None:
        """The vendor's own answer for each code gives the table's action, end to end."""
        import pytest

        code, status = code_case
        entry = self.plugin.codes[code]
        rendered = self._rendered(code, status)
        if status is not None:
            assert rendered.status_code == status
        step = reply(
            rendered.status_code,
            content=rendered.content,
            headers={k: v for k, v in rendered.headers.items() if k != "content-length"},
        )
        inner = ScriptedTransport.of(step)
        clock = VirtualClock()
        pipeline = Pipeline(
            [Retry(max_attempts=2, backoff=ExponentialBackoff(jitter="none"), budget=None)],
            classifier=self.plugin.classifier,
            clock=clock,
            telemetry=False,
        )
        transport = ResilientTransport(pipeline, inner=inner)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
            if entry.action is Action.ACCEPT:
                response = await client.get("/conformance")
                report = response.extensions["resilience"]
                assert [v.action for v in report.verdicts] == [Action.ACCEPT]
                assert report.attempts == 1
            else:
                if entry.action not in _EXPECTED_ERROR:
                    self._skip(f"{entry.action!r} is checked by the plugin's own tests")
                expected = _EXPECTED_ERROR[entry.action]
                with pytest.raises(ResilienceError) as caught:
                    await client.get("/conformance")
                error = caught.value
                assert isinstance(error, expected), (code, status, type(error).__name__)
                verdicts = error.report.verdicts
                assert verdicts, "every attempt is classified"
                assert {v.action for v in verdicts} == {entry.action}, (code, verdicts)
                assert error.report.attempts == (2 if entry.action is Action.RETRY else 1)
                problem = verdicts[0].problem
                assert problem is not None
                assert problem.vendor == self.plugin.name
                assert problem.code == code
                assert problem.status == rendered.status_code
                assert isinstance(error, httpx.HTTPStatusError)
                assert self.plugin.name in str(error)
        assert inner.unclosed() == []

    async def test_refresh_codes_refresh_once_then_fail(self, anyio_backend: str) -> None:
        """Each REFRESH_AUTH code, under AuthRefresh: one refresh, one replay, then an
        AuthenticationError (a second rejection is permanent)."""
        import pytest

        codes = self.plugin.codes.codes_for(Action.REFRESH_AUTH)
        if not codes:
            self._skip(f"plugin {self.plugin.name!r} has no REFRESH_AUTH code")
        for code in codes:
            rendered = self._rendered(code, None)
            headers = {k: v for k, v in rendered.headers.items() if k != "content-length"}
            inner = ScriptedTransport.of(
                reply(rendered.status_code, content=rendered.content, headers=headers)
            )
            provider = _CountingToken()
            pipeline = Pipeline(
                [Retry(max_attempts=3, budget=None), AuthRefresh(provider)],
                classifier=self.plugin.classifier,
                clock=VirtualClock(),
                telemetry=False,
            )
            transport = ResilientTransport(pipeline, inner=inner)
            async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
                with pytest.raises(AuthenticationError) as caught:
                    await client.get("/conformance")
            assert caught.value.report.attempts == 2, code
            assert provider.fetches == 2, code
            assert len(inner.requests) == 2, code
            assert inner.unclosed() == []

    # ---- garbage never breaks the classifier ----------------------------------------

    def _classify_quickly(self, response: httpx.Response, limit: float = 2.0) -> Verdict:
        request = httpx.Request("GET", f"{BASE_URL}/conformance")
        started = time.perf_counter()
        verdict = self.plugin.classifier.classify(request, response, None)
        took = time.perf_counter() - started
        assert isinstance(verdict, Verdict)
        assert took < limit, f"classify took {took:.2f}s"
        if verdict.retry_after is not None:
            assert 0.0 <= verdict.retry_after < float("inf")
        return verdict

    def test_classifier_survives_hostile_bodies(self) -> None:
        """Deep nesting, megabytes, invalid JSON and wrong types: a verdict, fast."""
        for status in (200, 400, 401, 429, 500, 503):
            for body in _garbage_bodies():
                response = httpx.Response(
                    status,
                    content=body,
                    headers={"content-type": "application/json", "retry-after": "x"},
                )
                verdict = self._classify_quickly(response)
                if status >= 500 or status == 429:
                    # Whatever the body, a server error is never a success.
                    assert verdict.action is not Action.ACCEPT, (status, body[:40])

    def test_classifier_survives_errors(self) -> None:
        """Exceptions instead of responses get a verdict; transport errors retry."""
        request = httpx.Request("GET", f"{BASE_URL}/conformance")
        classifier = self.plugin.classifier
        for error in (
            httpx.ConnectError("refused", request=request),
            httpx.ReadTimeout("slow", request=request),
            httpx.RemoteProtocolError("bad", request=request),
            ValueError("odd"),
            RuntimeError(),
        ):
            verdict = classifier.classify(request, None, error)
            assert isinstance(verdict, Verdict)
            if isinstance(error, httpx.TransportError):
                assert verdict.action is Action.RETRY

    def test_classifier_never_raises_on_random_responses(self) -> None:
        """Hypothesis: random statuses, headers and bodies, vendor-shaped or not."""
        from hypothesis import HealthCheck, given, settings
        from hypothesis import strategies as st

        json_leaf = st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(),
            st.text(max_size=30),
        )
        json_value = st.recursive(
            json_leaf,
            lambda children: st.one_of(
                st.lists(children, max_size=4),
                st.dictionaries(st.text(max_size=12), children, max_size=4),
            ),
            max_leaves=20,
        )
        vendor_keys = st.sampled_from(
            [
                "code",
                "message",
                "details",
                "data",
                "statusCode",
                "requestId",
                "errorType",
                "errorMessage",
                "timestamp",
                "type",
                "title",
                "detail",
                "errors",
                "field",
                "retry_after_seconds",
            ]
        )
        table_codes = list(self.plugin.codes) or ["0"]
        code_value = st.one_of(
            st.sampled_from(table_codes),
            st.sampled_from(table_codes).map(lambda c: int(c) if c.lstrip("-").isdigit() else c),
            json_value,
        )
        shaped = st.dictionaries(vendor_keys, st.one_of(json_value, code_value), max_size=8).map(
            lambda d: _dumps(d)
        )
        raw = st.one_of(
            st.binary(max_size=300),
            json_value.map(lambda v: _dumps(v)),
            shaped,
            st.text(max_size=200).map(str.encode),
        )
        header_value = st.one_of(
            st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
            st.integers(-(10**12), 10**13).map(str),
            st.sampled_from(
                ["Wed, 21 Oct 2015 07:28:00 GMT", "0", "-1", "1e9", "nan", "inf", " 60 "]
            ),
        )
        headers = st.dictionaries(
            st.sampled_from(
                [
                    "retry-after",
                    "x-ratelimit-reset",
                    "x-ratelimit-remaining",
                    "x-ratelimit-limit",
                    "date",
                    "content-type",
                    "x-request-id",
                ]
            ),
            header_value,
            max_size=5,
        )

        @settings(
            max_examples=self.hypothesis_examples,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
        )
        @given(status=st.integers(100, 599), headers=headers, body=raw)
        def check(status: int, headers: dict[str, str], body: bytes) -> None:
            response = httpx.Response(status, headers=headers, content=body)
            verdict = self._classify_quickly(response)
            if status >= 500:
                assert verdict.action is not Action.ACCEPT

        check()

    # ---- the token flow against the simulator ------------------------------------------

    async def test_token_provider_against_simulator(self, anyio_backend: str) -> None:
        """The provider fetches a token the simulator accepts on its probe path."""
        clock = VirtualClock()
        app = self._simulator(clock)
        provider = self._provider()
        assert self.client_secret not in repr(provider)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as http:
            token = await provider.fetch(http)
            assert isinstance(token.value, str)
            assert token.value
            assert token.expires_in is None or token.expires_in > 0
            assert token.value not in repr(token)
            probe = self.plugin.probe
            if probe is not None:
                request = http.build_request(
                    "GET", probe, headers={"Authorization": f"Bearer {token.value}"}
                )
                response = await http.send(request)
                await response.aread()
                verdict = self.plugin.classifier.classify(request, response, None)
                assert verdict.action is Action.ACCEPT, verdict
                anonymous = await http.get(probe)
                verdict = self.plugin.classifier.classify(anonymous.request, anonymous, None)
                assert verdict.action is Action.REFRESH_AUTH, verdict

    async def test_token_provider_rejects_bad_credentials(self, anyio_backend: str) -> None:
        """Wrong credentials: an AuthenticationError that never shows the secret."""
        import pytest

        clock = VirtualClock()
        app = self._simulator(clock)
        wrong = "wrong-secret-never-shown"
        provider = self._provider(secret=wrong)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as http:
            with pytest.raises(AuthenticationError) as caught:
                await provider.fetch(http)
        text = f"{caught.value!s} {caught.value!r} {caught.value.problem!r}"
        assert wrong not in text
        assert self.plugin.name in str(caught.value)

    # ---- the preset ---------------------------------------------------------------------

    def test_preset_builds(self) -> None:
        """The preset builds a pipeline on the plugin's classifier, with overrides."""
        import resilience

        plugin = self.plugin
        if plugin.preset is None:
            self._skip(f"plugin {plugin.name!r} ships no preset")
        pipeline = plugin.preset(clock=VirtualClock())
        assert isinstance(pipeline, Pipeline)
        assert pipeline.env.vendor == plugin.name
        tuned = plugin.preset(
            clock=VirtualClock(), max_attempts=2, raise_on_failure=False, telemetry=False
        )
        assert isinstance(tuned, Pipeline)
        assert tuned.raise_on_failure is False
        if plugin.name in available_classifiers():
            via_name = resilience.standard_pipeline(plugin.name, clock=VirtualClock())
            assert isinstance(via_name, Pipeline)
            assert via_name.env.vendor == plugin.name

    async def test_preset_survives_fault_plan(self, anyio_backend: str) -> None:
        """Through the preset, against a faulty simulator, every call ends cleanly:
        a response, or a typed error."""
        plugin = self.plugin
        if plugin.preset is None or plugin.probe is None:
            self._skip(f"plugin {plugin.name!r} ships no preset or no probe path")
        assert plugin.probe is not None
        retry_codes = plugin.codes.codes_for(Action.RETRY)
        plan = FaultPlan(
            errors={code: 0.15 for code in retry_codes},
            outages=[Outage(start=40.0, duration=20.0)],
            slow=[Slowness(delay=0.5, rate=0.2)],
            seed=1234,
        )
        clock = VirtualClock()
        app = self._simulator(clock, plan)
        provider = self._provider()
        pipeline = plugin.preset(auth=provider, clock=clock, telemetry=False)
        transport = ResilientTransport(pipeline, inner=httpx.ASGITransport(app=app))
        outcomes: list[str] = []
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
            for _ in range(30):
                try:
                    response = await client.get(plugin.probe)
                except ResilienceError as exc:
                    outcomes.append(type(exc).__name__)
                else:
                    outcomes.append(str(response.status_code))
                    assert response.status_code < 400
                clock.advance(1.0)
        assert any(o.isdigit() for o in outcomes), outcomes
