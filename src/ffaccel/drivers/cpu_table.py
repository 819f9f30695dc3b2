"""The ``cpu`` driver's kernel choice as one table (docs/kernels.md, "The kernel table").

A GEMM's *row* is its kernel class (f64, f32, bf16, f16, int8), whether it carries an epilogue
(``fused``) and whether it is *skinny* (batch 1 and m or n equal to 1: a matrix-vector product).
Each row is a list of *bands* over the GEMM's size ``batch * m * n * k``; a band says which
kernel library runs the GEMM (:class:`Library`) and on which threads (:class:`Threads`).
:meth:`KernelTable.band` is the one lookup that ``CpuDriver.prepare_gemm``, ``kernels()`` (what
``ffaccel info`` prints), ``thread_pool()`` and ``size_bands()`` (what conformance checks both sides of) read.

Where the rows change library is a property of the CPU and of the libraries installed, not a
constant: :class:`Crossovers` holds those sizes. :data:`DEFAULT_CROSSOVERS` are the sizes
measured on the machine this was tuned on; ``ffaccel tune`` (:mod:`ffaccel.drivers.cpu_tune`)
measures them on the running machine and caches them per CPU model and library versions,
and :func:`crossovers` loads that cache when it exists. ``FFACCEL_CPU_KERNELS`` forces any
class onto any library it can run (:func:`parse_kernels`): a forced class has one band.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Mapping
from typing import Any

from ..spec import DType, ErrorCode, FFAccelError


class KernelClass(str, enum.Enum):
    """The dtype classes a kernel is chosen for (a combination's A dtype; int8 for every integer pair)."""

    F64 = "f64"
    F32 = "f32"
    BF16 = "bf16"
    F16 = "f16"
    INT8 = "int8"


class Choice(str, enum.Enum):
    """What ``FFACCEL_CPU_KERNELS`` asks for a class: ``auto`` (the table's measured choice) or a forced library."""

    AUTO = "auto"
    BLAS = "blas"  # OpenBLAS's ?gemm at every size and shape
    GEMV = "gemv"  # skinny GEMMs (f32/f64) on OpenBLAS's ?gemv (NumPy's matmul); the rest on ?gemm
    ONEDNN = "onednn"  # oneDNN's matmul on the class's own dtypes
    WIDENED = "widened"  # f16/bf16 widened to f32 (cpu_onednn.cast), then oneDNN's f32 matmul
    TORCH = "torch"  # int8: torch._int_mm (uint8 shifted onto int8)


class Library(str, enum.Enum):
    """The kernel that runs a band's GEMMs."""

    BLAS = "blas"  # OpenBLAS ?gemm (SciPy's f2py fast path on the calling thread, NumPy's OpenBLAS above)
    GEMV = "gemv"  # OpenBLAS ?gemv (what NumPy's @ runs for a vector times a matrix): NumPy's OpenBLAS,
    # SciPy's f2py call where OpenBLAS runs it on the calling thread
    ONEDNN = "onednn"  # oneDNN matmul, the epilogue fused
    WIDENED = "widened"  # casts to f32 (cpu_onednn.cast), then oneDNN's f32 matmul
    TORCH = "torch"  # torch._int_mm for every int8 pair (uint8 shifted)
    ONEDNN_TORCH = "onednn+torch"  # int8 x int8 on torch._int_mm, the pairs with uint8 on oneDNN's u8 x s8

    @property
    def openmp(self) -> bool:
        """Whether this library runs on the process's OpenMP pool (oneDNN and PyTorch share libgomp)."""
        return self not in (Library.BLAS, Library.GEMV)


class Threads(str, enum.Enum):
    """Which threads a band's GEMMs run on."""

    CALLER = "caller"  # the calling thread: OpenBLAS runs no worker at this size (below its threading threshold)
    OWN = "own"  # OpenBLAS's own worker threads (NumPy's OpenBLAS: the pool NumPy's @ uses)
    ONE = "one"  # OpenBLAS held to one thread for the call, so that only the OpenMP pool ever works
    SHARED = "shared"  # OWN in a process without PyTorch, ONE where PyTorch is loaded (decided when prepared)
    OPENMP = "openmp"  # the process's OpenMP pool (oneDNN, PyTorch)
    LIMIT = "limit"  # OpenBLAS held to the device's thread limit (``cpu:N``)


@dataclasses.dataclass(frozen=True)
class Band:
    """From ``min_mnk`` (``batch * m * n * k``, inclusive) up to the next band of the row."""

    min_mnk: int
    library: Library
    threads: Threads
    #: In a process without PyTorch, run this band on OpenBLAS's ?gemm with its own threads (NumPy's
    #: OpenBLAS: the pool NumPy's @ already uses) instead of ``library``, unless the epilogue has a
    #: GELU (decided when prepared)
    numpy_pool_without_torch: bool = False


@dataclasses.dataclass(frozen=True)
class RowKey:
    cls: KernelClass
    fused: bool  # the GEMM has an epilogue
    skinny: bool  # batch 1 and m == 1 or n == 1


@dataclasses.dataclass(frozen=True)
class ClassEntry:
    """What serves a class on this machine before sizes are considered."""

    choice: Choice
    library: Library  # the library the class's large GEMMs get (BLAS where nothing better runs here)
    impl: str | None  # oneDNN's implementation name for the class (a 64^3 probe), or None
    forced: bool


#: OpenBLAS runs a gemm on the calling thread at or below this m*n*k (its SMP_THRESHOLD_MIN *
#: GEMM_MULTITHREAD_THRESHOLD = 65536 * 4): nothing to limit and no worker woken there.
OPENBLAS_SINGLE_THREAD_MNK = 65536 * 4
#: Never: a crossover that no size reaches.
NEVER = 2**62


@dataclasses.dataclass(frozen=True)
class Crossovers:
    """The sizes (``batch * m * n * k``) where a row changes library: measured, per CPU and libraries.

    ``onednn_bare_min_mnk`` / ``onednn_fused_min_mnk``: per class, from which size a GEMM without /
    with an epilogue goes to the class's oneDNN (or PyTorch) kernel under ``auto``;
    :data:`NEVER` keeps the class on OpenBLAS. ``gemv_skinny``: per class (f32, f64), whether
    skinny GEMMs go to OpenBLAS's ?gemv (NumPy's matmul) rather than to ?gemm or oneDNN.
    ``one_thread_below_onednn``: whether multi-threaded OpenBLAS GEMMs of a class served by oneDNN
    (the sizes below its crossover) run on one thread where PyTorch is loaded (``Threads.SHARED``:
    PyTorch's OpenMP team then stays the one working pool), or always on OpenBLAS's threads.
    ``bare_f32_numpy_pool_without_torch``: whether f32 GEMMs past their crossover stay on NumPy's
    OpenBLAS where PyTorch is not loaded (bare ones, and fused ones whose epilogue is elementwise
    passes NumPy does cheaply: everything but GELU): a program alternating NumPy's @ and ffaccel
    then runs one pool, not two that spin against each other (docs/kernels.md, "One pool per
    process").
    ``source`` says where the numbers came from (``defaults`` or the tuning cache's path).
    """

    onednn_bare_min_mnk: Mapping[str, int]
    onednn_fused_min_mnk: Mapping[str, int]
    gemv_skinny: Mapping[str, bool]
    one_thread_below_onednn: bool = True
    bare_f32_numpy_pool_without_torch: bool = True
    source: str = "defaults"

    def to_json(self) -> dict[str, Any]:
        return {"onednn_bare_min_mnk": dict(self.onednn_bare_min_mnk),
                "onednn_fused_min_mnk": dict(self.onednn_fused_min_mnk),
                "gemv_skinny": dict(self.gemv_skinny), "one_thread_below_onednn": self.one_thread_below_onednn,
                "bare_f32_numpy_pool_without_torch": self.bare_f32_numpy_pool_without_torch}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str) -> "Crossovers":
        """Parsed from a tuning cache; anything malformed raises ValueError (the cache is then ignored)."""
        def ints(name: str) -> dict[str, int]:
            v = data[name]
            if not isinstance(v, dict) or set(v) != set(CHOOSABLE_NAMES) or not all(
                    isinstance(x, int) and 0 <= x <= NEVER for x in v.values()):
                raise ValueError(f"{name}: {v!r}")
            return dict(v)

        g = data["gemv_skinny"]
        if not isinstance(g, dict) or set(g) != {"f32", "f64"} or not all(isinstance(x, bool) for x in g.values()):
            raise ValueError(f"gemv_skinny: {g!r}")
        one, pool = data["one_thread_below_onednn"], data["bare_f32_numpy_pool_without_torch"]
        if not isinstance(one, bool) or not isinstance(pool, bool):
            raise ValueError(f"one_thread_below_onednn: {one!r}, bare_f32_numpy_pool_without_torch: {pool!r}")
        return cls(ints("onednn_bare_min_mnk"), ints("onednn_fused_min_mnk"), dict(g), one, pool, source)


