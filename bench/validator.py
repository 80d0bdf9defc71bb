"""Validator: µs per message of ``validate_transaction`` on valid generator-like messages, and on
malformed ones (the DLQ path). Moved here from the unit tests (speed belongs in benchmarks).
Target (the validator's own, from its design): valid path ≤ 15 µs per message.

    python -m bench.validator [--quick]
"""

from __future__ import annotations

import contextlib
import random
import time
from pathlib import Path
from typing import Any

import orjson

from app.records.malformed import base_transaction, malformed_messages
from app.records.validation import InvalidInput, validate_transaction
from bench.common import target

VALID_TARGET_US = 15.0


def _per_message_us(raws: list[bytes], rounds: int) -> float:
    best = float("inf")
    for _ in range(3):  # best of three: the least disturbed by the other processes on the machine
        start = time.perf_counter()
        for _ in range(rounds):
            for raw in raws:
                with contextlib.suppress(InvalidInput):
                    validate_transaction(raw)
        best = min(best, (time.perf_counter() - start) / (rounds * len(raws)) * 1e6)
    return round(best, 2)


def run(quick: bool, models: Path, out: Path) -> dict[str, Any]:
    valid = [orjson.dumps(base_transaction(random.Random(i))) for i in range(200)]
    invalid = [value for value, _ in malformed_messages(200, seed=3) if value is not None]
    rounds = 5 if quick else 100
    for raw in valid:  # the valid ones really are valid: a broken generator must not look fast
        validate_transaction(raw)
    summary = {
        "valid_us_per_message": _per_message_us(valid, rounds),
        "malformed_us_per_message": _per_message_us(invalid, rounds),
        "messages": len(valid) * rounds,
    }
    targets = {
        "validator_valid_us": target(
            "valid message ≤ 15 µs", summary["valid_us_per_message"], VALID_TARGET_US
        )
    }
    return {"summary": summary, "targets": targets, "raw": {"rounds": rounds}, "plots": []}


if __name__ == "__main__":
    from bench.__main__ import main_one

    main_one("validator")
