"""An execution's events on a terminal: output as it comes, steps, the end; or `--json`."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from cli.sessions import Session
from events.errors import CloudOpsError
from events.vocabulary import Status
from events.wire import RawEvent

EXIT_USAGE = 2
EXIT_TIMEOUT = 124
EXIT_CANCELLED = 130


@dataclass
class Outcome:
    status: str = Status.FAILED
    exit_code: int | None = None
    duration_ms: int = 0
    error: str | None = None

    @property
    def process_exit(self) -> int:
        if self.status == Status.COMPLETED:
            return 0
        if self.status == Status.TIMEOUT:
            return EXIT_TIMEOUT
        if self.status == Status.CANCELLED:
            return EXIT_CANCELLED
        return self.exit_code if self.exit_code else 1


def _output(p: dict[str, Any]) -> None:
    stream = sys.stderr if p["stream"] == "stderr" else sys.stdout
    stream.write(p["output"])
    stream.flush()
    if p.get("truncated"):
        sys.stderr.write("\n[cloudops] output limit reached: later output is not kept\n")


def _step_start(p: dict[str, Any]) -> None:
    sys.stderr.write(f"\u25b6 step {p['stepNumber']}/{p['totalSteps']}: {p['stepName']}\n")
    sys.stderr.flush()


def _step_complete(p: dict[str, Any]) -> None:
    mark = "\u2713" if p["success"] else "\u2717"
    tail = "" if p["success"] else f" ({p.get('error') or 'failed'})"
    sys.stderr.write(f"{mark} step {p['stepNumber']} {p['stepName']} {p['durationMs']} ms{tail}\n")
    sys.stderr.flush()


# One colour per host of a fan-out step, on a terminal (red is kept for failures).
_HOST_COLOURS = ("36", "33", "35", "32", "34", "96", "93", "95", "92", "94")


class HostLines:
    """A fan-out step's output, each line prefixed with its host (`web1@eu | ...`): a
    host's chunk may end mid-line, so each host and stream keeps its unfinished line until
    the rest comes or the host ends."""

    def __init__(self) -> None:
        self._partial: dict[tuple[str, str], str] = {}
        self._colours: dict[str, str] = {}
        self._ended: list[dict[str, Any]] = []  # this step's hosts, as they ended

    def _prefix(self, host: str, out: Any) -> str:
        colour = self._colours.setdefault(host, _HOST_COLOURS[len(self._colours) % 10])
        if getattr(out, "isatty", lambda: False)():
            return f"\x1b[{colour}m{host}\x1b[0m | "
        return f"{host} | "

    def output(self, p: dict[str, Any]) -> None:
        host, stream = str(p["host"]), str(p["stream"])
        out = sys.stderr if stream == "stderr" else sys.stdout
        text = self._partial.pop((host, stream), "") + str(p["output"])
        *lines, rest = text.split("\n")
        out.write("".join(f"{self._prefix(host, out)}{line}\n" for line in lines))
        out.flush()
        if rest:
            self._partial[(host, stream)] = rest

    def end(self, p: dict[str, Any]) -> None:
        """The host ended: its unfinished lines, then how it ended (on stderr)."""
        host = str(p["host"])
        for stream in ("stdout", "stderr"):
            rest = self._partial.pop((host, stream), None)
            if rest is not None:
                self.output({"host": host, "stream": stream, "output": rest + "\n"})
        mark = "\u2713" if p["success"] else "\u2717"
        tail = f" ({p['error']})" if p.get("error") else ""
        code = f" exit {p['exitCode']}" if p.get("exitCode") is not None else ""
        sys.stderr.write(f"  {mark} {host} {p['status']}{code} {p['durationMs']} ms{tail}\n")
        sys.stderr.flush()
        self._ended.append(p)

    def summary(self) -> None:
        """At the end of a fan-out step: one row per host (on stderr), by hostname."""
        ended, self._ended = sorted(self._ended, key=lambda p: str(p["host"])), []
        if not ended:
            return
        rows = [("HOST", "STATUS", "EXIT", "DURATION", "ERROR")]
        for p in ended:
            exit_code = p.get("exitCode")
            rows.append(
                (
                    str(p["host"]),
                    str(p["status"]),
                    "-" if exit_code is None else str(exit_code),
                    f"{p['durationMs']} ms",
                    str(p.get("error") or ""),
                )
            )
        sys.stderr.write(table(rows))


_SHOW = {
    "execution_output": _output,
    "playbook_step_start": _step_start,
    "playbook_step_complete": _step_complete,
}


def _write_envelope(data: bytes) -> None:
    """The envelope's bytes as they came, one per line (a text-only stdout, as a test's
    capture may be, gets them decoded)."""
    raw = getattr(sys.stdout, "buffer", None)
    if raw is not None:
        sys.stdout.flush()
        raw.write(data + b"\n")
        raw.flush()
    else:
        sys.stdout.write(data.decode() + "\n")
        sys.stdout.flush()


def render(events: Iterator[RawEvent], *, as_json: bool) -> Outcome:
    """Print an execution's events as they arrive; return how it ended."""
    outcome = Outcome()
    hosts = HostLines()
    for ev in events:
        if as_json:
            _write_envelope(ev.data)
        elif ev.event == "playbook_host_complete":
            hosts.end(ev.payload())
        elif ev.event == "execution_output" and (p := ev.payload()).get("host"):
            hosts.output(p)
        elif ev.event in _SHOW:
            _SHOW[ev.event](ev.payload())
            if ev.event == "playbook_step_complete":
                hosts.summary()
        if ev.event == "execution_complete":
            p = ev.payload()
            outcome = Outcome(
                status=str(p["status"]),
                exit_code=p.get("exitCode"),
                duration_ms=int(p["durationMs"]),
                error=p.get("error"),
            )
    if not as_json:
        summary = f"[cloudops] {outcome.status} in {outcome.duration_ms / 1000:.2f} s"
        if outcome.exit_code is not None:
            summary += f" (exit {outcome.exit_code})"
        if outcome.error:
            summary += f": {outcome.error}"
        sys.stderr.write(summary + "\n")
    return outcome


