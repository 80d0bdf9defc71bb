"""Credentials never reach a log line: tokens in URLs and Authorization headers are redacted.

Every role logs through the root handlers ``fraudlens`` sets up; libraries log what they are
given (aiohttp logs the raw request line of a request it cannot parse, with its ``?token=``).
The filter rewrites the finished message of every record before any handler writes it.
"""

from __future__ import annotations

import logging
import re

REDACTED = "[redacted]"
_PATTERNS = (
    re.compile(r"(?i)(token=)[^&\s'\"]+"),
    re.compile(r"(?i)(bearer\s+)[^\s'\",]+"),
    re.compile(r"(?i)((?:password|secret)\s*[=:]\s*)[^\s'\",]+"),
)


def redact(text: str) -> str:
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


class RedactingFilter(logging.Filter):
    """Formats the record's message once, redacted (arguments folded in, exception text too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        return True


def install(root: logging.Logger | None = None) -> None:
    """Add the filter to every handler of the root logger (idempotent)."""
    for handler in (root or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
