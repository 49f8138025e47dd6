"""HttpClassifier(retry_statuses=..., fail_statuses=..., accept_statuses=...): the
peers' one-argument way to choose what is retried, failed and accepted."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience import Action, ExponentialBackoff, HttpClassifier, Retry, Verdict, report_of
from resilience.errors import ConfigurationError, PermanentError
from resilience.testing import ScriptedTransport, reply, through

REQUEST = httpx.Request("GET", "https://api.example.test/v1/things")
DEFAULT = HttpClassifier()
STATUSES = st.integers(min_value=100, max_value=599)
SETS = st.frozensets(STATUSES, max_size=8)


def action(classifier: HttpClassifier, status: int) -> Action:
    return classifier.classify(REQUEST, httpx.Response(status), None).action


@given(retry=SETS, fail=SETS, accept=SETS, status=STATUSES)
def test_given_sets_are_honoured_and_the_rest_reads_as_before(
    retry: frozenset[int], fail: frozenset[int], accept: frozenset[int], status: int
) -> None:
    """A status in a given set gets that set's action; a default-retry status left
    out of retry_statuses fails; every other status reads as the default does."""
    fail, accept = fail - retry, accept - retry - fail
    classifier = HttpClassifier(retry_statuses=retry, fail_statuses=fail, accept_statuses=accept)
    got = action(classifier, status)
    if status in retry:
        assert got is Action.RETRY
    elif status in fail:
        assert got is Action.FAIL
    elif status in accept:
        assert got is Action.ACCEPT
    elif action(DEFAULT, status) is Action.RETRY:
        assert got is Action.FAIL
    else:
        assert got is action(DEFAULT, status)


@given(fail=SETS, accept=SETS, status=STATUSES)
def test_fail_and_accept_take_statuses_out_of_the_default_retry_set(
    fail: frozenset[int], accept: frozenset[int], status: int
) -> None:
    """Without retry_statuses, fail_statuses={503} needs no other argument."""
    accept = accept - fail
    classifier = HttpClassifier(fail_statuses=fail, accept_statuses=accept)
    expected = Action.FAIL if status in fail else Action.ACCEPT if status in accept else None
    assert action(classifier, status) is (expected or action(DEFAULT, status))


def test_the_default_reading_is_unchanged() -> None:
    """HttpClassifier() reads statuses exactly as before, and never reads a 2xx body."""
    assert HttpClassifier() == DEFAULT
    assert repr(DEFAULT) == "HttpClassifier()"
    assert DEFAULT.needs_body is False
    assert HttpClassifier(retry_statuses={429}).needs_body is False
    for status, expected in {200: "ACCEPT", 401: "REFRESH_AUTH", 404: "FAIL", 503: "RETRY"}.items():
        assert action(DEFAULT, status) is Action[expected]


def test_retry_after_is_honoured_and_the_problem_is_the_default_one() -> None:
    """A chosen retry status keeps Retry-After and the usual problem fields."""
    classifier = HttpClassifier(retry_statuses={409})
    verdict = classifier.classify(REQUEST, httpx.Response(409, headers={"retry-after": "7"}), None)
    assert verdict.action is Action.RETRY
    assert verdict.retry_after == 7.0
    assert verdict.problem is not None
    assert (verdict.problem.status, verdict.problem.code, verdict.problem.title) == (
        409,
        "409",
        "Conflict",
    )


def test_transport_errors_read_as_before() -> None:
    """Narrowing the statuses leaves connection errors retried."""
    classifier = HttpClassifier(retry_statuses={429})
    verdict = classifier.classify(REQUEST, None, httpx.ConnectError("refused"))
    assert verdict.action is Action.RETRY


def test_repr_names_only_what_was_given() -> None:
    """The repr shows the arguments that differ from the default, sorted."""
    assert repr(HttpClassifier(retry_statuses={503, 429})) == (
        "HttpClassifier(retry_statuses={429, 503})"
    )
    assert repr(HttpClassifier(accept_statuses=[404])) == "HttpClassifier(accept_statuses={404})"


def test_it_is_frozen_and_hashable() -> None:
    """A configuration object: fields cannot change, equal ones hash alike."""
    classifier = HttpClassifier(retry_statuses=[429, 503])
    with pytest.raises(AttributeError):
        classifier.retry_statuses = frozenset()
    assert classifier == HttpClassifier(retry_statuses={503, 429})
    assert hash(classifier) == hash(HttpClassifier(retry_statuses={503, 429}))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"retry_statuses": "429"}, "retry_statuses must be a collection"),
        ({"retry_statuses": 429}, "retry_statuses must be a collection"),
        ({"fail_statuses": {600}}, "fail_statuses must hold HTTP status codes"),
        ({"accept_statuses": {True}}, "accept_statuses must hold HTTP status codes"),
        ({"accept_statuses": {"404"}}, "accept_statuses must hold HTTP status codes"),
        ({"retry_statuses": {503}, "fail_statuses": {503}}, "503 is in both retry_statuses"),
        ({"fail_statuses": {404}, "accept_statuses": {404}}, "404 is in both fail_statuses"),
    ],
)
def test_bad_arguments_are_refused_naming_them(kwargs: dict[str, object], message: str) -> None:
    """A wrong set fails at construction with a ConfigurationError naming it."""
    with pytest.raises(ConfigurationError, match=message):
        HttpClassifier(**kwargs)  # type: ignore[arg-type]


class Counting(HttpClassifier):
    """A subclass written before the fields existed: its __init__ does not call ours."""

    def __init__(self) -> None:
        self.calls = 0

    def classify(
        self, request: httpx.Request, response: httpx.Response | None, error: BaseException | None
    ) -> Verdict:
        self.calls += 1
        return super().classify(request, response, error)


def test_a_subclass_that_skips_our_init_keeps_the_default_reading() -> None:
    """Subclasses keep attributes of their own and the default reading."""
    counting = Counting()
    assert action(counting, 503) is Action.RETRY
    assert counting.calls == 1


@pytest.mark.anyio
async def test_only_the_chosen_statuses_are_retried_end_to_end() -> None:
    """classifier=HttpClassifier(retry_statuses={429, 503}): a 500 is not retried,
    a 503 is."""
    classifier = HttpClassifier(retry_statuses={429, 503})
    retry = Retry(backoff=ExponentialBackoff(initial=1.0, jitter="none"))
    inner = ScriptedTransport.of(reply(503), reply(200), reply(500))
    transport = through(inner, retry, classifier=classifier)
    async with httpx.AsyncClient(transport=transport) as client:
        r = await client.get("https://api.example.test/")
        assert (r.status_code, report_of(r).attempts) == (200, 2)
        with pytest.raises(PermanentError) as caught:
            await client.get("https://api.example.test/")
    assert caught.value.report is not None
    assert caught.value.report.attempts == 1


@pytest.mark.anyio
async def test_an_accepted_error_status_is_returned() -> None:
    """accept_statuses={404}: the 404 is handed back, not raised nor retried."""
    inner = ScriptedTransport.of(reply(404))
    transport = through(inner, Retry(), classifier=HttpClassifier(accept_statuses={404}))
    async with httpx.AsyncClient(transport=transport) as client:
        r = await client.get("https://api.example.test/")
    assert r.status_code == 404
    assert report_of(r).attempts == 1


@pytest.mark.anyio
async def test_a_success_status_the_classifier_fails_fails_end_to_end() -> None:
    """fail_statuses={204}: the engine asks the classifier about a 204 (it accepts
    answers below 400 on its own only for the generic classifier as it comes), and
    the call fails; the generic classifier's 200 is accepted, its verdict recorded."""
    inner = ScriptedTransport.of(reply(204))
    transport = through(inner, Retry(), classifier=HttpClassifier(fail_statuses={204}))
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(PermanentError) as caught:
            await client.get("https://api.example.test/")
    assert caught.value.report is not None
    assert [v.action for v in caught.value.report.verdicts] == [Action.FAIL]

    transport = through(ScriptedTransport.of(reply(200)), Retry(), classifier=DEFAULT)
    async with httpx.AsyncClient(transport=transport) as client:
        r = await client.get("https://api.example.test/")
    assert [v.action for v in report_of(r).verdicts] == [Action.ACCEPT]
