"""The console's pause (issue 20 point 3: at 50 verdicts/s rows move under the cursor). While paused
no row is added, moved or removed; what arrives meanwhile waits, counted ("paused · N new"), and
resume applies it in arrival order, so the table ends as it would have without the pause.

Headless Chromium on the real stack (the fixtures of test_console.py), and on a scripted relay for
what the stack cannot be made to do on cue: more new verdicts during a pause than the table keeps,
and a reconnect answered by ``gap`` and a snapshot."""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import orjson
from playwright import sync_api as playwright_api
from websockets.sync.client import connect as connect_sync

from app.model.generator import generate_transactions
from tests.integration.harness import Process, RelayProcess, Stack
from tests.integration.test_console import chromium, console, open_console  # noqa: F401

CONSOLE_DIR = Path(__file__).resolve().parents[2] / "app" / "console"
MAX_ROWS = 500  # console.js: the rows the table keeps

ROW_IDS = "() => [...document.querySelectorAll('#rows tr.row')].map((r) => r.dataset.txid)"
ROW_COUNT = "(n) => document.querySelectorAll('#rows tr.row').length === n"
# Every row added to or removed from the table (a row that moves is both), and every connection
# state the header shows, from now on.
WATCH = """() => {
  window.rowChanges = 0;
  new MutationObserver((records) => {
    for (const r of records) window.rowChanges += r.addedNodes.length + r.removedNodes.length;
  }).observe(document.getElementById("rows"), {childList: true});
  const conn = document.getElementById("conn-state");
  window.connStates = [];
  new MutationObserver(() => window.connStates.push(conn.dataset.state))
    .observe(conn, {attributes: true, attributeFilter: ["data-state"]});
}"""
ARRIVED = "(n) => window.rowChanges > 0 || document.getElementById('pause-state').dataset.new === String(n)"
RECONNECTED = "() => window.connStates.includes('reconnecting') && window.connStates.at(-1) === 'open'"
# Each row as the analyst sees it: id, decision, priority, explanation cell's state and text.
TABLE = """() => [...document.querySelectorAll('#rows tr.row')].map((r) => [
  r.dataset.txid, r.className, r.dataset.priority, r.querySelector('.expl').dataset.state,
  r.querySelector('.expl').innerText])"""


def relay_order(relay: RelayProcess) -> list[str]:
    """The relay's own order of the transactions it holds, newest first (a snapshot of ``recent``):
    the order its clients got their verdicts in, so the order of an unpaused console's rows."""
    ws = connect_sync(f"{relay.ws}?token={relay.token()}", legacy=True)
    try:
        assert orjson.loads(ws.recv(30))["type"] == "hello"
        ws.send(orjson.dumps({"type": "subscribe", "subscription": "order", "recent": 1000}).decode())
        while (frame := orjson.loads(ws.recv(30)))["type"] != "snapshot":
            pass
        return [state["transaction_id"] for state in frame["transactions"]]
    finally:
        ws.close()


def test_pause_holds_the_rows_still_and_resume_catches_up(
    stack: Stack,
    console: tuple[Process, RelayProcess],  # noqa: F811 (test_console.py's fixture)
    tmp_path: Path,
) -> None:
    explainer, relay = console
    transactions = list(generate_transactions(120, seed=203))
    shown_first, while_paused = transactions[:40], transactions[40:]
    with chromium(tmp_path) as browser:
        page, errors = open_console(browser, relay)
        with explainer.frozen():  # the first rows wait for their explanations
            stack.produce_transactions(shown_first)
            page.wait_for_function(ROW_COUNT, arg=len(shown_first))
            page.evaluate(WATCH)
            page.click("#pause")
        still = page.evaluate(ROW_IDS)
        assert sorted(still) == sorted(tx["transaction_id"] for tx in shown_first)
        assert page.locator('#rows .expl[data-state="loading"]').count() > 0
        stack.produce_transactions(while_paused[:40])
        page.evaluate("() => socket.close()")  # a reconnect while paused: the relay replays the rest
        stack.produce_transactions(while_paused[40:])
        page.wait_for_function(RECONNECTED)
        # The counter reaching every transaction produced proves their verdicts reached the page;
        # the rows on screen take their explanations in place. Either wait ends early if a row moves.
        page.wait_for_function(ARRIVED, arg=len(while_paused))
        page.wait_for_function(
            "() => window.rowChanges > 0 || !document.querySelector('.expl[data-state=loading]')"
        )
        assert page.evaluate(ROW_IDS) == still, "rows moved while paused"
        assert page.evaluate("window.rowChanges") == 0, "a row was added or removed while paused"
        assert page.inner_text("#pause-state") == f"paused · {len(while_paused)} new"
        assert page.inner_text("#pause") == "Resume feed"

        page.click("#pause")
        page.wait_for_function(ROW_COUNT, arg=len(transactions))
        rows = page.evaluate(ROW_IDS)
        assert sorted(rows) == sorted(tx["transaction_id"] for tx in transactions), (
            "every verdict has its row"
        )
        assert rows == relay_order(relay), "not the order the feed gives without a pause"
        assert rows[-len(still) :] == still
        assert page.locator("#pause-state").is_hidden() and page.inner_text("#pause") == "Pause feed"

        # The key "p" toggles it too, except while typing in a field.
        page.keyboard.press("p")
        assert page.locator('#pause-state[data-state="paused"]').is_visible()
        page.locator("#filter-search").press("p")
        assert page.input_value("#filter-search") == "p" and page.inner_text("#pause") == "Resume feed"
        page.fill("#filter-search", "")
        page.locator("#filter-search").blur()
        page.keyboard.press("p")
        assert page.inner_text("#pause") == "Pause feed"
        assert not errors, errors


