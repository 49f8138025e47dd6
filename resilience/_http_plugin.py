"""The built-in ``"http"`` plugin: the generic classifier, packaged like a vendor's.

``Pipeline()`` (whose default is ``classifier="http"``), ``standard_pipeline("http")``
and the conformance suite find it by name through :mod:`resilience._loader`, from
the entry point ``http = "resilience._http_plugin:HTTP_PLUGIN"``, exactly as they
find a vendor's plugin. No module imports this one: it sits above the presets and
the plugin kit it is built from.
"""

from __future__ import annotations

from http import HTTPStatus

import httpx

from ._classifier import HTTP_CLASSIFIER, RETRY_STATUSES
from ._plugin import CodeEntry, CodeTable, VendorPlugin
from ._presets import http_preset
from ._verdict import Action

__all__ = ["HTTP_CODES", "HTTP_PLUGIN"]

#: Statuses the generic reading refuses, listed for the documentation and the
#: conformance suite: every 4xx and 5xx outside the table is FAIL too.
_SOME_FAILURES = (400, 403, 404, 409, 422, 501)


def _entry(action: Action, status: int) -> CodeEntry:
    return CodeEntry(action, status, title=HTTPStatus(status).phrase)


HTTP_CODES = CodeTable(
    {
        200: _entry(Action.ACCEPT, 200),
        401: _entry(Action.REFRESH_AUTH, 401),
        **{status: _entry(Action.RETRY, status) for status in sorted(RETRY_STATUSES)},
        **{status: _entry(Action.FAIL, status) for status in _SOME_FAILURES},
    }
)
"""The generic reading as a code table: its codes are the statuses themselves."""


def render_status(code: str, status: int | None = None) -> httpx.Response:
    """The bare response the generic reading sees for ``code`` (a status), at
    ``status`` when given."""
    return httpx.Response(status if status is not None else int(code))


HTTP_PLUGIN = VendorPlugin(
    name="http",
    classifier=HTTP_CLASSIFIER,
    codes=HTTP_CODES,
    preset=http_preset,
    render_error=render_status,
    description="generic: status codes and Retry-After",
)
"""The ``"http"`` plugin: :class:`~resilience.HttpClassifier`, its codes, and the
generic preset (see :data:`~resilience._presets.HTTP_PRESET`)."""
