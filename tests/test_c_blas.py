"""libffaccel_blas.so, the drop-in BLAS: every routine exported, GEMMs on the device or the host, never wrong.

The GEMM cases of test_c_cblas (every layout, transpose, padded leading dimension, alpha/beta
corner) run through the drop-in on the device (the threshold forced to 0), on the host BLAS
(Debian's OpenBLAS and netlib's), and with no server answering (the host runs them instead, said
once); strict mode aborts instead. A program's own xerbla_/cblas_xerbla get the reference
parameter numbers. MKL's batched GEMMs (strided and grouped) run as one device GEMM per batch or
group. The threshold is measured once and read back from its cache.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from c_util import CFLAGS, compiler, libraries, program  # tests/ is on pytest's pythonpath (pyproject.toml)
from debian_util import atlas_blas, blis_blas, debian_blas, netlib_blas, openblas_blas
from server_util import ServerProcess
from test_c_cblas import BAD_ARGS, DGEMM, ROW, SGEMM, NOTRANS, Case, all_cases, check_results, make_case, run_cases

from ffaccel.cli import blas_gen

DROP_IN = "ffaccel_blas"
PROGRAMS = Path(__file__).resolve().parent / "programs"
TIMEOUT_S = 120
#: netlib's libblas.so.3 exports these helpers of its own CBLAS layer; they are no BLAS interface.
NETLIB_INTERNALS = {"CBLAS_CallFromC", "RowMajorStrg"}


@pytest.fixture(scope="module", autouse=True)
def _host_blas() -> None:
    debian_blas()


def env_of(**extra: str) -> dict[str, str]:
    """The test's environment without FFACCEL_* settings, plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FFACCEL_")}
    env.update(extra)
    return env


def computing(cases: list[Case]) -> int:
    """Cases that compute something (not the reference quick return)."""
    return sum(not (c.m == 0 or c.n == 0 or ((c.alpha == 0 or c.k == 0) and c.beta == 1)) for c in cases)


def _exported(lib: Path) -> set[str]:
    out = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def test_exports_every_routine_of_the_reference_blas_and_cblas() -> None:
    ours = _exported(libraries().libblas)
    reference = {s for s in _exported(netlib_blas()) if s not in NETLIB_INTERNALS and not s.endswith("sub_")}
    assert len(reference) > 290
    assert reference - ours == set()
    assert {r.symbol for r in blas_gen.routines()} == ours  # and nothing but the table


def test_gemm_cases_run_on_the_device(server: ServerProcess, tmp_path: Path) -> None:
    cases = all_cases()
    before = server.submissions()
    got, err = run_cases(cases, tmp_path, f"unix:{server.path}", link=DROP_IN,
                         env_extra={"FFACCEL_BLAS_MIN_FLOPS": "0"})
    assert err == ""
    check_results(cases, got)
    assert server.submissions() - before == computing(cases)  # one device GEMM per case that computes


@pytest.mark.parametrize("host", ["openblas", "netlib"])
def test_gemm_cases_on_the_host_blas(tmp_path: Path, host: str) -> None:
    cases = all_cases()[::3]
    path = openblas_blas() if host == "openblas" else netlib_blas()
    got, err = run_cases(cases, tmp_path, "none", link=DROP_IN, env_extra={"FFACCEL_HOST_BLAS": str(path)})
    assert err == ""
    check_results(cases, got)


@pytest.mark.parametrize("host", [openblas_blas, netlib_blas, blis_blas, atlas_blas], ids=lambda h: h.__name__)
def test_cblas_routines_a_host_lacks_run_all_the_same(host: Callable[[], Path]) -> None:
    """OpenBLAS and ATLAS have no cblas_scabs1/cblas_dcabs1, BLIS no cblas_crotg/zrotg/csrot/zdrot: each
    runs (as the host's Fortran routine, or |Re| + |Im|) with the reference answers, where it stopped."""
    proc = subprocess.run([str(program("blas_host_gaps", DROP_IN))], capture_output=True, text=True,
                          timeout=TIMEOUT_S, env=env_of(FFACCEL_DEVICE="none", FFACCEL_HOST_BLAS=str(host())),
                          check=False)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.splitlines() == [
        "crotg 5.1962 1.7321 0.57735 0.57735 0.57735",
        "zrotg 1.41421356237 2.82842712475 0.707106781187 0 0.707106781187",
        "csrot 4.6 6 7.4 8.8 2.2 2 1.8 1.6",
        "zdrot 3.2 3.4 3.6 3.8 2.6 1.2 -0.2 -1.6",
        "cabs1 7.5 3.25"]


