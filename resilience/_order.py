"""Layer-order rules: an order that cannot mean what the user wants is reported.

:class:`~resilience.Pipeline` calls :func:`check_layer_order` once, when it is
built, before any layer is bound. An order that is certainly wrong (it silently
changes what a layer does) is a :class:`~resilience.errors.ConfigurationError`;
one that works but is rarely what was meant is a :class:`LayerOrderWarning`,
which a user who means it silences with :mod:`warnings` as usual. The rules, and
why, are in docs/pipeline.md ("Orders that are reported").
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from .errors import ConfigurationError

__all__ = ["LayerOrderWarning", "check_layer_order"]


class LayerOrderWarning(UserWarning):
    """A pipeline's layers are in an order that works but is rarely what was meant."""


def check_layer_order(layers: Sequence[Any], *, stacklevel: int = 3) -> None:
    """Raise for an order that is certainly wrong; warn for a dubious one.

    ``layers`` is outermost first, as ``Pipeline`` takes them.
    """
    # Imported here: the layer modules import the pipeline, which imports this.
    from ._fallback import Fallback
    from ._hedge import Hedge
    from ._retry import Retry
    from ._splitter import PartialFailureSplitter
    from ._timeout import Timeout

    def where(kind: type) -> list[int]:
        return [index for index, layer in enumerate(layers) if isinstance(layer, kind)]

    retries = where(Retry)
    totals = [i for i in where(Timeout) if layers[i].total is not None]
    if len(retries) > 1:
        first, second = retries[:2]
        raise ConfigurationError(
            f"layers[{first}] and layers[{second}] are both Retry: the attempts would "
            "multiply (3 attempts each make 9, a retry storm); use one Retry with the "
            "max_attempts you want"
        )
    if retries:
        retry = retries[0]
        below = [i for i in totals if i > retry]
        if below:
            raise ConfigurationError(
                f"layers[{below[0]}] is Timeout(total=...) below the Retry at "
                f"layers[{retry}]: it would bound each attempt, not the call; put it "
                "above Retry for the call's deadline, or use Timeout(attempt=...) to "
                "bound each attempt"
            )
    dubious: list[str] = []
    for splitter in where(PartialFailureSplitter):
        above = [i for i in retries if i < splitter]
        if above:
            dubious.append(
                f"layers[{splitter}] is a PartialFailureSplitter below the Retry at "
                f"layers[{above[0]}]: its re-requests of the failed parts are not "
                "retried; put it above Retry"
            )
        late = [i for i in totals if i > splitter]
        if late:
            dubious.append(
                f"layers[{late[0]}] is Timeout(total=...) below the PartialFailureSplitter "
                f"at layers[{splitter}]: it bounds each round, not the call, and the "
                "splitter sees no deadline to keep its reserve from; put it above"
            )
    for fallback in where(Fallback):
        over = [i for i in retries + totals if i < fallback]
        if over:
            kind = type(layers[over[0]]).__name__
            dubious.append(
                f"layers[{fallback}] is a Fallback below the {kind} at layers[{over[0]}]: "
                f"it answers failures before the {kind} sees them; Fallback belongs "
                "outermost"
            )
    for hedge in where(Hedge):
        below_it = [i for i in retries if i > hedge]
        if below_it:
            dubious.append(
                f"layers[{hedge}] is a Hedge above the Retry at layers[{below_it[0]}]: "
                "each hedge would run a whole retry loop; put Hedge below Retry"
            )
    for message in dubious:
        warnings.warn(message, LayerOrderWarning, stacklevel=stacklevel)
