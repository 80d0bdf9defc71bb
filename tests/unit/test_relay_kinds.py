"""Protocol 3 in the relay's fan-out, replay and snapshots (issue 20): a client gets other kinds'
explanation events only when its subscribe asked for protocol 3; protocol 2 is what it was."""

from __future__ import annotations

from typing import Any

import orjson

from app.records.contracts import validate_message
from app.relay.client import Client
from app.relay.ratelimit import FloodGuard
from app.relay.server import Relay
from app.relay.tokens import Claims
from app.settings import Settings
from tests.unit.test_relay_state import counterfactual, update, verdict, with_replay

SECRET = b"k" * 32


def relay() -> Relay:
    return Relay(Settings(explain_counterfactual_decisions=("deny", "review")), SECRET, epoch="0a0b0c0d")


def client(relay: Relay, **subscribe: Any) -> Client:
    settings = relay.settings
    one = Client(None, Claims("test", 0, 2**31), settings.relay_client_queue_max, FloodGuard(settings, 0.0))  # type: ignore[arg-type]
    relay.clients.add(one)
    relay._subscribe(one, {"type": "subscribe", **subscribe})
    return one


def received(one: Client) -> list[dict[str, Any]]:
    frames = [f for entry in one.outbox.entries for f in (entry if isinstance(entry, list) else [entry])]
    one.outbox.entries.clear()
    return [orjson.loads(f) for f in frames]


def events(messages: list[dict[str, Any]]) -> list[tuple[str, Any, str | None]]:
    """(type, status or the verdict's kinds, kind) of each event, every message schema-checked."""
    for message in messages:
        validate_message("ws_server", message)
    return [
        (m["type"], m.get("status", m.get("kinds")), m.get("kind"))
        for m in messages
        if m["type"] in ("verdict", "explanation")
    ]


def ingest(relay: Relay) -> None:
    state = relay.state
    relay.fanout(state.ingest_verdict(with_replay(verdict("tx-1", "deny"))))
    relay.fanout(
        state.ingest_update(update("tx-1", "pending"), 0)
        + state.ingest_update(counterfactual("tx-1", "pending"), 0)
    )
    relay.fanout(state.ingest_update(counterfactual("tx-1", "complete"), 0))
    relay.fanout(state.ingest_update(update("tx-1", "complete"), 0))


BOTH = [
    ("verdict", ["counterfactual"], None),
    ("explanation", "pending", None),
    ("explanation", "pending", "counterfactual"),
    ("explanation", "complete", "counterfactual"),
    ("explanation", "complete", None),
]
CONTRIBUTIONS_ONLY = [("verdict", None, None)] + [e for e in BOTH[1:] if e[2] is None]


def test_live_events_per_protocol_with_and_without_a_filter() -> None:
    r = relay()
    clients = {
        "2 all": client(r),
        "3 all": client(r, protocol=3),
        "2 deny": client(r, filter={"decisions": ["deny"]}),
        "3 deny": client(r, filter={"decisions": ["deny"]}, protocol=3),
        "3 then default": client(r, protocol=3),
    }
    r._subscribe(clients["3 then default"], {"type": "subscribe", "subscription": "other"})  # keeps 3
    for one in clients.values():
        received(one)
    ingest(r)
    got = {name: events(received(one)) for name, one in clients.items()}
    assert got == {
        "2 all": CONTRIBUTIONS_ONLY, "3 all": BOTH, "2 deny": CONTRIBUTIONS_ONLY, "3 deny": BOTH,
        "3 then default": BOTH,
    }  # fmt: skip


def test_replay_and_snapshots_per_protocol() -> None:
    r = relay()
    ingest(r)
    for protocol, expected in ((2, CONTRIBUTIONS_ONLY), (3, BOTH)):
        resumed = received(client(r, protocol=protocol, last_event_id="0a0b0c0d-0"))
        assert events(resumed) == expected, protocol
        snapshot = received(client(r, protocol=protocol, filter={"transaction_ids": ["tx-1"]}))[0]
        assert snapshot["type"] == "snapshot"
        (tx,) = snapshot["transactions"]
        assert tx["status"] == "complete"
        if protocol == 2:
            assert "kinds" not in tx
        else:
            assert tx["kinds"]["counterfactual"]["status"] == "complete"
            assert tx["kinds"]["counterfactual"]["explanation"] == counterfactual("tx-1", "complete")
