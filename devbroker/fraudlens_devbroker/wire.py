"""Just enough of the Kafka wire protocol for the broker shim.

The shim forwards frames untouched except for the few fields it must read or rewrite, so this
module decodes only the non-flexible encodings (the shim caps every API it parses below its
first flexible version, see ``VERSION_CAPS``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

API_PRODUCE = 0
API_FETCH = 1
API_METADATA = 3
API_FIND_COORDINATOR = 10
API_JOIN_GROUP = 11
API_HEARTBEAT = 12
API_LEAVE_GROUP = 13
API_SYNC_GROUP = 14
API_API_VERSIONS = 18

# Highest version the shim parses for each API it reads; ApiVersions responses are rewritten so
# clients never go above these. Fetch stops at v6 because v7+ fetch sessions would make a
# re-issued fetch an epoch error.
VERSION_CAPS: dict[int, int] = {
    API_PRODUCE: 8,
    API_FETCH: 6,
    API_METADATA: 8,
    API_FIND_COORDINATOR: 2,
    API_JOIN_GROUP: 5,
    API_HEARTBEAT: 3,
    API_LEAVE_GROUP: 3,
    API_SYNC_GROUP: 3,
}


# A response frame: 4-byte size, 4-byte correlation id, then the body. (Flexible response
# headers add tagged fields, but the shim only parses non-flexible versions and ApiVersions,
# whose response header is always v0.)
RESPONSE_BODY = 8


class WireError(ValueError):
    """A frame the shim could not decode."""


class Reader:
    """Sequential decoder over one frame."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def _take(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise WireError("frame ends early")
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return int(value)

    def i8(self) -> int:
        return self._take(">b")

    def i16(self) -> int:
        return self._take(">h")

    def i32(self) -> int:
        return self._take(">i")

    def i64(self) -> int:
        return self._take(">q")

    def string(self) -> str | None:
        length = self.i16()
        if length < 0:
            return None
        start = self.pos
        self.skip(length)
        return self.data[start : self.pos].decode("utf-8", "replace")

    def skip_bytes(self) -> int:
        """Skip a nullable BYTES field and return its length (-1 for null)."""
        length = self.i32()
        if length > 0:
            self.skip(length)
        return length

    def skip(self, count: int) -> None:
        """Move forward; a negative count or one past the frame end is a malformed frame."""
        if count < 0 or self.pos + count > len(self.data):
            raise WireError("length field points outside the frame")
        self.pos += count

    def count(self) -> int:
        """An array length: -1 (null) reads as empty; other negatives are malformed."""
        value = self.i32()
        if value < -1:
            raise WireError(f"negative array length {value}")
        return max(value, 0)


def encode_string(value: str | None) -> bytes:
    if value is None:
        return struct.pack(">h", -1)
    raw = value.encode()
    return struct.pack(">h", len(raw)) + raw


@dataclass(frozen=True)
class RequestHeader:
    api_key: int
    api_version: int
    correlation_id: int
    body_offset: int  # where the request body starts in the frame
    client_id: str | None = None


def parse_request_header(frame: bytes, start: int = 0) -> RequestHeader:
    """The header of the request that starts at ``start`` (4: a frame with its size prefix);
    ``body_offset`` counts from the frame's first byte."""
    reader = Reader(frame, start)
    api_key, api_version, correlation_id = reader.i16(), reader.i16(), reader.i32()
    client_id = reader.string()
    if api_key == API_API_VERSIONS and api_version >= 3:
        _skip_tagged_fields(reader)
    return RequestHeader(api_key, api_version, correlation_id, reader.pos, client_id)


def _read_uvarint(reader: Reader) -> int:
    shift = result = 0
    while True:
        if reader.pos >= len(reader.data) or shift > 28:
            raise WireError("truncated or oversized varint")
        byte = reader.data[reader.pos]
        reader.pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result
        shift += 7


def _skip_tagged_fields(reader: Reader) -> None:
    for _ in range(_read_uvarint(reader)):
        _read_uvarint(reader)  # tag
        reader.skip(_read_uvarint(reader))


def cap_api_versions(frame: bytearray, version: int) -> None:
    """Lower, in place, the max version of every API the shim parses."""
    reader = Reader(bytes(frame), RESPONSE_BODY)
    if reader.i16() != 0:  # error: the client retries with a lower version
        return
    count = _read_uvarint(reader) - 1 if version >= 3 else reader.count()
    for _ in range(max(count, 0)):
        api_key = reader.i16()
        reader.i16()
        max_at = reader.pos
        max_version = reader.i16()
        cap = VERSION_CAPS.get(api_key)
        if cap is not None and max_version > cap:
            struct.pack_into(">h", frame, max_at, cap)
        if version >= 3:
            _skip_tagged_fields(reader)


@dataclass(frozen=True)
class FetchRequest:
    max_wait_ms: int
    min_bytes: int
    topics: frozenset[str]


def parse_fetch_request(frame: bytes, header: RequestHeader) -> FetchRequest:
    reader = Reader(frame, header.body_offset)
    reader.i32()  # replica_id
    max_wait_ms, min_bytes = reader.i32(), reader.i32()
    if header.api_version >= 3:
        reader.i32()  # max_bytes
    if header.api_version >= 4:
        reader.i8()  # isolation_level
    topics = set()
    for _ in range(reader.count()):
        topic = reader.string()
        if topic is not None:
            topics.add(topic)
        per_partition = 12 + (8 if header.api_version >= 5 else 0) + 4
        reader.skip(reader.count() * per_partition)
    return FetchRequest(max_wait_ms, min_bytes, frozenset(topics))


