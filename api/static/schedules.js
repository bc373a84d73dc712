/**
 * schedules.js: the console's schedules panel (CONTRACT §10). Each schedule as GET
 * /api/schedules lists it: its saved playbook, its cadence and its next run time; asked again
 * every few seconds (the next run time moves on with each tick).
 */

import { fmtTime } from "/static/format.js";
import { listItem, PolledPanel, span } from "/static/hosts.js";

export class SchedulesPanel extends PolledPanel {
  path = "/api/schedules";
  what = "Schedules";
  needsDatabase = true;

  row(s) {
    const li = listItem("schedule", { scheduleId: s.id, enabled: String(s.enabled) });
    const cadence = s.cron ? `cron ${s.cron} (${s.timezone})` : `every ${s.intervalS} s`;
    const next = s.enabled ? `next ${fmtTime(s.nextRunAt)}` : "disabled";
    const nextEl = span("schedule-next", next);
    nextEl.dataset.testid = "schedule-next";
    if (s.nextRunAt) nextEl.dataset.at = s.nextRunAt;
    li.append(
      span("schedule-name mono", s.playbookName),
      nextEl,
      span("schedule-meta dim", cadence),
    );
    li.title = `${s.id}: ${s.playbookName}, ${cadence}`;
    return li;
  }
}
