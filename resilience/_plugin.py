"""The plugin kit: what a vendor plugin is made of, and the helpers to write one.

A vendor plugin is one object registered in the entry-point group
``resilience.classifiers`` (see :mod:`resilience._classifier`). The loader finds it
by name; :class:`~resilience.Pipeline` takes its ``classifier``,
:func:`~resilience.standard_pipeline` calls its ``preset``, and the conformance
suite in :mod:`resilience.testing` exercises all of it against its ``simulator``.

A plugin is mostly data:

* a :class:`CodeTable` from the vendor's codes (or error types) to actions,
* a parser that turns the vendor's error body into a :class:`ParsedError`
  (with :func:`parse_json_object` and the ``*_field`` accessors doing the
  defensive work), and
* a :class:`TableClassifier` subclass that joins the two; it never raises and
  falls back to the HTTP status whenever the body is not the vendor's.

A plugin's token provider is a :class:`~resilience.VendorToken` subclass that
declares its flow (``_tokens.py``, with :func:`~resilience.token_from_response`,
:func:`~resilience.jwt_expires_in` and :func:`~resilience.post_for_token`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs
import httpx

from ._bodies import BODY_TRUNCATED
from ._classifier import (
    Classifier,
    classify_error,
    classify_status,
    retry_after_of,
    safe_classify,
)
from ._lazy import callable_or_lazy, later
from ._verdict import Action, FieldError, Problem, Verdict
from .errors import ConfigurationError

__all__ = [
    "MAX_JSON_BYTES",
    "CodeEntry",
    "CodeTable",
    "ParsedError",
    "TableClassifier",
    "VendorPlugin",
    "int_field",
    "mapping_field",
    "normalize_code",
    "number_field",
    "parse_json_object",
    "str_field",
    "str_list_field",
]

logger = logging.getLogger("resilience")

MAX_JSON_BYTES = 1 << 20
"""Bodies larger than this (1 MiB) are not parsed: no vendor error is that big."""

#: Codes, titles and ids longer than this are cut: they end up in logs and metrics.
_MAX_TEXT = 500
_MAX_CODE = 200


# --------------------------------------------------------------------------------------
# The code table


def _action(value: Any) -> Action:
    if not isinstance(value, Action):
        raise ConfigurationError(f"CodeEntry: action must be an Action, got {type(value).__name__}")
    return value


def _status(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 100 <= value <= 599:
        raise ConfigurationError(
            f"CodeEntry: status must be an HTTP status (100..599), got {value!r}"
        )
    return value


def _statuses(value: Any) -> tuple[int, ...]:
    result: list[int] = []
    for item in value:
        status = _status(item)
        assert status is not None
        result.append(status)
    return tuple(result)


@attrs.frozen
class CodeEntry:
    """What one vendor code means: the action, and the status(es) it comes with.

    Example::

        CodeEntry(Action.FAIL, 400, title="Invalid request parameters")
        CodeEntry(Action.FAIL, 400, also=(422,))   # documented with two statuses
    """

    action: Action = attrs.field(converter=_action)
    """What the pipeline does with an attempt that carries this code."""
    status: int | None = attrs.field(default=None, converter=_status)
    """The HTTP status the vendor documents for this code (``None``: any)."""
    title: str | None = attrs.field(default=None, kw_only=True)
    """The vendor's short description (documentation and simulator messages)."""
    also: tuple[int, ...] = attrs.field(default=(), kw_only=True, converter=_statuses)
    """Other statuses the vendor documents for the same code."""

    @property
    def statuses(self) -> tuple[int, ...]:
        """Every documented status, the usual one first (empty when unknown)."""
        first = () if self.status is None else (self.status,)
        return first + tuple(s for s in self.also if s != self.status)


