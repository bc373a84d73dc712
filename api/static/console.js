/**
 * console.js: the relay's web console. Plain ES modules, no build step, nothing from outside.
 *
 * Nothing is fetched before the user gives a token (kept in sessionStorage only). Then one
 * cloudops-events.js client listens to the six events of every execution and reconnects and
 * resumes by itself; executions.js orders each execution's events by id and replays history
 * where the live stream has a gap; terminal.js renders output. Every DOM update happens in one
 * requestAnimationFrame callback, so a fast output costs one layout per frame, not one per event.
 */

import { connect } from "/cloudops-events.js";
import {
  Executions,
  TERMINAL_STATUSES,
  fanoutStep,
} from "/static/executions.js";
import { fmtDuration, fmtTime } from "/static/format.js";
import { HostsPanel } from "/static/hosts.js";
import { SavedPlaybooks } from "/static/saved.js";
import { SchedulesPanel } from "/static/schedules.js";
import { AuditPanel } from "/static/audit.js";
import { Term, TerminalView } from "/static/terminal.js";

const TOKEN_KEY = "cloudops.token";
const SIGNED_OUT_KEY = "cloudops.signout";
const EVENT_NAMES = [
  "execution_started",
  "execution_output",
  "execution_complete",
  "execution_cancelled",
  "playbook_step_start",
  "playbook_step_complete",
  "playbook_host_start",
  "playbook_host_complete",
];
const LIST_LIMIT = 100;
const MAX_ROWS = 300;
const TOAST_MS = 7000;

const app = {
  token: null,
  client: null,
  store: null, // Executions
  view: null, // TerminalView
  hostFilter: "", // the terminal shows this host's output alone; "" for all hosts
  rows: new Map(), // executionId -> <li>
  filter: "", // the list's status filter: "", "active" or a status
  search: "", // the list's search box: a substring of the command (the relay's `q`)
  nextCursor: null, // X-Next-Cursor of the last page loaded: older executions to fetch
  loadingMore: false,
  maxRows: MAX_ROWS, // grows as the user scrolls to older pages
  frame: 0,
  dirtyRows: new Set(),
  listOrderDirty: false,
  detailDirty: false,
  termDirty: false,
  connection: "idle",
};

// -- small helpers -------------------------------------------------------------------------------
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function elapsedMs(x) {
  if (x.durationMs !== undefined && x.durationMs !== null) return x.durationMs;
  if (x.startedAt && !TERMINAL_STATUSES.has(x.status)) return Date.now() - Date.parse(x.startedAt);
  return undefined;
}

function authHeaders(extra = {}) {
  return { Authorization: `Bearer ${app.token}`, ...extra };
}