# -- a scripted relay: the console's files from the tree, a WebSocket the test speaks for ----------

FAKE_SOCKET = """
window.sockets = [];
window.WebSocket = class {
  static OPEN = 1;
  constructor(url) {
    this.readyState = 0; this.sent = [];
    window.sockets.push(this);
    setTimeout(() => { this.readyState = 1; this.onopen(); }, 0);
  }
  send(text) { this.sent.push(JSON.parse(text)); }
  close() { this.readyState = 3; this.onclose({ code: 1006, reason: "dropped by the test" }); }
};
window.relaySays = (messages) => {
  const ws = window.sockets.at(-1);
  for (const message of messages) ws.onmessage({ data: JSON.stringify(message) });
};
"""


def serve_console(route: playwright_api.Route) -> None:
    name = urlparse(route.request.url).path.lstrip("/") or "index.html"
    path = CONSOLE_DIR / name
    if not path.is_file():
        route.fulfill(status=404)
        return
    route.fulfill(body=path.read_bytes(), content_type=mimetypes.guess_type(name)[0] or "text/plain")


class Relay:
    """Numbered events in the relay protocol's shape (docs/protocol.md)."""

    def __init__(self) -> None:
        self.seq = 0

    def _id(self) -> str:
        self.seq += 1
        return f"test-{self.seq}"

    def verdict(self, txid: str, decision: str = "deny") -> dict[str, Any]:
        verdict = {
            "transaction_id": txid, "card_id": "card-000042", "decision": decision, "score": 0.95,
            "amount": 42.5, "currency": "EUR", "scored_at": "2026-11-28T12:00:00.131002Z",
        }  # fmt: skip
        return {"type": "verdict", "event_id": self._id(), "transaction_id": txid, "priority": "high",
                "explain": "auto", "verdict": verdict}  # fmt: skip

    def update(self, txid: str, status: str = "complete") -> dict[str, Any]:
        top = [{"feature": "amount", "contribution": 1.5, "reason": f"{txid} is large"}]
        update = {"transaction_id": txid, "status": status, "priority": "high", "top_features": top}
        return {"type": "explanation", "event_id": self._id(), "transaction_id": txid, "status": status,
                "priority": "high", "update": update}  # fmt: skip

    @staticmethod
    def state(message: dict[str, Any], update: dict[str, Any] | None) -> dict[str, Any]:
        return {"transaction_id": message["transaction_id"], "priority": "high", "explain": "auto",
                "verdict": message["verdict"], "status": update["status"] if update else "awaiting",
                "explanation": update["update"] if update else None}  # fmt: skip


def live_rows(events: list[tuple[str, bool]]) -> tuple[list[str], int]:
    """The rows a live table ends with, newest first, and how many it added: a verdict for a
    transaction without a row adds one on top, and beyond MAX_ROWS the oldest goes (events: (txid,
    is a verdict))."""
    rows: list[str] = []
    added = 0
    for txid, is_verdict in events:
        if is_verdict and txid not in rows:
            rows.insert(0, txid)
            del rows[MAX_ROWS:]
            added += 1
    return rows, added


