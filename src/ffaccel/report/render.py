"""Turn report results into plots (PNG), ``report.html`` and ``results.json``."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from .output import write_atomic
from .run import disturbed_figures

PLOTS = ("latency", "batching", "throughput")


def _figure():  # noqa: ANN202 - matplotlib types
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _figure().close(fig)
    return buf.getvalue()


def _mark_disturbed(ax: Any, points: list[tuple[float, float]]) -> None:
    """Circle the figures flagged as disturbed, so that a plot does not present them as plain data."""
    if points:
        ax.scatter([x for x, _ in points], [y for _, y in points], s=90, facecolors="none", edgecolors="red",
                   linewidths=1.0, zorder=5, label="looks disturbed")


def plot_latency(results: dict[str, Any]) -> bytes:
    """Per-operation cost against size, one line per path (batch 1) and per baseline."""
    plt = _figure()
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for p in results["dispatch"]["points"]:
        if p["batch"] == 1:
            series[f"{p['path']} {p['method']}"].append((p["size"], p["per_op_s"] * 1e6))
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colors = plt.get_cmap("tab20").colors  # more series than tab10 has colours
    for i, (label, pts) in enumerate(sorted(series.items())):
        pts.sort()
        style = "--" if label.split()[0] in ("numpy", "torch") else "-"
        ax.plot([x for x, _ in pts], [y for _, y in pts], style, marker="o", label=label,
                color=colors[i % len(colors)])
    _mark_disturbed(ax, [(p["size"], p["per_op_s"] * 1e6) for p in results["dispatch"]["points"]
                         if p["batch"] == 1 and p.get("disturbed")])
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("n (n x n x n f32 GEMM)")
    ax.set_ylabel("per-operation cost (µs, median)")
    ax.set_title("Dispatch overhead: tiny GEMMs through each path")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _png(fig)


def plot_batching(results: dict[str, Any], size: int = 8) -> bytes:
    """Per-operation cost against batch size (submit and replay) for one GEMM size."""
    plt = _figure()
    pts = [p for p in results["dispatch"]["points"] if p["size"] == size]
    if not pts:
        size = min(p["size"] for p in results["dispatch"]["points"])
        pts = [p for p in results["dispatch"]["points"] if p["size"] == size]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for p in pts:
        if p["method"] in ("submit", "replay"):
            series[f"{p['path']} {p['method']}"].append((p["batch"], p["per_op_s"] * 1e6))
    for label, s in sorted(series.items()):
        s.sort()
        ax.plot([x for x, _ in s], [y for _, y in s], marker="o", label=label)
    for p in pts:
        if p["path"] in ("numpy", "torch"):
            ax.axhline(p["per_op_s"] * 1e6, linestyle="--", color="gray" if p["path"] == "numpy" else "black",
                       label=f"{p['path']} {p['method']}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("commands per submission")
    ax.set_ylabel("per-operation cost (µs, median)")
    ax.set_title(f"What batching buys ({size}x{size}x{size} f32 GEMM)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def plot_throughput(results: dict[str, Any]) -> bytes:
    """GFLOP/s against size, one panel per dtype combination, with the measured peak."""
    plt = _figure()
    by_combo: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for p in results["throughput"]:
        by_combo[p["combo"]][p["who"]].append((p["size"], p["gflops"]))
    combos = list(by_combo)
    cols = 5 if len(combos) > 4 else max(1, len(combos))
    rows = math.ceil(len(combos) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False, sharey=True)
    peak = results["peak"]["gflops"]
    from ..bench.throughput import limit_class, machine_limits

    limits = machine_limits(results["throughput"])  # each combination's own limit: its best kernel here
    for ax, combo in zip(axes.flat, combos):
        for who, pts in sorted(by_combo[combo].items()):
            pts.sort()
            style = "--" if who in ("numpy", "torch") else "-"
            ax.plot([x for x, _ in pts], [y for _, y in pts], style, marker=".", label=who)
        ax.axhline(peak, color="red", linewidth=0.8, linestyle=":", label="measured f32 peak")
        lim = limits.get(limit_class(combo))
        if lim is not None:
            ax.axhline(lim["gflops"], color="black", linewidth=0.8, linestyle="-.",
                       label="best kernel for these dtypes in this run")
            ax.annotate(f"{lim['who']}: {lim['gflops']:,.0f}", (0.02, lim["gflops"]), xycoords=("axes fraction", "data"),
                        fontsize=6, va="bottom")
        _mark_disturbed(ax, [(p["size"], p["gflops"]) for p in results["throughput"]
                             if p["combo"] == combo and p.get("disturbed")])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(combo, fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(combos):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8, bbox_to_anchor=(0.5, 0.0))
    fig.supxlabel("n (n x n x n GEMM)", fontsize=9, y=0.02)
    fig.supylabel("GFLOP/s (median)", fontsize=9)
    fig.suptitle("Throughput per dtype combination", fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return _png(fig)


def render_plots(results: dict[str, Any]) -> dict[str, bytes]:
    return {"latency": plot_latency(results), "batching": plot_batching(results),
            "throughput": plot_throughput(results)}


def _table(header: list[str], rows: list[list[Any]]) -> str:
    h = "".join(f"<th>{html.escape(str(x))}</th>" for x in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


#: Marks a figure flagged as disturbed (see :func:`ffaccel.bench.timing.measure_checked`).
DISTURBED_MARK = "⚠"


def _mark(p: dict[str, Any]) -> str:
    """The disturbed-figure note for a table cell: empty, or the mark with the reasons."""
    if not p.get("disturbed"):
        return "re-measured" if p.get("remeasured") else ""
    return f"{DISTURBED_MARK} {'; '.join(p['disturbed'])}" + (" (re-measured)" if p.get("remeasured") else "")


def dispatch_rows(results: dict[str, Any]) -> list[list[Any]]:
    """(size, path, method, batch, per-op µs, ratio to NumPy's @ at that size, note) rows."""
    pts = results["dispatch"]["points"]
    numpy_at = {p["size"]: p["per_op_s"] for p in pts if p["path"] == "numpy"}
    rows = []
    for p in sorted(pts, key=lambda p: (p["size"], p["path"], p["method"], p["batch"])):
        ratio = p["per_op_s"] / numpy_at[p["size"]] if p["size"] in numpy_at else float("nan")
        rows.append([p["size"], p["path"], p["method"], p["batch"], f"{p['per_op_s'] * 1e6:.2f}", f"{ratio:.2f}x",
                     _mark(p)])
    return rows


def dispatch_pivot(results: dict[str, Any]) -> tuple[list[int], list[list[str]]]:
    """The dispatch figures as one row per (path, method, batch) and one column per size.

    Every row has a cell at every size it was measured at: ``µs (ratio to NumPy's @)``,
    with the disturbed mark where the figure was flagged. Returns (sizes, rows).
    """
    pts = results["dispatch"]["points"]
    sizes = sorted({p["size"] for p in pts})
    numpy_at = {p["size"]: p["per_op_s"] for p in pts if p["path"] == "numpy"}
    cells: dict[tuple[str, str, int], dict[int, str]] = defaultdict(dict)
    for p in pts:
        ratio = f" ({p['per_op_s'] / numpy_at[p['size']]:.1f}x)" if p["size"] in numpy_at else ""
        mark = f" {DISTURBED_MARK}" if p.get("disturbed") else ""
        cells[(p["path"], p["method"], p["batch"])][p["size"]] = f"{p['per_op_s'] * 1e6:.2f}{ratio}{mark}"
    baselines = ("numpy", "torch")
    order = sorted(cells, key=lambda k: (k[0] not in baselines, k[0], k[1], k[2]))
    return sizes, [[path, method, str(batch), *[cells[(path, method, batch)].get(n, "-") for n in sizes]]
                   for path, method, batch in order]


def throughput_rows(results: dict[str, Any]) -> list[list[Any]]:
    from ..bench.throughput import limit_class, machine_limits

    peak = results["peak"]["gflops"]
    limits = machine_limits(results["throughput"])
    return [[p["combo"], p["size"], p["who"], f"{p['gflops']:.1f}", f"{p['gflops'] / peak:.0%}",
             f"{p['gflops'] / limits[limit_class(p['combo'])]['gflops']:.0%}", _mark(p)]
            for p in results["throughput"]]


def load_rows(results: dict[str, Any]) -> list[list[Any]]:
    """One row per section: how busy the machine was while it ran."""
    def la(x: list[float] | None) -> str:
        return "-" if x is None else f"{x[0]:.2f}"

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.1%}"

    return [[name, f"{s['wall_s']:.1f} s", f"{la(s['loadavg_before'])} -> {la(s['loadavg_after'])}",
             pct(s["steal_fraction"]), "-" if s["others_cores"] is None else f"{s['others_cores']:.2f}",
             f"{s['cpu_per_wall']:.2f}", "busy: " + "; ".join(s["reasons"]) if s["busy"] else "quiet"]
            for name, s in results.get("load", {}).items()]


