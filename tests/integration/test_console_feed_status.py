"""The console tells the truth about a stopped feed (issue 23 point 3): while the relay cannot reach
the broker its clients get ``feed`` ``interrupted``, then ``resumed`` once the broker is back, and
the verdicts written after that arrive; the console shows "live feed interrupted since HH:MM:SS",
then "resumed at …". Real broker, stopped and started again on the same port and data directory,
a real relay, a websockets client and headless Chromium.

No scorer runs: the test writes verdicts itself, so only the relay's side of an outage is tested.
"""

from __future__ import annotations

import copy
import json
import re
import time
from pathlib import Path
from typing import Any

import jsonschema
import orjson
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as connect_sync

from tests.integration.harness import RelayProcess, Stack, start_relay
from tests.integration.test_console import chromium

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
SERVER = jsonschema.Draft202012Validator(json.loads((SCHEMAS / "ws_server.schema.json").read_text()))
VALID_VERDICT = json.loads((SCHEMAS / "examples" / "verdict.valid.json").read_text())
NOTICE_S = 60  # generous: the relay judges its feed every second and waits 1.5 s before it speaks
CLOCK = r"\d\d:\d\d:\d\d"


def verdict(name: str) -> dict[str, Any]:
    out = copy.deepcopy(VALID_VERDICT)
    out["transaction_id"] = f"{name}-{time.time_ns()}"
    return out


def send_verdict(stack: Stack, value: dict[str, Any]) -> None:
    stack.produce([(value["transaction_id"].encode(), orjson.dumps(value))], topic="verdicts")


def broker_of(stack: Stack) -> Any:
    return [p for p in stack.processes if p.name == "broker" and p.alive()][-1]


def receive_until(
    ws: ClientConnection, done: Any, timeout: float, what: str, frames: list[dict[str, Any]]
) -> None:
    """Append every frame (each checked against the server schema) until ``done(frames)``."""
    deadline = time.monotonic() + timeout
    while not done(frames):
        left = deadline - time.monotonic()
        if left <= 0:
            seen = [(f["type"], f.get("state")) for f in frames if f["type"] != "stats"][-10:]
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last {seen}")
        try:
            frame = orjson.loads(ws.recv(left))
        except TimeoutError:
            continue
        SERVER.validate(frame)
        frames.append(frame)


def has_feed(state: str) -> Any:
    return lambda frames: any(f["type"] == "feed" and f["state"] == state for f in frames)


def has_verdict(txid: str) -> Any:
    return lambda frames: any(f["type"] == "verdict" and f["transaction_id"] == txid for f in frames)


def open_client(relay: RelayProcess) -> tuple[ClientConnection, dict[str, Any]]:
    ws = connect_sync(f"{relay.ws}?token={relay.token()}", legacy=True)  # closed by the test
    hello = orjson.loads(ws.recv(30))
    SERVER.validate(hello)
    ws.send(orjson.dumps({"type": "subscribe"}).decode())
    return ws, hello


