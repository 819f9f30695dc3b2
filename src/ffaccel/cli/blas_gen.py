"""The drop-in BLAS's generated C: host forwarders and CBLAS prototypes, from ``ffaccel/c/blas_routines.txt``.

The table lists every routine of the reference BLAS and CBLAS (the file says its syntax). From it
this module writes, at ``ffaccel build-c`` time:

- the CBLAS prototypes of ``cblas.h`` (in place of its ``@CBLAS_PROTOTYPES@`` line), so the header
  declares exactly what the library exports;
- ``ffaccel_blas_forward.c``: one wrapper per routine not written by hand, which calls the same
  routine of the host BLAS (``ffb_host_symbol``, in ffaccel_blas.c), and the table of host symbol
  names the hand-written routines use to reach the host (``FFB_HOST_<symbol>`` indices).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

#: Per-precision macros of the table: element type, scalar passed by value in CBLAS, real type.
_PRECISION = {
    "s": {"T": "float", "A": "float", "R": "float"},
    "d": {"T": "double", "A": "double", "R": "double"},
    "c": {"T": "void", "A": "void *", "R": "float"},  # the table writes "const $A alpha"
    "z": {"T": "void", "A": "void *", "R": "double"},
}
#: C types of the Fortran return codes (complex returned by value, as gfortran does).
_FORTRAN_RETURN = {"void": "void", "int": "int", "f32": "float", "f64": "double", "c32": "float _Complex",
                   "c64": "double _Complex"}
#: The line in cblas.h that the prototypes replace.
PROTOTYPES_MARKER = "@CBLAS_PROTOTYPES@"
_BRACES = re.compile(r"\{([a-z,]+)\}")


@dataclass(frozen=True)
class Arg:
    """One argument: its C type, its name, and whether it is a Fortran CHARACTER (hidden length)."""

    ctype: str
    name: str
    character: bool = False


@dataclass(frozen=True)
class Routine:
    """One exported routine. ``symbol`` is the linker name (``sgemm_``, ``cblas_sgemm``)."""

    fortran: bool
    symbol: str
    returns: str
    args: tuple[Arg, ...]
    own: bool
    variadic: bool = False

    def params(self) -> str:
        """The C parameter list, hidden CHARACTER lengths (size_t, after the others) included."""
        ps = [f"{a.ctype}{a.name}" if a.ctype.endswith("*") else f"{a.ctype} {a.name}" for a in self.args]
        ps += [f"size_t {a.name}_len" for a in self.args if a.character]
        if self.variadic:
            ps.append("...")
        return ", ".join(ps) or "void"

    def call_args(self) -> str:
        names = [a.name for a in self.args] + [f"{a.name}_len" for a in self.args if a.character]
        return ", ".join(names)

    def prototype(self) -> str:
        ret = self.returns if self.returns.endswith("*") else self.returns + " "
        return f"{ret}{self.symbol}({self.params()})"


def table_text() -> str:
    """The routine table shipped with the package (ffaccel/c/blas_routines.txt)."""
    return (resources.files("ffaccel") / "c" / "blas_routines.txt").read_text(encoding="utf-8")


def _expand(line: str) -> list[tuple[str, str]]:
    """(precision letter or "", line) for each letter of the line's first {a,b} group ("" when none)."""
    m = _BRACES.search(line)
    if not m:
        return [("", line)]
    return [(p, line[: m.start()] + p + line[m.end():]) for p in m.group(1).split(",")]


def _substitute(line: str, precision: str) -> str:
    if "$" not in line:
        return line
    if not precision:
        raise ValueError(f"blas_routines.txt: precision macro without a {{..}} group: {line}")
    for key, value in _PRECISION[precision].items():
        line = line.replace(f"${key}", value)
    return line


def _c_routine(text: str, own: bool) -> Routine:
    m = re.fullmatch(r"(.+?)\s*\b(cblas_\w+)\((.*)\)", text)
    if not m:
        raise ValueError(f"blas_routines.txt: not a C prototype: {text}")
    ret, name, params = m.group(1).strip(), m.group(2), m.group(3)
    args, variadic = [], False
    for p in (s.strip() for s in params.split(",")):
        if p == "...":
            variadic = True
            continue
        pm = re.fullmatch(r"(.*?)(\w+)", p)
        if not pm:
            raise ValueError(f"blas_routines.txt: bad parameter {p!r} in {text}")
        args.append(Arg(" ".join(pm.group(1).replace("*", " * ").split()).replace("* *", "**"), pm.group(2)))
    return Routine(False, name, ret, tuple(args), own, variadic)