class HttpError extends Error {
  constructor(status, detail) {
    super(detail || `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

async function api(path, options = {}) {
  return (await apiResponse(path, options)).json();
}

async function apiResponse(path, { method = "GET", body } = {}) {
  const init = { method, headers: authHeaders() };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  if (res.status === 401) {
    signOut("The relay refused the token.");
    throw new HttpError(401, "unauthorized");
  }
  if (!res.ok) {
    let detail = "";
    try {
      detail = (await res.json()).detail;
    } catch {
      detail = res.statusText;
    }
    // A refused playbook lists every problem ({loc, msg}): one line each.
    const text = Array.isArray(detail)
      ? detail.map((p) => p?.msg ?? JSON.stringify(p)).join("\n")
      : typeof detail === "string" ? detail : JSON.stringify(detail);
    throw new HttpError(res.status, text);
  }
  return res;
}

// -- the list's pages: newest first, the search box as `q`, older pages on scroll ------------
function listPath(cursor) {
  const params = new URLSearchParams({ limit: String(LIST_LIMIT) });
  if (app.search) params.set("q", app.search);
  if (cursor) params.set("cursor", cursor);
  return `/api/executions?${params}`;
}

async function loadPage(cursor) {
  const res = await apiResponse(listPath(cursor));
  const records = await res.json();
  app.nextCursor = res.headers.get("X-Next-Cursor");
  for (const rec of records) app.store.mergeRecord(app.store.get(rec.executionId), rec);
  app.listOrderDirty = true;
  schedule();
  return records;
}

async function loadOlder() {
  if (!app.nextCursor || app.loadingMore) return;
  app.loadingMore = true;
  try {
    const records = await loadPage(app.nextCursor);
    app.maxRows += records.length;
  } catch {
    /* the relay is down: the next scroll tries again */
  } finally {
    app.loadingMore = false;
  }
}

function nearListEnd() {
  const list = $("executions");
  return list.scrollTop + list.clientHeight >= list.scrollHeight - 80;
}

async function eventStream(path, signal) {
  const headers = authHeaders({ Accept: "text/event-stream" });
  const res = await fetch(path, { headers, signal });
  if (res.status === 401) signOut("The relay refused the token.");
  return res;
}

function schedule() {
  if (!app.frame) app.frame = requestAnimationFrame(renderFrame);
}

/** Mark what shows `x` for the next frame. */
function touch(x, { term = false, detail = true } = {}) {
  app.dirtyRows.add(x.id);
  if (x === app.store.selected) {
    if (detail) app.detailDirty = true;
    if (term) app.termDirty = true;
  }
  schedule();
}

function openExecution(id, { updateHash = true } = {}) {
  const x = app.store.open(id);
  app.hostFilter = "";
  app.view.show(x.term);
  if (updateHash && location.hash !== `#${x.id}`) history.replaceState(null, "", `#${x.id}`);
  $("detail").hidden = false;
  $("empty-detail").hidden = true;
  app.detailDirty = true;
  touch(x, { term: true });
}

// -- rendering (one requestAnimationFrame) ---------------------------------------------------
function renderFrame() {
  app.frame = 0;
  if (app.listOrderDirty) renderListOrder();
  for (const id of app.dirtyRows) {
    const x = app.store.all.get(id);
    if (x) renderRow(x);
  }
  app.dirtyRows.clear();
  const selected = app.store.selected;
  if (app.detailDirty && selected) renderDetail(selected);
  app.detailDirty = false;
  if (app.termDirty) app.view.render();
  app.termDirty = false;
}

function sortKey(x) {
  return Date.parse(x.queuedAt || x.startedAt || "") || x.seenAt;
}

function renderListOrder() {
  app.listOrderDirty = false;
  const list = $("executions");
  const store = app.store;
  let all = [...store.all.values()].sort((a, b) => sortKey(b) - sortKey(a));
  if (all.length > app.maxRows) {
    for (const x of all.slice(app.maxRows)) {
      if (x === store.selected || !TERMINAL_STATUSES.has(x.status)) continue;
      store.forget(x);
      app.rows.get(x.id)?.remove();
      app.rows.delete(x.id);
    }
    all = all.filter((x) => store.all.has(x.id));
  }
  const frag = document.createDocumentFragment();
  for (const x of all) {
    let row = app.rows.get(x.id);
    if (!row) {
      row = buildRow(x);
      app.rows.set(x.id, row);
    }
    app.dirtyRows.add(x.id);
    frag.append(row);
  }
  list.append(frag);
  $("executions-empty").hidden = all.length > 0;
  $("executions-count").textContent = String(all.length);
}

function buildRow(x) {
  const row = el(
    "li",
    { class: "row", "data-testid": "execution-row", "data-execution-id": x.id, tabIndex: 0 },
    el("span", { class: "badge", "data-testid": "row-status" }),
    el(
      "div",
      { class: "row-main" },
      el("div", { class: "row-cmd", "data-testid": "row-command" }),
      el("div", { class: "row-meta" }),
    ),
  );
  row.addEventListener("click", () => openExecution(x.id));
  row.addEventListener("keydown", (e) => {
    if (e.key === "Enter") openExecution(x.id);
  });
  return row;
}

function isUnknown(x) {
  return x.missing && !x.recordLoaded && x.lastId === 0;
}

function statusLabel(x) {
  if (isUnknown(x)) return "unknown";
  if (x.cancelRequested && !TERMINAL_STATUSES.has(x.status)) return "cancelling";
  return x.status;
}

function shown(x) {
  if (x === app.store.selected) return true;
  if (app.search && !(x.command || "").toLowerCase().includes(app.search.toLowerCase())) {
    return false;
  }
  const f = app.filter;
  if (!f) return true;
  return f === "active" ? !TERMINAL_STATUSES.has(x.status) : x.status === f;
}

function renderRow(x) {
  const row = app.rows.get(x.id);
  if (!row) return;
  row.hidden = !shown(x);
  row.dataset.status = x.status;
  row.classList.toggle("selected", x === app.store.selected);
  const badge = row.children[0];
  badge.textContent = statusLabel(x);
  badge.className = `badge st-${isUnknown(x) ? "failed" : x.status}`;
  const [cmd, meta] = row.children[1].children;
  cmd.textContent = x.command || x.id;
  cmd.title = x.command || x.id;
  const parts = [x.commandType || "…", fmtTime(x.startedAt || x.queuedAt)];
  const took = elapsedMs(x);
  if (took !== undefined) parts.push(fmtDuration(took));
  if (x.exitCode !== undefined && x.exitCode !== null && x.status !== "completed") {
    parts.push(`exit ${x.exitCode}`);
  }
  meta.textContent = parts.filter(Boolean).join(" · ");
}

function renderDetail(x) {
  const status = $("execution-status");
  const unknown = isUnknown(x);
  status.textContent = statusLabel(x);
  status.className = `badge big st-${unknown ? "failed" : x.status}`;
  status.dataset.status = unknown ? "unknown" : x.status;
  $("execution-command").textContent = x.command || "…";
  $("execution-command").title = x.command || "";
  $("execution-id").textContent = x.id;
  const facts = [];
  const fact = (label, value) => {
    if (value === undefined || value === null || value === "") return;
    const pair = [el("dt", { text: label }), el("dd", { text: String(value) })];
    facts.push(el("div", { class: "fact" }, ...pair));
  };
  fact("type", x.commandType);
  fact("submitted by", x.submittedBy);
  fact("cancelled by", x.cancelledBy);
  fact("worker", x.worker);
  fact("started", fmtTime(x.startedAt));
  fact(TERMINAL_STATUSES.has(x.status) ? "took" : "running for", fmtDuration(elapsedMs(x)));
  fact("exit code", x.exitCode);
  const o = x.options || {};
  fact("working dir", o.workingDir);
  fact("timeout", o.timeout ? `${o.timeout} s` : undefined);
  fact("profile", o.awsProfile);
  fact("region", o.awsRegion);
  if (x.error) fact("error", x.error);
  if (unknown) fact("error", "the relay does not know this execution (expired or never existed)");
  $("execution-facts").replaceChildren(...facts);
  $("terminal").dataset.running = String(!TERMINAL_STATUSES.has(x.status) && !unknown);
  const cancel = $("cancel-execution");
  cancel.hidden = TERMINAL_STATUSES.has(x.status) || unknown;
  cancel.disabled = x.cancelRequested;
  cancel.textContent = x.cancelRequested ? "Cancelling…" : "Cancel";
  // Rerun: only once ended, and only when something did not succeed.
  const rerun = TERMINAL_STATUSES.has(x.status) && !unknown && !succeeded(x);
  $("rerun-failed").hidden = !rerun;
  $("rerun-all").hidden = !rerun;
  renderSteps(x);
  renderFanout(x);
}

function renderSteps(x) {
  const box = $("playbook");
  const isPlaybook = x.commandType === "playbook" || x.steps.size > 0;
  box.hidden = !isPlaybook;
  if (!isPlaybook) return;
  const steps = [...x.steps.values()].sort((a, b) => a.stepNumber - b.stepNumber);
  const total = Math.max(x.totalSteps, steps.length);
  const done = steps.filter((s) => TERMINAL_STATUSES.has(s.status)).length;
  const running = steps.find((s) => s.status === "running");
  $("playbook-progress-text").textContent = running
    ? `Step ${running.stepNumber} of ${total}: ${running.stepName}`
    : `${done} of ${total} steps finished`;
  $("playbook-progress-bar").style.width = total ? `${(100 * done) / total}%` : "0%";
  const list = $("playbook-steps");
  if (list.dataset.executionId !== x.id) {
    list.replaceChildren();
    list.dataset.executionId = x.id;
  }
  const existing = new Map([...list.children].map((li) => [li.dataset.stepId, li]));
  steps.forEach((s, i) => {
    let li = existing.get(s.stepId);
    existing.delete(s.stepId);
    if (!li) li = buildStep(s.stepId);
    if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null);
    updateStep(li, s);
  });
  for (const li of existing.values()) li.remove();
}

const STEP_ICONS = {
  pending: "○",
  running: "◐",
  completed: "✓",
  failed: "✗",
  timeout: "⌛",
  cancelled: "■",
};

function buildStep(stepId) {
  return el(
    "li",
    { class: "step", "data-testid": "step", "data-step-id": stepId },
    el("span", { class: "step-icon" }),
    el("span", { class: "step-num" }),
    el(
      "span",
      { class: "step-main" },
      el("span", { class: "step-name", "data-testid": "step-name" }),
      el("span", { class: "step-cmd" }),
    ),
    el("span", { class: "step-status", "data-testid": "step-status" }),
    el("span", { class: "step-duration", "data-testid": "step-duration" }),
  );
}

/** Write only what changed, so that each state change is one attribute mutation. */
function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function updateStep(li, s) {
  if (li.dataset.status !== s.status) {
    li.dataset.status = s.status;
    li.className = `step st-${s.status}`;
  }
  let took = s.durationMs;
  if (s.status === "running" && s.startedMs) took = Date.now() - s.startedMs;
  else if (s.status === "running" && s.startedAt) took = Date.now() - Date.parse(s.startedAt);
  const [icon, num, main, status, duration] = li.children;
  setText(icon, STEP_ICONS[s.status] || "○");
  setText(num, String(s.stepNumber));
  setText(main.children[0], s.stepName || s.stepId);
  setText(main.children[1], s.command || "");
  let label = s.status;
  if (s.status === "failed" && s.exitCode !== undefined && s.exitCode !== null) {
    label += ` (exit ${s.exitCode})`;
  }
  if (s.continueOnError && s.status === "failed") label += " · continued";
  setText(status, label);
  setText(duration, fmtDuration(took));
  const title = s.error || "";
  if (li.title !== title) li.title = title;
}

function succeeded(x) {
  if (x.status !== "completed") return false;
  const step = fanoutStep(x);
  return !step || [...step.hosts.values()].every((h) => h.status === "completed");
}

// -- a fan-out step: its hosts' states, and the terminal's host filter ---------------------
function hostDuration(h) {
  if (h.status === "running" && h.startedMs) return Date.now() - h.startedMs;
  return h.durationMs;
}

function renderFanout(x) {
  const step = fanoutStep(x);
  $("fanout").hidden = !step;
  const tabs = $("host-tabs");
  tabs.hidden = !step;
  if (!step) return;
  const hosts = [...step.hosts.values()];
  const counts = {};
  for (const h of hosts) counts[h.status] = (counts[h.status] || 0) + 1;
  const summary = Object.entries(counts).map(([k, n]) => `${n} ${k}`).join(", ");
  setText($("fanout-title"), `Step ${step.stepNumber} on ${hosts.length} hosts: ${summary}`);
  const body = $("fanout-hosts");
  const rows = new Map([...body.children].map((tr) => [tr.dataset.host, tr]));
  hosts.forEach((h, i) => {
    let tr = rows.get(h.host);
    rows.delete(h.host);
    if (!tr) {
      tr = el("tr", { "data-testid": "fanout-host", "data-host": h.host });
      for (const k of ["host", "state", "duration", "exit"]) {
        tr.append(el("td", { "data-testid": `fanout-host-${k}` }));
      }
    }
    if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null);
    const [name, state, duration, exit] = tr.children;
    if (tr.dataset.status !== h.status) {
      tr.dataset.status = h.status;
      state.className = `badge st-${h.status}`;
    }
    setText(name, h.host);
    setText(state, h.status);
    setText(duration, fmtDuration(hostDuration(h)));
    setText(exit, h.exitCode === undefined ? "" : String(h.exitCode));
    const title = h.error || "";
    if (tr.title !== title) tr.title = title;
  });
  for (const tr of rows.values()) tr.remove();
  renderHostTabs(x, hosts);
}

