"""The scorer's tables without Faust: RocksDB stores per partition and their recovery from the
changelog (a fake librdkafka consumer standing in for the broker)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.kafka.local_table import LocalTable
from app.kafka.recovery import RecoveryStalled, recover
from app.kafka.table_catalogue import TableSpec
from app.settings import Settings


@pytest.fixture
def table(tmp_path: Path) -> Any:
    made = LocalTable(TableSpec("things", "scorer", "keys to things", ""), SETTINGS, tmp_path)
    yield made
    made.close()


def test_rows_and_the_persisted_offset_survive_a_reopen(table: LocalTable, tmp_path: Path) -> None:
    table.put(2, b"k", b"v")
    table.set_persisted_offset(2, 41)
    table.close()
    assert table.held() == set()
    assert table.get(2, b"k") == b"v" and table.persisted_offset(2) == 41
    assert table.path(2) == tmp_path / "v1" / "tables" / "things-2.db"  # Faust's layout
    assert table.get(3, b"k") is None and table.persisted_offset(3) is None


def test_a_changelog_batch_puts_deletes_and_moves_the_offset(table: LocalTable) -> None:
    table.put(0, b"gone", b"x")
    table.apply_changelog(0, [(b"a", b"1"), (b"gone", None), (b"a", b"2")], offset=7)
    assert table.get(0, b"a") == b"2" and table.get(0, b"gone") is None
    assert table.persisted_offset(0) == 7


def test_wipe_removes_the_local_store_only(table: LocalTable) -> None:
    table.put(1, b"k", b"v")
    table.wipe(1)
    assert not table.path(1).exists()
    assert table.get(1, b"k") is None


def test_windowed_tables_name_their_changelog_and_its_policy(tmp_path: Path) -> None:
    settings = Settings(app_id="fraud")
    windowed = LocalTable(TableSpec("w", "scorer", "h", "", window=lambda _: 60.0), settings, tmp_path)
    assert windowed.changelog_topic == "fraud-w-changelog"
    assert windowed.changelog_config == {"cleanup.policy": "compact,delete", "retention.ms": "60000"}
    assert LocalTable(TableSpec("c", "scorer", "h", ""), settings, tmp_path).changelog_config == {
        "cleanup.policy": "compact"
    }
    assert windowed.options["ttl"] == 60
    explainer = LocalTable(TableSpec("e", "explainer", "h", ""), settings, tmp_path)
    assert explainer.changelog_topic == "fraud-explainer-e-changelog"  # the explainer's group


class _Message:
    def __init__(self, topic: str, partition: int, offset: int, key: bytes, value: bytes | None) -> None:
        self.args = (topic, partition, offset, key, value)

    def topic(self) -> str:
        return self.args[0]

    def partition(self) -> int:
        return self.args[1]

    def offset(self) -> int:
        return self.args[2]

    def key(self) -> bytes:
        return self.args[3]

    def value(self) -> bytes | None:
        return self.args[4]

    def error(self) -> Any:
        return None


class _Eof(_Message):
    def error(self) -> Any:
        from confluent_kafka import KafkaError

        return KafkaError(KafkaError._PARTITION_EOF)


class ChangelogConsumer:
    """A changelog of ``count`` records per partition from ``low``; EOF after the last."""

    def __init__(self, low: int, high: int, eof: bool = True, silent: bool = False) -> None:
        self.low, self.high, self.eof, self.silent = low, high, eof, silent
        self.assigned: list[tuple[str, int, int]] = []
        self.sent = False

    def __call__(self, config: dict[str, Any]) -> ChangelogConsumer:
        assert config["enable.partition.eof"] and not config["enable.auto.commit"]
        return self

    def get_watermark_offsets(self, tp: Any, timeout: float) -> tuple[int, int]:
        return self.low, self.high

    def assign(self, tps: list[Any]) -> None:
        self.assigned = [(tp.topic, tp.partition, tp.offset) for tp in tps]

    def consume(self, n: int, timeout: float) -> list[Any]:
        if self.sent or self.silent:
            return []
        self.sent = True
        out: list[Any] = []
        for topic, partition, start in self.assigned:
            first = max(start, self.low)
            out += [_Message(topic, partition, o, b"k%d" % o, b"v%d" % o) for o in range(first, self.high)]
            if self.eof:
                out.append(_Eof(topic, partition, self.high, b"", None))
        return out

    def close(self) -> None:
        pass


SETTINGS = Settings(app_id="app")


def test_recovery_reads_from_after_the_persisted_offset(table: LocalTable) -> None:
    table.set_persisted_offset(0, 4)
    consumer = ChangelogConsumer(low=0, high=10)
    report = recover(SETTINGS, [table], [0], consumer)
    assert consumer.assigned == [("app-things-changelog", 0, 5)]
    assert report.records == {("things", 0): 5} and table.persisted_offset(0) == 9
    assert table.get(0, b"k9") == b"v9" and table.get(0, b"k4") is None


def test_recovery_of_a_new_or_trimmed_store_starts_at_the_earliest_retained(table: LocalTable) -> None:
    table.set_persisted_offset(1, 2)  # below what retention kept
    consumer = ChangelogConsumer(low=6, high=9)
    recover(SETTINGS, [table], [1, 2], consumer)
    assert sorted(consumer.assigned) == [("app-things-changelog", 1, 6), ("app-things-changelog", 2, 6)]
    assert table.persisted_offset(2) == 8


def test_a_store_at_the_changelog_end_reads_nothing(table: LocalTable) -> None:
    table.set_persisted_offset(0, 9)
    consumer = ChangelogConsumer(low=0, high=10)
    assert recover(SETTINGS, [table], [0], consumer).total == 0
    assert consumer.assigned == []


def test_the_end_is_the_high_watermark_even_without_an_eof_event(table: LocalTable) -> None:
    recover(SETTINGS, [table], [0], ChangelogConsumer(low=0, high=3, eof=False), stall_s=0.1)
    assert table.persisted_offset(0) == 2


def test_a_changelog_that_stops_answering_fails_the_recovery(table: LocalTable) -> None:
    with pytest.raises(RecoveryStalled):
        recover(SETTINGS, [table], [0], ChangelogConsumer(low=0, high=3, silent=True), stall_s=0.2)
