"""Security and hostile input against real processes (broker, scorer, explainer, relay):
tokens on every route of every role, a flooding websocket client, hostile frames and HTTP
requests, and no secret or full card id in any log, metrics page or error."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.model.generator import generate_transactions
from app.records.malformed import malformed_cases
from app.records.masking import mask_card_id
from app.relay import http
from app.relay.ratelimit import FLOOD_CLOSE_CODE
from app.relay.tokens import create_token
from app.runtime.metrics import metrics_app
from tests.integration.harness import (
    RELAY_TOKEN_SECRET,
    RelayProcess,
    Stack,
    SteadyProducer,
    free_port,
    start_relay,
    wait_until,
)
from tests.integration.test_relay import Client

SASL_PASSWORD = f"sasl-password-{os.urandom(8).hex()}"  # a marker: must never show anywhere
SECRETS = {
    "FRAUDLENS_TOKEN_SECRET": RELAY_TOKEN_SECRET,  # every role verifies the tokens the tests sign
    "FRAUDLENS_KAFKA_SASL_USERNAME": "fraudlens",
    "FRAUDLENS_KAFKA_SASL_PASSWORD": SASL_PASSWORD,
}


@dataclass
class Secured:
    stack: Stack
    relay: RelayProcess
    metrics: dict[str, str]  # role -> its /metrics URL
    card_ids: set[str]  # every card id this module sent


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Secured]:
    stack = Stack(root=tmp_path_factory.mktemp("security-stack"), models_dir=models_dir)
    stack.start_broker()
    try:
        ports = {role: free_port() for role in ("scorer", "explainer", "relay")}
        for role in ("scorer", "explainer"):
            stack.start_worker(role, FRAUDLENS_METRICS_PORT=str(ports[role]), **SECRETS)
        sasl = {k: v for k, v in SECRETS.items() if k != "FRAUDLENS_TOKEN_SECRET"}  # start_relay sets it
        relay = start_relay(stack, FRAUDLENS_METRICS_PORT=str(ports["relay"]), **sasl)
        urls = {role: f"http://127.0.0.1:{port}/metrics" for role, port in ports.items()}
        for role, url in urls.items():
            wait_until(lambda url=url: _status(url) == 401, 120, f"the {role}'s /metrics")
        yield Secured(stack, relay, urls, set())
    finally:
        stack.stop_all()


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def _status(url: str) -> int | None:
    try:
        return _get(url)[0]
    except OSError:  # not listening yet
        return None


def _send(secured: Secured, count: int, seed: int) -> list[dict[str, Any]]:
    sent = list(generate_transactions(count, seed=seed))
    secured.card_ids |= {tx["card_id"] for tx in sent}
    secured.stack.produce_transactions(sent)
    return sent


# -- tokens ----------------------------------------------------------------------------------------


def _bad_tokens() -> dict[str, str | None]:
    secret = RELAY_TOKEN_SECRET.encode()
    return {
        "missing": None,
        "garbage": "garbage",
        "forged": create_token(b"not-this-deployment-secret-0123", 600, time.time()),
        "expired": create_token(secret, 5, time.time() - 60),
        "tampered": create_token(secret, 600, time.time())[:-2] + "AA",
    }


def _refused_http(url: str, token: str | None) -> list[str]:
    """Why each way of presenting ``token`` was not refused (empty: all refused with 401)."""
    problems = []
    ways: list[tuple[str, dict[str, str]]] = [("", {})]
    if token is not None:
        ways = [(f"?token={token}", {}), ("", {"Authorization": f"Bearer {token}"})]
    for query, headers in ways:
        status, body = _get(url + query, headers)
        if status != 401 or b"fraudlens_" in body:
            problems.append(f"{url}{query} {headers}: {status}")
    return problems


async def _refused_websocket(url: str, token: str | None) -> int:
    with pytest.raises(InvalidStatus) as caught:
        await connect(url if token is None else f"{url}?token={token}")
    return caught.value.response.status_code


def test_every_route_of_every_role_refuses_a_missing_bad_or_expired_token(secured: Secured) -> None:
    relay = secured.relay
    token_routes = [r for r in http.ROUTES.values() if not r.public]
    public = {r.path for r in http.ROUTES.values() if r.public}
    # The only routes open without a token: the console's code and style, and the liveness probe.
    assert public == {"/", "/index.html", "/console.js", "/kinds.js", "/console.css", "/healthz"}, public
    assert {r.kind for r in token_routes} >= {"websocket", "stats", "token"}
    metrics_paths = {
        resource.canonical for resource in metrics_app(RELAY_TOKEN_SECRET.encode()).router.resources()
    }
    assert metrics_paths == {"/metrics"}, metrics_paths  # the metrics server's own route table
    problems: list[str] = []
    for name, token in _bad_tokens().items():
        for route in token_routes:
            if route.kind == "websocket":
                status = asyncio.run(_refused_websocket(relay.ws, token))
                if status != 401:
                    problems.append(f"/ws with a {name} token: {status}")
            else:
                problems += [f"{name}: {p}" for p in _refused_http(relay.http + route.path, token)]
        for url in secured.metrics.values():
            for path in metrics_paths:
                problems += [f"{name}: {p}" for p in _refused_http(url.replace("/metrics", path), token)]
    assert not problems, problems
    # and a valid token opens each of them (so the refusals above are about the token)
    good = relay.token()
    for route in token_routes:
        if route.kind != "websocket":
            assert _get(f"{relay.http}{route.path}?token={good}")[0] == 200, route
    for url in secured.metrics.values():
        assert _get(url, {"Authorization": f"Bearer {good}"})[0] == 200, url


# -- flooding ------------------------------------------------------------------------------------


async def _flood(relay: RelayProcess, frames: int) -> tuple[list[dict[str, Any]], int | None]:
    """Send ``frames`` pings without reading, then read until closed: (messages, close code)."""
    ws = await connect(f"{relay.ws}?token={relay.token()}", max_queue=None)
    ping = orjson.dumps({"type": "ping"}).decode()
    try:
        for _ in range(frames):
            await ws.send(ping)
    except ConnectionClosed:
        pass  # closed by the relay mid-flood
    messages: list[dict[str, Any]] = []
    try:
        while True:
            messages.append(orjson.loads(await asyncio.wait_for(ws.recv(), 60)))
    except ConnectionClosed as closed:
        return messages, closed.rcvd.code if closed.rcvd else None


def test_a_flooding_client_is_refused_then_closed_while_others_keep_receiving(secured: Secured) -> None:
    relay, stack = secured.relay, secured.stack
    load = SteadyProducer(stack, rate=50, seed=301)

    async def run() -> tuple[list[dict[str, Any]], int | None, Client, Client]:
        watcher = await Client.open(relay, validate=False)
        await watcher.subscribe()
        reading = asyncio.create_task(_read_all(watcher))
        load.start()
        flooded, code = await _flood(relay, 5000)
        explainer = await Client.open(relay)  # a burst of explain_now: the stricter limit
        for i in range(15):
            await explainer.send({"type": "explain_now", "id": f"e{i}", "transaction_id": f"tx-none-{i}"})
        await explainer.until(
            lambda m: any(x.get("code") == "rate_limited" for x in m), 60, "explain_now rate_limited"
        )
        sent_at_close = len(load.sent)
        await asyncio.to_thread(wait_until, lambda: len(load.sent) >= sent_at_close + 100, 60, "100 more")
        load.stop.set()
        await asyncio.to_thread(load.join, 30)
        wanted = {txid for _, txid in load.sent}
        secured.card_ids.update(tx["card_id"] for tx in load.transactions.values())
        await asyncio.wait_for(_has_verdicts(watcher, wanted), 120)  # read by the reading task
        reading.cancel()
        await explainer.ws.close()
        await watcher.ws.close()
        return flooded, code, watcher, explainer

    flooded, code, _watcher, explainer = asyncio.run(run())
    kinds = [m.get("code", m["type"]) for m in flooded]
    assert code == FLOOD_CLOSE_CODE, (code, kinds[-5:])
    # the burst (40) answered, then one rate_limited per strike (100, refilled at 20/s), then closed
    assert kinds.count("pong") <= 60 and kinds.count("rate_limited") >= 100, Counter(kinds)
    limited = [m for m in explainer.messages if m.get("code") == "rate_limited"]
    assert limited and all(m["id"].startswith("e") for m in limited), "the refusal names the request"
    stats = relay.stats()
    assert stats["dropped_flooding"] >= 1 and stats["rate_limited"] >= 50, stats
    assert relay.process.alive()


async def _read_all(client: Client) -> None:
    while True:
        await client.next(600)


async def _has_verdicts(client: Client, wanted: set[str]) -> None:
    while not wanted <= client.verdict_ids():
        await asyncio.sleep(0.1)  # polling what the reading task collects, like wait_until


# -- hostile frames and requests ------------------------------------------------------------------

HOSTILE_FRAMES: list[tuple[str | bytes, str]] = [
    ("[" * 5000 + "]" * 5000, "malformed_json"),  # deeper than any parser's limit
    ('{"a":' * 1020 + "1" + "}" * 1020, "malformed_json"),  # within orjson's 1024, beyond Python's 1000
    ('{"type":"subscribe","recent":1e400}', "malformed_json"),
    ('{"type":"subscribe","recent":' + "9" * 500 + "}", "malformed_json"),
    ('{"type":"subscribe","recent":123456789012345678901234567890}', "invalid_message"),
    ('{"type":"ping","type":"subscribe"}', "duplicate_key"),
    ('{"type":"ping","id":"' + "x" * 60_000 + '"}', "invalid_message"),
    ('{"type":"ping","' + "k" * 60_000 + '":1}', "invalid_message"),
    ('{"type":"ping","id":"\\ud800"}', "malformed_json"),
    ('{"type":"ping"}'.encode("utf-16-le").decode("latin-1"), "malformed_json"),
    ('{"type":"ping"}'.encode("utf-16"), "binary_not_supported"),
    ("\u202e\u0000\uffff", "malformed_json"),
]

RAW_REQUESTS = [
    b"GET //[x HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /\xff\xfe HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /ws?token=%ff%fe%00 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /api/stats HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer \xff\xfe\xfd\r\n\r\n",
    b"GET /api/stats HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 20_000 + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + b"".join(b"H%d: v\r\n" % i for i in range(300)) + b"\r\n",
    b"POST /api/stats HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64),  # a TLS hello
    "GET /ü HTTP/1.1\r\nHost: a\r\n\r\n".encode("utf-16"),
    b"GET / HTTP/0.9\r\n\r\n",
    b"\r\n\r\n\r\n",
]


def _raw(port: int, request: bytes) -> bytes:
    """Send raw bytes; the first 200 bytes of whatever comes back before the relay closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
        return answer[:200]


