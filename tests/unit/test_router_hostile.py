"""The router's handling of records no contract allows, without a broker: a bad on-demand request
becomes one bounded ``explain.requests.dlq`` send, a bad verdict a counted skip, and neither
touches the tables or raises (issue 17, point 1)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from app.explain.policy import PriorityRules
from app.explainer.router import Router
from app.explainer.skips import Skips
from app.records.contracts import validate_message
from app.settings import Settings

VERDICT = (Path(__file__).resolve().parents[2] / "schemas" / "examples" / "verdict.valid.json").read_bytes()


@dataclass
class Message:
    topic: str
    key: bytes | None
    value: bytes | None
    partition: int = 2
    offset: int = 17


@dataclass
class Event:
    message: Message


class NoTables:
    """Any table access fails the test: a rejected record must not reach the tables."""

    def get(self, *args: Any) -> None:
        raise AssertionError("a rejected record read a table")

    def write(self, *args: Any) -> None:
        raise AssertionError("a rejected record wrote a table")


@pytest.fixture
def router() -> Router:
    settings = Settings()
    tables = SimpleNamespace(explanations="explanations", waiting="explanation_waiting")
    rules = PriorityRules.from_settings(settings)
    return Router(NoTables(), tables, rules, settings, Skips(every_s=10.0))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "value", "code"),
    [
        (b"tx-1", None, "empty"),
        (b"tx-1", b"\xff" * 1_040_000, "oversized"),
        (b"tx-1", b'{"transaction_id": 5}', "invalid_request"),
        (b"tx-2", b'{"transaction_id": "tx-1"}', "wrong_key"),
        (b"tx-1", b'{"transaction_id": "tx-1", "kind": "shap"}', "invalid_request"),
        (b"tx-1", b'{"transaction_id": "tx-1", "kind": ["counterfactual"]}', "invalid_request"),
        (
            b"tx-1",
            b'{"transaction_id": "tx-1", "kind": "counterfactual", "method": "tree"}',
            "invalid_request",
        ),
    ],
)
def test_a_bad_on_demand_request_becomes_one_bounded_dlq_send(
    router: Router, key: bytes, value: bytes | None, code: str
) -> None:
    event = Event(Message("explain.requests", key, value))
    ((topic, dlq_key, record, partition),) = router.route(None, event, "2026-11-28T12:00:00.000000Z")  # type: ignore[arg-type]
    parsed = orjson.loads(record)
    validate_message("dlq", parsed)
    assert (topic, dlq_key, partition) == ("explain.requests.dlq", key, 2)
    assert parsed["reason_code"] == code and len(record) < 10_000
    assert parsed["source"] == {"topic": "explain.requests", "partition": 2, "offset": 17}
    assert router.counts["rejected_requests"] == 1


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (b"tx-20261128-000001", None),
        (b"tx-20261128-000001", b""),
        (b"tx-20261128-000001", b"\xc3\x28"),
        (b"tx-20261128-000001", b"[" * 100_000),
        (b"tx-20261128-000001", orjson.dumps({**orjson.loads(VERDICT), "model_version": 7})),
        (b"somebody-else", VERDICT),
    ],
)
@pytest.mark.parametrize("batched", [False, True])
def test_a_bad_verdict_is_a_counted_skip(
    router: Router, key: bytes, value: bytes | None, batched: bool
) -> None:
    """Alone, or checked first with its micro-batch as the agent does (``Router.check``)."""
    event = Event(Message("verdicts", key, value))
    checked = None
    if batched:
        (checked,) = router.check([event])  # type: ignore[list-item]
        assert checked is not None and checked.verdict is None and checked.uncertainty is None
    sends = router.route(None, event, "2026-11-28T12:00:00.000000Z", checked)  # type: ignore[arg-type]
    assert sends == []
    assert router.counts["invalid"] == 1 and router.skips.total == {"verdicts": 1}


def test_a_bad_request_read_again_in_the_same_process_gets_no_second_dlq_record(router: Router) -> None:
    """The offset guard seeks a partition back when Faust delivered past a start-up seek: the
    requests read again must not be sent to the DLQ twice (seen: explain.requests[3]@0 and @1
    twice in test_hostile_records). Another offset of the same bad bytes is another record."""
    bad = Event(Message("explain.requests", b"tx-1", b'{"transaction_id": 5}', partition=3, offset=0))
    now = "2026-11-28T12:00:00.000000Z"
    assert len(router.route(None, bad, now)) == 1  # type: ignore[arg-type]
    assert router.route(None, bad, now) == []  # type: ignore[arg-type]
    later = Event(Message("explain.requests", b"tx-1", b'{"transaction_id": 5}', partition=3, offset=1))
    assert len(router.route(None, later, now)) == 1  # type: ignore[arg-type]
    assert router.counts["rejected_requests"] == 2 and router.counts["rejected_requests_read_again"] == 1
