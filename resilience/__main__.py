"""``python -m resilience``: the same as the ``resilience`` command."""

from __future__ import annotations

import sys

from ._demo import main

sys.exit(main())
