"""Kinds of explanation through the relay and the console (issue 20), on the real broker, scorer,
explainer (counterfactuals routed for deny and review) and relay:

- relay protocol 3: a client that asks for it gets each flagged verdict (naming the kinds coming),
  then each kind's updates in status order, the counterfactual's exactly as on the topic; a
  protocol-2 client beside it gets what it always got (no other kind, no new field);
- the console in headless Chromium: a deny row shows its verdict at once, then the contributions,
  then the counterfactual, each replacing its own loading state; the detail panel shows the
  proposals beside the waterfall, and how sure the model is (issue 21) on the score bar.
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from app.model.generator import generate_transactions
from tests.integration.harness import Process, RelayProcess, Stack, start_relay
from tests.integration.test_console import chromium, open_console, predicted_verdicts
from tests.integration.test_counterfactual_kind import KINDS_ON
from tests.integration.test_relay import Client
from tests.integration.test_uncertainty_kind import Neighbours, Oracle

ORDER = ["pending", "calculating", "complete"]

# Every state each row's "why" (.expl) and "what would change it" (.cf) cell goes through, in one
# sequence for the whole page: [txid, cell, state], appended when the cell's data-state changes.
RECORD_STATES = """() => {
  window.stateSequence = [];
  const last = new Map();
  const note = (cell) => {
    const row = cell.closest("tr");
    if (!row || !cell.dataset.state) return;
    const key = row.dataset.txid + " " + cell.className;
    if (last.get(key) === cell.dataset.state) return;
    last.set(key, cell.dataset.state);
    window.stateSequence.push([row.dataset.txid, cell.className, cell.dataset.state]);
  };
  new MutationObserver((records) => {
    for (const r of records) {
      if (r.type === "attributes") note(r.target);
      for (const n of r.addedNodes || []) {
        if (n.querySelectorAll) n.querySelectorAll(".expl, .cf").forEach(note);
      }
    }
  }).observe(document.getElementById("rows"),
             {subtree: true, childList: true, attributes: true, attributeFilter: ["data-state"]});
}"""


@pytest.fixture(scope="module")
def explainer(scored: Stack) -> Process:
    return scored.start_worker("explainer", **KINDS_ON)


@pytest.fixture(scope="module")
def relay(scored: Stack, explainer: Process) -> RelayProcess:
    return start_relay(scored, **KINDS_ON)


def sequences(messages: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(transaction, kind) → its explanation events in arrival order."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for m in messages:
        if m["type"] == "explanation":
            out[(m["transaction_id"], m.get("kind", "contributions"))].append(m)
    return out


def test_protocol_3_carries_every_kind_and_protocol_2_is_unchanged(
    scored: Stack, relay: RelayProcess
) -> None:
    transactions = list(generate_transactions(300, seed=61))
    expected = predicted_verdicts(scored.models_dir, transactions)
    flagged = {v["transaction_id"] for v in expected if v["decision"] != "approve"}
    assert len(flagged) >= 5, f"only {len(flagged)} flagged verdicts: too few for the claims below"
    everyone = {tx["transaction_id"] for tx in transactions}

    async def run() -> tuple[Client, Client]:
        new, old = await Client.open(relay), await Client.open(relay)  # both validate every message
        assert new.messages[0]["protocol"] == 3 and old.messages[0]["protocol"] == 3
        await new.subscribe(protocol=3)
        await old.subscribe()
        scored.produce_transactions(transactions)

        def done(messages: list[dict[str, Any]]) -> bool:
            last = {key: seq[-1]["status"] for key, seq in sequences(messages).items()}
            return all(last.get((t, "contributions")) == "complete" for t in everyone) and all(
                last.get((t, "counterfactual")) == "complete" for t in flagged
            )

        await new.until(done, 240, "every contributions and counterfactual explanation (protocol 3)")
        await old.until(
            lambda m: (
                all(seq[-1]["status"] == "complete" for (t, _), seq in sequences(m).items() if t in everyone)
                and {t for t, _ in sequences(m)} >= everyone
            ),
            120,
            "every contributions explanation (protocol 2)",
        )
        await new.ws.close()
        await old.ws.close()
        return new, old

    new, old = asyncio.run(run())

    # Protocol 3: the verdict first, naming the kinds coming; then each kind in status order.
    verdicts = {m["transaction_id"]: m for m in new.of_type("verdict")}
    assert set(verdicts) == everyone
    assert {t for t, m in verdicts.items() if m.get("kinds") == ["counterfactual"]} == flagged
    position = {id(m): i for i, m in enumerate(new.messages)}
    for (txid, kind), seq in sequences(new.messages).items():
        assert [m["status"] for m in seq] == ORDER, (txid, kind)
        assert position[id(verdicts[txid])] < position[id(seq[0])], (txid, kind)
        assert all(m["update"].get("kind", "contributions") == kind for m in seq)
    assert {t for t, kind in sequences(new.messages) if kind == "counterfactual"} == flagged

    # ... exactly as on the topic (the relay passes each update on, computing nothing; it leaves
    # out the explainer's bookkeeping, `source` and `request`, which holds the card's replay).
    on_topic = scored.reader("explanation.updates")
    on_topic.read_to_end()
    finals = {
        (u["transaction_id"], u.get("kind", "contributions")): {
            k: v for k, v in u.items() if k not in ("source", "request")
        }
        for u in on_topic.values()
        if u["status"] == "complete"
    }
    for key, seq in sequences(new.messages).items():
        assert seq[-1]["update"] == finals[key], key

    # Protocol 2: contributions only, no field it did not know; the same contributions events.
    assert all("kind" not in m and "kinds" not in m for m in old.messages), (
        "a protocol-3 field reached protocol 2"
    )
    assert {kind for _, kind in sequences(old.messages)} == {"contributions"}
    contributions = lambda c: {  # noqa: E731
        t: [m["update"] for m in seq] for (t, k), seq in sequences(c.messages).items() if k == "contributions"
    }
    assert contributions(old) == contributions(new)


def test_console_shows_each_kind_replacing_its_own_loading_state(
    scored: Stack, explainer: Process, relay: RelayProcess, tmp_path: Path
) -> None:
    transactions = list(generate_transactions(300, seed=62))
    expected = predicted_verdicts(scored.models_dir, transactions)
    deny = next(v["transaction_id"] for v in expected if v["decision"] == "deny")
    approve = next(v["transaction_id"] for v in expected if v["decision"] == "approve")

    with chromium(tmp_path, {"width": 1800, "height": 1000}) as browser:
        page, errors = open_console(browser, relay)
        page.evaluate(RECORD_STATES)
        # The explainer held still: the verdict shows at once, both kinds loading.
        with explainer.frozen():
            scored.produce_transactions(transactions)
            row = page.locator(f'tr.row[data-txid="{deny}"]')
            row.wait_for()
            assert row.get_attribute("data-decision") == "deny"
            assert row.locator(".expl").get_attribute("data-state") == "loading"
            cf = row.locator(".cf")
            assert cf.get_attribute("data-state") == "loading"
            assert cf.inner_text().startswith("looking for what would change it…")
            page.locator(f'tr.row[data-txid="{approve}"]').wait_for()
            assert page.locator(f'tr.row[data-txid="{approve}"] .cf').get_attribute("data-state") == "none"
            row.scroll_into_view_if_needed()
            loading_shot = tmp_path / "console-kinds-loading.png"
            page.screenshot(path=str(loading_shot))

        page.wait_for_selector(f'tr.row[data-txid="{deny}"] .cf[data-state="done"]')
        page.wait_for_selector(f'tr.row[data-txid="{deny}"] .expl[data-state="done"]')
        sequence = [
            (cell, state) for txid, cell, state in page.evaluate("window.stateSequence") if txid == deny
        ]
        assert sequence == [
            ("expl", "loading"), ("cf", "loading"), ("expl", "done"), ("cf", "done")
        ], sequence  # fmt: skip
        assert row.locator(".feature").count() == 3
        proposal = cf.locator(".proposal, .no-proposal").inner_text()  # the first, or the note
        assert proposal.startswith(("approved if", "review instead of deny", "no change")), proposal

        # The detail panel: the waterfall, and beside it every proposal with its score.
        row.locator("td.txid").click()
        page.wait_for_selector("#detail:not([hidden]) .wf-row")
        page.wait_for_selector('#proposals:not([hidden])[data-state="complete"]')
        box = page.locator("#proposals").bounding_box()
        chart = page.locator("#waterfall").bounding_box()
        assert box is not None and chart is not None
        assert box["x"] >= chart["x"] + chart["width"] - 1, (box, chart)  # beside, not below
        items = page.locator("#proposal-list li")
        texts = [items.nth(i).locator(".text").inner_text() for i in range(items.count())]
        if texts:
            assert texts[0] == proposal, (texts, proposal)
            assert all(" → " in items.nth(i).locator(".score").inner_text() for i in range(items.count()))
        else:
            assert page.locator("#proposal-note").inner_text() == proposal
        shot = tmp_path / "console-kinds-detail.png"
        page.screenshot(path=str(shot))
        print(f"\nconsole screenshots: {loading_shot} {shot}")
        assert not errors, errors


RECORD_UNCERTAINTY = """() => {
  window.uncertaintyStates = [document.getElementById("uncertainty").dataset.state];
  new MutationObserver(() => {
    const state = document.getElementById("uncertainty").dataset.state;
    if (window.uncertaintyStates.at(-1) !== state) window.uncertaintyStates.push(state);
  }).observe(document.getElementById("uncertainty"), {attributes: true, attributeFilter: ["data-state"]});
}"""


def bar_percent(probability: float) -> float:
    """The score bar's scale restated: logarithmic from 0.0001 (left) to 1 (right)."""
    return 100 * (math.log10(min(max(probability, 1e-4), 1.0)) + 4) / 4


