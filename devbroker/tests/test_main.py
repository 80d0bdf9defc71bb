"""``python -m fraudlens_devbroker``: its options, the refusal of nonsense before anything starts,
and a broker that cannot start as one ``Error:`` line with exit 1 (what ``fraudlens broker``
printed when it ran the broker in its own code)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from fraudlens_devbroker import __main__ as entry
from fraudlens_devbroker.embedded import DEFAULT_FETCH_COALESCE_MS, BrokerStartError, Topics, free_port


def test_run_by_hand_the_defaults_apply() -> None:
    args = entry.parser().parse_args([])

    assert (args.port, args.host, args.ready_file) == (9092, "127.0.0.1", None)
    assert args.data_dir == Path("data/broker")
    assert (args.max_retention, args.fetch_coalesce_ms) == (60.0, DEFAULT_FETCH_COALESCE_MS)
    assert (args.create_topics, args.time_retention_only, args.log_level) == ([], [], "info")


@pytest.mark.parametrize(
    "bad",
    [
        ["--fetch-coalesce-ms", "5000"],
        ["--fetch-coalesce-ms", "nan"],
        ["--max-retention", "0"],
        ["--max-retention", "inf"],
        ["--port", "soon"],
        ["--log-level", "loud"],
    ],
)
def test_nonsense_is_a_usage_error_before_start(bad: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(entry, "serve", lambda *_a, **_k: pytest.fail("started with " + " ".join(bad)))

    with pytest.raises(SystemExit) as ended:
        entry.main(bad)

    assert ended.value.code == 2


def test_the_options_reach_serve(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    async def serve(port: int, data_dir: Path, **options: Any) -> None:
        seen.update(options, port=port, data_dir=data_dir)

    monkeypatch.setattr(entry, "serve", serve)
    entry.main([
        "--port", "19092", "--data-dir", str(tmp_path), "--create-topics", "a,b", "--partitions", "6",
        "--time-retention-only", "b", "--fetch-coalesce-ms", "0", "--max-retention", "30",
    ])  # fmt: skip

    assert (seen["port"], seen["data_dir"], seen["max_retention_s"], seen["fetch_coalesce_ms"]) == (
        19092, tmp_path, 30.0, 0.0,
    )  # fmt: skip
    assert seen["topics"] == Topics(("a", "b"), 6, 1, frozenset({"b"}))


def test_a_broker_that_cannot_start_says_why_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    why = "data directory /x is in use by a running broker (pid 1)"

    async def refused(*_args: Any, **_kwargs: Any) -> None:
        raise BrokerStartError(why)

    monkeypatch.setattr(entry, "serve", refused)
    with pytest.raises(SystemExit) as ended:
        entry.main([])

    assert ended.value.code == 1
    assert capsys.readouterr().err.splitlines() == [f"Error: {why}"]


def test_free_ports_are_outside_the_kernels_ephemeral_range() -> None:
    """A restarted listener must get its port back: a port the kernel could give a client as its
    source port (a self-connecting reconnect) would be taken meanwhile (EADDRINUSE)."""
    low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = {free_port() for _ in range(50)}
    assert len(ports) > 1
    for port in ports:
        assert not low <= port <= high, (port, low, high)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free, as promised
