"""What the code under test reads of a confluent-kafka message, for the unit tests' fakes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FakeMessage:
    topic_: str = "topic"
    partition_: int = 0
    offset_: int = 0
    key_: bytes | None = None
    value_: bytes | None = None

    def topic(self) -> str:
        return self.topic_

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_

    def key(self) -> bytes | None:
        return self.key_

    def value(self) -> bytes | None:
        return self.value_

    def error(self) -> None:
        return None
