"""``ffaccel`` command line: ``info``, ``conformance``, ``report`` and ``serve``.

Every failure is one line on stderr and an exit status from :class:`ffaccel.cli.errors.Exit`
(``--debug`` adds the traceback); see the README's "Exit status".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from rich.console import Console
from rich.table import Table

from .. import __version__
from ..abi import ABI_VERSION
from ..runtime import devices, open_device
from . import build_c
from ..spec import COPY_CONVERSIONS, DTYPES, GEMM_COMBOS, POST_OPS, SPEC_VERSION
from .errors import (EXIT_MEANINGS, CommandError, Exit, Terminated, debug_enabled, one_line,
                     report_error, sigterm_unwinds, status_of, stdout_gone)


def _info(args: argparse.Namespace, console: Console) -> int:
    dev = open_device(args.device)
    info = dev.info()
    caps = info.caps
    if args.json:
        doc = {
            "spec_version": list(SPEC_VERSION), "abi_version": ABI_VERSION, "device": dev.name,
            "driver": {"name": info.name, "version": info.version, "description": info.description},
            "gemm_combos": [c.name for c in GEMM_COMBOS if c in caps.combos],
            "copy_conversions": [f"{DTYPES[s].name}->{DTYPES[d].name}" for s, d in COPY_CONVERSIONS
                                 if (s, d) in caps.copies],
            "post_ops": [POST_OPS[k].name for k in sorted(caps.post_ops)],
            "engines": [e.name.lower() for e in sorted(caps.engines)],
            "limits": vars(caps.limits),
            "memory_bytes": info.memory_bytes,
            "kernels": dict(info.kernels),
            "size_bands": [vars(b) | {"combos": list(b.combos)} for b in info.size_bands],
        }
        console.print_json(json.dumps(doc))
        return 0
    console.print(f"[bold]ffaccel[/] {__version__} — spec v{SPEC_VERSION[0]}.{SPEC_VERSION[1]}, ABI {ABI_VERSION}")
    console.print(f"device [bold]{dev.name}[/]: driver {info.name} {info.version} — {info.description}")
    console.print(f"memory: {info.memory_bytes / 2**30:.1f} GiB; engines: "
                  + ", ".join(e.name.lower() for e in sorted(caps.engines)))
    t = Table(title="GEMM dtype combinations")
    kernels = dict(info.kernels)  # which kernel library serves each combination, where the driver says
    for col in ("bit", "A x B", "accumulate", "C, D", "supported", *(["kernel library"] if kernels else [])):
        t.add_column(col)
    for bit, c in enumerate(GEMM_COMBOS):
        t.add_row(str(bit), f"{DTYPES[c.a].name} x {DTYPES[c.b].name}", DTYPES[c.acc].name, DTYPES[c.d].name,
                  "[green]yes[/]" if c in caps.combos else "[red]no[/]", *([kernels.get(c.name, "")] if kernels else []))
    console.print(t)
    console.print("COPY conversions: " + ", ".join(f"{DTYPES[s].name}->{DTYPES[d].name}"
                                                    for s, d in COPY_CONVERSIONS if (s, d) in caps.copies))
    console.print("epilogue post-ops: " + ", ".join(POST_OPS[k].name for k in sorted(caps.post_ops)))
    lim = Table(title="limits")
    lim.add_column("limit")
    lim.add_column("value", justify="right")
    for name, value in vars(caps.limits).items():
        lim.add_row(name, f"{value:,}")
    console.print(lim)
    if info.size_bands:  # where the implementation changes with size (the suite checks both sides)
        bands = Table(title="size bands (where the implementation changes)")
        for col in ("combinations", "epilogue", "measure", "from", "what changes"):
            bands.add_column(col, justify="right" if col == "from" else "left")
        for b in info.size_bands:
            bands.add_row(", ".join(b.combos), b.epilogue, b.measure, f"{b.edge:,}", b.change)
        console.print(bands)
    return 0


def _conformance(args: argparse.Namespace, console: Console) -> int:
    from ..report.output import output_folder

    level = "full" if args.full else "quick"
    with contextlib.ExitStack() as stack:
        paths = None
        if args.report:  # checked before the run, not after it (results lost)
            out = Path(args.report)
            paths = (out, out.with_suffix(".md")) if out.suffix == ".json" else (
                out / "conformance.json", out / "conformance.md")
            stack.enter_context(output_folder(paths[0].parent, [q.name for q in paths], param="--report"))
        return _run_conformance(args, console, level, paths)


def _run_conformance(args: argparse.Namespace, console: Console, level: str,
                     paths: tuple[Path, Path] | None) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..conformance import check_device
    from ..report.output import write_atomic

    with Progress(TextColumn("[bold]conformance[/] {task.fields[device]}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("{task.description}"), console=console,
                  transient=True) as bar:
        task = bar.add_task("", total=None, device=args.device)

        def progress(done: int, total: int, desc: str) -> None:
            bar.update(task, completed=done, total=total, description=desc[:60])

        report = check_device(args.device, level, progress=progress)
    table = Table(title=f"{report.device}: {len(report.results)} cases ({level}) in {report.seconds:.1f} s")
    for col in ("op", "combination", "cases", "failed", "worst error/bound"):
        table.add_column(col, justify="right" if col in ("cases", "failed", "worst error/bound") else "left")
    for row in report.summary():
        w = row["worst_ratio"]
        failed = f"[red]{row['failed']}[/]" if row["failed"] else "0"
        table.add_row(row["op"], row["combo"], str(row["cases"]), failed, "-" if w is None else f"{w:.3g}")
    console.print(table)
    if report.failures:  # expected and got, where one value says it (the suite's own format)
        console.print(report.failures_text(20), markup=False, highlight=False)
    if paths is not None:
        json_path, md_path = paths
        write_atomic(json_path, report.to_json())
        write_atomic(md_path, report.to_markdown())
        console.print(f"report: {json_path} and {md_path}")
    verdict = "[green]PASS[/]" if report.passed else f"[red]FAIL[/] ({len(report.failures)} failed)"
    console.print(f"{report.device}: {verdict}")
    return Exit.OK if report.passed else Exit.FAILED


def _report(args: argparse.Namespace, console: Console) -> int:
    from ..report import ReportConfig, run_report, write_outputs
    from ..report.output import output_folder
    from ..report.render import PLOTS

    cfg = ReportConfig(devices=args.devices or ["cpu"], quick=args.quick, out=Path(args.out),
                       with_server=not args.no_server)
    # the folder is checked before the run (not after it, results lost); an interrupted or failed
    # run removes what it made there, and its server and temporary folder are gone either way
    names = ["results.json", "report.html", *(f"{name}.png" for name in PLOTS)]
    with output_folder(cfg.out, names, param="--out"), console.status("starting") as status:
        results = run_report(cfg, log=lambda msg: status.update(f"[bold]report[/] {msg}"))
        status.update("[bold]report[/] plotting")
        paths = write_outputs(results, cfg.out)
    _print_report(results, console)
    console.print(f"report: {paths['html']} and {paths['json']} ({results['seconds']:.0f} s)")
    return Exit.OK if all(c["passed"] for c in results["conformance"]) else Exit.FAILED


def _print_report(results: dict, console: Console) -> None:
    """The report's tables in the terminal (the HTML has every figure)."""
    from ..report.render import breakdown_note, breakdown_rows, dispatch_pivot, load_rows
    from ..report.run import disturbed_figures

    conf = Table(title="1. conformance (quick)")
    for col in ("device", "verdict", "cases", "failed"):
        conf.add_column(col)
    for c in results["conformance"]:
        conf.add_row(c["device"], "[green]PASS[/]" if c["passed"] else "[red]FAIL[/]", str(c["cases"]),
                     str(c["failed"]))
    console.print(conf)
    for c in results["conformance"]:
        for f in c.get("failures", [])[:10]:  # the conformance suite's own one-line form
            console.print(f"{c['device']}: {f['line']}", markup=False, highlight=False)
        if c["failed"] > 10:
            console.print(f"... and {c['failed'] - 10} more failing cases on {c['device']} (results.json lists "
                          f"{len(c.get('failures', []))}; ffaccel conformance {c['device']} --report DIR all)")
    sizes, rows = dispatch_pivot(results)
    disp = Table(title="2. dispatch: µs per operation of an n x n x n f32 GEMM (x NumPy's @ at that n; "
                       "medians, this run)")
    for col in ("path", "method", "batch", *(f"n={n}" for n in sizes)):
        disp.add_column(col, justify="left" if col in ("path", "method") else "right")
    for row in rows:
        disp.add_row(*row)
    console.print(disp)
    peak = results["peak"]["gflops"]
    thr = Table(title=f"3. throughput at the largest size (measured f32 peak {peak:.1f} GFLOP/s)")
    for col in ("combination", "who", "n", "GFLOP/s", "of peak"):
        thr.add_column(col, justify="right" if col in ("n", "GFLOP/s", "of peak") else "left")
    top = max(p["size"] for p in results["throughput"])
    for p in results["throughput"]:
        if p["size"] == top:
            mark = " ⚠" if p.get("disturbed") else ""
            thr.add_row(p["combo"], p["who"], str(p["size"]), f"{p['gflops']:.1f}{mark}",
                        f"{p['gflops'] / peak:.0%}")
    console.print(thr)
    for w in results["workload"]:
        mark = " ⚠ disturbed" if w.get("disturbed") else ""
        console.print(f"4. {w['name']} on {w['device']}: {w['ffaccel_s'] * 1e3:.1f} ms vs NumPy "
                      f"{w['numpy_s'] * 1e3:.1f} ms ({w['speedup_vs_numpy']:.2f}x){mark}; max |error| vs float64 "
                      f"{w['max_abs_err_ffaccel']:.2e} (NumPy f32: {w['max_abs_err_numpy']:.2e})")
        bd = breakdown_rows(w)
        if bd:
            t = Table(title="where the block's time goes (medians, side by side)")
            for col in ("", "GEMM (BLAS)", "dispatch + driver", "epilogue", "rest", "block"):
                t.add_column(col, justify="left" if not col else "right")
            for row in bd:
                t.add_row(*row)
            console.print(t)
            if breakdown_note(w):
                console.print(breakdown_note(w), style="yellow", highlight=False)
    for x in results.get("skipped", []):
        console.print(f"[yellow]skipped[/] {x['what']}: {x['why']}", highlight=False)
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
            console.print(f"[yellow]⚠ the machine was busy during {section}[/]: "
                          + "; ".join(results["load"][section]["reasons"]), highlight=False)
        if flagged:
            console.print(f"[yellow]⚠ {len(flagged)} figure(s) look disturbed[/] (marked ⚠, each measured once "
                          "more; see the report): treat them as upper bounds", highlight=False)


