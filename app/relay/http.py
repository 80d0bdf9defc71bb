"""The relay's HTTP side, answered in websockets' ``process_request`` hook: the console's static
files, the Origin allow-list, and the token check every websocket upgrade must pass."""

from __future__ import annotations

import mimetypes
from collections.abc import Collection
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


def request_token(request: Request) -> str | None:
    """The token of a request: ``?token=`` (browsers cannot set websocket headers) or Bearer."""
    values = parse_qs(urlsplit(request.path).query).get("token")
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
    if "/" in name or name.startswith(".") or not name:
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
