/**
 * cloudops-events.js: the relay's event stream with the API of Tauri's `@tauri-apps/api/event`.
 *
 * An ES module with no dependency and no build step. A frontend written against the spec's
 * `listen()` works by changing one import:
 *
 *   import { connect, listen, once } from "https://relay.example/cloudops-events.js";
 *   connect({ baseUrl: "https://relay.example", token: "<API token>" });
 *   const unlisten = await listen("execution_output", (event) => {
 *     // event = { event: "execution_output", id: 17, payload: { executionId, output, ... } }
 *   });
 *   unlisten();
 *
 * - `connect({baseUrl, token, ticket, WebSocket, onError})` returns a client and makes it the
 *   one the module-level `listen` / `once` use (the last connected client).
 * - `client.listen(name, handler)` resolves to an `unlisten` function once the relay confirmed
 *   the subscription: events published after that are delivered. `client.once` likewise, for
 *   one event.
 * - The client listens to every execution live. `client.follow(executionId, {after})` also
 *   replays an execution's history after `after` (ids are per execution: 1, 2, 3, ...).
 * - Per execution, handlers see ids strictly increasing, with no gap and no duplicate: a gap
 *   (a reconnect, a missed message) is filled from the relay's history before later events are
 *   delivered. Events of an execution first seen mid-way start where they were first seen.
 * - Transport: one WebSocket to `/api/ws`. With `token` the client first trades it for a
 *   short-lived, single-use stream ticket (`POST /api/stream-tickets`) for every execution at
 *   each (re)connect, so the token never sits in a URL;
 *   without `fetch` it falls back to `?token=`. It reconnects with backoff (0.25 s doubling to
 *   5 s) and resumes every unfinished execution from its last id by itself.
 * - Every event name is delivered the same way: the spec's six, and the two of steps that run
 *   on many hosts (`playbook_host_start`, `playbook_host_complete`, CONTRACT §7), which a
 *   frontend written to the spec simply never listens to.
 * - `client.close()` stops everything. `onError(error)` hears what cannot be retried (a token
 *   the relay refuses: the client then stops reconnecting).
 */

const BACKOFF_MS = [250, 500, 1000, 2000, 5000];
const MAX_BUFFERED_PER_EXECUTION = 100000;
const MAX_TRACKED_EXECUTIONS = 5000;

function wsUrl(baseUrl) {
  const url = new URL("/api/ws", baseUrl);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url;
}

export class CloudOpsClient {
  constructor({ baseUrl, token, ticket, WebSocket: WebSocketImpl, onError } = {}) {
    this.baseUrl = baseUrl || (globalThis.location ? globalThis.location.origin : undefined);
    if (!this.baseUrl) throw new Error("cloudops-events: baseUrl is required");
    this.token = token;
    this.ticket = ticket; // a ticket (string) or a function returning a promise of one
    this.WebSocket = WebSocketImpl || globalThis.WebSocket;
    this.onError = onError || ((e) => console.warn("cloudops-events:", e));
    this._handlers = new Map(); // event name -> Set of handlers
    this._cursor = new Map(); // execution id -> last id delivered
    this._ended = new Set(); // executions whose execution_complete was delivered
    this._buffer = new Map(); // execution id -> Map(id -> envelope) waiting for a gap
    this._follows = new Map(); // execution id -> after (wanted replays)
    this._acks = new Map(); // subscription target -> [resolve, reject][]
    this._ws = null;
    this._open = false;
    this._starAcked = false;
    this._closed = false;
    this._connecting = false;
    this._attempt = 0;
    this._timer = null;
  }

  // -- the Tauri-shaped API ---------------------------------------------------------------
  async listen(eventName, handler) {
    let set = this._handlers.get(eventName);
    if (!set) this._handlers.set(eventName, (set = new Set()));
    const entry = (e) => handler(e);
    set.add(entry);
    this._ensureSocket();
    await this._waitAck("*");
    return () => {
      set.delete(entry);
    };
  }

