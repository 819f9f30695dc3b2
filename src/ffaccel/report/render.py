"""Turn report results into plots (PNG), ``report.html`` and ``results.json``."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..bench.consistency import DIP_FACTOR, PEAK_TOLERANCE, REPEAT_TOLERANCE
from ..bench.overhead import DEVICE_PRESETS, DevicePreset, device_time_s
from .output import write_atomic
from .run import disturbed_figures, published, withheld_figures

PLOTS = ("latency", "batching", "overhead", "throughput")


def _figure():  # noqa: ANN202 - matplotlib types
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    # the layout is set when a figure is made: "tight" bounding boxes here would draw every figure twice,
    # and tick layout is what a plot costs (measured: 10 of the throughput plot's 22 s on a busy machine)
    fig.savefig(buf, format="png", dpi=110)
    _figure().close(fig)
    return buf.getvalue()


def _legend(ax: Any, **kw: Any) -> None:
    """A legend where the axes have labelled series (every figure of a plot may be withheld), right of
    the axes: it hides no data, and costs no search for the "best" place inside them (with a
    "constrained" layout that search was 40 % of these plots' time); the axes keep the left 76 %."""
    ax.figure.subplots_adjust(left=0.08, right=0.76, top=0.92, bottom=0.12)
    if ax.get_legend_handles_labels()[1]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **kw)


def _footnote(fig: Any, results: dict[str, Any], section: str) -> float:
    """What the section could not run on a device, and why, under the plot (a partial device's
    plot alone showed the baselines only, as if the device had been forgotten). Returns the
    height it takes (a fraction of the figure); the axes move up by as much."""
    lines = [wrapped for line in unserved_lines(results, section)
             for wrapped in textwrap.wrap(line, 150, subsequent_indent="    ")]
    if not lines:
        return 0.0
    fig.text(0.01, 0.01, "\n".join(lines), fontsize=7, color="darkorange", va="bottom", ha="left")
    height = 0.01 + len(lines) * 7 * 1.3 / 72 / fig.get_figheight()  # 7-point lines, 1.3 line spacing
    fig.subplots_adjust(bottom=fig.subplotpars.bottom + height)
    return height


#: Characters per line of a legend entry: what the legend right of the axes (a quarter of the
#: figure, 7-point text) shows without clipping.
LEGEND_LINE_CHARS = 34


def _series_label(path: str, method: str) -> str:
    """A dispatch series' legend entry, wrapped: a device name can be long (``unix:/run/...sock?
    transport=ring``, ``restricted:cpu;combos=...``) and the method after it was cut off the figure,
    leaving matmul, submit and replay of one device indistinguishable."""
    return "\n".join(textwrap.wrap(f"{path} {method}", LEGEND_LINE_CHARS, break_on_hyphens=False))


def _mark_disturbed(ax: Any, points: list[tuple[float, float]]) -> None:
    """Circle the figures flagged as disturbed, so that a plot does not present them as plain data."""
    if points:
        ax.scatter([x for x, _ in points], [y for _, y in points], s=90, facecolors="none", edgecolors="red",
                   linewidths=1.0, zorder=5, label="looks disturbed")


def plot_latency(results: dict[str, Any]) -> bytes:
    """Per-operation cost against size, one line per path (batch 1) and per baseline."""
    plt = _figure()
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    shown = [p for p in results["dispatch"]["points"] if published(p)]
    for p in shown:
        if p["batch"] == 1:
            series[_series_label(p["path"], p["method"])].append((p["size"], p["per_op_s"] * 1e6))
    fig, ax = plt.subplots(figsize=(10, 4.5))
    colors = plt.get_cmap("tab20").colors  # more series than tab10 has colours
    for i, (label, pts) in enumerate(sorted(series.items())):
        pts.sort()
        style = "--" if label.split()[0] in ("numpy", "torch") else "-"
        ax.plot([x for x, _ in pts], [y for _, y in pts], style, marker="o", label=label,
                color=colors[i % len(colors)])
    _mark_disturbed(ax, [(p["size"], p["per_op_s"] * 1e6) for p in shown if p["batch"] == 1 and p.get("disturbed")])
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(f"n (n x n x n GEMM: {dispatch_combos_text(results)})")
    ax.set_ylabel("per-operation cost (µs, median)")
    ax.set_title("Dispatch overhead: tiny GEMMs through each path")
    ax.grid(True, which="both", alpha=0.3)
    _legend(ax, fontsize=7)
    _footnote(fig, results, "dispatch")
    return _png(fig)


