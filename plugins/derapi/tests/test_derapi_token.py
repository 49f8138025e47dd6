"""The Derapi token provider: its arguments are checked when it is built, and its
token goes only to the token endpoint's origin."""

from __future__ import annotations

from typing import Any

import pytest
import resilience_derapi

from resilience import AuthRefresh
from resilience.errors import ConfigurationError

SECRET = "derapi-secret-never-shown"


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"client_id": "c", "client_secret": ""}, "client_secret"),
        ({"client_id": "c", "client_secret": None}, "client_secret"),
        ({"client_id": None, "client_secret": SECRET}, "client_id"),
        ({"client_id": "", "client_secret": SECRET}, "client_id"),
        ({"client_id": "c", "client_secret": SECRET, "base_url": "api.derapi.com"}, "base_url"),
        ({"client_id": "c", "client_secret": SECRET, "base_url": None}, "base_url"),
        ({"client_id": "c", "client_secret": SECRET, "token_url": "/oauth2/token"}, "token_url"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs: dict[str, Any], named: str) -> None:
    """An empty secret, no client id, a base URL that is not one: a
    ConfigurationError naming the argument, never quoting the secret."""
    with pytest.raises(ConfigurationError, match=named) as caught:
        resilience_derapi.token_provider(**kwargs)
    assert SECRET not in str(caught.value)


def test_default_origin_is_the_api() -> None:
    """The default token endpoint is on Derapi's API host, so AuthRefresh(provider)
    sends the token there and nowhere else."""
    provider = resilience_derapi.token_provider(client_id="c", client_secret=SECRET)
    assert provider.token_endpoint == "https://api.derapi.com/oauth2/token"
    assert AuthRefresh(provider).origins is None  # the default: the endpoint's origin
    assert SECRET not in repr(provider)
