"""What a device has done: commands, FLOPs and bytes, counted in one place for every transport.

Every accepted submission and replay passes :meth:`ffaccel.transports.session.Session.assign`,
in the in-process transport and in the device server alike; that is where it is counted, from
figures worked out once per validated block of commands (:func:`block_usage`, kept on the
block, so a loop resubmitting the same commands adds one dict update per submission).

The counters, with their units (the keys of :data:`USAGE_FIELDS`, in ``Device.stats()``,
``ffaccel stats --json`` and the server's USAGE reply):

* ``submissions``: submissions and replays accepted (each runs or is queued; a refused one
  runs nothing and is not counted);
* ``gemm_commands``: GEMM commands in them;
* ``gemm_flops``: 2 x batch x m x n x k per GEMM (multiply and add; 0 when k is 0 or alpha is 0,
  as then A and B are not read);
* ``gemm_bytes``: operand bytes a GEMM names as read or written: A and B when read, C when
  beta != 0, D, and epilogue operands, each over every batch entry (logical bytes, not memory
  traffic: a broadcast operand counts once per entry);
* ``copy_commands``, ``copy_bytes``: COPY commands and the bytes they write.

The front-ends' host-array path on an in-process device (``matmul`` on NumPy arrays) calls the
driver's kernel directly, for the price of one BLAS call: it is not a submission and is not
counted. Through a server every call is a submission and is counted.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from ..abi import GemmOp, Op
from ..spec import DTYPES

#: The counters, in the order of a usage tuple, with what each counts.
USAGE_FIELDS: dict[str, str] = {
    "submissions": "submissions and replays accepted",
    "gemm_commands": "GEMM commands accepted",
    "gemm_flops": "2 x batch x m x n x k per GEMM (0 when A and B are not read)",
    "gemm_bytes": "operand bytes GEMMs read and write (A, B when read; C when beta != 0; D; epilogue operands)",
    "copy_commands": "COPY commands accepted",
    "copy_bytes": "bytes COPY commands write",
}
_N = len(USAGE_FIELDS)
#: Distinct usage tuples kept apart before they are folded into the running totals.
_MAX_DISTINCT = 4096


def _bytes_of(view: object, rows: int, cols: int, batch: int) -> int:
    return batch * rows * cols * DTYPES[view.dtype].itemsize_bytes  # type: ignore[attr-defined]


def op_usage(op: Op) -> tuple[int, int, int, int, int, int]:
    """(submissions, gemm_commands, gemm_flops, gemm_bytes, copy_commands, copy_bytes) of one command."""
    if isinstance(op, GemmOp):
        b, m, n, k = op.batch, op.m, op.n, op.k
        reads_ab = op.reads_ab
        moved = _bytes_of(op.d, m, n, b)
        if reads_ab:
            moved += _bytes_of(op.a, m, k, b) + _bytes_of(op.b, k, n, b)
        if op.reads_c and op.c is not None:
            moved += _bytes_of(op.c, m, n, b)
        for post in op.epilogue:
            operand = getattr(post, "operand", None)
            if operand is not None:
                moved += _bytes_of(operand, operand.rows, operand.cols, b)
        return (0, 1, 2 * b * m * n * k if reads_ab else 0, moved, 0, 0)
    dst = op.dst
    return (0, 0, 0, 0, 1, _bytes_of(dst, dst.rows, dst.cols, 1))


def block_usage(ops: Iterable[Op]) -> tuple[int, ...]:
    """The usage tuple of one submission of ``ops`` (its ``submissions`` is 1)."""
    total = [1, 0, 0, 0, 0, 0]
    for op in ops:
        for i, x in enumerate(op_usage(op)):
            total[i] += x
    return tuple(total)


#: The usage of a submission without commands (a fence alone).
EMPTY_USAGE = (1, 0, 0, 0, 0, 0)


class UsageCounter:
    """Running totals of usage tuples; :meth:`add` is on the submission path, so it is one dict update.

    Submissions repeat: a tally per distinct tuple costs less than adding six numbers each time,
    and is folded into plain totals when it grows past :data:`_MAX_DISTINCT` (endless shapes).
    Not locked: the owner calls :meth:`add` under its own lock; :meth:`totals` may run in
    another thread (it copies the tally in one C-level step first).
    """

    __slots__ = ("_tally", "_folded")

    def __init__(self) -> None:
        self._tally: dict[tuple[int, ...], int] = {}
        self._folded = [0] * _N

    def add(self, usage: tuple[int, ...]) -> None:
        tally = self._tally
        n = tally.get(usage)
        if n is not None:
            tally[usage] = n + 1
        elif len(tally) < _MAX_DISTINCT:
            tally[usage] = 1
        else:
            self._fold()
            self._tally[usage] = 1

    def _fold(self) -> None:
        tally, self._tally = self._tally, {}
        folded = self._folded
        for usage, n in tally.items():
            for i, x in enumerate(usage):
                folded[i] += n * x

    def absorb(self, other: "UsageCounter") -> None:
        """Add another counter's totals (a client that left, into its server's)."""
        folded = self._folded
        for i, x in enumerate(other.totals().values()):
            folded[i] += x

    def totals(self) -> dict[str, int]:
        """Every counter of :data:`USAGE_FIELDS` by name, since this counter was made."""
        out = list(self._folded)
        for usage, n in dict(self._tally).items():
            for i, x in enumerate(usage):
                out[i] += n * x
        return dict(zip(USAGE_FIELDS, out))


def process_name(pid: int) -> str:
    """The command name of process ``pid`` (``/proc/PID/comm``), or "" when it cannot be read."""
    try:
        with open(f"/proc/{int(pid)}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def summed(rows: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """The per-field sums of usage dicts."""
    out = dict.fromkeys(USAGE_FIELDS, 0)
    for row in rows:
        for key in USAGE_FIELDS:
            out[key] += int(row.get(key, 0))
    return out


def this_process_row(client_id: int, transport: str, connected_s: float, buffers: int, memory_bytes: int,
                     usage: Mapping[str, int]) -> dict[str, object]:
    """One row of the per-client table, for a client in this very process."""
    pid = os.getpid()
    return {"id": client_id, "pid": pid, "uid": os.getuid(), "command": process_name(pid), "transport": transport,
            "connected_s": connected_s, "buffers": buffers, "memory_bytes": memory_bytes, **usage}


__all__ = ["EMPTY_USAGE", "USAGE_FIELDS", "UsageCounter", "block_usage", "op_usage", "process_name", "summed",
           "this_process_row"]
