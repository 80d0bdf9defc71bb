"""The router's on-demand counterfactuals without a broker (issue 20): after its verdict (the
verdict read back, or a clear failure when it cannot be) and before it (a request that waits for
the verdict). The integration test ``test_counterfactual_kind.py`` proves the same end to end."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
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
from tests.unit.test_router_hostile import Event, Message

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"
NOW = "2026-11-28T12:00:00.000000Z"


@dataclass
class Tables:
    """The router's two tables as dicts (``TableWriter``'s get and write)."""

    rows: dict[tuple[str, bytes], bytes] = field(default_factory=dict)

    def get(self, _stream: Any, _event: Any, table: str, key: bytes) -> bytes | None:
        return self.rows.get((table, key))

    def write(self, _stream: Any, _event: Any, table: str, key: bytes, value: bytes) -> None:
        self.rows[(table, key)] = value

    def row(self, table: str, key: str) -> dict[str, Any] | None:
        raw = self.rows.get((table, key.encode()))
        return None if raw is None else orjson.loads(raw)


def verdict(txid: str) -> dict[str, Any]:
    out = json.loads((EXAMPLES / "verdict.valid.json").read_text())
    return {**out, "transaction_id": txid, "decision": "deny"}


def verdict_event(v: dict[str, Any], offset: int) -> Event:
    return Event(Message("verdicts", v["transaction_id"].encode(), orjson.dumps(v), offset=offset))


def ask(txid: str, offset: int) -> Event:
    value = orjson.dumps({"transaction_id": txid, "kind": "counterfactual"})
    return Event(Message("explain.requests", txid.encode(), value, offset=offset))


@pytest.fixture
def setup() -> tuple[Router, Tables]:
    settings = Settings(explain_counterfactual_decisions=())  # no counterfactual routed by itself
    tables = Tables()
    names = SimpleNamespace(explanations="explanations", waiting="explanation_waiting")
    router = Router(tables, names, PriorityRules.from_settings(settings), settings, Skips(every_s=10.0))  # type: ignore[arg-type]
    return router, tables


def test_after_the_verdict_it_is_read_back_or_fails_with_the_reason(setup: tuple[Router, Tables]) -> None:
    router, tables = setup
    v = verdict("tx-1")
    assert router.route(None, verdict_event(v, 5), NOW)  # type: ignore[arg-type]  # contributions only
    assert tables.row("explanations", "tx-1#counterfactual") is None

    request = ask("tx-1", 40)
    assert router.verdicts_to_read(None, [request]) == {"tx-1": (2, v["scored_at"])}  # type: ignore[arg-type]
    router.verdicts_read = {"tx-1": "the verdict of tx-1 is no longer in verdicts[2] (retention)"}
    assert router.route(None, request, NOW) == []  # type: ignore[arg-type]
    gone = tables.row("explanations", "tx-1#counterfactual")
    assert gone is not None
    validate_message("explanation", gone)  # its record is the failed update readers get
    assert (gone["kind"], gone["status"], gone["reason_code"]) == (
        "counterfactual",
        "failed",
        "verdict_unavailable",
    )
    assert "retention" in gone["reason"] and gone["priority"] == "high"

    # Asked again, with the verdict read back this time: the search is queued at high priority.
    router.verdicts_read = {"tx-1": v}
    ((topic, key, value, partition),) = router.route(None, ask("tx-1", 41), NOW)  # type: ignore[arg-type]
    sent = orjson.loads(value)
    validate_message("explain_request", sent)
    assert (topic, key, partition) == ("explain.high", b"tx-1", 2)
    assert (sent["kind"], sent["on_demand"], sent["replay"]["card_state"]) == (
        "counterfactual", True, v["replay"]["card_state"]
    )  # fmt: skip
    pending = tables.row("explanations", "tx-1#counterfactual")
    assert pending is not None and pending["status"] == "pending"
    # In flight: a third request reads nothing back and sends nothing.
    assert router.verdicts_to_read(None, [ask("tx-1", 42)]) == {}  # type: ignore[arg-type]
    assert router.route(None, ask("tx-1", 42), NOW) == []  # type: ignore[arg-type]


def test_before_the_verdict_it_waits_for_it(setup: tuple[Router, Tables]) -> None:
    router, tables = setup
    request = ask("tx-2", 40)
    assert router.verdicts_to_read(None, [request]) == {}  # type: ignore[arg-type]  # nothing to read yet
    assert router.route(None, request, NOW) == []  # type: ignore[arg-type]
    waiting = tables.row("explanation_waiting", "tx-2#counterfactual")
    assert waiting is not None and waiting["status"] == "requested"
    sends = router.route(None, verdict_event(verdict("tx-2"), 6), NOW)  # type: ignore[arg-type]
    kinds = sorted(orjson.loads(value).get("kind", "contributions") for _, _, value, _ in sends)
    assert kinds == ["contributions", "counterfactual"]
    row = tables.row("explanations", "tx-2#counterfactual")
    assert row is not None and (row["status"], row["priority"]) == ("pending", "high")