def _fortran_routine(words: list[str], own: bool) -> Routine:
    ret, name, *argv = words
    if ret not in _FORTRAN_RETURN:
        raise ValueError(f"blas_routines.txt: unknown Fortran return {ret!r} of {name}")
    args = tuple(Arg("void *", a.rstrip("*"), a.endswith("*")) for a in argv)
    return Routine(True, name + "_", _FORTRAN_RETURN[ret], args, own)


def routines(text: str | None = None) -> list[Routine]:
    """Every routine of the table, braces expanded, in table order."""
    out = []
    for raw in (text if text is not None else table_text()).splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        own = line.endswith(" own")
        if own:
            line = line[: -len(" own")]
        kind, _, rest = line.partition(" ")
        for precision, one in _expand(rest):
            one = _substitute(one, precision)
            if kind == "F":
                out.append(_fortran_routine(one.split(), own))
            elif kind == "C":
                out.append(_c_routine(one, own))
            else:
                raise ValueError(f"blas_routines.txt: a line starts with F or C: {raw}")
    names = [r.symbol for r in out]
    if len(set(names)) != len(names):
        raise ValueError("blas_routines.txt: a routine is listed twice")
    return out


def render_prototypes(rs: list[Routine]) -> str:
    """The CBLAS declarations for cblas.h."""
    return "\n".join(r.prototype() + ";" for r in rs if not r.fortran) + "\n"


def _host_ok(r: Routine) -> bool:
    """Routines the host BLAS provides (the error handlers are the program's or ours, never the host's)."""
    return r.symbol not in ("xerbla_", "xerbla_array_", "cblas_xerbla") and "_batch" not in r.symbol


def render_forwarders(rs: list[Routine]) -> str:
    """C source: the host symbol table and one forwarding wrapper per routine not written by hand."""
    hosted = [r for r in rs if _host_ok(r)]
    lines = [
        "/* Generated by ffaccel.cli.blas_gen from blas_routines.txt: do not edit. */",
        "#include \"ffaccel_blas.h\"",
        "",
        "const char *const ffb_host_names[FFB_HOST_COUNT] = {",
        *[f"\t\"{r.symbol}\"," for r in hosted],
        "};",
        "",
    ]
    for r in hosted:
        if r.own:
            continue
        call = f"((FFB_TYPE_{r.symbol} *)ffb_host_symbol(FFB_HOST_{r.symbol}))({r.call_args()})"
        lines += [f"FFB_EXPORT {r.prototype()}", "{", f"\t{'return ' if r.returns != 'void' else ''}{call};", "}", ""]
    return "\n".join(lines)


def render_host_index(rs: list[Routine]) -> str:
    """The FFB_HOST_<symbol> enum and FFB_TYPE_<symbol> function types (a header fragment)."""
    hosted = [r for r in rs if _host_ok(r)]
    return ("enum ffb_host_index {\n" + "".join(f"\tFFB_HOST_{r.symbol},\n" for r in hosted)
            + "\tFFB_HOST_COUNT\n};\n"
            + "".join(f"typedef {r.returns} FFB_TYPE_{r.symbol}({r.params()});\n" for r in hosted))


def write_sources(folder: Path) -> tuple[Path, Path]:
    """Write ffaccel_blas_forward.c and ffaccel_blas_index.h into folder; their paths."""
    rs = routines()
    fwd, idx = folder / "ffaccel_blas_forward.c", folder / "ffaccel_blas_index.h"
    fwd.write_text(render_forwarders(rs), encoding="utf-8")
    idx.write_text("/* Generated by ffaccel.cli.blas_gen from blas_routines.txt: do not edit. */\n"
                   + render_host_index(rs), encoding="utf-8")
    return fwd, idx


def render_cblas_header(template: str) -> str:
    """cblas.h with its prototypes line replaced by every CBLAS declaration of the table."""
    if PROTOTYPES_MARKER not in template:
        raise ValueError(f"cblas.h has no {PROTOTYPES_MARKER} line")
    out = []
    for line in template.splitlines(keepends=True):
        out.append(render_prototypes(routines()) if PROTOTYPES_MARKER in line else line)
    return "".join(out)


__all__ = ["Arg", "PROTOTYPES_MARKER", "Routine", "render_cblas_header", "render_forwarders", "render_host_index",
           "render_prototypes", "routines", "write_sources"]
