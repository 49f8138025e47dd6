"""The CircuitBreaker layer (placeholder until the breaker issue lands)."""

from __future__ import annotations

import attrs
import httpx

from ._pipeline import Call, CallNext, Handler, Outcome, PipelineEnv

__all__ = ["CircuitBreaker"]


@attrs.frozen(kw_only=True)
class CircuitBreaker:
    """Placeholder: passes every call through."""

    failure_ratio: float = 0.5
    minimum_calls: int = 20
    window: float = 30.0
    break_duration: float = 30.0

    def bind(self, env: PipelineEnv) -> Handler:
        async def handler(request: httpx.Request, call: Call, call_next: CallNext) -> Outcome:
            return await call_next(request, call)

        return handler
