"""``fraudlens relay``: the websocket server. One port: the console at ``/``, the websocket at
``/ws``, ``/healthz`` and ``/api/stats`` (token) for operators and tests.

Flow: ``StreamReader`` (thread; its ``pump`` hands one batch per loop turn) → ``Relay.ingest``
(event loop) → ``RelayState`` makes events, each serialised once → ``Relay.fanout`` offers the
frame to every matching client's ``Outbox`` (never waits) → one writer task per client sends it.
``/healthz`` says ``ready`` once the reader has read what was on its topics when it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from app.explain.policy import PriorityRules
from app.kafka import topics
from app.records.contracts import format_utc
from app.relay import http
from app.relay.client import Client
from app.relay.feed import FeedChange
from app.relay.history import Event, RelayState
from app.relay.protocol import (
    DEFAULT_PROTOCOL,
    DEFAULT_SUBSCRIPTION,
    PROTOCOL_VERSION,
    Filter,
    ProtocolError,
    ack_message,
    error_message,
    feed_message,
    gap_message,
    lagging_message,
    parse_client_message,
    peek_request_id,
)
from app.relay.ratelimit import (
    FLOOD_CLOSE_CODE,
    RATE_LIMITED,
    FloodGuard,
    FrameAction,
    rate_limited_text,
)
from app.relay.reading import Skip, SkippedRecords, SkipReason, read_record
from app.relay.stream import ExplainRequester, Record, StreamReader
from app.relay.tokens import Claims, TokenError, load_or_create_secret, verify_token
from app.runtime import metrics
from app.settings import RelaySettings

log = logging.getLogger(__name__)
LAGGING_CLOSE_CODE = 4008
TOKEN_EXPIRED_CLOSE_CODE = 4401
HOUSEKEEPING_S = 0.25
FLOOD_DRAIN_S = 5.0  # longest a flooding client's queued answers delay its close
GAP_SNAPSHOT_RECENT = 100  # a resume that finds a gap gets this many newest, unless it asks for `recent`


def utc_text(seconds: float) -> str:
    return format_utc(datetime.fromtimestamp(seconds, UTC))


class Relay:
    def __init__(self, settings: RelaySettings, secret: bytes, epoch: str | None = None) -> None:
        self.settings, self.secret = settings, secret
        self.epoch = epoch or secrets.token_hex(4)
        self.state = RelayState(
            self.epoch,
            PriorityRules.from_settings(settings),
            state_max=settings.relay_state_max,
            replay_max=settings.relay_replay_max,
            orphan_wait_s=settings.relay_orphan_wait_s,
        )
        self.clients: set[Client] = set()
        self.counters = {
            "connections": 0,
            "dropped_lagging": 0,
            "records": 0,
            "bad_records": 0,
            "rate_limited": 0,
            "dropped_flooding": 0,
        }
        self.ready = False
        self.requester: ExplainRequester | None = None
        self.skipped = SkippedRecords()
        self.feed_interrupted_at: float | None = None  # epoch seconds; None while the feed is live
        self.feed_reason = ""

    # -- the stream ---------------------------------------------------------------------------

    def ingest(self, records: list[Record]) -> None:
        events: list[Event] = []
        now = time.time()
        metrics.RELAY_RECORDS.inc(len(records))
        for topic, value, _timestamp in records:
            self.counters["records"] += 1
            try:
                message = read_record(topic, value, self.settings.relay_max_record_bytes)
                events += self._ingest_one(topic, message, now)
            except Skip as skip:
                self.counters["bad_records"] += 1
                self.skipped.note(topic, skip)
        self.fanout(events)

    def _ingest_one(self, topic: str, message: dict[str, Any], now: float) -> list[Event]:
        """The events of one record that met its contract. The state never refuses one; if it
        did, the record is skipped (logged in full) instead of stopping the relay."""
        try:
            if topic == topics.VERDICTS:
                return self.state.ingest_verdict(message)
            return self.state.ingest_update(message, now)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise Skip(SkipReason.UNEXPECTED, repr(exc)[:300]) from None

    def fanout(self, events: Iterable[Event]) -> None:
        events = list(events)
        if not events:
            return
        # What a protocol carries (``Client.gets``) and in which frame (``Event.frame_for``):
        # made once per protocol for the clients that take every event.
        every: dict[int, list[bytes]] = {}
        for client in list(self.clients):
            if not client.subscriptions or client.dropping:
                continue
            if client.match_all and client.protocol in every:
                frames = every[client.protocol]
            else:
                frames = [e.frame_for(client.protocol) for e in events if client.wants(e)]
                if client.match_all:
                    every[client.protocol] = frames
            if frames and not client.outbox.offer_many(frames):
                self._drop_lagging(client)

    def on_feed(self, change: FeedChange) -> None:
        """The consumer lost its brokers or has them back: every client is told, at once."""
        now = utc_text(time.time())
        if change.state == "interrupted":
            self.feed_interrupted_at, self.feed_reason = change.since, change.reason
            metrics.RELAY_FEED_INTERRUPTIONS.inc()
            log.warning("relay: live feed interrupted: %s", change.reason)
            message = feed_message("interrupted", utc_text(change.since), now, change.reason)
        else:
            self.feed_interrupted_at = None
            log.warning("relay: live feed resumed after %.1f s", change.at - change.since)
            message = feed_message("resumed", utc_text(change.since), now, resumed_at=utc_text(change.at))
        frame = orjson.dumps(message)
        for client in list(self.clients):
            if not client.dropping and not client.outbox.offer(frame):
                self._drop_lagging(client)

    def _drop_lagging(self, client: Client) -> None:
        if client.dropping:
            return
        client.dropping = True
        self.counters["dropped_lagging"] += 1
        metrics.RELAY_DROPPED.inc()
        log.info("relay: dropping a lagging client (%d messages queued)", len(client.outbox))
        asyncio.get_running_loop().create_task(self._send_lagging_and_close(client))

    async def _send_lagging_and_close(self, client: Client) -> None:
        queued = len(client.outbox)
        if client.writer is not None:
            client.writer.cancel()  # it may be stuck waiting for the socket to drain
        # The frame is written to the transport at once; only waiting for the drain can time out.
        with contextlib.suppress(TimeoutError, ConnectionClosed):
            await asyncio.wait_for(client.ws.send(orjson.dumps(lagging_message(queued)), text=True), 1.0)
        await client.ws.close(LAGGING_CLOSE_CODE, "lagging")

    async def housekeeping(self) -> None:
        stats_due = 0.0
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            now = time.time()
            self.fanout(self.state.release_orphans(now))
            self.skipped.flush()
            if time.monotonic() >= stats_due:
                stats_due = time.monotonic() + self.settings.relay_stats_every_s
                stats = orjson.dumps(
                    {
                        "type": "stats",
                        "server_time": utc_text(now),
                        **self.state.stats(now, len(self.clients)),
                    }
                )
                for client in list(self.clients):
                    if client.subscriptions and not client.dropping and not client.outbox.offer(stats):
                        self._drop_lagging(client)

    # -- HTTP ------------------------------------------------------------------------------------

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Every HTTP request, the websocket upgrade included: by the route table (``http.ROUTES``)."""
        path = http.request_path(request)
        route = http.ROUTES.get(path)
        if route is None:
            return http.refusal(HTTPStatus.NOT_FOUND, "not_found", f"no such page: {path[:100]}")
        claims = None
        if not route.public:
            try:
                claims = http.authorise(request, self.secret, time.time())
            except TokenError as exc:
                return http.refusal(HTTPStatus.UNAUTHORIZED, exc.code, str(exc))
        if route.kind == "websocket":
            return self._check_origin(request)
        if route.kind == "healthz":
            return http.json_response(
                HTTPStatus.OK, {"ok": True, "ready": self.ready, "relay_id": self.epoch}
            )
        if route.kind == "token" and claims is not None:
            return http.json_response(
                HTTPStatus.OK, {"subject": claims.subject, "expires_at": utc_text(claims.expires_at)}
            )
        if route.kind == "stats":
            return http.json_response(HTTPStatus.OK, self.operator_stats())
        return http.static_file(path) or http.refusal(HTTPStatus.NOT_FOUND, "not_found", "no such page")

    def _check_origin(self, request: Request) -> Response | None:
        origin, host = request.headers.get("Origin"), request.headers.get("Host")
        if not http.origin_allowed(
            origin, host, self.settings.relay_allowed_origins, self.settings.relay_allow_localhost
        ):
            return http.refusal(
                HTTPStatus.FORBIDDEN,
                "origin_refused",
                f"origin {origin!r:.200} is not allowed (FRAUDLENS_RELAY_ALLOWED_ORIGINS)",
            )
        return None

    def operator_stats(self) -> dict[str, Any]:
        return {
            "relay_id": self.epoch,
            "ready": self.ready,
            "last_event_id": self.state.last_event_id,
            "transactions": len(self.state.txs),
            "held_updates": sum(len(h.updates) for h in self.state.held.values()),
            **self.counters,
            **self.state.stats(time.time(), len(self.clients)),
        }

    # -- one connection ----------------------------------------------------------------------

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        try:  # checked in process_request already; read again for the claims
            claims = verify_token(self.secret, http.request_token(ws.request), time.time())
        except TokenError as exc:
            await ws.close(TOKEN_EXPIRED_CLOSE_CODE, exc.code)
            return
        guard = FloodGuard(self.settings, time.monotonic())
        client = Client(ws, claims, self.settings.relay_client_queue_max, guard)
        self.counters["connections"] += 1
        client.send(self._hello(claims))
        if self.feed_interrupted_at is not None:  # a client that connects mid-outage is told too
            since = utc_text(self.feed_interrupted_at)
            client.send(feed_message("interrupted", since, utc_text(time.time()), self.feed_reason))
        self.clients.add(client)
        client.writer = asyncio.create_task(client.write_loop())
        expiry = asyncio.get_running_loop().call_later(
            max(0.0, claims.expires_at - time.time()),
            lambda: asyncio.ensure_future(ws.close(TOKEN_EXPIRED_CLOSE_CODE, "token expired")),
        )
        try:
            async for frame in ws:
                if not self._on_frame(client, frame):
                    await self._close_flooding(client)
                    break
        except ConnectionClosed:
            pass
        finally:
            expiry.cancel()
            self.clients.discard(client)
            client.outbox.close()
            if client.writer is not None and not client.dropping:
                client.writer.cancel()

    def _hello(self, claims: Claims) -> dict[str, Any]:
        return {
            "type": "hello",
            "relay_id": self.epoch,
            "last_event_id": self.state.last_event_id,
            "server_time": utc_text(time.time()),
            "token_expires_at": utc_text(claims.expires_at),
            "protocol": PROTOCOL_VERSION,
            "feed": {
                "state": "live" if self.feed_interrupted_at is None else "interrupted",
                "since": None if self.feed_interrupted_at is None else utc_text(self.feed_interrupted_at),
            },
            "limits": {
                "max_frame_bytes": self.settings.relay_max_frame_bytes,
                "client_queue_max": self.settings.relay_client_queue_max,
                "replay_max": self.settings.relay_replay_max,
            },
        }

    def _on_frame(self, client: Client, frame: str | bytes) -> bool:
        """Carry out one client frame; False when the client floods and must be closed."""
        now = time.monotonic()
        action = client.guard.check(now)
        if action is not FrameAction.ALLOW:
            return self._refuse(client, action, None, "frames", frame)
        try:
            message = parse_client_message(frame)
            kind, request_id = message["type"], message.get("id")
            if kind == "subscribe":
                self._subscribe(client, message)
            elif kind == "unsubscribe":
                self._unsubscribe(client, message)
            elif kind == "explain_now":
                action = client.guard.check_explain(now)
                if action is not FrameAction.ALLOW:
                    return self._refuse(client, action, request_id, "explain_now")
                task = asyncio.get_running_loop().create_task(self._explain_now(client, message))
                client.requests.add(task)
                task.add_done_callback(client.requests.discard)
            else:
                pong = {"type": "pong", "server_time": utc_text(time.time())}
                client.send({**pong, "id": request_id} if request_id else pong)
        except ProtocolError as exc:
            client.send(error_message(exc.code, exc.message, exc.request_id))
        return True

    def _refuse(
        self, client: Client, action: FrameAction, request_id: str | None, what: str, frame: str | bytes = ""
    ) -> bool:
        """Answer an over-limit frame ``rate_limited``; False when the client must be closed."""
        self.counters["rate_limited"] += 1
        metrics.RELAY_RATE_LIMITED.inc()
        if action is FrameAction.CLOSE:
            return False
        text = rate_limited_text(self.settings, what)
        client.send(error_message(RATE_LIMITED, text, request_id or peek_request_id(frame)))
        return True

    async def _close_flooding(self, client: Client) -> None:
        self.counters["dropped_flooding"] += 1
        metrics.RELAY_DROPPED_FLOODING.inc()
        log.info("relay: closing a flooding client (%d frames refused)", client.guard.refused)
        if client.requests:  # requests already sent to the broker: the client learns how they ended
            await asyncio.wait(set(client.requests))  # bounded by the producer's message.timeout.ms
        with contextlib.suppress(TimeoutError):  # its answers go out first
            await asyncio.wait_for(client.outbox.drained(), FLOOD_DRAIN_S)
        await client.ws.close(FLOOD_CLOSE_CODE, "rate limited: too many frames")

    def _subscribe(self, client: Client, message: dict[str, Any]) -> None:
        """Replay or snapshot, then live: all in one step of the loop, so nothing falls between."""
        name = message.get("subscription", DEFAULT_SUBSCRIPTION)
        wanted = Filter.from_message(message.get("filter"))
        client.protocol = max(client.protocol, message.get("protocol", DEFAULT_PROTOCOL))
        frames: list[bytes] = []
        replayed: int | None = None
        recent = message.get("recent")
        resume = message.get("last_event_id")
        if resume is not None:
            missed = self.state.replay.after(self.epoch, resume)
            if missed is None:
                frames.append(orjson.dumps(gap_message(name, resume, self.state.replay.oldest_event_id)))
                recent = GAP_SNAPSHOT_RECENT if recent is None else recent  # "gap, then a snapshot"
            else:
                frames += [
                    e.frame_for(client.protocol)
                    for e in missed
                    if client.gets(e) and wanted.matches(e.transaction_id, e.decision, e.priority)
                ]
                replayed = len(frames)
        if replayed is None and (wanted.transaction_ids or recent or resume is not None):
            frames.append(orjson.dumps(self._snapshot(name, wanted, message, recent or 0, client.protocol)))
        client.subscriptions[name] = wanted
        client.set_subscriptions()
        frames.append(
            orjson.dumps(ack_message("subscribe", message.get("id"), subscription=name, replayed=replayed))
        )
        if not client.send(frames):
            self._drop_lagging(client)

    def _snapshot(
        self, name: str, wanted: Filter, message: dict[str, Any], recent: int, protocol: int
    ) -> dict[str, Any]:
        ids = (message.get("filter") or {}).get("transaction_ids")  # in the order the client gave
        state = self.state
        states = state.snapshot_of(ids, protocol) if ids else state.recent(wanted, recent, protocol)
        return {
            "type": "snapshot",
            "subscription": name,
            "last_event_id": self.state.last_event_id,
            "transactions": states,
        }

    def _unsubscribe(self, client: Client, message: dict[str, Any]) -> None:
        name = message.get("subscription")
        if name is None:
            client.subscriptions.clear()
        elif client.subscriptions.pop(name, None) is None:
            raise ProtocolError("unknown_subscription", f"no subscription named {name!r}", message.get("id"))
        client.set_subscriptions()
        client.send(ack_message("unsubscribe", message.get("id"), subscription=name))

    async def _explain_now(self, client: Client, message: dict[str, Any]) -> None:
        txid, request_id = message["transaction_id"], message.get("id")
        assert self.requester is not None
        try:
            await self.requester.request(txid, message.get("method"), message.get("kind"))
        except Exception as exc:
            client.send(
                error_message("explain_failed", f"could not request an explanation: {exc}", request_id)
            )
            return
        client.send(ack_message("explain_now", request_id, transaction_id=txid))