  async once(eventName, handler) {
    let unlisten = null;
    let fired = false;
    unlisten = await this.listen(eventName, (e) => {
      if (fired) return;
      fired = true;
      if (unlisten) unlisten();
      handler(e);
    });
    return unlisten;
  }

  /** Replay an execution's events after `after`, then live (until execution_complete). */
  async follow(executionId, { after = 0 } = {}) {
    if (!this._cursor.has(executionId)) this._cursor.set(executionId, after);
    this._follows.set(executionId, after);
    this._ensureSocket();
    const acked = this._waitAck(executionId);
    if (this._open) this._subscribe(executionId);
    await acked;
  }

  unfollow(executionId) {
    this._follows.delete(executionId);
    this._send({ unsubscribe: executionId });
  }

  /** The last id delivered for an execution (0 when none). */
  lastId(executionId) {
    return this._cursor.get(executionId) || 0;
  }

  close() {
    this._closed = true;
    clearTimeout(this._timer);
    if (this._ws) this._ws.close(1000, "client closed");
    for (const waiters of this._acks.values()) {
      for (const [, reject] of waiters) reject(new Error("cloudops-events: client closed"));
    }
    this._acks.clear();
  }

  // -- connection ---------------------------------------------------------------------------
  _ensureSocket() {
    // `_connecting` covers the await of the ticket, before `_ws` exists: several listen()
    // calls in one tick (Promise.all) must open one socket, not one each.
    if (!this._ws && !this._timer && !this._connecting && !this._closed) this._connect();
  }

  async _authQuery() {
    if (typeof this.ticket === "function") return { ticket: await this.ticket() };
    if (this.ticket) return { ticket: this.ticket };
    if (this.token && typeof fetch === "function") {
      // One ticket per connection (a ticket is accepted once), for every execution: the
      // socket listens to "*" and follows any execution on it.
      const res = await fetch(new URL("/api/stream-tickets", this.baseUrl), {
        method: "POST",
        headers: { Authorization: `Bearer ${this.token}`, "Content-Type": "application/json" },
        body: JSON.stringify({ executionId: "*" }),
      });
      if (res.status === 401 || res.status === 403) {
        const err = new Error(`cloudops-events: the relay refused the token (${res.status})`);
        err.fatal = true;
        throw err;
      }
      if (!res.ok) throw new Error(`cloudops-events: stream ticket: HTTP ${res.status}`);
      return { ticket: (await res.json()).ticket };
    }
    return this.token ? { token: this.token } : {};
  }

  async _connect() {
    this._timer = null;
    this._connecting = true;
    let query;
    try {
      query = await this._authQuery();
    } catch (e) {
      this._connecting = false;
      if (e.fatal) {
        this.onError(e);
        this.close();
        return;
      }
      this._retry();
      return;
    }
    this._connecting = false;
    if (this._closed) return;
    const url = wsUrl(this.baseUrl);
    for (const [k, v] of Object.entries(query)) url.searchParams.set(k, v);
    const ws = new this.WebSocket(url.toString());
    this._ws = ws;
    ws.onopen = () => {
      this._open = true;
      this._send({ subscribe: "*" });
      // Resume: every execution followed or seen and not finished, from its last id.
      const resume = new Set(this._follows.keys());
      for (const ex of this._cursor.keys()) if (!this._ended.has(ex)) resume.add(ex);
      for (const ex of resume) this._subscribe(ex);
    };
    ws.onmessage = (msg) => {
      this._attempt = 0;
      this._onMessage(typeof msg.data === "string" ? msg.data : String(msg.data));
    };
    ws.onclose = () => {
      this._open = false;
      this._starAcked = false;
      this._ws = null;
      if (!this._closed) this._retry();
    };
    ws.onerror = () => {}; // onclose follows
  }

  _retry() {
    const delay = BACKOFF_MS[Math.min(this._attempt, BACKOFF_MS.length - 1)];
    this._attempt += 1;
    this._timer = setTimeout(() => this._connect(), delay * (0.8 + Math.random() * 0.4));
  }

  _send(obj) {
    if (this._ws && this._open) this._ws.send(JSON.stringify(obj));
  }

