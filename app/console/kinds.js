// fraudlens support console: the kinds of explanation beyond contributions (relay protocol 3):
// the counterfactual, "what would change it", in its row cell and beside the waterfall; and the
// uncertainty, "how sure", which rides with the contributions' updates (update.uncertainty, from
// the first, pending, one on) and is shown on the score bar of the detail panel.
// Each kind has its own state per transaction: tx.kinds[kind] = {status, update}. Loaded before
// console.js, which calls these; all text via textContent.
"use strict";

const COUNTERFACTUAL = "counterfactual";
const KIND_LOADING = { counterfactual: "looking for what would change it…" };

// A verdict event (protocol 3) names the kinds the explainer computes for it by itself.
function expectKinds(tx, kinds) {
  for (const kind of kinds || []) if (!tx.kinds[kind]) tx.kinds[kind] = { status: "awaiting", update: null };
}

// A snapshot's kinds: {kind: {status, explanation, …}}.
function applyKindStates(tx, kinds) {
  for (const [kind, state] of Object.entries(kinds || {})) {
    tx.kinds[kind] = { status: state.status, update: state.explanation };
  }
}

function applyKindUpdate(tx, kind, update) {
  tx.kinds[kind] = { status: update.status, update };
}

function counterfactualOf(tx) {
  return tx.kinds[COUNTERFACTUAL] || null;
}

function kindLoadingLabel(kind, status) {
  const label = KIND_LOADING[kind] || "explaining…";
  return status === "calculating" ? `${label} (calculating)` : label;
}

// "Explain now" for one kind: an on-demand request (high priority); the answer comes as that
// kind's updates. A refused request puts the button back with the reason (markExplainError).
function explainKind(tx, kind) {
  tx.kinds[kind] = { status: "awaiting", update: null };
  render(tx);
  requestExplanation(tx, kind);
}

function kindButton(tx, kind, label) {
  const button = el("button", "explain-kind", label);
  button.type = "button";
  button.dataset.kind = kind;
  button.addEventListener("click", () => explainKind(tx, kind));
  return button;
}

// The row's "what would change it" cell: for a deny or review the explainer does not search by
// itself, a button that asks for it; nothing for an approve.
function renderCounterfactualCell(tx) {
  const cell = tx.el.querySelector(".cf");
  cell.replaceChildren();
  const state = counterfactualOf(tx);
  if (!state) {
    cell.dataset.state = "none";
    if (tx.verdict.decision !== "approve") cell.append(kindButton(tx, COUNTERFACTUAL, "What would change it?"));
    return;
  }
  if (state.status === "complete" && state.update && state.update.counterfactual) {
    const result = state.update.counterfactual;
    const first = result.proposals[0];
    cell.dataset.state = "done";
    if (!first) {
      cell.append(el("span", "no-proposal", result.note || "no change of these fields alone would approve it"));
      return;
    }
    cell.append(el("span", `proposal ${first.decision}`, first.text));
    if (result.proposals.length > 1) cell.append(el("span", "more", ` (+${result.proposals.length - 1} more)`));
  } else if (state.status === "failed" || state.status === "refused") {
    cell.dataset.state = state.status;
    const reason = (state.update && state.update.reason) || "unknown";
    cell.append(el("span", "failed", `could not look for what would change it: ${reason} `));
    cell.append(kindButton(tx, COUNTERFACTUAL, "Try again"));
  } else {
    cell.dataset.state = "loading";
    cell.append(el("span", "loading", kindLoadingLabel(COUNTERFACTUAL, state.status)));
  }
}

// Beside the waterfall: every proposal, smallest change first, with the model's score for it.
function showProposals(tx) {
  const box = $("proposals");
  const list = $("proposal-list");
  const state = counterfactualOf(tx);
  list.replaceChildren();
  box.hidden = !state;
  if (!state) return;
  box.dataset.state = state.status;
  const result = state.status === "complete" && state.update ? state.update.counterfactual : null;
  if (result) {
    for (const p of result.proposals) {
      const item = el("li", `proposal ${p.decision}`);
      item.append(el("span", "text", p.text), el("span", "score num", `score ${p.score.toFixed(3)} → ${p.decision}`));
      list.append(item);
    }
    $("proposal-note").textContent = result.proposals.length
      ? `verified: each change scored with model ${state.update.model_version} and the card's history as the verdict saw it (${result.candidates} candidates)`
      : result.note || "no change of these fields alone would approve it";
  } else if (state.status === "failed" || state.status === "refused") {
    $("proposal-note").textContent = `could not look for what would change it: ${(state.update && state.update.reason) || "unknown"}`;
  } else {
    $("proposal-note").textContent = kindLoadingLabel(COUNTERFACTUAL, state.status);
  }
}

// -- uncertainty (issue 21) ----------------------------------------------------------------

const SCORE_BAR_FLOOR = 1e-4; // the bar is logarithmic from 0.0001 to 1 (most scores are tiny)

function uncertaintyOf(tx) {
  return (tx.update && tx.update.uncertainty) || null;
}

