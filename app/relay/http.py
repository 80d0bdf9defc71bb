"""The relay's HTTP side, answered in websockets' ``process_request`` hook: the route table, the
console's static files, the Origin allow-list, and the token check.

Every path the relay answers is in ``ROUTES``; anything else is 404. A route needs a token unless
it is marked public, and only two kinds are: the console's own code and style (no data: the page
asks for ``?token=`` before it connects) and ``/healthz`` (liveness for orchestrators' health
checks, which carry no credentials; it tells only ready and the relay id). The token test walks
this table, so a new route cannot be added without it being checked.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Collection
from dataclasses import dataclass
from http import HTTPStatus
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from app.relay.tokens import Claims, presented_token, verify_token

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class Route:
    """One path the relay answers: ``kind`` names the handler; ``public``: no token needed."""

    path: str
    kind: str  # websocket | healthz | stats | token | static
    public: bool = False


STATIC_FILES = ("index.html", "console.js", "kinds.js", "console.css")
ROUTES: dict[str, Route] = {
    route.path: route
    for route in (
        Route("/ws", "websocket"),
        Route("/api/stats", "stats"),
        Route("/api/token", "token"),
        Route("/healthz", "healthz", public=True),
        Route("/", "static", public=True),
        *(Route(f"/{name}", "static", public=True) for name in STATIC_FILES),
    )
}


def request_path(request: Request) -> str:
    """The path of a request without its query; never raises (``urlsplit`` does on ``//[x``)."""
    return request.path.partition("?")[0].partition("#")[0]


def request_token(request: Request) -> str | None:
    """The token of a request: ``?token=`` (browsers cannot set websocket headers) or Bearer."""
    query = request.path.partition("?")[2].partition("#")[0]
    values = parse_qs(query).get("token") if query else None  # the request line is ≤ 8 KB
    return presented_token(values[0] if values else None, request.headers.get("Authorization"))


def origin_allowed(
    origin: str | None, host: str | None, allowed: Collection[str], allow_localhost: bool
) -> bool:
    """No Origin (not a browser), a listed origin, the relay's own origin, or (when allowed) a
    page served from localhost."""
    if origin is None:
        return True
    if origin in allowed:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https"):
        return False
    if host is not None and parts.netloc.lower() == host.lower():
        return True
    return allow_localhost and (parts.hostname or "") in LOCAL_HOSTS | {"::1"}


def authorise(request: Request, secret: bytes, now: float) -> Claims:
    """The token's claims, or ``TokenError``."""
    return verify_token(secret, request_token(request), now)


def json_response(status: HTTPStatus, body: Any) -> Response:
    headers = Headers()
    headers["Content-Type"] = "application/json"
    headers["Cache-Control"] = "no-store"
    headers["Connection"] = "close"
    return Response(status.value, status.phrase, headers, orjson.dumps(body))


def refusal(status: HTTPStatus, code: str, message: str) -> Response:
    return json_response(status, {"type": "error", "code": code, "message": message})


def static_file(path: str) -> Response | None:
    """A console file (``/`` is ``index.html``), or None when there is no such file."""
    name = "index.html" if path == "/" else path.lstrip("/")
    if name not in STATIC_FILES:
        return None
    resource = resources.files("app.console").joinpath(name)
    if not resource.is_file():
        return None
    body = resource.read_bytes()
    headers = Headers()
    kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
    headers["Content-Type"] = (
        f"{kind}; charset=utf-8" if kind.startswith("text/") or kind.endswith("javascript") else kind
    )
    headers["Cache-Control"] = "no-cache"
    headers["Content-Security-Policy"] = CSP
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Connection"] = "close"
    return Response(200, "OK", headers, body)
