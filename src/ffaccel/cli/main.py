"""``ffaccel`` command line: ``info``, ``conformance``, ``report`` and ``serve``.

Every failure is one line on stderr and an exit status from :class:`ffaccel.cli.errors.Exit`
(``--debug`` adds the traceback); see docs/cli.md, "Exit status".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from rich.console import Console
from rich.table import Table

from .. import __version__
from ..abi import ABI_VERSION
from ..runtime import devices, open_device
from . import build_c, query, readiness, tune
from ..spec import COPY_CONVERSIONS, DTYPES, GEMM_COMBOS, POST_OPS, SPEC_VERSION
from .errors import (EXIT_MEANINGS, CommandError, Exit, Terminated, debug_enabled, nonempty, one_line,
                     report_error, sigterm_unwinds, status_of, stdout_gone)

if TYPE_CHECKING:
    from ..transports.server import Server


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
        query.emit_json(doc)
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
    # a partial device may declare none of either: said as "none", not as an empty line
    console.print("COPY conversions: " + (", ".join(f"{DTYPES[s].name}->{DTYPES[d].name}"
                                                     for s, d in COPY_CONVERSIONS if (s, d) in caps.copies) or "none"))
    console.print("epilogue post-ops: " + (", ".join(POST_OPS[k].name for k in sorted(caps.post_ops)) or "none"))
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
    if args.json:  # the --report JSON, on stdout (the tables above went to stderr)
        query.emit_json(report.to_json())
    return Exit.OK if report.passed else Exit.FAILED


def _report(args: argparse.Namespace, console: Console) -> int:
    from ..report import ReportConfig, run_report, write_outputs
    from ..report.output import output_folder
    from ..report.render import PLOTS
    from ..report.terminal import TerminalProgress, print_summary

    cfg = ReportConfig(devices=args.devices or ["cpu"], quick=args.quick, out=Path(args.out),
                       with_server=not args.no_server)
    # the folder is checked before the run (not after it, results lost); an interrupted or failed
    # run removes what it made there, and its server and temporary folder are gone either way
    names = ["results.json", "report.html", *(f"{name}.png" for name in PLOTS)]
    if any(d.partition(":")[0] == "cpu" for d in cfg.devices):  # its kernel table measured once, before the run
        from ..drivers.cpu_tune import tune_at_start

        tune_at_start(lambda line: console.print(line, markup=False, highlight=False))
    with output_folder(cfg.out, names, param="--out"), TerminalProgress(console) as progress:
        results = run_report(cfg, progress)  # each section's table is printed as it ends
        progress.finishing("plotting")
        paths = write_outputs(results, cfg.out)
    print_summary(results, console)
    console.print(f"report: {paths['html']} and {paths['json']} ({results['seconds']:.0f} s)", markup=False,
                  highlight=False)
    if args.json:  # DIR/results.json as written, on stdout (the tables above went to stderr)
        query.emit_json(Path(paths["json"]).read_text(encoding="utf-8"))
    return Exit.OK if all(c["passed"] for c in results["conformance"]) else Exit.FAILED


def _serve(args: argparse.Namespace, console: Console) -> int:
    import logging

    from ..drivers import driver_targets, missing_package
    from ..transports.limits import limits_from_overrides
    from ..transports.server import serve
    from ..transports.socket import MAX_POLL_US

    targets = sorted(driver_targets())
    if args.driver.partition(":")[0] not in targets:  # "npu:preset=rk3588": options go to the driver
        missing = missing_package(args.driver.partition(":")[0])
        raise CommandError(Exit.USAGE, f"--driver {args.driver!r}: " + (missing or "no such driver; installed "
                                                                          f"drivers: {', '.join(targets)}"))
    # every argument is checked before anything slow (the kernel table is measured below) or visible
    if not 0 <= args.ring_poll_us <= MAX_POLL_US:
        raise CommandError(Exit.USAGE, f"--ring-poll-us {args.ring_poll_us}: allowed an integer in "
                                       f"[0, {MAX_POLL_US}] microseconds")
    # --max-client-memory is the limit max_memory_bytes: checked by the same table
    extra = []
    if args.max_client_memory is not None:
        if any(item.partition("=")[0].strip().replace("-", "_") == "max_memory_bytes" for item in args.limit):
            raise CommandError(Exit.USAGE, "--max-client-memory and --limit max_memory_bytes=... set the same "
                                           "limit; give one of them")
        if args.max_client_memory < 0:
            raise CommandError(Exit.USAGE, f"--max-client-memory {args.max_client_memory}: allowed an integer "
                                           ">= 0 (bytes)")
        extra = [f"max_memory_bytes={args.max_client_memory}"]
    session_limits, server_limits = limits_from_overrides([*args.limit, *extra])
    where = args.socket or "the default socket"
    if args.socket is not None:
        folder = os.path.dirname(os.path.abspath(args.socket))
        if not os.path.isdir(folder):
            raise CommandError(Exit.USAGE, f"--socket {args.socket}: the folder {folder} does not exist; "
                                           "create it or choose a socket path in an existing folder")
    if args.ready_file is not None:
        readiness.prepare_ready_file(args.ready_file)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s ffaccel-serve %(message)s")
    if args.driver.partition(":")[0] == "cpu":  # its kernel table measured once, before the socket listens
        from ..drivers.cpu_tune import tune_at_start

        tune_at_start(logging.getLogger("ffaccel.serve").info)
    written: list[os.stat_result] = []
    listening: list[bool] = []

    def ready(srv: "Server") -> None:  # the socket listens: connections queue from here on
        listening.append(True)
        if args.ready_file is not None:
            written.append(readiness.write_ready_file(args.ready_file, {
                "device": f"unix:{srv.socket_path}", "socket": srv.socket_path, "pid": os.getpid(),
                "driver": args.driver}))
        readiness.notify_service_manager(f"READY=1\nMAINPID={os.getpid()}\n"
                                         f"STATUS=serving {args.driver} on {srv.socket_path}")

    try:
        return serve(args.socket, args.driver, max_client_memory=args.max_client_memory, poll_us=args.ring_poll_us,
                     session_limits=session_limits, limits=server_limits, ready=ready)
    except OSError as e:  # socket in use, path refused...: the server says why, we say where
        raise CommandError(status_of(e), f"cannot serve on {where}: {one_line(e)}") from e
    finally:
        if listening:
            readiness.notify_service_manager("STOPPING=1")
        if written:
            readiness.remove_ready_file(args.ready_file, written[0])


def _add_serve(sub: argparse._SubParsersAction) -> None:
    srv = sub.add_parser("serve", help="own the device and serve client processes on a Unix socket")
    srv.add_argument("--driver", default="cpu", help="driver to serve, with options as in a device name, e.g. npu:preset=rk3588 (default: cpu)")
    srv.add_argument("--socket", default=None, type=nonempty,
                     help="socket path (default: $FFACCEL_SOCKET, else server.sock in the private folder "
                          "$XDG_RUNTIME_DIR/ffaccel or /tmp/ffaccel-UID, created mode 0700)")
    srv.add_argument("--max-client-memory", type=int, default=None, metavar="BYTES",
                     help="per-client memory quota: buffers, imported mappings and command lists "
                          "(default: half the device's memory)")
    srv.add_argument("--ring-poll-us", type=int, default=200, metavar="US",
                     help="how long the ring poller busy-polls before sleeping (default: 200)")
    srv.add_argument("--ready-file", default=None, type=nonempty, metavar="PATH",
                     help="once the socket listens, write PATH atomically (one line of JSON: device, socket, pid, "
                          "driver); removed when the server stops. With $NOTIFY_SOCKET set (systemd Type=notify) "
                          "READY=1 is also sent there")
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
    info.add_argument("--json", action="store_true",
                      help="print one JSON object on stdout: spec_version, abi_version, device, driver, gemm_combos, "
                           "copy_conversions, post_ops, engines, limits, memory_bytes, kernels")
    info.set_defaults(func=_info)
    conf = sub.add_parser("conformance", help="run the conformance suite against a device")
    conf.add_argument("device", help="device name, e.g. cpu or ref")
    lvl = conf.add_mutually_exclusive_group()
    lvl.add_argument("--quick", action="store_true", help="small shapes, every group of cases (default)")
    lvl.add_argument("--full", action="store_true", help="every shape triple and a large GEMM")
    conf.add_argument("--report", type=nonempty, metavar="PATH",
                      help="write the report: PATH.json and PATH.md, or DIR/conformance.{json,md}")
    conf.add_argument("--json", action="store_true",
                      help="print the report's JSON (as --report writes it) on stdout; the tables go to stderr")
    conf.set_defaults(func=_conformance)
    rep = sub.add_parser("report", help="conformance, dispatch overhead, throughput and a workload, with plots")
    rep.add_argument("devices", nargs="*", help="devices to qualify (default: cpu, the embedded default)")
    rep.add_argument("--quick", action="store_true",
                     help="fewer sizes and samples: about 25 s on a 2-core machine at load ~2, 30-35 s at load "
                          "~3-4, 40-65 s at load ~4-7 (about 28-32 CPU seconds; docs/report.md has the figures); "
                          "longer on a busier one (figures that look disturbed are measured twice)")
    rep.add_argument("--out", default="ffaccel-report", type=nonempty, help="output folder (default: ffaccel-report)")
    rep.add_argument("--no-server", action="store_true", help="do not start a server to measure its paths")
    rep.add_argument("--json", action="store_true",
                     help="print DIR/results.json on stdout once written; progress and tables go to stderr")
    rep.set_defaults(func=_report)
    _add_serve(sub)
    build_c.add_parser(sub)
    query.add_parsers(sub)
    tune.add_parser(sub)
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
    # with --json, stdout carries the JSON alone: what the command shows on the way goes to stderr
    console = _Console(stderr=bool(getattr(args, "json", False)))
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
