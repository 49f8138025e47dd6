"""The demo's public credentials, shared by the demo command and its fleet workers.

They are not secrets: ``resilience demo --serve`` prints them on purpose so a reader
can call the simulators by hand.
"""

from __future__ import annotations

__all__ = ["DEMO_CLIENT_ID", "DEMO_CLIENT_SECRET"]

DEMO_CLIENT_ID = "demo-client"
"""The client id every demo simulator accepts."""
DEMO_CLIENT_SECRET = "demo-secret-not-real"
"""Its secret: a public demo value, printed by ``--serve`` on purpose."""