def test_a_client_is_told_when_the_feed_stops_and_when_it_resumes(stack: Stack) -> None:
    relay = start_relay(stack)
    ws, hello = open_client(relay)
    assert hello["protocol"] == 3 and hello["feed"] == {"state": "live", "since": None}, hello
    frames: list[dict[str, Any]] = []
    before = verdict("before")
    send_verdict(stack, before)
    receive_until(
        ws, has_verdict(before["transaction_id"]), NOTICE_S, "a verdict while the feed is live", frames
    )
    assert not has_feed("interrupted")(frames), "the feed was reported down while the broker ran"

    stopped_at = time.time()
    broker_of(stack).stop()
    receive_until(ws, has_feed("interrupted"), NOTICE_S, "feed interrupted", frames)
    interrupted = next(f for f in frames if f["type"] == "feed")
    assert stopped_at - 5 <= _epoch(interrupted["since"]) <= time.time(), (stopped_at, interrupted)

    late, late_hello = open_client(relay)  # a client that connects during the outage is told too
    assert late_hello["feed"]["state"] == "interrupted", late_hello
    late_frames: list[dict[str, Any]] = []
    receive_until(late, has_feed("interrupted"), 30, "feed interrupted after hello", late_frames)
    late.close()

    stack.start_broker()  # the same port and data directory
    receive_until(ws, has_feed("resumed"), NOTICE_S, "feed resumed", frames)
    resumed = [f for f in frames if f["type"] == "feed"][-1]
    assert resumed["since"] == interrupted["since"] and _epoch(resumed["resumed_at"]) >= _epoch(
        resumed["since"]
    )
    after = verdict("after")
    send_verdict(stack, after)
    receive_until(
        ws, has_verdict(after["transaction_id"]), NOTICE_S, "a verdict written after the restart", frames
    )
    feeds = [f["state"] for f in frames if f["type"] == "feed"]
    assert feeds == ["interrupted", "resumed"], feeds  # one notice each way, not one per retry
    ws.close()
    assert relay.process.alive()
    log = relay.process.log.read_text(errors="replace")
    assert len(re.findall("live feed interrupted", log)) == 1 and "Connection refused" not in log, log[-2000:]


def _epoch(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()


def test_the_console_shows_a_banner_while_the_feed_is_interrupted(stack: Stack, tmp_path: Path) -> None:
    relay = start_relay(stack)
    with chromium(tmp_path) as browser:
        page = browser.pages[0] if browser.pages else browser.new_page()
        page.set_default_timeout(NOTICE_S * 1000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{relay.http}/?token={relay.token()}")
        page.wait_for_selector('#conn-state[data-state="open"]')
        before = verdict("page-before")
        send_verdict(stack, before)
        page.wait_for_selector(f'tr.row[data-txid="{before["transaction_id"]}"]')
        banner = page.locator("#feed-banner")
        assert banner.is_hidden(), "a banner while the feed is live"

        broker_of(stack).stop()
        page.wait_for_selector('#feed-banner[data-state="interrupted"]')
        assert banner.is_visible()
        assert re.match(rf"live feed interrupted since {CLOCK}\b", banner.inner_text()), banner.inner_text()
        page.screenshot(path=str(tmp_path / "console-feed-interrupted.png"))
        assert page.locator("#conn-state").get_attribute("data-state") == "open"  # the relay is there

        stack.start_broker()
        page.wait_for_selector('#feed-banner[data-state="resumed"]')
        text = banner.inner_text()
        assert re.match(rf"live feed resumed at {CLOCK} \(interrupted since {CLOCK}\)", text), text
        assert "interrupted since" not in text.split("(")[0]  # the interrupted notice is gone
        after = verdict("page-after")
        send_verdict(stack, after)
        page.wait_for_selector(f'tr.row[data-txid="{after["transaction_id"]}"]')
        page.screenshot(path=str(tmp_path / "console-feed-resumed.png"))
        assert not errors, errors


def test_a_frozen_broker_interrupts_the_feed_too(stack: Stack) -> None:
    """SIGSTOP keeps the broker's connections open: only its silence shows (feed stall)."""
    relay = start_relay(stack)
    ws, _hello = open_client(relay)
    frames: list[dict[str, Any]] = []
    before = verdict("thaw-before")
    send_verdict(stack, before)
    receive_until(
        ws, has_verdict(before["transaction_id"]), NOTICE_S, "a verdict while the feed is live", frames
    )
    broker = broker_of(stack)
    with broker.frozen():
        receive_until(ws, has_feed("interrupted"), NOTICE_S, "feed interrupted by a frozen broker", frames)
    interrupted = next(f for f in frames if f["type"] == "feed")
    assert "has not answered" in interrupted["message"], interrupted
    receive_until(ws, has_feed("resumed"), NOTICE_S, "feed resumed after SIGCONT", frames)
    after = verdict("thaw-after")
    send_verdict(stack, after)
    receive_until(ws, has_verdict(after["transaction_id"]), NOTICE_S, "a verdict after the thaw", frames)
    ws.close()