def test_console_shows_how_sure_and_similar_cases_each_replacing_its_loading_state(
    scored: Stack, explainer: Process, relay: RelayProcess, models_dir: Path, tmp_path: Path
) -> None:
    """The detail panel's "How sure" (issue 21): loading while the explainer is held still, then
    the interval on the score bar, the prediction set in words and the flag, as the oracle of
    ``test_uncertainty_kind`` computes them from the stored calibration slice."""
    transactions = list(generate_transactions(200, seed=63))
    expected = predicted_verdicts(scored.models_dir, transactions)
    deny = next(v["transaction_id"] for v in expected if v["decision"] == "deny")
    verdicts = scored.reader("verdicts")
    with chromium(tmp_path, {"width": 1800, "height": 1000}) as browser:
        page, errors = open_console(browser, relay)
        with explainer.frozen():
            scored.produce_transactions(transactions)
            row = page.locator(f'tr.row[data-txid="{deny}"]')
            row.wait_for()
            row.locator("td.txid").click()
            page.wait_for_selector('#detail:not([hidden]) #uncertainty[data-state="loading"]')
            page.evaluate(RECORD_UNCERTAINTY)
            assert page.locator("#uncertainty-text").inner_text() == "measuring how sure the model is…"
            assert page.locator("#score-bar").is_hidden()
            assert page.locator("#similar").get_attribute("data-state") == "loading"
            assert page.locator("#similar-note").inner_text() == "looking for similar past cases…"
            assert page.locator("#similar-table").is_hidden()
        page.wait_for_selector('#uncertainty:not([data-state="loading"])')
        page.wait_for_selector('#similar[data-state="done"]')

        verdicts.read_until(lambda _: any(v["transaction_id"] == deny for v in verdicts.values()), 60, "it")
        verdict = next(v for v in verdicts.values() if v["transaction_id"] == deny)
        oracle = Oracle(models_dir, verdict["model_version"])
        p0, p1 = oracle.interval(float(verdict["score"]))
        straddles = [n for n in ("review", "deny") if p0 <= oracle.boundaries[n] <= p1]
        fraud_possible = oracle.p_value(float(verdict["score"]), 1) > 0.05
        legit_possible = oracle.p_value(float(verdict["score"]), 0) > 0.05

        final = "uncertain" if straddles else "done"
        assert page.evaluate("window.uncertaintyStates") == ["loading", final]
        assert row.get_attribute("data-uncertain") == str(bool(straddles)).lower()
        text = page.locator("#uncertainty-text").inner_text()
        assert f"interval [{p0:.4f}, {p1:.4f}]" in text, text
        assert ("straddles the " + " and ".join(straddles)) in text if straddles else "neither" in text
        words = page.locator("#uncertainty-set").inner_text()
        assert ("cannot rule out fraud at 95%" in words) == fraud_possible, words
        assert ("rules out legitimate" in words) == (fraud_possible and not legit_possible), words
        band = page.locator("#score-bar .sb-interval")
        left = float(band.evaluate("e => parseFloat(e.style.left)"))
        width = float(band.evaluate("e => parseFloat(e.style.width)"))
        assert left == pytest.approx(bar_percent(p0), abs=0.01)
        assert width == pytest.approx(max(bar_percent(p1) - bar_percent(p0), 0.5), abs=0.01)
        for name in ("review", "deny"):
            mark = page.locator(f"#score-bar .sb-mark.{name}")
            assert float(mark.evaluate("e => parseFloat(e.style.left)")) == pytest.approx(
                bar_percent(oracle.boundaries[name]), abs=0.01
            )
        # Similar past cases: the brute-force nearest reference rows to the complete update's own
        # contributions, nearest first, with their outcomes.
        updates = scored.reader("explanation.updates")
        updates.read_until(
            lambda _: any(u["transaction_id"] == deny and u["status"] == "complete" and "kind" not in u
                          for u in updates.values()), 60, "the complete contributions",
        )  # fmt: skip
        complete = next(
            u
            for u in updates.values()
            if u["transaction_id"] == deny and u["status"] == "complete" and "kind" not in u
        )
        nearest = Neighbours(models_dir, verdict["model_version"]).nearest(complete["contributions"])
        rows = page.locator("#similar-rows tr")
        assert rows.count() == 3
        shown = [(rows.nth(i).locator(".txid").inner_text(), rows.nth(i).locator(".outcome").inner_text())
                 for i in range(3)]  # fmt: skip
        assert [t for t, _ in shown] == [t for t, _ in nearest]
        assert all(text.startswith(outcome) for (_, text), (_, outcome) in zip(shown, nearest, strict=True))
        shot = tmp_path / "console-uncertainty.png"
        page.screenshot(path=str(shot))
        print(f"\nconsole screenshot: {shot}")
        assert not errors, errors
