"""Reading a verdict back for an on-demand counterfactual, against a fake consumer: the first
record keyed by the transaction from the offset of its time; a clear reason when retention took it."""

from __future__ import annotations

from typing import Any

import orjson

from app.explainer.verdict_reader import VerdictReader
from app.settings import Settings
from tests.unit.kafka_fakes import FakeMessage

SCORED = "2026-11-28T12:00:00.000000Z"


class FakeConsumer:
    """One partition holding ``records`` at offsets low…; ``by_time`` is what a time maps to."""

    def __init__(self, records: list[tuple[str, dict[str, Any]]], low: int, by_time: int) -> None:
        self.records = [
            FakeMessage(key_=k.encode(), value_=orjson.dumps(v), offset_=low + i)
            for i, (k, v) in enumerate(records)
        ]
        self.low, self.by_time, self.position = low, by_time, None
        self.assigned = 0

    def offsets_for_times(self, partitions: list[Any], _timeout: float) -> list[Any]:
        return [type("TP", (), {"offset": self.by_time})()]

    def get_watermark_offsets(self, _tp: Any, _timeout: float) -> tuple[int, int]:
        return self.low, self.low + len(self.records)

    def assign(self, partitions: list[Any]) -> None:
        self.position = partitions[0].offset
        self.assigned += 1

    def consume(self, n: int, timeout: float) -> list[FakeMessage]:
        assert self.position is not None
        out = [r for r in self.records if r.offset_ >= self.position][:n]
        self.position += len(out)
        return out

    def unassign(self) -> None:
        self.position = None


def reader(consumer: FakeConsumer) -> VerdictReader:
    return VerdictReader(Settings(), consumer_factory=lambda _config: consumer)


def test_the_verdict_keyed_by_the_transaction_is_found_from_its_time() -> None:
    records = [("tx-0", {"transaction_id": "tx-0"}), ("tx-1", {"transaction_id": "tx-1", "n": 1}),
               ("tx-1", {"transaction_id": "tx-1", "n": 2})]  # fmt: skip
    assert reader(FakeConsumer(records, low=100, by_time=100)).read("tx-1", 3, SCORED) == records[1][1]
    # A record keyed by another transaction is not its verdict, whatever its value says.
    assert (
        reader(FakeConsumer([("tx-9", {"transaction_id": "tx-1"})], 0, 0))
        .read("tx-1", 3, SCORED)
        .startswith("the verdict of tx-1 is no longer")
    )
    # A key that names another transaction in its value is not taken for it.
    assert (
        reader(FakeConsumer([("tx-1", {"transaction_id": "tx-9"})], 0, 0))
        .read("tx-1", 3, SCORED)
        .startswith("the verdict of tx-1 is no longer")
    )


def test_a_verdict_retention_took_is_a_reason_not_an_error() -> None:
    later = [("tx-5", {"transaction_id": "tx-5"})]
    for by_time in (-1, 101):  # no record at or after its time; past the end
        consumer = FakeConsumer(later, low=100, by_time=by_time)
        why = reader(consumer).read("tx-1", 3, SCORED)
        assert isinstance(why, str) and "no longer in verdicts[3]" in why and "retention" in why
        assert consumer.assigned == 0, "nothing is read past the topic's end"
    found = reader(FakeConsumer(later, low=100, by_time=100)).read_many({"tx-1": (3, SCORED)})
    assert "no longer" in str(found["tx-1"])
