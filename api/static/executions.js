/**
 * executions.js: what the console knows of each execution, built from events. No DOM here.
 *
 * Every execution has a status (from the list, the records and the live events of all
 * executions). The ones opened on screen also have a Term (terminal.js), and their events are
 * applied strictly by event id:
 * - an id at or below the last applied is a duplicate and is dropped;
 * - an id past a gap waits in `pending` while the gap is filled from the relay's history
 *   (`GET /api/executions/{id}/events?after=N`, SSE read with fetch so that the token goes in a
 *   header), then everything pending that follows is applied in order;
 * - an execution opened after it started is replayed from its first event. The live client
 *   (cloudops-events.js) keeps delivering meanwhile; the replay stops when the live stream has
 *   caught up with it.
 */

import { fmtDuration } from "/static/format.js";
import { Term } from "/static/terminal.js";

export const TERMINAL_STATUSES = new Set(["completed", "failed", "timeout", "cancelled"]);
// A host of a fan-out step (CONTRACT §7) also ends skipped or lost.
export const HOST_END_STATUSES = new Set([...TERMINAL_STATUSES, "skipped", "lost"]);
const STATUS_RANK = { queued: 0, running: 1, completed: 2, failed: 2, timeout: 2, cancelled: 2 };
const STEP_RANK = { pending: 0, running: 1, completed: 2, failed: 2, timeout: 2, cancelled: 2 };
// Executions whose output stays in memory (the one on screen and the last ones viewed); the
// others keep their status only and are replayed from history when opened again.
const MAX_TERMS = 8;
const REPLAY_RETRY_MS = 1000;

function newExecution(id) {
  return {
    id,
    command: "",
    commandType: "",
    status: "queued",
    options: {},
    queuedAt: undefined,
    startedAt: undefined,
    completedAt: undefined,
    durationMs: undefined,
    exitCode: undefined,
    error: undefined,
    worker: undefined,
    cancelRequested: false,
    outputTruncated: false,
    steps: new Map(), // stepId -> {stepId, stepName, stepNumber, status, durationMs, ...}
    totalSteps: 0,
    seenAt: Date.now(),
    missing: false, // the relay answered 404
    recordLoaded: false,
    recordRequested: false,
    // streaming
    lastId: 0, // the last event id applied (to the Term when there is one)
    pending: new Map(), // id -> {ev, source}: arrived after a gap
    term: null, // all output; a fan-out step's lines prefixed with their host
    hostTerms: new Map(), // host -> Term of that host's output alone
    hostTails: new Map(), // host -> its unfinished last line, not yet in `term`
    termEnded: false, // execution_complete applied to the current Term
    fresh: false, // submitted here while subscribed: nothing to replay
    live: false, // an event of it came from the live client
    endSeenLive: false, // its execution_complete came from the live client
    notified: false, // its end was announced
    liveSinceReplay: false,
    replay: null, // AbortController of the running history replay
  };
}

function raiseStatus(x, status) {
  if (status && (STATUS_RANK[status] ?? 0) >= (STATUS_RANK[x.status] ?? 0)) {
    if (!TERMINAL_STATUSES.has(x.status) || TERMINAL_STATUSES.has(status)) x.status = status;
  }
}

function upsertStep(x, stepId, fields, { force = false } = {}) {
  let step = x.steps.get(stepId);
  if (!step) {
    step = { stepId, stepName: stepId, status: "pending", stepNumber: x.steps.size + 1 };
    x.steps.set(stepId, step);
  }
  const rank = STEP_RANK[fields.status] ?? 0;
  if (fields.status && !force && rank < (STEP_RANK[step.status] ?? 0)) {
    const { status, ...rest } = fields; // an older view of the step: keep its state
    Object.assign(step, rest);
  } else {
    Object.assign(step, fields);
  }
}

/** A fan-out step's host: {host, status, attempt, startedMs, durationMs, exitCode, error}. */
function upsertHost(step, host, fields) {
  let h = step.hosts.get(host);
  if (!h) {
    h = { host, status: "pending" };
    step.hosts.set(host, h);
  }
  // An ended host stays ended: a record read late does not turn it back to running.
  if (HOST_END_STATUSES.has(h.status) && !HOST_END_STATUSES.has(fields.status)) return;
  Object.assign(h, fields);
}

function mergeRecordHosts(step, hosts) {
  step.hosts ||= new Map();
  for (const r of hosts) {
    const fields = { status: r.status };
    if (r.exitCode !== undefined && r.exitCode !== null) fields.exitCode = r.exitCode;
    if (r.durationMs !== undefined && r.durationMs !== null) fields.durationMs = r.durationMs;
    upsertHost(step, r.host, fields);
  }
}