def test_a_host_call_is_decided_once(tmp_path: Path) -> None:
    """netlib's cblas_sgemm calls sgemm_, which is ours again: it goes straight to the host."""
    case = make_case(SGEMM, ROW, NOTRANS, NOTRANS, 3, 4, 5, 1.0, 0.5, 1, np.random.default_rng(3))
    got, err = run_cases([case], tmp_path, "unix:/nonexistent/ffaccel.sock", link=DROP_IN,
                         env_extra={"FFACCEL_HOST_BLAS": str(netlib_blas()), "FFACCEL_BLAS_MIN_FLOPS": "inf",
                                    "FFACCEL_BLAS_VERBOSE": "1"})
    check_results([case], got)
    assert err.splitlines() == ["ffaccel blas: cblas_sgemm 3x4x5 x1: host (120 FLOPs, threshold inf)"]


def test_no_server_runs_the_gemms_on_the_host_and_says_so_once(tmp_path: Path) -> None:
    cases = all_cases()[::2]
    dev = f"unix:{tmp_path}/nobody.sock"
    got, err = run_cases(cases, tmp_path, dev, link=DROP_IN, env_extra={"FFACCEL_BLAS_MIN_FLOPS": "0"})
    check_results(cases, got)  # right answers: NaN-filled C (beta == 0) is computed, not left
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"ffaccel blas: cblas_sgemm: the ffaccel device {dev} refused or failed the call: "
                               f"DEVICE_LOST device: no server answers at {tmp_path}/nobody.sock")
    assert lines[0].endswith("this call and the next ones run on the host BLAS (said once until the device works "
                             "again)")


def test_strict_mode_stops_the_program_instead(tmp_path: Path) -> None:
    case = make_case(DGEMM, ROW, NOTRANS, NOTRANS, 3, 4, 5, 1.0, 0.0, 0, np.random.default_rng(4))
    _, err = run_cases([case], tmp_path, f"unix:{tmp_path}/nobody.sock", link=DROP_IN, returncode=-signal.SIGABRT,
                       env_extra={"FFACCEL_BLAS_MIN_FLOPS": "0", "FFACCEL_BLAS_STRICT": "1"})
    assert "DEVICE_LOST" in err and "FFACCEL_BLAS_STRICT is set, so the program stops here" in err


def test_a_lost_server_is_replaced_by_the_host_then_used_again(tmp_path: Path) -> None:
    """The server dies between calls: the call runs on the host (right C); after a restart, the device again."""
    srv = ServerProcess(tmp_path)
    cases = [make_case(SGEMM, ROW, NOTRANS, NOTRANS, 3, 4, 5, 1.0, 0.0, 0, np.random.default_rng(5))]
    env = {"FFACCEL_BLAS_MIN_FLOPS": "0"}
    try:
        got, err = run_cases(cases, tmp_path, f"unix:{srv.path}", link=DROP_IN, env_extra=env)
        assert err == ""
        srv.stop()
        got, err = run_cases(cases, tmp_path, f"unix:{srv.path}", link=DROP_IN, env_extra=env)
        check_results(cases, got)
        assert "DEVICE_LOST" in err
        srv = ServerProcess(tmp_path)
        before = srv.submissions()
        got, err = run_cases(cases, tmp_path, f"unix:{srv.path}", link=DROP_IN, env_extra=env)
        assert err == "" and srv.submissions() == before + 1
        check_results(cases, got)
    finally:
        srv.stop()


@pytest.mark.parametrize("case,message", BAD_ARGS, ids=[m.splitlines()[-1][:60] for _, m in BAD_ARGS])
def test_illegal_arguments_get_the_reference_message_and_write_nothing(server: ServerProcess, tmp_path: Path,
                                                                      case: Case, message: str) -> None:
    got, err = run_cases([case], tmp_path, f"unix:{server.path}", link=DROP_IN)
    assert err == message + "\n"
    assert got[0].tobytes() == case.c.tobytes()


