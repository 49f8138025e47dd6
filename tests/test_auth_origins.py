"""AuthRefresh sends credentials only to the origins they belong to.

A token goes to requests for the token endpoint's origin, or the origins named in
``AuthRefresh(origins=...)``, or (for a provider with no endpoint) the first
request's origin; never across a redirect to another host, scheme or port. A
request for another origin causes no fetch and its 401 is final; a path-only token
endpoint is resolved against a base fixed when the layer is bound.
"""

from __future__ import annotations

from typing import Any

import attrs
import httpx
import pytest

from resilience import (
    AuthRefresh,
    OAuth2ClientCredentials,
    Retry,
    StaticToken,
    Token,
    TokenFetchError,
    TokenRefreshed,
)
from resilience.errors import AuthenticationError, ConfigurationError, PermanentError
from resilience.testing import VirtualClock, through

pytestmark = pytest.mark.anyio

API = "https://api.x"
EVIL = "https://evil.y"
CLIENT_ID = "client-9"
SECRET = "origin-test-secret"


@attrs.define(eq=False)
class Net:
    """Several hosts behind one mock transport; records who got which headers and bodies.

    ``routes`` maps ``(host, path)`` to a response; a token endpoint at
    ``/oauth/token`` on ``token_host`` issues ``tok-1``, ``tok-2``, ...; every other
    request that carries a current bearer token gets 200, and 401 otherwise.
    """

    token_host: str = "api.x"
    routes: dict[tuple[str, str], httpx.Response] = attrs.field(factory=dict)
    seen: list[tuple[str, str, dict[str, str], bytes]] = attrs.field(factory=list)
    issued: int = 0
    valid: set[str] = attrs.field(factory=set)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if request.url.port is not None:
            host = f"{host}:{request.url.port}"
        host = f"{request.url.scheme}://{host}"
        self.seen.append((host, request.url.path, dict(request.headers), request.read()))
        routed = self.routes.get((host, request.url.path))
        if routed is not None:
            return httpx.Response(
                routed.status_code, headers=routed.headers, content=routed.content
            )
        if request.url.path == "/oauth/token" and request.url.host == self.token_host:
            self.issued += 1
            token = f"tok-{self.issued}"
            self.valid = {token}
            return httpx.Response(200, json={"access_token": token, "expires_in": 3600})
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        if bearer in self.valid:
            return httpx.Response(200, json={"ok": True})
        return httpx.Response(401, json={"error": "unauthorized"})

    def to(self, origin: str) -> list[tuple[str, dict[str, str], bytes]]:
        """What ``origin`` received: (path, headers, body) per request."""
        return [(path, headers, body) for host, path, headers, body in self.seen if host == origin]

    def credentials_seen_by(self, origin: str) -> list[str]:
        """Every credential that reached ``origin``: headers that carry one, and
        bodies or headers that hold the client secret."""
        found = []
        for _, headers, body in self.to(origin):
            for name in ("authorization", "x-api-key"):
                if name in headers:
                    found.append(f"{name}: {headers[name]}")
            if SECRET.encode() in body or any(SECRET in v for v in headers.values()):
                found.append("client secret")
        return found


def redirect(location: str, status: int = 302) -> httpx.Response:
    """A redirect to ``location``."""
    return httpx.Response(status, headers={"Location": location})


def client(net: Net, *layers: Any, events: list[Any] | None = None) -> httpx.AsyncClient:
    """An httpx client that follows redirects, over ``net``, through ``layers``."""
    hooks = [events.append] if events is not None else []
    transport = through(httpx.MockTransport(net), *layers, clock=VirtualClock(), hooks=hooks)
    return httpx.AsyncClient(base_url=API, transport=transport, follow_redirects=True)


def oauth(token_url: str = f"{API}/oauth/token") -> OAuth2ClientCredentials:
    """Client credentials whose endpoint is ``token_url``."""
    return OAuth2ClientCredentials(token_url=token_url, client_id=CLIENT_ID, client_secret=SECRET)


