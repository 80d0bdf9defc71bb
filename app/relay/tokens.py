"""Console access tokens: HMAC-SHA256 signed, with an expiry; no state on the server.

A token is ``<payload>.<signature>``, both base64url without padding; the payload is JSON
``{"sub": …, "iat": …, "exp": …}`` (seconds since the epoch). Anyone holding the secret can
make one (``fraudlens token create``); the relay only verifies. The secret comes from
``FRAUDLENS_TOKEN_SECRET`` or, when unset, from a file generated once per data dir, so a demo
works without configuration.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import orjson

SECRET_FILE = "token-secret"
MIN_SECRET_BYTES = 16


class TokenError(ValueError):
    """Why a token is refused; ``code`` is machine-readable (``token_missing``, …)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Claims:
    subject: str
    issued_at: int
    expires_at: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: bytes, payload: str) -> str:
    return _b64(hmac.new(secret, payload.encode("ascii"), hashlib.sha256).digest())


def create_token(secret: bytes, ttl_s: float, now: float, subject: str = "console") -> str:
    """A token valid from ``now`` for ``ttl_s`` seconds."""
    if ttl_s <= 0:
        raise ValueError("ttl must be positive")
    claims = {"sub": subject, "iat": int(now), "exp": int(now + ttl_s)}
    payload = _b64(orjson.dumps(claims))
    return f"{payload}.{_sign(secret, payload)}"


def verify_token(secret: bytes, token: str | None, now: float) -> Claims:
    """The token's claims, or ``TokenError`` (missing, malformed, bad signature, expired)."""
    if not token:
        raise TokenError("token_missing", "no token: pass ?token=… or an Authorization: Bearer header")
    payload, _, signature = token.partition(".")
    if not payload or not signature or not payload.isascii() or not signature.isascii():
        raise TokenError("token_malformed", "the token is not <payload>.<signature>")
    if not hmac.compare_digest(_sign(secret, payload), signature):
        raise TokenError("token_invalid", "the token's signature does not match this relay's secret")
    try:
        claims = orjson.loads(_unb64(payload))
        parsed = Claims(str(claims["sub"]), int(claims["iat"]), int(claims["exp"]))
    except (ValueError, KeyError, TypeError):
        raise TokenError("token_malformed", "the token's payload is not readable") from None
    if parsed.expires_at <= now:
        raise TokenError("token_expired", "the token has expired: make a new one (fraudlens token create)")
    return parsed


def presented_token(query_token: str | None, authorization: str | None) -> str | None:
    """The token a request presents: ``?token=`` (browsers cannot set websocket headers), else
    ``Authorization: Bearer``. Shared by the relay and every ``/metrics`` endpoint."""
    if query_token:
        return query_token
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None


def load_or_create_secret(configured: str | None, data_dir: Path) -> bytes:
    """The configured secret, else the data dir's secret file (created once, mode 0600)."""
    if configured:
        if len(configured.encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"FRAUDLENS_TOKEN_SECRET must be at least {MIN_SECRET_BYTES} bytes")
        return configured.encode()
    path = data_dir / SECRET_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_secret_file(path)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32))
    return _read_secret_file(path)


def _read_secret_file(path: Path) -> bytes:
    secret = path.read_text().strip().encode()
    if len(secret) < MIN_SECRET_BYTES:  # a creator racing us has not written it yet, or a bad file
        raise ValueError(f"token secret file {path} is empty or too short; delete it to regenerate")
    return secret
