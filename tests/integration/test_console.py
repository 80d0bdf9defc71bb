"""The support console in real headless Chromium against the real broker, scorer, explainer
and relay: the page loads, a deny appears with "explaining…" that its top 3 features replace,
and "Explain now" on a sampled-out row ends with an explanation. Screenshots go to tmp_path."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from playwright import sync_api as playwright_api

from app.model.batch import BatchScorer, Incoming
from app.model.generator import generate_transactions
from app.model.predictor import ModelScorer
from app.records.masking import mask_card_id
from tests.integration.harness import Process, RelayProcess, Stack, start_relay
from tests.tables import MemoryTable

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Every low verdict waits for "Explain now"; no counterfactual is routed by itself, so the deny
# row's "What would change it?" asks for one.
NO_SAMPLING = {
    "FRAUDLENS_EXPLAIN_LOW_SAMPLE_RATE": "0",
    "FRAUDLENS_EXPLAIN_COUNTERFACTUAL_DECISIONS": "[]",
}
WAIT_MS = 120_000

# Records every state each row's explanation cell goes through (render() sets data-state
# synchronously per message, so a state replaced before the next paint is still seen here).
RECORD_STATES = """() => {
  window.stateHistory = {};
  const note = (cell) => {
    const row = cell.closest("tr");
    if (!row || !cell.dataset.state || !cell.classList.contains("expl")) return;
    const seen = (window.stateHistory[row.dataset.txid] ||= []);
    if (seen[seen.length - 1] !== cell.dataset.state) seen.push(cell.dataset.state);
  };
  new MutationObserver((records) => {
    for (const r of records) {
      if (r.type === "attributes") note(r.target);
      for (const n of r.addedNodes || []) if (n.querySelectorAll) n.querySelectorAll(".expl").forEach(note);
    }
  }).observe(document.getElementById("rows"),
             {subtree: true, childList: true, attributes: true, attributeFilter: ["data-state"]});
}"""

ROWS_SHOWN = "() => [...document.querySelectorAll('#rows tr.row')].map((r) => [r.dataset.txid, !r.hidden])"


@contextmanager
def chromium(
    tmp_path: Path, viewport: dict[str, int] | None = None
) -> Iterator[playwright_api.BrowserContext]:
    """Headless Chromium with its profile under ``tmp_path``, closed on the way out."""
    assert os.path.exists(CHROMIUM), "chromium is not installed (make test installs it)"
    options: dict[str, Any] = {"viewport": viewport} if viewport else {}
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            **options,
        )  # fmt: skip
        try:
            yield browser
        finally:
            browser.close()


def predicted_verdicts(models_dir: Path, transactions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The scorer's own code on the same sequence: which transactions the stack will deny."""
    scorer = BatchScorer(ModelScorer(models_dir), MemoryTable(), MemoryTable(), 65536, time.time)
    batch = [
        Incoming(tx["card_id"].encode(), orjson.dumps(tx), "transactions", 0, i)
        for i, tx in enumerate(transactions)
    ]
    return [orjson.loads(value) for _, value in scorer.score(batch).verdicts]


def open_console(
    browser: playwright_api.BrowserContext, relay: RelayProcess
) -> tuple[playwright_api.Page, list[str]]:
    """The console page, connected to ``relay``, and the list its page errors are collected in."""
    page = browser.pages[0] if browser.pages else browser.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{relay.http}/?token={relay.token()}")
    page.wait_for_selector('#conn-state[data-state="open"]')
    return page, errors


@pytest.fixture
def console(stack: Stack) -> Iterator[tuple[Process, RelayProcess]]:
    stack.start_worker("scorer")
    explainer = stack.start_worker("explainer", **NO_SAMPLING)
    yield explainer, start_relay(stack, **NO_SAMPLING)


