"""The websocket protocol as plain data: parsing client frames, filters, event ids and the
server's messages (``schemas/ws_client.schema.json``, ``schemas/ws_server.schema.json``)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import fastjsonschema
import orjson

from app.records.contracts import validator
from app.records.kinds import CONTRIBUTIONS

# 2: hello carries protocol and feed; the feed message (interrupted/resumed). 3: kinds of
# explanation (issue 20) for a client whose subscribe asks for it: explanation events of every
# kind, naming theirs, and snapshots with ``kinds``. A client that does not ask gets protocol 2.
PROTOCOL_VERSION = 3
DEFAULT_PROTOCOL = 2
PRIORITY_RANK = {"low": 0, "normal": 1, "high": 2}
DEFAULT_SUBSCRIPTION = "default"
MAX_ERROR_TEXT = 300  # an error echoes little of what it refuses (a 60 KB key stays out of it)


class ProtocolError(ValueError):
    """A client frame the relay refuses; answered with an ``error`` message, connection kept."""

    def __init__(self, code: str, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.request_id = code, message, request_id


def parse_client_message(frame: str | bytes) -> dict[str, Any]:
    """The validated client message of one text frame, or ``ProtocolError``.

    orjson refuses nesting deeper than 1024, numbers beyond the double range (``1e400``) and lone
    surrogates; duplicate keys (which orjson would resolve "last wins") are refused here, as in the
    transaction validator: what a client meant by two ``type`` keys is not ours to guess."""
    if isinstance(frame, bytes):
        raise ProtocolError("binary_not_supported", "send JSON in text frames; binary frames are refused")
    try:
        message = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("malformed_json", _capped(f"frame is not JSON: {exc}")) from None
    _refuse_duplicate_keys(frame)
    request_id = _request_id(message)
    try:
        validator("ws_client")(message)
    except fastjsonschema.JsonSchemaValueException as exc:
        where = "/".join(str(p) for p in exc.path[1:])
        detail = f"{exc.message} (at /{where})" if where else exc.message
        text = _capped(f"not a valid client message: {detail}")
        raise ProtocolError("invalid_message", text, request_id) from None
    return dict(message)


def _request_id(message: Any) -> str | None:
    request_id = message.get("id") if isinstance(message, dict) else None
    return request_id if isinstance(request_id, str) and len(request_id) <= 64 else None


def peek_request_id(frame: str | bytes) -> str | None:
    """The ``id`` of a frame refused before it is carried out, when it can be read, so that the
    refusal names its request. Parsed, not validated; refusals are themselves bounded (each
    takes a strike), so this costs a flooding client no more than its strikes allow."""
    if not isinstance(frame, str) or '"id"' not in frame:
        return None
    try:
        return _request_id(orjson.loads(frame))
    except orjson.JSONDecodeError:
        return None


def _capped(text: str) -> str:
    return text if len(text) <= MAX_ERROR_TEXT else text[: MAX_ERROR_TEXT - 1] + "…"


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ProtocolError("duplicate_key", _capped(f"key {key!r} appears twice in one object"))
        seen[key] = value
    return seen


def _refuse_duplicate_keys(frame: str) -> None:
    """Raise ``duplicate_key`` if any object of the (already parsed) frame repeats a key.

    A second parse with the stdlib, whose ``object_pairs_hook`` sees every pair; client frames are
    small and rate limited, so its cost does not matter."""
    if frame.count('"') < 4:  # fewer than two keys anywhere
        return
    try:
        json.loads(frame, object_pairs_hook=_no_duplicates)
    except RecursionError:  # nesting orjson accepts (≤ 1024) can be deeper than Python's stack
        raise ProtocolError("malformed_json", "frame is nested too deeply") from None


# -- event ids --------------------------------------------------------------------------


def format_event_id(epoch: str, seq: int) -> str:
    return f"{epoch}-{seq}"


def parse_event_id(event_id: str) -> tuple[str, int]:
    epoch, _, seq = event_id.partition("-")
    return epoch, int(seq)


# -- filters ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Filter:
    """What one subscription receives; every given condition must hold (None: any)."""

    transaction_ids: frozenset[str] | None = None
    decisions: frozenset[str] | None = None
    min_priority: str | None = None

    @classmethod
    def from_message(cls, spec: Mapping[str, Any] | None) -> Filter:
        spec = spec or {}
        ids, decisions = spec.get("transaction_ids"), spec.get("decisions")
        return cls(
            frozenset(ids) if ids else None,
            frozenset(decisions) if decisions else None,
            spec.get("min_priority"),
        )

    def matches(self, transaction_id: str, decision: str | None, priority: str | None) -> bool:
        if self.transaction_ids is not None and transaction_id not in self.transaction_ids:
            return False
        if self.decisions is not None and decision not in self.decisions:
            return False
        if self.min_priority is not None:
            return priority is not None and PRIORITY_RANK[priority] >= PRIORITY_RANK[self.min_priority]
        return True


def any_matches(
    filters: Iterable[Filter], transaction_id: str, decision: str | None, priority: str | None
) -> bool:
    return any(f.matches(transaction_id, decision, priority) for f in filters)


# -- server messages (dicts; the relay serialises each event once for all clients) ------------


def verdict_message(event_id: str, verdict: Mapping[str, Any], priority: str, auto: bool) -> dict[str, Any]:
    return {
        "type": "verdict",
        "event_id": event_id,
        "transaction_id": verdict["transaction_id"],
        "priority": priority,
        "explain": "auto" if auto else "on_demand",
        "verdict": verdict,
    }


def explanation_message(
    event_id: str, update: Mapping[str, Any], kind: str = CONTRIBUTIONS
) -> dict[str, Any]:
    """An explanation event; one of another kind than contributions names it (protocol 3 only)."""
    out = {
        "type": "explanation",
        "event_id": event_id,
        "transaction_id": update["transaction_id"],
        "status": update["status"],
        "priority": update["priority"],
        "update": update,
    }
    if kind != CONTRIBUTIONS:
        out["kind"] = kind
    return out


def error_message(code: str, message: str, request_id: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if request_id is not None:
        out["id"] = request_id
    return out


def ack_message(of: str, request_id: str | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "ack", "of": of, **{k: v for k, v in extra.items() if v is not None}}
    if request_id is not None:
        out["id"] = request_id
    return out


def gap_message(subscription: str, requested_after: str, oldest_event_id: str | None) -> dict[str, Any]:
    return {
        "type": "gap",
        "subscription": subscription,
        "requested_after": requested_after,
        "oldest_event_id": oldest_event_id,
        "message": (
            f"events after {requested_after} are no longer in this relay's replay buffer (or come "
            "from another relay run); resynchronise from a snapshot"
        ),
    }


def feed_message(
    state: str, since: str, server_time: str, reason: str = "", resumed_at: str = ""
) -> dict[str, Any]:
    """``interrupted``: the relay cannot read the stream since ``since``; ``resumed``: it reads
    again (``resumed_at``), events from then on follow."""
    if state == "interrupted":
        text = f"live feed interrupted: {reason}; events resume when the relay can read the stream again"
        return {"type": "feed", "state": state, "since": since, "server_time": server_time, "message": text}
    return {
        "type": "feed",
        "state": state,
        "since": since,
        "resumed_at": resumed_at,
        "server_time": server_time,
        "message": f"live feed resumed at {resumed_at} (interrupted since {since})",
    }


def lagging_message(queued: int) -> dict[str, Any]:
    return {
        "type": "lagging",
        "queued": queued,
        "message": f"client read too slowly ({queued} messages queued); disconnecting",
    }