def normalize_code(value: Any) -> str | None:
    """A vendor code as the table's key: integers and strings, nothing else.

    ``2002``, ``2002.0`` and ``"2002"`` all give ``"2002"``; booleans, containers,
    NaN, empty or absurdly long strings give ``None``.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        text = str(value) if -(10**18) < value < 10**18 else None
        return text
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 1e18:
            return str(int(value))
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text or len(text) > _MAX_CODE:
            return None
        return text
    return None


class CodeTable(Mapping[str, CodeEntry]):
    """A vendor's codes (or error types) mapped to actions; keys are strings.

    Values may be bare actions or :class:`CodeEntry` objects; integer keys are
    turned into strings, so a table reads like the vendor's page::

        TABLE = CodeTable({
            0: CodeEntry(Action.ACCEPT, 200, title="Success"),
            2002: CodeEntry(Action.REFRESH_AUTH, 401, title="Token expired"),
            "not_found": Action.FAIL,
        })

    The classifier looks codes up with :meth:`lookup` (which normalises what a
    body holds); the conformance suite walks every entry.
    """

    __slots__ = ("_entries",)

    def __init__(self, entries: Mapping[Any, Action | CodeEntry]) -> None:
        table: dict[str, CodeEntry] = {}
        for raw_key, raw in entries.items():
            key = normalize_code(raw_key)
            if key is None:
                raise ConfigurationError(f"CodeTable: {raw_key!r} is not a usable code")
            if key in table:
                raise ConfigurationError(f"CodeTable: code {key!r} appears twice")
            table[key] = raw if isinstance(raw, CodeEntry) else CodeEntry(raw)
        self._entries = table

    def __getitem__(self, code: str) -> CodeEntry:
        return self._entries[code]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k!r}: {e.action!r}" for k, e in self._entries.items())
        return f"CodeTable({{{inner}}})"

    def lookup(self, code: Any) -> CodeEntry | None:
        """The entry for a code as found in a body (any type), or ``None``."""
        key = normalize_code(code)
        return None if key is None else self._entries.get(key)

    def action_for(self, code: Any) -> Action | None:
        """The action for ``code``, or ``None`` when the table does not know it."""
        entry = self.lookup(code)
        return None if entry is None else entry.action

    def codes_for(self, action: Action) -> list[str]:
        """Every code whose action is ``action``, in table order."""
        return [k for k, e in self._entries.items() if e.action is action]


# --------------------------------------------------------------------------------------
# Defensive JSON


def parse_json_object(
    source: httpx.Response | bytes | str | None, *, max_bytes: int = MAX_JSON_BYTES
) -> dict[str, Any] | None:
    """Parse a body that should be a JSON object; never raise.

    Returns the object, or ``None`` for anything else: no body, a body that was
    never read, more than ``max_bytes``, not JSON (an HTML proxy page), JSON that
    is not an object, nesting too deep for the parser, or numbers too long to
    convert. The size check comes first, so a multi-megabyte body costs nothing.
    A response whose body the pipeline cut at its cap (``max_body_bytes``) is
    never parsed either: its first bytes are not the vendor's whole answer.
    """
    try:
        if source is None:
            return None
        if isinstance(source, httpx.Response):
            if source.extensions.get(BODY_TRUNCATED):
                return None
            try:
                raw: bytes | str = source.content
            except httpx.ResponseNotRead:
                return None
        else:
            raw = source
        if len(raw) > max_bytes or not raw:
            return None
        # Cheap rejection before parsing: an object starts with "{" (a BOM or
        # whitespace may come first). Arrays, scalars and HTML stop here.
        if isinstance(raw, bytes):
            if raw[:80].lstrip().removeprefix(b"\xef\xbb\xbf").lstrip()[:1] != b"{":
                return None
        elif raw[:80].lstrip().removeprefix("\ufeff").lstrip()[:1] != "{":
            return None
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8-sig")
        value = json.loads(raw)
    except (ValueError, TypeError, RecursionError, MemoryError):
        return None
    except Exception:  # pragma: no cover - a broken response object
        return None
    return value if isinstance(value, dict) else None


def str_field(data: Mapping[str, Any] | None, key: str, *, limit: int = _MAX_TEXT) -> str | None:
    """``data[key]`` when it is a non-empty string (cut to ``limit``), else ``None``."""
    if data is None:
        return None
    value = data.get(key)
    if not isinstance(value, str) or not value:
        return None
    return value if len(value) <= limit else value[: limit - 1] + "…"


def int_field(data: Mapping[str, Any] | None, key: str) -> int | None:
    """``data[key]`` when it is an integer (not a bool; integral floats too)."""
    if data is None:
        return None
    value = data.get(key)
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def number_field(data: Mapping[str, Any] | None, key: str) -> float | None:
    """``data[key]`` when it is a finite number (or a numeric string), else ``None``."""
    if data is None:
        return None
    value = data.get(key)
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and len(value) <= 32:
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:
            return None
        return number if math.isfinite(number) else None
    return None


def mapping_field(data: Mapping[str, Any] | None, key: str) -> Mapping[str, Any] | None:
    """``data[key]`` when it is a JSON object, else ``None``."""
    if data is None:
        return None
    value = data.get(key)
    return value if isinstance(value, dict) else None


def str_list_field(data: Mapping[str, Any] | None, key: str, *, limit: int = 20) -> tuple[str, ...]:
    """The strings of ``data[key]`` (a string alone counts as a list of one)."""
    if data is None:
        return ()
    value = data.get(key)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return ()
    found: list[str] = []
    for item in value[:limit]:
        if isinstance(item, str) and item:
            found.append(item if len(item) <= _MAX_TEXT else item[: _MAX_TEXT - 1] + "…")
    return tuple(found)


# --------------------------------------------------------------------------------------
# The table-driven classifier


@attrs.frozen(kw_only=True)
class ParsedError:
    """What a vendor parser found in a body (every field optional)."""

    code: str | None = None
    """The vendor's canonical code, already normalised (see :func:`normalize_code`)."""
    title: str | None = None
    """A short summary (the vendor's message)."""
    detail: str | None = None
    """More explanation, when the vendor gave some."""
    request_id: str | None = None
    """The vendor's request id."""
    errors: tuple[FieldError, ...] = ()
    """Field-level errors."""
    details: Mapping[str, Any] = attrs.field(factory=dict)
    """The vendor's raw details object."""
    retry_after: float | None = None
    """A wait hint found in the body or the vendor's own headers, in seconds."""