@attrs.frozen
class PathProvider:
    """A vendor flow that names its endpoint by path and posts the secret in JSON."""

    async def fetch(self, http: httpx.AsyncClient) -> Token:
        """POST the credentials to ``/oauth/token`` on the client's base URL."""
        r = await http.post("/oauth/token", json={"client_id": CLIENT_ID, "secret": SECRET})
        if r.status_code != 200:
            raise TokenFetchError(f"token endpoint answered {r.status_code}")
        return Token(r.json()["access_token"], r.json()["expires_in"])


# -- the default: the token endpoint's origin --------------------------------------------


async def test_same_origin_default_needs_no_extra_argument() -> None:
    """OAuth2ClientCredentials on the API's host, AuthRefresh(provider) alone: the
    token is fetched once and attached to the API's requests."""
    net = Net()
    async with client(net, AuthRefresh(oauth())) as c:
        assert (await c.get("/v1/things")).status_code == 200
        assert (await c.get("/v1/other")).status_code == 200
    assert net.issued == 1
    assert [h["authorization"] for p, h, _ in net.to(API) if p != "/oauth/token"] == [
        "Bearer tok-1",
        "Bearer tok-1",
    ]


async def test_redirect_to_another_host_carries_no_token() -> None:
    """A real redirect through httpx.AsyncClient(follow_redirects=True): the API's
    302 to another host reaches it with no Authorization header, and its 200 is
    the caller's answer."""
    net = Net(routes={("https://api.x", "/v1/moved"): redirect(f"{EVIL}/landing")})
    net.routes[("https://evil.y", "/landing")] = httpx.Response(200, json={"ok": "evil"})
    async with client(net, AuthRefresh(oauth())) as c:
        response = await c.get("/v1/moved")
    assert response.status_code == 200
    assert str(response.url) == f"{EVIL}/landing"
    assert net.to(API)[1][1]["authorization"] == "Bearer tok-1"  # the API's own request
    assert net.credentials_seen_by(EVIL) == []
    assert net.issued == 1


async def test_a_401_from_the_other_host_is_final_and_fetches_nothing() -> None:
    """The other host answers 401: a PermanentError for the caller, no token
    request anywhere (least of all to that host), no refresh, no replay."""
    net = Net(routes={("https://api.x", "/v1/moved"): redirect(f"{EVIL}/steal")})
    events: list[Any] = []
    layers = [Retry(max_attempts=3), AuthRefresh(oauth())]
    async with client(net, *layers, events=events) as c:
        with pytest.raises(PermanentError) as caught:
            await c.get("/v1/moved")
    assert not isinstance(caught.value, AuthenticationError)
    assert caught.value.problem is not None
    assert caught.value.problem.status == 401
    assert [path for path, _, _ in net.to(EVIL)] == ["/steal"]  # once: no replay
    assert net.credentials_seen_by(EVIL) == []
    assert net.issued == 1
    assert [e.trigger for e in events if isinstance(e, TokenRefreshed)] == ["initial"]


@pytest.mark.parametrize(
    "target",
    [
        "http://api.x/v1/plain",  # scheme downgrade: another origin
        "https://api.x:8443/v1/port",  # another port
        "https://sub.api.x/v1/sub",  # another host, even a subdomain
    ],
)
async def test_redirect_to_another_scheme_port_or_subdomain_carries_no_token(target: str) -> None:
    """Origin is scheme, host and port: changing any one of them drops the token."""
    net = Net(routes={("https://api.x", "/v1/go"): redirect(target, status=307)})
    url = httpx.URL(target)
    origin = f"{url.scheme}://{url.host}" + (f":{url.port}" if url.port else "")
    net.routes[(origin, url.path)] = httpx.Response(204)
    async with client(net, AuthRefresh(oauth())) as c:
        assert (await c.get("/v1/go")).status_code == 204
    assert net.credentials_seen_by(origin) == []


