"""The shared plugin conformance suite, run on the Derapi plugin."""

from __future__ import annotations

import resilience_derapi

from resilience.testing import PluginConformance


class TestDerapiConformance(PluginConformance):
    """Every check of :class:`resilience.testing.PluginConformance`."""

    plugin = resilience_derapi.plugin
