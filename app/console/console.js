// fraudlens support console: one websocket to the relay (/ws), a live feed of verdicts whose
// explanations fill in as they arrive. Plain DOM, no dependencies; all text via textContent.
"use strict";

const MAX_ROWS = 500;
const RECENT = 200;
const params = new URLSearchParams(location.search);
const token = params.get("token") || "";
const $ = (id) => document.getElementById(id);
const txs = new Map(); // transaction_id -> {verdict, priority, explain, status, update, kinds, el}
let socket = null;
let lastEventId = null;
let relayId = null;
let retryMs = 500;
let requestSeq = 0;
const asked = new Map(); // explain_now request id -> {txid, kind} (kind null: contributions)
let feedSince = null; // when the relay lost the stream (ISO time), while it is lost
let feedClearTimer = null;
const RESUMED_SHOWN_MS = 60000;
const HELD_MAX = MAX_ROWS * 20; // events waiting while paused (see feedEvent)
let pause = { on: false, waiting: 0, skipped: 0 };
let pauseClearTimer = null;

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

// The relay already masks card ids (app/masking.py); mask again so a full id never reaches the
// page even from an older relay: "•••• " and the last four characters.
function maskCard(cardId) {
  const text = String(cardId || "");
  if (text.startsWith("••••")) return text;
  return text.length > 4 ? `•••• ${text.slice(-4)}` : "••••";
}

function setConnection(state, detail) {
  const node = $("conn-state");
  node.dataset.state = state;
  node.textContent = detail ? `${state}: ${detail}` : state;
}

// -- connection -------------------------------------------------------------------------

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const url = `${scheme}://${location.host}/ws?token=${encodeURIComponent(token)}`;
  setConnection(socket ? "reconnecting" : "connecting");
  const ws = new WebSocket(url);
  socket = ws;
  let opened = false;
  ws.onopen = () => { opened = true; retryMs = 500; };
  ws.onmessage = (event) => onMessage(JSON.parse(event.data));
  ws.onclose = (event) => {
    if (!opened) { explainRefusal(); return; }
    const reason = event.reason || `code ${event.code}`;
    setConnection("reconnecting", reason);
    setTimeout(connect, retryMs);
    retryMs = Math.min(retryMs * 2, 10000);
  };
}

// A refused handshake is invisible to scripts; ask the relay why (token expired? wrong?).
async function explainRefusal() {
  try {
    const answer = await fetch(`/api/token?token=${encodeURIComponent(token)}`);
    if (answer.status === 401) {
      const body = await answer.json();
      setConnection("refused", body.message);
      return;
    }
  } catch (err) { /* relay unreachable: retry below */ }
  setConnection("reconnecting", "relay unreachable");
  setTimeout(connect, retryMs);
  retryMs = Math.min(retryMs * 2, 10000);
}

function send(message) {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
}

function onMessage(message) {
  if (message.event_id) lastEventId = message.event_id;
  switch (message.type) {
    case "hello": {
      const resume = relayId === message.relay_id && lastEventId;
      relayId = message.relay_id;
      setConnection("open");
      // The feed came back while this page was reconnecting: the resumed message went to nobody.
      if (message.feed && message.feed.state === "live" && feedSince) onFeed({ state: "resumed", since: feedSince, resumed_at: message.server_time });
      const subscribe = { type: "subscribe", subscription: "feed", recent: RECENT, protocol: 3 };
      if (resume) subscribe.last_event_id = lastEventId;
      send(subscribe);
      break;
    }
    case "verdict":
      feedEvent(message.verdict.transaction_id, true, () => onVerdict(message.verdict, message.priority, message.explain, message.kinds));
      break;
    case "explanation":
      feedEvent(message.update.transaction_id, false, () => onUpdate(message.update, message.kind));
      break;
    case "snapshot":
      // Oldest first, one event per transaction: applied (or held) exactly like live events.
      for (const state of message.transactions.slice().reverse()) {
        feedEvent(state.transaction_id, Boolean(state.verdict), () => onState(state));
      }
      if (message.last_event_id) lastEventId = message.last_event_id; // a reconnect resumes from here, paused or not
      break;
    case "gap": break; // the snapshot that follows resynchronises the feed
    case "stats": onStats(message); break;
    case "feed": onFeed(message); break;
    case "lagging": setConnection("reconnecting", "too slow; resuming"); break;
    case "ack": if (message.of === "explain_now") asked.delete(message.id); break;
    case "error": console.warn("relay error", message); markExplainError(message); break;
    default: break;
  }
}

