"""Browser and network access for both ports: the ``Host`` check, CORS (allowed origins) and the API key.

A small middleware rather than aiohttp-cors: aiohttp-cors matches origins as exact strings (no "any port of
localhost"), and for a simple request from an origin it does not know it still runs the handler and only leaves
the CORS headers out. Here a request to a ``Host`` the server does not answer to (DNS rebinding) or whose
``Origin`` is not allowed is refused with 403 before any work, a preflight is answered for any route, and the
API key is checked in the same place. It runs for every route of both ports, the viewer's files included.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from aiohttp import web

from neuroscope.server.errors import APIError
from neuroscope.server.origins import HostPolicy, OriginPolicy, host_of, is_loopback_host, parse_origin

ALLOWED_METHODS = "GET, POST, OPTIONS"
EXPOSED_HEADERS = "X-Request-Id"
PREFLIGHT_MAX_AGE = "600"


@dataclass
class Access:
    """Who may call the server. ``viewer_port`` is the bound features port (known once it is bound);
    ``allowed_hosts``: more ``Host`` names to answer to (``--allowed-hosts``)."""

    origins: OriginPolicy = field(default_factory=OriginPolicy.from_list)
    api_key: str | None = None
    bind_host: str = "127.0.0.1"
    viewer_port: int | None = None
    allowed_hosts: tuple[str, ...] = ()
    hosts: HostPolicy = field(init=False)

    def __post_init__(self) -> None:
        self.hosts = HostPolicy.for_bind(self.bind_host, self.allowed_hosts)

    def origin_allowed(self, origin: str, request: web.Request) -> bool:
        if self.origins.allows(origin):
            return True
        # Bound to a public address, the viewer is reached as http://<that address>:<features port>: its own
        # origin may call both ports. (Not on a loopback bind, where a foreign host name could only be a DNS
        # rebinding trick.)
        if self.viewer_port is None or is_loopback_host(self.bind_host):
            return False
        parsed = parse_origin(origin)
        return parsed is not None and parsed[1] == host_of(request.host) and parsed[2] == self.viewer_port

    def key_matches(self, presented: str | None) -> bool:
        if self.api_key is None:
            return True
        if not presented:
            return False
        # surrogateescape: a header that is not UTF-8 comes back as the bytes sent, and simply does not match
        return hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), self.api_key.encode("utf-8"))


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _unauthorized(presented: str | None, query_key: bool) -> web.Response:
    how = "'Authorization: Bearer <key>'" + (" or ?api_key=<key>" if query_key else "")
    if presented:
        msg = "Incorrect API key provided. This server was started with --api-key; send that key as " + how + "."
    else:
        msg = "This server requires an API key (it was started with --api-key); send it as " + how + "."
    return APIError(msg, status=401, code="invalid_api_key").response(
        headers={"WWW-Authenticate": 'Bearer realm="neuroscope"'}
    )


def _preflight(request: web.Request, origin: str) -> web.Response:
    headers = {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": ALLOWED_METHODS,
        "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
        "Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
    }
    asked = request.headers.get("Access-Control-Request-Headers")
    if asked:
        headers["Access-Control-Allow-Headers"] = asked
    return web.Response(status=204, headers=headers)


def _host_refused(host: str) -> web.Response:
    shown = host if len(host) <= 100 else host[:100] + "..."
    return APIError(
        f"this server does not answer to the host name {shown!r} (a page on another name that resolves to this "
        f"machine must not read it); start it with --allowed-hosts NAME to serve it under that name, e.g. behind "
        f"a reverse proxy", status=403, code="host_not_allowed",
    ).response()


def access_middleware(access: Access, *, public_paths: frozenset[str] = frozenset(), query_key: bool = False):
    """Host check, origin check, preflight, API key, in that order. ``public_paths`` need no key (``/health``
    never does); ``query_key`` lets ``?api_key=`` stand in for the header (an ``EventSource`` cannot send
    headers)."""
    open_paths = public_paths | {"/health"}

    @web.middleware
    async def middleware(request: web.Request, handler):
        host = request.headers.get("Host")
        if not access.hosts.allows(host):
            return _host_refused(host or "")
        origin = request.headers.get("Origin")
        if origin is not None:
            if not access.origin_allowed(origin, request):
                return APIError(
                    f"origin {origin!r} is not allowed to call this server; start it with "
                    f"--allowed-origins {origin} (or a comma list, or *) to allow it",
                    status=403, code="origin_not_allowed",
                ).response()
            if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
                return _preflight(request, origin)
        if access.api_key is not None and request.path not in open_paths:
            presented = _bearer(request)
            if presented is None and query_key:
                presented = request.query.get("api_key") or None
            if not access.key_matches(presented):
                return _unauthorized(presented, query_key)
        return await handler(request)

    return middleware


def cors_headers(access: Access):
    """An ``on_response_prepare`` hook: it runs before the headers go out, so streamed (SSE) responses get the
    CORS headers too."""

    async def add(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if origin is None or "Access-Control-Allow-Origin" in response.headers or not access.origin_allowed(
                origin, request):
            return
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        vary = response.headers.get("Vary")
        response.headers["Vary"] = f"{vary}, Origin" if vary else "Origin"

    return add


def install(app: web.Application, access: Access, **kwargs) -> None:
    """Put the access middleware in front of ``app``'s handlers and add CORS headers to its responses."""
    app.middlewares.append(access_middleware(access, **kwargs))
    app.on_response_prepare.append(cors_headers(access))
