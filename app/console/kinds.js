// fraudlens support console: the kinds of explanation beyond contributions (relay protocol 3).
// Today one: the counterfactual, "what would change it", in its row cell and beside the waterfall.
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