function renderHostTabs(x, hosts) {
  const tabs = $("host-tabs");
  const names = ["", ...hosts.map((h) => h.host)];
  if (tabs.dataset.key !== `${x.id} ${names.join(" ")}`) {
    tabs.dataset.key = `${x.id} ${names.join(" ")}`;
    tabs.replaceChildren(
      ...names.map((host) => {
        const tab = el("button", {
          type: "button",
          role: "tab",
          text: host || "All hosts",
          "data-testid": "host-tab",
          "data-host": host,
        });
        tab.addEventListener("click", () => showHost(host));
        return tab;
      }),
    );
  }
  for (const tab of tabs.children) {
    const on = String(tab.dataset.host === app.hostFilter);
    if (tab.getAttribute("aria-selected") !== on) tab.setAttribute("aria-selected", on);
  }
}

/** Put one host's output (or every host's, "") in the terminal: the same view, another Term. */
function showHost(host) {
  const x = app.store.selected;
  if (!x || !x.term) return;
  app.hostFilter = host;
  let term = x.term;
  if (host) {
    term = x.hostTerms.get(host);
    if (!term) x.hostTerms.set(host, (term = new Term()));
  }
  app.view.show(term);
  app.detailDirty = true;
  schedule();
}

async function rerun(hosts) {
  const x = app.store.selected;
  if (!x) return;
  const buttons = [$("rerun-failed"), $("rerun-all")];
  for (const b of buttons) b.disabled = true;
  try {
    const path = `/api/executions/${encodeURIComponent(x.id)}/rerun`;
    const { executionId } = await api(path, { method: "POST", body: { hosts } });
    const next = app.store.get(executionId);
    next.command ||= x.command;
    next.commandType ||= x.commandType;
    next.queuedAt ||= new Date().toISOString();
    app.listOrderDirty = true;
    openExecution(executionId);
  } catch (e) {
    if (e.status !== 401) toast("Rerun refused", e.detail || e.message, "failed");
  } finally {
    for (const b of buttons) b.disabled = false;
  }
}

