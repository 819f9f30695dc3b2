"""``ffaccel build-c``: compile the C client and the CBLAS library with the system C compiler.

The C sources ship inside the package (``ffaccel/c``), so this works after ``pip install``;
nothing is compiled at install time, so the package itself installs without a compiler.
The uAPI header is written fresh from the tables (:mod:`ffaccel.transports.cheader`), so what
is built always matches the Python side it will talk to.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rich.console import Console

from ..report.output import output_folder
from ..spec import ErrorCode, FFAccelError
from ..transports.cheader import render
from . import blas_gen
from .errors import nonempty

#: Headers installed into ``DIR/include`` (the uAPI header and cblas.h's prototypes are generated).
HEADERS = ("ffaccel.h", "cblas.h")
UAPI_HEADER = "ffaccel_uapi.h"
#: The drop-in BLAS's soname: a program linked against libblas.so.3 finds it in that library's place.
BLAS_SONAME = "libblas.so.3"
#: Sources of each library (in the package's ``c`` folder; generated ones are written beside them).
CLIENT_SOURCES = ("ffaccel_client.c",)
CBLAS_SOURCES = ("ffaccel_cblas.c", "ffaccel_gemm.c", "ffaccel_host_blas.c")
BLAS_SOURCES = ("ffaccel_blas.c", "ffaccel_gemm.c", "ffaccel_host_blas.c", "ffaccel_client.c",
                "ffaccel_blas_forward.c")
#: Compiler candidates, after ``$CC``.
COMPILERS = ("cc", "gcc", "clang")
#: No -Werror for users: a newer compiler's new warning must not break their build (the tests add it).
_FLAGS = ("-std=c11", "-O2", "-fPIC", "-Wall", "-Wextra")


@dataclass(frozen=True)
class BuildResult:
    """What :func:`build_c` produced: folders and the compiler used."""

    include: Path
    lib: Path
    compiler: str

    @property
    def libffaccel(self) -> Path:
        return self.lib / "libffaccel.so"

    @property
    def libcblas(self) -> Path:
        return self.lib / "libffaccel_cblas.so"

    @property
    def libblas(self) -> Path:
        """The drop-in BLAS (also reachable as ``lib/libblas.so.3``, its soname)."""
        return self.lib / "libffaccel_blas.so"


def find_compiler(cc: str | None = None) -> list[str]:
    """The C compiler's command: ``cc`` if given, else ``$CC``, else the first of cc, gcc, clang on PATH.

    Raises
    ------
    FFAccelError
        INVALID_PARAMETER, naming ``CC``, when the compiler given is not found; UNSUPPORTED when
        none was given and none is found.
    """
    choice = cc or os.environ.get("CC")
    if choice:
        argv = shlex.split(choice)
        if argv and shutil.which(argv[0]):
            return argv
        # named by the user (--cc or $CC): a bad argument (exit 2), not a missing facility
        raise FFAccelError(ErrorCode.INVALID_PARAMETER, "CC", f"C compiler {choice!r} not found on PATH; "
                           "allowed: a C11 compiler such as gcc or clang (install one, e.g. apt-get install gcc)")
    for name in COMPILERS:
        if shutil.which(name):
            return [name]
    raise FFAccelError(ErrorCode.UNSUPPORTED, "CC", "no C compiler found (looked for $CC, "
                       + ", ".join(COMPILERS) + "); allowed: a C11 compiler such as gcc or clang "
                       "(install one, e.g. apt-get install gcc, or set CC)")


def source_dir() -> Path:
    """Where the C sources are (inside the installed package)."""
    return Path(str(resources.files("ffaccel") / "c"))


def build_c(out: str | os.PathLike[str], cc: str | None = None, werror: bool = False) -> BuildResult:
    """Write ``out/include`` (uAPI, client and CBLAS headers) and ``out/lib`` (the three libraries).

    ``lib/libffaccel_blas.so`` is the drop-in BLAS (docs/blas.md), with ``lib/libblas.so.3`` a link
    to it (its soname), so that ``LD_LIBRARY_PATH=out/lib`` puts it in the system BLAS's place.

    Parameters
    ----------
    out : path
        Output folder (created).
    cc : str, optional
        The compiler command (default: ``$CC``, else cc, gcc or clang).
    werror : bool
        Treat warnings as errors (the tests build this way).

    Returns
    -------
    BuildResult

    Raises
    ------
    FFAccelError
        UNSUPPORTED when no compiler is found; INVALID_PARAMETER (``CC``) when it fails, and
        (``out``) when the output folder cannot be created or written.
    """
    compiler = find_compiler(cc)
    root = Path(out)
    inc, lib = root / "include", root / "lib"
    result = BuildResult(inc, lib, " ".join(compiler))
    lib_names = [result.libffaccel.name, result.libcblas.name, result.libblas.name, BLAS_SONAME]
    # like every other output path: checked first (a code, the parameter, what is allowed), and a
    # build that fails or is interrupted removes the folders and files it made, never half a library set
    with output_folder(root, [], param="out"), output_folder(inc, [*HEADERS, UAPI_HEADER], param="out"), \
            output_folder(lib, lib_names, param="out"):
        _build(compiler, result, werror)
    return result


def _build(compiler: list[str], result: BuildResult, werror: bool) -> None:
    inc, lib = result.include, result.lib
    flags = [*_FLAGS, "-Werror"] if werror else list(_FLAGS)
    with tempfile.TemporaryDirectory(prefix="ffaccel-build-c-") as tmp:
        src = _sources(Path(tmp))
        for h in (*HEADERS, UAPI_HEADER):
            shutil.copyfile(src / h, inc / h)
        _compile(compiler, [*flags, "-shared", *(str(src / f) for f in CLIENT_SOURCES), "-o", str(result.libffaccel)])
        _compile(compiler, [*flags, "-shared", *(str(src / f) for f in CBLAS_SOURCES), f"-L{lib}", "-lffaccel",
                            "-ldl", "-lpthread", "-Wl,-rpath,$ORIGIN", "-o", str(result.libcblas)])
        # self-contained (the client is inside, hidden): it must load from wherever libblas.so.3 points
        _compile(compiler, [*flags, "-shared", "-fvisibility=hidden", *(str(src / f) for f in BLAS_SOURCES),
                            f"-Wl,-soname,{BLAS_SONAME}", "-ldl", "-lpthread", "-lm", "-o", str(result.libblas)])
    link = lib / BLAS_SONAME
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(result.libblas.name)


def _sources(folder: Path) -> Path:
    """The package's C sources in folder, with the generated ones: uAPI header, cblas.h, forwarders."""
    for f in source_dir().iterdir():
        if f.suffix in (".c", ".h"):
            shutil.copyfile(f, folder / f.name)
    (folder / UAPI_HEADER).write_text(render())
    (folder / "cblas.h").write_text(blas_gen.render_cblas_header((source_dir() / "cblas.h").read_text()))
    blas_gen.write_sources(folder)
    return folder


