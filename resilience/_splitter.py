"""The PartialFailureSplitter layer (placeholder until the partial-failure issue lands)."""

from __future__ import annotations

import attrs
import httpx

from ._pipeline import Call, CallNext, Handler, Outcome, PipelineEnv

__all__ = ["PartialFailureSplitter"]


@attrs.frozen(kw_only=True)
class PartialFailureSplitter:
    """Placeholder: passes every call through."""

    strict: bool = False

    def bind(self, env: PipelineEnv) -> Handler:
        async def handler(request: httpx.Request, call: Call, call_next: CallNext) -> Outcome:
            return await call_next(request, call)

        return handler
