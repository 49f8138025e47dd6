"""The Derapi classifier: RFC 9457 problem details, partial-success lists, splitting.

Derapi answers errors with problem details (``application/problem+json``, or plain
``application/json``): ``type`` (a URI, the canonical code), ``title``, ``detail``
and, for validation errors, ``errors[{detail, pointer}]``. Its list endpoints
(``/sites``, ``/batteries``, ``/solar-inverters``) answer ``200`` even when some
vendor backends failed, naming them in an ``errors`` object: that is a ``SPLIT``,
and this classifier also implements the splitting protocol
(:mod:`resilience._splitter`) so the :class:`~resilience.PartialFailureSplitter`
can re-ask a failed backend alone through the ``vendor`` filter.

Where it sits: the pipeline's innermost step asks it about every attempt, once.
It never raises: any surprise falls back to the HTTP status.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from typing import Any

import attrs
import httpx

from resilience import (
    IDEMPOTENT_METHODS,
    Action,
    CodeEntry,
    CodeTable,
    FieldError,
    Problem,
    Split,
    Verdict,
    classify_error,
    classify_status,
    is_idempotent,
    parse_json_object,
    render_json,
    report_of,
    retry_after_of,
    safe_classify,
)
from resilience.errors import ConfigurationError

__all__ = [
    "BACKEND_ERROR_NAMES",
    "BODY_TOO_LARGE",
    "DERAPI_CODES",
    "IDEMPOTENT_METHODS",
    "MAX_PAGE_BYTES",
    "TYPE_PREFIX",
    "DerapiClassifier",
    "backend_verdict",
    "type_uri",
]


VENDOR = "derapi"

TYPE_PREFIX = "https://docs.derapi.com/reference/errors#"
"""Derapi's type URIs are this prefix plus the error's kebab-case slug."""


def type_uri(slug: str) -> str:
    """The full type URI of a Derapi error slug (``"not-found"`` -> ``"https://…#not-found"``)."""
    return TYPE_PREFIX + slug


VALIDATION_ERROR = type_uri("validation-error")
VCM_NOT_CONFIGURED = type_uri("vcm-not-configured")
UNAUTHORIZED = type_uri("unauthorized")
NOT_FOUND = type_uri("not-found")
EXISTS = type_uri("exists")
DERAPI_INTERNAL_ERROR = type_uri("derapi-internal-error")
BACKEND_DATA_ASSERTION_ERROR = type_uri("backend-data-assertion-error")
BACKEND_SERVER_ERROR = type_uri("backend-server-error")
NETWORK_TIMEOUT = type_uri("network-timeout")
TOO_MANY_REQUESTS = type_uri("too-many-requests")

DERAPI_CODES = CodeTable(
    {
        # The caller's request is wrong: the same request gets the same answer.
        VALIDATION_ERROR: CodeEntry(Action.FAIL, 400, title="Invalid request"),
        # Account set-up, not a transient state: "contact support".
        VCM_NOT_CONFIGURED: CodeEntry(
            Action.FAIL, 400, title="VCM Not Configured", also=(403, 424)
        ),
        # A vendor backend rejected the *vendor* credentials stored at Derapi: never
        # retried, and never a refresh of our own token, whatever the status.
        UNAUTHORIZED: CodeEntry(Action.FAIL, 401, title="Unauthorized", also=(403,)),
        NOT_FOUND: CodeEntry(Action.FAIL, 404, title="Not Found"),
        EXISTS: CodeEntry(Action.FAIL, 409, title="Exists"),
        # Retried a few times for idempotent requests only (see DerapiClassifier).
        DERAPI_INTERNAL_ERROR: CodeEntry(Action.RETRY, 500, title="Derapi Internal Error"),
        # The backend sent data Derapi cannot read: asking again reads the same data.
        BACKEND_DATA_ASSERTION_ERROR: CodeEntry(
            Action.FAIL, 502, title="Backend Data Assertion Error"
        ),
        BACKEND_SERVER_ERROR: CodeEntry(Action.RETRY, 502, title="Backend Server Error"),
        NETWORK_TIMEOUT: CodeEntry(Action.RETRY, 504, title="Network Timeout"),
        TOO_MANY_REQUESTS: CodeEntry(Action.RETRY, 429, title="Too Many Requests"),
    }
)
"""Every documented Derapi error type (full URI) and its action."""

BACKEND_ERROR_NAMES: Mapping[str, str] = {
    "unauthorized": UNAUTHORIZED,
    "vcm not configured": VCM_NOT_CONFIGURED,
    "not found": NOT_FOUND,
    "exists": EXISTS,
    "validation error": VALIDATION_ERROR,
    "invalid request": VALIDATION_ERROR,
    "derapi internal error": DERAPI_INTERNAL_ERROR,
    "backend data assertion error": BACKEND_DATA_ASSERTION_ERROR,
    "backend server error": BACKEND_SERVER_ERROR,
    "network timeout": NETWORK_TIMEOUT,
    "timeout": NETWORK_TIMEOUT,
    "too many requests": TOO_MANY_REQUESTS,
}
"""Leading error names of the strings in a list's ``errors`` object, to types.

