"""Tokens and passwords are redacted from every log line, whoever logs them."""

from __future__ import annotations

import io
import logging

import pytest

from app.runtime.logredact import REDACTED, RedactingFilter, install, redact

TOKEN = "v1.eyJleHAiOjE3NjQ0MTYwMDB9.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    "line",
    [
        f"BadStatusLine: GET /metrics?token={TOKEN} HTTP/1.1",
        f"GET /ws?foo=1&token={TOKEN}&x=2",
        f"Authorization: Bearer {TOKEN}",
        f"headers {{'Authorization': 'bearer {TOKEN}'}}",
        f"sasl_plain_password={TOKEN}",
        f"secret: {TOKEN}",
    ],
)
def test_credentials_are_redacted(line: str) -> None:
    cleaned = redact(line)
    assert TOKEN not in cleaned and REDACTED in cleaned


def test_ordinary_lines_are_left_alone() -> None:
    line = "scored 1000 tx in 12 batches (mean 83.3); tokens per bucket 20"
    assert redact(line) == line


def test_a_handler_with_the_filter_writes_no_token_from_args_or_exceptions() -> None:
    out = io.StringIO()
    logger = logging.getLogger("test-logredact")
    logger.propagate = False
    handler = logging.StreamHandler(out)
    logger.addHandler(handler)
    root = logging.Logger("root-for-test")
    root.addHandler(handler)
    install(root)
    assert any(isinstance(f, RedactingFilter) for f in handler.filters)
    install(root)  # idempotent
    assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1
    try:
        logger.error("request line %r", f"GET /api/stats?token={TOKEN} HTTP/1.1")
        try:
            raise ValueError(f"bad header Authorization: Bearer {TOKEN}")
        except ValueError:
            logger.exception("Error handling request")
    finally:
        logger.removeHandler(handler)
    written = out.getvalue()
    assert "request line" in written and "Error handling request" in written
    assert TOKEN not in written, written
