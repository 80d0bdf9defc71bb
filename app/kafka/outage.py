"""Riding through a broker outage: one log line when it starts, one when it ends, bounded retries.

librdkafka reconnects by itself (``reconnect.backoff.ms`` 100 ms doubling to
``reconnect.backoff.max.ms`` 10 s) and keeps produced records queued for ``message.timeout.ms``
(300 s by default); what it does not do is retry a call that needs an answer now (metadata, topic
creation, watermarks) or tell the operator once, rather than once per connection attempt, that
the broker is gone. :class:`Outage` is that one line each way; :func:`retry` is the bounded,
backed-off retry of a start-up call (DESIGN-NOTES: riding through a broker outage).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")

# How long a role keeps retrying before it gives up with one line and a non-zero exit (for a
# supervisor to restart it): librdkafka's own default message timeout, well above the 60 s
# outage every role must ride through.
RIDE_THROUGH_S = 300.0
EX_UNAVAILABLE = 69  # sysexits.h: "a service is unavailable"
EX_TEMPFAIL = 75  # sysexits.h: "temporary failure": what was not acked is redone after a restart

# librdkafka error codes that mean "the broker cannot be reached right now" (retried, not fatal).
UNREACHABLE_CODES = frozenset({-195, -187, -185})  # _TRANSPORT, _ALL_BROKERS_DOWN, _TIMED_OUT


class BrokerUnreachable(RuntimeError):
    """The broker did not answer within the ride-through bound."""


class Outage:
    """Tracks whether the broker is unreachable for one client and logs only the transitions.

    An outage is logged once it has lasted ``grace_s`` (librdkafka reports a dropped connection
    it re-opens at once as "all brokers down" too; that is no outage), and its end only if its
    start was logged.
    """

    def __init__(
        self,
        what: str,
        logger: logging.Logger,
        clock: Callable[[], float] = time.monotonic,
        on_fatal: Callable[[str], None] | None = None,
        grace_s: float = 2.0,
    ):
        self.what, self.log, self.clock, self.on_fatal = what, logger, clock, on_fatal
        self.grace_s = grace_s
        self.since: float | None = None
        self.reason = ""
        self.logged = False
        self.count = 0  # outages logged (for the tests and the metrics)

    @property
    def active(self) -> bool:
        return self.since is not None

    def seconds(self) -> float:
        return 0.0 if self.since is None else self.clock() - self.since

    def down(self, reason: object) -> None:
        if self.since is None:
            self.since, self.reason, self.logged = self.clock(), str(reason), False
        self.check()

    def check(self) -> None:
        """Log the outage once it has lasted the grace period (call while it may be going on)."""
        if self.since is None or self.logged or self.seconds() < self.grace_s:
            return
        self.logged = True
        self.count += 1
        self.log.warning(
            "%s: broker unreachable for %.0f s (%s); retrying until it is back",
            self.what, self.seconds(), self.reason,
        )  # fmt: skip

    def up(self) -> None:
        if self.since is None:
            return
        if self.logged:
            self.log.warning("%s: broker reachable again after %.1f s", self.what, self.seconds())
        self.since = None

    def error_cb(self, error: Any) -> None:
        """librdkafka's ``error_cb``: transport errors mark the outage (the end is marked by
        the caller's next success); anything else is logged as before."""
        if error.fatal() and self.on_fatal is not None:
            self.on_fatal(error.str())
        elif error.code() in UNREACHABLE_CODES:
            self.down(error.str())
        else:
            self.log.warning("%s: %s", self.what, error)


def backoff(attempt: int, first_s: float = 0.2, cap_s: float = 5.0) -> float:
    """The pause before retry number ``attempt`` (0-based): doubling from ``first_s`` to ``cap_s``."""
    return float(min(cap_s, first_s * 2**attempt))