/** The step whose hosts the console shows: the last fan-out step started. */
export function fanoutStep(x) {
  let best = null;
  for (const s of x.steps.values()) {
    if (s.hosts && s.hosts.size && (!best || s.stepNumber >= best.stepNumber)) best = s;
  }
  return best;
}

/** The envelopes of an SSE body, as they arrive. */
export async function* sseEnvelopes(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value;
      if (!buf.includes("\n\n")) continue;
      const blocks = buf.split("\n\n");
      buf = blocks.pop();
      for (const block of blocks) {
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("data:")) data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
        }
        if (!data.length) continue;
        let env;
        try {
          env = JSON.parse(data.join("\n"));
        } catch {
          continue;
        }
        if (env && env.event && typeof env.id === "number") yield env;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

export class Executions {
  /**
   * getJson(path): a promise of the JSON of a GET (rejects with `.status` on HTTP errors);
   * getStream(path, signal): a promise of the fetch Response of an SSE route;
   * changed(x, {term, detail}): something of x changed (its output when `term`);
   * added(x): a new execution; ended(x): x ended while the live client listened.
   */
  constructor({ getJson, getStream, changed, added, ended }) {
    this.all = new Map();
    this.selected = null;
    this._getJson = getJson;
    this._getStream = getStream;
    this._changed = changed;
    this._added = added;
    this._ended = ended;
    this._terms = []; // ids holding a Term, least recently opened first
  }

  get(id) {
    let x = this.all.get(id);
    if (!x) {
      x = newExecution(id);
      this.all.set(id, x);
      this._added(x);
    }
    return x;
  }

  forget(x) {
    if (x === this.selected) return;
    this._dropTerm(x);
    this.all.delete(x.id);
  }

  mergeRecord(x, rec) {
    x.recordLoaded = true;
    for (const k of ["command", "commandType", "queuedAt", "startedAt", "worker", "submittedBy"]) {
      if (rec[k] !== undefined) x[k] = rec[k];
    }
    if (rec.options) x.options = rec.options;
    raiseStatus(x, rec.status);
    if (TERMINAL_STATUSES.has(rec.status)) {
      for (const k of ["completedAt", "durationMs", "exitCode", "error", "cancelledBy"]) {
        if (rec[k] !== undefined) x[k] = rec[k];
      }
    }
    if (rec.cancelRequested) x.cancelRequested = true;
    if (rec.outputTruncated) x.outputTruncated = true;
    if (Array.isArray(rec.steps)) {
      x.totalSteps = Math.max(x.totalSteps, rec.steps.length);
      rec.steps.forEach((s, i) => {
        const fields = { stepName: s.stepName, stepNumber: i + 1, status: s.status };
        for (const k of ["exitCode", "durationMs", "error", "worker", "attempts", "startedAt"]) {
          if (s[k] !== undefined) fields[k] = s[k];
        }
        upsertStep(x, s.stepId, fields);
        if (Array.isArray(s.hosts)) mergeRecordHosts(x.steps.get(s.stepId), s.hosts);
      });
    }
    this._changed(x, {});
  }

  async loadRecord(x) {
    try {
      this.mergeRecord(x, await this._getJson(`/api/executions/${encodeURIComponent(x.id)}`));
    } catch (e) {
      if (e.status === 404) {
        x.missing = true;
        this._changed(x, {});
      }
    }
  }

  /** Put `id` on screen: give it a Term, replaying its history unless nothing is missed. */
  open(id) {
    const x = this.get(id);
    const previous = this.selected;
    this.selected = x;
    if (previous && previous !== x) this._changed(previous, {});
    if (!x.term) {
      x.term = new Term();
      x.hostTerms.clear();
      x.hostTails.clear();
      x.termEnded = false;
      if (!x.fresh || x.lastId > 0) {
        x.lastId = 0;
        x.pending.clear();
        this._replay(x);
      }
    }
    this._terms = this._terms.filter((t) => t !== x.id);
    this._terms.push(x.id);
    while (this._terms.length > MAX_TERMS) {
      const oldest = this.all.get(this._terms.shift());
      if (oldest && oldest !== this.selected) this._dropTerm(oldest);
    }
    this.loadRecord(x);
    return x;
  }