#: The classes whose library ``FFACCEL_CPU_KERNELS`` chooses (f64 only between ?gemm and ?gemv).
CHOOSABLE = (KernelClass.F32, KernelClass.BF16, KernelClass.F16, KernelClass.INT8, KernelClass.F64)
CHOOSABLE_NAMES = tuple(c.value for c in CHOOSABLE)
#: The classes a oneDNN (or PyTorch) kernel can serve.
ONEDNN_CLASSES = (KernelClass.F32, KernelClass.BF16, KernelClass.F16, KernelClass.INT8)

#: Measured on the AMD EPYC with AVX-512 (VNNI, BF16) this was first tuned on (docs/kernels.md):
#: OpenBLAS / oneDNN time, n^3 GEMMs: f32 bare 0.6 at 128, 1.05 at 256 (so from 160^3); with an
#: epilogue OpenBLAS needs a pass per post-op (from 96^3); int8 0.82 at 128, 1.81 at 256; bf16
#: 0.54 at 64, 1.34 at 128; f16 0.67 at 64, 1.99 at 128. Skinny GEMMs: OpenBLAS's sgemm with
#: m = 1 ran 10-20x slower than its sgemv on the AMD EPYC (AVX2) of docs/kernels.md's per-call
#: section (1x512x2048: 6.4 ms against 0.30 ms), so gemv serves them.
DEFAULT_CROSSOVERS = Crossovers(
    onednn_bare_min_mnk={"f32": 160**3, "bf16": 96**3, "f16": 96**3, "int8": 192**3, "f64": NEVER},
    onednn_fused_min_mnk={"f32": 96**3, "bf16": 96**3, "f16": 96**3, "int8": 192**3, "f64": NEVER},
    gemv_skinny={"f32": True, "f64": True},
)