// -- feed status: the relay says when it cannot read the stream (no broker), and when it can again

const clock = (iso) => new Date(iso).toLocaleTimeString("en-GB", { hour12: false });

function onFeed(message) {
  const banner = $("feed-banner");
  clearTimeout(feedClearTimer);
  if (message.state === "interrupted") {
    feedSince = message.since;
    banner.dataset.state = "interrupted";
    banner.textContent = `live feed interrupted since ${clock(message.since)}: the relay cannot reach the broker, so nothing new arrives`;
  } else {
    feedSince = null;
    banner.dataset.state = "resumed";
    banner.textContent = `live feed resumed at ${clock(message.resumed_at)} (interrupted since ${clock(message.since)})`;
    feedClearTimer = setTimeout(() => { banner.hidden = true; banner.dataset.state = "live"; }, RESUMED_SHOWN_MS);
  }
  banner.hidden = false;
}

// -- pause: rows that hold still under the cursor ---------------------------------------------
// While paused no row is added, moved or removed. The page goes on reading the socket (the relay
// never finds it lagging; reconnects, replay and snapshots work as usual) and keeps a shadow of the
// live table: the ids it would show, newest first, each with its row's life (0: the row on screen
// at the pause; n: the n-th row added since). An event about a row on screen that the live table
// still has is applied at once: it changes that row's cells, never the order. An event about a row
// added since waits, in arrival order, tagged with that life; one about a transaction the live
// table no longer has is dropped, as live. Resume removes the rows the live table has pushed out
// and applies the waiting events of the lives it keeps, in order: the table ends as without the
// pause. So the wait is bounded by the table's own MAX_ROWS: rows added while paused and pushed
// out again by newer ones before resume are counted as skipped.

const newPause = (on) => ({ on, shadow: [], life: new Map(), lives: 0, held: [], waiting: 0, skipped: 0 });

function feedEvent(txid, introduces, apply) {
  if (!pause.on) { apply(); return; }
  let life = pause.life.get(txid);
  if (life === 0) { apply(); return; }
  if (life === undefined) {
    if (!introduces) return; // live, an update for a transaction without a row is dropped
    life = addShadowRow(txid);
  }
  pause.held.push({ txid, life, apply });
  if (pause.held.length > HELD_MAX) pruneHeld();
  showPause();
}

// A row the live table would add on top now, pushing out its oldest beyond MAX_ROWS.
function addShadowRow(txid) {
  const life = ++pause.lives;
  pause.life.set(txid, life);
  pause.shadow.unshift(txid);
  pause.waiting += 1;
  while (pause.shadow.length > MAX_ROWS) {
    const out = pause.shadow.pop();
    if (pause.life.get(out) > 0) { pause.waiting -= 1; pause.skipped += 1; }
    pause.life.delete(out);
  }
  return life;
}

function pruneHeld() {
  pause.held = pause.held.filter((item) => pause.life.get(item.txid) === item.life);
  // Only dozens of reconnects (a snapshot each) in one pause get past this: keep the newest.
  if (pause.held.length > HELD_MAX) pause.held.splice(0, pause.held.length - HELD_MAX);
}

