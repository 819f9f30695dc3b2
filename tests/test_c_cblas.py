"""An unmodified CBLAS program, linked with libffaccel_cblas, runs its GEMMs on a real server.

tests/c/cblas_cases.c calls cblas_sgemm/cblas_dgemm (and the Fortran sgemm_/dgemm_) on cases
written here, over every layout, transpose, padded leading dimension and alpha/beta corner, and
the results are compared with NumPy: within the spec's error bound inside D's window, bit for bit
everywhere else (padding of C is never written). beta == 0 cases carry NaN in C and alpha == 0
cases NaN in A and B (the reference BLAS never reads them); padding of A and B is NaN too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from c_util import program  # tests/ is on pytest's pythonpath (pyproject.toml)
from server_util import ServerProcess

ROW, COL = 101, 102
NOTRANS, TRANS, CONJTRANS = 111, 112, 113
SGEMM, DGEMM, SGEMM_F77, DGEMM_F77 = 0, 1, 2, 3
_TRANS_CHAR = {NOTRANS: ord("N"), TRANS: ord("t"), CONJTRANS: ord("C")}
C_SENTINEL = 12345.0
TIMEOUT_S = 60


@dataclass
class Case:
    kind: int
    layout: int
    ta: int
    tb: int
    m: int
    n: int
    k: int
    lda: int
    ldb: int
    ldc: int
    alpha: float
    beta: float
    a: np.ndarray
    b: np.ndarray
    c: np.ndarray

    @property
    def dtype(self) -> type:
        return np.float32 if self.kind in (SGEMM, SGEMM_F77) else np.float64

    def encode(self) -> bytes:
        ta, tb = self.ta, self.tb
        if self.kind in (SGEMM_F77, DGEMM_F77):
            ta, tb = _TRANS_CHAR.get(ta, ta), _TRANS_CHAR.get(tb, tb)
        head = np.array([self.kind, self.layout, ta, tb, self.m, self.n, self.k, self.lda, self.ldb, self.ldc,
                         self.a.size, self.b.size, self.c.size, 0], np.int32)
        return (head.tobytes() + np.array([self.alpha, self.beta], np.float64).tobytes() + self.a.tobytes()
                + self.b.tobytes() + self.c.tobytes())


def _view(buf: np.ndarray, layout: int, rows: int, cols: int, ld: int) -> np.ndarray:
    """The logical rows x cols matrix stored in buf with leading dimension ld."""
    if layout == ROW:
        return buf[: rows * ld].reshape(rows, ld)[:, :cols]
    return buf[: cols * ld].reshape(cols, ld)[:, :rows].T


def _storage(layout: int, rows: int, cols: int, pad: int) -> tuple[int, int]:
    """(ld, elements) of a rows x cols matrix with pad extra elements per leading dimension."""
    ld = max(1, (cols if layout == ROW else rows) + pad)
    return ld, ld * (rows if layout == ROW else cols)


def make_case(kind: int, layout: int, ta: int, tb: int, m: int, n: int, k: int, alpha: float, beta: float,
              pad: int, rng: np.random.Generator) -> Case:
    dt = np.float32 if kind in (SGEMM, SGEMM_F77) else np.float64
    ar, ac = (k, m) if ta != NOTRANS else (m, k)
    br, bc = (n, k) if tb != NOTRANS else (k, n)
    lda, na = _storage(layout, ar, ac, pad)
    ldb, nb = _storage(layout, br, bc, pad)
    ldc, nc = _storage(layout, m, n, pad)
    a = np.full(na, np.nan, dt)  # padding never read: NaN shows it if it is
    b = np.full(nb, np.nan, dt)
    c = np.full(nc, C_SENTINEL, dt)  # padding never written: the sentinel shows it if it is
    if alpha != 0:
        _view(a, layout, ar, ac, lda)[...] = rng.uniform(-1, 1, (ar, ac))
        _view(b, layout, br, bc, ldb)[...] = rng.uniform(-1, 1, (br, bc))
    _view(c, layout, m, n, ldc)[...] = rng.uniform(-1, 1, (m, n)) if beta != 0 else np.nan
    return Case(kind, layout, ta, tb, m, n, k, lda, ldb, ldc, alpha, beta, a, b, c)


def expected(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """(C after the call, elementwise error bound) by NumPy in float64."""
    out = case.c.astype(np.float64)
    bound = np.zeros_like(out)
    m, n, k = case.m, case.n, case.k
    if _quick_return(case):
        return out, bound  # nothing written
    ar, ac = (k, m) if case.ta != NOTRANS else (m, k)
    br, bc = (n, k) if case.tb != NOTRANS else (k, n)
    a = _view(case.a.astype(np.float64), case.layout, ar, ac, case.lda)
    b = _view(case.b.astype(np.float64), case.layout, br, bc, case.ldb)
    op_a = a.T if case.ta != NOTRANS else a
    op_b = b.T if case.tb != NOTRANS else b
    c_in = _view(case.c.astype(np.float64), case.layout, m, n, case.ldc)
    res = np.zeros((m, n))
    mag = np.zeros((m, n))
    if case.alpha != 0 and k:
        res += case.alpha * (op_a @ op_b)
        mag += abs(case.alpha) * (abs(op_a) @ abs(op_b))
    if case.beta != 0:
        res += case.beta * c_in
        mag += abs(case.beta) * abs(c_in)
    u = 2.0 ** -24 if case.dtype is np.float32 else 2.0 ** -53
    _view(out, case.layout, m, n, case.ldc)[...] = res
    _view(bound, case.layout, m, n, case.ldc)[...] = 2 * (k + 2) * u * mag + u * abs(res)
    return out, bound


CORNERS = [(1.0, 0.0), (0.5, 0.0), (0.0, 0.0), (0.0, 1.0), (0.0, -2.0), (1.5, 1.0), (-1.0, 0.25)]
SHAPES = [(0, 4, 5), (3, 0, 5), (3, 4, 0), (1, 1, 1), (17, 9, 33)]


def all_cases() -> list[Case]:
    rng = np.random.default_rng(16)
    cases = []
    for kind in (SGEMM, DGEMM, SGEMM_F77, DGEMM_F77):
        layouts = (ROW, COL) if kind in (SGEMM, DGEMM) else (COL,)
        for layout in layouts:
            for ta in (NOTRANS, TRANS, CONJTRANS):
                for tb in (NOTRANS, TRANS, CONJTRANS):
                    for alpha, beta in CORNERS:
                        for pad in (0, 3):
                            cases.append(make_case(kind, layout, ta, tb, 3, 4, 5, alpha, beta, pad, rng))
            for m, n, k in SHAPES:
                for alpha, beta in ((1.0, 0.0), (0.7, 1.0), (1.0, 1.0), (0.0, 0.5)):
                    cases.append(make_case(kind, layout, TRANS, NOTRANS, m, n, k, alpha, beta, 2, rng))
    return cases


def run_cases(cases: list[Case], tmp: Path, device: str | None, name: str = "cases",
              env_extra: dict[str, str] | None = None, link: str = "ffaccel_cblas",
              returncode: int = 0) -> tuple[list[np.ndarray], str]:
    """Run cases through tests/c/cblas_cases.c linked with -l<link>; (each case's C, stderr).

    The environment drops the FFACCEL_* variables of the test process.
    """
    exe = program("cblas_cases", link)
    src, dst = tmp / f"{name}.in", tmp / f"{name}.out"
    src.write_bytes(b"".join(c.encode() for c in cases))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FFACCEL_")}
    if device is not None:
        env["FFACCEL_DEVICE"] = device
    env.update(env_extra or {})
    proc = subprocess.run([str(exe), str(src), str(dst)], env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=False)
    assert proc.returncode == returncode, proc.stderr
    if returncode:
        return [], proc.stderr
    raw = dst.read_bytes()
    out, pos = [], 0
    for c in cases:
        nbytes = c.c.size * np.dtype(c.dtype).itemsize
        out.append(np.frombuffer(raw[pos: pos + nbytes], c.dtype))
        pos += nbytes
    assert pos == len(raw)
    return out, proc.stderr


def _quick_return(case: Case) -> bool:
    return case.m == 0 or case.n == 0 or ((case.alpha == 0 or case.k == 0) and case.beta == 1)


def check_results(cases: list[Case], got: list[np.ndarray]) -> None:
    for i, (case, g) in enumerate(zip(cases, got)):
        want, bound = expected(case)
        window = np.zeros(case.c.size, bool)
        if not _quick_return(case):
            _view(window, case.layout, case.m, case.n, case.ldc)[...] = True
        assert np.array_equal(g[~window], case.c[~window], equal_nan=True), f"case {i}: wrote outside D: {case}"
        assert np.all(np.isfinite(g[window])), f"case {i}: NaN leaked: {case}"
        err = abs(g[window].astype(np.float64) - want[window])
        assert np.all(err <= bound[window]), f"case {i}: error {err.max()} > bound: {case}"


def test_every_layout_transpose_ld_and_corner_matches_numpy(server, tmp_path: Path) -> None:
    cases = all_cases()
    got, err = run_cases(cases, tmp_path, f"unix:{server.path}")
    assert err == ""
    check_results(cases, got)


def test_socket_and_ring_give_the_same_bits(server, tmp_path: Path) -> None:
    cases = all_cases()[::7]
    by_socket, _ = run_cases(cases, tmp_path, f"unix:{server.path}?transport=socket", "socket")
    by_ring, err = run_cases(cases, tmp_path, f"unix:{server.path}?transport=ring&entries=8", "ring")
    assert err == ""
    check_results(cases, by_ring)
    for s, r in zip(by_socket, by_ring):
        assert s.tobytes() == r.tobytes()


def test_default_socket_from_ffaccel_socket(server, tmp_path: Path) -> None:
    cases = all_cases()[:3]
    got, err = run_cases(cases, tmp_path, None, env_extra={"FFACCEL_SOCKET": server.path})
    assert err == ""
    check_results(cases, got)


def _bad(kind: int, layout: int, ta: int, tb: int, m: int, n: int, k: int, lda: int, ldb: int, ldc: int) -> Case:
    dt = np.float32 if kind in (SGEMM, SGEMM_F77) else np.float64
    return Case(kind, layout, ta, tb, m, n, k, lda, ldb, ldc, 1.0, 0.0, np.ones(64, dt), np.ones(64, dt),
                np.full(64, C_SENTINEL, dt))


# (case, the reference BLAS's message): CBLAS numbers count the layout argument; a row-major call
# is a column-major one with A and B swapped, and its M/N and lda/ldb numbers are swapped back.
BAD_ARGS = [
    (_bad(SGEMM, ROW, NOTRANS, NOTRANS, -1, 2, 2, 2, 2, 2), "Parameter 4 to routine cblas_sgemm was incorrect"),
    (_bad(SGEMM, ROW, NOTRANS, NOTRANS, 2, -1, 2, 2, 2, 2), "Parameter 5 to routine cblas_sgemm was incorrect"),
    (_bad(DGEMM, ROW, NOTRANS, NOTRANS, 2, 2, -3, 2, 2, 2), "Parameter 6 to routine cblas_dgemm was incorrect"),
    (_bad(SGEMM, ROW, NOTRANS, NOTRANS, 2, 2, 3, 2, 2, 2), "Parameter 9 to routine cblas_sgemm was incorrect"),
    (_bad(SGEMM, ROW, NOTRANS, NOTRANS, 2, 3, 2, 2, 2, 3), "Parameter 11 to routine cblas_sgemm was incorrect"),
    (_bad(DGEMM, ROW, NOTRANS, NOTRANS, 2, 3, 2, 2, 3, 2), "Parameter 14 to routine cblas_dgemm was incorrect"),
    (_bad(SGEMM, COL, NOTRANS, NOTRANS, 3, 2, 2, 2, 2, 3), "Parameter 9 to routine cblas_sgemm was incorrect"),
    (_bad(DGEMM, COL, NOTRANS, TRANS, 2, 3, 2, 2, 2, 2), "Parameter 11 to routine cblas_dgemm was incorrect"),
    (_bad(SGEMM, COL, NOTRANS, NOTRANS, 3, 2, 2, 3, 2, 2), "Parameter 14 to routine cblas_sgemm was incorrect"),
    (_bad(SGEMM, 7, NOTRANS, NOTRANS, 2, 2, 2, 2, 2, 2),
     "Parameter 1 to routine cblas_sgemm was incorrect\nIllegal layout setting, 7"),
    (_bad(SGEMM, ROW, 0, NOTRANS, 2, 2, 2, 2, 2, 2),
     "Parameter 2 to routine cblas_sgemm was incorrect\nIllegal TransA setting, 0"),
    (_bad(DGEMM, COL, NOTRANS, 114, 2, 2, 2, 2, 2, 2),
     "Parameter 3 to routine cblas_dgemm was incorrect\nIllegal TransB setting, 114"),
    (_bad(SGEMM_F77, COL, ord("X"), NOTRANS, 2, 2, 2, 2, 2, 2),
     " ** On entry to SGEMM  parameter number  1 had an illegal value"),
    (_bad(DGEMM_F77, COL, NOTRANS, NOTRANS, -1, 2, 2, 2, 2, 2),
     " ** On entry to DGEMM  parameter number  3 had an illegal value"),
    (_bad(SGEMM_F77, COL, NOTRANS, NOTRANS, 3, 2, 2, 2, 2, 3),
     " ** On entry to SGEMM  parameter number  8 had an illegal value"),
    (_bad(DGEMM_F77, COL, TRANS, NOTRANS, 2, 2, 3, 2, 2, 2),
     " ** On entry to DGEMM  parameter number  8 had an illegal value"),
    (_bad(SGEMM_F77, COL, NOTRANS, NOTRANS, 2, 2, 2, 2, 2, 1),
     " ** On entry to SGEMM  parameter number 13 had an illegal value"),
]


@pytest.mark.parametrize("case,message", BAD_ARGS, ids=[m.splitlines()[-1][:60] for _, m in BAD_ARGS])
def test_illegal_arguments_get_the_reference_message_and_write_nothing(server, tmp_path: Path, case: Case,
                                                                      message: str) -> None:
    got, err = run_cases([case], tmp_path, f"unix:{server.path}")
    assert err == message + "\n"
    assert got[0].tobytes() == case.c.tobytes()


@pytest.mark.parametrize("device,why", [
    ("unix:{tmp}/nobody.sock", "DEVICE_LOST device: no server answers at {tmp}/nobody.sock"),
    ("cpu", "INVALID_PARAMETER device: device name cpu: the C client reaches a device through its server"),
])
def test_no_server_runs_every_case_on_the_host_blas_and_says_so_once(tmp_path: Path, device: str, why: str) -> None:
    """A device failure never leaves a wrong C: every case (CBLAS and Fortran names, every layout,
    transpose and corner) gets the right answer from the host BLAS, and one line says so."""
    cases = all_cases()
    dev = device.format(tmp=tmp_path)
    got, err = run_cases(cases, tmp_path, dev)
    check_results(cases, got)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"ffaccel cblas: cblas_sgemm: the ffaccel device {dev} refused or failed the call: "
                               + why.format(tmp=tmp_path))
    assert "this call runs on the host BLAS" in lines[0]


def test_a_programs_own_xerbla_gets_the_fortran_gemms_errors() -> None:
    """sgemm_/dgemm_ report through the program's XERBLA, as the reference ones do (they printed instead)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FFACCEL_")}
    proc = subprocess.run([str(program("cblas_f77_handler", "ffaccel_cblas"))], capture_output=True, text=True,
                          timeout=60, env={**env, "FFACCEL_DEVICE": "unix:/nonexistent/ffaccel.sock"}, check=False)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == "xerbla 13 'SGEMM '\nxerbla 1 'DGEMM '\n0 0\n"


def test_strict_mode_stops_the_program_at_a_device_failure(tmp_path: Path) -> None:
    case = make_case(DGEMM_F77, COL, NOTRANS, TRANS, 2, 2, 2, 1.0, 0.0, 0, np.random.default_rng(1))
    _, err = run_cases([case], tmp_path, f"unix:{tmp_path}/nobody.sock", env_extra={"FFACCEL_BLAS_STRICT": "1"},
                       returncode=-signal.SIGABRT)
    assert err.startswith("ffaccel cblas: dgemm: the ffaccel device") and "DEVICE_LOST" in err
    assert "FFACCEL_BLAS_STRICT is set, so the program stops here" in err


def test_no_host_blas_to_fall_back_on_stops_the_program(tmp_path: Path) -> None:
    """Without a host BLAS there is no right answer to give: the program stops, saying why."""
    case = make_case(SGEMM, ROW, NOTRANS, NOTRANS, 2, 2, 2, 1.0, 0.0, 0, np.random.default_rng(1))
    missing = tmp_path / "no-such-libblas.so.3"
    _, err = run_cases([case], tmp_path, f"unix:{tmp_path}/nobody.sock",
                       env_extra={"FFACCEL_HOST_BLAS": str(missing)}, returncode=-signal.SIGABRT)
    assert err.startswith(f"ffaccel cblas: FFACCEL_HOST_BLAS={missing}: "), err


def test_default_socket_folder_open_to_others_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ffaccel"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    case = make_case(SGEMM, ROW, NOTRANS, NOTRANS, 2, 2, 2, 1.0, 0.0, 0, np.random.default_rng(2))
    got, err = run_cases([case], tmp_path, None, env_extra={"XDG_RUNTIME_DIR": str(tmp_path)})
    assert f"DEVICE_LOST device: refusing the socket folder {folder}: owner uid {os.getuid()}, mode 755" in err
    assert len(err.splitlines()) == 1 and "runs on the host BLAS" in err
    check_results([case], got)  # refused, so computed on the host: right all the same


def test_a_lost_server_is_reported_and_a_new_one_is_used(tmp_path: Path) -> None:
    """The server dies between two calls: the next call reports DEVICE_LOST and runs on the host
    BLAS (right answer); the one after a restart reconnects and runs on the new server. Nothing
    waits on a dead server (a timer ends the program)."""
    exe = program("cblas_lines", "ffaccel_cblas")
    folder = tmp_path / "srv"
    folder.mkdir()
    srv = ServerProcess(folder)
    env = {**os.environ, "FFACCEL_DEVICE": f"unix:{srv.path}?timeout_s=20"}
    proc = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    guard = threading.Timer(TIMEOUT_S, proc.kill)
    guard.start()

    def call() -> str:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        return proc.stdout.readline().strip()

    try:
        assert call() == "C 4 5 10 11"
        srv.stop()
        assert call() == "C 4 5 10 11"  # on the host
        srv = ServerProcess(folder)
        before = srv.submissions()
        assert call() == "C 4 5 10 11"
        assert srv.submissions() - before == 1  # on the new server, not the host
        _, err = proc.communicate("", timeout=TIMEOUT_S)
    finally:
        guard.cancel()
        proc.kill()
        srv.stop()
    assert proc.returncode == 0
    lines = err.splitlines()
    assert len(lines) == 1 and "cblas_sgemm: the ffaccel device" in lines[0] and "DEVICE_LOST" in lines[0]
    assert "runs on the host BLAS" in lines[0]