def _serve(args: argparse.Namespace, console: Console) -> int:
    import logging

    from ..drivers import driver_targets
    from ..transports.limits import limits_from_overrides
    from ..transports.server import serve

    targets = sorted(driver_targets())
    if args.driver not in targets:
        raise CommandError(Exit.USAGE, f"--driver {args.driver!r}: no such driver; installed drivers: "
                                       f"{', '.join(targets)}")
    where = args.socket or "the default socket"
    if args.socket is not None:
        folder = os.path.dirname(os.path.abspath(args.socket))
        if not os.path.isdir(folder):
            raise CommandError(Exit.USAGE, f"--socket {args.socket}: the folder {folder} does not exist; "
                                           "create it or choose a socket path in an existing folder")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s ffaccel-serve %(message)s")
    try:
        session_limits, server_limits = limits_from_overrides(args.limit)
        return serve(args.socket, args.driver, max_client_memory=args.max_client_memory, poll_us=args.ring_poll_us,
                     session_limits=session_limits, limits=server_limits)
    except OSError as e:  # socket in use, path refused...: the server says why, we say where
        raise CommandError(status_of(e), f"cannot serve on {where}: {one_line(e)}") from e


def _add_serve(sub: argparse._SubParsersAction) -> None:
    srv = sub.add_parser("serve", help="own the device and serve client processes on a Unix socket")
    srv.add_argument("--driver", default="cpu", help="driver to serve (default: cpu)")
    srv.add_argument("--socket", default=None,
                     help="socket path (default: $FFACCEL_SOCKET, else server.sock in the private folder "
                          "$XDG_RUNTIME_DIR/ffaccel or /tmp/ffaccel-UID, created mode 0700)")
    srv.add_argument("--max-client-memory", type=int, default=None, metavar="BYTES",
                     help="per-client memory quota: buffers, imported mappings and command lists "
                          "(default: half the device's memory)")
    srv.add_argument("--ring-poll-us", type=int, default=200, metavar="US",
                     help="how long the ring poller busy-polls before sleeping (default: 200)")
    srv.add_argument("--limit", action="append", default=[], metavar="NAME=VALUE",
                     help="override one per-client or server-wide limit (repeatable; the table of limits, "
                          "defaults and error codes is in docs/spec.md, e.g. max_mappings=4096, max_clients=256)")
    srv.set_defaults(func=_serve)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ffaccel", description="ffaccel: a fixed-function accelerator interface",
                epilog="exit status: " + "; ".join(f"{int(k)} {v}" for k, v in EXIT_MEANINGS.items()))
    p.add_argument("--version", action="version", version=f"ffaccel {__version__}")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error (also FFACCEL_DEBUG=1)")
    # --debug is also accepted after the command name; SUPPRESS keeps one given before it
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an error (also FFACCEL_DEBUG=1)")
    sub = p.add_subparsers(dest="command", required=True)
    sub_add = sub.add_parser
    sub.add_parser = lambda *a, **kw: sub_add(*a, parents=[common], **kw)  # type: ignore[method-assign]
    info = sub.add_parser("info", help="spec version, driver, supported combinations and limits")
    info.add_argument("device", nargs="?", default=None,
                      help=f"device name (default: $FFACCEL_DEVICE, else cpu); one of {', '.join(devices())}")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=_info)
    conf = sub.add_parser("conformance", help="run the conformance suite against a device")
    conf.add_argument("device", help="device name, e.g. cpu or ref")
    lvl = conf.add_mutually_exclusive_group()
    lvl.add_argument("--quick", action="store_true", help="small shapes, every group of cases (default)")
    lvl.add_argument("--full", action="store_true", help="every shape triple and a large GEMM")
    conf.add_argument("--report", metavar="PATH",
                      help="write the report: PATH.json and PATH.md, or DIR/conformance.{json,md}")
    conf.set_defaults(func=_conformance)
    rep = sub.add_parser("report", help="conformance, dispatch overhead, throughput and a workload, with plots")
    rep.add_argument("devices", nargs="*", help="devices to qualify (default: cpu, the embedded default)")
    rep.add_argument("--quick", action="store_true",
                     help="fewer sizes and samples: about 15-30 s on an idle 2-core machine, the full run about "
                          "a minute; longer on a busy one (figures that look disturbed are measured twice)")
    rep.add_argument("--out", default="ffaccel-report", help="output folder (default: ffaccel-report)")
    rep.add_argument("--no-server", action="store_true", help="do not start a server to measure its paths")
    rep.set_defaults(func=_report)
    _add_serve(sub)
    build_c.add_parser(sub)
    return p