def retry(
    call: Callable[[], T],
    outage: Outage,
    limit_s: float = RIDE_THROUGH_S,
    retriable: Callable[[BaseException], bool] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``call()`` until it succeeds, with backoff, while its errors are ``retriable`` (default:
    any KafkaException); after ``limit_s`` of failures, :class:`BrokerUnreachable`."""
    retriable = retriable or _kafka_error
    attempt = 0
    while True:
        try:
            value = call()
        except Exception as exc:
            if not retriable(exc):
                raise
            outage.down(exc)
            if outage.seconds() >= limit_s:
                raise BrokerUnreachable(
                    f"{outage.what}: no answer from the broker for {limit_s:.0f} s ({exc})"
                ) from exc
            sleep(backoff(attempt))
            attempt += 1
            continue
        outage.up()
        return value


def _kafka_error(exc: BaseException) -> bool:
    from confluent_kafka import KafkaException

    return isinstance(exc, KafkaException)


class _ClientLogs(logging.Filter):
    """One client's librdkafka log: its per-attempt connection lines (``FAIL``) dropped, since
    :class:`Outage` says it once; a ``FATAL`` line (it comes before, and sometimes instead of,
    the fatal error's callback) handed to the outage's ``on_fatal``."""

    def __init__(self, outage: Outage) -> None:
        super().__init__()
        self.outage = outage

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        facility = args[0] if args else ""  # librdkafka logs (facility, client, text)
        if facility == "FATAL" and self.outage.on_fatal is not None:
            self.outage.on_fatal(str(args[-1]))
        return facility != "FAIL"


def quiet_client_logs(config: dict[str, Any], outage: Outage) -> dict[str, Any]:
    """``config`` with librdkafka's log routed to a Python logger of its own (connection
    failures left to ``outage``, fatal errors to its ``on_fatal``) and its errors to ``outage``."""
    logger = logging.getLogger(f"app.librdkafka.{outage.what.replace(' ', '-')}")
    mine = [f for f in logger.filters if isinstance(f, _ClientLogs)]
    if mine:
        mine[0].outage = outage  # the latest client of that name (one per name at a time)
    else:
        logger.addFilter(_ClientLogs(outage))
    return {**config, "logger": logger, "error_cb": outage.error_cb}


class RepeatedClientErrors(logging.Filter):
    """aiokafka logs every failed reconnect (several lines per attempt, many a second while the
    broker is away): each message template of its WARNING-and-above passes once per ``every_s``,
    with the count of those held back since, so an outage leaves a line or two, not hundreds."""

    def __init__(self, every_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every_s, self.clock = every_s, clock
        self.passed_at: dict[str, float] = {}
        self.held: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("aiokafka") or record.levelno < logging.WARNING:
            return True
        template = f"{record.name}:{record.msg}"
        now = self.clock()
        if now - self.passed_at.get(template, -self.every_s) < self.every_s:
            self.held[template] = self.held.get(template, 0) + 1
            return False
        self.passed_at[template] = now
        held = self.held.pop(template, 0)
        if held:
            record.msg = f"{record.msg} [{held} more like this in the last {self.every_s:.0f} s]"
        return True


def fatal_exit(logger: logging.Logger, message: str, code: int = EX_TEMPFAIL) -> NoReturn:
    """End the process at once with one critical line, where unwinding would try to commit or
    flush against a broker that cannot take it (a delivery refused for good, a client failed
    for good, the broker away past the ride-through bound). Work not acked was not counted done,
    so the restarted process (``fraudlens up``, systemd) does it again."""
    logger.critical("%s: exit %d", message, code)
    logging.shutdown()
    os._exit(code)


def stop_on_fatal(what: str, logger: logging.Logger, code: int = EX_TEMPFAIL) -> Callable[[str], None]:
    """An ``on_fatal`` that ends the process with one line: a client that failed for good (e.g.
    an idempotent producer that finds the broker lost writes it had acked) cannot carry on,
    and a process that kept running without it would be alive but do nothing."""

    def stop(error: str) -> None:
        fatal_exit(logger, f"{what}: a Kafka client failed for good ({error})", code)

    return stop