def test_the_programs_own_handlers_get_the_reference_numbers() -> None:
    exe = program("blas_handlers", DROP_IN)
    proc = subprocess.run([str(exe)], env=env_of(FFACCEL_DEVICE="none"), capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:10] == ["cblas_xerbla 9 cblas_sgemm", "cblas_xerbla 9 cblas_dgemm", "cblas_xerbla 3 cblas_dgemm",
                          "xerbla 13 SGEMM", "cblas_xerbla 17 cblas_sgemm_batch_strided",
                          "cblas_xerbla 18 cblas_dgemm_batch_strided", "cblas_xerbla 12 cblas_sgemm_batch_strided",
                          "cblas_xerbla 15 cblas_sgemm_batch", "cblas_xerbla 16 cblas_sgemm_batch",
                          "cblas_xerbla 9 cblas_sgemm_batch"]
    # a routine the host runs reports through the program's handler too (OpenBLAS: xerbla_ with its
    # Fortran name; netlib: cblas_xerbla), never the library's default (which writes to stderr)
    assert len(lines) == 11 and ("DGEMV" in lines[10] or "cblas_dgemv" in lines[10]), proc.stdout
    assert proc.stderr == ""


@pytest.mark.parametrize("device", ["server", "host"])
def test_batched_gemms_match_a_plain_loop(server: ServerProcess, device: str) -> None:
    exe = program("blas_batch", DROP_IN)
    before = server.submissions()
    env = env_of(FFACCEL_DEVICE=f"unix:{server.path}" if device == "server" else "none", FFACCEL_BLAS_MIN_FLOPS="0")
    proc = subprocess.run([str(exe)], env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 12 and all(line.endswith("err ok written_outside 0") for line in lines), proc.stdout
    # one device GEMM per strided batch (8), one per group of the group API (2 groups x 4 calls)
    assert server.submissions() - before == (16 if device == "server" else 0)


def test_the_threshold_is_measured_once_then_read_from_the_cache(server: ServerProcess, tmp_path: Path) -> None:
    cache = tmp_path / "cache" / "calibration.txt"
    cases = [make_case(SGEMM, ROW, NOTRANS, NOTRANS, 3, 4, 5, 1.0, 0.0, 0, np.random.default_rng(6))]
    env = {"FFACCEL_BLAS_CALIBRATION": str(cache), "FFACCEL_BLAS_VERBOSE": "1"}
    got, err = run_cases(cases, tmp_path, f"unix:{server.path}", link=DROP_IN, env_extra=env)
    check_results(cases, got)
    measured = [line for line in err.splitlines() if "f32 GEMM threshold" in line]
    assert len(measured) == 1 and "measured: n=16 host" in measured[0], err
    entries = cache.read_text().splitlines()
    assert len(entries) == 1
    key = entries[0].split("\t")
    assert key[:3] == ["ffaccel-blas-calibration-v1", "f32", f"unix:{server.path}"]
    flops = float(key[5])
    assert flops == float("inf") or flops in [2.0 * n ** 3 for n in (16, 32, 64, 128, 256, 512, 1024)]
    got, err = run_cases(cases, tmp_path, f"unix:{server.path}", link=DROP_IN, env_extra=env)
    check_results(cases, got)
    assert "f32 GEMM threshold" in err and "from the calibration cache" in err and "measured" not in err
    assert cache.read_text().splitlines() == entries


def test_a_bad_threshold_value_is_said_and_ignored(tmp_path: Path) -> None:
    cases = [make_case(DGEMM, ROW, NOTRANS, NOTRANS, 2, 3, 4, 1.0, 0.0, 0, np.random.default_rng(7))]
    got, err = run_cases(cases, tmp_path, "none", link=DROP_IN, env_extra={"FFACCEL_BLAS_MIN_FLOPS": "-5"})
    check_results(cases, got)
    assert err.startswith("ffaccel blas: FFACCEL_BLAS_MIN_FLOPS=-5 ignored; allowed: a number >= 0")


@pytest.mark.parametrize("host,why", [
    ("{lib}", "is this library itself"),
    ("{tmp}/missing/libblas.so.3", "cannot open shared object file"),
])
def test_a_host_blas_that_cannot_serve_is_refused_clearly(tmp_path: Path, host: str, why: str) -> None:
    name = host.format(lib=libraries().libblas, tmp=tmp_path)
    cases = [make_case(DGEMM, ROW, NOTRANS, NOTRANS, 2, 3, 4, 1.0, 0.0, 0, np.random.default_rng(8))]
    _, err = run_cases(cases, tmp_path, "none", link=DROP_IN, returncode=-signal.SIGABRT,
                       env_extra={"FFACCEL_HOST_BLAS": name})
    assert err.startswith(f"ffaccel blas: FFACCEL_HOST_BLAS={name}: ") and why in err, err


def test_in_place_of_libblas_so_3_the_host_is_the_systems_not_itself(server: ServerProcess) -> None:
    """LD_LIBRARY_PATH=DIR/lib puts lib/libblas.so.3 (ours) in the system's place for a -lblas program."""
    debian_blas()
    exe = program("sys_cblas", "blas", include=False)
    env = env_of(LD_LIBRARY_PATH=str(libraries().lib), FFACCEL_DEVICE=f"unix:{server.path}",
                 FFACCEL_BLAS_MIN_FLOPS="0", FFACCEL_BLAS_VERBOSE="1")
    proc = subprocess.run([str(exe), "40"], env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "BAD" not in proc.stdout and proc.stdout.count(" ok") == 10
    assert proc.stderr.count(": device") == 3, proc.stderr  # cblas_sgemm, cblas_dgemm, dgemm_


# -- headers that compile existing code -------------------------------------------------------------


def test_our_cblas_declarations_agree_with_netlibs(tmp_path: Path) -> None:
    """Every CBLAS prototype of ours, declared again after Debian's (netlib's) cblas.h: a type that
    differs is a compile error ("conflicting types")."""
    src = tmp_path / "agree.c"
    src.write_text("#include <cblas.h>\n" + blas_gen.render_prototypes(blas_gen.routines()))
    proc = subprocess.run([compiler(), *CFLAGS, "-c", str(src), "-o", str(tmp_path / "agree.o")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_a_netlib_style_program_builds_against_both_headers_alike() -> None:
    ours = program("netlib_style", DROP_IN)
    theirs = program("netlib_style", "blas", include=False)
    runs = [subprocess.run([str(exe)], env=env_of(FFACCEL_DEVICE="none"), capture_output=True, text=True,
                           timeout=TIMEOUT_S, check=True) for exe in (ours, theirs)]
    assert runs[0].stdout == runs[1].stdout
    assert runs[0].stdout.splitlines() == ["dgemm 7 10 3 4", "dtrmm 5 2 8 4", "saxpy 6 3 8", "sdot 36", "isamax 2"]


def test_openblas_and_mkl_spellings_build() -> None:
    exe = program("spellings", DROP_IN)
    proc = subprocess.run([str(exe)], env=env_of(FFACCEL_DEVICE="none"), capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=True)
    assert proc.stdout == "101 114 162 151 173 6 6\n"


def test_a_device_without_f64_gemm_keeps_f64_on_the_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A partial device (a plug-in driver declaring only the f32 GEMM): f32 runs there, f64 is refused
    once (UNSUPPORTED, said once) and from then on runs on the host without asking again."""
    plugins = tmp_path / "plugins"
    dist = plugins / "ffaccel_f32only-0.dist-info"
    dist.mkdir(parents=True)
    shutil.copyfile(PROGRAMS / "f32_only_driver.py", plugins / "f32_only_driver.py")
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ffaccel-f32only\nVersion: 0\n")
    (dist / "entry_points.txt").write_text("[ffaccel.drivers]\nf32only = f32_only_driver:F32OnlyDriver\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(plugins), os.environ.get("PYTHONPATH", "")]))
    srv = ServerProcess(tmp_path, "--driver", "f32only")
    rng = np.random.default_rng(9)
    cases = [make_case(kind, ROW, NOTRANS, NOTRANS, 3, 4, 5, 1.0, 0.0, 0, rng) for kind in (SGEMM, DGEMM, DGEMM, SGEMM)]
    try:
        before = srv.submissions()
        got, err = run_cases(cases, tmp_path, f"unix:{srv.path}", link=DROP_IN,
                             env_extra={"FFACCEL_BLAS_MIN_FLOPS": "0"})
        after = srv.submissions()
    finally:
        srv.stop()
    check_results(cases, got)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ffaccel blas: cblas_dgemm: the ffaccel device") and \
        "UNSUPPORTED" in lines[0] and lines[0].endswith("; f64 GEMMs run on the host BLAS from now on"), err
    assert after - before == 2  # the two f32 GEMMs; the f64 one was refused before it ran, then not sent


def test_a_device_with_neither_f32_nor_f64_gemm_says_both_refusals(tmp_path: Path) -> None:
    """The npu (int8 and bf16 GEMMs only) refuses f32 and f64: both run on the host, and each dtype's
    refusal is said once (the f64 one used to be silent after the f32 line)."""
    srv = ServerProcess(tmp_path, "--driver", "npu")
    rng = np.random.default_rng(10)
    cases = [make_case(kind, ROW, NOTRANS, NOTRANS, 3, 4, 5, 1.0, 0.0, 0, rng) for kind in (SGEMM, DGEMM, SGEMM, DGEMM)]
    try:
        got, err = run_cases(cases, tmp_path, f"unix:{srv.path}", link=DROP_IN,
                             env_extra={"FFACCEL_BLAS_MIN_FLOPS": "0"})
    finally:
        srv.stop()
    check_results(cases, got)
    lines = err.splitlines()
    assert [(line.split(":")[1], line.split("; ")[-1]) for line in lines] == [
        (" cblas_sgemm", "f32 GEMMs run on the host BLAS from now on"),
        (" cblas_dgemm", "f64 GEMMs run on the host BLAS from now on")], err
    assert all("UNSUPPORTED" in line for line in lines), err


#: (routine, the argument made illegal): row-major calls, where netlib renumbers its reports.
HOST_ERRORS = [("dgemv", 3), ("dgemv", 4), ("dgemv", 7), ("dgbmv", 3), ("dgbmv", 5), ("dgbmv", 6), ("dger", 2),
               ("dger", 6), ("dger", 8), ("zgeru", 3), ("zgeru", 10), ("dtrsm", 6), ("dtrsm", 7), ("dtrsm", 12),
               ("dsymm", 4), ("dsymm", 5), ("dsymm", 10), ("dsyr2k", 5), ("dsyr2k", 8)]


@pytest.mark.parametrize("routine,arg", HOST_ERRORS)
def test_a_netlib_host_reports_its_routines_errors_as_netlib_alone_does(routine: str, arg: int) -> None:
    """Errors of routines the host runs keep netlib's own message and numbers (netlib's CBLAS checks
    some arguments in the Fortran routine it calls, and renumbers row-major reports in its
    cblas_xerbla): only, the drop-in's handler returns where netlib's ends the program."""
    exe = program("blas_host_error", "blas", include=False)
    alone = subprocess.run([str(exe), routine, str(arg)], env=env_of(LD_LIBRARY_PATH=str(netlib_blas().parent)),
                           capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert alone.returncode == 255 and f"Parameter {arg} to routine cblas_{routine}" in alone.stderr
    dropped = subprocess.run([str(exe), routine, str(arg)], capture_output=True, text=True, timeout=TIMEOUT_S,
                             check=False, env=env_of(LD_PRELOAD=str(libraries().libblas), FFACCEL_DEVICE="none",
                                                     FFACCEL_HOST_BLAS=str(netlib_blas())))
    assert (dropped.returncode, dropped.stdout) == (0, "returned\n")
    assert dropped.stderr == alone.stderr


def test_threads_and_a_forked_child_each_get_right_answers_from_the_device(server: ServerProcess) -> None:
    exe = program("blas_threads_fork", DROP_IN)
    before = server.submissions()
    proc = subprocess.run([str(exe)], env=env_of(FFACCEL_DEVICE=f"unix:{server.path}", FFACCEL_BLAS_MIN_FLOPS="0"),
                          capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.splitlines() == ["threads ok", "child ok", "parent ok"]
    assert server.submissions() - before == 4 * 10 + 2 + 1  # every call on the device, the child's too


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown-cpu"


@pytest.mark.parametrize("threshold,where", [(100.0, "device"), (1000.0, "host (120 FLOPs, threshold 1000)")])
def test_a_cached_threshold_decides_where_a_gemm_runs(server: ServerProcess, tmp_path: Path, threshold: float,
                                                      where: str) -> None:
    """A 3x4x5 sgemm (120 FLOPs) goes to the device or stays on the host by the threshold in the cache."""
    host = str(openblas_blas())
    cache = tmp_path / "calibration.txt"
    key = ["ffaccel-blas-calibration-v1", "f32", f"unix:{server.path}", host, _cpu_model()]
    cache.write_text("\t".join([*key, repr(threshold), "written by the test"]) + "\n")
    cases = [make_case(SGEMM, ROW, NOTRANS, NOTRANS, 3, 4, 5, 1.0, 0.0, 0, np.random.default_rng(10))]
    got, err = run_cases(cases, tmp_path, f"unix:{server.path}", link=DROP_IN,
                         env_extra={"FFACCEL_BLAS_CALIBRATION": str(cache), "FFACCEL_HOST_BLAS": host,
                                    "FFACCEL_BLAS_VERBOSE": "1"})
    check_results(cases, got)
    assert err.splitlines() == [f"ffaccel blas: f32 GEMM threshold {threshold:g} FLOPs, from the calibration cache",
                                f"ffaccel blas: cblas_sgemm 3x4x5 x1: {where}"]
