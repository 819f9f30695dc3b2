"""The report in a terminal: a progress display while it runs, each section's table as it ends.

The progress shows the section, step i of N of the whole run, the time so far and an
estimate of the time left (rich's, from the steps done so far), and what runs now. Tables
are printed above the live display as each section ends, so a long run shows its figures
as it goes. Text that comes from outside (reasons, install hints) is printed without rich's
markup: ``pip install 'ffaccel[torch]'`` must stay as it is.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..bench.consistency import MEASURED_AGAIN
from .render import (DISTURBED_HOW, DISTURBED_MARK, WITHHELD_MARK, breakdown_rows, consistency_text, dispatch_combos_text,
                     dispatch_pivot, load_rows, overhead_table, unserved_lines, workload_headline)
from .run import SECTIONS, ReportProgress, disturbed_figures, published, withheld_figures


def _plain(console: Console, text: str, style: str | None = None) -> None:
    """A line of text from outside, printed as it is (no markup, no highlighting)."""
    console.print(text, markup=False, highlight=False, style=style)


def print_conformance(results: dict[str, Any], console: Console) -> None:
    conf = Table(title="1. conformance (quick)")
    for col in ("device", "verdict", "cases", "failed"):
        conf.add_column(col)
    for c in results["conformance"]:
        conf.add_row(escape(c["device"]), "[green]PASS[/]" if c["passed"] else "[red]FAIL[/]", str(c["cases"]),
                     str(c["failed"]))
    console.print(conf)
    for c in results["conformance"]:
        for f in c.get("failures", [])[:10]:  # the conformance suite's own one-line form
            _plain(console, f"{c['device']}: {f['line']}")
        if c["failed"] > 10:
            _plain(console, f"... and {c['failed'] - 10} more failing cases on {c['device']} (results.json lists "
                            f"{len(c.get('failures', []))}; ffaccel conformance {c['device']} --report DIR all)")


def print_dispatch(results: dict[str, Any], console: Console) -> None:
    for line in unserved_lines(results, "dispatch"):
        _plain(console, line, "yellow")
    if results["dispatch"]["points"]:
        sizes, rows = dispatch_pivot(results)
        disp = Table(title=f"2. dispatch: µs per operation of an n x n x n GEMM ({dispatch_combos_text(results)}; "
                           "x NumPy's f32 @ at that n; medians, this run)")
        for col in ("path", "method", "batch", *(f"n={n}" for n in sizes)):
            disp.add_column(col, justify="left" if col in ("path", "method") else "right")
        for row in rows:
            disp.add_row(*(escape(x) for x in row))
        console.print(disp)
    header, rows = overhead_table(results, short=True)
    if rows:
        share = (results.get("overhead") or {}).get("share_limit", 0.1)
        t = Table(title=f"would the dispatch overhead be too bad? per NPU: the smallest n of a square n x n x n GEMM "
                        f"/ of a 1 x n x n GEMM at which dispatch costs under {share:.0%} of the device's time")
        for col in header:
            t.add_column(escape(col), justify="left" if col in ("path", "method") else "right")
        for row in rows:
            t.add_row(*(escape(x) for x in row))
        console.print(t)


def print_throughput(results: dict[str, Any], console: Console) -> None:
    for line in unserved_lines(results, "throughput"):
        _plain(console, line, "yellow")
    pts = results["throughput"]
    if not pts:
        return
    peak = results["peak"]["gflops"]
    thr = Table(title=f"3. throughput at the largest size (measured f32 peak {peak:.1f} GFLOP/s)")
    for col in ("combination", "who", "n", "GFLOP/s", "of peak"):
        thr.add_column(col, justify="right" if col in ("n", "GFLOP/s", "of peak") else "left")
    top = max(p["size"] for p in pts)
    for p in pts:
        if p["size"] == top:
            mark = f" {WITHHELD_MARK}" if p.get("withheld") else (f" {DISTURBED_MARK}" if p.get("disturbed") else "")
            thr.add_row(p["combo"], escape(p["who"]), str(p["size"]), f"{p['gflops']:.1f}{mark}",
                        f"{p['gflops'] / peak:.0%}" if published(p) else "withheld")
    console.print(thr)


def print_workload(results: dict[str, Any], console: Console) -> None:
    for line in unserved_lines(results, "workload"):
        _plain(console, line, "yellow")
    for w in results["workload"]:
        _plain(console, f"4. {workload_headline(w)}; max |error| vs float64 {w['max_abs_err_ffaccel']:.2e} "
                        f"(NumPy f32: {w['max_abs_err_numpy']:.2e})")
        header, rows = breakdown_rows(w)
        if rows:
            t = Table(title="where the block's time goes (parts measured inside the headline's own sample)")
            for col in header:
                t.add_column(escape(col), justify="left" if not col else "right")
            for row in rows:
                t.add_row(*(escape(x) for x in row))
            console.print(t)


#: What each section prints when it ends (the peak's figure is in the throughput table's title).
SECTION_PRINTERS = {"conformance": print_conformance, "dispatch": print_dispatch, "throughput": print_throughput,
                    "workload": print_workload}


def print_summary(results: dict[str, Any], console: Console) -> None:
    """What follows the sections: skipped parts, withheld figures, the machine's load."""
    for x in results.get("skipped", []):
        console.print("[yellow]skipped[/] " + escape(f"{x['what']}: {x['why']}"), highlight=False)
    withheld = withheld_figures(results)
    if withheld:
        console.print(f"[yellow]{WITHHELD_MARK} {len(withheld)} figure(s) withheld[/] (still inconsistent after "
                      "they were measured again; not plotted, no headline):", highlight=False)
        for line in withheld[:20]:
            _plain(console, f"  {line}")
        if len(withheld) > 20:
            _plain(console, f"  ... and {len(withheld) - 20} more (report.html lists them all)")
        _plain(console, consistency_text(results))
    busy = results.get("busy_sections", [])
    flagged = disturbed_figures(results)
    if busy or flagged:
        lt = Table(title="machine load during the run")
        for col in ("section", "wall", "load avg", "steal", "others' cores", "CPU/wall", "verdict"):
            lt.add_column(col)
        for row in load_rows(results):
            lt.add_row(*row[:-1], row[-1].split(":")[0])  # the reasons follow below
        console.print(lt)
        for section in busy:
            console.print(f"[yellow]{DISTURBED_MARK} the machine was busy during {section}[/]: "
                          + escape("; ".join(results["load"][section]["reasons"])), highlight=False)
        if flagged:
            console.print(f"[yellow]{DISTURBED_MARK} {len(flagged)} figure(s) look disturbed[/] (marked "
                          f"{DISTURBED_MARK}; {DISTURBED_HOW}): treat them as upper bounds", highlight=False)


