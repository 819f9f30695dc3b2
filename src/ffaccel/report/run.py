"""``ffaccel report``: qualify a device and show it — conformance, dispatch, throughput, a workload.

The run is one process: every ratio it prints is formed from timings measured side by
side in that run (see :mod:`ffaccel.bench.timing`). Nothing here is a pass/fail timing test.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..bench.dispatch import BATCHES, SIZES, dispatch_combo, run_dispatch
from ..bench.dispatch import QUICK_SIZES as DISPATCH_QUICK_SIZES
from ..bench.load import LoadLog
from ..bench.overhead import overhead_section
from ..bench.throughput import (FULL_SIZES, NUMPY_F16_MAX, QUICK_NUMPY_F16_MAX, QUICK_SIZES, best_f32_rate,
                                calibrate_peak, run_throughput, verify_rates)
from ..bench.workload import BlockShape, plan_block, run_workload
from ..conformance import check_device, format_failures
from ..runtime import Device, open_device
from ..spec import GEMM_COMBOS, SPEC_VERSION

#: 2: load per section, busy_sections, skipped, failing cases, disturbed/remeasured per figure, the breakdown
#: 3: unserved sections, tolerances, withheld/first_median_s per figure, combo per dispatch point, the
#:    overhead section, the workload's combo, host post-ops and a breakdown of measured parts
SCHEMA_VERSION = 3


@dataclass
class ReportConfig:
    """What one run measures; ``quick`` trades samples and sizes for time."""

    devices: list[str] = field(default_factory=lambda: ["cpu"])
    quick: bool = False
    out: Path = Path("ffaccel-report")
    dispatch_sizes: Sequence[int] | None = None
    dispatch_batches: Sequence[int] = BATCHES
    throughput_sizes: Sequence[int] | None = None
    workload_shape: BlockShape | None = None
    conformance_level: str = "quick"
    with_server: bool = True
    rounds: int | None = None

    def dispatch_sizes_used(self) -> Sequence[int]:
        if self.dispatch_sizes is not None:
            return self.dispatch_sizes
        return DISPATCH_QUICK_SIZES if self.quick else SIZES

    def sizes(self) -> Sequence[int]:
        if self.throughput_sizes is not None:
            return self.throughput_sizes
        return QUICK_SIZES if self.quick else FULL_SIZES

    def shape(self) -> BlockShape:
        if self.workload_shape is not None:
            return self.workload_shape
        return BlockShape(batch=2) if self.quick else BlockShape()


def machine_info() -> dict[str, Any]:
    """CPU model, cores, BLAS libraries and versions: what the figures were measured on."""
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        from threadpoolctl import threadpool_info

        blas = [{k: p.get(k) for k in ("internal_api", "version", "num_threads", "filepath")}
                for p in threadpool_info() if p.get("user_api") == "blas"]
    except Exception:  # noqa: BLE001 - informational only
        blas = []
    versions = {"ffaccel": __version__, "python": platform.python_version(), "numpy": np.__version__}
    for mod in ("scipy", "torch", "ml_dtypes"):
        with contextlib.suppress(ImportError):
            versions[mod] = __import__(mod).__version__
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "blas": blas,
            "versions": versions}


def _server_available() -> bool:
    try:
        import ffaccel.transports.server  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def server_paths(driver: str, log: Callable[[str], None],
                 pids: set[int] | None = None) -> Iterator[list[tuple[str, Device]]]:
    """Start ``ffaccel serve`` for the run and open its socket and ring paths (none if unavailable).

    The server's socket lives in a private temporary folder that is removed afterwards,
    however the run ends. ``pids`` receives the server's pid while it runs (its CPU time is
    the run's own: see :class:`ffaccel.bench.load.LoadLog`).
    """
    with server_launch(driver, log, pids if pids is not None else set()) as open_paths:
        yield open_paths()


@contextlib.contextmanager
def server_launch(driver: str, log: Callable[[str], None],
                  pids: set[int]) -> Iterator[Callable[[], list[tuple[str, Device]]]]:
    """Start ``ffaccel serve`` now; the function it gives waits for it and opens its paths.

    The report starts its server before conformance, so that the server's start (a Python
    process importing NumPy and ffaccel: seconds on a busy machine) overlaps work that is not
    timed, and stops it when the dispatch section ends (see :func:`server_paths`).
    """
    if not _server_available():
        log("server: not available in this build; measuring in-process paths only")
        yield list
        return
    with tempfile.TemporaryDirectory(prefix="ffaccel-report-") as tmp:
        sock = os.path.join(tmp, "ffaccel.sock")
        proc = subprocess.Popen([sys.executable, "-m", "ffaccel.cli", "serve", "--driver", driver, "--socket", sock],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pids.add(proc.pid)
        opened: list[tuple[str, Device]] = []
        tried: list[bool] = []

        def open_paths() -> list[tuple[str, Device]]:
            if tried:
                return opened
            tried.append(True)
            deadline = time.monotonic() + 20
            while not os.path.exists(sock) and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            if not os.path.exists(sock):
                log("server: did not start; measuring in-process paths only")
                return opened
            for label, name in (("socket", f"unix:{sock}"), ("ring", f"unix:{sock}?transport=ring")):
                try:
                    opened.append((label, open_device(name)))
                except Exception as e:  # noqa: BLE001 - a path that cannot open is reported, not fatal
                    log(f"server: {label} path unavailable ({e})")
            return opened

        try:
            yield open_paths
        finally:
            for _, dev in opened:
                with contextlib.suppress(Exception):
                    dev.close()
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            pids.discard(proc.pid)  # waited for: os.times() counts it from now on


def is_served(name: str) -> bool:
    """Whether a device name is a device server's (``unix:PATH[?transport=...]``): measured
    through that server, never served again by the report's own."""
    return name.startswith("unix:")


