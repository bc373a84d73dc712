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

/** A sidebar list asked for again every few seconds (hosts, schedules): `path`, `what`,
 * `render(rows)` and `row(item)` are the subclass's. */
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

  /** True when `e` says the list does not exist here (not an error to show); the default: never. */
  unavailable(_e) {
    return false;
  }
}

export class HostsPanel extends PolledPanel {
  path = "/api/workers";
  what = "Hosts";

  render(hosts) {
    const online = hosts.filter((h) => h.online).length;
    this.countEl.textContent = `${online}/${hosts.length}`;
    this.emptyEl.hidden = hosts.length > 0;
    this.listEl.replaceChildren(...hosts.map((h) => this.row(h)));
  }

  row(h) {
    const li = document.createElement("li");
    li.className = "host";
    li.dataset.testid = "host";
    li.dataset.hostname = h.hostname;
    li.dataset.online = String(h.online);
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
