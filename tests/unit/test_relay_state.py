"""The relay's state: verdict before explanation, snapshots, the replay buffer, live figures."""

from __future__ import annotations

import json
from typing import Any

import orjson

from app.explain.policy import PriorityRules
from app.records.contracts import SCHEMA_DIR, validate_message
from app.relay.history import Event, RelayState, ReplayBuffer, gap_summary
from app.relay.protocol import Filter

EPOCH = "0a0b0c0d"
EXAMPLES = SCHEMA_DIR / "examples"


def verdict(txid: str, decision: str = "approve", amount: float = 42.5) -> dict[str, Any]:
    out = json.loads((EXAMPLES / "verdict.valid.json").read_text())
    return {**out, "transaction_id": txid, "decision": decision, "amount": amount}


def update(txid: str, status: str, priority: str = "high") -> dict[str, Any]:
    out = json.loads((EXAMPLES / "explanation.valid.json").read_text())
    out = {**out, "transaction_id": txid, "priority": priority}
    if status != "complete":
        keep = ("transaction_id", "priority", "model_version", "method", "updated_at")
        out = {k: out[k] for k in keep} | {"status": status}
    return out


def state(**kwargs: Any) -> RelayState:
    rate = kwargs.pop("rate", 1.0)
    decisions = frozenset(kwargs.pop("counterfactual", ()))
    options = {"state_max": 100, "replay_max": 100, "orphan_wait_s": 5.0} | kwargs
    rules = PriorityRules(low_sample_rate=rate, counterfactual_decisions=decisions)
    return RelayState(EPOCH, rules, **options)


def kinds(events: list[Event]) -> list[str]:
    return [orjson.loads(e.frame)["type"] + ":" + orjson.loads(e.frame).get("status", "") for e in events]


def test_events_are_numbered_and_valid() -> None:
    relay = state()
    events = relay.ingest_verdict(verdict("tx-1", "deny")) + relay.ingest_update(update("tx-1", "pending"), 0)
    assert [e.event_id for e in events] == [f"{EPOCH}-1", f"{EPOCH}-2"]
    for event in events:
        validate_message("ws_server", orjson.loads(event.frame))
    assert events[0].priority == "high" and events[1].decision == "deny"
    assert relay.last_event_id == f"{EPOCH}-2"


def test_an_update_before_its_verdict_waits_for_it() -> None:
    relay = state()
    assert relay.ingest_update(update("tx-1", "pending"), now=0) == []
    assert relay.ingest_update(update("tx-1", "calculating"), now=0) == []
    events = relay.ingest_verdict(verdict("tx-1", "deny"))
    assert kinds(events) == ["verdict:", "explanation:pending", "explanation:calculating"]
    assert relay.held == {}


def test_an_orphan_update_goes_out_alone_after_the_wait() -> None:
    relay = state(orphan_wait_s=5.0)
    relay.ingest_update(update("tx-1", "pending"), now=100)
    assert relay.release_orphans(now=104) == []
    assert kinds(relay.release_orphans(now=105)) == ["explanation:pending"]
    assert relay.snapshot_of(["tx-1"])[0]["status"] == "pending"


def test_a_resent_identical_verdict_is_not_a_new_event() -> None:
    relay = state()
    relay.ingest_verdict(verdict("tx-1"))
    assert relay.ingest_verdict(verdict("tx-1")) == []


def test_a_resent_identical_update_is_not_a_new_event() -> None:
    relay = state()
    relay.ingest_verdict(verdict("tx-1", "deny"))
    assert kinds(relay.ingest_update(update("tx-1", "complete"), 0)) == ["explanation:complete"]
    assert relay.ingest_update(update("tx-1", "complete"), 0) == []


def counterfactual(txid: str, status: str, priority: str = "high") -> dict[str, Any]:
    return {**update(txid, status, priority), "kind": "counterfactual", "method": "split_search"}


def with_replay(verdict: dict[str, Any]) -> dict[str, Any]:
    return {**verdict, "replay": {"device_id": "dev-1", "card_state": {"n": 0}}}