function onTerminalChange(view) {
  const x = app.store.selected;
  const info = $("terminal-info");
  if (!x || !view.term) {
    info.textContent = "";
    return;
  }
  const term = view.term;
  const total = term.total + (term.open.length ? 1 : 0);
  const shown = view.domLines;
  info.textContent =
    total > shown
      ? `${total.toLocaleString("en-US")} lines, the last ${shown.toLocaleString("en-US")} shown` +
        " (download for all)"
      : `${total.toLocaleString("en-US")} lines`;
  $("terminal").dataset.lines = String(shown);
}

// -- notifications ---------------------------------------------------------------------------
function notifyEnd(x) {
  const took = fmtDuration(x.durationMs);
  const what = x.command || x.id;
  const titles = {
    completed: "Completed",
    failed: "Failed",
    timeout: "Timed out",
    cancelled: "Cancelled",
  };
  const title = `${titles[x.status] || x.status}: ${what}`;
  let body = `${x.id} · ${took}`;
  if (x.exitCode !== undefined && x.exitCode !== null) body += ` · exit code ${x.exitCode}`;
  if (x.error) body += ` · ${x.error}`;
  toast(title, body, x.status, x.id);
  if ("Notification" in window && Notification.permission === "granted") {
    try {
      new Notification(`cloudops: ${title}`, { body, tag: x.id });
    } catch {
      /* some browsers only allow notifications from a service worker */
    }
  }
}

