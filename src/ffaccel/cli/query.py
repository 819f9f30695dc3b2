"""``ffaccel devices`` (what can be opened, and what each needs) and ``ffaccel stats`` (what a device did).

Both print a table, or with ``--json`` one JSON object on stdout (:func:`emit_json`), which is
also what ``info``, ``conformance`` and ``report`` print with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..runtime import DEFAULT_DEVICE_ENV, device_catalog, open_device
from ..transports.usage import USAGE_FIELDS


def emit_json(doc: Any) -> None:
    """``doc`` as JSON on stdout, and nothing else there (human output goes to stderr meanwhile).

    A string is taken as JSON already written (a file the command wrote, say).
    """
    text = doc if isinstance(doc, str) else json.dumps(doc, indent=1, default=str)
    sys.stdout.write(text.rstrip("\n") + "\n")
    sys.stdout.flush()


# ------------------------------------------------------------------------------------------
# ffaccel devices


def _devices(args: argparse.Namespace, console: Console) -> int:
    catalog = device_catalog()
    if args.json:
        emit_json({"devices": catalog})
        return 0
    t = Table(title="devices: what ffaccel.open() and --device accept")
    for col in ("name", "meaning", "needs"):
        t.add_column(col, overflow="fold")
    for entry in catalog:
        if entry["requires"] is None:
            needs = "nothing more"
        elif entry["driver"] is None:
            needs = "a running ffaccel serve" + (" ([green]one is listening on the default socket[/])"
                                                 if entry.get("running") else "")
        elif entry["installed"]:
            needs = f"{escape(entry['requires'])} ([green]installed[/])"
        else:
            needs = f"{escape(entry['requires'])} ([red]missing[/]: {escape(entry['install'])})"
        for i, form in enumerate(entry["forms"]):
            t.add_row(escape(form["name"]), escape(form["meaning"]), needs if i == 0 else "")
    console.print(t)
    console.print("Upper-case parts are placeholders (N, HOST, PORT, PATH, DEVICE). `ffaccel info NAME` shows what "
                  "a device supports; --json prints this list.", highlight=False, markup=False)
    return 0


# ------------------------------------------------------------------------------------------
# ffaccel stats


def _si(x: float, unit: str) -> str:
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.3g} {prefix}{unit}"
    return f"{x:.0f} {unit}".rstrip()


def _bytes(x: float) -> str:
    for factor, prefix in ((2**40, "Ti"), (2**30, "Gi"), (2**20, "Mi"), (2**10, "Ki")):
        if abs(x) >= factor:
            return f"{x / factor:.3g} {prefix}B"
    return f"{x:.0f} B"


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def _stats(args: argparse.Namespace, console: Console) -> int:
    name = args.device or os.environ.get(DEFAULT_DEVICE_ENV) or "unix:"
    dev = open_device(name)
    try:
        doc = dev.stats()
    finally:
        dev.close()
    if args.json:
        emit_json(doc)
        return 0
    console.print(f"[bold]{escape(str(doc['device']))}[/]: driver {escape(str(doc['driver']))} "
                  f"{escape(str(doc['driver_version']))}, pid {doc['pid']}, up {_duration(doc['uptime_s'])}; "
                  f"{doc['clients_now']} client(s) now, {doc['clients_since_start']} since start", highlight=False)
    console.print(f"since start: {doc['submissions']:,} submissions, {doc['gemm_commands']:,} GEMMs "
                  f"({_si(doc['gemm_flops'], 'FLOP')}, {_bytes(doc['gemm_bytes'])} of operands), "
                  f"{doc['copy_commands']:,} COPYs ({_bytes(doc['copy_bytes'])}); "
                  f"now {doc['buffers']:,} buffers, {_bytes(doc['memory_bytes'])}", highlight=False)
    remote = any(r["transport"] != "inproc" for r in doc["clients"])
    t = Table(title="clients (this query's own connection left out; bytes: operands GEMMs and COPYs named)"
              if remote else "clients (bytes: operands GEMMs and COPYs named)", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for col in ("id", "pid", "command", "via", "memory", "subm", "GEMMs", "FLOP", "bytes", "COPYs"):
        t.add_column(col, justify="left" if col in ("command", "via") else "right")

    def counters(r: dict[str, Any]) -> list[str]:
        return [f"{r['submissions']:,}", f"{r['gemm_commands']:,}", _si(r["gemm_flops"], ""),
                _bytes(r["gemm_bytes"] + r["copy_bytes"]), f"{r['copy_commands']:,}"]

    for r in doc["clients"]:
        if remote and r["id"] == doc.get("client_id"):
            continue
        t.add_row(str(r["id"]), str(r["pid"]), escape(str(r["command"])), str(r["transport"]),
                  _bytes(r["memory_bytes"]), *counters(r))
    gone = {k: doc[k] - sum(r[k] for r in doc["clients"]) for k in USAGE_FIELDS}
    if any(gone.values()):
        t.add_row("", "", "(disconnected)", "", "", *counters(gone))
    console.print(t)
    if doc.get("driver_usage"):
        console.print("driver's own counters: " + ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v:.4g}"
                                                             for k, v in doc["driver_usage"].items()),
                      highlight=False, markup=False)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``ffaccel devices`` and ``ffaccel stats``."""
    p = sub.add_parser("devices", help="every device name form ffaccel.open() takes, and what each needs installed")
    p.add_argument("--json", action="store_true", help='print {"devices": [...]} as JSON on stdout')
    p.set_defaults(func=_devices)
    p = sub.add_parser("stats", help="what a device has done: clients, GEMMs, FLOPs and bytes, per client and in "
                                     "total (for a server: since it started)")
    p.add_argument("device", nargs="?", default=None,
                   help=f"device name, e.g. unix:PATH (default: ${DEFAULT_DEVICE_ENV}, else unix:, the server on the "
                        "default socket); an in-process device such as cpu is opened fresh, so its counters are zero")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object on stdout (totals since start such as gemm_commands and gemm_flops, "
                        "and a row per client; see Device.stats())")
    p.set_defaults(func=_stats)


__all__ = ["add_parsers", "emit_json"]