def combo_class(combo: Any) -> KernelClass:
    """The kernel class of a dtype combination."""
    if combo.is_int:
        return KernelClass.INT8
    return _FLOAT_CLASS[combo.a]


#: The kernel class of each float input dtype.
_FLOAT_CLASS = {DType.F32: KernelClass.F32, DType.BF16: KernelClass.BF16, DType.F16: KernelClass.F16,
                DType.F64: KernelClass.F64}


def parse_kernels(spec: str | None, env_name: str = "FFACCEL_CPU_KERNELS") -> dict[KernelClass, Choice]:
    """Class -> :class:`Choice` from a ``FFACCEL_CPU_KERNELS``-style string.

    ``auto``, a choice for every class (``blas``), or ``class=choice`` pairs separated by commas
    (classes not named stay ``auto``). A choice a class never takes is refused here; one this
    machine cannot run is refused by :func:`build_table`.

    Examples
    --------
    >>> parse_kernels("int8=onednn")[KernelClass.INT8].value, parse_kernels("blas")[KernelClass.F32].value
    ('onednn', 'blas')
    """
    text = (spec or "auto").strip().lower()
    out = dict.fromkeys(CHOOSABLE, Choice.AUTO)
    names = [c.value for c in Choice]
    allowed = f"one of {names}, or class=choice pairs separated by commas (classes {list(CHOOSABLE_NAMES)})"
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        cls, eq, choice = part.rpartition("=")
        choice = choice.strip()
        if choice not in names or (eq and cls.strip() not in CHOOSABLE_NAMES):
            raise FFAccelError(ErrorCode.INVALID_PARAMETER, "kernels",
                               f"cpu kernel libraries ({env_name}); got {spec!r}, allowed {allowed}",
                               rule="device.name")
        want = Choice(choice)
        if eq:
            out[KernelClass(cls.strip())] = want
        else:  # one choice for every class that can take it (f64 stays on OpenBLAS for oneDNN & co)
            for c in CHOOSABLE:
                out[c] = want if (c != KernelClass.F64 or want in (Choice.AUTO, Choice.BLAS, Choice.GEMV)) \
                    else Choice.BLAS
    return out