function toast(title, body, kind, executionId) {
  const box = el(
    "div",
    { class: `toast st-${kind}`, "data-testid": "toast", "data-status": kind, role: "status" },
    el("div", { class: "toast-title", text: title }),
    el("div", { class: "toast-body", text: body }),
  );
  if (executionId) {
    box.dataset.executionId = executionId;
    box.addEventListener("click", () => openExecution(executionId));
  }
  $("toasts").append(box);
  setTimeout(() => box.remove(), TOAST_MS);
}

function askNotificationPermission() {
  if ("Notification" in window && Notification.permission === "default") {
    Notification.requestPermission().then(renderNotifyButton, () => {});
  }
}

function renderNotifyButton() {
  const btn = $("notify-toggle");
  if (!("Notification" in window)) {
    btn.hidden = true;
    return;
  }
  btn.dataset.permission = Notification.permission;
  btn.textContent =
    Notification.permission === "granted" ? "Desktop alerts: on" : "Enable desktop alerts";
  btn.disabled = Notification.permission === "denied";
}

// -- connection --------------------------------------------------------------------------------
function setConnection(state) {
  const wasDown = app.connection === "down";
  app.connection = state;
  const box = $("connection");
  box.dataset.state = state;
  box.querySelector(".conn-text").textContent =
    { connecting: "connecting…", live: "live", down: "reconnecting…", idle: "offline" }[state] ||
    state;
  if (state === "live" && wasDown) refreshList(); // what started or ended while we were away
}

