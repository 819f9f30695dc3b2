"""The C uAPI header: generated from the Python tables, never drifting, compiling alone in C11 and C++.

A C program compiled from the header prints every struct's size, every field's offset and every
enum constant; they must equal the Python tables. The header's own static assertions must bite:
a header with one offset changed does not compile.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from c_util import compiler  # tests/ is on pytest's pythonpath (pyproject.toml)

from ffaccel.abi.layout import ABI_VERSION, COMMAND_BYTES, GemmFlags
from ffaccel.spec import DType, Engine, ErrorCode, Opcode, PostOpKind
from ffaccel.transports import cheader
from ffaccel.transports.protocol import WIRE_VERSION, Msg, RingClientFlags, RingServerFlags, SqeFlags

COMMITTED = Path(__file__).resolve().parents[1] / "src" / "ffaccel" / "c" / "ffaccel_uapi.h"
ENUMS = [(Opcode, "FFA_OPCODE_"), (DType, "FFA_DTYPE_"), (PostOpKind, "FFA_POST_OP_"), (GemmFlags, "FFA_GEMM_"),
         (Engine, "FFA_ENGINE_"), (ErrorCode, "FFA_ERR_"), (Msg, "FFA_MSG_"), (RingServerFlags, "FFA_RING_SERVER_"),
         (RingClientFlags, "FFA_RING_CLIENT_"), (SqeFlags, "FFA_SQE_")]


def test_committed_header_is_what_the_tables_generate() -> None:
    assert COMMITTED.read_text() == cheader.render(), (
        "src/ffaccel/c/ffaccel_uapi.h is stale: run `python -m ffaccel.transports.cheader > "
        "src/ffaccel/c/ffaccel_uapi.h`")


def _compile(tmp: Path, header: str, source: str, cc: list[str], suffix: str = ".c") -> subprocess.CompletedProcess:
    (tmp / "ffaccel_uapi.h").write_text(header)
    src = tmp / f"prog{suffix}"
    src.write_text(source)
    return subprocess.run([*cc, str(src), f"-I{tmp}", "-o", str(tmp / "prog")], capture_output=True, text=True,
                          check=False)


def test_header_compiles_alone_in_c11_with_every_warning(tmp_path: Path) -> None:
    proc = _compile(tmp_path, cheader.render(), '#include "ffaccel_uapi.h"\nint main(void) { return 0; }\n',
                    [compiler(), "-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"])
    assert proc.returncode == 0, proc.stderr


def test_header_compiles_in_cpp(tmp_path: Path) -> None:
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if not cxx:
        pytest.skip("no C++ compiler (c++, g++ or clang++) on PATH")
    proc = _compile(tmp_path, cheader.render(), '#include "ffaccel_uapi.h"\nint main() { return 0; }\n',
                    [cxx, "-std=c++11", "-Wall", "-Wextra", "-Werror"], ".cpp")
    assert proc.returncode == 0, proc.stderr


def test_layouts_and_enums_in_c_equal_the_python_tables(tmp_path: Path) -> None:
    lines, want = [], []
    for lay in cheader.HEADER_LAYOUTS:
        lines.append(f'printf("{lay.name} size %zu\\n", sizeof(struct {lay.name}));')
        want.append(f"{lay.name} size {lay.size_bytes}")
        designators = cheader._flatten(cheader._tree(lay))
        for (designator, _fmt), (f, off) in zip(designators, lay.offsets(), strict=True):
            lines.append(f'printf("{f.name} %zu %zu\\n", offsetof(struct {lay.name}, {designator}), '
                         f'sizeof(((struct {lay.name} *)0)->{designator}));')
            want.append(f"{f.name} {off} {4 if f.fmt == 'I' else 8}")
    for enum, prefix in ENUMS:
        for m in enum:
            lines.append(f'printf("{prefix}{m.name} %lld\\n", (long long){prefix}{m.name});')
            want.append(f"{prefix}{m.name} {int(m)}")
    for name, value in (("FFA_ABI_VERSION", ABI_VERSION), ("FFA_WIRE_VERSION", WIRE_VERSION),
                        ("FFA_COMMAND_BYTES", COMMAND_BYTES)):
        lines.append(f'printf("{name} %lld\\n", (long long){name});')
        want.append(f"{name} {value}")
    src = "#include <stdio.h>\n#include \"ffaccel_uapi.h\"\nint main(void) {\n" + "\n".join(lines) + "\nreturn 0;\n}\n"
    proc = _compile(tmp_path, cheader.render(), src, [compiler(), "-std=c11", "-Wall", "-Werror"])
    assert proc.returncode == 0, proc.stderr
    run = subprocess.run([str(tmp_path / "prog")], capture_output=True, text=True, check=True, timeout=30)
    assert run.stdout.splitlines() == want


def test_static_assertions_refuse_a_wrong_offset(tmp_path: Path) -> None:
    header = cheader.render()
    good = "offsetof(struct ffa_gemm, a.handle) == 64,"
    assert good in header
    proc = _compile(tmp_path, header.replace(good, "offsetof(struct ffa_gemm, a.handle) == 72,"),
                    '#include "ffaccel_uapi.h"\nint main(void) { return 0; }\n', [compiler(), "-std=c11"])
    assert proc.returncode != 0
    assert "ffa_gemm.a.handle" in proc.stderr