function togglePause() {
  if (!pause.on) {
    clearTimeout(pauseClearTimer);
    pause = newPause(true);
    for (const row of $("rows").children) {
      pause.shadow.push(row.dataset.txid);
      pause.life.set(row.dataset.txid, 0);
    }
  } else {
    const { life, held, skipped } = pause;
    pause = { ...newPause(false), skipped };
    for (const row of [...$("rows").children]) {
      if (life.get(row.dataset.txid) !== 0) { txs.delete(row.dataset.txid); row.remove(); }
    }
    for (const item of held) if (life.get(item.txid) === item.life) item.apply();
    countRows();
  }
  showPause();
}

function showPause() {
  const button = $("pause");
  const state = $("pause-state");
  const waiting = pause.waiting;
  button.textContent = pause.on ? "Resume feed" : "Pause feed";
  button.dataset.state = pause.on ? "paused" : "live";
  state.dataset.new = String(waiting);
  state.dataset.skipped = String(pause.skipped);
  const skipped = pause.skipped ? ` · ${pause.skipped} older skipped` : "";
  if (pause.on) {
    state.textContent = `paused · ${waiting} new${skipped}`;
    state.hidden = false;
  } else if (pause.skipped) {
    state.textContent = `live · ${pause.skipped} verdicts were skipped while paused (more than the ${MAX_ROWS} rows kept)`;
    state.hidden = false;
    clearTimeout(pauseClearTimer);
    pauseClearTimer = setTimeout(() => { state.hidden = true; }, RESUMED_SHOWN_MS);
  } else {
    state.hidden = true;
  }
  state.dataset.state = pause.on ? "paused" : "live";
}

// "p" toggles the pause too, unless the key is typed into a field (or with a modifier: Ctrl+P prints).
function onKey(event) {
  if (event.key !== "p" && event.key !== "P") return;
  if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
  if (event.target.closest && event.target.closest("input, select, textarea, [contenteditable]")) return;
  event.preventDefault();
  togglePause();
}

// -- state ---------------------------------------------------------------------------------

function onState(state) {
  if (!state.verdict) return;
  onVerdict(state.verdict, state.priority, state.explain);
  const tx = txs.get(state.transaction_id);
  applyKindStates(tx, state.kinds);
  if (state.explanation) onUpdate(state.explanation);
  else render(tx);
}

function onVerdict(verdict, priority, explain, kinds) {
  const txid = verdict.transaction_id;
  let tx = txs.get(txid);
  if (!tx) {
    tx = { status: explain === "on_demand" ? "sampled_out" : "awaiting", update: null, kinds: {}, el: null };
    txs.set(txid, tx);
  }
  Object.assign(tx, { verdict, priority, explain });
  expectKinds(tx, kinds);
  if (!tx.el) addRow(tx);
  render(tx);
}

// kind: absent for contributions (the row's "why" cell); another kind has a state of its own.
function onUpdate(update, kind) {
  const tx = txs.get(update.transaction_id);
  if (!tx) return; // a verdict this console never saw (evicted or before its window)
  if (kind) applyKindUpdate(tx, kind, update);
  else { tx.status = update.status; tx.update = update; }
  render(tx);
  if ($("detail").dataset.txid === update.transaction_id) showDetail(tx);
}

// A refused explain_now: the kind's button comes back, with the reason.
function markExplainError(message) {
  const request = asked.get(message.id);
  const tx = request && txs.get(request.txid);
  asked.delete(message.id);
  if (!tx) return;
  if (request.kind) tx.kinds[request.kind] = { status: "refused", update: { reason: message.message } };
  else { tx.status = "sampled_out"; tx.requestError = message.message; }
  render(tx);
}

// -- rows ----------------------------------------------------------------------------------