function trackedWebSocket() {
  // The client keeps its socket private; a subclass tells the page when it opens and closes.
  return class TrackedWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      if (app.connection !== "down") setConnection("connecting");
      this.addEventListener("open", () => setConnection("live"));
      this.addEventListener("close", () => {
        if (app.client) setConnection("down");
      });
    }
  };
}

async function refreshList() {
  try {
    await loadPage(null);
  } catch {
    /* the relay is down; the next reconnect refreshes again */
  }
}

// -- forms ---------------------------------------------------------------------------------------
function parseParams(text) {
  const params = {};
  text.split("\n").forEach((raw, i) => {
    const line = raw.trim();
    if (!line || line.startsWith("#")) return;
    const eq = line.indexOf("=");
    if (eq <= 0) throw new Error(`params, line ${i + 1}: expected KEY=VALUE, got "${line}"`);
    params[line.slice(0, eq).trim()] = line.slice(eq + 1).trim();
  });
  return params;
}

async function submit(body, form) {
  const error = $("form-error");
  error.hidden = true;
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  askNotificationPermission();
  try {
    const { executionId } = await api("/api/executions", { method: "POST", body });
    const x = app.store.get(executionId);
    // Subscribed before it started: every event of it comes live, nothing to replay.
    x.fresh = !x.live && x.lastId === 0 && document.body.dataset.ready === "true";
    x.command ||= body.command || body.playbookName || "";
    x.commandType ||= body.commandType || (body.playbookName ? "playbook" : undefined);
    x.queuedAt ||= new Date().toISOString();
    app.listOrderDirty = true;
    openExecution(executionId);
  } catch (e) {
    if (e.status !== 401) {
      error.textContent = e.detail || e.message;
      error.hidden = false;
    }
  } finally {
    button.disabled = false;
  }
}