  /** An event from the live client (`source` "live") or from a history replay. */
  ingest(ev, source) {
    const id = ev.payload && ev.payload.executionId;
    if (!id || typeof ev.id !== "number") return;
    const x = this.get(id);
    if (source === "live") {
      x.live = true;
      x.liveSinceReplay = true;
      if (ev.event === "execution_complete") {
        // News: the client only sends what happens while it listens (or what it missed during
        // a reconnect). Announced once, even when a replay applied the same event first.
        x.endSeenLive = true;
        this._announce(x);
      }
      if (ev.id > 1 && !x.recordRequested && !x.command) {
        x.recordRequested = true; // first seen mid-way: its command comes from the record
        this.loadRecord(x);
      }
    }
    if (!x.term) {
      // Not on screen: only its status matters, and one execution's events come in order.
      if (ev.id > x.lastId) {
        x.lastId = ev.id;
        this._apply(x, ev, source);
      }
      return;
    }
    if (ev.id <= x.lastId) return; // a duplicate (a replay overlapping the live stream)
    if (ev.id > x.lastId + 1) {
      x.pending.set(ev.id, { ev, source });
      if (!x.replay) this._replay(x);
      return;
    }
    this._applyInOrder(x, ev, source);
    let next;
    while ((next = x.pending.get(x.lastId + 1))) {
      x.pending.delete(x.lastId + 1);
      this._applyInOrder(x, next.ev, next.source);
    }
    // The live stream caught up with the replay: the replay is no longer needed.
    if (x.replay && source === "live" && x.liveSinceReplay && x.pending.size === 0) {
      x.replay.abort();
      x.replay = null;
    }
  }

  // -- internals ----------------------------------------------------------------------------
  _announce(x) {
    if (x.notified || !x.endSeenLive || !TERMINAL_STATUSES.has(x.status) || !x.completedAt) return;
    x.notified = true;
    this._ended(x);
  }

  _dropTerm(x) {
    x.term = null;
    x.hostTerms.clear();
    x.hostTails.clear();
    x.pending.clear();
    if (x.replay) x.replay.abort();
    x.replay = null;
  }

  _applyInOrder(x, ev, source) {
    x.lastId = ev.id;
    this._apply(x, ev, source);
  }

  async _replay(x) {
    if (x.replay) x.replay.abort();
    const ctl = new AbortController();
    x.replay = ctl;
    x.liveSinceReplay = false;
    const path = `/api/executions/${encodeURIComponent(x.id)}/events?after=${x.lastId}`;
    try {
      const res = await this._getStream(path, ctl.signal);
      if (res.status === 404) {
        x.missing = true;
        this._changed(x, {});
        return;
      }
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      for await (const env of sseEnvelopes(res.body)) {
        if (x.replay !== ctl) return;
        this.ingest({ event: env.event, id: env.id, payload: env.payload }, "history");
        if (x.replay !== ctl) return; // caught up with the live stream, or complete
      }
    } catch {
      if (ctl.signal.aborted) return;
    } finally {
      if (x.replay === ctl) x.replay = null;
    }
    // The stream broke (a relay restart) before the end: replay again from where we are,
    // unless the live client covers this execution (it resumes by itself).
    setTimeout(() => {
      if (!x.term || x.replay || x.termEnded) return;
      if (x.liveSinceReplay && x.pending.size === 0) return;
      this._replay(x);
    }, REPLAY_RETRY_MS);
  }

  /** A host's output: alone in its own Term, and whole lines prefixed `host | ` in `term`. */
  _writeHost(x, p) {
    let own = x.hostTerms.get(p.host);
    if (!own) x.hostTerms.set(p.host, (own = new Term()));
    own.write(p.stream, p.output);
    // Hosts interleave: only whole lines go to the shared Term, so none is cut by another.
    const text = (x.hostTails.get(p.host) || "") + p.output;
    const cut = text.lastIndexOf("\n") + 1;
    x.hostTails.set(p.host, text.slice(cut));
    if (cut) x.term.write(p.stream, text.slice(0, cut).replace(/^(?=.)/gm, `${p.host} | `));
  }

  _hostEvent(x, name, p) {
    const step = x.steps.get(p.stepId);
    if (!step) return;
    step.hosts ||= new Map();
    if (name === "playbook_host_start") {
      upsertHost(step, p.host, { status: "running", attempt: p.attempt, startedMs: Date.now() });
      return;
    }
    const fields = { status: p.status, durationMs: p.durationMs, error: p.error };
    if (p.exitCode !== undefined && p.exitCode !== null) fields.exitCode = p.exitCode;
    upsertHost(step, p.host, fields);
    const tail = x.hostTails.get(p.host);
    if (x.term && tail) x.term.write("stdout", `${p.host} | ${tail}\n`);
    x.hostTails.delete(p.host);
    if (x.term) {
      const exit = fields.exitCode !== undefined ? `, exit code ${fields.exitCode}` : "";
      const kind = p.success ? "m-ok" : "m-bad";
      x.term.meta(`${p.success ? "✓" : "✗"} ${p.host} ${p.status}${exit}`, kind);
    }
  }

