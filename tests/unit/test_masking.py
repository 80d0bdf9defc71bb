"""Card ids masked for people: the helper, and the relay's frames and snapshots."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from app.records.masking import mask_card_id, with_masked_card
from app.relay.protocol import Filter
from tests.unit.test_relay_state import state, verdict


def test_mask_shows_only_the_last_four() -> None:
    assert mask_card_id("card-00151") == "•••• 0151"
    assert mask_card_id("1234") == "••••" and mask_card_id("") == "••••"


@given(st.text(min_size=5, max_size=80))
def test_masked_id_never_holds_more_than_four_characters_of_the_id(card_id: str) -> None:
    masked = mask_card_id(card_id)
    assert masked.startswith("•••• ") and masked.removeprefix("•••• ") == card_id[-4:]


def test_with_masked_card_copies() -> None:
    original = {"card_id": "card-00151", "amount": 1}
    assert with_masked_card(original) == {"card_id": "•••• 0151", "amount": 1}
    assert original["card_id"] == "card-00151"


def test_relay_frames_and_snapshots_carry_the_masked_card_only() -> None:
    relay = state()
    full = verdict("tx-1")["card_id"]
    events = relay.ingest_verdict(verdict("tx-1"))
    assert full.encode() not in events[0].frame
    assert orjson.loads(events[0].frame)["verdict"]["card_id"] == mask_card_id(full)
    assert relay.snapshot_of(["tx-1"])[0]["verdict"]["card_id"] == mask_card_id(full)
    assert full not in orjson.dumps(relay.recent(Filter(), 10)).decode()
    assert relay.ingest_verdict(verdict("tx-1")) == [], "a re-sent verdict is still recognised"


def test_relay_frames_and_snapshots_leave_out_the_verdicts_replay() -> None:
    """A verdict's ``replay`` (the card's devices, merchants, amounts: the explainer's input)
    never reaches a browser: not in the frame, the snapshot or the recent events."""
    relay = state()
    sent = verdict("tx-1")
    device, merchants = sent["replay"]["device_id"], sent["replay"]["card_state"]["mr"]
    events = relay.ingest_verdict(sent)
    seen = [
        events[0].frame,
        orjson.dumps(relay.snapshot_of(["tx-1"])),
        orjson.dumps(relay.recent(Filter(), 10)),
    ]
    for text in seen:
        assert b"replay" not in text and device.encode() not in text
        assert not [m for m in merchants if m.encode() in text]
    assert orjson.loads(events[0].frame)["verdict"]["amount"] == sent["amount"]  # the rest is there
    assert "replay" in sent, "the caller's verdict is not changed"
