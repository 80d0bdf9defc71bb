"""Hostile input to the relay, without a network: client frames (``parse_client_message``) and
HTTP requests (``Relay.process_request``). No input raises; each gets a clear, bounded error."""

from __future__ import annotations

import json
import time
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.datastructures import Headers
from websockets.http11 import Request

from app.records.contracts import load_schema, validate_message
from app.relay import http
from app.relay.protocol import MAX_ERROR_TEXT, ProtocolError, error_message, parse_client_message
from app.relay.server import Relay
from app.relay.tokens import create_token
from app.settings import Settings

ERROR_CODES = set(load_schema("ws_server")["properties"]["code"]["enum"])
SECRET = b"k" * 32
HOSTILE = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(frame: str | bytes) -> str:
    """``ok`` or the error code; the error must be a valid, bounded server message."""
    try:
        parse_client_message(frame)
    except ProtocolError as exc:
        assert exc.code in ERROR_CODES, exc.code
        assert len(exc.message) <= MAX_ERROR_TEXT
        message = error_message(exc.code, exc.message, exc.request_id)
        validate_message("ws_server", orjson.loads(orjson.dumps(message)))
        return exc.code
    return "ok"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)


@HOSTILE
@given(st.text(max_size=3000))
def test_any_text_frame_is_parsed_or_refused_with_a_code(frame: str) -> None:
    outcome(frame)


@HOSTILE
@given(st.binary(max_size=3000))
def test_any_binary_frame_is_refused(frame: bytes) -> None:
    assert outcome(frame) == "binary_not_supported"


@HOSTILE
@given(st.dictionaries(st.text(max_size=20), json_values, max_size=8))
def test_any_json_object_is_parsed_or_refused_with_a_code(obj: dict[str, Any]) -> None:
    outcome(json.dumps(obj))  # the stdlib writes integers of any size; orjson would refuse


@HOSTILE
@given(st.integers(min_value=1, max_value=3000), st.sampled_from(["[", '{"a":']))
def test_deep_nesting_is_refused_not_a_recursion_error(depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    assert outcome(opener * depth + "1" + closer * depth) in ("malformed_json", "invalid_message")


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ('{"type":"subscribe","recent":1e400}', "malformed_json"),  # beyond the double range
        ('{"type":"subscribe","recent":-1e400}', "malformed_json"),
        ('{"type":"subscribe","recent":' + "9" * 400 + "}", "malformed_json"),  # a huge integer
        ('{"type":"subscribe","recent":123456789012345678901234567890}', "invalid_message"),
        ('{"type":"ping","type":"subscribe"}', "duplicate_key"),
        ('{"type":"subscribe","filter":{"decisions":["deny"],"decisions":["approve"]}}', "duplicate_key"),
        ('{"type":"ping","t\\u0079pe":"ping"}', "duplicate_key"),  # the same key, escaped
        ('{"type":"ping","id":"\\ud800"}', "malformed_json"),  # a lone surrogate
        ("\ufeff" + '{"type":"ping"}', "malformed_json"),  # a byte order mark
        ('{"type":"ping"}'.encode("utf-16-le").decode("latin-1"), "malformed_json"),  # UTF-16 as text
        ('{"type":"ping"}'.encode("utf-16"), "binary_not_supported"),
        ('{"type":"ping","id":"' + "x" * 60_000 + '"}', "invalid_message"),  # a huge string
        ('{"type":"ping","' + "k" * 60_000 + '":1}', "invalid_message"),  # a huge key
        ('{"type":"subscribe","filter":{"transaction_ids":["' + "a" * 60_000 + '"]}}', "invalid_message"),
        ("", "malformed_json"),
        ("null", "invalid_message"),
    ],
)
def test_hostile_frames_get_their_code(frame: str | bytes, code: str) -> None:
    assert outcome(frame) == code


def test_the_same_key_in_different_objects_is_fine() -> None:
    frame = '{"type":"subscribe","filter":{"decisions":["deny"]},"subscription":"s"}'
    assert parse_client_message(frame)["subscription"] == "s"
    assert json.loads(frame)  # and the stdlib agrees it is one object


# -- HTTP ------------------------------------------------------------------------------------------


def relay() -> Relay:
    return Relay(Settings(), SECRET, epoch="0a0b0c0d")


def answer(path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    response = relay().process_request(None, Request(path, Headers(headers or {})))  # type: ignore[arg-type]
    return (101, b"") if response is None else (response.status_code, response.body)


def test_every_route_of_the_table_is_answered() -> None:
    token = create_token(SECRET, 60, time.time())
    for path, route in http.ROUTES.items():
        status, _ = answer(f"{path}?token={token}")
        assert status == (101 if route.kind == "websocket" else 200), path


ascii_path = st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=400).map(lambda p: "/" + p)
# what websockets' header parser lets through: tab, printable ASCII and the ISO-8859-1 upper half
header_value = st.text(
    st.sampled_from(["\t", *map(chr, range(0x20, 0x7F)), *map(chr, range(0x80, 0x100))]), max_size=500
)


@HOSTILE
@given(path=ascii_path, authorization=header_value, origin=header_value)
def test_no_request_raises_or_gets_data_without_a_token(path: str, authorization: str, origin: str) -> None:
    status, body = answer(path, {"Authorization": authorization, "Origin": origin})
    route = http.ROUTES.get(http.request_path(Request(path, Headers())))
    if route is not None and route.public:
        assert status == 200
    else:
        assert status in (401, 404), (path, status)
        assert orjson.loads(body)["type"] == "error"


@pytest.mark.parametrize(
    "path",
    [
        "//[x",  # urlsplit raises on this (Invalid IPv6 URL)
        "/ws?token=%ff%fe%00",
        "/ws?" + "&".join(f"a{i}=1" for i in range(1000)) + "&token=x",
        "/api/stats?token=" + "A" * 8000 + "." + "B" * 100,
        "/..%2f..%2fetc%2fpasswd",
        "/__init__.py",  # a file of the console package that is not the console
        "/%00",
    ],
)
def test_hostile_paths_are_refused_without_an_exception(path: str) -> None:
    status, body = answer(path)
    assert status in (401, 404), (path, status)
    assert len(body) < 1000