function addRow(tx) {
  const v = tx.verdict;
  const row = el("tr", `row ${v.decision}`);
  row.dataset.txid = v.transaction_id;
  row.dataset.card = maskCard(v.card_id);
  row.dataset.decision = v.decision;
  row.append(
    el("td", "time", (v.scored_at || "").slice(11, 23)),
    el("td", "txid", v.transaction_id),
    el("td", "card", maskCard(v.card_id)),
    el("td", "num", `${v.amount.toFixed(2)} ${v.currency}`),
    el("td", "decision", v.decision),
    el("td", "num score", v.score.toFixed(3)),
    el("td", "priority", ""),
    el("td", "expl"),
    el("td", "cf"),
  );
  row.addEventListener("click", (event) => {
    if (event.target.closest("button")) return;
    showDetail(tx);
  });
  tx.el = row;
  const body = $("rows");
  body.insertBefore(row, body.firstChild);
  while (body.children.length > MAX_ROWS) {
    const last = body.lastChild;
    txs.delete(last.dataset.txid);
    last.remove();
  }
  applyFilter(row);
  countRows();
}

function render(tx) {
  if (!tx || !tx.el) return;
  tx.el.dataset.priority = tx.priority || "";
  tx.el.querySelector(".priority").textContent = tx.priority || "";
  const cell = tx.el.querySelector(".expl");
  cell.replaceChildren();
  if (tx.status === "complete" && tx.update) {
    cell.dataset.state = "done";
    const top = tx.update.top_features || [];
    const scale = Math.max(...top.map((f) => Math.abs(f.contribution)), 1e-9);
    for (const f of top) cell.append(featureBar(f, scale));
  } else if (tx.status === "failed") {
    cell.dataset.state = "failed";
    cell.append(el("span", "failed", `explanation failed: ${(tx.update && tx.update.reason) || "unknown"}`));
  } else if (tx.status === "sampled_out") {
    cell.dataset.state = "sampled_out";
    const button = el("button", "explain-now", "Explain now");
    button.type = "button";
    button.addEventListener("click", () => explainNow(tx));
    cell.append(button);
    if (tx.requestError) cell.append(el("span", "failed", ` ${tx.requestError}`));
  } else {
    cell.dataset.state = "loading";
    const label = tx.status === "calculating" ? "explaining… (calculating)" : "explaining…";
    cell.append(el("span", "loading", label));
  }
  renderCounterfactualCell(tx);
  renderUncertainMark(tx);
  applyFilter(tx.el);
}

function featureBar(feature, scale) {
  const box = el("div", "feature");
  box.dataset.feature = feature.feature;
  const sign = feature.contribution >= 0 ? "+" : "−";
  box.append(el("span", "name", feature.feature));
  box.append(el("span", "value", `${sign}${Math.abs(feature.contribution).toFixed(2)}`));
  const track = el("span", "track");
  const bar = el("span", `bar ${feature.contribution >= 0 ? "pos" : "neg"}`);
  bar.style.width = `${(50 * Math.abs(feature.contribution)) / scale}%`;
  track.append(bar);
  box.append(track, el("span", "reason", feature.reason));
  return box;
}

function explainNow(tx) {
  tx.requestError = null;
  tx.status = "awaiting";
  render(tx);
  requestExplanation(tx, null);
}

function requestExplanation(tx, kind) {
  const id = `explain-${++requestSeq}`;
  asked.set(id, { txid: tx.verdict.transaction_id, kind });
  const message = { type: "explain_now", id, transaction_id: tx.verdict.transaction_id };
  send(kind ? { ...message, kind } : message);
}

// -- filters -------------------------------------------------------------------------------

function applyFilter(row) {
  const decision = $("filter-decision").value;
  const priority = $("filter-priority").value;
  const search = $("filter-search").value.trim().toLowerCase();
  const shown = (!decision || row.dataset.decision === decision)
    && (!priority || row.dataset.priority === priority)
    && (!search || row.dataset.txid.toLowerCase().includes(search) || row.dataset.card.toLowerCase().includes(search));
  row.hidden = !shown;
}

