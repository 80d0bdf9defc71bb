"""Card ids as people may see them: the last four characters only (``•••• 0151``).

Used wherever a card id leaves the pipeline for human eyes: the relay's websocket frames (and so
the console) and log lines. The topics keep the full id (the scorer keys and features need it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MASK = "••••"
VISIBLE = 4


def mask_card_id(card_id: object) -> str:
    """``•••• `` and the last four characters; ids of four characters or fewer show nothing."""
    text = str(card_id)
    return f"{MASK} {text[-VISIBLE:]}" if len(text) > VISIBLE else MASK


def with_masked_card(message: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a verdict (or any message) whose ``card_id`` is masked."""
    out = dict(message)
    if "card_id" in out:
        out["card_id"] = mask_card_id(out["card_id"])
    return out
