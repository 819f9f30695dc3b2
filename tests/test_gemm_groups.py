"""GEMMs of one submission bound as one call (``Driver.bind_gemm_group``): the same results as one by one.

A submission (a ring chain, a command list) of GEMMs of one geometry that differ only in their
operands' places runs as one call where the driver offers it and the GEMMs are independent; what a
user relies on is that nothing else changes: every D bit for bit what the GEMMs write one at a time,
in order, whatever reads or rewrites what (two handles of one memory included), a submission with
one bad command refused whole, and partial devices (no hook, or a narrowed cpu) running the same
submissions.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import ffaccel
from ffaccel.abi import DeviceCaps, Gemm, Matrix, check_command, encode_submission
from ffaccel.drivers import restricted
from ffaccel.drivers.cpu import CpuDriver
from ffaccel.runtime import Device
from ffaccel.spec import DType, ErrorCode, FFAccelError
from ffaccel.transports import InprocTransport
from ffaccel.transports.session import independent_spans

N = 8
BLOCK = N * N * 4  # bytes of one 8x8 f32 matrix
COUNT = 16  # GEMMs per submission
PATHS = ("socket", "ring")


class _Recording(CpuDriver):
    """The cpu driver, noting how many GEMMs each group it is offered holds."""

    def __init__(self) -> None:
        super().__init__()
        self.offered: list[int] = []

    def bind_gemm_group(self, op, a, b, c, d, epi):  # type: ignore[no-untyped-def]
        self.offered.append(d.shape[0])
        return super().bind_gemm_group(op, a, b, c, d, epi)


def _gemm(a_buf, a_block: int, b_buf, d_buf, d_block: int) -> Gemm:
    return Gemm(m=N, n=N, k=N, a=a_buf.matrix(np.float32, N, N, offset_bytes=a_block * BLOCK),
                b=b_buf.matrix(np.float32, N, N), d=d_buf.matrix(np.float32, N, N, offset_bytes=d_block * BLOCK))


def _layout(dev: Device, layout: str) -> tuple[list[Gemm], list]:
    """COUNT GEMMs of one geometry in one of these layouts, on freshly filled buffers (seeded):

    * independent: A and D step through one buffer each, B shared;
    * chained: all in one buffer, GEMM i reads the block GEMM i - 1 wrote (each depends on the last);
    * rewrites: D steps through 4 blocks only, so every 4th GEMM writes the block again (the last wins);
    * aliased: as chained, but A is read through a second handle of the same memory (an import).
    """
    rng = np.random.default_rng(5)
    x, b = dev.alloc((COUNT + 1) * BLOCK), dev.alloc(BLOCK)
    x.write(rng.standard_normal((COUNT + 1) * N * N).astype(np.float32))
    b.write((rng.standard_normal((N, N)) / np.sqrt(N)).astype(np.float32))  # chained products keep their size
    bufs = [x, b]
    if layout == "independent":
        d = dev.alloc(COUNT * BLOCK)
        bufs.append(d)
        cmds = [_gemm(x, i, b, d, i) for i in range(COUNT)]
    elif layout == "chained":
        cmds = [_gemm(x, i, b, x, i + 1) for i in range(COUNT)]
    elif layout == "rewrites":
        d = dev.alloc(4 * BLOCK)
        bufs.append(d)
        cmds = [_gemm(x, i, b, d, i % 4) for i in range(COUNT)]
    else:
        fd = x.export_fd()
        try:
            alias = dev.import_buffer(fd)
        finally:
            os.close(fd)
        bufs.append(alias)
        cmds = [_gemm(alias, i, b, x, i + 1) for i in range(COUNT)]
    return cmds, bufs


def _outcome(dev: Device, layout: str, together: bool) -> bytes:
    """Every byte of the layout's buffers after its GEMMs ran in one submission, or one submission each."""
    cmds, bufs = _layout(dev, layout)
    if together:
        dev.submit(cmds).wait(timeout_ns=10**10)
    else:
        for g in cmds:
            dev.submit([g]).wait(timeout_ns=10**10)
    out = b"".join(buf.read(np.uint8, buf.size_bytes).tobytes() for buf in bufs)
    for buf in bufs:
        buf.free()
    return out