def torch_skipped() -> str | None:
    """Why the PyTorch baselines cannot be measured here (None when they can)."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        return f"PyTorch is not installed ({e}); pip install 'ffaccel[torch]' adds the torch.mm baselines"
    return None


#: Failing cases listed per device in results.json (the count is always complete).
MAX_FAILURES_LISTED = 50

#: The report's sections, in the order they run (``results["load"]`` and the progress use these names).
SECTIONS = ("conformance", "dispatch", "peak", "throughput", "workload")


class ReportProgress:
    """What a run tells its watcher; the default tells nobody (see :mod:`ffaccel.report.terminal`).

    ``plan`` comes first with the number of steps of each section; then, per section,
    ``section`` as it starts, ``step`` as each step starts (the step before it is then done; a
    message containing :data:`ffaccel.bench.consistency.MEASURED_AGAIN` re-measures a figure and is
    not a step of the plan), ``note`` for a line that is not a step, ``unserved`` for what the
    device cannot serve, and ``section_done`` with the results so far.
    """

    def plan(self, steps: dict[str, int]) -> None:
        pass

    def section(self, name: str) -> None:
        pass

    def step(self, what: str) -> None:
        pass

    def note(self, what: str) -> None:
        pass

    def unserved(self, what: str) -> None:
        """A part of a section the device cannot serve (also in ``results["unserved"]``): a note,
        unless the watcher prints it with the section's results."""
        self.note(what)

    def section_done(self, name: str, results: dict[str, Any]) -> None:
        pass


