"""The websocket protocol's pure parts: parsing client frames, filters, message shapes."""

from __future__ import annotations

from typing import Any

import pytest

from app.records.contracts import validate_message
from app.relay.protocol import (
    Filter,
    ProtocolError,
    ack_message,
    error_message,
    explanation_message,
    gap_message,
    lagging_message,
    parse_client_message,
    verdict_message,
)
from tests.unit.test_relay_state import update, verdict


@pytest.mark.parametrize(
    "frame",
    [
        '{"type":"subscribe"}',
        '{"type":"subscribe","subscription":"s","filter":{"decisions":["deny"],"min_priority":"high"},"recent":5}',
        '{"type":"subscribe","filter":{"transaction_ids":["tx-1"]},"last_event_id":"0a0b0c0d-12"}',
        '{"type":"unsubscribe","id":"9"}',
        '{"type":"explain_now","transaction_id":"tx-1","method":"tree"}',
        '{"type":"explain_now","transaction_id":"tx-1","kind":"counterfactual"}',
        '{"type":"subscribe","protocol":3}',
        '{"type":"ping","id":"p"}',
    ],
)
def test_valid_frames_parse(frame: str) -> None:
    assert parse_client_message(frame)["type"]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "malformed_json"),
        (b'{"type":"ping"}', "binary_not_supported"),
        ("[1,2]", "invalid_message"),
        ('{"type":"dance"}', "invalid_message"),
        ('{"type":"explain_now"}', "invalid_message"),  # transaction_id is required
        ('{"type":"ping","transaction_id":"tx-1"}', "invalid_message"),  # a field of another type
        ('{"type":"subscribe","filter":{"decisions":["maybe"]}}', "invalid_message"),
        ('{"type":"subscribe","recent":100000}', "invalid_message"),
        ('{"type":"subscribe","last_event_id":"yesterday"}', "invalid_message"),
        ('{"type":"subscribe","protocol":4}', "invalid_message"),
        ('{"type":"explain_now","transaction_id":"tx-1","kind":"shap"}', "invalid_message"),
        # a method is a SHAP method: contributions only
        (
            '{"type":"explain_now","transaction_id":"tx-1","kind":"counterfactual","method":"tree"}',
            "invalid_message",
        ),
    ],
)
def test_bad_frames_get_a_code(frame: str | bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_client_message(frame)
    assert caught.value.code == code
    validate_message("ws_server", error_message(caught.value.code, caught.value.message))


def test_error_echoes_the_request_id_of_an_invalid_message() -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_client_message('{"type":"explain_now","id":"r7"}')
    assert caught.value.request_id == "r7"


def test_filters() -> None:
    everything = Filter.from_message(None)
    assert everything == Filter() and everything.matches("tx", None, None)
    only = Filter.from_message({"transaction_ids": ["a"], "decisions": ["deny", "review"]})
    assert only.matches("a", "deny", "low") and not only.matches("b", "deny", "low")
    assert not only.matches("a", "approve", "high")
    normal_up = Filter.from_message({"min_priority": "normal"})
    assert normal_up.matches("x", "approve", "high") and normal_up.matches("x", "approve", "normal")
    assert not normal_up.matches("x", "approve", "low") and not normal_up.matches("x", "approve", None)


def test_server_messages_match_the_schema() -> None:
    messages: list[dict[str, Any]] = [
        verdict_message("0a0b0c0d-1", verdict("tx-1"), "high", True),
        explanation_message("0a0b0c0d-2", update("tx-1", "complete")),
        explanation_message("0a0b0c0d-3", update("tx-1", "pending")),
        ack_message("subscribe", "1", subscription="s", replayed=None),
        ack_message("explain_now", None, transaction_id="tx-1"),
        gap_message("s", "0a0b0c0d-1", None),
        lagging_message(10),
        error_message("malformed_json", "no", "1"),
    ]
    for message in messages:
        validate_message("ws_server", message)