def _compile(compiler: list[str], args: list[str]) -> None:
    proc = subprocess.run([*compiler, *args], capture_output=True, text=True, check=False)
    if proc.returncode:
        raise FFAccelError(ErrorCode.INVALID_PARAMETER, "CC", f"{' '.join(compiler)} failed (exit "
                           f"{proc.returncode}); allowed: a C11 compiler that builds the sources:\n{proc.stderr}")




def _run(args: argparse.Namespace, console: Console) -> int:
    try:
        res = build_c(args.out, args.cc)
    except FFAccelError as e:
        raise e.renamed({"out": "--out"}) from None
    say = lambda text: console.print(text, soft_wrap=True, markup=False, highlight=False)  # noqa: E731 - paths whole
    say(f"built with {res.compiler}:")
    for p in sorted(res.include.iterdir()) + [res.libffaccel, res.libcblas, res.libblas]:
        say(f"  {p}")
    say(f"link a CBLAS program: cc prog.c -I{res.include} -L{res.lib} -lffaccel_cblas -Wl,-rpath,{res.lib}")
    say("run it against a server: FFACCEL_DEVICE=unix:PATH ./prog (PATH: the socket of `ffaccel serve`)")
    say(f"drop-in BLAS for unmodified programs: LD_PRELOAD={res.libblas} FFACCEL_DEVICE=unix:PATH prog "
        "(docs/blas.md)")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``ffaccel build-c`` on the CLI's subcommands."""
    p = sub.add_parser("build-c", help="compile the C client (libffaccel.so), CBLAS (libffaccel_cblas.so) and "
                       "the drop-in BLAS (libffaccel_blas.so)")
    p.add_argument("--out", required=True, type=nonempty, metavar="DIR", help="writes DIR/include and DIR/lib")
    p.add_argument("--cc", default=None, type=nonempty, help="C compiler command (default: $CC, else cc, gcc or clang)")
    p.set_defaults(func=_run)


__all__ = ["BuildResult", "add_parser", "build_c", "find_compiler", "source_dir"]