class _LogProgress(ReportProgress):
    """The old ``log(message)`` callback as a progress: every step and note is one message."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log

    def step(self, what: str) -> None:
        self.log(what)

    def note(self, what: str) -> None:
        self.log(what)


def plan_steps(cfg: ReportConfig, devices: Sequence[tuple[str, Device]]) -> dict[str, int]:
    """How many steps each section will take (for step i of N and the ETA)."""
    from ..bench.throughput import declared_combos

    return {"conformance": len(devices), "dispatch": len(cfg.dispatch_sizes_used()), "peak": 1,
            "throughput": len(declared_combos(devices)) * len(cfg.sizes()),
            "workload": len(devices)}


def _unserved(results: dict[str, Any], section: str, device: str, why: str, progress: ReportProgress) -> None:
    """A section (or part of one) the device cannot serve: said in results, terminal and HTML."""
    results["unserved"].append({"section": section, "device": device, "why": why})
    progress.unserved(f"{section} on {device}: not run — {why}")


def run_report(cfg: ReportConfig, log: Callable[[str], None] | ReportProgress = lambda s: None,
               progress: ReportProgress | None = None) -> dict[str, Any]:
    """Run every part of the report and return its results (:func:`write_outputs` writes them).

    Around each section the machine's load is recorded (``results["load"]``, see
    :mod:`ffaccel.bench.load`); figures that look disturbed are measured once more and
    flagged (see :func:`ffaccel.bench.timing.measure_checked`), and figures that contradict
    the rest of the run are measured again and, if they still do, withheld (see
    :mod:`ffaccel.bench.consistency`). On a device that declares part of the op set each
    section picks from what it declares, and says what it could not run
    (``results["unserved"]``). ``progress`` follows the run; ``log`` may be one too, or a function
    that takes one message per step.
    """
    prog = progress if progress is not None else log if isinstance(log, ReportProgress) else _LogProgress(log)
    started = time.perf_counter()
    load = LoadLog()
    server = contextlib.ExitStack()
    # the server starts first: its start (a Python process importing NumPy, ml_dtypes and ffaccel:
    # about 1.5 CPU seconds) overlaps this process's own imports (PyTorch, below) and conformance,
    # none of which is timed; it stops when the dispatch section ends
    # a device that is a server already (unix:...) is measured through its own socket or ring:
    # "ffaccel serve --driver unix:..." cannot start, and its path is not in-process
    launch = cfg.with_server and not is_served(cfg.devices[0])
    open_remote = (server.enter_context(server_launch(cfg.devices[0], prog.note, load.pids)) if launch
                   else list)
    devices: list[tuple[str, Device]] = []
    try:
        results: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "spec_version": list(SPEC_VERSION),
            "quick": cfg.quick,
            "machine": machine_info(),
            "devices": list(cfg.devices),
            "skipped": [],
            "unserved": [],
            "tolerances": tolerances(),
        }
        why = torch_skipped()
        if why is not None:
            results["skipped"].append({"what": "PyTorch baselines (torch.mm in dispatch and throughput)", "why": why})
            prog.note(f"skipping the PyTorch baselines: {why}")
        for name in cfg.devices:
            devices.append((name, open_device(name)))
        prog.plan(plan_steps(cfg, devices))

        # 1. conformance
        conf = []
        prog.section("conformance")
        with load.section("conformance"):
            for name, _ in devices:
                prog.step(f"conformance {name} ({cfg.conformance_level})")
                rep = check_device(name, cfg.conformance_level)
                conf.append({"device": name, "passed": rep.passed, "cases": len(rep.results),
                             "failed": len(rep.failures), "seconds": rep.seconds,
                             "summary": json.loads(rep.to_json())["summary"],
                             "failures": [{"case": r.name, "expected": r.expected, "got": r.got,
                                           "message": r.message, "line": format_failures([r])}
                                          for r in rep.failures[:MAX_FAILURES_LISTED]]})
        results["conformance"] = conf
        prog.section_done("conformance", results)

        # 2. dispatch overhead, in-process and (when a server can be started) socket and ring
        rounds = cfg.rounds or (5 if cfg.quick else 9)
        prog.section("dispatch")
        with load.section("dispatch"), server:
            paths = [(name if is_served(name) else f"{name} in-process", dev) for name, dev in devices]
            paths += list(open_remote())
            for label, dev in paths:
                if dispatch_combo(dev) is None:
                    _unserved(results, "dispatch", label, "it declares no GEMM dtype combination", prog)
            results["dispatch"] = {
                "paths": [p for p, dev in paths if dispatch_combo(dev) is not None],
                "points": [p.as_dict() for p in run_dispatch(paths, cfg.dispatch_sizes_used(), cfg.dispatch_batches,
                                                             rounds=rounds, min_sample_s=1e-3 if cfg.quick else 3e-3,
                                                             progress=prog.step)],
            }
        if launch and len(paths) == len(devices):
            results["skipped"].append({"what": "the server's socket and ring paths",
                                       "why": "the device server could not be started or opened"})
        mark_busy_section(results, "dispatch", load.sections["dispatch"])
        results["overhead"] = overhead_section(results["dispatch"]["points"])
        prog.section_done("dispatch", results)

        # 3. throughput against size, with the measured peak
        prog.section("peak")
        prog.step("calibrating the peak (NumPy f32 on the host)")
        with load.section("peak"):
            results["peak"] = calibrate_peak(size=1024 if cfg.quick else 2048, rounds=3 if cfg.quick else 5)
        prog.section("throughput")
        for name, dev in devices:
            missing = [c.name for c in GEMM_COMBOS if c not in dev.info().caps.combos]
            if missing:
                _unserved(results, "throughput", name, f"it does not declare {', '.join(missing)}", prog)
        with load.section("throughput"):
            pts = run_throughput(devices, cfg.sizes(), rounds=3 if cfg.quick else 5,
                                 min_sample_s=0.005 if cfg.quick else 0.02,
                                 numpy_f16_max=QUICK_NUMPY_F16_MAX if cfg.quick else NUMPY_F16_MAX,
                                 progress=prog.step)
            seen = best_f32_rate(pts)
            if seen > results["peak"]["gflops"]:
                results["peak"].update(gflops=seen, method=results["peak"]["method"] + "; raised to the best "
                                       "f32-accumulating GEMM sample seen later in this run")
            pts = verify_rates(pts, results["peak"]["gflops"], devices, min_sample_s=0.005 if cfg.quick else 0.02,
                               progress=prog.step)
        results["throughput"] = [p.as_dict() for p in pts]
        mark_busy_section(results, "peak", load.sections["peak"])
        mark_busy_section(results, "throughput", load.sections["throughput"])
        prog.section_done("throughput", results)

        # 4. a real workload, and where its time goes
        prog.section("workload")
        results["workload"] = []
        with load.section("workload"):
            for name, dev in devices:
                prog.step(f"workload on {name}: transformer encoder block")
                plan, why = plan_block(dev.info().caps)
                if plan is None:
                    _unserved(results, "workload", name, why, prog)
                    continue
                results["workload"].append(run_workload(dev, cfg.shape(), rounds=cfg.rounds or (3 if cfg.quick else 5),
                                                        plan=plan))
        mark_busy_section(results, "workload", load.sections["workload"])
        prog.section_done("workload", results)
    finally:
        server.close()  # (a no-op once dispatch closed it)
        for _, dev in devices:
            with contextlib.suppress(Exception):
                dev.close()
    results["load"] = load.sections
    results["busy_sections"] = load.busy
    results["seconds"] = time.perf_counter() - started
    return results


def tolerances() -> dict[str, float]:
    """The consistency rules' tolerances, stated in the report next to what they withheld."""
    from ..bench import consistency

    return {"repeat_tolerance": consistency.REPEAT_TOLERANCE, "peak_tolerance": consistency.PEAK_TOLERANCE,
            "dip_factor": consistency.DIP_FACTOR, "share_tolerance": consistency.SHARE_TOLERANCE}