def plot_batching(results: dict[str, Any], size: int = 8) -> bytes:
    """Per-operation cost against batch size (submit and replay) for one GEMM size."""
    plt = _figure()
    every = [p for p in results["dispatch"]["points"] if published(p)]
    pts = [p for p in every if p["size"] == size]
    if not pts and every:
        size = min(p["size"] for p in every)
        pts = [p for p in every if p["size"] == size]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for p in pts:
        if p["method"] in ("submit", "replay"):
            series[_series_label(p["path"], p["method"])].append((p["batch"], p["per_op_s"] * 1e6))
    for label, s in sorted(series.items()):
        s.sort()
        ax.plot([x for x, _ in s], [y for _, y in s], marker="o", label=label)
    for p in pts:
        if p["path"] in ("numpy", "torch"):
            ax.axhline(p["per_op_s"] * 1e6, linestyle="--", color="gray" if p["path"] == "numpy" else "black",
                       label=_series_label(p["path"], p["method"]))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("commands per submission")
    ax.set_ylabel("per-operation cost (µs, median)")
    ax.set_title(f"What batching buys ({size}x{size}x{size} GEMM: {dispatch_combos_text(results)})")
    ax.grid(True, which="both", alpha=0.3)
    _legend(ax, fontsize=7)
    _footnote(fig, results, "dispatch")
    return _png(fig)


def plot_throughput(results: dict[str, Any]) -> bytes:
    """GFLOP/s against size, one panel per dtype combination, with the measured peak."""
    plt = _figure()
    by_combo: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    shown = [p for p in results["throughput"] if published(p)]
    for p in shown:
        by_combo[p["combo"]][p["who"]].append((p["size"], p["gflops"]))
    combos = list(by_combo)
    cols = 5 if len(combos) > 4 else max(1, len(combos))
    rows = math.ceil(len(combos) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False, sharey=True)
    peak = results["peak"]["gflops"]
    from ..bench.throughput import limit_class, machine_limits

    limits = machine_limits(shown)  # each combination's own limit: its best kernel here
    # one colour per series in every panel: a panel's own colour cycle gave "torch" the colour that
    # the legend (made from the first panel) gave another series, wherever a series (NumPy on a
    # partial device) is in some panels only
    whos = sorted({who for series in by_combo.values() for who in series})
    colour = {who: f"C{i % 10}" for i, who in enumerate(whos)}
    for ax, combo in zip(axes.flat, combos):
        for who, pts in sorted(by_combo[combo].items()):
            pts.sort()
            style = "--" if who in ("numpy", "torch") else "-"
            ax.plot([x for x, _ in pts], [y for _, y in pts], style, marker=".", label=who, color=colour[who])
        ax.axhline(peak, color="red", linewidth=0.8, linestyle=":", label="measured f32 peak")
        lim = limits.get(limit_class(combo))
        if lim is not None:
            ax.axhline(lim["gflops"], color="black", linewidth=0.8, linestyle="-.",
                       label="best kernel for these dtypes in this run")
            ax.annotate(f"{lim['who']}: {lim['gflops']:,.0f}", (0.02, lim["gflops"]), xycoords=("axes fraction", "data"),
                        fontsize=6, va="bottom")
        _mark_disturbed(ax, [(p["size"], p["gflops"]) for p in shown if p["combo"] == combo and p.get("disturbed")])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(combo, fontsize=8)
        ax.grid(True, which="major", alpha=0.3)
        ax.minorticks_off()  # eleven panels of log-scale minor ticks cost seconds to lay out, and say little
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(combos):]:
        ax.axis("off")
    fig.subplots_adjust(left=0.07, right=0.99, bottom=0.25 if rows == 1 else 0.12, top=0.85 if rows == 1 else 0.93,
                        wspace=0.08, hspace=0.4)
    below = _footnote(fig, results, "throughput")  # the legend and the axis label stand above it
    legend: dict[str, Any] = {}  # every panel's series, each once (the first panel may lack some)
    for ax in axes.flat[:len(combos)]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    if legend:
        fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=len(legend), fontsize=8,
                   bbox_to_anchor=(0.5, below))
    fig.supxlabel("n (n x n x n GEMM)", fontsize=9, y=below + (0.045 if rows > 1 else 0.09))
    fig.supylabel("GFLOP/s (median)", fontsize=9)
    fig.suptitle("Throughput per dtype combination", fontsize=10)
    return _png(fig)