class TableClassifier:
    """A classifier driven by a :class:`CodeTable` and a body parser.

    Subclasses set :attr:`vendor` and :attr:`codes` and implement :meth:`parse`.
    The rules:

    * an exception (no response) is read by :func:`classify_error`;
    * a body :meth:`parse` does not recognise (``None``) falls back to the HTTP
      status (:func:`classify_status`), ``Retry-After`` included;
    * a code in the table gets the table's action, whatever the HTTP status (but
      a success code on an error status is read by the status);
    * a code not in the table goes to :meth:`unknown_code` (default: the status);
    * a RETRY's wait hint is the parser's (``ParsedError.retry_after``), else the
      ``Retry-After`` header;
    * nothing raises: any exception in a subclass is logged and the status is used.
    """

    vendor: str = "vendor"
    """The vendor name put on every :class:`Problem`."""
    codes: CodeTable = CodeTable({})
    """The vendor's codes."""
    needs_body: bool = True
    """Whether success (2xx) bodies must be read before classifying."""

    # The defensive readers, at hand in a subclass's parse() as self.str_field(...).
    parse_json_object = staticmethod(parse_json_object)
    str_field = staticmethod(str_field)
    int_field = staticmethod(int_field)
    number_field = staticmethod(number_field)
    mapping_field = staticmethod(mapping_field)
    str_list_field = staticmethod(str_list_field)

    def parse(self, request: httpx.Request, response: httpx.Response) -> ParsedError | None:
        """Read the vendor's envelope; ``None`` when the body is not one."""
        raise NotImplementedError

    def classify(
        self,
        request: httpx.Request,
        response: httpx.Response | None,
        error: BaseException | None,
    ) -> Verdict:
        return safe_classify(self._classify, request, response, error, vendor=self.vendor)

    def _classify(
        self,
        request: httpx.Request,
        response: httpx.Response | None,
        error: BaseException | None,
    ) -> Verdict:
        if response is None:
            return classify_error(self.vendor, error if error is not None else Exception())
        return self._classify_response(request, response)

    def _classify_response(self, request: httpx.Request, response: httpx.Response) -> Verdict:
        parsed = self.parse(request, response)
        if parsed is None:
            return classify_status(self.vendor, response)
        entry = self.codes.lookup(parsed.code) if parsed.code is not None else None
        if entry is None:
            return self.unknown_code(request, response, parsed)
        verdict = self.verdict_for(response, entry.action, parsed)
        if entry.status == 429 and verdict.breaker_failure:
            # The vendor's rate-limit code, whatever status carried it: a quota, not an
            # unhealthy server, so it never counts against a circuit breaker.
            verdict = attrs.evolve(verdict, breaker_failure=False)
        return verdict

    def unknown_code(
        self, request: httpx.Request, response: httpx.Response, parsed: ParsedError
    ) -> Verdict:
        """A body in the vendor's shape whose code the table lacks: use the status."""
        verdict = classify_status(self.vendor, response, **self.problem_fields(parsed))
        if verdict.action is Action.RETRY and parsed.retry_after is not None:
            return attrs.evolve(verdict, retry_after=parsed.retry_after)
        return verdict

    def problem_fields(self, parsed: ParsedError) -> dict[str, Any]:
        """The :class:`Problem` keywords a parsed body gives (``None`` ones left out)."""
        fields: dict[str, Any] = {
            "code": parsed.code,
            "title": parsed.title,
            "detail": parsed.detail,
            "request_id": parsed.request_id,
        }
        fields = {k: v for k, v in fields.items() if v is not None}
        if parsed.errors:
            fields["errors"] = parsed.errors
        if parsed.details:
            fields["details"] = parsed.details
        return fields

    def verdict_for(self, response: httpx.Response, action: Action, parsed: ParsedError) -> Verdict:
        """The verdict of a known code."""
        status = response.status_code
        if action is Action.ACCEPT:
            if status >= 400:
                # "Success" in a body on an error status is contradictory (a proxy
                # replaying a cached body, a buggy gateway): the status decides.
                return classify_status(self.vendor, response, **self.problem_fields(parsed))
            if parsed.request_id is None:
                return Verdict(Action.ACCEPT)
            # Keep the request id of a success too: callers log it.
            return Verdict(
                Action.ACCEPT,
                problem=Problem(vendor=self.vendor, status=status, request_id=parsed.request_id),
            )
        problem = Problem(vendor=self.vendor, status=status, **self.problem_fields(parsed))
        hint: float | None = None
        if action is Action.RETRY:
            hint = (
                parsed.retry_after if parsed.retry_after is not None else retry_after_of(response)
            )
        return Verdict(action, problem=problem, retry_after=hint)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vendor={self.vendor!r}, codes={len(self.codes)})"