Matched case-insensitively, with ``-`` and ``_`` read as spaces, at the start of
the string and followed by its end or a non-alphanumeric character
(``"Unauthorized: https://…"``, ``"Network Timeout after 30s"``). Nothing after
the name is ever read. A string with no known name is RETRY (see
:func:`backend_verdict`)."""

#: Where internal errors are counted for a request classified outside a pipeline
#: (it carries no call report).
INTERNAL_ERRORS_EXTENSION = "resilience.derapi.internal_errors"

#: Backend keys the splitter may put in a ``vendor`` filter (the SDK's Vendor enum
#: is lower-case words; anything else in an ``errors`` object is not narrowed).
_VENDOR_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
#: What the pipeline marks a body it cut at its cap with (``Pipeline(max_body_bytes=...)``).
_BODY_TRUNCATED = "resilience.body_truncated"
MAX_PAGE_BYTES = 256 << 20
"""The largest list page parsed for its ``errors`` (the pipeline's ``max_body_bytes``,
16 MiB by default, is usually the tighter bound). A page that is not read whole is
FAIL (``body_too_large``): never accepted with failures nobody looked at."""
BODY_TOO_LARGE = "body_too_large"
"""The ``Problem.code`` of a success page too large to check for failed backends."""
#: Most backends tracked from one ``errors`` object (a garbage body may hold more;
#: the rest stay in the rendered ``errors`` as Derapi gave them).
_MAX_BACKENDS = 1000
_MAX_TEXT = 500
_STANDARD_MEMBERS = frozenset({"type", "title", "detail", "errors"})
_SEPARATORS = re.compile(r"[\s_\-]+")
_NAMES_LONGEST_FIRST = tuple(sorted(BACKEND_ERROR_NAMES, key=len, reverse=True))
_TYPE_BASES = frozenset(
    {
        "https://docs.derapi.com/reference/errors",
        "http://docs.derapi.com/reference/errors",
        "https://docs.derapi.com/reference/errors/",
        "",
    }
)


def _cut(text: str, limit: int = _MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def canonical_type(value: str | None) -> str | None:
    """The table's URI for a problem ``type``, tolerating spelling variants.

    The exact URI first; then the same fragment under ``http://``, with a
    trailing slash, or as a bare ``#slug`` reference. ``None`` for anything else.
    """
    if value is None:
        return None
    if value in DERAPI_CODES:
        return value
    base, hash_mark, slug = value.strip().rpartition("#")
    if not hash_mark or base not in _TYPE_BASES:
        return None
    candidate = type_uri(slug.strip().lower())
    return candidate if candidate in DERAPI_CODES else None


def _leading_type(text: str) -> str | None:
    """The type URI named at the start of a backend error string, if any."""
    head = _SEPARATORS.sub(" ", text[:80].strip().lower())
    for name in _NAMES_LONGEST_FIRST:
        if head.startswith(name) and (len(head) == len(name) or not head[len(name)].isalnum()):
            return BACKEND_ERROR_NAMES[name]
    return None


def backend_verdict(backend: str, message: Any) -> Verdict:
    """The verdict of one failed backend of a partial-success list.

    The action comes from the leading error name of ``message`` (see
    :data:`BACKEND_ERROR_NAMES`): ``Unauthorized`` (the backend rejected the
    vendor credentials), ``VCM Not Configured``, ``Not Found``, ``Exists``,
    ``Invalid request`` and ``Backend Data Assertion Error`` are FAIL;
    ``Timeout``/``Network Timeout``, ``Too Many Requests``, ``Backend Server
    Error`` and ``Derapi Internal Error`` (a list read is idempotent) are RETRY.

    A message with no known name is RETRY: a re-request of one backend costs one
    narrowed request per round, bounded by the splitter's rounds, the retry budget
    and the backend's own breaker, while a wrong FAIL would drop data a second
    try would have delivered. Derapi documents the permanent backend failures
    (``Unauthorized``) by name, so those are never re-asked.
    """
    text = _cut(message.strip()) if isinstance(message, str) and message.strip() else None
    code = _leading_type(text) if text is not None else None
    entry = DERAPI_CODES.get(code) if code is not None else None
    if entry is not None:
        action = entry.action
        title = entry.title
    else:
        action = Action.RETRY
        title = None
        if text is not None:
            name, colon, _ = text.partition(":")
            if colon and 0 < len(name) <= 60 and "/" not in name:
                title = name.strip()
    problem = Problem(
        vendor=VENDOR, code=code, title=title, detail=text, details={"backend": backend}
    )
    return Verdict(action, problem=problem)


def _field_errors(value: Any) -> tuple[FieldError, ...]:
    if not isinstance(value, list):
        return ()
    found: list[FieldError] = []
    for item in value[:50]:
        if not isinstance(item, dict):
            continue
        pointer = item.get("pointer")
        detail = item.get("detail")
        pointer = _cut(pointer, 200) if isinstance(pointer, str) else None
        detail = _cut(detail) if isinstance(detail, str) else None
        if pointer is None and detail is None:
            continue
        found.append(FieldError(pointer=pointer, field=_field_of(pointer), detail=detail))
    return tuple(found)


def _field_of(pointer: str | None) -> str | None:
    """The last reference token of a JSON Pointer (``"#/duration"`` -> ``"duration"``)."""
    if not pointer:
        return None
    path = pointer[1:] if pointer.startswith("#") else pointer
    if not path.startswith("/"):
        return None
    token = path.rsplit("/", 1)[-1]
    return token.replace("~1", "/").replace("~0", "~") or None


@attrs.frozen(kw_only=True)
class _ProblemBody:
    type: str | None
    title: str | None
    detail: str | None
    errors: tuple[FieldError, ...]
    extensions: dict[str, Any]


def _problem_body(body: dict[str, Any] | None) -> _ProblemBody | None:
    """The problem-details members of a body (RFC 9457: wrong types are ignored)."""
    if body is None:
        return None

    def text(key: str, limit: int = _MAX_TEXT) -> str | None:
        value = body.get(key)
        return _cut(value.strip(), limit) if isinstance(value, str) and value.strip() else None

    return _ProblemBody(
        type=text("type", 200),
        title=text("title"),
        detail=text("detail"),
        errors=_field_errors(body.get("errors")),
        extensions={k: v for k, v in body.items() if k not in _STANDARD_MEMBERS},
    )


def _says_token_expired(body: dict[str, Any] | None) -> bool:
    """A gateway body about our own bearer token (``{"message": "Token expired"}``)."""
    if body is None:
        return False
    for key in ("message", "error", "error_description", "title", "detail"):
        value = body.get(key)
        if isinstance(value, str):
            lowered = value[:200].lower()
            if "expired" in lowered and "token" in lowered:
                return True
            if lowered.strip() == "invalid_token":
                return True
    return False


class DerapiClassifier:
    """Reads Derapi's answers; also splits, narrows and renders partial lists.

    Actions, by problem ``type`` (the full URI is ``Problem.code``):

    * ``validation-error``, ``vcm-not-configured``, ``unauthorized`` (a vendor
      backend rejected the vendor credentials, at 401 or 403), ``not-found``,
      ``exists``, ``backend-data-assertion-error``: FAIL;
    * ``backend-server-error``, ``network-timeout``, ``too-many-requests``
      (``Retry-After`` honoured): RETRY;
    * ``derapi-internal-error``: RETRY for idempotent requests (GET, HEAD,
      OPTIONS, PUT, DELETE, TRACE, or a non-empty ``Idempotency-Key``), at most
      :attr:`internal_error_retries` times per call, then FAIL; FAIL at once
      otherwise. The count is read from the call's report
      (:func:`~resilience.report_of` of the request, which every replay, token
      copy, hedge and narrowed re-request of the call carries), so the cap holds
      however many attempts ``Retry`` allows, covers a split call's narrowed
      re-requests too (it is Derapi failing, not one backend), starts again for
      every call (even one sending the same request object again), and the
      classifier keeps nothing: one instance serves any number of pipelines and
      concurrent calls. A request classified outside a pipeline is counted in its
      own extensions. It is a breaker failure either way: it is Derapi's fault,
      not the caller's.

    A 401 that is not an ``unauthorized`` problem (no body, a gateway's
    ``{"message": "Unauthorized"}``, any body that is no Derapi problem) is about
    our own bearer token: REFRESH_AUTH. So is a 401 or 403 whose body says the
    token expired, or whose ``WWW-Authenticate`` says ``invalid_token``. Unknown
    types and other bodies fall back to the status (``classify_status``).

    A 2xx JSON object whose ``errors`` member is a non-empty object is a SPLIT
    (a partial-success list); an empty or missing ``errors`` is ACCEPT.
    """

    vendor = VENDOR
    """The vendor name on every :class:`~resilience.Problem`."""
    needs_body = True
    """Success bodies are read: a 200 may be a partial success."""
    codes = DERAPI_CODES
    """The type table."""

    def __init__(self, *, internal_error_retries: int = 2) -> None:
        if (
            not isinstance(internal_error_retries, int)
            or isinstance(internal_error_retries, bool)
            or internal_error_retries < 0
        ):
            raise ConfigurationError(
                "DerapiClassifier: internal_error_retries must be an integer >= 0, "
                f"got {internal_error_retries!r}"
            )
        self.internal_error_retries = internal_error_retries

    def __repr__(self) -> str:
        return f"DerapiClassifier(internal_error_retries={self.internal_error_retries})"

    # -- classification ---------------------------------------------------------------

    def classify(
        self,
        request: httpx.Request,
        response: httpx.Response | None,
        error: BaseException | None,
    ) -> Verdict:
        """The verdict of one attempt; never raises (the core's status-code reading
        stands in for a failure)."""
        return safe_classify(self._classify, request, response, error, vendor=VENDOR)

    def _classify(
        self,
        request: httpx.Request,
        response: httpx.Response | None,
        error: BaseException | None,
    ) -> Verdict:
        if response is None:
            return classify_error(VENDOR, error if error is not None else Exception())
        return self._classify_response(request, response)

    def _classify_response(self, request: httpx.Request, response: httpx.Response) -> Verdict:
        status = response.status_code
        if status < 400:
            return self._success(response)
        body = parse_json_object(response)
        parsed = _problem_body(body)
        request_id = response.headers.get("x-request-id") or None
        code = canonical_type(parsed.type) if parsed is not None else None
        entry = DERAPI_CODES.get(code) if code is not None else None
        if parsed is not None and entry is not None and code is not None:
            known: dict[str, Any] = {
                "title": parsed.title or entry.title,
                "detail": parsed.detail,
                "request_id": request_id,
                "errors": parsed.errors,
                "details": parsed.extensions,
            }
            problem = Problem(vendor=VENDOR, status=status, code=code, **known)
            if code == DERAPI_INTERNAL_ERROR:
                return self._internal_error(request, response, problem)
            hint = retry_after_of(response) if entry.action is Action.RETRY else None
            return Verdict(entry.action, problem=problem, retry_after=hint)
        fields: dict[str, Any] = {}
        if request_id is not None:
            fields["request_id"] = request_id
        if parsed is not None:
            if parsed.type is not None and parsed.type != "about:blank":
                fields["code"] = parsed.type
            if parsed.title is not None:
                fields["title"] = parsed.title
            if parsed.detail is not None:
                fields["detail"] = parsed.detail
            if parsed.errors:
                fields["errors"] = parsed.errors
        if status in (401, 403) and self._own_token_rejected(status, body, response):
            fields.setdefault("code", str(status))
            fields.setdefault("title", response.reason_phrase or None)
            problem = Problem(vendor=VENDOR, status=status, **fields)
            return Verdict(Action.REFRESH_AUTH, problem=problem)
        return classify_status(VENDOR, response, **fields)

    def _success(self, response: httpx.Response) -> Verdict:
        """A 2xx/3xx: ACCEPT, or SPLIT when its ``errors`` object names failed backends.

        The whole page is read for that, however large, up to :data:`MAX_PAGE_BYTES`;
        a page the pipeline cut at its cap, or larger than that, is FAIL
        (``body_too_large``) rather than an ACCEPT that may hide failed backends.
        """
        status = response.status_code
        if not 200 <= status < 300:
            return classify_status(VENDOR, response)
        if _cut_short(response):
            return _too_large(response)
        try:
            content = response.content
        except httpx.ResponseNotRead:
            return classify_status(VENDOR, response)
        if b'"errors"' not in content and b"\\u" not in content:
            # No "errors" member can be in there (not even spelt with escapes): no
            # need to parse a page of many megabytes to know it.
            return classify_status(VENDOR, response)
        body = parse_json_object(content, max_bytes=MAX_PAGE_BYTES)
        failed = body.get("errors") if body is not None else None
        if isinstance(failed, dict) and failed:
            names = [name for name in list(failed)[:_MAX_BACKENDS] if isinstance(name, str)]
            problem = Problem(
                vendor=VENDOR,
                status=status,
                code="partial-success",
                title=f"{len(failed)} backend(s) failed",
                details={"backends": names},
            )
            # Derapi itself answered: the host's breaker counts a success.
            return Verdict(Action.SPLIT, problem=problem, breaker_failure=False)
        return classify_status(VENDOR, response)

    def _own_token_rejected(
        self, status: int, body: dict[str, Any] | None, response: httpx.Response
    ) -> bool:
        """Whether a 401/403 that is no Derapi problem is about our bearer token."""
        challenge = response.headers.get("www-authenticate", "")[:500].lower()
        if "invalid_token" in challenge or _says_token_expired(body):
            return True
        # Derapi's own gateway answers a missing or expired bearer with a bare 401
        # (or {"message": "Unauthorized"}); a bare 403 is a permission problem.
        return status == 401

    def _internal_error(
        self, request: httpx.Request, response: httpx.Response, problem: Problem
    ) -> Verdict:
        action = Action.FAIL
        if is_idempotent(request) and self._count_internal_error(request) <= (
            self.internal_error_retries
        ):
            action = Action.RETRY
        hint = retry_after_of(response) if action is Action.RETRY else None
        # Derapi's own failure: it counts against the breaker even when not retried.
        return Verdict(action, problem=problem, retry_after=hint, breaker_failure=True)

    def _count_internal_error(self, request: httpx.Request) -> int:
        """How many internal errors this call has seen, this one included."""
        try:
            verdicts = report_of(request).verdicts
        except LookupError:
            # Outside a pipeline: the caller classifies the same request again.
            counted = request.extensions.get(INTERNAL_ERRORS_EXTENSION)
            seen = (counted if isinstance(counted, int) else 0) + 1
            with contextlib.suppress(TypeError):  # a read-only extensions mapping
                request.extensions[INTERNAL_ERRORS_EXTENSION] = seen
            return seen
        # The verdicts of the attempts before this one (its own is added after).
        return 1 + sum(
            1
            for verdict in verdicts
            if verdict.problem is not None and verdict.problem.code == DERAPI_INTERNAL_ERROR
        )

    # -- the splitting protocol -------------------------------------------------------

    def split(
        self, request: httpx.Request, response: httpx.Response, verdict: Verdict
    ) -> Split | None:
        """Split a partial-success list: the items that came back, the failed backends.

        The payload is the body whose ``errors`` object keeps only what is not
        tracked as a failure (a blank key, entries past the thousandth); ``succeeded``
        holds the ``vendor`` of the items returned (and the ``vendor`` filter of a
        narrowed request that came back clean).
        """
        if _cut_short(response):
            return None
        body = parse_json_object(response, max_bytes=MAX_PAGE_BYTES)
        if body is None:
            return None
        failures: dict[str, Verdict] = {}
        untracked: dict[str, Any] = {}
        errors = body.get("errors")
        if isinstance(errors, dict):
            for backend, message in errors.items():
                if len(failures) < _MAX_BACKENDS and isinstance(backend, str) and backend.strip():
                    failures[backend] = backend_verdict(backend, message)
                else:
                    untracked[backend] = message  # still failed: never dropped
        succeeded: set[str] = set()
        for value in body.values():
            if isinstance(value, list):
                for item in value[:10_000]:
                    if isinstance(item, dict) and isinstance(item.get("vendor"), str):
                        succeeded.add(item["vendor"])
        asked = request.url.params.get("vendor")
        if asked:
            succeeded.add(asked)
        payload = dict(body)
        payload["errors"] = untracked
        return Split(
            payload=payload,
            failures=failures,
            succeeded=frozenset(succeeded - set(failures)),
        )

    def covers(self, request: httpx.Request, parts: tuple[str, ...]) -> tuple[str, ...]:
        """The backends a full answer to ``request`` vouches for, among ``parts``.

        ``parts`` are backends that failed on the same list before; a full answer
        (an empty ``errors``) asked every backend, unless the ``vendor`` filter
        named one.
        """
        asked = request.url.params.get("vendor")
        if asked:
            return (asked,) if asked in parts else ()
        return parts

    def narrow(self, request: httpx.Request, parts: tuple[str, ...]) -> httpx.Request | None:
        """The same list request for one backend (``vendor=<part>``), or ``None``.

        Derapi's ``vendor`` filter takes one vendor, so only single parts narrow;
        every other query parameter (``pageToken`` above all) is kept, so a page is
        completed from the same page.
        """
        if len(parts) != 1 or request.method.upper() not in ("GET", "HEAD"):
            return None
        part = parts[0]
        if not _VENDOR_KEY.fullmatch(part):
            return None
        extensions = {k: v for k, v in request.extensions.items() if k != INTERNAL_ERRORS_EXTENSION}
        return httpx.Request(
            request.method,
            request.url.copy_set_param("vendor", part),
            headers=httpx.Headers(request.headers),
            extensions=extensions,
        )

    def render(
        self,
        request: httpx.Request,
        response: httpx.Response,
        payload: Any,
        failures: Mapping[str, Verdict],
    ) -> httpx.Response:
        """The merged list, with ``errors`` naming only the backends that still failed.

        A backend's entry is Derapi's own message for it (or, for a backend skipped
        because its breaker is open, what the breaker said), so code that reads
        ``errors`` keeps working unchanged.
        """
        if isinstance(payload, dict):
            payload = dict(payload)
            untracked = payload.get("errors")
            errors = {part: _message(verdict) for part, verdict in failures.items()}
            if isinstance(untracked, dict):
                errors.update((k, v) for k, v in untracked.items() if k not in errors)
            payload["errors"] = errors
        return render_json(request, response, payload)


def _cut_short(response: httpx.Response) -> bool:
    """Whether the body seen is not the whole page (cut at the pipeline's cap, or huge)."""
    if response.extensions.get(_BODY_TRUNCATED):
        return True
    try:
        return len(response.content) > MAX_PAGE_BYTES
    except httpx.ResponseNotRead:
        return False


def _too_large(response: httpx.Response) -> Verdict:
    """FAIL for a success page whose ``errors`` could not be read, or the status's
    reading when the body is no JSON object (nothing to check in it)."""
    try:
        head = response.content[:80].lstrip().removeprefix(b"\xef\xbb\xbf").lstrip()
    except httpx.ResponseNotRead:
        head = b""
    if head[:1] != b"{":
        return classify_status(VENDOR, response)
    problem = Problem(
        vendor=VENDOR,
        status=response.status_code,
        code=BODY_TOO_LARGE,
        title="Page too large to check for failed backends",
        detail=(
            "the page is larger than the pipeline reads (Pipeline(max_body_bytes=...)), "
            "so its errors object was not read; raise the limit or ask for smaller pages"
        ),
    )
    # Derapi answered; the page size is ours to change, not the host's failure.
    return Verdict(Action.FAIL, problem=problem, breaker_failure=False)


def _message(verdict: Verdict) -> str:
    problem = verdict.problem
    if problem is not None and problem.detail:
        return problem.detail
    if problem is not None and problem.title:
        return problem.title
    return verdict.reason
