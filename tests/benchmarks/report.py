"""The table on stdout, results.json and results.png in the output folder."""

from __future__ import annotations

import importlib
import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.benchmarks.core import Context, Figure

# Latency series kept in the JSON, at most this many samples each (evenly thinned).
_MAX_SAMPLES = 5000


def fmt(value: float | None, unit: str = "") -> str:
    if value is None or math.isnan(value):
        return "-"
    a = abs(value)
    text = f"{value:.0f}" if a >= 100 else f"{value:.1f}" if a >= 10 else f"{value:.2f}"
    if 0 < a < 0.01:
        text = f"{value:.3g}"
    return f"{text} {unit}".rstrip()


def fmt_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    if ratio >= 100:
        return f"{ratio:.0f}x"
    return f"{ratio:.2f}x" if ratio >= 0.01 else f"{ratio:.2g}x"


def table(figures: Sequence[Figure]) -> str:
    header = ("figure", "ours", "baseline (same run)", "ratio", "target", "met?")
    lines: list[tuple[str, ...]] = [header]
    for f in figures:
        if f.error is not None:
            lines.append((f.figure, "error", "-", "-", str(f.target or "-"), "NO"))
            continue
        base = fmt(f.baseline, f.baseline_unit or f.unit)
        if f.baseline_name:
            base = f"{base} {f.baseline_name}"
        met = {True: "yes", False: "NO", None: "-"}[f.met]
        lines.append(
            (f.figure, fmt(f.ours, f.unit), base, fmt_ratio(f.ratio), str(f.target or "-"), met)
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    notes = [f"  {f.figure}: {f.error or f.note}" for f in figures if f.error or f.note]
    if notes:
        out += ["", "notes:", *notes]
    return "\n".join(out)


def _thin(samples: list[float]) -> list[float]:
    if len(samples) <= _MAX_SAMPLES:
        return [round(s, 3) for s in samples]
    rng = random.Random(0)
    return [round(s, 3) for s in sorted(rng.sample(samples, _MAX_SAMPLES))]


def write_json(ctx: Context, figures: Sequence[Figure], meta: dict[str, Any]) -> Path:
    path = ctx.out_dir / "results.json"
    data = {
        "meta": meta,
        "figures": [f.as_json() for f in figures],
        "throughputMBps": ctx.throughput_mb_s,
        "latencyMs": {name: _thin(s) for name, s in ctx.latency_ms.items()},
    }
    path.write_text(json.dumps(data, indent=2, allow_nan=False, default=_nan_none) + "\n")
    return path


def _nan_none(value: object) -> object:
    raise TypeError(f"not JSON: {value!r}")


def write_png(ctx: Context, title: str) -> Path | None:
    """Latency distributions (CDFs, log time axis) and throughput bars (log scale). None when
    matplotlib is not installed (it is only needed for the plot: `pip install matplotlib`)."""
    try:
        mpl: Any = importlib.import_module("matplotlib")
    except ImportError:
        return None
    mpl.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")
    series = {name: s for name, s in ctx.latency_ms.items() if s}
    panels = int(bool(series)) + int(bool(ctx.throughput_mb_s))
    if panels == 0:
        return None
    fig, axes = plt.subplots(1, panels, figsize=(8.5 * panels, 5.5), squeeze=False)
    ax_iter = iter(axes[0])
    if series:
        ax = next(ax_iter)
        for name, samples in sorted(series.items()):
            xs = sorted(max(s, 1e-3) for s in samples)
            ys = [(i + 1) / len(xs) for i in range(len(xs))]
            # Ours solid, baselines dashed.
            style = "-" if name.endswith(": ours") else "--"
            ax.step(xs, ys, style, where="post", label=f"{name} (n={len(xs)})")
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms, log scale)")
        ax.set_ylabel("fraction of samples <= x")
        ax.set_title("latency distributions (ours solid, baselines dashed)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if ctx.throughput_mb_s:
        ax = next(ax_iter)
        names = list(ctx.throughput_mb_s)
        values = [ctx.throughput_mb_s[n] for n in names]
        bars = ax.bar(
            names,
            values,
            color=["#888888" if "raw" in n or "naive" in n else "#1f77b4" for n in names],
        )
        ax.set_yscale("log")
        ax.set_ylabel("MB/s (log scale)")
        ax.set_title("throughput")
        for bar, v in zip(bars, values, strict=True):
            ax.annotate(
                fmt(v), (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=8
            )
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = ctx.out_dir / "results.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
