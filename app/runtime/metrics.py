"""Prometheus metrics of every role, served on ``FRAUDLENS_METRICS_PORT`` behind the relay's token.

``GET /metrics`` answers the text exposition format to a request that presents a valid token
(``Authorization: Bearer …`` — Prometheus' ``authorization`` scrape setting — or ``?token=``);
anything else gets 401, other paths 404, other methods 405. With no port set nothing listens.
The series are defined here, once, so every role's names stay consistent:

=================================================  ==========================================
series                                              meaning
=================================================  ==========================================
``fraudlens_verdicts_total{decision}``              verdicts sent (re-sends included)
``fraudlens_verdict_latency_seconds``               received by the scorer → verdict sent
``fraudlens_scorer_batch_size``                     transactions per scored batch
``fraudlens_dlq_records_total{reason}``             rejected inputs by reason code
``fraudlens_explainer_skipped_records_total``       internal-topic records no contract allows {topic}
``fraudlens_model_info{version}``                   the model version a scorer uses (value 1)
``fraudlens_explanations_total{status,priority}``    explanations finished (complete / failed)
``fraudlens_explanation_gap_seconds{priority}``     verdict made → explanation complete
``fraudlens_explanation_cache_total{result}``       cache hits and misses
``fraudlens_explanation_failures_total{reason}``    failed explanations by reason code
``fraudlens_explain_queue_depth{priority}``         requests waiting in this explainer's scheduler
``fraudlens_relay_clients``                         websocket clients connected to this relay
``fraudlens_relay_dropped_clients_total``           clients disconnected for lagging
``fraudlens_relay_records_total``                   verdicts and updates the relay read
``fraudlens_relay_rate_limited_frames_total``       client frames refused over the rate limit
``fraudlens_relay_flooding_clients_total``          clients closed (4029) for flooding
``fraudlens_relay_skipped_records_total``           input records not passed on {topic,reason}
``fraudlens_relay_feed_interruptions_total``        times the relay lost its brokers (feed interrupted)
``fraudlens_up_restarts_total{role}``               children ``fraudlens up`` restarted after a failure
=================================================  ==========================================
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

VERDICTS = Counter("fraudlens_verdicts", "Verdicts sent, by decision (re-sends included).", ["decision"])
VERDICT_LATENCY = Histogram(
    "fraudlens_verdict_latency_seconds",
    "From the scorer receiving a transaction to its verdict being acked by the broker.",
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "fraudlens_scorer_batch_size",
    "Transactions per scored batch.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
DLQ_RECORDS = Counter("fraudlens_dlq_records", "Rejected inputs sent to the DLQ, by reason code.", ["reason"])
EXPLAINER_SKIPPED = Counter(
    "fraudlens_explainer_skipped_records",
    "Records on the explainer's internal topics (verdicts, explain.*) no contract allows: skipped.",
    ["topic"],
)
MODEL_INFO = Gauge("fraudlens_model_info", "The model version this scorer uses (1).", ["version"])
GAP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
EXPLANATIONS = Counter(
    "fraudlens_explanations", "Explanations finished, by status and priority.", ["status", "priority"]
)
EXPLANATION_GAP = Histogram(
    "fraudlens_explanation_gap_seconds",
    "From the verdict to its explanation being complete, by priority.",
    ["priority"],
    buckets=GAP_BUCKETS,
)
EXPLANATION_CACHE = Counter(
    "fraudlens_explanation_cache", "Explanation cache lookups, by result.", ["result"]
)
EXPLANATION_FAILURES = Counter(
    "fraudlens_explanation_failures", "Failed explanations, by reason code.", ["reason"]
)
EXPLAIN_QUEUE_DEPTH = Gauge(
    "fraudlens_explain_queue_depth", "Requests waiting in this explainer's scheduler.", ["priority"]
)
RELAY_CLIENTS = Gauge("fraudlens_relay_clients", "Websocket clients connected to this relay.")
RELAY_DROPPED = Counter("fraudlens_relay_dropped_clients", "Clients disconnected because they lagged.")
RELAY_RECORDS = Counter("fraudlens_relay_records", "Verdicts and explanation updates this relay read.")
RELAY_RATE_LIMITED = Counter(
    "fraudlens_relay_rate_limited_frames", "Client frames refused as over the client's rate limit."
)
RELAY_DROPPED_FLOODING = Counter(
    "fraudlens_relay_flooding_clients", "Clients disconnected (4029) for flooding the relay with frames."
)
RELAY_SKIPPED = Counter(
    "fraudlens_relay_skipped_records",
    "Records on the relay's input topics it could not pass on, by topic and reason.",
    ["topic", "reason"],
)
RELAY_FEED_INTERRUPTIONS = Counter(
    "fraudlens_relay_feed_interruptions", "Times the relay lost its brokers (feed interrupted)."
)

UP_RESTARTS = Counter("fraudlens_up_restarts", "Children `fraudlens up` restarted after a failure.", ["role"])


def set_model(version: str) -> None:
    MODEL_INFO.clear()
    MODEL_INFO.labels(version=version).set(1)


def metrics_app(secret: bytes) -> Any:
    """The aiohttp application serving ``/metrics`` to token holders."""
    from aiohttp import web

    from app.relay.tokens import TokenError, presented_token, verify_token

    async def metrics(request: web.Request) -> web.Response:
        try:
            token = presented_token(request.query.get("token"), request.headers.get("Authorization"))
            verify_token(secret, token, time.time())
        except TokenError as exc:
            return web.Response(
                status=401,
                text=f"{exc}\n",
                headers={"WWW-Authenticate": 'Bearer realm="fraudlens"'},
            )
        body = generate_latest()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application(client_max_size=4096)
    app.router.add_get("/metrics", metrics)
    return app


async def _start_server(settings: Any) -> Any | None:
    """Serve ``/metrics`` on the configured port (None when no port is set); returns the runner."""
    if not settings.metrics_port:
        return None
    from aiohttp import web

    from app.relay.tokens import load_or_create_secret

    configured = settings.token_secret.get_secret_value() if settings.token_secret else None
    runner = web.AppRunner(metrics_app(load_or_create_secret(configured, settings.data_dir)), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.metrics_host, settings.metrics_port).start()
    log.info("metrics on http://%s:%d/metrics (token required)", settings.metrics_host, settings.metrics_port)
    return runner


def serve_in_thread(settings: Any, timeout_s: float = 15.0) -> Callable[[], None]:
    """The metrics server on an event loop of its own, in a thread: the one way every role hosts
    it (a scrape never runs on a role's own loop). Returns a function that stops it; raises what
    the start raised (a taken port)."""
    import asyncio
    import threading
    from concurrent.futures import Future

    if not settings.metrics_port:
        return lambda: None
    loop = asyncio.new_event_loop()
    started: Future[Any] = Future()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            started.set_result(loop.run_until_complete(_start_server(settings)))
        except BaseException as exc:
            started.set_exception(exc)
            return
        loop.run_forever()

    thread = threading.Thread(target=run, name="metrics", daemon=True)
    thread.start()
    runner = started.result(timeout_s)

    def stop() -> None:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout_s)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout_s)

    return stop
