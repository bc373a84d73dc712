/**
 * audit.js: the console's audit panel, for admins only (CONTRACT §9): the newest entries of GET
 * /api/audit (who did what, when, with which outcome), asked again every few seconds.
 */

import { fmtTime } from "/static/format.js";
import { listItem, PolledPanel, span } from "/static/hosts.js";

export class AuditPanel extends PolledPanel {
  path = "/api/audit?limit=50";
  what = "Audit log";
  needsDatabase = true;

  row(e) {
    const li = listItem("audit-entry", { action: e.action, outcome: e.outcome });
    li.append(
      span("audit-action mono", e.action),
      span("audit-actor", e.actor),
      span("audit-meta dim", [fmtTime(e.at), e.outcome, e.target || ""].filter(Boolean).join(" · ")),
    );
    li.title = `${e.at}: ${e.actor} ${e.action} ${e.target || ""} → ${e.outcome} (${e.client})`;
    return li;
  }
}
