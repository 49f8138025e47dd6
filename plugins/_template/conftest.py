"""Lets the template's own tests run without installing it (the core's CI runs them,
so the template never rots). Harmless in a copy; delete it once yours is installed."""

from __future__ import annotations

import pathlib
import sys

_SRC = str(pathlib.Path(__file__).parent / "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)