def test_console_in_chromium(stack: Stack, console: tuple[Process, RelayProcess], tmp_path: Path) -> None:
    explainer, relay = console
    transactions = list(generate_transactions(300, seed=201))
    verdicts = predicted_verdicts(stack.models_dir, transactions)
    deny = next(v["transaction_id"] for v in verdicts if v["decision"] == "deny")

    with chromium(tmp_path, {"width": 1600, "height": 1000}) as browser:
        page, errors = open_console(browser, relay)
        page.evaluate(RECORD_STATES)

        # Pause the explainer so the loading state stays long enough to be seen and
        # photographed; the verdicts keep flowing (the scorer never waits on it).
        with explainer.frozen():
            stack.produce_transactions(transactions)
            row = page.locator(f'tr.row[data-txid="{deny}"]')
            row.wait_for()
            assert row.get_attribute("data-decision") == "deny"
            assert "deny" in (row.get_attribute("class") or "")
            cell = row.locator(".expl")
            assert cell.get_attribute("data-state") == "loading"
            assert cell.inner_text().startswith("explaining…")
            row.scroll_into_view_if_needed()
            loading_shot = tmp_path / "console-loading.png"
            page.screenshot(path=str(loading_shot))

        page.wait_for_selector(f'tr.row[data-txid="{deny}"] .expl[data-state="done"]')
        features = row.locator(".feature")
        assert features.count() == 3
        for i in range(3):
            assert features.nth(i).locator(".reason").inner_text().strip()
            assert features.nth(i).locator(".bar").count() == 1
        history = page.evaluate("(txid) => window.stateHistory[txid]", deny)
        assert history[0] == "loading" and history[-1] == "done", history

        # The full waterfall on click: base value, every feature, raw score.
        row.locator("td.txid").click()
        page.wait_for_selector("#detail:not([hidden]) .wf-row")
        assert page.locator("#waterfall .wf-row").count() == len(verdicts[0]["features"]) + 2
        waterfall_shot = tmp_path / "console-waterfall.png"
        page.screenshot(path=str(waterfall_shot))

        # "What would change it?" (no counterfactual is routed by itself here): asked on demand,
        # the deny row's own cell goes from loading to the first proposal or the note.
        page.click("#detail-close")
        cf = row.locator(".cf")
        assert cf.get_attribute("data-state") == "none"
        cf.locator("button.explain-kind").click()
        page.wait_for_selector(f'tr.row[data-txid="{deny}"] .cf[data-state="done"]')
        assert (
            cf.locator(".proposal, .no-proposal")
            .inner_text()
            .startswith(("approved if", "review instead of deny", "no change"))
        )
        assert page.locator('tr.row[data-decision="approve"] .cf button').count() == 0

        # "Explain now" on a sampled-out (low priority) row ends with an explanation.
        button = page.locator('tr.row .expl[data-state="sampled_out"] button.explain-now').first
        button.wait_for()
        asked = button.locator("xpath=ancestor::tr").get_attribute("data-txid")
        button.click()
        page.wait_for_selector(f'tr.row[data-txid="{asked}"] .expl[data-state="done"] .feature')
        assert page.locator(f'tr.row[data-txid="{asked}"] .feature').count() == 3

        # Card ids are masked: the last four only, in the rows, the detail and the whole page;
        # the search box finds a row by those four.
        card = next(tx["card_id"] for tx in transactions if tx["transaction_id"] == deny)
        assert row.locator("td.card").inner_text() == mask_card_id(card) == f"•••• {card[-4:]}"
        page_text = page.content() + page.inner_text("body")
        shown_full = sorted({tx["card_id"] for tx in transactions if tx["card_id"] in page_text})
        assert not shown_full, shown_full[:5]
        search = card[-4:]
        page.fill("#filter-search", search)
        assert row.is_visible()
        shown = dict(page.evaluate(ROWS_SHOWN))
        assert len(shown) == len(transactions), "every verdict has its row"
        matching = {  # the placeholder's promise: a transaction id, or the card's last four
            tx["transaction_id"]
            for tx in transactions
            if search in tx["transaction_id"].lower() or search in tx["card_id"][-4:]
        }
        assert {txid for txid, visible in shown.items() if visible} == matching
        assert len(matching) < len(shown), "the search must hide some rows to show it filters"
        page.fill("#filter-search", "")
        assert all(dict(page.evaluate(ROWS_SHOWN)).values()), "clearing the search shows every row"

        # The header shows what the stream tells.
        page.wait_for_function("document.getElementById('queue').textContent.includes('/')")
        page.locator(f'tr.row[data-txid="{asked}"]').scroll_into_view_if_needed()
        shot = tmp_path / "console.png"
        page.screenshot(path=str(shot))
        print(f"\nconsole screenshots: {loading_shot} {waterfall_shot} {shot}")
        assert not errors, errors
