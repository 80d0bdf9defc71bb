"""Kafka wire codec of the broker shim, against frames built by hand with ``struct``.

Request frames are built the way a client sends them (size prefix included) and parsed the way
``BrokerShim._inspect`` does: the header from ``frame[4:]``, the body with ``body_offset`` moved
past the prefix. Response frames always carry their size prefix (``RESPONSE_BODY`` counts it).
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fraudlens_devbroker import wire
from fraudlens_devbroker.wire import (
    API_API_VERSIONS,
    API_FETCH,
    API_HEARTBEAT,
    API_JOIN_GROUP,
    API_LEAVE_GROUP,
    API_METADATA,
    API_PRODUCE,
    API_SYNC_GROUP,
    VERSION_CAPS,
    GroupRequest,
    RequestHeader,
    WireError,
)

# ----------------------------------------------------------------------------- encoders


def i8(value: int) -> bytes:
    return struct.pack(">b", value)


def i16(value: int) -> bytes:
    return struct.pack(">h", value)


def i32(value: int) -> bytes:
    return struct.pack(">i", value)


def i64(value: int) -> bytes:
    return struct.pack(">q", value)


def string(value: str | None) -> bytes:
    if value is None:
        return i16(-1)
    raw = value.encode()
    return i16(len(raw)) + raw


def uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def compact_string(value: str) -> bytes:
    raw = value.encode()
    return uvarint(len(raw) + 1) + raw


def tagged_fields(*fields: tuple[int, bytes]) -> bytes:
    return uvarint(len(fields)) + b"".join(uvarint(tag) + uvarint(len(data)) + data for tag, data in fields)


def sized(payload: bytes) -> bytes:
    return i32(len(payload)) + payload


def request(
    api_key: int, version: int, body: bytes, correlation_id: int = 7, client_id: str | None = "client-1"
) -> bytes:
    """A non-flexible (v1 header) request frame, size prefix included."""
    return sized(struct.pack(">hhi", api_key, version, correlation_id) + string(client_id) + body)


def response(body: bytes, correlation_id: int = 7) -> bytes:
    """A v0-header response frame, size prefix included."""
    return sized(i32(correlation_id) + body)


def shim_header(frame: bytes) -> RequestHeader:
    """The header as ``BrokerShim._inspect`` computes it for a size-prefixed frame."""
    header = wire.parse_request_header(frame[4:])
    return RequestHeader(header.api_key, header.api_version, header.correlation_id, header.body_offset + 4)


# ------------------------------------------------------------------------ request header


def test_request_header_reads_key_version_correlation_and_body_start() -> None:
    body = b"BODY"
    frame = request(API_FETCH, 6, body, correlation_id=123_456, client_id="my-client")

    header = wire.parse_request_header(frame[4:])

    assert (header.api_key, header.api_version, header.correlation_id) == (API_FETCH, 6, 123_456)
    assert frame[4:][header.body_offset :] == body


def test_request_header_with_null_client_id_starts_body_after_the_null_marker() -> None:
    frame = request(API_METADATA, 1, b"BODY", client_id=None)

    header = wire.parse_request_header(frame[4:])

    assert header.body_offset == 2 + 2 + 4 + 2
    assert frame[4:][header.body_offset :] == b"BODY"


def test_api_versions_v3_flexible_header_skips_tagged_fields() -> None:
    body = compact_string("fraudlens") + compact_string("1.0") + tagged_fields()
    header_tags = tagged_fields((0, b"abc"), (5, b"x" * 200))  # 200 needs a two-byte uvarint length
    payload = struct.pack(">hhi", API_API_VERSIONS, 3, 99) + string("client") + header_tags + body

    header = wire.parse_request_header(payload)

    assert (header.api_key, header.api_version, header.correlation_id) == (API_API_VERSIONS, 3, 99)
    assert payload[header.body_offset :] == body


def test_api_versions_v3_header_without_tagged_fields_skips_only_the_count_byte() -> None:
    body = compact_string("fraudlens") + compact_string("1.0") + tagged_fields()
    payload = struct.pack(">hhi", API_API_VERSIONS, 3, 1) + string("c") + tagged_fields() + body

    header = wire.parse_request_header(payload)

    assert payload[header.body_offset :] == body


def test_api_versions_v2_header_has_no_tagged_fields_to_skip() -> None:
    payload = struct.pack(">hhi", API_API_VERSIONS, 2, 1) + string("c")

    header = wire.parse_request_header(payload)

    assert header.body_offset == len(payload)


def test_request_header_shorter_than_fixed_fields_is_a_wire_error() -> None:
    with pytest.raises(WireError):
        wire.parse_request_header(struct.pack(">hh", API_FETCH, 4))


# ------------------------------------------------------------------------- ApiVersions


def api_versions_v0(entries: list[tuple[int, int, int]], error: int = 0, throttle: bool = True) -> bytes:
    body = i16(error) + i32(len(entries)) + b"".join(i16(k) + i16(lo) + i16(hi) for k, lo, hi in entries)
    return response(body + (i32(0) if throttle else b""))


def api_versions_v3(
    entries: list[tuple[int, int, int]], entry_tags: dict[int, bytes] | None = None, error: int = 0
) -> bytes:
    tags = entry_tags or {}
    body = i16(error) + uvarint(len(entries) + 1)
    for key, lo, hi in entries:
        body += i16(key) + i16(lo) + i16(hi)
        body += tagged_fields((0, tags[key])) if key in tags else tagged_fields()
    body += i32(0) + tagged_fields()  # throttle_time_ms, response tagged fields
    return response(body)


UNCAPPED = [
    (API_PRODUCE, 0, 11),
    (API_FETCH, 0, 17),
    (API_METADATA, 0, 12),
    (API_HEARTBEAT, 0, 2),  # below its cap: must stay
    (API_API_VERSIONS, 0, 4),  # not parsed by the shim: must stay
    (API_SYNC_GROUP, 0, 5),
    (60, 0, 1),  # unknown to the shim
]


def capped(entries: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    return [(k, lo, min(hi, VERSION_CAPS.get(k, hi))) for k, lo, hi in entries]


@pytest.mark.parametrize("version", [0, 1, 2])
def test_cap_api_versions_v0_to_v2_lowers_only_capped_apis_in_place(version: int) -> None:
    frame = bytearray(api_versions_v0(UNCAPPED, throttle=version >= 1))

    returned = wire.cap_api_versions(frame, version)

    assert returned is None
    assert bytes(frame) == api_versions_v0(capped(UNCAPPED), throttle=version >= 1)


def test_capped_fetch_stays_below_fetch_sessions() -> None:
    frame = bytearray(api_versions_v0([(API_FETCH, 0, 17)]))

    wire.cap_api_versions(frame, 1)

    assert struct.unpack_from(">hhh", frame, 4 + 4 + 2 + 4) == (API_FETCH, 0, 6)


def test_cap_api_versions_v3_lowers_only_capped_apis_past_entry_tagged_fields() -> None:
    tags = {API_PRODUCE: b"tagdata", API_METADATA: b"z" * 130}
    frame = bytearray(api_versions_v3(UNCAPPED, tags))

    wire.cap_api_versions(frame, 3)

    assert bytes(frame) == api_versions_v3(capped(UNCAPPED), tags)


def test_cap_api_versions_v3_reads_a_multi_byte_array_length() -> None:
    entries = [(key, 0, 20) for key in range(150)]  # 151 needs a two-byte uvarint
    frame = bytearray(api_versions_v3(entries))

    wire.cap_api_versions(frame, 3)

    assert bytes(frame) == api_versions_v3(capped(entries))
    assert any(key in VERSION_CAPS for key, _, _ in entries)


@pytest.mark.parametrize("version", [0, 3])
def test_cap_api_versions_leaves_an_error_response_untouched(version: int) -> None:
    build = api_versions_v3 if version >= 3 else api_versions_v0
    original = build(UNCAPPED, error=35)  # UNSUPPORTED_VERSION: the client retries lower
    frame = bytearray(original)

    wire.cap_api_versions(frame, version)

    assert bytes(frame) == original


def test_every_cap_is_below_the_first_flexible_version_of_its_api() -> None:
    first_flexible = {
        API_PRODUCE: 9,
        API_FETCH: 12,
        API_METADATA: 9,
        wire.API_FIND_COORDINATOR: 3,
        API_JOIN_GROUP: 6,
        API_HEARTBEAT: 4,
        API_LEAVE_GROUP: 4,
        API_SYNC_GROUP: 4,
    }
    too_high = {api: cap for api, cap in VERSION_CAPS.items() if cap >= first_flexible[api]}

    assert too_high == {}


# ------------------------------------------------------------------------------- Fetch


def fetch_request(
    version: int, topics: dict[str, list[int]], max_wait: int = 500, min_bytes: int = 1
) -> bytes:
    body = i32(-1) + i32(max_wait) + i32(min_bytes) + i32(52_428_800) + i8(0)
    body += i32(len(topics))
    for topic, partitions in topics.items():
        body += string(topic) + i32(len(partitions))
        for partition in partitions:
            body += i32(partition) + i64(1_000 + partition)
            if version >= 5:
                body += i64(0)  # log_start_offset
            body += i32(1_048_576)
    return request(API_FETCH, version, body)


@pytest.mark.parametrize("version", [4, 5, 6])
def test_fetch_request_yields_every_topic_and_the_wait(version: int) -> None:
    frame = fetch_request(version, {"transactions": [0, 1, 2], "verdicts": [3], "x": []}, 750, 16)

    fetch = wire.parse_fetch_request(frame, shim_header(frame))

    assert fetch == wire.FetchRequest(750, 16, frozenset({"transactions", "verdicts", "x"}))


def test_fetch_request_v6_partition_entries_include_log_start_offset() -> None:
    # Parsed as v4 (16-byte partition entries) the 24-byte v6 entries would garble the second
    # topic name; this proves the per-version entry size is what the parser skips.
    frame = fetch_request(6, {"a": [0, 1], "second-topic": [0]})

    fetch = wire.parse_fetch_request(frame, shim_header(frame))

    assert fetch.topics == frozenset({"a", "second-topic"})


def fetch_response(
    version: int,
    partitions: list[tuple[int, bytes | None, int]],
    topic: str = "transactions",
    aborted: int = -1,
) -> bytes:
    """One topic; each partition is (error_code, records or None, high watermark)."""
    body = i32(0) + i32(1) + string(topic) + i32(len(partitions))
    for index, (error, records, high) in enumerate(partitions):
        body += i32(index) + i16(error) + i64(high) + i64(high)
        if version >= 5:
            body += i64(0)
        body += i32(aborted) + b"".join(i64(9) + i64(10) for _ in range(max(aborted, 0)))
        body += i32(-1) if records is None else i32(len(records)) + records
    return response(body)


@pytest.mark.parametrize("version", [4, 6])
def test_fetch_response_without_records_is_empty(version: int) -> None:
    frame = fetch_response(version, [(0, b"", 10), (0, None, 0)])

    assert wire.fetch_response_is_empty(frame, version) is True


@pytest.mark.parametrize("version", [4, 6])
def test_fetch_response_with_no_topics_is_empty(version: int) -> None:
    frame = response(i32(0) + i32(0))

    assert wire.fetch_response_is_empty(frame, version) is True


@pytest.mark.parametrize("version", [4, 6])
def test_fetch_response_with_records_in_a_later_partition_is_not_empty(version: int) -> None:
    frame = fetch_response(version, [(0, b"", 10), (0, b"\x00" * 70, 11)])

    assert wire.fetch_response_is_empty(frame, version) is False


@pytest.mark.parametrize("version", [4, 6])
def test_fetch_response_with_a_partition_error_is_not_empty(version: int) -> None:
    frame = fetch_response(version, [(0, b"", 10), (6, b"", -1)])  # NOT_LEADER_OR_FOLLOWER

    assert wire.fetch_response_is_empty(frame, version) is False


@pytest.mark.parametrize("version", [4, 6])
def test_fetch_response_skips_aborted_transactions_before_the_records(version: int) -> None:
    empty = fetch_response(version, [(0, b"", 10), (0, b"", 10)], aborted=2)
    full = fetch_response(version, [(0, b"", 10), (0, b"rec", 10)], aborted=2)

    assert wire.fetch_response_is_empty(empty, version) is True
    assert wire.fetch_response_is_empty(full, version) is False


# ----------------------------------------------------------------------------- Produce


def produce_request(version: int, acks: int, topics: dict[str, int], transactional_id: str | None) -> bytes:
    body = string(transactional_id) if version >= 3 else b""
    body += i16(acks) + i32(30_000) + i32(len(topics))
    for topic, partitions in topics.items():
        body += string(topic) + i32(partitions)
        for partition in range(partitions):
            records = b"r" * (10 + partition)
            body += i32(partition) + i32(len(records)) + records
    return request(API_PRODUCE, version, body)


@pytest.mark.parametrize(
    ("version", "acks", "transactional_id"), [(3, -1, None), (3, 1, "tx-app"), (8, 0, None), (8, -1, "t")]
)
def test_produce_request_yields_acks_and_topics(
    version: int, acks: int, transactional_id: str | None
) -> None:
    frame = produce_request(version, acks, {"verdicts": 2, "transactions.dlq": 1}, transactional_id)

    parsed = wire.parse_produce_topics(frame, shim_header(frame))

    assert parsed == (acks, frozenset({"verdicts", "transactions.dlq"}))


def test_produce_request_v2_has_no_transactional_id() -> None:
    frame = produce_request(2, 1, {"verdicts": 1}, None)

    assert wire.parse_produce_topics(frame, shim_header(frame)) == (1, frozenset({"verdicts"}))


# ---------------------------------------------------------------------------- Metadata

METADATA_TAIL = i32(2) + i32(1) + i16(0) + string("transactions") + b"\x01\x02 rest of the frame \xff"


def metadata_response(version: int, brokers: list[tuple[int, str, int, str | None]]) -> bytes:
    body = i32(17) if version >= 3 else b""  # throttle_time_ms
    body += i32(len(brokers))
    for node_id, host, port, rack in brokers:
        body += i32(node_id) + string(host) + i32(port) + (string(rack) if version >= 1 else b"")
    return response(body + METADATA_TAIL, correlation_id=4242)


@pytest.mark.parametrize("version", [0, 1, 3, 8])
def test_metadata_brokers_point_at_the_shim_and_nothing_else_changes(version: int) -> None:
    upstream = [(0, "127.0.0.1", 19092, None), (1, "noida-upstream.internal", 29092, "rack-b")]
    frame = metadata_response(version, upstream)

    rewritten = wire.rewrite_metadata_brokers(frame, version, "shim.local", 9092)

    expected = metadata_response(version, [(0, "shim.local", 9092, None), (1, "shim.local", 9092, "rack-b")])
    assert rewritten == expected


def test_metadata_rewrite_fixes_the_size_prefix_when_the_host_grows() -> None:
    frame = metadata_response(8, [(0, "h", 1, None)])

    rewritten = wire.rewrite_metadata_brokers(frame, 8, "a-much-longer-host-name.example", 9092)

    assert struct.unpack(">i", rewritten[:4])[0] == len(rewritten) - 4
    assert len(rewritten) - len(frame) == len("a-much-longer-host-name.example") - 1
    assert rewritten.endswith(METADATA_TAIL)


def test_metadata_with_no_brokers_is_unchanged() -> None:
    frame = metadata_response(8, [])

    assert wire.rewrite_metadata_brokers(frame, 8, "shim", 1) == frame


# ------------------------------------------------------------------------- Coordinator


def coordinator_response(version: int, host: str, port: int, error_message: str | None = None) -> bytes:
    body = i32(3) if version >= 1 else b""  # throttle_time_ms
    body += i16(0) + (string(error_message) if version >= 1 else b"") + i32(5)
    return response(body + string(host) + i32(port), correlation_id=11)


@pytest.mark.parametrize("version", [0, 1, 2])
def test_coordinator_points_at_the_shim(version: int) -> None:
    frame = coordinator_response(version, "upstream-host", 19092, error_message="NONE")

    rewritten = wire.rewrite_coordinator(frame, version, "127.0.0.1", 9092)

    assert rewritten == coordinator_response(version, "127.0.0.1", 9092, error_message="NONE")


@pytest.mark.parametrize("version", [1, 2])
def test_coordinator_with_null_error_message_is_rewritten(version: int) -> None:
    frame = coordinator_response(version, "h", 1, error_message=None)

    rewritten = wire.rewrite_coordinator(frame, version, "shim-host", 9092)

    assert rewritten == coordinator_response(version, "shim-host", 9092, error_message=None)
    assert struct.unpack(">i", rewritten[:4])[0] == len(rewritten) - 4


# ------------------------------------------------------------------------ Group requests

PROTOCOLS = string("consumer") + i32(1) + string("range") + i32(3) + b"abc"


def join_group_request(
    version: int, group: str, member: str, instance: str | None, session_ms: int, rebalance_ms: int = 60_000
) -> bytes:
    body = string(group) + i32(session_ms) + (i32(rebalance_ms) if version >= 1 else b"")
    body += string(member) + (string(instance) if version >= 5 else b"")
    return request(API_JOIN_GROUP, version, body + PROTOCOLS)


def test_join_group_v5_yields_session_timeout_member_and_instance() -> None:
    frame = join_group_request(5, "fraudlens", "member-1", "scorer-0", 45_000, rebalance_ms=300_000)

    parsed = wire.parse_group_request(frame, shim_header(frame))

    assert parsed == GroupRequest("fraudlens", "member-1", 45_000, "scorer-0")


def test_join_group_v5_first_join_has_empty_member_and_no_instance() -> None:
    frame = join_group_request(5, "g", "", None, 10_000)

    assert wire.parse_group_request(frame, shim_header(frame)) == GroupRequest("g", "", 10_000, None)


def test_join_group_v0_has_no_rebalance_timeout_before_the_member_id() -> None:
    frame = join_group_request(0, "g", "member-0", None, 6_000)

    assert wire.parse_group_request(frame, shim_header(frame)) == GroupRequest("g", "member-0", 6_000, None)


@pytest.mark.parametrize("version", [0, 3])
def test_heartbeat_yields_group_and_member_without_timeout(version: int) -> None:
    body = string("fraudlens") + i32(12) + string("member-9")
    body += string("scorer-1") if version >= 3 else b""
    frame = request(API_HEARTBEAT, version, body)

    assert wire.parse_group_request(frame, shim_header(frame)) == GroupRequest("fraudlens", "member-9", None)


def test_sync_group_v3_yields_group_and_member() -> None:
    body = string("fraudlens") + i32(3) + string("member-2") + string(None) + i32(0)
    frame = request(API_SYNC_GROUP, 3, body)

    assert wire.parse_group_request(frame, shim_header(frame)) == GroupRequest("fraudlens", "member-2", None)


def test_leave_group_v1_yields_the_member() -> None:
    frame = request(API_LEAVE_GROUP, 1, string("fraudlens") + string("member-3"))

    assert wire.parse_group_request(frame, shim_header(frame)) == GroupRequest("fraudlens", "member-3", None)


def test_leave_group_v3_yields_the_group_and_no_single_member() -> None:
    members = i32(2) + string("m-1") + string(None) + string("m-2") + string("inst-2")
    frame = request(API_LEAVE_GROUP, 3, string("fraudlens") + members)

    assert wire.parse_group_request(frame, shim_header(frame)) == GroupRequest("fraudlens", "", None)


def join_response(version: int, error: int, member: str) -> bytes:
    body = i32(0) if version >= 2 else b""
    body += i16(error) + i32(4) + string("range") + string("leader-id") + string(member) + i32(0)
    return response(body)


@pytest.mark.parametrize("version", [0, 1, 2, 5])
def test_join_response_yields_error_and_assigned_member(version: int) -> None:
    frame = join_response(version, 0, "consumer-1-abc")

    assert wire.parse_join_response_member(frame, version) == (0, "consumer-1-abc")


def test_join_response_member_id_required_carries_the_new_id() -> None:
    frame = join_response(5, 79, "consumer-7-new")

    assert wire.parse_join_response_member(frame, 5) == (79, "consumer-7-new")


# --------------------------------------------------------------------------- LeaveGroup


def test_leave_group_request_decodes_to_a_v3_leave_of_the_given_members() -> None:
    frame = wire.leave_group_request(31, "fraudlens", [("member-1", None), ("member-2", "scorer-2")])

    assert struct.unpack(">i", frame[:4])[0] == len(frame) - 4
    header = shim_header(frame)
    assert (header.api_key, header.api_version, header.correlation_id) == (API_LEAVE_GROUP, 3, 31)
    reader = wire.Reader(frame, header.body_offset)
    group = reader.string()
    members = [(reader.string(), reader.string()) for _ in range(reader.i32())]
    assert (group, members) == ("fraudlens", [("member-1", None), ("member-2", "scorer-2")])
    assert reader.pos == len(frame)


def test_leave_group_request_names_the_shim_as_client() -> None:
    frame = wire.leave_group_request(1, "g", [("m", None)])

    reader = wire.Reader(frame, 4 + 8)
    assert reader.string() == "fraudlens-broker-shim"


def test_leave_group_request_parses_back_through_the_shim_parser() -> None:
    frame = wire.leave_group_request(2, "fraudlens", [("member-1", "scorer-1")])

    assert wire.parse_group_request(frame, shim_header(frame)) == GroupRequest("fraudlens", "", None)


# ------------------------------------------------------------------ robustness (fuzzing)


def _header(api_key: int, version: int) -> RequestHeader:
    return RequestHeader(api_key, version, 1, 0)


PARSERS: dict[str, Callable[[bytes], object]] = {
    "request_header": wire.parse_request_header,
    "request_header_api_versions_v3": lambda b: wire.parse_request_header(
        struct.pack(">hhi", API_API_VERSIONS, 3, 1) + b
    ),
    "cap_api_versions_v0": lambda b: wire.cap_api_versions(bytearray(b), 0),
    "cap_api_versions_v3": lambda b: wire.cap_api_versions(bytearray(b), 3),
    "fetch_request_v4": lambda b: wire.parse_fetch_request(b, _header(API_FETCH, 4)),
    "fetch_request_v6": lambda b: wire.parse_fetch_request(b, _header(API_FETCH, 6)),
    "fetch_response_v4": lambda b: wire.fetch_response_is_empty(b, 4),
    "fetch_response_v6": lambda b: wire.fetch_response_is_empty(b, 6),
    "produce_v3": lambda b: wire.parse_produce_topics(b, _header(API_PRODUCE, 3)),
    "metadata_v1": lambda b: wire.rewrite_metadata_brokers(b, 1, "h", 1),
    "metadata_v8": lambda b: wire.rewrite_metadata_brokers(b, 8, "h", 1),
    "coordinator_v0": lambda b: wire.rewrite_coordinator(b, 0, "h", 1),
    "coordinator_v2": lambda b: wire.rewrite_coordinator(b, 2, "h", 1),
    "join_group_v5": lambda b: wire.parse_group_request(b, _header(API_JOIN_GROUP, 5)),
    "heartbeat_v3": lambda b: wire.parse_group_request(b, _header(API_HEARTBEAT, 3)),
    "leave_group_v3": lambda b: wire.parse_group_request(b, _header(API_LEAVE_GROUP, 3)),
    "join_response_v5": lambda b: wire.parse_join_response_member(b, 5),
}

# Small frames of mostly boundary bytes reach deep into the parsers (counts of 0, 1, -1, ...).
_BOUNDARY_BYTES = st.sampled_from([0x00, 0x00, 0x00, 0x01, 0x02, 0x7F, 0x80, 0xFF]) | st.integers(0, 255)
FRAMES = st.lists(_BOUNDARY_BYTES, max_size=48).map(bytes) | st.binary(max_size=48)


@pytest.mark.parametrize("name", sorted(PARSERS))
@settings(max_examples=150, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=FRAMES)
def test_parsers_on_random_bytes_return_or_raise_a_decoding_error(name: str, data: bytes) -> None:
    # Only WireError: the shim catches nothing else around the parsers, and anything else (a
    # struct.error, an IndexError...) ends the client's connection (tests/unit/test_broker_shim.py).
    with contextlib.suppress(WireError):
        PARSERS[name](data)


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_parsers_on_an_empty_frame_raise_wire_error(name: str) -> None:
    with pytest.raises(WireError):
        PARSERS[name](b"")


# The shim catches only WireError around the parsers (``_inspect`` not even that around
# ``parse_request_header``); anything else kills the connection's relay task. These tests state
# the intended contract and fail on the current code: see the report that came with them.


def test_regression_truncated_api_versions_v3_request_header_raises_index_error_not_wire_error() -> None:
    payload = struct.pack(">hhi", API_API_VERSIONS, 3, 1) + string("client")  # tagged fields missing

    with pytest.raises(WireError):
        wire.parse_request_header(payload)


def test_regression_truncated_api_versions_v3_response_raises_index_error_from_cap_api_versions() -> None:
    frame = bytearray(response(i16(0)))  # error code, then the compact array length is missing

    with pytest.raises(WireError):
        wire.cap_api_versions(frame, 3)


def test_regression_negative_partition_count_in_fetch_request_raises_struct_error_not_wire_error() -> None:
    body = i32(-1) + i32(500) + i32(1) + i32(1_000) + i8(0) + i32(2) + string("t") + i32(-100)
    frame = request(API_FETCH, 4, body)

    with pytest.raises(WireError):
        wire.parse_fetch_request(frame, shim_header(frame))


def test_regression_negative_partition_count_rewinding_to_the_topic_is_reparsed_instead_of_rejected() -> None:
    # 10-byte name + 2-byte length + 4-byte count = 16 bytes = one v4 partition entry, so a count
    # of -1 moves the reader back onto the same topic: with a topic count of 2**31-1 the parser
    # (which runs on the shim's event loop) spins about two billion times.
    body = i32(-1) + i32(500) + i32(1) + i32(1_000) + i8(0) + i32(1_000) + string("abcdefghij") + i32(-1)
    frame = request(API_FETCH, 4, body)

    with pytest.raises(WireError):
        wire.parse_fetch_request(frame, shim_header(frame))


def test_regression_member_id_running_past_the_frame_end_is_returned_truncated() -> None:
    frame = join_response(5, 0, "consumer-1-abcdef")
    truncated = frame[:-8]  # drops the member array count and the member id's last 4 bytes

    with pytest.raises(WireError):
        wire.parse_join_response_member(truncated, 5)


# ----------------------------------------------------------------------------- SyncGroup repair


def sync_response(version: int, error: int, assignment: bytes | None) -> bytes:
    body = (i32(0) if version >= 1 else b"") + i16(error)
    body += i32(-1) if assignment is None else i32(len(assignment)) + assignment
    return response(body)


def sync_error(frame: bytes, version: int) -> int:
    return struct.unpack_from(">h", frame, wire.RESPONSE_BODY + (4 if version >= 1 else 0))[0]


@pytest.mark.parametrize("version", [0, 1, 2, 3])
@pytest.mark.parametrize("assignment", [b"", None])
def test_sync_success_without_assignment_becomes_rebalance_in_progress(
    version: int, assignment: bytes | None
) -> None:
    frame = sync_response(version, 0, assignment)
    fixed = wire.sync_without_assignment_to_rebalance(frame, version)
    assert sync_error(fixed, version) == wire.ERROR_REBALANCE_IN_PROGRESS
    assert len(fixed) == len(frame) and fixed[: wire.RESPONSE_BODY] == frame[: wire.RESPONSE_BODY]


@pytest.mark.parametrize("version", [0, 3])
def test_sync_with_an_assignment_or_an_error_is_untouched(version: int) -> None:
    with_assignment = sync_response(version, 0, b"\x00\x00\x00\x00\x00\x00")
    assert wire.sync_without_assignment_to_rebalance(with_assignment, version) is with_assignment
    failed = sync_response(version, 25, b"")  # UNKNOWN_MEMBER_ID stays what it is
    assert wire.sync_without_assignment_to_rebalance(failed, version) is failed