@dataclasses.dataclass(frozen=True)
class KernelTable:
    """Row -> bands, for one choice, one thread limit, one machine's libraries and crossovers."""

    classes: Mapping[KernelClass, ClassEntry]
    rows: Mapping[RowKey, tuple[Band, ...]]
    crossovers: Crossovers
    onednn_version: str | None
    thread_limit: int | None

    @functools.cached_property
    def _rows_by_fields(self) -> dict[tuple[KernelClass, bool, bool], tuple[Band, ...]]:
        """``rows`` keyed by plain tuples: a RowKey made and hashed per lookup cost ~1.5 us of every
        kernel a new geometry prepares."""
        return {(k.cls, k.fused, k.skinny): v for k, v in self.rows.items()}

    def band(self, cls: KernelClass, fused: bool, skinny: bool, mnk: int) -> Band:
        """The band serving a GEMM of this class, epilogue, shape and size (``batch*m*n*k``)."""
        found = None
        for b in self._rows_by_fields[(cls, fused, skinny)]:
            if b.min_mnk > mnk:
                break
            found = b
        assert found is not None  # every row starts at 0
        return found

    def size_bands(self, cls: KernelClass) -> tuple[int, ...]:
        """Every size (``batch*m*n*k``) where a GEMM of this class changes kernel or threads, ascending
        (what a conformance suite needs to test both sides of)."""
        return tuple(sorted({b.min_mnk for (key, bands) in self.rows.items() if key.cls == cls
                             for b in bands if b.min_mnk > 0}))

    def serves_openmp(self, cls: KernelClass) -> bool:
        """Whether some GEMM of this class runs on the OpenMP pool here."""
        return any(b.library.openmp for key, bands in self.rows.items() if key.cls == cls for b in bands)


