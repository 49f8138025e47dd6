"""Presets: ``standard_pipeline(vendor)`` builds what a vendor's docs recommend.

Every name, the core's own ``"http"`` too, is looked up among the installed
plugins (entry-point group ``resilience.classifiers``), whose plugin object
carries a ``preset`` callable. Plugins describe their recommendation as a
:class:`PresetSettings` value and let it apply the user's overrides and build the
pipeline, so every preset accepts the same override names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from . import _validate as v
from ._auth import AuthRefresh
from ._breaker import CircuitBreaker
from ._classifier import Classifier
from ._clock import Clock
from ._hold import Hold
from ._layer import Layer
from ._loader import load_plugin
from ._pipeline import Pipeline
from ._ratelimit import RateLimiter
from ._retry import Backoff, ExponentialBackoff, Retry, RetryBudget
from ._store import StateStore
from ._timeout import Timeout
from ._tokens import TokenProvider
from .errors import ConfigurationError

__all__ = ["PresetSettings", "standard_pipeline"]

#: Overrides passed straight to :class:`Pipeline`.
PIPELINE_KEYWORDS = frozenset(
    {
        "raise_on_failure",
        "hooks",
        "telemetry",
        "tracer_provider",
        "meter_provider",
        "max_body_bytes",
        "max_error_body_bytes",
        "name",
        "known_methods",
    }
)


def _rate_limits(value: Any) -> tuple[RateLimiter, ...]:
    if isinstance(value, RateLimiter):
        return (value,)
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(item, RateLimiter) for item in value
    ):
        raise ConfigurationError(
            "rate_limits must be a tuple of RateLimiter layers (e.g. a plugin's "
            f"rate_limits(client_id)), got {type(value).__name__}"
        )
    return tuple(value)


def _store_ok(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, StateStore):
        raise ConfigurationError(
            f"store must be a StateStore (MemoryStore, RedisStore), got {type(value).__name__}"
        )


def _optional_methods(value: Any) -> frozenset[str] | None:
    if value is None:
        return None
    return v.method_set(value, "PresetSettings", "idempotent_methods")


@attrs.frozen(kw_only=True)
class PresetSettings:
    """A preset's recommendation: the settings of each layer, as one value.

    Every field is also an override name of :func:`standard_pipeline`; a field set
    to ``None`` drops its layer (``breaker=None``, ``attempt_timeout=None``).
    The layers, outermost first: ``Timeout(total=)``, the rate limits (if any),
    the splitter (if any), ``Retry``, ``CircuitBreaker``, ``AuthRefresh`` (when
    ``auth`` is given), ``Timeout(attempt=)``.
    """

    total_timeout: float | None = attrs.field(
        default=120.0, validator=v.number(minimum=0, exclusive_minimum=True, optional=True)
    )
    """Seconds the whole call may take, sleeps included (room, by default, for a
    60 s wait a server asks for and the attempt after it)."""
    attempt_timeout: float | None = attrs.field(
        default=10.0, validator=v.number(minimum=0, exclusive_minimum=True, optional=True)
    )
    """Seconds one attempt may take."""
    max_attempts: int = attrs.field(default=3, validator=v.number(minimum=1, integer=True))
    """Attempts in all, the first included."""
    backoff: Backoff = attrs.field(factory=ExponentialBackoff)
    """The wait before each retry."""
    retry_max_delay: float | None = attrs.field(
        default=None, validator=v.number(minimum=0, optional=True)
    )
    """Cap on any single wait, server hints included (default: Retry's own)."""
    idempotent_methods: frozenset[str] | None = attrs.field(
        default=None, converter=_optional_methods
    )
    """Methods replayed without an idempotency key (default: Retry's own)."""
    retry_non_idempotent: bool = False
    """Replay every method, idempotency key or not."""
    budget: RetryBudget | None = attrs.field(factory=RetryBudget)
    """The retry budget (``None`` turns it off)."""
    hold: Hold | None = attrs.field(factory=Hold)
    """Hold calls that meet an open breaker until it recovers, then release them in
    a ramp (``None``: fail them fast with ``CircuitOpenError``)."""
    retry: Retry | None = None
    """A complete ``Retry`` layer replacing the one built from the fields above."""
    breaker: Layer | None = attrs.field(
        factory=CircuitBreaker, validator=v.has_method("bind", optional=True)
    )
    """The circuit breaker layer (``None``: no breaker)."""
    auth_skew: float | None = attrs.field(
        default=None, validator=v.number(minimum=0, optional=True)
    )
    """Seconds before expiry a token is refreshed (default: AuthRefresh's own)."""
    splitter: Layer | None = attrs.field(
        default=None, validator=v.has_method("bind", optional=True)
    )
    """A partial-failure splitter layer, placed just inside the total timeout."""
    rate_limits: tuple[RateLimiter, ...] = attrs.field(default=(), converter=_rate_limits)
    """Client-side rate limits, placed just inside the total timeout (the generic
    preset: none; the Tellus and Turris presets: the vendor's documented ones, per
    host; ``rate_limits(client_id)`` keys them by client id, ``()`` turns them off)."""
    store: StateStore | None = attrs.field(default=None, validator=_store_ok)
    """A shared state store (``RedisStore``) put behind every shared piece that has
    none of its own: the rate limits, ``AuthRefresh`` (one token per expiry for a
    fleet), the retry budget (keyed by the pipeline's name) and the circuit
    breaker. A ``MemoryStore`` cannot hold a breaker: the breaker then stays per
    process."""

    def with_overrides(self, overrides: Mapping[str, Any]) -> tuple[PresetSettings, dict[str, Any]]:
        """These settings with ``overrides`` applied, and the ``Pipeline`` keywords.

        Raises :class:`~resilience.errors.ConfigurationError` naming any unknown
        override and the accepted ones.
        """
        fields = set(attrs.fields_dict(PresetSettings))
        unknown = sorted(set(overrides) - fields - PIPELINE_KEYWORDS)
        if unknown:
            accepted = ", ".join(sorted(fields | PIPELINE_KEYWORDS))
            raise ConfigurationError(
                f"unknown preset override(s) {', '.join(unknown)}; accepted: {accepted}"
            )
        mine = {k: val for k, val in overrides.items() if k in fields}
        rest = {k: val for k, val in overrides.items() if k in PIPELINE_KEYWORDS}
        return attrs.evolve(self, **mine), rest

    def shared(self, store: StateStore, budget_key: str) -> PresetSettings:
        """These settings with ``store`` behind the budget and the breaker.

        A budget or breaker that names its own store keeps it. The breaker takes
        only a store that can hold a breaker (``RedisStore``): with a
        ``MemoryStore`` it stays per process, as without a store.
        """
        changes: dict[str, Any] = {}
        budget = self.budget
        if budget is not None and budget.store is None:
            # The key keeps two vendors' budgets apart in one store; a key the
            # user chose is kept.
            key = budget_key if budget.key == "default" else budget.key
            changes["budget"] = attrs.evolve(budget, store=store, key=key)
        breaker = self.breaker
        if (
            isinstance(breaker, CircuitBreaker)
            and breaker.store is None
            and callable(getattr(store, "breaker_record", None))
        ):
            changes["breaker"] = attrs.evolve(breaker, store=store)
        return attrs.evolve(self, **changes) if changes else self

    def retry_layer(self) -> Retry:
        """The ``Retry`` layer these settings describe."""
        if self.retry is not None:
            return self.retry
        options: dict[str, Any] = {
            "max_attempts": self.max_attempts,
            "backoff": self.backoff,
            "budget": self.budget,
            "hold": self.hold,
            "retry_non_idempotent": self.retry_non_idempotent,
            "max_delay": self.retry_max_delay,
        }
        if self.idempotent_methods is not None:
            options["idempotent_methods"] = self.idempotent_methods
        return Retry(**options)

    def auth_layer(self, auth: TokenProvider | Layer) -> Layer:
        """The auth layer for ``auth``: a token provider, or a ready layer as is."""
        if isinstance(auth, Layer):
            return auth
        options: dict[str, Any] = {}
        if self.auth_skew is not None:
            options["skew"] = self.auth_skew
        if self.store is not None:
            options["store"] = self.store
        return AuthRefresh(auth, **options)

    def build(
        self,
        classifier: str | Classifier,
        *,
        auth: TokenProvider | Layer | None = None,
        clock: Clock | None = None,
        **overrides: Any,
    ) -> Pipeline:
        """The pipeline: these settings, then ``overrides``, on ``classifier``."""
        settings, pipeline_options = self.with_overrides(overrides)
        layers: list[Layer] = []
        if settings.total_timeout is not None:
            layers.append(Timeout(total=settings.total_timeout))
        store = settings.store
        if store is not None:
            settings = settings.shared(store, _budget_key(classifier, pipeline_options))
        for limiter in settings.rate_limits:
            if store is not None and limiter.store is None:
                limiter = attrs.evolve(limiter, store=store)
            layers.append(limiter)
        if settings.splitter is not None:
            layers.append(settings.splitter)
        layers.append(settings.retry_layer())
        if settings.breaker is not None:
            layers.append(settings.breaker)
        if auth is not None:
            layers.append(settings.auth_layer(auth))
        if settings.attempt_timeout is not None:
            layers.append(Timeout(attempt=settings.attempt_timeout))
        return Pipeline(layers, classifier=classifier, clock=clock, **pipeline_options)


def _budget_key(classifier: str | Classifier, options: Mapping[str, Any]) -> str:
    """The budget's key in a shared store: the pipeline's name, else the vendor."""
    name = options.get("name")
    if isinstance(name, str) and name:
        return name
    if isinstance(classifier, str):
        return classifier
    return str(getattr(classifier, "vendor", "http"))


HTTP_PRESET = PresetSettings(
    total_timeout=120.0,
    attempt_timeout=10.0,
    max_attempts=3,
    backoff=ExponentialBackoff(initial=1.0, multiplier=2.0, max_delay=30.0, jitter="full"),
    # The breaker every preset uses (each with its own window):
    # * a 50% failure ratio is judged only once 20 calls were seen, so one caller's
    #   retries cannot trip it on a healthy backend;
    # * 10 failures in a row open it at once, so a total outage does not wait for
    #   a window of earlier successes to drain. Ten is more than any preset's
    #   attempts (one call's retries alone never trip it), and a backend failing
    #   20% of calls at random starts such a run with probability 0.8 * 0.2**10
    #   (about 1e-7) per call: one false trip in some 12 million calls (17 hours
    #   at 200 calls/s), which then costs a second of break;
    # * the first break is 1 s, and each break after a failed probe is a tenth of
    #   the outage's age (at least 1 s, at most 30 s): an outage is probed every
    #   second for its first ten seconds, so a short one costs about a second once
    #   the server is back, and every 30 s once it is five minutes old.
    # Calls that meet the open breaker are held (Hold(): up to 1000 per circuit,
    # 30 s at most, within the call's deadline) and released in a ramp when a
    # probe succeeds: the presets' calls already allow 120 s, and an outage of a
    # few seconds then costs those calls a few seconds rather than an error.
    breaker=CircuitBreaker(
        failure_ratio=0.5,
        minimum_calls=20,
        window=30.0,
        consecutive_failures=10,
        break_duration=1.0,
        max_break_duration=30.0,
        break_growth=0.1,
    ),
)
"""The generic recommendation: 3 attempts with full-jitter backoff, 120 s per call
and 10 s per attempt, and a breaker that judges a 50% failure ratio over 30 s once
20 calls were seen, opens at once on 10 failures in a row, and breaks for 1 s at
first, then a tenth of the outage's age (up to 30 s); calls that meet it open are
held until it recovers (``Hold()``), then released in a ramp."""


def http_preset(
    *, auth: TokenProvider | None = None, clock: Clock | None = None, **overrides: Any
) -> Pipeline:
    """The generic preset (see :data:`HTTP_PRESET`) on the ``"http"`` classifier."""
    return HTTP_PRESET.build("http", auth=auth, clock=clock, **overrides)


def standard_pipeline(
    vendor: str, *, auth: TokenProvider | None = None, clock: Clock | None = None, **overrides: Any
) -> Pipeline:
    """The pipeline a vendor's docs recommend.

    Args:
        vendor: a classifier name: ``"http"`` or an installed plugin's name.
        auth: the token provider (e.g. the plugin's own token flow).
        clock: the clock (``VirtualClock()`` in tests).
        **overrides: preset settings (``max_attempts``, ``backoff``, ``total_timeout``,
            ``attempt_timeout``, ``breaker``, ``budget``, ``retry``, ``auth_skew``,
            ``rate_limits`` (the vendor's documented limits by default in the
            Tellus and Turris presets; ``()`` turns them off), ``store`` (a
            ``RedisStore`` behind the rate limits, the token, the retry budget
            and the breaker),
            ...; see :class:`PresetSettings`) and ``Pipeline`` keywords (``hooks``,
            ``raise_on_failure``, ``telemetry``, ``tracer_provider``,
            ``meter_provider``, ``name`` (default: the vendor's name),
            ``known_methods``).
    """
    plugin = load_plugin(vendor)
    preset = getattr(plugin, "preset", None)
    if preset is None:
        raise LookupError(f"plugin {vendor!r} has no preset")
    pipeline = preset(auth=auth, clock=clock, **overrides)
    if not isinstance(pipeline, Pipeline):
        # The plugin's bug, not a bad argument of the caller: no ConfigurationError.
        raise TypeError(
            f"plugin {vendor!r}: its preset returned {type(pipeline).__name__}, not a "
            "Pipeline (a bug in the plugin)"
        )
    return pipeline
