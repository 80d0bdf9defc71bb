"""``python -m fraudlens_devbroker``: the broker until SIGINT, SIGTERM or SIGHUP.

``fraudlens broker`` execs this in its own process (same pid, same parent, same nice) with every
option filled in from fraudlens's settings; run by hand, the defaults below apply. A broker that
cannot start prints one line, ``Error: <why>``, and exits 1 (as a click command does).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import sys
from pathlib import Path

from app.runtime.lifetime import exit_with_parent
from fraudlens_devbroker.embedded import DEFAULT_FETCH_COALESCE_MS, BrokerStartError, Topics, serve

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # fraudlens's, so its logs read alike


def _names(text: str) -> list[str]:
    """A comma-separated list of topic names (Kafka's names have no commas)."""
    return [name for name in text.split(",") if name]


def _seconds(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 1")
    return value


def _coalesce_ms(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or not 0 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of ms in 0-1000")
    return value


def parser() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(prog="python -m fraudlens_devbroker", description=__doc__)
    add = options.add_argument
    add("--port", type=int, default=9092, help="port clients connect to (default: 9092)")
    add("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    add("--data-dir", type=Path, default=Path("data/broker"), help="the broker's data (default: data/broker)")
    add("--ready-file", type=Path, default=None, help="write host:port here once the broker answers Metadata")
    add("--max-retention", type=_seconds, default=60.0, help="seconds any deletable record is kept")
    add(
        "--fetch-coalesce-ms", type=_coalesce_ms, default=DEFAULT_FETCH_COALESCE_MS,
        help="how long a woken fetch of a Faust client waits for more records",
    )  # fmt: skip
    add("--create-topics", type=_names, default=[], help="topics to create at start (comma-separated)")
    add("--partitions", type=int, default=1, help="partitions of each topic created")
    add("--replication-factor", type=int, default=1, help="replication factor of each topic created")
    add(
        "--time-retention-only", type=_names, default=[],
        help="topics users read: trimmed by time only, never because every group has read them",
    )  # fmt: skip
    add("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return options


def main(argv: list[str] | None = None) -> None:
    exit_with_parent()  # before anything else, as fraudlens's main does
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    topics = Topics(
        tuple(args.create_topics), args.partitions, args.replication_factor,
        frozenset(args.time_retention_only),
    )  # fmt: skip
    try:
        asyncio.run(serve(  # ends the process itself, with noida-db's outcome (0, or 1)
            args.port, args.data_dir, host=args.host, ready_file=args.ready_file,
            max_retention_s=args.max_retention, fetch_coalesce_ms=args.fetch_coalesce_ms, topics=topics,
        ))  # fmt: skip
    except BrokerStartError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
