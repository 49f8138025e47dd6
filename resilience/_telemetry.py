"""OpenTelemetry instrumentation (spans, events, metrics) of a pipeline.

Placeholder until the telemetry issue lands: no instrumentation.
"""

from __future__ import annotations

from typing import Any


def make_instrumentation(
    *, vendor: str, tracer_provider: Any = None, meter_provider: Any = None
) -> Any:
    """The instrumentation of a pipeline, or ``None`` when there is nothing to do."""
    return None
