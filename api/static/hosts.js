/**
 * hosts.js: the console's hosts panel. The fleet's workers as GET /api/workers lists them
 * (CONTRACT §7): online state, queues, labels, running/concurrency, last seen; asked again every
 * few seconds, since the registry changes without any event.
 */

import { fmtAgo } from "/static/format.js";

// Workers refresh their entry every 2 s and go offline after 10 s unseen: 5 s shows a change
// well within the time it takes to matter, for one small request.
export const HOSTS_REFRESH_MS = 5000;

export function span(cls, text) {
  const node = document.createElement("span");
  node.className = cls;
  node.textContent = text;
  return node;
}

/** A row of a PolledPanel: an `<li>` of class `cls` (its test id the same), `data` its
 * data- attributes. */
export function listItem(cls, data) {
  const li = document.createElement("li");
  li.className = cls;
  li.dataset.testid = cls;
  Object.assign(li.dataset, data);
  return li;
}

/** A sidebar list asked for again every few seconds (hosts, schedules, audit): `path`, `what`
 * and `row(item)` are the subclass's, and `count(rows)` when the count is not the length. */
export class PolledPanel {
  constructor({ getJson, listEl, countEl, emptyEl, errorEl }) {
    Object.assign(this, { getJson, listEl, countEl, emptyEl, errorEl });
    this.timer = 0;
  }

  start() {
    this.refresh();
    this.timer = setInterval(() => this.refresh(), HOSTS_REFRESH_MS);
  }

  async refresh() {
    try {
      this.render(await this.getJson(this.path));
      this.errorEl.hidden = true;
    } catch (e) {
      if (this.unavailable(e)) return;
      // Kept on screen as last seen; the note says the list is stale and why.
      this.errorEl.textContent = `${this.what} not refreshed: ${e.message}`;
      this.errorEl.hidden = false;
    }
  }

  render(rows) {
    this.countEl.textContent = this.count(rows);
    this.emptyEl.hidden = rows.length > 0;
    this.listEl.replaceChildren(...rows.map((r) => this.row(r)));
  }

  count(rows) {
    return String(rows.length);
  }

  /** True when `e` says the list does not exist here (not an error to show): a list kept in the
   * history database (`needsDatabase`) on a fleet without one (503), said once, quietly. */
  unavailable(e) {
    if (!this.needsDatabase || e.status !== 503) return false;
    this.listEl.replaceChildren();
    this.countEl.textContent = "0";
    this.emptyEl.textContent = e.message;
    this.emptyEl.hidden = false;
    return true;
  }
}

export class HostsPanel extends PolledPanel {
  path = "/api/workers";
  what = "Hosts";

  count(hosts) {
    const online = hosts.filter((h) => h.online).length;
    return `${online}/${hosts.length}`;
  }

  row(h) {
    const li = listItem("host", { hostname: h.hostname, online: String(h.online) });
    const labels = Object.entries(h.labels).map(([k, v]) => `${k}=${v}`);
    const concurrency = h.concurrency > 0 ? h.concurrency : "∞";
    li.append(
      span("host-dot", ""),
      span("host-name mono", h.hostname),
      span("host-running", `${h.running}/${concurrency}`),
      span("host-meta dim", [h.queues.join(", "), ...labels].join(" · ")),
      span("host-seen dim", h.online ? "online" : `offline, seen ${fmtAgo(h.lastSeen)}`),
    );
    li.title = `${h.hostname}, version ${h.version}, last seen ${h.lastSeen}`;
    return li;
  }
}
