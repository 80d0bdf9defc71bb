"""What the relay accepts from its input topics (app.relay.reading), without a broker. The
integration test (tests/integration/test_relay_promises.py) sends the same kinds to a real one."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.relay.protocol import peek_request_id
from app.relay.reading import Skip, SkippedRecords, SkipReason, read_record

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"
VERDICT = json.loads((EXAMPLES / "verdict.valid.json").read_text())
UPDATE = json.loads((EXAMPLES / "explanation.valid.json").read_text())


def reason(topic: str, value: bytes | None, max_bytes: int = 65536) -> SkipReason:
    with pytest.raises(Skip) as caught:
        read_record(topic, value, max_bytes)
    assert VERDICT["card_id"] not in caught.value.detail  # the detail never quotes the value
    return caught.value.reason


def with_field(record: dict[str, Any], field: str, value: Any) -> bytes:
    out = copy.deepcopy(record)
    out[field] = value
    return orjson.dumps(out)


def test_valid_records_pass() -> None:
    assert read_record("verdicts", orjson.dumps(VERDICT), 65536) == VERDICT
    assert read_record("explanation.updates", orjson.dumps(UPDATE), 65536) == UPDATE


def test_the_explainers_bookkeeping_is_not_passed_on() -> None:
    """An update carries the explainer's ``source`` and ``request`` (its table's changelog is the
    topic): valid, but dropped before the relay keeps or sends it."""
    record = {**UPDATE, "source": "verdicts:3:7", "request": {"transaction_id": UPDATE["transaction_id"]}}
    assert read_record("explanation.updates", orjson.dumps(record), 65536) == UPDATE


def test_each_kind_of_bad_record_has_its_reason() -> None:
    assert reason("verdicts", None) is SkipReason.TOMBSTONE
    assert reason("verdicts", b"") is SkipReason.EMPTY
    assert reason("verdicts", orjson.dumps(VERDICT), 100) is SkipReason.TOO_LARGE
    assert reason("verdicts", b"\xff\xfe") is SkipReason.NOT_JSON
    assert reason("verdicts", b"[" * 5000) is SkipReason.NOT_JSON
    assert reason("verdicts", b"[1]") is SkipReason.NOT_OBJECT
    assert reason("verdicts", with_field(VERDICT, "score", "high")) is SkipReason.CONTRACT
    assert reason("verdicts", with_field(VERDICT, "card_id", 42)) is SkipReason.CONTRACT
    assert reason("verdicts", with_field(VERDICT, "scored_at", "2026-02-30T00:00:00Z")) is SkipReason.CONTRACT
    assert reason("explanation.updates", with_field(UPDATE, "priority", 5)) is SkipReason.CONTRACT
    assert reason("explanation.updates", orjson.dumps(VERDICT)) is SkipReason.CONTRACT  # the wrong topic


def test_skips_are_counted_each_and_logged_at_most_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    skipped = SkippedRecords(every_s=10, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, "app.relay.reading")
    for i in range(1000):
        now[0] = i * 0.01  # 1,000 skips in 10 s
        skipped.note("verdicts", Skip(SkipReason.NOT_JSON, "not JSON"))
    now[0] = 10.5
    skipped.flush()
    assert skipped.total == 1000
    assert len(caplog.records) == 2, [r.getMessage() for r in caplog.records]  # the first, one summary
    assert "999 records" in caplog.records[1].getMessage()


def test_a_refused_frame_names_its_request_when_it_can_be_read() -> None:
    assert peek_request_id('{"type":"ping","id":"p1"}') == "p1"
    assert peek_request_id('{"type":"ping"}') is None
    assert peek_request_id('{"id":"p1",') is None  # not JSON
    assert peek_request_id('{"id":' + '"x' * 40 + '"}') is None  # not an id the schema allows
    assert peek_request_id(b'{"id":"p1"}') is None  # binary frames are refused unread