def plot_overhead(results: dict[str, Any], presets: tuple[DevicePreset, ...] = DEVICE_PRESETS) -> bytes:
    """Would the dispatch overhead be too bad? Each path's measured cost per op against the device
    time of a GEMM at each preset's peak: square GEMMs (left) and batch-1, m = 1 GEMMs (right).

    A path's dashed line is ten times its cost (1 / share limit): where a device's curve is above
    it, dispatch costs under 10% of the device's time."""
    plt = _figure()
    ov = results.get("overhead") or {}
    share = ov.get("share_limit", 0.1)
    rows = [r for r in ov.get("rows", []) if not r["withheld"] and r["method"] in ("submit", "replay")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.5), sharey=True)
    ns = [2**i for i in range(2, 17)]
    colors = plt.get_cmap("tab10").colors
    for ax, (title, m_of) in zip(axes, (("square GEMM n x n x n", lambda n: n), ("batch-1 GEMM 1 x n x n", lambda n: 1))):
        for i, pr in enumerate(presets):
            ax.plot(ns, [device_time_s(m_of(n), n, n, pr) * 1e6 for n in ns], color=colors[i % 10],
                    label=f"{pr.name} ({pr.peak_tops:g} TOPS): GEMM time")
        for j, r in enumerate(rows):
            ax.axhline(r["per_op_s"] / share * 1e6, linestyle="--", linewidth=0.9, color=f"C{(j + 4) % 10}",
                       label=f"{r['path']} {r['method']} x{r['batch']}: {r['per_op_s'] * 1e6:.1f} µs / {share:.0%}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("n")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("µs")
    axes[0].set_ylim(bottom=0.1)  # below a tenth of a microsecond no dispatch path is in question
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=7)
    fig.suptitle(f"Dispatch cost against an NPU's GEMM time: dispatch is under {share:.0%} where a device curve "
                 "is above a dashed line", fontsize=9)
    fig.subplots_adjust(left=0.07, right=0.99, top=0.9, bottom=0.3, wspace=0.05)
    return _png(fig)


def render_plots(results: dict[str, Any]) -> dict[str, bytes]:
    """One PNG per plot that has data in ``results`` (a section a device could not serve has none)."""
    out = {}
    if any(published(p) for p in results.get("dispatch", {}).get("points", [])):
        out["latency"] = plot_latency(results)
        out["batching"] = plot_batching(results)
    if (results.get("overhead") or {}).get("rows"):
        out["overhead"] = plot_overhead(results)
    if any(published(p) for p in results.get("throughput", [])):
        out["throughput"] = plot_throughput(results)
    return out


def dispatch_combos_text(results: dict[str, Any]) -> str:
    """The GEMM dtypes the dispatch paths were timed with (one, or each path's)."""
    by_path = {p["path"]: p.get("combo", "f32xf32->f32->f32") for p in results.get("dispatch", {}).get("points", [])
               if p["path"] not in ("numpy", "torch")}
    combos = sorted(set(by_path.values()))
    if len(combos) <= 1:
        return combos[0] if combos else "f32xf32->f32->f32"
    return "; ".join(f"{path}: {c}" for path, c in by_path.items())


def unserved_lines(results: dict[str, Any], section: str) -> list[str]:
    """One line per device that could not serve (part of) ``section``, with why."""
    return [f"{u['section']} on {u['device']}: not run — {u['why']}" for u in results.get("unserved", [])
            if u["section"] == section]


