"""A probe agent inside the explainer's Faust worker (``test_faust_rebalance.py`` starts it, with
``register`` added to what ``app.explainer.build`` makes).

It reads the topic ``probe`` the way the explainer's router reads ``verdicts``: in
``micro_batches`` without auto-acks, holding each batch while it "works" (``FRAUDLENS_PROBE_HOLD_S``),
acking its events only once done, and dropping them unacked when the consumer generation changed
meanwhile (a rebalance: the partitions' owners read them again). Every record it is handed and
every record it finishes is written, one line each, to ``FRAUDLENS_PROBE_LOG``:

    recv|done|drop <consumer generation> <partition> <offset> <messages put on Faust's producer buffer>

The last field counts ``ProducerBuffer.put`` calls in this process (Faust's ``send_soon``:
table writes through Faust's changelog, ``send_soon`` of a topic), the queue whose 100-message
bound ``app/kafka_compat.py`` used to raise (before issue 19).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

from faust.transport.producer import ProducerBuffer
from faust.types import EventT, StreamT

from app.explainer import ExplainerParts
from app.explainer.faust_patches import micro_batches

TOPIC = "probe"
BATCH_MAX = 50
HOLD_S = float(os.environ.get("FRAUDLENS_PROBE_HOLD_S", "0.25"))

_log = open(os.environ["FRAUDLENS_PROBE_LOG"], "a", buffering=1)  # noqa: SIM115 (the process's life)
_puts = 0
_original_put = ProducerBuffer.put


def _counting_put(self: Any, fut: Any) -> None:
    global _puts
    _puts += 1
    _original_put(self, fut)


ProducerBuffer.put = _counting_put  # type: ignore[method-assign]


def _write(kind: str, generation: int, events: Sequence[EventT]) -> None:
    _log.write(
        "".join(f"{kind} {generation} {e.message.partition} {e.message.offset} {_puts}\n" for e in events)
    )


def register(parts: ExplainerParts) -> ExplainerParts:
    """The probe agent on the explainer's own app, next to its agents."""
    app = parts.app
    probe_topic = app.topic(
        TOPIC, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )

    async def probe(stream: StreamT) -> None:
        async for events in micro_batches(stream, BATCH_MAX, 0.005, ack=False):
            generation = app.consumer_generation_id
            _write("recv", generation, events)
            await asyncio.sleep(HOLD_S)  # the batch's work; its events stay unacked meanwhile
            if app.consumer_generation_id != generation:
                _write("drop", generation, events)
                continue
            _write("done", generation, events)
            for event in events:
                await stream.ack(event)

    app.agent(probe_topic, name="probe")(probe)
    return parts