def test_resume_after_a_long_pause_and_a_gap_ends_as_the_live_table(tmp_path: Path) -> None:
    relay = Relay()
    first = [relay.verdict(f"t{i:03}", ("deny", "review", "approve")[i % 3]) for i in range(30)]
    before = first + [relay.update(f"t{i:03}") for i in range(10)]
    shown = [relay.update("t010"), relay.update("t011", "calculating"), relay.update("ghost"), first[12]]
    flood: list[dict[str, Any]] = []
    for i in range(600):
        flood.append(relay.verdict(f"n{i:03}"))
        if i % 3 == 0:
            flood.append(relay.update(f"n{i:03}", "calculating" if i % 2 else "complete"))
    # A row on screen that the flood pushes out, sent again: live, it comes back on top.
    flood.append(first[20])
    newest = [m for m in flood if m["type"] == "verdict"][-197:] + [relay.verdict(f"s{i}") for i in range(3)]
    updates = {m["transaction_id"]: m for m in flood if m["type"] == "explanation"} | {
        "s1": relay.update("s1")
    }
    states = [relay.state(m, updates.get(m["transaction_id"])) for m in reversed(newest)]  # newest first
    snapshot = {
        "type": "snapshot",
        "subscription": "feed",
        "last_event_id": relay._id(),
        "transactions": states,
    }
    gap = {"type": "gap", "subscription": "feed", "requested_after": "test-1", "oldest_event_id": "test-9",
           "message": "relay restarted"}  # fmt: skip
    after = [relay.verdict(f"m{i}") for i in range(10)]
    hello = {"type": "hello", "relay_id": "relay-1", "last_event_id": None,
             "server_time": "2026-11-28T12:00:00Z", "feed": {"state": "live", "since": None}}  # fmt: skip

    with chromium(tmp_path) as browser:
        browser.add_init_script(FAKE_SOCKET)
        browser.route("http://console.test/**", serve_console)
        pages = [browser.new_page(), browser.new_page()]  # the second is never paused
        errors: list[str] = []
        for page in pages:
            page.set_default_timeout(30_000)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto("http://console.test/?token=t")
            page.wait_for_function("() => window.sockets.length === 1 && window.sockets[0].readyState === 1")
            page.evaluate("(m) => relaySays(m)", [hello, {**snapshot, "transactions": []}, *before])
        paused, live = pages
        paused.evaluate(WATCH)
        paused.locator("body").press("p")
        still = paused.evaluate(ROW_IDS)

        for page in pages:
            page.evaluate("(m) => relaySays(m)", shown + flood)
        # A row on screen takes its explanation in place; "ghost" (no row anywhere) changes nothing.
        assert paused.locator('tr[data-txid="t010"] .expl').get_attribute("data-state") == "done"
        assert paused.inner_text('tr[data-txid="t011"] .expl') == "explaining… (calculating)"
        for page in pages:  # the relay restarted: a new relay id, so gap and a snapshot, not a replay
            page.evaluate("() => window.sockets.at(-1).close()")
            page.wait_for_function("() => window.sockets.length === 2 && window.sockets[1].readyState === 1")
            page.evaluate("(m) => relaySays(m)", [{**hello, "relay_id": "relay-2"}])
            subscribe = page.evaluate("() => window.sockets[1].sent.at(-1)")
            assert subscribe["type"] == "subscribe" and "last_event_id" not in subscribe, subscribe
            page.evaluate("(m) => relaySays(m)", [gap, snapshot, *after])

        events = [(m["transaction_id"], m["type"] == "verdict") for m in before + shown + flood]
        events += [(s["transaction_id"], True) for s in reversed(snapshot["transactions"])]
        events += [(m["transaction_id"], True) for m in after]
        rows, added = live_rows(events)
        skipped = added - live_rows(events[: len(before)])[1] - MAX_ROWS  # 600 n, t020, s0-s2, m0-m9
        assert skipped == 114
        assert paused.evaluate(ROW_IDS) == still and paused.evaluate("window.rowChanges") == 0
        assert paused.inner_text("#pause-state") == f"paused · {MAX_ROWS} new · {skipped} older skipped"
        paused.click("#pause")

        assert live.evaluate(ROW_IDS) == rows
        assert paused.evaluate(TABLE) == live.evaluate(TABLE), "resumed table differs from the live one"
        assert f"{skipped} verdicts were skipped" in paused.inner_text("#pause-state")

        # A short pause over a full table: most rows stay, the oldest go, one of them comes back.
        verdicts = {m["transaction_id"]: m for m in flood + newest + after if m["type"] == "verdict"}
        oldest = rows[-1]
        short = [relay.update("m5"), *(relay.verdict(f"k{i}") for i in range(5)), relay.update(oldest)]
        short += [relay.update("k1"), verdicts[oldest]]
        paused.locator("body").press("p")
        still = paused.evaluate(ROW_IDS)
        paused.evaluate("() => { window.rowChanges = 0; }")
        for page in pages:
            page.evaluate("(m) => relaySays(m)", short)
        assert paused.evaluate(ROW_IDS) == still and paused.evaluate("window.rowChanges") == 0
        assert paused.inner_text("#pause-state") == "paused · 6 new"
        assert paused.locator('tr[data-txid="m5"] .expl').get_attribute("data-state") == "done"
        paused.locator("body").press("p")
        assert paused.evaluate(TABLE) == live.evaluate(TABLE), "resumed table differs from the live one"
        assert paused.evaluate(ROW_IDS)[:6] == [oldest, "k4", "k3", "k2", "k1", "k0"]
        assert not errors, errors
