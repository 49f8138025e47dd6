"""The shared plugin conformance suite, run on the Turris plugin."""

from __future__ import annotations

import resilience_turris

from resilience.testing import PluginConformance


class TestTurrisConformance(PluginConformance):
    """Every check of :class:`resilience.testing.PluginConformance`."""

    plugin = resilience_turris.plugin