function setupForms() {
  const cmd = $("command-input");
  const type = $("command-type");
  let typeTouched = false;
  type.addEventListener("change", () => (typeTouched = true));
  cmd.addEventListener("input", () => {
    if (!typeTouched) type.value = /^\s*aws(\s|$)/.test(cmd.value) ? "aws_cli" : "script";
  });
  // Enter runs the command (Shift+Enter for a new line); Ctrl+Enter submits either form.
  cmd.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      $("command-form").requestSubmit();
    }
  });
  $("playbook-form").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      $("playbook-form").requestSubmit();
    }
  });
  $("command-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const options = {};
    const wd = $("working-dir").value.trim();
    const timeout = $("timeout").value.trim();
    const profile = $("aws-profile").value.trim();
    const region = $("aws-region").value.trim();
    if (wd) options.workingDir = wd;
    if (timeout) options.timeout = Number(timeout);
    if (profile) options.awsProfile = profile;
    if (region) options.awsRegion = region;
    const body = { commandType: type.value, command: cmd.value };
    if (Object.keys(options).length) body.options = options;
    submit(body, e.currentTarget);
  });
  $("playbook-form").addEventListener("submit", (e) => {
    e.preventDefault();
    let params;
    try {
      params = parseParams($("playbook-params").value);
    } catch (err) {
      const error = $("form-error");
      error.textContent = err.message;
      error.hidden = false;
      return;
    }
    const body = { commandType: "playbook", playbook: $("playbook-yaml").value };
    if (Object.keys(params).length) body.params = params;
    submit(body, e.currentTarget);
  });
  const saved = new SavedPlaybooks({
    api: (path) => api(path),
    submit,
    showError: (text) => {
      $("form-error").textContent = text;
      $("form-error").hidden = false;
    },
  });
  for (const tab of document.querySelectorAll("[data-tab]")) {
    tab.addEventListener("click", () => {
      for (const t of document.querySelectorAll("[data-tab]")) {
        const on = t === tab;
        t.setAttribute("aria-selected", String(on));
        document.getElementById(t.dataset.tab).hidden = !on;
      }
      $("form-error").hidden = true;
      if (tab.dataset.tab === "saved-form") saved.refresh();
    });
  }
  $("cancel-execution").addEventListener("click", async () => {
    const x = app.store.selected;
    if (!x) return;
    x.cancelRequested = true;
    touch(x);
    try {
      await api(`/api/executions/${encodeURIComponent(x.id)}/cancel`, { method: "POST" });
    } catch (e) {
      if (e.status === 409) toast("Already ended", x.id, "info");
      else if (e.status !== 401) {
        x.cancelRequested = false;
        toast("Cancel failed", e.detail || e.message, "failed");
      }
      touch(x);
    }
  });
  $("rerun-failed").addEventListener("click", () => rerun("failed"));
  $("rerun-all").addEventListener("click", () => rerun("all"));
  $("download-output").addEventListener("click", async () => {
    const x = app.store.selected;
    if (!x) return;
    const btn = $("download-output");
    btn.disabled = true;
    try {
      const res = await fetch(`/api/executions/${encodeURIComponent(x.id)}/output`, {
        headers: authHeaders(),
      });
      if (!res.ok) throw new HttpError(res.status);
      const url = URL.createObjectURL(await res.blob());
      const a = el("a", { href: url, download: `${x.id}.log` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (e) {
      toast("Download failed", e.message, "failed");
    } finally {
      btn.disabled = false;
    }
  });
  $("status-filter").addEventListener("change", (e) => {
    app.filter = e.currentTarget.value;
    for (const id of app.rows.keys()) app.dirtyRows.add(id);
    schedule();
  });
  let searchTimer = 0;
  $("list-search").addEventListener("input", (e) => {
    app.search = e.currentTarget.value.trim();
    for (const id of app.rows.keys()) app.dirtyRows.add(id);
    schedule();
    // The relay searches everything it keeps (its database too): ask once typing pauses.
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => loadPage(null).catch(() => {}), 250);
  });
  $("executions").addEventListener("scroll", () => {
    if (nearListEnd()) loadOlder();
  });
  $("notify-toggle").addEventListener("click", askNotificationPermission);
  $("sign-out").addEventListener("click", () => signOut());
}

/** The execution named in the URL's fragment (`#ex_...`), "" when none. */
function executionInHash() {
  try {
    return decodeURIComponent(location.hash.slice(1)).trim();
  } catch {
    return ""; // a malformed %-escape
  }
}

// -- token gate ----------------------------------------------------------------------------------
function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  // Dropping every piece of state is simplest done by reloading the page.
  if (message) sessionStorage.setItem(SIGNED_OUT_KEY, message);
  location.hash = "";
  location.reload();
}

/** Who is signed in (GET /api/whoami), shown in the top bar; the page hides what the role may
 * not do (console.css, `data-role`) and an admin gets the audit panel. */
