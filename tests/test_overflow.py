"""Overflow in the validator (issue 11, item 10): no field value, however large, escapes as anything
but FFAccelError, in process or through the server.

The single-defect cases (one huge stride or offset, everything else valid: exact code, parameter,
nothing written) live in the conformance catalogue (:mod:`ffaccel.conformance.errors`, run by
``test_validation_abi.py`` on ``ref`` and ``cpu``); the two the issue reports are repeated here by
name, in process and through both server paths. The property tests patch random u32/u64 values
(biased to the boundaries where products overflow 64 bits) into a valid command's bytes, or pass
random i64/u64 values to the encoder's dataclasses, and require a clean accept or an
FFAccelError that changed nothing. Hypothesis runs derandomized: the same examples every run.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ffaccel
from ffaccel.abi import COPY, GEMM, SUBMIT, WAIT, Copy, Gemm, Matrix, PostOpDesc, encode_submission
from ffaccel.conformance.errors import Env, ValidGemm, patch, patch_cmd
from ffaccel.spec import ErrorCode, FFAccelError, PostOpKind

PROPERTY = settings(max_examples=300, derandomize=True, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

#: Values where a product or sum of two fields first leaves 32 or 64 bits.
U64_EDGES = [0, 1, 2, 3, 4, 7, 8, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**46, 2**48 - 1, 2**48,
             2**61, 2**62, 2**63 - 1, 2**63, 2**64 - 8, 2**64 - 1]
U32_EDGES = [v for v in U64_EDGES if v < 2**32]


def _field_value(fmt: str) -> st.SearchStrategy[int]:
    if fmt == "I":
        return st.one_of(st.sampled_from(U32_EDGES), st.integers(0, 2**32 - 1))
    return st.one_of(st.sampled_from(U64_EDGES), st.integers(0, 2**64 - 1))


def _patches(layout: Any) -> st.SearchStrategy[dict[str, int]]:
    """One to three fields of ``layout`` (never the opcode) set to random values of their width."""
    fields = [f for f in layout.fields if f.name != "opcode"]
    one = st.sampled_from(fields).flatmap(lambda f: st.tuples(st.just(f.name), _field_value(f.fmt)))
    return st.lists(one, min_size=1, max_size=3).map(dict)


#: In-process devices whose drivers compute byte strides in C (NumPy, BLAS, torch: an optional extra).
IN_PROCESS = [name for name in ("ref", "cpu", "torch") if name in ffaccel.devices()]


@pytest.fixture(scope="module", params=IN_PROCESS)
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    with Env(lambda: ffaccel.open(request.param)) as e:
        yield e


def _clean(call: Any, env: Env) -> None:
    """Run ``call``: it succeeds, or raises FFAccelError (a code, a parameter) and writes nothing."""
    before = env.snapshot()
    try:
        fence = call()
    except FFAccelError as e:
        assert isinstance(e.code, ErrorCode) and e.code != ErrorCode.DEVICE_LOST, str(e)
        assert e.param, str(e)
        assert env.snapshot() == before, f"a refused call changed a buffer: {e}"
        return
    fence.wait(timeout_ns=10**10)


def _release(env: Env) -> None:
    """Free the example's buffers: a client's handle table is bounded (max_mappings), in process too."""
    for buf in env.bufs:
        buf.free()
    env.bufs.clear()


# -- the issue's two reports, by name ---------------------------------------------------------

def _issue_cases(s: ValidGemm) -> list[tuple[Gemm, str]]:
    return [
        (s.gemm(a=replace(s.a, batch_stride_elems=2**63 - 1)), "a.batch_stride_elems"),
        (s.gemm(b=replace(s.b, ld_elems=2**62)), "b.ld_elems"),
    ]


def test_issue_cases_in_process(env: Env) -> None:
    s = ValidGemm(env, k=1)  # batch 1, and B has one row: neither stride is ever multiplied by more than 0
    for gemm, param in _issue_cases(s):
        before = env.snapshot()
        with pytest.raises(FFAccelError) as info:
            env.dev.submit([gemm])
        assert (info.value.code, info.value.param) == (ErrorCode.INVALID_PARAMETER, param), str(info.value)
        assert env.snapshot() == before


@pytest.mark.parametrize("path", ["socket", "ring"])
def test_issue_cases_through_the_server(server, path: str) -> None:
    """The server answers with the validator's code and parameter (was DEVICE_LOST "server error")."""
    with Env(lambda: server.open(path)) as e:
        s = ValidGemm(e, k=1)
        for gemm, param in _issue_cases(s):
            before = e.snapshot()
            with pytest.raises(FFAccelError) as info:
                e.dev.submit([gemm]).wait(timeout_ns=10**10)
            assert (info.value.code, info.value.param) == (ErrorCode.INVALID_PARAMETER, param), str(info.value)
            assert e.snapshot() == before
        e.dev.submit([s.gemm()]).wait(timeout_ns=10**10)  # the connection is still good


# -- properties ---------------------------------------------------------------------------------

@PROPERTY
@given(patches=_patches(GEMM), batch=st.sampled_from([1, 2]), k=st.sampled_from([1, 3]))
def test_gemm_fields_patched_with_huge_values(env: Env, patches: dict[str, int], batch: int, k: int) -> None:
    s = ValidGemm(env, batch=batch, k=k)
    gemm = s.gemm(epilogue=(PostOpDesc(PostOpKind.BIAS_N, operand=s.vector(np.float32, 1, s.n)),))
    raw = encode_submission([patch_cmd(gemm, patches)])
    _clean(lambda: env.dev.submit_raw(raw), env)
    _release(env)