def test_each_kind_has_its_own_status_and_protocol_2_sees_contributions_only() -> None:
    """Issue 20, protocol 3: a counterfactual's updates are events of their own kind (named in
    the frame); the contributions' status, events and snapshot fields are what protocol 2 knew."""
    relay = state(counterfactual=("deny", "review"))
    events = relay.ingest_verdict(with_replay(verdict("tx-1", "deny")))
    snap3 = relay.snapshot_of(["tx-1"], protocol=3)[0]
    assert snap3["kinds"] == {
        "counterfactual": {
            "status": "awaiting",
            "priority": None,
            "explanation": None,
            "explanation_event_id": None,
        }
    }
    assert "kinds" not in relay.snapshot_of(["tx-1"])[0]  # protocol 2: as before kinds existed
    events += relay.ingest_update(update("tx-1", "pending"), 0)
    events += relay.ingest_update(counterfactual("tx-1", "pending"), 0)
    assert relay.in_flight["high"] == 2  # both kinds sit in the high queue
    events += relay.ingest_update(counterfactual("tx-1", "calculating"), 0)
    events += relay.ingest_update(update("tx-1", "complete"), 0)
    assert relay.ingest_update(counterfactual("tx-1", "calculating"), 0) == []  # re-sent: per kind
    events += relay.ingest_update(counterfactual("tx-1", "complete"), 0)
    frames = [orjson.loads(e.frame) for e in events]
    assert [(f["type"], f.get("status"), f.get("kind")) for f in frames] == [
        ("verdict", None, None),
        ("explanation", "pending", None),
        ("explanation", "pending", "counterfactual"),
        ("explanation", "calculating", "counterfactual"),
        ("explanation", "complete", None),
        ("explanation", "complete", "counterfactual"),
    ]
    assert [e.kind for e in events] == ["contributions", "contributions", *["counterfactual"] * 2,
                                        "contributions", "counterfactual"]  # fmt: skip
    for frame in frames:
        validate_message("ws_server", frame)
    assert relay.in_flight["high"] == 0
    snap2, snap3 = relay.snapshot_of(["tx-1"])[0], relay.snapshot_of(["tx-1"], protocol=3)[0]
    assert snap2["status"] == "complete" and snap2["explanation"]["top_features"]
    assert snap3["kinds"]["counterfactual"]["status"] == "complete"
    assert snap3["kinds"]["counterfactual"]["explanation_event_id"] == frames[-1]["event_id"]
    assert {k: v for k, v in snap3.items() if k != "kinds"} == snap2
    for snap in (snap2, snap3):
        validate_message("ws_server", {"type": "snapshot", "subscription": "s", "last_event_id": None,
                                       "transactions": [snap]})  # fmt: skip


def test_a_counterfactual_is_awaited_only_where_the_explainer_routes_one() -> None:
    """As the router does: a decision the policy names, with the replay the search needs."""
    relay = state(counterfactual=("deny",))
    relay.ingest_verdict(with_replay(verdict("tx-review", "review")))
    relay.ingest_verdict({k: v for k, v in verdict("tx-no-replay", "deny").items() if k != "replay"})
    relay.ingest_verdict(with_replay(verdict("tx-deny", "deny")))
    snaps = {s["transaction_id"]: s["kinds"] for s in relay.recent(Filter(), 10, protocol=3)}
    assert {t: sorted(k) for t, k in snaps.items()} == {
        "tx-review": [], "tx-no-replay": [], "tx-deny": ["counterfactual"]
    }  # fmt: skip
    assert snaps["tx-deny"]["counterfactual"]["status"] == "awaiting"


def test_a_counterfactual_update_before_its_verdict_waits_for_it_too() -> None:
    relay = state(counterfactual=("deny",))
    assert relay.ingest_update(counterfactual("tx-1", "pending"), 0) == []
    events = relay.ingest_verdict(with_replay(verdict("tx-1", "deny")))
    assert [(e.kind, orjson.loads(e.frame)["type"]) for e in events] == [
        ("contributions", "verdict"),
        ("counterfactual", "explanation"),
    ]
    assert relay.snapshot_of(["tx-1"], protocol=3)[0]["kinds"]["counterfactual"]["status"] == "pending"


