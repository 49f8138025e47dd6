"""The shared plugin conformance suite, run on the Tellus plugin."""

from __future__ import annotations

import resilience_tellus

from resilience.testing import PluginConformance


class TestTellusConformance(PluginConformance):
    """Every check of :class:`resilience.testing.PluginConformance`."""

    plugin = resilience_tellus.plugin