class _Console(Console):
    """rich's Console, but a reader that goes away (``ffaccel info | head -1``) is not an error.

    rich answers a broken pipe with ``SystemExit(1)``; raise BrokenPipeError instead so
    that :func:`main` exits 0, as ``cat`` and ``ls`` do when their reader is gone.
    """

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line (status 2) and a pointer to --help."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")
        raise SystemExit(Exit.USAGE)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``ffaccel`` command; the exit status (see :class:`ffaccel.cli.errors.Exit`)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help and --version (0), usage errors (2, already printed)
        return int(e.code or 0) if not isinstance(e.code, str) else Exit.USAGE
    except BrokenPipeError:  # --help piped into a reader that went away
        return stdout_gone()
    debug = debug_enabled(getattr(args, "debug", False))
    console = _Console()
    try:
        # serve installs its own SIGINT/SIGTERM handlers (a clean shutdown, status 0)
        with sigterm_unwinds() if args.func is not _serve else contextlib.nullcontext():
            return int(args.func(args, console))
    except BrokenPipeError:
        return stdout_gone()
    except (Exception, KeyboardInterrupt, Terminated) as e:  # noqa: BLE001 - every failure: one line, a status
        return report_error(e, debug=debug)


if __name__ == "__main__":
    sys.exit(main())