def test_snapshot_statuses() -> None:
    relay = state(rate=0.0)  # every low verdict sampled out
    relay.ingest_verdict(verdict("tx-low", "approve", 5.0))
    relay.ingest_verdict(verdict("tx-deny", "deny"))
    relay.ingest_update(update("tx-deny", "complete"), 0)
    relay.ingest_verdict(verdict("tx-wait", "review"))
    snap = {s["transaction_id"]: s for s in relay.snapshot_of(["tx-low", "tx-deny", "tx-wait", "tx-none"])}
    assert snap["tx-low"]["status"] == "sampled_out" and snap["tx-low"]["explain"] == "on_demand"
    assert snap["tx-deny"]["status"] == "complete" and snap["tx-deny"]["explanation"]["top_features"]
    assert snap["tx-wait"]["status"] == "awaiting"
    assert snap["tx-none"]["status"] == "unknown" and snap["tx-none"]["verdict"] is None
    recent = relay.recent(Filter(decisions=frozenset({"deny", "review"})), 10)
    assert [s["transaction_id"] for s in recent] == ["tx-wait", "tx-deny"]


def test_state_is_bounded_and_in_flight_counts_follow() -> None:
    relay = state(state_max=3)
    for i in range(3):
        relay.ingest_verdict(verdict(f"tx-{i}", "deny"))
        relay.ingest_update(update(f"tx-{i}", "pending"), 0)
    assert relay.in_flight["high"] == 3
    relay.ingest_update(update("tx-0", "complete"), 0)
    assert relay.in_flight["high"] == 2
    relay.ingest_verdict(verdict("tx-9"))  # evicts tx-0 (complete) ...
    relay.ingest_verdict(verdict("tx-10"))  # ... and tx-1 (pending)
    assert len(relay.txs) == 3 and relay.in_flight["high"] == 1


def _event(seq: int) -> Event:
    return Event(seq, f"{EPOCH}-{seq}", f"tx-{seq}", None, None, b"{}")


def test_replay_buffer() -> None:
    buffer = ReplayBuffer(capacity=5)
    assert buffer.after(EPOCH, f"{EPOCH}-0") == []  # nothing happened yet: nothing missed
    for seq in range(1, 11):
        buffer.append(_event(seq))
    assert [e.seq for e in buffer.after(EPOCH, f"{EPOCH}-7") or []] == [8, 9, 10]
    assert [e.seq for e in buffer.after(EPOCH, f"{EPOCH}-5") or []] == [6, 7, 8, 9, 10]
    assert buffer.after(EPOCH, f"{EPOCH}-10") == []
    assert buffer.after(EPOCH, f"{EPOCH}-4") is None  # event 5 is gone: a gap
    assert buffer.after(EPOCH, f"{EPOCH}-11") is None  # from the future: not ours
    assert buffer.after(EPOCH, "ffffffff-9") is None  # an id of another relay run
    assert buffer.oldest_event_id == f"{EPOCH}-6"


def test_stats() -> None:
    relay = state()
    relay.ingest_verdict(verdict("tx-1", "deny") | {"scored_at": "2026-01-08T10:33:33.000000Z"})
    relay.ingest_update(update("tx-1", "complete"), 0)  # completed 2026-01-08T10:33:33.584911Z
    now = 1767868414.0  # 2026-01-08T10:33:34Z
    stats = relay.stats(now, clients=2)
    assert stats["verdicts_per_s"] == 0.2 and stats["clients"] == 2
    assert stats["explanation_gap_ms"]["high"] == {"count": 1, "p50": 27.9, "p95": 27.9}
    assert relay.stats(now + 120, clients=0)["explanation_gap_ms"]["high"]["count"] == 0
    assert gap_summary([1.0, 2.0, 3.0, 100.0])["p50"] == 2.5
