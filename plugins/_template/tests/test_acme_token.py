"""The template's token provider: its arguments are checked when it is built."""

from __future__ import annotations

from typing import Any

import pytest
import resilience_acme

from resilience.errors import ConfigurationError

SECRET = "acme-secret-never-shown"


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"client_id": "c", "client_secret": SECRET}, "base_url"),
        ({"client_id": "c", "client_secret": "", "base_url": "https://acme.test"}, "client_secret"),
        (
            {"client_id": None, "client_secret": SECRET, "base_url": "https://acme.test"},
            "client_id",
        ),
        ({"client_id": "c", "client_secret": SECRET, "base_url": "acme.test"}, "base_url"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs: dict[str, Any], named: str) -> None:
    """A missing base URL, an empty secret, no client id or a base URL that is not
    one: a ConfigurationError naming the argument, never quoting the secret."""
    with pytest.raises(ConfigurationError, match=named) as caught:
        resilience_acme.AcmeToken(**kwargs)
    assert SECRET not in str(caught.value)


def test_token_endpoint_is_absolute() -> None:
    """The token endpoint is built from base_url: AuthRefresh takes its origin from it."""
    token = resilience_acme.AcmeToken(
        client_id="c", client_secret=SECRET, base_url="http://a.test/"
    )
    assert token.token_endpoint == "http://a.test/oauth/token"