def build_table(choice: Mapping[KernelClass, Choice], entries: Mapping[KernelClass, ClassEntry],
                crossovers: Crossovers, thread_limit: int | None, onednn_version: str | None,
                single_thread_mnk: int = OPENBLAS_SINGLE_THREAD_MNK) -> KernelTable:
    """The rows for a resolved choice (``entries``: what each class can run here, see
    ``ffaccel.drivers.cpu.resolve_kernels``); ``single_thread_mnk``: OpenBLAS's own threading
    threshold (tests move it to put small GEMMs on either side)."""
    rows: dict[RowKey, tuple[Band, ...]] = {}

    def _openblas_bands(start: int, threads_above: Threads) -> list[Band]:
        """OpenBLAS ?gemm from ``start``: on the caller up to OpenBLAS's own threading threshold."""
        return [Band(start, Library.BLAS, Threads.CALLER),
                Band(max(start, single_thread_mnk + 1), Library.BLAS, threads_above)]

    limited = Threads.LIMIT if thread_limit is not None else None
    for cls in KernelClass:
        entry = entries[cls]
        want = choice.get(cls, Choice.AUTO)
        for fused in (False, True):
            for skinny in (False, True):
                key = RowKey(cls, fused, skinny)
                gemv_ok = cls in (KernelClass.F32, KernelClass.F64) and skinny
                if want == Choice.GEMV or (want == Choice.AUTO and gemv_ok and crossovers.gemv_skinny[cls.value]):
                    if gemv_ok:  # NumPy's OpenBLAS ?gemv, as @ runs it; held to one thread where PyTorch
                        # is loaded and oneDNN serves the class (PyTorch's OpenMP team: the one pool)
                        own = Threads.SHARED if entry.library.openmp and crossovers.one_thread_below_onednn \
                            else Threads.OWN
                        rows[key] = (Band(0, Library.GEMV, limited or own),)
                        continue
                if entry.library == Library.BLAS:
                    rows[key] = tuple(_openblas_bands(0, limited or Threads.OWN))
                    continue
                if entry.forced:  # a forced library runs at every size
                    rows[key] = (Band(0, entry.library, limited or Threads.OPENMP),)
                    continue
                start = (crossovers.onednn_fused_min_mnk if fused else crossovers.onednn_bare_min_mnk)[cls.value]
                below = Threads.SHARED if crossovers.one_thread_below_onednn else Threads.OWN
                bands = [b for b in _openblas_bands(0, limited or below) if b.min_mnk < start]
                numpy_pool = cls == KernelClass.F32 and crossovers.bare_f32_numpy_pool_without_torch
                rows[key] = tuple(bands + [Band(start, entry.library, Threads.OPENMP, numpy_pool)]) \
                    if start < NEVER else tuple(_openblas_bands(0, limited or Threads.OWN))
    return KernelTable(dict(entries), rows, crossovers, onednn_version, thread_limit)


def describe(table: KernelTable, cls: KernelClass, library_name: Mapping[Library, str]) -> str:
    """A class's rows in words, made from the bands (what ``ffaccel info`` prints per combination):
    consecutive bands of one library read as one phrase, e.g. ``OpenBLAS sgemm (caller threads;
    own threads from m*n*k 262145)``; rows that differ are prefixed with their kind."""
    def phrase(bands: tuple[Band, ...]) -> str:
        parts: list[str] = []
        for b in bands:
            where = f"{b.threads.value} threads" + (f" from m*n*k {b.min_mnk}" if b.min_mnk else "")
            if b.numpy_pool_without_torch:
                where += f"; {library_name[Library.BLAS]}, own threads, without PyTorch loaded"
            if parts and parts[-1].startswith(library_name[b.library] + " ("):
                parts[-1] = parts[-1][:-1] + f"; {where})"
            else:
                parts.append(f"{library_name[b.library]} ({where})")
        return "; ".join(parts)

    rows = [(("fused" if fused else "bare") + (" m|n=1" if skinny else ""),
             phrase(table.rows[RowKey(cls, fused, skinny)])) for fused in (False, True) for skinny in (False, True)]
    if len({text for _, text in rows}) == 1:
        return rows[0][1]
    return " | ".join(f"{name}: {text}" for name, text in rows)


__all__ = ["Band", "Choice", "ClassEntry", "Crossovers", "DEFAULT_CROSSOVERS", "KernelClass", "KernelTable",
           "Library", "NEVER", "OPENBLAS_SINGLE_THREAD_MNK", "RowKey", "Threads", "build_table", "combo_class",
           "describe", "parse_kernels"]
