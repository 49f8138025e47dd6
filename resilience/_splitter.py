"""The PartialFailureSplitter layer: deliver what worked, re-ask only what failed.

Some APIs answer one request with data gathered from several backends and, when a
few of those fail, still answer ``200`` with the failures named in the body
(Derapi's list endpoints do). The classifier calls such an attempt ``SPLIT``. This
layer sits above ``Retry``, the breaker and ``AuthRefresh``; on a ``SPLIT`` it:

1. asks the classifier to *split* the response into the payload that worked and
   the failed parts, each with its own :class:`~resilience.Verdict`;
2. records every part's outcome in the part's own breaker (key
   ``"<vendor>:<part>"``), when a ``CircuitBreaker`` below shares its registry;
3. re-requests the parts whose verdict is ``RETRY`` alone, when the classifier can
   *narrow* a request to them, through the layers below (so retries, breakers and
   auth apply), with backoff between rounds, within the call's deadline and the
   pipeline's retry budget; a part whose breaker is open is skipped and reported
   as an open circuit; ``FAIL`` parts are never re-asked;
4. *merges* what came back into the payload (stable order, no duplicates) and
   hands the caller one response, with ``report.partial`` naming the parts that
   still failed; ``strict=True`` raises :class:`~resilience.errors.PartialFailureError`
   instead, with that response attached.

The splitting protocol, for plugin authors
------------------------------------------

The layer talks to the pipeline's classifier (or to the ``splitter=`` object it is
given). Only ``split`` is required; each optional method unlocks one step:

``split(request, response, verdict) -> Split | None`` (required)
    ``response`` is a read copy (``response.json()`` works). Called for the
    original ``SPLIT`` response and for the ``ACCEPT``/``SPLIT`` answers to
    narrowed re-requests (then usually with no failures). Return the payload that
    worked (any JSON-able value, e.g. the parsed body without its failure list),
    the failed parts (part key to that part's ``Verdict``: ``RETRY`` parts may be
    re-asked, any other action is final) and, optionally, the parts known to have
    worked (recorded as breaker successes). Return ``None`` when the body cannot
    be split: the response is then passed up as it is.

``narrow(request, parts) -> httpx.Request | None`` (optional)
    A request for only ``parts`` (a tuple of part keys), e.g. the same URL with a
    filter parameter. It must keep everything else about the request (a page
    token above all, so a page is only ever completed from the same page).
    Return ``None`` when those parts cannot be asked together: the layer then
    tries each part alone, and a part that cannot be narrowed alone is reported,
    not re-asked. Without ``narrow`` nothing is re-requested.

``merge(base, part) -> payload`` (optional)
    Fold the payload of a narrowed answer into the payload so far. Keep the
    order stable and drop duplicates. The default is :func:`merge_json`.

``covers(request, parts) -> Iterable[str]`` (optional)
    Which of ``parts`` a full (``ACCEPT``) answer to ``request`` vouches for.
    ``parts`` are the parts that failed before on the request's path; each one
    returned counts a success in its breaker, so a part's circuit closes again
    once full answers come back (a partial answer counts the same for the parts
    it covers and does not name as failed). The default is all of them: a full
    answer on a path covers every part that path ever reported.

``render(request, response, payload, failures) -> httpx.Response`` (optional)
    Build the response handed to the caller from the merged payload and the
    parts that still failed (e.g. to write them back into the vendor's own
    failure list). ``response`` is the original (read) response. The default is
    :func:`render_json`, which ignores ``failures``.

Any of these that raises is logged and treated as missing (``split``: the
response passes up unsplit; ``narrow``: the part is not re-asked; ``merge``: the
part's payload is dropped and the part keeps its failure; ``covers``: no part is
counted; ``render``: the default JSON rendering is used). A ``SPLIT`` that cannot
be split (``split`` returned ``None`` or raised: a body too large to read whole,
one the splitter does not understand) is never passed off as complete: it is
logged as a warning, and with ``strict=True`` it raises
:class:`~resilience.errors.PartialFailureError`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import anyio
import attrs
import httpx

from . import _validate as v
from ._backoff import (
    Backoff,
    ExponentialBackoff,
    backoff_validator,
    bind_backoff,
    decide,
    default_cap,
    wait_for,
)
from ._events import PartialFailureReported, RetryScheduled
from ._layer import (
    BreakerRegistry,
    Call,
    CallNext,
    Outcome,
    PipelineEnv,
    RetryBudgetState,
    well_formed,
)
from ._report import GaveUp, PartialReport
from ._verdict import ACCEPT, Action, Problem, Verdict
from .errors import CircuitOpenError, PartialFailureError, describe_failure

__all__ = [
    "PartialFailureSplitter",
    "Split",
    "SplittingClassifier",
    "merge_json",
    "render_json",
]

logger = logging.getLogger("resilience")

#: Headers of the original response that do not describe the re-encoded body.
_BODY_HEADERS = frozenset({"content-length", "content-encoding", "transfer-encoding"})

#: Part keys longer than this are not parts (a garbage body), and are ignored.
_MAX_PART_KEY = 200
#: Paths, and parts per path, remembered as having failed (see ``covers``).
_MAX_TRACKED_PATHS = 256
_MAX_TRACKED_PARTS = 256


def _failures(value: Mapping[str, Verdict] | Iterable[tuple[str, Verdict]]) -> dict[str, Verdict]:
    return dict(value)


def _parts(value: Iterable[str]) -> frozenset[str]:
    return frozenset(value)


@attrs.frozen(kw_only=True)
class Split:
    """A response split into what worked and what failed.

    Example (what Derapi's classifier returns for a list with one failed backend)::

        Split(
            payload={"sites": [...], "errors": {}},
            failures={"solis": Verdict(Action.FAIL, problem=...)},
            succeeded=frozenset({"sma"}),
        )
    """

    payload: Any
    """The part of the body that worked (any JSON-able value)."""
    failures: Mapping[str, Verdict] = attrs.field(factory=dict, converter=_failures)
    """Part key (e.g. a backend name) to that part's verdict; in a stable order."""
    succeeded: frozenset[str] = attrs.field(default=frozenset(), converter=_parts)
    """Parts known to have worked (recorded as breaker successes); may be empty."""


@runtime_checkable
class SplittingClassifier(Protocol):
    """A classifier (or helper) that can split a ``SPLIT`` response.

    Only :meth:`split` is required; ``narrow``, ``merge`` and ``render`` are
    optional (see the module documentation of :mod:`resilience._splitter`).
    """

    def split(
        self, request: httpx.Request, response: httpx.Response, verdict: Verdict
    ) -> Split | None:
        """The payload that worked and the failed parts, or ``None``."""
        ...


def _identity(item: Any) -> tuple[str, Any]:
    if isinstance(item, dict):
        ident = item.get("id")
        if isinstance(ident, (str, int)) and not isinstance(ident, bool):
            return ("id", ident)
    try:
        return ("json", json.dumps(item, sort_keys=True, default=repr))
    except (TypeError, ValueError, RecursionError):
        return ("object", id(item))


def _merge_lists(base: list[Any], extra: list[Any]) -> list[Any]:
    seen = {_identity(item) for item in base}
    merged = list(base)
    for item in extra:
        ident = _identity(item)
        if ident not in seen:
            seen.add(ident)
            merged.append(item)
    return merged


def merge_json(base: Any, part: Any) -> Any:
    """The default merge: append the part's list items that are not there yet.

    For two JSON objects, every list in ``part`` is appended to the list of the
    same name in ``base`` (created when ``base`` lacks it), skipping items already
    present: objects are the same when their ``"id"`` is, anything else when it
    is equal. Everything else in ``base`` (page tokens, counts) is kept as it is;
    the rest of ``part`` is ignored. Order: ``base`` first, then the part's new
    items in the order the part gave them. Non-objects: ``base`` is kept.
    """
    if not isinstance(base, dict) or not isinstance(part, dict):
        return base
    merged = dict(base)
    for key, value in part.items():
        if not isinstance(value, list):
            continue
        current = merged.get(key)
        if isinstance(current, list):
            merged[key] = _merge_lists(current, value)
        elif key not in merged:
            merged[key] = _merge_lists([], value)
    return merged


def render_json(request: httpx.Request, response: httpx.Response, payload: Any) -> httpx.Response:
    """The default rendering: ``payload`` as JSON, with the original's status and headers.

    The headers are copied except ``Content-Length``, ``Content-Encoding`` and
    ``Transfer-Encoding``, which described the original body; ``Content-Length``
    is set for the new one. The result is unread (the client reads it as usual).
    """
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    headers = [
        (name, value)
        for name, value in response.headers.multi_items()
        if name.lower() not in _BODY_HEADERS
    ]
    if not any(name.lower() == "content-type" for name, _ in headers):
        headers.append(("content-type", "application/json"))
    headers.append(("content-length", str(len(body))))
    extensions = {
        k: v for k, v in response.extensions.items() if k not in ("network_stream", "resilience")
    }
    return httpx.Response(
        response.status_code,
        headers=headers,
        stream=httpx.ByteStream(body),
        request=request,
        extensions=extensions,
    )


@attrs.frozen(kw_only=True)
class PartialFailureSplitter:
    """Delivers the parts of a ``SPLIT`` response that worked; re-asks the rest.

    Place it above ``Retry`` (and the breaker and ``AuthRefresh``), below
    ``Timeout(total=...)``. See :mod:`resilience._splitter` for the protocol a
    classifier implements to be split.

    Re-requests are sent one after another, in the order the parts were
    reported, so the call's report (attempts, verdicts) reads in a stable order
    and the layers below, which keep per-call state, see one attempt at a time.
    """

    # It runs in the caller's task (see _telemetry_names.py: log records' pipeline).
    _in_caller_task = True

    strict: bool = False
    """Raise :class:`~resilience.errors.PartialFailureError` (with the merged
    response as ``.response``) when parts still failed, instead of returning it."""
    max_rounds: int = attrs.field(default=3, validator=v.number(minimum=0, integer=True))
    """Rounds of narrowed re-requests at most (each round re-asks every part that
    is still ``RETRY``); ``0`` never re-requests, it only splits and reports."""
    max_parts: int = attrs.field(default=16, validator=v.number(minimum=1, integer=True))
    """Parts re-asked in one round at most, so a body naming a hundred failed
    backends cannot turn into a hundred requests; the others are reported."""
    backoff: Backoff | None = attrs.field(
        default=None, validator=backoff_validator("PartialFailureSplitter", optional=True)
    )
    """The wait before each round (default: ``ExponentialBackoff()``, the same as
    ``Retry``'s default; presets pass the one their ``Retry`` uses)."""
    max_delay: float | None = attrs.field(
        default=None, validator=v.number(minimum=0, optional=True)
    )
    """Cap on one wait, server hints included (default: the larger of the
    backoff's longest wait and 60 s, as ``Retry`` does)."""
    reserve: float = attrs.field(default=0.5, validator=v.number(minimum=0))
    """Seconds kept before the call's deadline to deliver what worked: no round
    starts, and no re-request runs, past ``deadline - reserve``."""
    splitter: SplittingClassifier | None = attrs.field(
        default=None, validator=v.has_method("split", optional=True)
    )
    """The object that splits (default: the pipeline's classifier)."""

    def bind(self, env: PipelineEnv) -> _SplitterHandler:
        configured = self.backoff if self.backoff is not None else ExponentialBackoff()
        backoff = bind_backoff(configured)
        cap = self.max_delay if self.max_delay is not None else default_cap(configured)
        # Layers bind innermost first: a Retry or CircuitBreaker below has already
        # put its shared state here; per-part circuits go to the innermost breaker.
        registry = env.breakers[0] if env.breakers else None
        return _SplitterHandler(self, env, backoff, cap, env.budget, registry)


def open_circuit_verdict(vendor: str, key: str, retry_after: float) -> Verdict:
    """The verdict reported for a part skipped because its breaker is open."""
    wait = max(float(retry_after), 0.0)
    problem = Problem(
        vendor=vendor,
        code="circuit_open",
        title="Circuit open",
        detail=f"the circuit breaker {key} is open; it half-opens in {wait:.1f}s",
        details={"key": key, "retry_after": wait},
    )
    return Verdict(Action.FAIL, problem=problem, retry_after=wait, breaker_failure=False)


@attrs.define(eq=False, slots=True)
class _Round:
    """The state of one split call: payload so far, failures, what was recovered."""

    payload: Any
    failures: dict[str, Verdict]
    recovered: list[str] = attrs.field(factory=list)
    unnarrowable: set[str] = attrs.field(factory=set)
    gave_up: GaveUp | None = None


@attrs.define(eq=False, slots=True)
class _SplitterHandler:
    config: PartialFailureSplitter
    env: PipelineEnv
    backoff: Backoff
    cap: float
    bucket: RetryBudgetState | None
    registry: BreakerRegistry | None
    tracked: dict[str, dict[str, None]] = attrs.field(factory=dict)
    """Request path -> the parts that failed on it (oldest first): what a full
    answer on that path covers."""

    async def __call__(self, request: httpx.Request, call: Call, call_next: CallNext) -> Outcome:
        outcome = await call_next(request, call)
        if outcome.verdict.action is not Action.SPLIT or outcome.response is None:
            if (
                self.tracked
                and outcome.verdict.action is Action.ACCEPT
                and outcome.response is not None
            ):
                self._vouch(request, ())
            return outcome
        splitter = self.config.splitter if self.config.splitter is not None else self.env.classifier
        if not callable(getattr(splitter, "split", None)):
            return outcome  # nobody can split it: the caller gets it as it came
        try:
            return await self._handle(request, call, call_next, outcome, splitter)
        except BaseException:
            await outcome.aclose()
            raise

    # -- the steps ------------------------------------------------------------------

    async def _handle(
        self,
        request: httpx.Request,
        call: Call,
        call_next: CallNext,
        outcome: Outcome,
        splitter: Any,
    ) -> Outcome:
        view = await outcome.read_view(self.env.max_body_bytes)
        if view is None:
            # The body could not be read (read_view closed the response): there is
            # nothing to deliver, and the layers below are done retrying.
            unread = httpx.ReadError("the split response's body could not be read", request=request)
            problem = Problem(vendor=self.env.vendor, code="ReadError", title=str(unread))
            return Outcome(request, Verdict(Action.RETRY, problem=problem), error=unread)
        first = self._split(splitter, request, view, outcome.verdict)
        if first is None:
            return await self._unsplit(request, call, outcome, view)
        call.report.partial = PartialReport()
        if not first.failures:
            self._observe_all({}, first.succeeded)
            self._vouch(request, first.succeeded)
            return Outcome(request, ACCEPT, response=outcome.response, view=view)
        state = _Round(payload=first.payload, failures=dict(first.failures))
        self._observe_all(state.failures, first.succeeded)
        self._vouch(request, {*state.failures, *first.succeeded})
        self._track(request, state.failures)
        await self._rounds(request, call, call_next, splitter, state)

        merged = self._render(splitter, request, view, state)
        await outcome.aclose()
        failures = dict(state.failures)
        call.report.partial = PartialReport(failures=failures, recovered=tuple(state.recovered))
        # A Retry below may have given up on one re-request (and left its reason in
        # the report) before a later round recovered the part: only the splitter's
        # own reason describes the call, and only while a part is still worth asking.
        retrying = any(verdict.action is Action.RETRY for verdict in failures.values())
        call.report.gave_up = state.gave_up if retrying else None
        if not failures:
            return Outcome(request, ACCEPT, response=merged)
        self.env.emit(PartialFailureReported(failures=failures), call)
        if self.config.strict:
            await merged.aread()
            problem = self._problem(view, failures)
            message = describe_failure(None, problem, _describe_parts(failures, state.recovered))
            error = PartialFailureError(
                message, request=request, response=merged, problem=problem, report=call.report
            )
            return Outcome(request, outcome.verdict, error=error)
        return Outcome(request, outcome.verdict, response=merged)

    async def _unsplit(
        self, request: httpx.Request, call: Call, outcome: Outcome, view: httpx.Response
    ) -> Outcome:
        """A SPLIT nobody could split: passed up as it came, but never silently."""
        verdict = outcome.verdict
        logger.warning(
            "resilience splitter: a %s response (%s) could not be split; it is passed "
            "up as it came, and its failed parts are unknown",
            verdict.action.value,
            verdict.reason,
        )
        if not self.config.strict:
            return outcome
        problem = verdict.problem
        if problem is None:
            problem = Problem(vendor=self.env.vendor, status=view.status_code)
        message = describe_failure(
            "PartialFailureError", problem, "the response could not be split"
        )
        error = PartialFailureError(
            message, request=request, response=view, problem=problem, report=call.report
        )
        await outcome.aclose()
        return Outcome(request, verdict, error=error)

    async def _rounds(
        self,
        request: httpx.Request,
        call: Call,
        call_next: CallNext,
        splitter: Any,
        state: _Round,
    ) -> None:
        config = self.config
        if not callable(getattr(splitter, "narrow", None)):
            return
        clock = self.env.clock
        previous: float | None = None
        for round_no in range(config.max_rounds):
            pending = [
                part
                for part, verdict in state.failures.items()
                if verdict.action is Action.RETRY and part not in state.unnarrowable
            ][: config.max_parts]
            if not pending:
                return
            delay = self._delay(round_no, previous, (state.failures[p] for p in pending))
            # Everything that would make the round send nothing is known before its
            # wait, and no wait is spent on it: parts no request can be narrowed to,
            # parts whose breaker stays open past the wait, a spent budget.
            pending = self._still_closed_after(pending, delay, state)
            plan = self._plan(splitter, request, pending, state, holding=False)
            if not plan:
                return
            now = clock.now()
            decision = decide(
                round_no + 1,
                max_attempts=config.max_rounds + 1,
                backoff=delay,
                hint=None,
                cap=self.cap,
                remaining=None if call.deadline is None else call.deadline - now - config.reserve,
                budget_ok=self.bucket is None or self.bucket.allows(now),
            )
            if isinstance(decision, GaveUp):
                state.gave_up = decision
                return
            if self.bucket is not None:
                self.bucket.try_withdraw(now)
            # A round is a retry of the failed parts: hooks and telemetry see it as one.
            self.env.emit(
                RetryScheduled(
                    method=request.method,
                    host=request.url.host,
                    attempt=round_no + 1,
                    delay=delay,
                    verdict=state.failures[plan[0][0][0]],
                ),
                call,
            )
            await clock.sleep(delay)
            call.report.delays.append(delay)
            previous = delay
            planned = [part for parts, _ in plan for part in parts]
            allowed = self._allow(planned, state)
            if len(allowed) != len(planned):
                plan = self._plan(splitter, request, allowed, state, holding=True)
            stop = await self._run_plan(call, call_next, splitter, plan, state)
            if stop is not None:
                state.gave_up = stop
                return
        if any(v.action is Action.RETRY for v in state.failures.values()):
            state.gave_up = GaveUp.MAX_ROUNDS

    async def _run_plan(
        self,
        call: Call,
        call_next: CallNext,
        splitter: Any,
        plan: list[tuple[tuple[str, ...], httpx.Request]],
        state: _Round,
    ) -> GaveUp | None:
        """Send one round's narrowed requests; why it stopped early, if it did.

        The first request's share of the retry budget was taken before the wait.
        Every part in ``plan`` holds a breaker slot: each is recorded or released,
        including the parts not reached when the round stops or is cancelled.
        """
        sent = 0
        try:
            for parts, narrowed in plan:
                if not self._fits(call, 0.0):
                    return GaveUp.DEADLINE
                if (
                    sent
                    and self.bucket is not None
                    and not self.bucket.try_withdraw(self.env.clock.now())
                ):
                    return GaveUp.BUDGET
                sent += 1
                if not await self._re_request(call, call_next, splitter, parts, narrowed, state):
                    return GaveUp.DEADLINE
            return None
        finally:
            # The request in flight released its own parts (see _re_request).
            for later, _ in plan[sent:]:
                self._release(later)

    async def _re_request(
        self,
        call: Call,
        call_next: CallNext,
        splitter: Any,
        parts: tuple[str, ...],
        narrowed: httpx.Request,
        state: _Round,
    ) -> bool:
        """Send one narrowed request and fold its answer in; ``False`` if time ran out."""
        clock = self.env.clock
        started = clock.now()
        remaining = call.remaining()
        limit = None if remaining is None else max(remaining - self.config.reserve, 0.0)
        deadline = call.deadline
        outcome: Outcome | None = None
        try:
            # Leave time to deliver what worked: a re-request still hanging near the
            # deadline is abandoned, not allowed to take the whole call down with it.
            # The layers below see the deadline less the reserve too, so a Retry
            # there does not sleep into it (the cancel scope only counts real time).
            if deadline is not None:
                call.deadline = deadline - self.config.reserve
            try:
                with anyio.move_on_after(limit if limit is not None else float("inf")):
                    outcome = await call_next(narrowed, call)
            finally:
                call.deadline = deadline
            if outcome is None:
                self._release(parts)
                return False
            await self._absorb(splitter, parts, narrowed, outcome, state, clock.now() - started)
        except BaseException:
            self._release(parts)
            if outcome is not None:
                await outcome.aclose()
            raise
        return True

    async def _absorb(
        self,
        splitter: Any,
        parts: tuple[str, ...],
        narrowed: httpx.Request,
        outcome: Outcome,
        state: _Round,
        duration: float,
    ) -> None:
        """Merge a narrowed answer and update each asked part's verdict and breaker."""
        verdict = outcome.verdict
        try:
            if verdict.action in (Action.ACCEPT, Action.SPLIT) and outcome.response is not None:
                view = await outcome.read_view(self.env.max_body_bytes)
                answer = None if view is None else self._split(splitter, narrowed, view, verdict)
                if answer is None:
                    # An answer we cannot read adds nothing: the parts keep their
                    # failure (and may be asked again next round).
                    self._release(parts)
                    return
                try:
                    state.payload = self._merge(splitter, state.payload, answer.payload)
                except Exception as exc:
                    logger.warning(
                        "resilience splitter: merge() raised %s: %s; parts %s stay failed",
                        type(exc).__name__,
                        exc,
                        ", ".join(parts),
                    )
                    self._release(parts)
                    return
                for part in parts:
                    part_verdict = answer.failures.get(part)
                    if part_verdict is None:
                        del state.failures[part]
                        state.recovered.append(part)
                        self._record(part, ACCEPT, duration)
                    else:
                        state.failures[part] = part_verdict
                        self._record(part, part_verdict, duration)
                return
            for part in parts:
                state.failures[part] = verdict
            if isinstance(outcome.error, CircuitOpenError) or verdict.action is Action.REFRESH_AUTH:
                # Nothing reached the part (the host's breaker is open), or our own
                # token was refused: neither says anything about the part itself.
                self._release(parts)
            else:
                for part in parts:
                    self._record(part, verdict, duration)
        finally:
            await outcome.aclose()

    # -- helpers --------------------------------------------------------------------

    def _split(
        self, splitter: Any, request: httpx.Request, view: httpx.Response, verdict: Verdict
    ) -> Split | None:
        try:
            result = splitter.split(request, view, verdict)
        except Exception as exc:
            logger.warning(
                "resilience splitter: %r.split() raised %s: %s; the response is passed up unsplit",
                type(splitter).__name__,
                type(exc).__name__,
                exc,
            )
            return None
        if result is None:
            return None
        if not isinstance(result, Split):
            logger.warning(
                "resilience splitter: split() returned %s, not a Split; ignored",
                type(result).__name__,
            )
            return None
        failures = {
            part: verdict
            for part, verdict in result.failures.items()
            if isinstance(part, str) and 0 < len(part) <= _MAX_PART_KEY and well_formed(verdict)
        }
        if len(failures) != len(result.failures):
            logger.warning("resilience splitter: split() returned malformed parts; ignored them")
            result = attrs.evolve(result, failures=failures)
        return result

    def _merge(self, splitter: Any, base: Any, part: Any) -> Any:
        merge = getattr(splitter, "merge", None)
        if callable(merge):
            return merge(base, part)
        return merge_json(base, part)

    def _render(
        self, splitter: Any, request: httpx.Request, view: httpx.Response, state: _Round
    ) -> httpx.Response:
        render = getattr(splitter, "render", None)
        if callable(render):
            try:
                response = render(request, view, state.payload, dict(state.failures))
                if isinstance(response, httpx.Response):
                    return response
                logger.warning(
                    "resilience splitter: render() returned %s; rendering JSON instead",
                    type(response).__name__,
                )
            except Exception as exc:
                logger.warning(
                    "resilience splitter: render() raised %s: %s; rendering JSON instead",
                    type(exc).__name__,
                    exc,
                )
        return render_json(request, view, state.payload)

    def _plan(
        self,
        splitter: Any,
        request: httpx.Request,
        parts: Sequence[str],
        state: _Round,
        *,
        holding: bool,
    ) -> list[tuple[tuple[str, ...], httpx.Request]]:
        """Narrowed requests covering ``parts``: all at once if possible, else one each.

        A part no request can be narrowed to is left out for good (it keeps its
        failure); when the parts hold breaker slots (``holding``), its slot is freed.
        """
        if not parts:
            return []
        if len(parts) > 1:
            together = self._narrow(splitter, request, tuple(parts))
            if together is not None:
                return [(tuple(parts), together)]
        plan: list[tuple[tuple[str, ...], httpx.Request]] = []
        for part in parts:
            alone = self._narrow(splitter, request, (part,))
            if alone is None:
                state.unnarrowable.add(part)
                if holding:
                    self._release((part,))
            else:
                plan.append(((part,), alone))
        return plan

    def _narrow(
        self, splitter: Any, request: httpx.Request, parts: tuple[str, ...]
    ) -> httpx.Request | None:
        try:
            narrowed = splitter.narrow(request, parts)
        except Exception as exc:
            logger.warning(
                "resilience splitter: narrow() raised %s: %s; not re-asking %s",
                type(exc).__name__,
                exc,
                ", ".join(parts),
            )
            return None
        return narrowed if isinstance(narrowed, httpx.Request) else None

    def _delay(self, round_no: int, previous: float | None, verdicts: Iterable[Verdict]) -> float:
        hints = [v.retry_after for v in verdicts if v.retry_after is not None]
        return wait_for(self.backoff.delay(round_no, previous), max(hints, default=None), self.cap)

    def _fits(self, call: Call, delay: float) -> bool:
        """Whether a wait of ``delay`` still leaves the reserve before the deadline."""
        if call.deadline is None:
            return True
        return self.env.clock.now() + delay + self.config.reserve <= call.deadline

    def _problem(self, view: httpx.Response, failures: Mapping[str, Verdict]) -> Problem:
        names = ", ".join(failures)
        return Problem(
            vendor=self.env.vendor,
            status=view.status_code,
            code="partial_failure",
            title=f"{len(failures)} part(s) failed",
            detail=f"parts that still failed: {names}",
            details={"failures": {part: verdict.reason for part, verdict in failures.items()}},
        )

    # -- per-part breakers ----------------------------------------------------------

    def _key(self, part: str) -> str:
        return f"{self.env.vendor}:{part}"

    def _observe_all(self, failures: dict[str, Verdict], succeeded: Collection[str]) -> None:
        """Record what the original response said about each part.

        A part whose breaker is open is not recorded (an open breaker counts
        nothing); a RETRY part then becomes an open-circuit failure, so it is not
        re-asked; a FAIL part keeps its own verdict, which says more.
        """
        if self.registry is None:
            return
        for part, verdict in list(failures.items()):
            wait = self._try(part, verdict)
            if wait is not None and verdict.action is Action.RETRY:
                failures[part] = open_circuit_verdict(self.env.vendor, self._key(part), wait)
        for part in succeeded:
            if part not in failures:
                self._try(part, ACCEPT)

    def _track(self, request: httpx.Request, failures: Mapping[str, Verdict]) -> None:
        """Remember the parts that failed on the request's path (bounded, oldest out)."""
        if self.registry is None:
            return
        path = request.url.path
        parts = self.tracked.pop(path, None)
        if parts is None:
            parts = {}
            if len(self.tracked) >= _MAX_TRACKED_PATHS:
                del self.tracked[next(iter(self.tracked))]
        self.tracked[path] = parts  # the most recent path last
        for part in failures:
            parts.pop(part, None)
            parts[part] = None
            if len(parts) > _MAX_TRACKED_PARTS:
                del parts[next(iter(parts))]

    def _vouch(self, request: httpx.Request, counted: Collection[str]) -> None:
        """Count a success for every part a healthy answer covers (see ``covers``).

        Parts that failed on this path before are covered; ``counted`` are the parts
        this answer already recorded (its failed parts, the parts it named as
        working), each counted once. A circuit
        that is open does not count it (it waits out its break); a half-open one
        takes it as a probe, so full answers close it again.
        """
        if self.registry is None:
            return
        known = self.tracked.get(request.url.path)
        if not known:
            return
        parts = tuple(part for part in known if part not in counted)
        if not parts:
            return
        splitter = self.config.splitter if self.config.splitter is not None else self.env.classifier
        covers = getattr(splitter, "covers", None)
        if callable(covers):
            try:
                covered = [part for part in covers(request, parts) if part in known]
            except Exception as exc:
                logger.warning(
                    "resilience splitter: covers() raised %s: %s; no part counted",
                    type(exc).__name__,
                    exc,
                )
                return
        else:
            covered = list(parts)
        for part in covered:
            if part not in counted:
                self._try(part, ACCEPT)

    def _try(self, part: str, verdict: Verdict) -> float | None:
        wait = self._allow_one(part)
        if wait is None:
            self._record(part, verdict, None)
        return wait

    def _still_closed_after(self, parts: Sequence[str], delay: float, state: _Round) -> list[str]:
        """``parts`` but those whose breaker is open for longer than ``delay``.

        Those are reported as open circuits now, not after a wait that could only
        end in a refusal; a breaker that half-opens within the wait is kept, so the
        round probes it. The registry is asked through its usual allow() (a slot
        taken is freed at once, before anything else runs).
        """
        if self.registry is None:
            return list(parts)
        kept = []
        for part in parts:
            wait = self._allow_one(part)
            if wait is None:
                self._release((part,))
                kept.append(part)
            elif wait > delay:
                state.failures[part] = open_circuit_verdict(self.env.vendor, self._key(part), wait)
            else:
                kept.append(part)
        return kept

    def _allow(self, parts: Sequence[str], state: _Round) -> list[str]:
        """The parts whose breaker lets a re-request through (each takes a slot)."""
        if self.registry is None:
            return list(parts)
        allowed = []
        for part in parts:
            wait = self._allow_one(part)
            if wait is None:
                allowed.append(part)
            else:
                state.failures[part] = open_circuit_verdict(self.env.vendor, self._key(part), wait)
        return allowed

    def _allow_one(self, part: str) -> float | None:
        if self.registry is None:
            return None
        try:
            wait = self.registry.allow(self._key(part))
        except Exception:
            logger.exception("resilience splitter: breaker registry allow() failed")
            return None
        return None if wait is None else float(wait)

    def _record(self, part: str, verdict: Verdict, duration: float | None) -> None:
        if self.registry is None:
            return
        try:
            self.registry.record(self._key(part), verdict, duration=duration)
        except Exception:
            logger.exception("resilience splitter: breaker registry record() failed")

    def _release(self, parts: Iterable[str]) -> None:
        if self.registry is None:
            return
        for part in parts:
            try:
                self.registry.release(self._key(part))
            except Exception:
                logger.exception("resilience splitter: breaker registry release() failed")


def _describe_parts(failures: Mapping[str, Verdict], recovered: Sequence[str]) -> str:
    shown = ", ".join(f"{part} ({verdict.reason})" for part, verdict in list(failures.items())[:10])
    more = f" and {len(failures) - 10} more" if len(failures) > 10 else ""
    text = f"failed: {shown}{more}"
    if recovered:
        text += f"; recovered: {', '.join(recovered)}"
    return text