async def test_redirect_within_the_origin_keeps_the_token() -> None:
    """A redirect to another path on the same origin (default port spelled out) is
    still the API: the token goes along."""
    net = Net(routes={("https://api.x", "/v1/old"): redirect("https://API.x:443/v1/new")})
    async with client(net, AuthRefresh(oauth())) as c:
        assert (await c.get("/v1/old")).status_code == 200
    assert [h.get("authorization") for p, h, _ in net.to(API) if p != "/oauth/token"] == [
        "Bearer tok-1",
        "Bearer tok-1",
    ]


async def test_a_first_request_to_another_origin_fetches_nothing() -> None:
    """Before any token exists, a request for a foreign origin does not fetch one."""
    net = Net()
    events: list[Any] = []
    async with client(net, AuthRefresh(oauth()), events=events) as c:
        with pytest.raises(PermanentError):
            await c.get(f"{EVIL}/v1/things")
    assert net.issued == 0
    assert net.to(API) == []
    assert events == []


async def test_a_foreign_request_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """The first request sent without a token says why, once, naming both origins."""
    net = Net()
    net.routes[("https://evil.y", "/a")] = httpx.Response(204)
    async with client(net, AuthRefresh(oauth())) as c:
        await c.get(f"{EVIL}/a")
        await c.get(f"{EVIL}/a")
    warnings = [r.getMessage() for r in caplog.records if "no token sent" in r.getMessage()]
    assert warnings == [
        "resilience auth: no token sent to https://evil.y: the token is for https://api.x "
        "(AuthRefresh(origins=[...]) names the origins it goes to)"
    ]


# -- named origins ------------------------------------------------------------------------


async def test_token_endpoint_on_another_host_needs_the_api_named() -> None:
    """token_url on auth.x, API on api.x: without origins the API gets no token
    (a 401, final); with origins=[API] it does, and the auth host gets none."""
    net = Net(token_host="auth.x")
    provider = oauth("https://auth.x/oauth/token")
    async with client(net, AuthRefresh(provider)) as c:
        with pytest.raises(PermanentError):
            await c.get("/v1/things")
    assert net.issued == 0
    async with client(net, AuthRefresh(provider, origins=[API])) as c:
        assert (await c.get("/v1/things")).status_code == 200
    assert net.issued == 1
    assert net.to(API)[-1][1]["authorization"] == "Bearer tok-1"


async def test_several_named_origins_share_one_token() -> None:
    """Two named origins get the same token; a third gets none."""
    net = Net(token_host="auth.x")
    net.routes[("https://other.z", "/v1/c")] = httpx.Response(204)
    layer = AuthRefresh(oauth("https://auth.x/oauth/token"), origins=[API, "https://eu.api.x"])
    async with client(net, layer) as c:
        await c.get("/v1/a")
        await c.get("https://eu.api.x/v1/b")
        await c.get("https://other.z/v1/c")
    assert net.to(API)[0][1]["authorization"] == "Bearer tok-1"
    assert net.to("https://eu.api.x")[0][1]["authorization"] == "Bearer tok-1"
    assert net.credentials_seen_by("https://other.z") == []
    assert net.issued == 1


@pytest.mark.parametrize(
    ("origins", "shown"),
    [
        (["https://API.x:443/any/path?q=1"], ("https://api.x",)),
        ("http://api.x:80", ("http://api.x",)),
        (["https://api.x:8443", httpx.URL("https://api.x:8443/")], ("https://api.x:8443",)),
        (("http://[::1]:8080",), ("http://[::1]:8080",)),
    ],
)
def test_origins_are_normalised(origins: Any, shown: tuple[str, ...]) -> None:
    """Only scheme, host and port count; default ports and case are normalised."""
    assert AuthRefresh(StaticToken("k"), origins=origins).origins == shown