def test_hostile_frames_and_requests_get_errors_and_the_relay_keeps_serving(secured: Secured) -> None:
    relay = secured.relay

    async def frames() -> list[tuple[str, str]]:
        client = await Client.open(relay)
        got = []
        for frame, code in HOSTILE_FRAMES:
            await client.send(frame)
            answer = await client.next_not_stats()
            got.append((code, answer.get("code", answer["type"])))
            assert len(orjson.dumps(answer)) < 1000, "an error quotes little of what it refuses"
        await client.ws.close()
        return got

    got = asyncio.run(frames())
    assert [want for want, _ in got] == [have for _, have in got], got

    async def invalid_utf8(data: bytes) -> int | None:
        client = await Client.open(relay)
        await client.ws.send(data, text=True)  # a text frame that is not UTF-8
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await client.next(30)
        return closed.value.rcvd.code if closed.value.rcvd else None

    for data in (b'{"type":"ping","id":"\xff\xfe"}', '{"type":"ping"}'.encode("utf-16")):
        assert asyncio.run(invalid_utf8(data)) == 1007  # invalid frame payload data

    ports = {"relay": relay.port} | {role: _port(url) for role, url in secured.metrics.items()}
    for role, port in ports.items():  # the relay's HTTP side and every role's /metrics server
        for request in RAW_REQUESTS:
            answer = _raw(port, request)
            # aiohttp answers in the request's version where it parsed one (HTTP/0.9 404 to a
            # 0.9 request line) and as HTTP/1.0 where it could not: any version, a 4xx status
            status = re.match(rb"HTTP/\d\.\d (\d{3}) ", answer)
            assert not answer or (status and status[1].startswith(b"4")), (role, request[:60], answer)
            assert RELAY_TOKEN_SECRET.encode() not in answer

    assert all(p.alive() for p in secured.stack.processes), [p.tail() for p in secured.stack.processes]
    sent = _send(secured, 30, seed=302)

    async def normal_client() -> set[str]:
        client = await Client.open(relay)
        await client.subscribe(filter={"transaction_ids": [tx["transaction_id"] for tx in sent]})
        wanted = {tx["transaction_id"] for tx in sent}
        await client.until(lambda _m: wanted <= client.verdict_ids() | _snapshot_ids(client), 120, "30")
        await client.ws.close()
        return wanted

    asyncio.run(normal_client())


