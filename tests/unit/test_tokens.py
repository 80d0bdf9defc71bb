"""Console tokens: sign, verify, expiry, tampering, and the per-data-dir secret file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from app.relay.tokens import TokenError, create_token, load_or_create_secret, verify_token

SECRET = b"0123456789abcdef0123456789abcdef"


def test_a_fresh_token_verifies_with_its_claims() -> None:
    token = create_token(SECRET, 60, now=1_000_000, subject="alice")
    claims = verify_token(SECRET, token, now=1_000_030)
    assert (claims.subject, claims.issued_at, claims.expires_at) == ("alice", 1_000_000, 1_000_060)


def test_an_expired_token_is_refused() -> None:
    token = create_token(SECRET, 60, now=1_000_000)
    with pytest.raises(TokenError) as caught:
        verify_token(SECRET, token, now=1_000_060)
    assert caught.value.code == "token_expired"


@pytest.mark.parametrize(
    ("token", "code"),
    [(None, "token_missing"), ("", "token_missing"), ("abc", "token_malformed"), ("a.b.c", "token_invalid")],
)
def test_garbage_is_refused_with_a_reason(token: str | None, code: str) -> None:
    with pytest.raises(TokenError) as caught:
        verify_token(SECRET, token, now=0)
    assert caught.value.code == code


def test_another_secret_or_a_changed_payload_is_refused() -> None:
    token = create_token(SECRET, 60, now=1_000_000)
    with pytest.raises(TokenError, match="signature"):
        verify_token(b"another-secret-of-enough-length", token, now=1_000_001)
    payload, signature = token.split(".")
    forged = create_token(SECRET, 10**9, now=1_000_000).split(".")[0]
    with pytest.raises(TokenError) as caught:
        verify_token(SECRET, f"{forged}.{signature}", now=1_000_001)
    assert caught.value.code == "token_invalid"
    assert payload != forged


def test_ttl_must_be_positive() -> None:
    with pytest.raises(ValueError):
        create_token(SECRET, 0, now=0)


def test_secret_file_is_made_once_private_and_reused(tmp_path: Path) -> None:
    first = load_or_create_secret(None, tmp_path / "data")
    assert load_or_create_secret(None, tmp_path / "data") == first
    mode = (tmp_path / "data" / "token-secret").stat().st_mode
    assert stat.S_IMODE(mode) == 0o600
    assert load_or_create_secret("a-configured-secret-1234", tmp_path) == b"a-configured-secret-1234"
    with pytest.raises(ValueError, match="at least"):
        load_or_create_secret("short", tmp_path)