@pytest.mark.parametrize(
    "origins",
    [[], ["api.x"], ["/v1"], ["ftp://api.x"], [42], 42, ["https://"]],
)
def test_bad_origins_fail_at_construction(origins: Any) -> None:
    """origins must name at least one absolute http(s) URL."""
    with pytest.raises(ConfigurationError, match="origins"):
        AuthRefresh(StaticToken("k"), origins=origins)


def test_a_relative_token_endpoint_fails_at_construction() -> None:
    """A provider that declares a token_endpoint without a host is refused: its
    path would be resolved against whatever host is being called."""

    @attrs.frozen
    class Relative:
        token_endpoint: str = "/oauth/token"

        async def fetch(self, http: httpx.AsyncClient) -> Token:
            raise AssertionError("never called")

    with pytest.raises(ConfigurationError, match="token_endpoint"):
        AuthRefresh(Relative())


# -- providers without an endpoint ---------------------------------------------------------


async def test_static_token_is_pinned_to_the_first_origin() -> None:
    """StaticToken has no endpoint: the first request's origin is the token's, and a
    redirect (or a later request) to another host carries no key."""
    net = Net(routes={("https://api.x", "/v1/moved"): redirect(f"{EVIL}/x")})
    net.routes[("https://evil.y", "/x")] = httpx.Response(204)
    net.routes[("https://api.x", "/v1/ok")] = httpx.Response(204)
    layer = AuthRefresh(StaticToken("api-key-1"), header="X-Api-Key", scheme=None)
    async with client(net, layer) as c:
        await c.get("/v1/ok")
        await c.get("/v1/moved")
        await c.get(f"{EVIL}/x")
    assert [h.get("x-api-key") for _, h, _ in net.to(API)] == ["api-key-1", "api-key-1"]
    assert net.credentials_seen_by(EVIL) == []


async def test_static_token_with_named_origins() -> None:
    """Named origins replace the first-request rule: the first request, to a host not
    named, carries nothing; the named host gets the key."""
    net = Net()
    for origin in (API, EVIL):
        net.routes[(origin, "/v1/ok")] = httpx.Response(204)
    layer = AuthRefresh(StaticToken("api-key-1"), header="X-Api-Key", scheme=None, origins=[API])
    async with client(net, layer) as c:
        await c.get(f"{EVIL}/v1/ok")
        await c.get("/v1/ok")
    assert net.credentials_seen_by(EVIL) == []
    assert net.to(API)[0][1]["x-api-key"] == "api-key-1"


async def test_path_only_provider_posts_only_to_its_fixed_base() -> None:
    """A provider naming its endpoint by path, with origins=[API]: every token
    request goes to the API, even when the other host's 401 comes first; the
    client secret never reaches the other host."""
    net = Net(routes={("https://api.x", "/v1/moved"): redirect(f"{EVIL}/steal")})
    async with client(net, AuthRefresh(PathProvider(), origins=[API])) as c:
        with pytest.raises(PermanentError):
            await c.get(f"{EVIL}/steal")
        with pytest.raises(PermanentError):
            await c.get("/v1/moved")
        assert (await c.get("/v1/things")).status_code == 200
    assert net.credentials_seen_by(EVIL) == []
    token_requests = [host for host, path, _, _ in net.seen if path == "/oauth/token"]
    assert token_requests == [API]


async def test_path_only_provider_without_a_base_sends_nothing() -> None:
    """A path-only provider with no origins named has no base to resolve against:
    the fetch fails, permanently, and nothing is sent anywhere."""
    net = Net()
    layers = [Retry(max_attempts=3), AuthRefresh(PathProvider())]
    async with client(net, *layers) as c:
        with pytest.raises(TokenFetchError) as caught:
            await c.get("/v1/things")
    assert caught.value.transient is False
    assert "UnsupportedProtocol" in str(caught.value)
    assert net.seen == []
