"""``ffaccel tune``: measure the cpu driver's kernel crossovers on this machine and cache them.

See :mod:`ffaccel.drivers.cpu_tune` and docs/kernels.md ("The kernel table").
"""

from __future__ import annotations

import argparse
from typing import Any

from .errors import CommandError, Exit


#: The measurement budget a user may ask for, in seconds (the default is 6).
SECONDS_ALLOWED = (0.01, 600.0)


def _tune(args: argparse.Namespace, console: Any) -> int:
    from ..drivers import cpu as cpu_mod
    from ..drivers import cpu_tune

    low, high = SECONDS_ALLOWED
    if not low <= args.seconds <= high:  # also refuses nan and inf: a budget that never ends
        raise CommandError(Exit.USAGE, f"--seconds {args.seconds}: allowed a number of seconds in [{low:g}, {high:g}]")

    if not args.dry_run:  # checked before measuring, not after (the measurements lost)
        import os

        from ..report.output import check_writable

        check_writable(cpu_tune.cache_dir(), param="FFACCEL_CACHE_DIR" if os.environ.get("FFACCEL_CACHE_DIR")
                       else "cache folder")
    console.print(f"measuring on {cpu_tune.machine_key()['cpu']} (about {args.seconds:g} s) ...")
    cross, timings = cpu_tune.tune(budget_s=args.seconds, log=console.print if args.verbose else None)
    if args.dry_run:
        console.print("not saved (--dry-run)")
    else:
        path = cpu_tune.save_crossovers(cross, timings)
        console.print(f"saved: {path}", soft_wrap=True)  # one line: a path to copy
        cpu_mod.forget_crossovers()
    for name, value in cross.to_json().items():
        console.print(f"{name}: {value}", soft_wrap=True)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``ffaccel tune`` to the command's subparsers."""
    p = sub.add_parser("tune", help="measure where the cpu driver's kernels cross over on this machine; cache it")
    p.add_argument("--seconds", type=float, default=6.0, help="time budget of the measurements (default 6)")
    p.add_argument("--dry-run", action="store_true", help="measure and print, do not write the cache")
    p.add_argument("--verbose", action="store_true", help="print every timing")
    p.set_defaults(func=_tune)


__all__ = ["add_parser"]