LOAD_HEADER = ["section", "wall", "load average (1 min)", "CPU steal", "others' cores", "run's CPU / wall", "verdict"]


def breakdown_rows(w: dict[str, Any]) -> list[list[str]]:
    """The workload's time split (GEMM, dispatch, epilogue, the rest) for the device and NumPy."""
    b = w.get("breakdown")
    if not b:
        return []
    rows = []
    for who, label in (("device", f"ffaccel {w['device']}"), ("numpy", "NumPy f32")):
        x = b[who]
        rows.append([label, *(f"{x[k] * 1e3:.2f} ms ({x[k] / x['total_s']:.0%})"
                              for k in ("gemm_s", "dispatch_s", "epilogue_s", "rest_s")),
                     f"{x['total_s'] * 1e3:.2f} ms"])
    return rows


def breakdown_note(w: dict[str, Any]) -> str:
    """How many of the breakdown's timings look disturbed (empty when none)."""
    b = w.get("breakdown") or {}
    bad = len(b.get("disturbed", {}))
    if not bad:
        return ""
    total = 2 + 4 * len(b.get("calls", []))
    return (f"{DISTURBED_MARK} {bad} of the breakdown's {total} timings look disturbed"
            + (" (after measuring them twice)" if b.get("remeasured") else "")
            + ": its split is not to be trusted on this run")