def mark_busy_section(results: dict[str, Any], section: str, load: dict[str, Any]) -> None:
    """Mark every figure of ``section`` disturbed when the machine was busy while it ran.

    A figure's own checks (spread, median against best, neighbours, peak) see a core lost for part
    of the samples, not one shared for all of them: beside two or four CPU hogs the quick report's
    throughput and dispatch figures were steadily 2-3x slower than quiet ones (some of PyTorch's
    500x), with a tight spread, and were published unmarked although the section's own load record
    said that other processes used 1.2-1.6 of the 2 cores. Such a figure measures a share of the
    machine: it is published, marked, with the section's reasons.
    """
    if not load.get("busy"):
        return
    why = f"measured while the machine was busy ({'; '.join(load['reasons'])})"
    if section == "peak":
        figures = [results["peak"]] if "peak" in results else []
    elif section == "dispatch":
        figures = results.get("dispatch", {}).get("points", [])
    elif section == "throughput":
        figures = results.get("throughput", [])
    elif section == "workload":
        for w in results.get("workload", []):
            for who in ("ffaccel", "numpy"):
                w.setdefault("disturbed", {}).setdefault(who, []).append(why)
        return
    else:  # conformance publishes verdicts, not figures
        return
    for p in figures:
        p["disturbed"] = [*p.get("disturbed", []), why]


def disturbed_figures(results: dict[str, Any]) -> list[str]:
    """One line per figure of ``results`` flagged as disturbed (empty on a quiet run)."""
    out = []
    if results.get("peak", {}).get("disturbed"):
        out.append(f"peak calibration: {'; '.join(results['peak']['disturbed'])}")
    for p in results.get("dispatch", {}).get("points", []):
        if p.get("disturbed"):
            out.append(f"dispatch {p['path']} {p['method']} x{p['batch']} n={p['size']}: {'; '.join(p['disturbed'])}")
    for p in results.get("throughput", []):
        if p.get("disturbed"):
            out.append(f"throughput {p['who']} {p['combo']} n={p['size']}: {'; '.join(p['disturbed'])}")
    for w in results.get("workload", []):
        for who, why in w.get("disturbed", {}).items():
            out.append(f"workload {who} on {w['device']}: {'; '.join(why)}")
    return out


def withheld_figures(results: dict[str, Any]) -> list[str]:
    """One line per figure of ``results`` that is not published (kept out of plots and headlines),
    with why: it still contradicted the run after it was measured again."""
    out = []
    for p in results.get("dispatch", {}).get("points", []):
        if p.get("withheld"):
            out.append(f"dispatch {p['path']} {p['method']} x{p['batch']} n={p['size']}: {'; '.join(p['withheld'])}")
    for p in results.get("throughput", []):
        if p.get("withheld"):
            out.append(f"throughput {p['who']} {p['combo']} n={p['size']}: {'; '.join(p['withheld'])}")
    for w in results.get("workload", []):
        for who, why in w.get("withheld", {}).items():
            out.append(f"workload {who} on {w['device']}: {'; '.join(why)}")
    return out


def published(p: dict[str, Any]) -> bool:
    """Whether a figure may be plotted and used for a headline (not withheld)."""
    return not p.get("withheld")