# --------------------------------------------------------------------------------------
# The plugin object


def _has_classify(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not callable(getattr(value, "classify", None)):
        raise ConfigurationError(
            f"VendorPlugin: {attribute.name} must have a classify() method, "
            f"got {type(value).__name__}"
        )


@attrs.frozen(kw_only=True)
class VendorPlugin:
    """Everything a vendor plugin ships, under one entry point.

    Register it in the plugin's ``pyproject.toml``::

        [project.entry-points."resilience.classifiers"]
        acme = "resilience_acme:plugin"

    Only ``name`` and ``classifier`` are required; the conformance suite skips the
    checks whose part is missing.
    """

    name: str
    """The entry-point name (``classifier="tellus"``)."""
    classifier: Classifier = attrs.field(validator=_has_classify)
    """The vendor's classifier."""
    codes: CodeTable = attrs.field(factory=lambda: CodeTable({}))
    """The vendor's code table (the conformance suite checks every entry)."""
    token_provider: Callable[..., Any] | None = None
    """``(*, client_id, client_secret, base_url, clock=None) -> TokenProvider``."""
    preset: Callable[..., Any] | None = None
    """``(*, auth=None, clock=None, **overrides) -> Pipeline``: what the vendor recommends."""
    simulator: Callable[..., Any] | None = attrs.field(
        default=None, converter=later, validator=callable_or_lazy
    )
    """``(*, plan=None, clock=None, client_id=..., client_secret=...) -> ASGI app``.
    Test tooling: give it as ``"resilience_acme.testing:simulator"`` so it is
    imported only when called (the demo, the conformance suite)."""
    render_error: Callable[..., httpx.Response] | None = attrs.field(
        default=None, converter=later, validator=callable_or_lazy
    )
    """``(code, status=None) -> httpx.Response``: the vendor's error response for
    ``code`` exactly as the vendor sends it (its documented status unless
    ``status`` is given); a ``"module:attribute"`` string, like ``simulator``."""
    probe: str | None = None
    """A GET path of the simulator that needs a valid token and answers success."""
    description: str = ""
    """One line for listings."""

    def __repr__(self) -> str:
        return f"<resilience plugin {self.name!r}>"