def _snapshot_ids(client: Client) -> set[str]:
    return {
        s["transaction_id"]
        for m in client.of_type("snapshot")
        for s in m["transactions"]
        if s["verdict"] is not None
    }


# -- secrets and card ids --------------------------------------------------------------------------


def test_no_secret_or_full_card_id_in_any_log_metrics_page_or_frame(secured: Secured) -> None:
    """Runs last in this module: the logs then hold everything the tests above made happen."""
    stack, relay = secured.stack, secured.relay
    # Malformed inputs keyed by card id, as a producer sends them: the DLQ path sees the card ids
    # in the key and (most kinds) inside the value.
    bases = list(generate_transactions(20, seed=304))
    bad = [
        (base["card_id"].encode(), case.value)
        for base, case in zip(bases, malformed_cases(20, seed=303, valid_source=bases), strict=True)
    ]
    secured.card_ids |= {base["card_id"] for base in bases}
    stack.produce(bad)
    # SASL/PLAIN through both client libraries (the embedded broker accepts any PLAIN login):
    # a relay and a scorer (librdkafka) serving, and an explainer (Faust's aiokafka) started up,
    # then stopped.
    sasl_env = {
        "FRAUDLENS_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "FRAUDLENS_KAFKA_SASL_MECHANISM": "PLAIN",
        "FRAUDLENS_KAFKA_SASL_USERNAME": "fraudlens",
        "FRAUDLENS_KAFKA_SASL_PASSWORD": SASL_PASSWORD,
    }
    sasl_relay = start_relay(stack, "relay-sasl", **sasl_env)

    async def frames() -> list[dict[str, Any]]:
        client = await Client.open(relay)
        await client.subscribe()
        wanted = {tx["transaction_id"] for tx in _send(secured, 200, seed=303)}
        await client.until(lambda _m: wanted <= client.verdict_ids(), 120, "200 verdicts")
        await client.ws.close()
        return client.messages

    messages = asyncio.run(frames())
    assert sasl_relay.stats()["records"] > 0, "the SASL relay reads the topics"
    sasl = stack.start_worker("scorer", FRAUDLENS_APP_ID="fraudlens-sasl", FRAUDLENS_INSTANCE_ID="sasl",
                              FRAUDLENS_TOKEN_SECRET=RELAY_TOKEN_SECRET, **sasl_env)  # fmt: skip
    started = (b"scoring with model", b"assigned transactions partitions")  # the group joined
    wait_until(lambda: all(line in sasl.log.read_bytes() for line in started), 120, "the SASL scorer")
    sasl_env["FRAUDLENS_TOKEN_SECRET"] = RELAY_TOKEN_SECRET
    sasl_explainer = stack.start_worker(
        "explainer", FRAUDLENS_APP_ID="fraudlens-sasl", FRAUDLENS_INSTANCE_ID="sasl", **sasl_env
    )
    authenticated = b"Authenticated as fraudlens via PLAIN"  # aiokafka's line
    wait_until(lambda: authenticated in sasl_explainer.log.read_bytes(), 120, "the SASL explainer")
    sasl_explainer.stop()
    sasl.stop()
    token = relay.token()
    bearer = {"Authorization": f"Bearer {token}"}
    pages = {role: _get(url, bearer)[1] for role, url in secured.metrics.items()}
    pages["relay /api/stats"] = _get(f"{relay.http}/api/stats?token={token}")[1]
    pages["relay frames"] = orjson.dumps(messages)
    # Requests the servers cannot parse, carrying a valid token: libraries log such request lines.
    ports = [relay.port, *(_port(url) for url in secured.metrics.values())]
    for port in ports:
        for template in (
            b"GET /metrics?token=%s HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n",
            b"GET //[x?token=%s HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /api/stats?token=%s HTTP/9.9\r\n\r\n",
            b"GET /api/stats HTTP/1.1\r\nAuthorization: Bearer %s\r\nX: \xff\r\nContent-Length: x\r\n\r\n",
        ):
            _raw(port, template % token.encode())
    stack.stop_all()  # shutdown lines too
    logs = {p.log.name: p.log.read_bytes() for p in stack.processes}
    assert all(logs.values()), "every process logged something"
    secrets = {
        "token secret": RELAY_TOKEN_SECRET.encode(),
        "SASL password": SASL_PASSWORD.encode(),
        "a valid token": token.encode(),
    }
    cards = {card.encode() for card in secured.card_ids}
    assert len(cards) > 100
    leaks = [
        f"{what} in {where}"
        for where, text in {**logs, **pages}.items()
        for what, needle in [*secrets.items(), *((f"card {c.decode()}", c) for c in cards)]
        if needle in text
    ]
    assert not leaks, leaks[:20]
    masked = {m["verdict"]["card_id"] for m in messages if m["type"] == "verdict"}
    assert masked and masked <= {mask_card_id(c) for c in secured.card_ids}, sorted(masked)[:5]