  _subscribe(executionId) {
    if (this._ended.has(executionId)) return;
    const after = Math.max(this._cursor.get(executionId) || 0, 0);
    this._send({ subscribe: executionId, after });
  }

  _waitAck(target) {
    return new Promise((resolve, reject) => {
      if (target === "*" && this._starAcked && this._open) return resolve();
      let waiters = this._acks.get(target);
      if (!waiters) this._acks.set(target, (waiters = []));
      waiters.push([resolve, reject]);
    });
  }

  _settle(target, error) {
    const waiters = this._acks.get(target);
    if (!waiters) return;
    this._acks.delete(target);
    for (const [resolve, reject] of waiters) (error ? reject(error) : resolve());
  }

  // -- delivery -------------------------------------------------------------------------------
  _onMessage(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      return;
    }
    if (msg.subscribed !== undefined) {
      if (msg.subscribed === "*") this._starAcked = true;
      this._settle(msg.subscribed);
      return;
    }
    if (msg.error !== undefined) {
      if (msg.target !== undefined) {
        this._follows.delete(msg.target);
        this._settle(msg.target, new Error(`cloudops-events: ${msg.error}`));
      } else {
        this.onError(new Error(`cloudops-events: ${msg.error}`));
      }
      return;
    }
    if (msg.event !== undefined && msg.executionId !== undefined) this._accept(msg);
  }

  _accept(env) {
    const ex = env.executionId;
    if (this._ended.has(ex)) return;
    const cursor = this._cursor.get(ex);
    if (cursor === undefined) {
      this._track(ex, env.id - 1); // first seen live: start here
    } else if (env.id <= cursor) {
      return; // a duplicate
    } else if (env.id > cursor + 1) {
      // A gap: hold this one and ask the relay for the history after our cursor.
      let buf = this._buffer.get(ex);
      if (!buf) {
        this._buffer.set(ex, (buf = new Map()));
        this._subscribe(ex);
      }
      if (buf.size < MAX_BUFFERED_PER_EXECUTION) buf.set(env.id, env);
      return;
    }
    this._deliver(env);
    const buf = this._buffer.get(ex);
    if (buf) {
      let next;
      while (!this._ended.has(ex) && (next = buf.get(this._cursor.get(ex) + 1))) {
        buf.delete(next.id);
        this._deliver(next);
      }
      if (buf.size === 0 || this._ended.has(ex)) this._buffer.delete(ex);
    }
  }

  _track(ex, cursor) {
    this._cursor.set(ex, cursor);
    if (this._cursor.size > MAX_TRACKED_EXECUTIONS) {
      for (const old of this._cursor.keys()) {
        if (this._cursor.size <= MAX_TRACKED_EXECUTIONS) break;
        if (this._follows.has(old)) continue;
        this._cursor.delete(old);
        this._ended.delete(old);
        this._buffer.delete(old);
      }
    }
  }

  _deliver(env) {
    const ex = env.executionId;
    this._cursor.set(ex, env.id);
    if (env.event === "execution_complete") {
      this._ended.add(ex);
      this._follows.delete(ex);
      this._buffer.delete(ex);
    }
    const set = this._handlers.get(env.event);
    if (!set) return;
    const event = { event: env.event, id: env.id, payload: env.payload };
    for (const handler of [...set]) {
      try {
        handler(event);
      } catch (e) {
        console.error("cloudops-events: a handler threw", e);
      }
    }
  }
}

let lastClient = null;

/** Connect to a relay; the module-level `listen` and `once` then use this client. */
export function connect(options) {
  lastClient = new CloudOpsClient(options);
  return lastClient;
}

function current() {
  if (!lastClient) throw new Error("cloudops-events: call connect({baseUrl, token}) first");
  return lastClient;
}

/** Like Tauri's `listen`: resolves to an unlisten function. */
export function listen(eventName, handler) {
  return current().listen(eventName, handler);
}

/** Like Tauri's `once`. */
export function once(eventName, handler) {
  return current().once(eventName, handler);
}
