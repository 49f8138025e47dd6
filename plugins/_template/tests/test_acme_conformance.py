"""The shared conformance suite: every plugin runs it, in these few lines."""

from __future__ import annotations

import resilience_acme

from resilience.testing import PluginConformance


class TestAcmeConformance(PluginConformance):
    """Codes, garbage, token flow and preset, as every plugin must handle them."""

    plugin = resilience_acme.plugin