def print_report(results: dict[str, Any], console: Console) -> None:
    """Every section's table and the summary (what a run shows section by section, at once)."""
    for name in SECTIONS:
        if name in SECTION_PRINTERS and name in results:
            SECTION_PRINTERS[name](results, console)
    print_summary(results, console)


class TerminalProgress(ReportProgress):
    """rich's progress display for a report: section, step i of N, elapsed, ETA, the current step.

    Use as a context manager around :func:`ffaccel.report.run_report`; each section's table is
    printed above the display as the section ends.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(TextColumn("[bold]report[/] {task.fields[section]:<11}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 TextColumn("{task.description}"), console=console, transient=True,
                                 # rich redraws the line from a thread, taking the GIL from the timed loops:
                                 # 10 times a second (its default) costs 2.4 % of a core, twice 0.5 %
                                 refresh_per_second=2)
        self.task = self.progress.add_task("starting", total=None, section="")
        self.started_step = False
        self.current = ""

    def __enter__(self) -> "TerminalProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def plan(self, steps: dict[str, int]) -> None:
        self.progress.update(self.task, total=sum(steps.values()))

    def section(self, name: str) -> None:
        self._finish_step()
        self.current = name
        self.progress.update(self.task, section=name)

    def step(self, what: str) -> None:
        # a step's message comes as it starts: the one before it is done now; re-measurements
        # (messages a section adds beyond its plan) show, but do not count as steps
        if MEASURED_AGAIN in what:
            self.progress.update(self.task, description=escape(what))
            return
        self._finish_step()
        self.started_step = True
        self.progress.update(self.task, description=escape(what))

    def _finish_step(self) -> None:
        if self.started_step:
            self.progress.advance(self.task)
            self.started_step = False

    def note(self, what: str) -> None:
        _plain(self.progress.console, what, "yellow")

    def unserved(self, what: str) -> None:
        # not printed here: the section's printer (section_done) says it above the section's
        # table, from results["unserved"]; printing both showed every such line twice
        pass

    def section_done(self, name: str, results: dict[str, Any]) -> None:
        self._finish_step()
        printer = SECTION_PRINTERS.get(name)
        if printer is not None:
            printer(results, self.progress.console)

    def finishing(self, what: str) -> None:
        """A step after the sections (plotting): shown, not counted."""
        self._finish_step()
        self.progress.update(self.task, section="", description=escape(what))