LAYOUTS = ("independent", "chained", "rewrites")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_one_submission_writes_what_its_gemms_write_one_by_one_in_process(layout: str) -> None:
    drv = _Recording()
    with Device("cpu-recording", InprocTransport(drv)) as dev:
        alone = _outcome(dev, layout, together=False)
        drv.offered.clear()
        assert _outcome(dev, layout, together=True) == alone
        # what the transport found independent, and offered as one call each
        assert drv.offered == {"independent": [COUNT], "chained": [], "rewrites": [4] * (COUNT // 4)}[layout]
        cmds, bufs = _layout(dev, layout)  # a recorded list runs its GEMMs the same way
        cl = dev.record(cmds)
        cl.replay().wait(timeout_ns=10**10)
        got = b"".join(buf.read(np.uint8, buf.size_bytes).tobytes() for buf in bufs)
        assert got == alone


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("layout", [*LAYOUTS, "aliased"])
def test_one_submission_writes_what_its_gemms_write_one_by_one_through_the_server(server, path: str,
                                                                                 layout: str) -> None:
    with server.open(path) as dev:
        assert _outcome(dev, layout, together=True) == _outcome(dev, layout, together=False)


def test_two_handles_of_one_memory_make_gemms_dependent() -> None:
    """Independence is judged on the memory's real addresses, not on handles."""
    ops = [check_command(_gemm_desc(a_handle=2, a_block=i, d_handle=1, d_block=i + 1).encode(), DeviceCaps())
           for i in range(4)]
    assert independent_spans(ops, {1: 4096, 2: 8192, 3: 0}.__getitem__) == [(0, 4)]  # two memories: one span
    assert independent_spans(ops, {1: 4096, 2: 4096, 3: 0}.__getitem__) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    # a D that only touches (ends where the next operand starts) shares no byte with it
    touching = [check_command(_gemm_desc(a_handle=2, a_block=0, d_handle=1, d_block=i).encode(), DeviceCaps())
                for i in range(3)]
    assert independent_spans(touching, {1: 4096 + BLOCK, 2: 4096, 3: 0}.__getitem__) == [(0, 3)]
    assert independent_spans(touching, {1: 4096 + BLOCK - 4, 2: 4096, 3: 0}.__getitem__) == [(0, 1), (1, 3)]


def _gemm_desc(a_handle: int, a_block: int, d_handle: int, d_block: int) -> Gemm:
    return Gemm(m=N, n=N, k=N, a=Matrix(a_handle, DType.F32, N, N, offset_bytes=a_block * BLOCK),
                b=Matrix(3, DType.F32, N, N), d=Matrix(d_handle, DType.F32, N, N, offset_bytes=d_block * BLOCK))


@pytest.mark.parametrize("name", ["inproc", *PATHS])
def test_a_submission_with_one_bad_gemm_runs_none_of_them(server, name: str) -> None:
    dev = ffaccel.open("cpu") if name == "inproc" else server.open(name)
    with dev:
        cmds, bufs = _layout(dev, "independent")
        d = bufs[2]
        bad = 11
        cmds[bad] = _gemm(bufs[0], bad, bufs[1], d, COUNT)  # D one block past the buffer's end
        with pytest.raises(FFAccelError) as e:
            dev.submit(cmds).wait(timeout_ns=10**10)
        assert (e.value.code, e.value.command_index) == (ErrorCode.OUT_OF_BOUNDS, bad)
        assert not d.read(np.uint8, d.size_bytes).any()  # nothing ran, the GEMMs before it included


@pytest.mark.parametrize("name", ["npu", "restricted-cpu"])
def test_partial_devices_run_submissions_of_many_gemms(name: str) -> None:
    """The npu driver has no group hook (one call per GEMM); the cpu driver narrowed to f32 keeps its own."""
    if name == "npu":
        dev, dt, combo = ffaccel.open("npu"), np.int8, None
    else:
        drv = _Recording()
        dev, dt, combo = Device("restricted-cpu", InprocTransport(restricted(drv, combos="f32xf32->f32->f32"))), \
            np.float32, drv
    with dev:
        rng = np.random.default_rng(9)
        out_dt = np.int32 if dt == np.int8 else np.float32
        a = rng.integers(-5, 5, (COUNT, N, N)).astype(dt)
        b = rng.integers(-5, 5, (N, N)).astype(dt)
        A, B, D = dev.alloc(a.nbytes), dev.alloc(b.nbytes), dev.alloc(COUNT * N * N * 4)
        A.write(a)
        B.write(b)
        one = 1 if dt == np.int8 else 1.0
        cmds = [Gemm(m=N, n=N, k=N, a=A.matrix(dt, N, N, offset_bytes=i * a[0].nbytes), b=B.matrix(dt, N, N),
                     d=D.matrix(out_dt, N, N, offset_bytes=i * N * N * 4), alpha=one, beta=0 * one)
                for i in range(COUNT)]
        dev.submit(cmds).wait(timeout_ns=10**10)
        want = np.einsum("gik,kj->gij", a.astype(np.int64), b.astype(np.int64))  # small integers: exact
        np.testing.assert_array_equal(D.read(out_dt, COUNT * N * N).reshape(COUNT, N, N), want.astype(out_dt))
        if combo is not None:
            assert combo.offered == [COUNT]


def test_a_ring_client_rewrites_only_what_changed_in_its_slots_and_sends_what_it_means(server) -> None:
    """A chain resubmitted onto the slots it filled before is not copied again (nothing but the client
    writes the SQ); chains of another length or content, single entries and replays landing on those
    slots (a 16-entry ring wraps every few submissions) must each still run as sent."""
    dev = ffaccel.open(f"{server.name('ring')}&entries=16&timeout_s=20")
    with dev:
        rng = np.random.default_rng(11)
        x, b, d = dev.alloc(COUNT * BLOCK), dev.alloc(BLOCK), dev.alloc(COUNT * BLOCK)
        xs = rng.integers(-4, 4, (COUNT, N, N)).astype(np.float32)
        bs = rng.integers(-4, 4, (N, N)).astype(np.float32)
        x.write(xs)
        b.write(bs)
        chains = {n: encode_submission([_gemm(x, i + shift, b, d, i + shift) for i in range(n)])
                  for n, shift in ((4, 0), (5, 4), (3, 9))}  # chains of 4, 5 and 3 entries, each its own D blocks
        single = encode_submission([_gemm(x, 12, b, d, 12)])
        cl = dev.record([_gemm(x, 13, b, d, 13)])
        # a chain of 5 comes back to slot 0 after 16 submissions, its slots rewritten meanwhile by its own
        # copies at other places (15..3 wraps onto them); then chains of 4 and 3, a single entry, a replay
        plan = [5] * 20 + [4] * 6 + [1] + [4] * 5 + [3] * 8 + ["replay"] + [3] * 6 + [4, 5, 4, 3, 1, 5]
        for step, what in enumerate(plan):
            d.write(np.zeros(COUNT * N * N, np.float32))
            if what == "replay":
                cl.replay().wait(timeout_ns=10**10)
                blocks = [13]
            else:
                dev.submit_raw(single if what == 1 else chains[what]).wait(timeout_ns=10**10)
                blocks = {1: [12], 4: range(4), 5: range(4, 9), 3: range(9, 12)}[what]
            got = d.read(np.float32, COUNT * N * N).reshape(COUNT, N, N)
            want = np.zeros_like(got)
            for i in blocks:
                want[i] = xs[i] @ bs  # small integers: exact
            np.testing.assert_array_equal(got, want, err_msg=f"step {step}: {what}")


def _stacked(count: int) -> tuple:
    """``count`` independent 8x8 f32 GEMMs as bind_gemm_group takes them: A stepping through one
    array, B shared, D stepping through another (each (count, 1, 8, 8))."""
    from ffaccel.abi import gemm_group_arrays

    mem = {1: np.zeros(count * BLOCK, np.uint8), 2: np.zeros(BLOCK, np.uint8), 3: np.zeros(count * BLOCK, np.uint8)}
    rng = np.random.default_rng(9)
    mem[1].view(np.float32)[:] = rng.standard_normal(count * N * N)
    mem[2].view(np.float32)[:] = rng.standard_normal(N * N)
    ops = [check_command(Gemm(m=N, n=N, k=N, a=Matrix(1, DType.F32, N, N, offset_bytes=i * BLOCK),
                              b=Matrix(2, DType.F32, N, N),
                              d=Matrix(3, DType.F32, N, N, offset_bytes=i * BLOCK)).encode(), DeviceCaps())
           for i in range(count)]
    return ops[0], gemm_group_arrays(ops, mem.__getitem__)


def test_the_cpu_drivers_group_call_is_taken_or_declined_as_its_probe_says(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever this CPU's probe answers, both ways are run: where it finds NumPy's matmul equal to the
    bound calls, the group is one matmul writing every D; where not, the driver declines (one call
    each); and under 4 GEMMs it declines without asking."""
    from ffaccel.drivers import cpu as cpu_mod

    drv = CpuDriver()
    op, (a, b, c, d, epi) = _stacked(COUNT)
    monkeypatch.setattr(cpu_mod, "_matmul_matches_bound", lambda *args: True)
    run = drv.bind_gemm_group(op, a, b, c, d, epi)
    assert run is not None
    d[...] = np.nan
    run()
    assert np.array_equal(d, np.matmul(a, b))  # the one call NumPy makes, into every D
    monkeypatch.setattr(cpu_mod, "_matmul_matches_bound", lambda *args: False)
    assert drv.bind_gemm_group(op, a, b, c, d, epi) is None
    monkeypatch.setattr(cpu_mod, "_matmul_matches_bound", lambda *args: pytest.fail("asked under 4 GEMMs"))
    op3, (a3, b3, c3, d3, epi3) = _stacked(3)
    assert drv.bind_gemm_group(op3, a3, b3, c3, d3, epi3) is None


def test_the_group_probe_refuses_a_layout_where_the_bound_calls_write_other_bits() -> None:
    """The probe compares NumPy's matmul with the driver's own bound calls bit for bit: a driver whose
    bound call rounds differently (here: one ulp up) gets no group call."""
    class OtherBits(CpuDriver):
        def bind_gemm(self, op, a, b, c, d, epi):  # type: ignore[no-untyped-def]
            run = super().bind_gemm(op, a, b, c, d, epi)
            if run is None:
                return None

            def nudged() -> None:
                run()
                np.nextafter(d, np.inf, out=d)
            return nudged

    op, (a, b, c, d, epi) = _stacked(COUNT)
    assert OtherBits().bind_gemm_group(op, a, b, c, d, epi) is None