def consistency_text(results: dict[str, Any]) -> str:
    """The rules a figure must pass to be published, with this run's tolerances."""
    t = results.get("tolerances") or {"repeat_tolerance": REPEAT_TOLERANCE, "peak_tolerance": PEAK_TOLERANCE,
                                      "dip_factor": DIP_FACTOR}
    return (f"A figure is published only when it is consistent: a figure measured twice whose second measurement "
            f"is still disturbed must agree with the first within {t['repeat_tolerance']:.0%}; an f32/f64 rate may "
            f"not exceed the measured f32 peak by more than {t['peak_tolerance']:.0%}; a rate may not fall below "
            f"1/{t['dip_factor']:g} of both neighbours along size; no part of a breakdown may be negative. A figure "
            "that breaks a rule is measured again; if it still does, it is withheld (✗): listed with the reason, "
            "kept out of plots and headlines.")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    h = "".join(f"<th>{html.escape(str(x))}</th>" for x in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


#: Marks a figure flagged as disturbed (see :func:`ffaccel.bench.timing.measure_checked`).
DISTURBED_MARK = "⚠"
#: How a figure came to be marked disturbed, said next to their count: not every one was measured
#: again (a figure of a busy section is marked without that; the count used to say "each was
#: measured once more" of all of them)
DISTURBED_HOW = ("a figure whose samples looked disturbed was measured once more; every figure of a "
                 "section that ran on a busy machine is marked too")


#: Marks a figure withheld: measured, contradicted by the run, kept out of plots and headlines.
WITHHELD_MARK = "✗"


def _mark(p: dict[str, Any]) -> str:
    """The note for a table cell: empty, the disturbed mark with its reasons, or the withheld mark with its."""
    if p.get("withheld"):
        return f"{WITHHELD_MARK} withheld: {'; '.join(p['withheld'])}"
    if not p.get("disturbed"):
        return "re-measured" if p.get("remeasured") else ""
    return f"{DISTURBED_MARK} {'; '.join(p['disturbed'])}" + (" (re-measured)" if p.get("remeasured") else "")


def _cell_mark(p: dict[str, Any]) -> str:
    return f" {WITHHELD_MARK}" if p.get("withheld") else (f" {DISTURBED_MARK}" if p.get("disturbed") else "")


def numpy_ref_s(p: dict[str, Any], pts: list[dict[str, Any]]) -> float | None:
    """NumPy's ``@`` per operation that a dispatch figure's ratio is taken against: the one measured
    side by side with it (``numpy_per_op_s``; None where that one was withheld). Results written
    before that field existed fall back to the size's published NumPy row."""
    if "numpy_per_op_s" in p:
        return p["numpy_per_op_s"]
    return next((q["per_op_s"] for q in pts if q["path"] == "numpy" and q["size"] == p["size"] and published(q)), None)


def dispatch_rows(results: dict[str, Any]) -> list[list[Any]]:
    """(size, path, GEMM, method, batch, per-op µs, ratio to NumPy's f32 @ at that size, note) rows."""
    pts = results["dispatch"]["points"]
    rows = []
    for p in sorted(pts, key=lambda p: (p["size"], p["path"], p["method"], p["batch"])):
        ref = numpy_ref_s(p, pts)
        ratio = f"{p['per_op_s'] / ref:.2f}x" if ref and published(p) else "-"
        rows.append([p["size"], p["path"], p.get("combo", ""), p["method"], p["batch"], f"{p['per_op_s'] * 1e6:.2f}",
                     ratio, _mark(p)])
    return rows


def dispatch_pivot(results: dict[str, Any]) -> tuple[list[int], list[list[str]]]:
    """The dispatch figures as one row per (path, method, batch) and one column per size.

    Every row has a cell at every size it was measured at: ``µs (ratio to NumPy's @)``,
    with the disturbed mark where the figure was flagged. Returns (sizes, rows).
    """
    pts = results["dispatch"]["points"]
    sizes = sorted({p["size"] for p in pts})
    cells: dict[tuple[str, str, int], dict[int, str]] = defaultdict(dict)
    for p in pts:
        ref = numpy_ref_s(p, pts)
        ratio = f" ({p['per_op_s'] / ref:.1f}x)" if ref and published(p) else ""
        cells[(p["path"], p["method"], p["batch"])][p["size"]] = f"{p['per_op_s'] * 1e6:.2f}{ratio}{_cell_mark(p)}"
    baselines = ("numpy", "torch")
    order = sorted(cells, key=lambda k: (k[0] not in baselines, k[0], k[1], k[2]))
    return sizes, [[path, method, str(batch), *[cells[(path, method, batch)].get(n, "-") for n in sizes]]
                   for path, method, batch in order]


def throughput_rows(results: dict[str, Any]) -> list[list[Any]]:
    from ..bench.throughput import limit_class, machine_limits

    peak = results["peak"]["gflops"]
    limits = machine_limits([p for p in results["throughput"] if published(p)])

    def of_limit(p: dict[str, Any]) -> str:
        lim = limits.get(limit_class(p["combo"]))
        return f"{p['gflops'] / lim['gflops']:.0%}" if lim and published(p) else "-"

    return [[p["combo"], p["size"], p["who"], f"{p['gflops']:.1f}", f"{p['gflops'] / peak:.0%}" if published(p) else "-",
             of_limit(p), _mark(p)] for p in results["throughput"]]


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


def breakdown_rows(w: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The workload's time split for the device and NumPy: (header, rows).

    Every part is an interval measured inside one block call (the headline's own median
    sample), never a difference of totals: the parts add up to the block.
    """
    b = w.get("breakdown")
    if not b:
        return [], []
    names = list(dict.fromkeys([*b["ffaccel"]["parts_s"], *b["numpy"]["parts_s"]]))
    rows = []
    for who, label in (("ffaccel", f"ffaccel {w['device']}"), ("numpy", "NumPy f32")):
        x = b[who]
        cells = [f"{x['parts_s'][n] * 1e3:.2f} ms ({x['parts_s'][n] / x['total_s']:.0%})" if n in x["parts_s"]
                 else "-" for n in names]
        rows.append([label, *cells, f"{x['total_s'] * 1e3:.2f} ms"])
    return ["", *(BREAKDOWN_LABELS.get(n, n) for n in names), "block"], rows


#: Column titles of the breakdown's parts.
BREAKDOWN_LABELS = {"ffaccel matmul": "ffaccel matmul (dispatch + GEMM + fused epilogue)",
                    "conversion": "operands to the GEMM dtype", "host epilogue": "post-ops on the host",
                    "GEMM": "GEMM (NumPy @)", "epilogue": "epilogue (NumPy)",
                    "rest": "rest (softmax, layer norm, reshapes)", "other": "other (between parts)"}


def workload_headline(w: dict[str, Any]) -> str:
    """The workload's one line: both blocks and the speed-up, or why the speed-up is not published."""
    head = (f"{w['name']} on {w['device']} ({w.get('combo', 'f32xf32->f32->f32')} GEMMs"
            + (f"; on the host: {', '.join(w['host_post_ops'])}" if w.get("host_post_ops") else "") + "): ")
    times = f"ffaccel {w['ffaccel_s'] * 1e3:.1f} ms, NumPy f32 {w['numpy_s'] * 1e3:.1f} ms"
    if w.get("withheld"):
        why = "; ".join(f"{who}: {'; '.join(r)}" for who, r in w["withheld"].items())
        return head + times + f" — {WITHHELD_MARK} speed-up withheld ({why})"
    mark = f" {DISTURBED_MARK} disturbed" if w.get("disturbed") else ""
    return head + times + f" ({w['speedup_vs_numpy']:.2f}x){mark}"


def overhead_table(results: dict[str, Any], short: bool = False) -> tuple[list[str], list[list[str]]]:
    """(header, rows): per path and dispatch method, the smallest square and batch-1 GEMMs at which
    dispatch costs under the share limit of each preset device's GEMM time.

    ``short`` (the terminal): cells ``square n / m=1 n`` and a withheld row's reason left out
    (the summary lists it)."""
    ov = results.get("overhead") or {}
    presets = ov.get("presets", [])
    header = ["path", "method", "per op (µs)", *(f"{p['name']} ({p['peak_tops']:g} TOPS)" for p in presets)]
    rows = []
    for r in ov.get("rows", []):
        label = f"{r['method']} x{r['batch']}"
        if r["withheld"]:
            why = "withheld" if short else "withheld: " + "; ".join(r["withheld"])
            rows.append([r["path"], label, f"{r['per_op_s'] * 1e6:.1f} {WITHHELD_MARK}", why,
                         *(["-"] * (len(presets) - 1))])
            continue
        cells = []
        for p in presets:
            sq, m1 = r["presets"][p["name"]]["square_n"], r["presets"][p["name"]]["batch1_n"]
            cells.append(f"{sq:,} / {m1:,}" if short else f"n >= {sq:,}; m=1: n >= {m1:,}")
        mark = f" {DISTURBED_MARK}" if r.get("disturbed") else ""  # its dispatch figure's mark, carried over
        rows.append([r["path"], label, f"{r['per_op_s'] * 1e6:.1f}{mark}", *cells])
    return header, rows


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
    imgs = "".join(f'<figure><img alt="{name}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
                   f"<figcaption>{name}.png</figcaption></figure>" for name, data in pngs.items())
    peak = results["peak"]
    esc = html.escape
    notes = []
    for section in results.get("busy_sections", []):
        notes.append(f"The machine was busy during {section}: {'; '.join(results['load'][section]['reasons'])}.")
    flagged = disturbed_figures(results)
    if flagged:
        notes.append(f"{len(flagged)} figure(s) look disturbed (marked {DISTURBED_MARK}; {DISTURBED_HOW}): treat them "
                     "as upper bounds, not as what the path costs.")
    warn = "".join(f'<p class="warn">{DISTURBED_MARK} {esc(n)}</p>' for n in notes)
    withheld = withheld_figures(results)
    withheld_html = (f'<h2>Withheld figures</h2><p>{len(withheld)} figure(s) still contradicted the run after '
                     "they were measured again: not plotted, not used for a headline.</p><ul>"
                     + "".join(f"<li>{WITHHELD_MARK} {esc(x)}</li>" for x in withheld) + "</ul>") if withheld else ""
    skipped = "".join(f"<li>{esc(x['what'])}: skipped — {esc(x['why'])}</li>" for x in results.get("skipped", []))
    skipped = f"<h2>Skipped</h2><ul>{skipped}</ul>" if skipped else ""

    def unserved(section: str) -> str:
        return "".join(f'<p class="warn">{esc(line)}</p>' for line in unserved_lines(results, section))

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
    work = ""
    for w in results["workload"]:
        header, rows = breakdown_rows(w)
        work += (f"<p>{esc(workload_headline(w))}; max |error| against float64: ffaccel "
                 f"{w['max_abs_err_ffaccel']:.2e}, NumPy f32 {w['max_abs_err_numpy']:.2e}.</p>" + _table(header, rows))
    ov_header, ov_rows = overhead_table(results)
    ov = results.get("overhead") or {}
    sources = "".join(f"<li>{esc(p['name'])}: {p['peak_tops']:g} TOPS — {esc(p['source'])}</li>"
                      for p in ov.get("presets", []))
    # a section with nothing measured (a partial device: no GEMM, no float GEMM) says so in a line
    # instead of a table of headers alone and an explanation of figures that are not there
    overhead_html = (f"""<p>Each path's cost per operation at the smallest size (almost all dispatch) against the time an NPU needs
for the GEMM at its peak (2·m·n·k / rate): the smallest square GEMM, and the smallest batch-1 (m = 1) GEMM, at
which dispatch costs under {ov.get('share_limit', 0.1):.0%} of the device's time.</p>
{_table(ov_header, ov_rows)}<ul>{sources}</ul>""" if ov_rows else
                     "<p>No device path was measured (said above): there is nothing to answer.</p>")
    thr_rows = throughput_rows(results)
    throughput_html = (_table(["combination", "n", "who", "GFLOP/s", "of peak", "of its limit", "note"], thr_rows)
                       if thr_rows else "<p>No combination was measured (said above).</p>")
    workload_html = ("""<p>Where the block's time goes: every part is measured inside the block call whose time is the headline (the
median sample), so the parts add up to the block and none is negative.</p>""" + work) if work else ""
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>ffaccel report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:2px 8px;font-size:13px}}img{{max-width:100%}}
.warn{{background:#fff3cd;border:1px solid #e0c060;padding:6px 10px}}</style></head><body>
<h1>ffaccel report</h1>
<p>{html.escape(results['date'])} — ffaccel {html.escape(m['versions']['ffaccel'])}, spec
v{results['spec_version'][0]}.{results['spec_version'][1]}; {html.escape(m['cpu'])}, {m['cores']} cores;
{'quick run' if results['quick'] else 'full run'} in {results.get('seconds', 0):.0f} s.
All ratios are between medians measured side by side in this run.</p>{warn}
<p>{esc(consistency_text(results))}</p>
<h2>1. Conformance</h2>{_table(["device", "verdict", "cases", "failed", "time"], conf_rows)}{fails}
<h2>2. Dispatch overhead</h2>{unserved("dispatch")}
{_table(["n", "path", "GEMM", "method", "batch", "per op (µs)", "vs NumPy f32 @", "note"], dispatch_rows(results))}
<h3>Would the dispatch overhead be too bad?</h3>
{overhead_html}
<h2>3. Throughput</h2>{unserved("throughput")}<p>Measured peak: {peak['gflops']:.1f} GFLOP/s
({html.escape(str(peak['method']))}). {esc(_mark(peak))}</p>
{throughput_html}
<h2>4. Workload</h2>{unserved("workload")}
{workload_html}
{withheld_html}{skipped}
<h2>Measurement conditions</h2><p>The machine's load around each section (others' cores: busy CPU time of the
whole machine minus this run's own, including its device server, per second of wall time).</p>
{_table(LOAD_HEADER, load_rows(results))}
<h2>Plots</h2>{imgs}
<h2>Machine</h2><pre>{html.escape(json.dumps(m, indent=1))}</pre></body></html>"""
    write_atomic(paths["html"], doc)
    return paths