BREAKDOWN_HEADER = ["", "GEMM (BLAS)", "dispatch + driver", "epilogue", "rest (softmax, layer norm, reshapes)",
                    "block"]


def write_outputs(results: dict[str, Any], out: Path, pngs: dict[str, bytes] | None = None) -> dict[str, Path]:
    """Write results.json, one PNG per plot, and report.html embedding the plots."""
    out.mkdir(parents=True, exist_ok=True)
    pngs = render_plots(results) if pngs is None else pngs
    paths = {"json": out / "results.json", "html": out / "report.html"}
    results = dict(results, plots=[f"{name}.png" for name in pngs])
    write_atomic(paths["json"], json.dumps(results, indent=1, default=str))
    for name, data in pngs.items():
        write_atomic(out / f"{name}.png", data)
        paths[name] = out / f"{name}.png"
    m = results["machine"]
    conf_rows = [[c["device"], "PASS" if c["passed"] else "FAIL", c["cases"], c["failed"], f"{c['seconds']:.1f} s"]
                 for c in results["conformance"]]
    w_rows = [[w["device"], f"{w['ffaccel_s'] * 1e3:.1f} ms", f"{w['numpy_s'] * 1e3:.1f} ms",
               f"{w['speedup_vs_numpy']:.2f}x", f"{w['max_abs_err_ffaccel']:.2e}", f"{w['max_abs_err_numpy']:.2e}"]
              for w in results["workload"]]
    imgs = "".join(f'<figure><img alt="{name}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
                   f"<figcaption>{name}.png</figcaption></figure>" for name, data in pngs.items())
    peak = results["peak"]
    esc = html.escape
    notes = []
    for section in results.get("busy_sections", []):
        notes.append(f"The machine was busy during {section}: {'; '.join(results['load'][section]['reasons'])}.")
    flagged = disturbed_figures(results)
    if flagged:
        notes.append(f"{len(flagged)} figure(s) look disturbed (marked {DISTURBED_MARK}; each was measured once "
                     "more): treat them as upper bounds, not as what the path costs.")
    warn = "".join(f'<p class="warn">{DISTURBED_MARK} {esc(n)}</p>' for n in notes)
    skipped = "".join(f"<li>{esc(x['what'])}: skipped — {esc(x['why'])}</li>" for x in results.get("skipped", []))
    skipped = f"<h2>Skipped</h2><ul>{skipped}</ul>" if skipped else ""
    fails = ""
    for c in results["conformance"]:
        if c.get("failures"):
            more = c["failed"] - len(c["failures"])
            fails += (f"<h3>{esc(c['device'])}: failing cases</h3>"
                      + _table(["case", "expected", "got", "what failed"],
                               [[f["case"], f.get("expected", ""), f.get("got", ""), f["message"]]
                                for f in c["failures"]])
                      + (f"<p>... and {more} more (ffaccel conformance {esc(c['device'])} --report DIR "
                         "lists them all)</p>" if more > 0 else ""))
    bd = "".join(_table(BREAKDOWN_HEADER, breakdown_rows(w))
                 + (f'<p class="warn">{esc(breakdown_note(w))}</p>' if breakdown_note(w) else "")
                 for w in results["workload"])
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>ffaccel report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:2px 8px;font-size:13px}}img{{max-width:100%}}
.warn{{background:#fff3cd;border:1px solid #e0c060;padding:6px 10px}}</style></head><body>
<h1>ffaccel report</h1>
<p>{html.escape(results['date'])} — ffaccel {html.escape(m['versions']['ffaccel'])}, spec
v{results['spec_version'][0]}.{results['spec_version'][1]}; {html.escape(m['cpu'])}, {m['cores']} cores;
{'quick run' if results['quick'] else 'full run'} in {results.get('seconds', 0):.0f} s.
All ratios are between medians measured side by side in this run.</p>{warn}
<h2>1. Conformance</h2>{_table(["device", "verdict", "cases", "failed", "time"], conf_rows)}{fails}
<h2>2. Dispatch overhead</h2>{_table(["n", "path", "method", "batch", "per op (µs)", "vs NumPy @", "note"],
                                     dispatch_rows(results))}
<h2>3. Throughput</h2><p>Measured peak: {peak['gflops']:.1f} GFLOP/s ({html.escape(str(peak['method']))}).
{esc(_mark(peak))}</p>
{_table(["combination", "n", "who", "GFLOP/s", "of peak", "of its limit", "note"], throughput_rows(results))}
<h2>4. Workload: {html.escape(results['workload'][0]['name']) if results['workload'] else ''}</h2>
{_table(["device", "ffaccel", "NumPy f32", "speed-up", "max |err| ffaccel", "max |err| NumPy"], w_rows)}
<p>Where the block's time goes (medians measured side by side; the GEMM column is NumPy's <code>@</code> of the
block's GEMMs, dispatch + driver is <code>matmul</code> without its epilogue minus that, epilogue is
<code>matmul</code> with minus without it, or NumPy's own bias/GELU/residual operations):</p>{bd}
{skipped}
<h2>Measurement conditions</h2><p>The machine's load around each section (others' cores: busy CPU time of the
whole machine minus this run's own, including its device server, per second of wall time).</p>
{_table(LOAD_HEADER, load_rows(results))}
<h2>Plots</h2>{imgs}
<h2>Machine</h2><pre>{html.escape(json.dumps(m, indent=1))}</pre></body></html>"""
    write_atomic(paths["html"], doc)
    return paths