def fetch_response_is_empty(frame: bytes, version: int) -> bool:
    """True when a fetch response carries no records and no partition error."""
    reader = Reader(frame, RESPONSE_BODY)
    if version >= 1:
        reader.i32()  # throttle_time_ms
    for _ in range(reader.count()):
        reader.string()
        for _ in range(reader.count()):
            reader.i32()  # partition
            if reader.i16() != 0:
                return False
            reader.i64()  # high watermark
            if version >= 4:
                reader.i64()  # last stable offset
            if version >= 5:
                reader.i64()  # log start offset
            if version >= 4:
                reader.skip(reader.count() * 16)  # aborted transactions
            if reader.skip_bytes() > 0:
                return False
    return True


def parse_produce_topics(frame: bytes, header: RequestHeader) -> tuple[int, frozenset[str]]:
    """Return (acks, topics written) of a Produce request."""
    reader = Reader(frame, header.body_offset)
    if header.api_version >= 3:
        reader.string()  # transactional_id
    acks = reader.i16()
    reader.i32()  # timeout
    topics = set()
    for _ in range(reader.count()):
        topic = reader.string()
        if topic is not None:
            topics.add(topic)
        for _ in range(reader.count()):
            reader.i32()
            reader.skip_bytes()
    return acks, frozenset(topics)


def rewrite_metadata_brokers(frame: bytes, version: int, host: str, port: int) -> bytes:
    """Point every advertised broker at the shim."""
    reader = Reader(frame, RESPONSE_BODY)
    if version >= 3:
        reader.i32()
    start = reader.pos
    count = reader.count()
    brokers = [struct.pack(">i", count)]
    for _ in range(count):
        node_id = reader.i32()
        reader.string()
        reader.i32()
        rack = reader.string() if version >= 1 else None
        brokers.append(struct.pack(">i", node_id) + encode_string(host) + struct.pack(">i", port))
        if version >= 1:
            brokers.append(encode_string(rack))
    return _resized(frame[:start] + b"".join(brokers) + frame[reader.pos :])


def rewrite_coordinator(frame: bytes, version: int, host: str, port: int) -> bytes:
    reader = Reader(frame, RESPONSE_BODY)
    if version >= 1:
        reader.i32()
    reader.i16()
    if version >= 1:
        reader.string()
    reader.i32()  # node_id
    start = reader.pos
    reader.string()
    reader.i32()
    return _resized(frame[:start] + encode_string(host) + struct.pack(">i", port) + frame[reader.pos :])


def _resized(frame: bytes) -> bytes:
    """Fix the size prefix of a frame whose body was rewritten."""
    return struct.pack(">i", len(frame) - 4) + frame[4:]


@dataclass(frozen=True)
class GroupRequest:
    group_id: str
    member_id: str
    session_timeout_ms: int | None  # only JoinGroup carries it
    instance_id: str | None = None  # JoinGroup v5+: static membership


def parse_group_request(frame: bytes, header: RequestHeader) -> GroupRequest:
    """Group id and member id of a JoinGroup, Heartbeat, SyncGroup or LeaveGroup (v0-2)."""
    reader = Reader(frame, header.body_offset)
    group_id = reader.string() or ""
    session_timeout = None
    if header.api_key == API_JOIN_GROUP:
        session_timeout = reader.i32()
        if header.api_version >= 1:
            reader.i32()  # rebalance timeout
    elif header.api_key in (API_HEARTBEAT, API_SYNC_GROUP):
        reader.i32()  # generation
    if header.api_key == API_LEAVE_GROUP and header.api_version >= 3:
        return GroupRequest(group_id, "", None)
    member_id = reader.string() or ""
    instance_id = None
    if header.api_key == API_JOIN_GROUP and header.api_version >= 5:
        instance_id = reader.string()
    return GroupRequest(group_id, member_id, session_timeout, instance_id)


def parse_join_response_member(frame: bytes, version: int) -> tuple[int, str]:
    """(error_code, member_id) of a JoinGroup response."""
    reader = Reader(frame, RESPONSE_BODY)
    if version >= 2:
        reader.i32()
    error = reader.i16()
    reader.i32()  # generation
    reader.string()  # protocol
    reader.string()  # leader
    return error, reader.string() or ""


ERROR_REBALANCE_IN_PROGRESS = 27


def sync_without_assignment_to_rebalance(frame: bytes, version: int) -> bytes:
    """A SyncGroup response that succeeds with no assignment bytes becomes REBALANCE_IN_PROGRESS.

    noida-db now and then answers a member's SyncGroup with error 0 and an empty assignment
    (seen for the leader of a two-member group); aiokafka cannot decode that and its group
    coordinator dies, leaving a consumer that never reads. Kafka clients rejoin on
    REBALANCE_IN_PROGRESS, so the next generation assigns again.
    """
    reader = Reader(frame, RESPONSE_BODY)
    if version >= 1:
        reader.i32()  # throttle_time_ms
    error_at = reader.pos
    error = reader.i16()
    if error != 0 or reader.skip_bytes() > 0:
        return frame
    mutable = bytearray(frame)
    struct.pack_into(">h", mutable, error_at, ERROR_REBALANCE_IN_PROGRESS)
    return bytes(mutable)


def leave_group_request(correlation_id: int, group_id: str, members: list[tuple[str, str | None]]) -> bytes:
    """A LeaveGroup v3 frame removing ``members`` (member id, instance id) on their behalf."""
    body = encode_string(group_id) + struct.pack(">i", len(members))
    body += b"".join(encode_string(m) + encode_string(i) for m, i in members)
    payload = struct.pack(">hhi", API_LEAVE_GROUP, 3, correlation_id)
    payload += encode_string("fraudlens-broker-shim") + body
    return struct.pack(">i", len(payload)) + payload