async def serve_relay(settings: RelaySettings) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code."""
    from app.kafka.admin import ensure_topics

    logging.getLogger("websockets").setLevel(logging.WARNING)  # request lines would show tokens
    secret = load_or_create_secret(
        settings.token_secret.get_secret_value() if settings.token_secret else None, settings.data_dir
    )
    await asyncio.to_thread(ensure_topics, settings)
    loop = asyncio.get_running_loop()
    relay = Relay(settings, secret)
    reader = StreamReader(settings, loop, relay.ingest, relay.on_feed)
    partitions = await asyncio.to_thread(reader.assign_all)
    relay.requester = ExplainRequester(settings)
    reader.start()
    pump = asyncio.create_task(reader.pump())
    started = time.monotonic()

    async def ready_when_caught_up() -> None:
        await reader.caught_up.wait()
        relay.ready = True
        log.info(
            "relay: caught up with its topics (%d records in %.1f s): ready",
            relay.counters["records"], time.monotonic() - started,
        )  # fmt: skip

    caught_up = asyncio.create_task(ready_when_caught_up())
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    housekeeping = asyncio.create_task(relay.housekeeping())
    metrics.RELAY_CLIENTS.set_function(lambda: len(relay.clients))
    stop_metrics = await asyncio.to_thread(metrics.serve_in_thread, settings)
    try:
        async with serve(
            relay.handler,
            settings.relay_host,
            settings.relay_port,
            process_request=relay.process_request,
            max_size=settings.relay_max_frame_bytes,
            compression=None,  # one shared frame per event; per-client deflate would cost N×
            ping_interval=20,
            close_timeout=10,
        ):
            log.info(
                "relay %s serving http://%s:%d/ (websocket /ws), reading %d partitions from the start",
                relay.epoch, settings.relay_host, settings.relay_port, partitions,
            )  # fmt: skip
            await stop.wait()
    finally:
        for task in (housekeeping, pump, caught_up):
            task.cancel()
        reader.stop()
        await asyncio.to_thread(reader.join, 5)
        relay.requester.close()
        await asyncio.to_thread(stop_metrics)
    return 0