function barPosition(probability) {
  const p = Math.min(Math.max(probability, SCORE_BAR_FLOOR), 1);
  return (100 * (Math.log10(p) - Math.log10(SCORE_BAR_FLOOR))) / -Math.log10(SCORE_BAR_FLOOR);
}

// The prediction set in words (fraudlens explain --kind uncertainty says the same).
function predictionSetWords(labels, confidence) {
  const level = `${Math.round(confidence * 100)}%`;
  const has = (label) => labels.includes(label);
  if (has("fraud") && has("legitimate")) return `the model cannot rule out fraud at ${level} (nor legitimate)`;
  if (has("fraud")) return `the model cannot rule out fraud at ${level}, and rules out legitimate`;
  if (has("legitimate")) return `the model rules out fraud at ${level}`;
  return `the model rules out both at ${level}: unlike the cases it was calibrated on`;
}

// The row's score cell: a mark when the decision is uncertain.
function renderUncertainMark(tx) {
  const cell = tx.el.querySelector(".score");
  const found = uncertaintyOf(tx);
  const uncertain = Boolean(found && found.uncertain);
  tx.el.dataset.uncertain = found && "uncertain" in found ? String(uncertain) : "";
  cell.textContent = tx.verdict.score.toFixed(3) + (uncertain ? " ±" : "");
  cell.title = uncertain ? `uncertain: the probability interval straddles the ${found.straddles.join(" and ")} threshold` : "";
}

// The detail panel's "How sure": its own loading state until an update carries the uncertainty.
function showUncertainty(tx) {
  const box = $("uncertainty");
  const found = uncertaintyOf(tx);
  const text = $("uncertainty-text");
  const words = $("uncertainty-set");
  const bar = $("score-bar");
  words.textContent = "";
  if (!found) {
    const none = tx.status === "sampled_out" || tx.status === "failed";
    box.dataset.state = none ? "none" : "loading";
    bar.hidden = true;
    text.textContent = none ? "how sure: not measured (not explained; Explain now measures it too)" : "measuring how sure the model is…";
    return;
  }
  if (!("probability" in found)) {
    box.dataset.state = "unavailable";
    bar.hidden = true;
    text.textContent = `how sure: unavailable — ${found.unavailable}`;
    return;
  }
  box.dataset.state = found.uncertain ? "uncertain" : "done";
  bar.hidden = false;
  const [low, high] = found.interval;
  const band = bar.querySelector(".sb-interval");
  band.style.left = `${barPosition(low)}%`;
  band.style.width = `${Math.max(barPosition(high) - barPosition(low), 0.5)}%`;
  bar.querySelector(".sb-point").style.left = `${barPosition(found.probability)}%`;
  for (const name of ["review", "deny"]) {
    const mark = bar.querySelector(`.sb-mark.${name}`);
    mark.style.left = `${barPosition(found.boundaries[name])}%`;
    mark.title = `${name} threshold (calibrated ${found.boundaries[name].toFixed(4)})`;
  }
  const verdictLine = found.uncertain
    ? `uncertain: the interval straddles the ${found.straddles.join(" and ")} threshold`
    : "the interval holds neither threshold";
  text.textContent = `fraud probability ${found.probability.toFixed(4)}, interval [${low.toFixed(4)}, ${high.toFixed(4)}] — ${verdictLine}`;
  words.textContent = predictionSetWords(found.prediction_set, found.confidence);
}

// -- similar past cases (issue 21) -----------------------------------------------------------

// The detail panel's "Similar past cases": loading until the contributions are complete.
function showSimilarCases(tx) {
  const box = $("similar");
  const table = $("similar-table");
  const body = $("similar-rows");
  const note = $("similar-note");
  body.replaceChildren();
  const found = tx.status === "complete" && tx.update ? tx.update.similar_cases : null;
  if (!found) {
    table.hidden = true;
    const none = tx.status === "sampled_out" || tx.status === "failed" || tx.status === "complete";
    box.dataset.state = none ? "none" : "loading";
    note.textContent = tx.status === "complete" ? "no similar cases looked up"
      : none ? "similar cases: none (not explained; Explain now looks them up too)"
      : "looking for similar past cases…";
    return;
  }
  if (!found.cases) {
    box.dataset.state = "unavailable";
    table.hidden = true;
    note.textContent = `similar cases: unavailable — ${found.unavailable}`;
    return;
  }
  box.dataset.state = "done";
  table.hidden = false;
  for (const c of found.cases) {
    const row = el("tr", `case ${c.outcome}`);
    row.append(
      el("td", "outcome", c.pattern ? `${c.outcome} (${c.pattern})` : c.outcome),
      el("td", "num", `${c.amount.toFixed(2)} ${c.currency}`),
      el("td", "", c.channel),
      el("td", "", c.country),
      el("td", "", c.card),
      el("td", "txid", c.transaction_id),
    );
    row.title = `distance ${c.distance.toFixed(3)} in SHAP space (log-odds)`;
    body.append(row);
  }
  const frauds = found.cases.filter((c) => c.outcome === "fraud").length;
  note.textContent = `the ${found.cases.length} nearest labelled past transactions, similar for the same reasons (SHAP space): ${frauds} fraud`;
}