  _apply(x, ev, source) {
    const p = ev.payload;
    const term = x.term;
    switch (ev.event) {
      case "execution_started":
        x.command = p.command;
        x.commandType = p.commandType;
        x.startedAt = p.startedAt;
        x.options = p.options || {};
        if (p.worker) x.worker = p.worker;
        raiseStatus(x, "running");
        if (term) {
          const where = p.worker ? ` on ${p.worker}` : "";
          const line =
            p.commandType === "playbook" ? `▶ playbook ${p.command}${where}` : `$ ${p.command}`;
          term.meta(line, "m-start");
        }
        break;
      case "execution_output": {
        const before = x.status;
        if (term) {
          if (p.droppedBytes) {
            term.meta(`… ${p.droppedBytes} bytes of output lost (Redis unreachable)`, "m-warn");
          }
          if (p.host) this._writeHost(x, p);
          else term.write(p.stream, p.output);
          if (p.truncated) term.meta("… output cap reached: later output is not kept", "m-warn");
        }
        if (p.truncated) x.outputTruncated = true;
        raiseStatus(x, "running");
        // The hot path: the detail only changes with the status.
        this._changed(x, { term: term !== null, detail: before !== x.status });
        return;
      }
      case "playbook_host_start":
      case "playbook_host_complete":
        this._hostEvent(x, ev.event, p);
        break;
      case "playbook_step_start": {
        x.totalSteps = Math.max(x.totalSteps, p.totalSteps || 0);
        const fields = {
          stepName: p.stepName,
          stepNumber: p.stepNumber,
          command: p.command,
          status: "running",
          startedMs: Date.now(),
          attempt: p.attempt,
        };
        upsertStep(x, p.stepId, fields, { force: true });
        if (Array.isArray(p.hosts)) {
          const step = x.steps.get(p.stepId);
          step.hosts = new Map(); // a retry starts every host again
          for (const host of p.hosts) upsertHost(step, host, {});
        }
        raiseStatus(x, "running");
        if (term) {
          const retry = p.attempt > 1 ? ` (attempt ${p.attempt})` : "";
          term.meta(`▶ Step ${p.stepNumber}/${p.totalSteps}: ${p.stepName}${retry}`, "m-step");
          term.meta(`$ ${p.command}`, "m-start");
        }
        break;
      }
      case "playbook_step_complete": {
        let status = "completed";
        if (!p.success) status = p.error === "cancelled" ? "cancelled" : "failed";
        const fields = {
          stepName: p.stepName,
          stepNumber: p.stepNumber,
          status,
          durationMs: p.durationMs,
          exitCode: p.exitCode,
          error: p.error,
          continueOnError: p.continueOnError,
        };
        upsertStep(x, p.stepId, fields, { force: true });
        if (term) {
          const step = `Step ${p.stepNumber} ${p.stepName}`;
          const took = fmtDuration(p.durationMs);
          if (p.success) {
            term.meta(`✓ ${step} completed in ${took}`, "m-ok");
          } else {
            const why = p.error || `exit code ${p.exitCode}`;
            const goesOn = p.continueOnError ? " (continue_on_error: the playbook goes on)" : "";
            term.meta(`✗ ${step} ${status} after ${took}: ${why}${goesOn}`, "m-bad");
          }
        }
        break;
      }
      case "execution_cancelled":
        x.cancelRequested = true;
        if (term) term.meta(`■ cancelled: ${p.reason}`, "m-cancel");
        break;
      case "execution_complete": {
        x.status = p.status;
        x.startedAt = p.startedAt || x.startedAt;
        x.completedAt = p.completedAt;
        x.durationMs = p.durationMs;
        x.exitCode = p.exitCode;
        x.error = p.error;
        if (p.worker) x.worker = p.worker;
        for (const step of x.steps.values()) {
          if (step.status === "running") {
            step.status = p.status === "cancelled" ? "cancelled" : "failed";
          }
        }
        if (term) {
          const exit = p.exitCode !== undefined ? `, exit code ${p.exitCode}` : "";
          const error = p.error ? `: ${p.error}` : "";
          const kind = { completed: "ok", failed: "bad", cancelled: "cancel" }[p.status] || "warn";
          const took = fmtDuration(p.durationMs);
          term.meta(`● ${p.status} in ${took}${exit}${error}`, `m-end m-${kind}`);
          x.termEnded = true;
        }
        if (x.replay) x.replay.abort();
        x.replay = null;
        x.pending.clear();
        this._announce(x);
        if (x === this.selected) this.loadRecord(x); // final step records (timeouts, workers)
        break;
      }
      default:
        return;
    }
    this._changed(x, { term: term !== null });
  }
}
