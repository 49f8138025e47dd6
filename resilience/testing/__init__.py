"""Public helpers for tests: a virtual clock, scripted transports, simulators, conformance.

Nothing here sleeps for real: ``VirtualClock`` makes a retry scenario with
30-second backoffs finish in milliseconds. The runtime never imports this package
(a test checks it); the demo and test code do. By topic:

* :mod:`._transports`: :class:`ScriptedTransport`, :func:`reply`, :func:`through`,
  :class:`HangingTransport`, :class:`StallingStream`, :class:`ClosingStream`;
* :mod:`._faults`: :class:`FaultPlan` and its rules (:class:`Fault`,
  :class:`Outage`, :class:`Slowness`, :class:`RateLimit`, :class:`LimitState`);
* :mod:`._messages`: what a simulator receives and answers (:class:`SimRequest`,
  :class:`SimResponse`, :class:`Received`, :class:`TokenCheck`);
* :mod:`._simulator`: the ASGI base of vendor simulators (:class:`Simulator`,
  :func:`route`);
* :mod:`._serve`: :func:`serve`, an ASGI app on a loopback port (uvicorn);
* :mod:`._conformance`: :class:`PluginConformance`, the suite every plugin runs
  (pytest and hypothesis are imported only when its tests run);
* :mod:`._virtual`: :func:`virtual_time` and :func:`set_testing`, one switch that
  puts every pipeline built without ``clock=`` on a :class:`VirtualClock`.

Each vendor plugin's simulator lives in ``resilience_<vendor>.testing``.
"""

from __future__ import annotations

from .._clock import VirtualClock
from ._conformance import PluginConformance
from ._faults import Fault, FaultPlan, LimitState, Outage, RateLimit, Slowness
from ._messages import Received, SimRequest, SimResponse, TokenCheck
from ._serve import serve
from ._simulator import Simulator, route
from ._transports import (
    ClosingStream,
    HangingTransport,
    ScriptedTransport,
    StallingStream,
    reply,
    through,
)
from ._virtual import is_testing, set_testing, virtual_time

__all__ = [
    "ClosingStream",
    "Fault",
    "FaultPlan",
    "HangingTransport",
    "LimitState",
    "Outage",
    "PluginConformance",
    "RateLimit",
    "Received",
    "ScriptedTransport",
    "SimRequest",
    "SimResponse",
    "Simulator",
    "Slowness",
    "StallingStream",
    "TokenCheck",
    "VirtualClock",
    "is_testing",
    "reply",
    "route",
    "serve",
    "set_testing",
    "through",
    "virtual_time",
]