async function showIdentity() {
  let me = null;
  try {
    me = await api("/api/whoami");
  } catch {
    // An older relay without the route: nothing hidden, the relay still refuses what it must.
  }
  document.body.dataset.role = me ? me.role : "unknown";
  if (!me) return;
  const scope = me.queues ? ` · queues ${me.queues.join(", ")}` : "";
  const who = $("whoami");
  who.textContent = `${me.name} · ${me.role}${scope}`;
  who.dataset.role = me.role;
  who.hidden = false;
  if (me.role === "admin") {
    new AuditPanel({
      getJson: (path) => api(path),
      listEl: $("audit"),
      countEl: $("audit-count"),
      emptyEl: $("audit-empty"),
      errorEl: $("audit-error"),
    }).start();
  }
}

async function start(token) {
  app.token = token;
  const gateError = $("token-error");
  let first;
  try {
    first = await apiResponse(listPath(null));
  } catch (e) {
    app.token = null;
    gateError.textContent =
      e.status === 401 ? "The relay refused this token." : `The relay did not answer: ${e.message}`;
    gateError.hidden = false;
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $("gate").hidden = true;
  $("app").hidden = false;
  app.view = new TerminalView({
    scroller: $("terminal"),
    linesEl: $("terminal-lines"),
    noteEl: $("terminal-hidden-note"),
    followEl: $("terminal-follow"),
    onChange: onTerminalChange,
  });
  app.store = new Executions({
    getJson: (path) => api(path),
    getStream: eventStream,
    changed: touch,
    added: () => {
      app.listOrderDirty = true;
      schedule();
    },
    ended: notifyEnd,
  });
  await showIdentity();
  setupForms();
  renderNotifyButton();
  new HostsPanel({
    getJson: (path) => api(path),
    listEl: $("hosts"),
    countEl: $("hosts-count"),
    emptyEl: $("hosts-empty"),
    errorEl: $("hosts-error"),
  }).start();
  new SchedulesPanel({
    getJson: (path) => api(path),
    listEl: $("schedules"),
    countEl: $("schedules-count"),
    emptyEl: $("schedules-empty"),
    errorEl: $("schedules-error"),
  }).start();
  app.nextCursor = first.headers.get("X-Next-Cursor");
  for (const rec of await first.json()) app.store.mergeRecord(app.store.get(rec.executionId), rec);
  app.listOrderDirty = true;
  schedule();

  app.client = connect({
    baseUrl: location.origin,
    token,
    WebSocket: trackedWebSocket(),
    onError: (e) => {
      if (/refused the token/.test(String(e))) signOut("The relay refused the token.");
    },
  });
  setConnection("connecting");
  const live = (e) => app.store.ingest(e, "live");
  const listening = EVENT_NAMES.map((name) => app.client.listen(name, live));
  const hashId = executionInHash();
  if (hashId) openExecution(hashId, { updateHash: false });
  await Promise.all(listening);
  document.body.dataset.ready = "true"; // subscribed: whatever starts now is seen from id 1
  setInterval(() => {
    // Running clocks: the list's and the detail's durations.
    for (const x of app.store.all.values()) {
      if (x.status === "running") app.dirtyRows.add(x.id);
    }
    const selected = app.store.selected;
    if (selected && !TERMINAL_STATUSES.has(selected.status)) app.detailDirty = true;
    schedule();
  }, 1000);
}

function init() {
  const note = sessionStorage.getItem(SIGNED_OUT_KEY);
  if (note) {
    sessionStorage.removeItem(SIGNED_OUT_KEY);
    const err = $("token-error");
    err.textContent = note;
    err.hidden = false;
  }
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const token = $("token-input").value.trim();
    if (token) start(token);
  });
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) start(saved);
  else $("token-input").focus();
}

window.addEventListener("hashchange", () => {
  const id = executionInHash();
  const selected = app.store && app.store.selected;
  if (app.view && id && (!selected || selected.id !== id)) openExecution(id, { updateHash: false });
});

init();