def follow_with_cancel(session: Session, execution_id: str, *, as_json: bool) -> Outcome:
    """Render; the first Ctrl-C cancels the execution and keeps following to its end."""
    events = session.follow(execution_id)
    try:
        return render(events, as_json=as_json)
    except KeyboardInterrupt:
        sys.stderr.write("\n[cloudops] cancelling...\n")
        try:
            session.cancel(execution_id)
        except CloudOpsError as e:
            sys.stderr.write(f"[cloudops] {e}\n")
        return render(session.follow(execution_id), as_json=as_json)


def print_list(
    items: Sequence[dict[str, Any]],
    *,
    as_json: bool,
    text: Callable[[Sequence[dict[str, Any]]], str],
) -> None:
    """A listing command's output: one JSON object per line with `--json`, else `text` of
    the items (rows for a person). Every `ls`-like command prints through here."""
    if as_json:
        sys.stdout.write("".join(json.dumps(item) + "\n" for item in items))
    else:
        sys.stdout.write(text(items))


def lines_of(line: Callable[[dict[str, Any]], str]) -> Callable[[Sequence[dict[str, Any]]], str]:
    """`text` for print_list: one formatted line per item."""
    return lambda items: "".join(line(item) + "\n" for item in items)


def render_hosts(hosts: Sequence[dict[str, Any]]) -> str:
    """`cloudops workers`: one line per host under a header, as `GET /api/workers` lists
    them (sorted by hostname)."""
    rows = [("HOSTNAME", "STATE", "RUNNING", "QUEUES", "LABELS", "VERSION", "LAST SEEN")]
    for h in hosts:
        labels = ",".join(f"{k}={v}" for k, v in sorted(h["labels"].items()))
        rows.append(
            (
                h["hostname"],
                "online" if h["online"] else "offline",
                f"{h['running']}/{h['concurrency']}",
                ",".join(h["queues"]),
                labels or "-",
                h["version"],
                h["lastSeen"],
            )
        )
    return table(rows)


def table(rows: Sequence[Sequence[str]]) -> str:
    """Rows as columns padded to their widest cell, a line each."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
    return "".join(line.rstrip() + "\n" for line in lines)