function countRows() {
  const rows = $("rows").children;
  let shown = 0;
  for (const row of rows) if (!row.hidden) shown += 1;
  $("row-count").textContent = `${shown} of ${rows.length} rows`;
}

function refilter() {
  for (const row of $("rows").children) applyFilter(row);
  countRows();
}

// -- header ----------------------------------------------------------------------------------

function onStats(stats) {
  $("rate").textContent = stats.verdicts_per_s.toFixed(1);
  for (const p of ["high", "normal", "low"]) {
    const g = stats.explanation_gap_ms[p];
    $(`gap-${p}`).textContent = g.count ? `${p} ${fmt(g.p50)} / ${fmt(g.p95)}` : `${p} –`;
  }
  const q = stats.in_flight;
  $("queue").textContent = `${q.high} / ${q.normal} / ${q.low}`;
}

const fmt = (ms) => (ms === null ? "–" : ms < 1000 ? ms.toFixed(0) : `${(ms / 1000).toFixed(1)}k`);

// -- waterfall -------------------------------------------------------------------------------

function showDetail(tx) {
  const panel = $("detail");
  const v = tx.verdict;
  panel.dataset.txid = v.transaction_id;
  panel.hidden = false;
  $("detail-title").textContent = `${v.transaction_id} — ${v.decision} (score ${v.score.toFixed(3)})`;
  const chart = $("waterfall");
  chart.replaceChildren();
  showProposals(tx);
  showUncertainty(tx);
  showSimilarCases(tx);
  const u = tx.update;
  if (!u || tx.status !== "complete") {
    $("detail-summary").textContent = `card ${maskCard(v.card_id)}, ${v.amount.toFixed(2)} ${v.currency}; explanation: ${tx.status}`;
    return;
  }
  $("detail-summary").textContent =
    `log-odds: base ${u.base_value.toFixed(3)} + contributions = raw score ${u.raw_score.toFixed(3)} ` +
    `(model ${u.model_version}, ${u.method}${u.cache_hit ? ", cached" : ""})`;
  const steps = Object.entries(u.contributions).sort((a, b) => Math.abs(b[1]) - Math.abs(a[1]));
  let running = u.base_value;
  const points = [running];
  for (const [, c] of steps) { running += c; points.push(running); }
  const lo = Math.min(...points, 0), hi = Math.max(...points, 0);
  const x = (value) => (100 * (value - lo)) / (hi - lo || 1);
  chart.append(waterfallRow("base value", 0, u.base_value, "total", x));
  running = u.base_value;
  for (const [name, c] of steps) {
    chart.append(waterfallRow(name, running, running + c, c >= 0 ? "pos" : "neg", x, c));
    running += c;
  }
  chart.append(waterfallRow("raw score", 0, u.raw_score, "total", x));
}

function waterfallRow(name, from, to, kind, x, delta) {
  const row = el("div", "wf-row");
  const track = el("div", "wf-track");
  const bar = el("div", `wf-bar ${kind}`);
  bar.style.left = `${Math.min(x(from), x(to))}%`;
  bar.style.width = `${Math.max(Math.abs(x(to) - x(from)), 0.3)}%`;
  track.append(bar);
  const label = delta === undefined ? to.toFixed(3) : `${delta >= 0 ? "+" : "−"}${Math.abs(delta).toFixed(3)}`;
  row.append(el("span", "wf-name", name), track, el("span", "num", label));
  return row;
}

// -- start -------------------------------------------------------------------------------

for (const id of ["filter-decision", "filter-priority"]) $(id).addEventListener("change", refilter);
$("filter-search").addEventListener("input", refilter);
$("filters").addEventListener("submit", (event) => event.preventDefault());
$("pause").addEventListener("click", togglePause);
document.addEventListener("keydown", onKey);
$("detail-close").addEventListener("click", () => { $("detail").hidden = true; delete $("detail").dataset.txid; });
if (!token) setConnection("refused", "no token in the URL (?token=…; fraudlens token create)");
else connect();