@PROPERTY
@given(patches=_patches(COPY))
def test_copy_fields_patched_with_huge_values(env: Env, patches: dict[str, int]) -> None:
    s = ValidGemm(env)
    raw = encode_submission([patch_cmd(Copy(src=s.c, dst=s.d), patches)], ffaccel.spec.Engine.COPY)
    _clean(lambda: env.dev.submit_raw(raw), env)
    _release(env)


@pytest.fixture(scope="module")
def server_env(server) -> Iterator[Env]:
    with Env(lambda: server.open("socket")) as e:
        yield e


@settings(PROPERTY, max_examples=60)
@given(patches=_patches(GEMM))
def test_gemm_fields_patched_with_huge_values_through_the_server(server_env: Env, patches: dict[str, int]) -> None:
    """The server answers each with the validator's error (never DEVICE_LOST), and stays up."""
    env = server_env
    s = ValidGemm(env, k=1)
    raw = encode_submission([patch_cmd(s.gemm(), patches)])
    _clean(lambda: env.dev.submit_raw(raw), env)
    _release(env)


@PROPERTY
@given(head=_patches(SUBMIT), wait=_patches(WAIT))
def test_submission_header_and_waits_patched_with_huge_values(env: Env, head: dict[str, int],
                                                              wait: dict[str, int]) -> None:
    s = ValidGemm(env)
    fence = env.dev.submit([])  # a value the wait may name
    raw = encode_submission([s.gemm()], waits=[(int(fence.engine), fence.value)])
    raw = patch(patch(raw, SUBMIT, head), WAIT, wait, base=SUBMIT.size_bytes)
    _clean(lambda: env.dev.submit_raw(raw), env)
    _release(env)


I64 = st.one_of(st.sampled_from([-(2**63), -(2**62), -1, *U64_EDGES]), st.integers(-(2**63), 2**64))
_MATRIX_FIELDS = ("rows", "cols", "ld_elems", "offset_bytes", "batch_stride_elems")


@PROPERTY
@given(role=st.sampled_from(["a", "b", "c", "d"]), field_=st.sampled_from(_MATRIX_FIELDS), value=I64,
       top=st.sampled_from(["m", "n", "k", "batch", "user_data", None]), top_value=I64)
def test_encoder_takes_any_integer(env: Env, role: str, field_: str, value: int, top: str | None,
                                   top_value: int) -> None:
    """Negative or too-wide values given to the dataclasses: cmd.field_range, never struct.error."""
    s = ValidGemm(env)
    kw: dict[str, Any] = {role: replace(getattr(s, role), **{field_: value})}
    if top is not None:
        kw[top] = top_value
    _clean(lambda: env.dev.submit([s.gemm(**kw)]), env)
    _release(env)


def test_encoder_names_the_field() -> None:
    m = Matrix(1, ffaccel.spec.DType.F32, 2, 2, ld_elems=-1)
    g = Gemm(m=2, n=2, k=2, a=m, b=Matrix(2, ffaccel.spec.DType.F32, 2, 2), d=Matrix(3, ffaccel.spec.DType.F32, 2, 2))
    with pytest.raises(FFAccelError) as info:
        g.encode()
    assert (info.value.code, info.value.param, info.value.rule) == (ErrorCode.INVALID_PARAMETER, "a.ld_elems",
                                                                    "cmd.field_range")
    with pytest.raises(FFAccelError) as info:
        encode_submission([], waits=[(1, -1)])
    assert (info.value.param, info.value.rule) == ("wait[0].value", "cmd.field_range")
    with pytest.raises(struct.error):  # the layer below really does refuse: the check is not vacuous
        GEMM.struct.pack(*([0] * 7 + [-1] + [0] * (len(GEMM.names) - 8)))


@pytest.mark.parametrize("name", ["ref", "cpu"])
def test_buffer_views_and_reads_refuse_what_the_buffer_cannot_hold(name: str) -> None:
    """Buffer.array / Buffer.read check offsets and sizes in Python integers before NumPy sees them
    (a negative offset was a view before the buffer; 2**32 x 2**32 wrapped to 0 in np.prod)."""
    with ffaccel.open(name) as dev:
        buf = dev.alloc(64)
        buf.write(np.arange(16, dtype=np.float32))
        before = buf.read(np.uint8, 64)
        bad = [
            (lambda: buf.read(np.float32, 2**62), "count"),
            (lambda: buf.read(np.float32, -1), "count"),
            (lambda: buf.read(np.float32, 1, -4), "count"),
            (lambda: buf.array(np.float32, offset_bytes=-4), "offset_bytes"),
            (lambda: buf.array(np.float32, offset_bytes=68), "offset_bytes"),
            (lambda: buf.array(np.float32, (2**32, 2**32)), "shape"),
            (lambda: buf.array(np.float32, (-2, -8)), "shape"),
            (lambda: buf.array(np.float32, 17), "shape"),
        ]
        for call, param in bad:
            if not buf.host_visible and param != "count":
                continue  # array() is for host-visible memory only (UNSUPPORTED elsewhere)
            with pytest.raises(FFAccelError) as info:
                call()
            assert (info.value.code, info.value.param) == (ErrorCode.OUT_OF_BOUNDS, param), str(info.value)
        np.testing.assert_array_equal(buf.read(np.uint8, 64), before)
        np.testing.assert_array_equal(buf.read(np.float32, 16), np.arange(16, dtype=np.float32))
        assert buf.array(np.float32, (4, 4)).shape == (4, 4) and buf.array(np.float32, offset_bytes=64).shape == (0,)
