"""ffaccel.matmul follows numpy.matmul's shape rules and the spec's arithmetic, on every device."""

from __future__ import annotations

import importlib
import pickle
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import ffaccel
from ffaccel import post
from ffaccel.spec import ErrorCode, FFAccelError

DEVICES = [d for d in ("ref", "cpu") if d in ffaccel.devices()]
RNG = np.random.default_rng(1234)


def _want(a: np.ndarray, b: np.ndarray, c=None, alpha=1.0, beta=0.0) -> np.ndarray:
    r = alpha * np.matmul(a.astype(np.float64), b.astype(np.float64))
    if c is not None and beta != 0:
        r = r + beta * c.astype(np.float64)
    return r


def _close(got: np.ndarray, want: np.ndarray, dtype, k: int) -> None:
    u = {np.dtype(np.float64): 2.0**-53}.get(np.dtype(dtype), 2.0**-24)
    out_u = {np.dtype(np.float16): 2.0**-11, np.dtype(ml_dtypes.bfloat16): 2.0**-8}.get(np.dtype(dtype), u)
    tol = 4 * (k + 2) * u + out_u
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=tol, atol=tol * max(1.0, float(np.abs(want).max(initial=0.0))))


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.mark.parametrize(
    ("sa", "sb"),
    [((3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)), ((2, 3, 4), (4, 5)), ((3, 4), (2, 4, 5)),
     ((2, 1, 3, 4), (5, 4, 2)), ((1, 3, 4), (6, 4, 2)), ((0, 4), (4, 3)), ((3, 0), (0, 2)), ((2, 0, 3), (3, 4)),
     ((0,), (0,))],
    ids=str,
)
def test_shapes_follow_numpy(device: str, sa, sb) -> None:
    a = RNG.standard_normal(sa).astype(np.float32)
    b = RNG.standard_normal(sb).astype(np.float32)
    got = ffaccel.matmul(a, b, device=device)
    want = np.matmul(a, b)
    assert np.shape(got) == np.shape(want)
    assert got.dtype == np.float32
    assert type(got) is type(want)  # 1-D @ 1-D: a NumPy scalar (hashable, an np.floating), not a 0-d array
    _close(np.asarray(got), _want(a, b), np.float32, sa[-1])


@pytest.mark.parametrize("layout", ["transposed", "strided", "negative", "fortran", "broadcast_batch"])
def test_views_of_any_layout(device: str, layout: str) -> None:
    base = RNG.standard_normal((4, 12, 14))
    if layout == "transposed":
        a = base[0, :6, :5].T  # 5 x 6, column-major view
    elif layout == "strided":
        a = base[0, :10:2, :12:2]
    elif layout == "negative":
        a = base[0, ::-1, :][:5, :6]
    elif layout == "fortran":
        a = np.asfortranarray(base[0, :5, :6])
    else:
        a = np.broadcast_to(base[0, :5, :6], (3, 5, 6))
    b = RNG.standard_normal((6, 7))
    _close(ffaccel.matmul(a, b, device=device), _want(a, b), np.float64, 6)


def test_trans_flags_swap_last_axes(device: str) -> None:
    a = RNG.standard_normal((2, 6, 5)).astype(np.float32)
    b = RNG.standard_normal((7, 6)).astype(np.float32)
    got = ffaccel.matmul(a, b, trans_a=True, trans_b=True, device=device)
    _close(got, _want(a.swapaxes(-1, -2), b.T), np.float32, 6)


def test_alpha_beta_and_broadcast_c(device: str) -> None:
    a = RNG.standard_normal((3, 4))
    b = RNG.standard_normal((4, 5))
    c = RNG.standard_normal(5)
    got = ffaccel.matmul(a, b, c, alpha=0.5, beta=-2.0, device=device)
    _close(got, _want(a, b, np.broadcast_to(c, (3, 5)), 0.5, -2.0), np.float64, 4)


def test_beta_zero_ignores_nan_c(device: str) -> None:
    a, b = np.ones((2, 3)), np.ones((3, 2))
    c = np.full((2, 2), np.nan)
    np.testing.assert_array_equal(ffaccel.matmul(a, b, c, beta=0.0, device=device), np.full((2, 2), 3.0))


def test_out_in_place_with_c(device: str) -> None:
    a = RNG.standard_normal((3, 4))
    b = RNG.standard_normal((4, 5))
    c = RNG.standard_normal((3, 5))
    c0 = c.copy()
    r = ffaccel.matmul(a, b, c, beta=1.0, out=c, device=device)
    assert r is c
    _close(c, _want(a, b, c0, 1.0, 1.0), np.float64, 4)


def test_out_non_contiguous_writes_only_its_window(device: str) -> None:
    a = RNG.standard_normal((3, 4)).astype(np.float32)
    b = RNG.standard_normal((4, 5)).astype(np.float32)
    big = np.full((6, 10), -7.0, np.float32)
    out = big[::2, ::2]
    ffaccel.matmul(a, b, out=out, device=device)
    _close(out, _want(a, b), np.float32, 4)
    mask = np.ones_like(big, bool)
    mask[::2, ::2] = False
    assert (big[mask] == -7.0).all()


@pytest.mark.parametrize(
    ("dt", "out_dtype", "res"),
    [(np.float16, None, np.float16), (np.float16, np.float32, np.float32),
     (ml_dtypes.bfloat16, None, ml_dtypes.bfloat16), (ml_dtypes.bfloat16, np.float32, np.float32),
     (np.float64, None, np.float64), (np.int8, None, np.int32), (np.uint8, None, np.int32)],
    ids=str,
)
def test_result_dtypes(device: str, dt, out_dtype, res) -> None:
    a = (RNG.standard_normal((3, 8)) * 4).astype(dt)
    b = (RNG.standard_normal((8, 2)) * 4).astype(dt)
    got = ffaccel.matmul(a, b, out_dtype=out_dtype, device=device)
    assert got.dtype == np.dtype(res)
    if np.dtype(res) == np.int32:
        np.testing.assert_array_equal(got, a.astype(np.int64) @ b.astype(np.int64))
    else:
        _close(got, _want(a, b), res, 8)


def test_int8_uint8_mix_and_wrap(device: str) -> None:
    a = np.full((1, 4), -128, np.int8)
    b = np.full((4, 1), 255, np.uint8)
    np.testing.assert_array_equal(ffaccel.matmul(a, b, device=device), [[-128 * 255 * 4]])
    big = ffaccel.matmul(np.full((1, 1), 127, np.int8), np.full((1, 1), 127, np.int8), alpha=2**31 - 1,
                         device=device)
    assert big[0, 0] == np.int64(127 * 127 * (2**31 - 1)).astype(np.int32)


def test_post_ops_chain(device: str) -> None:
    a = RNG.standard_normal((4, 6)).astype(np.float32)
    b = RNG.standard_normal((6, 5)).astype(np.float32)
    v = RNG.standard_normal(5).astype(np.float32)
    e = RNG.standard_normal((4, 5)).astype(np.float32)
    got = ffaccel.matmul(a, b, post_ops=[post.bias(v), post.scale(2.0), post.clamp(-1.0, 1.5), post.add(e)],
                         device=device)
    want = np.clip((_want(a, b) + v) * 2.0, -1.0, 1.5) + e
    _close(got, want, np.float32, 6)


def test_bias_over_rows_and_gelu(device: str) -> None:
    from scipy.special import erf

    a = RNG.standard_normal((4, 6))
    b = RNG.standard_normal((6, 5))
    v = RNG.standard_normal(4)
    got = ffaccel.matmul(a, b, post_ops=[post.bias(v, axis="m"), post.gelu()], device=device)
    x = _want(a, b) + v[:, None]
    _close(got, x * (1 + erf(x / np.sqrt(2))) / 2, np.float64, 6)


def test_cached_fast_path_uses_fresh_data(device: str) -> None:
    dev = ffaccel.open(device)
    for _ in range(3):
        a = RNG.standard_normal((8, 8)).astype(np.float32)
        b = RNG.standard_normal((8, 8)).astype(np.float32)
        _close(ffaccel.matmul(a, b, device=dev), _want(a, b), np.float32, 8)
        _close(ffaccel.matmul(a.T, b, device=dev), _want(a.T, b), np.float32, 8)
    assert dev.frontend_plans, "the second call of a geometry should hit a cached plan"


def test_post_and_blas_are_real_modules() -> None:
    code = ("import numpy as np, ffaccel.post\nfrom ffaccel.blas import gemm\nc = np.zeros(4)\n"
            "gemm('row', 'N', 'N', 2, 2, 2, 1.0, np.arange(4.0), 2, np.eye(2).ravel(), 2, 0.0, c, 2)\n"
            "assert c.tolist() == [0, 1, 2, 3] and ffaccel.post.relu().kind.name == 'RELU'\n")
    subprocess.run([sys.executable, "-c", code], check=True)  # a fresh process: nothing imported before
    assert importlib.import_module("ffaccel.post") is ffaccel.post
    assert ffaccel.blas.gemm is ffaccel.frontends.blas.gemm and ffaccel.post.bias is ffaccel.frontends.post.bias


def test_c_alone_is_added_with_beta_one(device: str) -> None:
    a, b = RNG.standard_normal((3, 4)), RNG.standard_normal((4, 5))
    c = RNG.standard_normal((3, 5))
    np.testing.assert_allclose(ffaccel.matmul(a, b, c, device=device), a @ b + c, rtol=1e-12)
    np.testing.assert_allclose(ffaccel.matmul(a, b, c, beta=0.5, device=device), a @ b + 0.5 * c, rtol=1e-12)
    np.testing.assert_allclose(ffaccel.matmul(a, b, np.full((3, 5), np.nan), beta=0, device=device), a @ b,
                               rtol=1e-12)  # beta=0 said explicitly: c is not read
    np.testing.assert_allclose(ffaccel.matmul(a, b, beta=2.0, device=device), a @ b, rtol=1e-12)  # no c: no addend


def test_one_post_op_is_a_list_of_one(device: str) -> None:
    a, b = RNG.standard_normal((3, 4)).astype(np.float32), RNG.standard_normal((4, 5)).astype(np.float32)
    np.testing.assert_array_equal(ffaccel.matmul(a, b, post_ops=post.relu(), device=device),
                                  ffaccel.matmul(a, b, post_ops=[post.relu()], device=device))
    np.testing.assert_array_equal(ffaccel.matmul(a, b, post_ops=None, device=device),
                                  ffaccel.matmul(a, b, device=device))


def test_python_lists_take_the_other_operands_dtype(device: str) -> None:
    ints = [[1, -2, 3], [4, 5, -6]]
    got = ffaccel.matmul(ints, [[1, 0], [0, 1], [2, 2]], device=device)  # two lists: float64, exact
    assert got.dtype == np.float64 and got.tolist() == np.matmul(ints, [[1, 0], [0, 1], [2, 2]]).tolist()
    f32 = RNG.standard_normal((3, 2)).astype(np.float32)
    assert ffaccel.matmul(ints, f32, device=device).dtype == np.float32
    i8 = np.array([[1, 2], [3, 4], [5, 6]], np.int8)
    got = ffaccel.matmul(ints, i8, device=device)
    assert got.dtype == np.int32 and got.tolist() == np.matmul(ints, i8).tolist()
    got = ffaccel.matmul(f32.T, [[1.5], [2.5], [0.25]], [[1.0]], device=device)  # c as a list too
    np.testing.assert_allclose(got, f32.T.astype(np.float64) @ [[1.5], [2.5], [0.25]] + 1.0, rtol=1e-6)


def test_errors_carry_a_parameter_path() -> None:
    e = FFAccelError(ErrorCode.INVALID_PARAMETER, ("post_ops", 1, "operand"), "seen x, allowed y", "api.shape")
    assert e.param == "post_ops[1].operand" and e.path == ("post_ops", 1, "operand")
    assert str(e) == "[INVALID_PARAMETER] post_ops[1].operand: seen x, allowed y"
    old_style = FFAccelError(ErrorCode.OVERLAP, "epilogue[2].operand.ld_elems", "m")  # positional, as before
    assert old_style.path == ("epilogue", 2, "operand", "ld_elems")
    old_style.command_index = 3
    new = old_style.renamed({"epilogue": "post_ops"})
    assert (new.param, new.code, new.message, new.command_index) == ("post_ops[2].operand.ld_elems",
                                                                     ErrorCode.OVERLAP, "m", 3)
    assert old_style.renamed({"out": "c"}) is old_style  # nothing to rename
    back = pickle.loads(pickle.dumps(new))
    assert (back.param, back.path, back.rule) == (new.param, new.path, new.rule)


def test_validator_errors_name_matmuls_arguments() -> None:
    a = np.ones((2, 2), np.float32)
    with pytest.raises(FFAccelError) as e:
        ffaccel.matmul(a, a, post_ops=[post.relu(), post.clamp(2.0, 1.0)], device="cpu")
    assert e.value.path == ("post_ops", 1, "param0") and e.value.rule == "epilogue.param"
    with pytest.raises(FFAccelError) as e:  # blas.gemm calls CBLAS's c what matmul calls out
        ffaccel.blas.gemm("row", "N", "N", 2, 2, 2, 1.0, a.ravel(), 2, a.ravel(), 2, 0.0, a.ravel(), 2)
    assert e.value.path == ("c",) and e.value.code == ErrorCode.OVERLAP


def test_a_geometry_is_validated_once_and_scalars_by_their_bits() -> None:
    dev = ffaccel.open("cpu")
    built = []
    real = dev.gemm_kernel
    dev.gemm_kernel = lambda key, raw: built.append(raw) or real(key, raw)  # type: ignore[method-assign]
    a, c = np.ones((3, 3), np.float32), np.zeros((3, 3), np.float32)
    for _ in range(3):
        ffaccel.matmul(a, a, c, post_ops=[post.bias(np.ones(3, np.float32))], device=dev)
    assert len(built) == 1  # repeated calls with c and an epilogue build no descriptor
    pos = ffaccel.matmul(a, a, post_ops=[post.scale(0.0)], device=dev)
    neg = ffaccel.matmul(a, a, post_ops=[post.scale(-0.0)], device=dev)  # equal as floats, not as bits
    assert not np.signbit(pos).any() and np.signbit(neg).all() and len(built) == 3


def test_fused_epilogues_take_the_cached_per_call_path(device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A repeated GEMM with a bias (or any epilogue) skips the step-by-step path, as a bare one
    does, and reads each call's own arrays: new values, another bias array of the same geometry."""
    from ffaccel.frontends import numpy_api

    dev = ffaccel.open(device)
    slow = []
    real = numpy_api._matmul
    monkeypatch.setattr(numpy_api, "_matmul", lambda *args, **kw: slow.append(1) or real(*args, **kw))
    for m, k, n in ((8, 8, 8), (1, 64, 48), (5, 7, 3)):
        for rep in range(3):
            a = RNG.standard_normal((m, k)).astype(np.float32)
            b = RNG.standard_normal((k, n)).astype(np.float32)
            vn, vm = RNG.standard_normal(n).astype(np.float32), RNG.standard_normal(m).astype(np.float32)
            e = RNG.standard_normal((m, n)).astype(np.float32)
            _close(ffaccel.matmul(a, b, post_ops=[post.bias(vn)], device=dev), _want(a, b) + vn, np.float32, k)
            _close(ffaccel.matmul(a, b, post_ops=post.bias(vn), device=dev), _want(a, b) + vn, np.float32, k)
            got = ffaccel.matmul(a, b, post_ops=[post.bias(vm, axis="m"), post.relu(), post.add(e)], device=dev)
            _close(got, np.maximum(_want(a, b) + vm[:, None], 0) + e, np.float32, k)
            strided = np.repeat(vn, 2)[::2]  # a bias with a stride: the full path copies it
            _close(ffaccel.matmul(a, b, post_ops=[post.bias(strided)], device=dev), _want(a, b) + vn,
                   np.float32, k)
    # per geometry: the first call of each post-op list (one bias, alone or in a list, is one) and
    # every call with the strided bias went the full way
    assert len(slow) == 3 * (2 + 3), len(slow)
    pos = ffaccel.matmul(a, b, post_ops=[post.clamp(0.0, 1.0)], device=dev)
    neg = ffaccel.matmul(a, b, post_ops=[post.clamp(-0.0, 1.0)], device=dev)  # equal as floats, not as bits
    assert np.array_equal(np.signbit(pos), np.signbit(np.clip(_want(a, b), 0.0, 1.0)))
    assert np.signbit(neg).sum() >= np.signbit(pos).sum()
    gen = ffaccel.matmul(a, b, post_ops=(p for p in [post.bias(vn), post.relu()]), device=dev)  # any iterable
    _close(gen, np.maximum(_want(a, b) + vn, 0), np.float32, k)
    with pytest.raises(FFAccelError) as err:  # a wrong operand in a cached geometry is still refused
        ffaccel.matmul(a, b, post_ops=[post.bias(np.ones(n + 1, np.float32))], device=dev)
    assert err.value.param == "post_ops[0].operand"


@pytest.mark.parametrize(
    ("sa", "sb", "trans_b"),
    [((2, 3, 6, 5), (2, 3, 5, 4), False),  # attention scores: 4-D @ 4-D
     ((4, 1, 8), (4, 8, 7), False),  # a decoding step: m = 1 per head
     ((3, 6, 5), (5, 4), False),  # b broadcast over the batch
     ((5, 4), (3, 4, 6), False),  # a broadcast over the batch
     ((2, 3, 6, 5), (2, 3, 4, 5), True),  # q @ k^T by the flag
     ((6, 5), (4, 5), True)],  # a transposed 2-D call
    ids=str,
)
def test_batched_calls_take_the_cached_per_call_path(device: str, sa, sb, trans_b: bool,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A repeated batched (or transposed) GEMM skips the step-by-step path and reads each call's own
    arrays, also as strided views (k^T of a cache) and with a bias; values as NumPy's."""
    from ffaccel.frontends import numpy_api

    dev = ffaccel.open(device)
    slow = []
    real = numpy_api._matmul
    monkeypatch.setattr(numpy_api, "_matmul", lambda *args, **kw: slow.append(1) or real(*args, **kw))
    slow_by_round = []
    for _ in range(3):
        slow_by_round.append(len(slow))
        a = RNG.standard_normal(sa).astype(np.float32)
        b = RNG.standard_normal(sb).astype(np.float32)
        bt = np.swapaxes(b, -1, -2) if trans_b else b
        n = bt.shape[-1]
        _close(ffaccel.matmul(a, b, trans_b=trans_b, device=dev), _want(a, bt), np.float32, sa[-1])
        bias = RNG.standard_normal(n).astype(np.float32)
        _close(ffaccel.matmul(a, b, trans_b=trans_b, post_ops=[post.bias(bias), post.relu()], device=dev),
               np.maximum(_want(a, bt) + bias, 0), np.float32, sa[-1])
        cache = RNG.standard_normal(sb[:-2] + (sb[-1] + 3, sb[-2])).astype(np.float32)
        kt = np.swapaxes(cache[..., 1:1 + sb[-1], :], -1, -2)  # a strided view, not a copy
        if not trans_b:
            _close(ffaccel.matmul(a, kt, device=dev), _want(a, kt), np.float32, sa[-1])
    # at most the first two calls of each geometry (the second builds the plan; a geometry seen once,
    # as in a growing KV cache, builds none; a new geometry of a known GEMM class takes none: the
    # family's plan), none from the third on
    assert len(slow) <= 2 * (2 + (0 if trans_b else 1)), len(slow)
    assert len(slow) == slow_by_round[2], slow
    with pytest.raises(FFAccelError) as err:  # a wrong shape in a batched call is still refused
        wrong_k = sb[:-2] + ((sb[-2], sb[-1] + 1) if trans_b else (sb[-2] + 1, sb[-1]))
        ffaccel.matmul(a, np.ones(wrong_k, np.float32), trans_b=trans_b, device=dev)
    assert err.value.param == "b"


def test_batched_plan_result_is_not_shared_between_calls(device: str) -> None:
    """Each call of a cached batched geometry returns its own D (the plan allocates one per call)."""
    dev = ffaccel.open(device)
    a = RNG.standard_normal((3, 4, 5)).astype(np.float32)
    b = RNG.standard_normal((3, 5, 2)).astype(np.float32)
    first = ffaccel.matmul(a, b, device=dev)
    second = ffaccel.matmul(a, b, device=dev)
    third = ffaccel.matmul(2 * a, b, device=dev)
    assert not np.shares_memory(second, third) and not np.shares_memory(first, second)
    _close(second, _want(a, b), np.float32, 5)
    _close(third, _want(2 * a, b), np.float32, 5)
    assert third.shape == (3, 4, 2) and third.dtype == np.float32


@pytest.mark.parametrize("name", ["cpu", "ref", "restricted:cpu;combos=f32;post_ops=", "npu"])
def test_a_growing_kv_cache_takes_the_family_plan(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A decoding loop's attention (a KV cache one row longer each step, q @ K^T and p @ V): after the
    first step, each new geometry of the same GEMM class skips the step-by-step path (one plan over
    the growing axis); values as NumPy's at every step, also when a length comes back (its own plan),
    on whole and partial devices (npu: bf16 operands, f32 D)."""
    from ffaccel.frontends import numpy_api

    dtype, out_dtype = (ml_dtypes.bfloat16, np.float32) if name == "npu" else (np.float32, None)
    dev = ffaccel.open(name)
    slow = []
    real = numpy_api._matmul
    monkeypatch.setattr(numpy_api, "_matmul", lambda *args, **kw: slow.append(1) or real(*args, **kw))
    k_cache = RNG.standard_normal((3, 20, 8)).astype(dtype)
    v_cache = RNG.standard_normal((3, 20, 8)).astype(dtype)
    q = RNG.standard_normal((3, 1, 8)).astype(dtype)
    for length in list(range(2, 12)) + [5, 5, 5]:
        k, v = k_cache[:, :length], v_cache[:, :length]
        s = ffaccel.matmul(q, k, trans_b=True, out_dtype=out_dtype, device=dev)
        _close(s, _want(q, np.swapaxes(k, 1, 2)), np.float32, 8)
        p = s.astype(dtype)
        _close(ffaccel.matmul(p, v, out_dtype=out_dtype, device=dev), _want(p, v), np.float32, length)
    assert len(slow) == 2, len(slow)  # the first step's two GEMM classes; every later length by its family


def test_a_new_geometry_of_a_known_class_is_still_checked() -> None:
    """A plan over a growing axis checks each new geometry by every rule that reads one: on a device
    whose max_dim is 12, a KV cache that grows past it is refused with the full validator's error
    (code, parameter), and nothing is cached for it; lengths within the limit still run."""
    import dataclasses

    from ffaccel.drivers.cpu import CpuDriver
    from ffaccel.runtime import Device
    from ffaccel.transports import InprocTransport

    class Small(CpuDriver):
        def caps(self):
            c = super().caps()
            return dataclasses.replace(c, limits=dataclasses.replace(c.limits, max_dim=12))

    k_cache = RNG.standard_normal((3, 20, 8)).astype(np.float32)
    q = RNG.standard_normal((3, 1, 8)).astype(np.float32)
    dev = Device("small", InprocTransport(Small()))
    for length in range(4, 13):  # the family's plan serves 5..12
        _close(ffaccel.matmul(q, k_cache[:, :length], trans_b=True, device=dev),
               _want(q, np.swapaxes(k_cache[:, :length], 1, 2)), np.float32, 8)
    with pytest.raises(FFAccelError) as err:
        ffaccel.matmul(q, k_cache[:, :13], trans_b=True, device=dev)
    with pytest.raises(FFAccelError) as fresh:  # what a device that never saw the class says
        ffaccel.matmul(q, k_cache[:, :13], trans_b=True, device=Device("small", InprocTransport(Small())))
    assert (err.value.code, err.value.param, str(err.value)) == (fresh.value.code, fresh.value.param,
                                                                 str(fresh.value))
    assert (err.value.code, err.value.param) == (ErrorCode.INVALID_PARAMETER, "n")
    with pytest.raises(FFAccelError):  # refused again: no plan was cached for it
        ffaccel.matmul(q, k_cache[:, :13], trans_b=True, device=dev)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axis", ["n", "m"])
def test_a_tiny_linear_layer_reads_each_calls_bias(device: str, dtype, axis: str) -> None:
    """8 x 8 + bias on its cached per-call path: each call reads its own operands and the bias's
    current values (changed in place between calls, or a new vector), also for misaligned operands."""
    dev = ffaccel.open(device)
    a = RNG.standard_normal((8, 8)).astype(dtype)
    raw = np.zeros(8 * 8 * np.dtype(dtype).itemsize + 1, np.uint8)
    b_misaligned = np.frombuffer(raw.data, dtype, 64, offset=1).reshape(8, 8)
    for b in (RNG.standard_normal((8, 8)).astype(dtype), b_misaligned):
        if b is b_misaligned:
            b_misaligned[...] = RNG.standard_normal((8, 8))  # (a writeable view of raw)
        bias = RNG.standard_normal(8).astype(dtype)
        for _ in range(3):
            got = ffaccel.matmul(a, b, post_ops=[post.bias(bias, axis=axis)], device=dev)
            want = _want(a, b) + (bias[None, :] if axis == "n" else bias[:, None])
            _close(got, want, dtype, 8)
            bias += 1.0
            bias = bias.copy()


def test_a_known_gemm_class_still_refuses_bad_scalars_and_flags() -> None:
    """After a GEMM class has a plan over its geometries, a call of the same shapes with a bad alpha,
    beta or flag is refused with its documented error, as on a fresh device."""
    dev = ffaccel.open("cpu")
    q = RNG.standard_normal((3, 1, 8)).astype(np.float32)
    k_cache = RNG.standard_normal((3, 20, 8)).astype(np.float32)
    for length in (4, 5, 6):
        ffaccel.matmul(q, k_cache[:, :length], trans_b=True, device=dev)
    for kwargs, param in (({"alpha": np.array([1.0, 2.0])}, "alpha"), ({"alpha": "1"}, "alpha"),
                          ({"beta": np.array([0.0, 1.0])}, "beta"), ({"trans_b": "T"}, "trans_b")):
        args = {"trans_b": True, **kwargs}
        with pytest.raises(FFAccelError) as err:
            ffaccel.matmul(q, k_cache[:, :7], device=dev, **args)
        assert err.value.param == param, (kwargs, err.value)
    # scalars equal as floats but not as bits (0.0, -0.0) are different GEMM classes: each call's
    # result is bit for bit what a device that never saw the other gives
    for length, alpha in ((8, 0.0), (9, -0.0), (10, 0.0), (11, 2.0), (12, 2)):
        got = ffaccel.matmul(q, k_cache[:, :length], trans_b=True, alpha=alpha, device=dev)
        want = ffaccel.matmul(q, k_cache[:, :length], trans_b=True, alpha=alpha, device=ffaccel.open("cpu"))
        assert got.tobytes() == want.tobytes(), alpha


def test_a_plain_2d_geometry_met_late_still_takes_the_fresh_kernel() -> None:
    """A plain 2-D call of a GEMM class already met (other shapes first) takes the driver's fresh
    kernel from its second call, as the first geometry of its class does (the family plan is for
    batched and transposed calls): the fastest path for tiny GEMMs, and the one whose results
    the conformance suite's memory:reads check judges."""
    dev = ffaccel.open("cpu")
    drv = dev._transport.driver
    asked: list[tuple[int, int, int]] = []
    real = drv.prepare_gemm_fresh

    def counted(op):  # noqa: ANN001, ANN202
        asked.append((op.m, op.n, op.k))
        return real(op)

    drv.prepare_gemm_fresh = counted
    rng = np.random.default_rng(3)
    for m, n, k in ((5, 7, 9), (16, 16, 16), (6, 4, 5)):
        a, b = rng.random((m, k), np.float32), rng.random((k, n), np.float32)
        for _ in range(3):
            np.testing.assert_allclose(ffaccel.matmul(a, b, device=dev), a @ b, rtol=1e-5)
    assert asked == [(5, 7, 9), (16, 16, 16), (6, 4, 5)]


@pytest.mark.parametrize(("m", "k", "n"), [(8, 8, 8), (1, 600, 600), (40, 256, 256)])
def test_per_call_plans_never_serve_a_call_of_another_kind(m: int, k: int, n: int) -> None:
    """The per-call keys (a short one for every scalar and flag at its default, a flat one for a
    single bias or add with them) never hand one call's plan to another: the same operands with
    default and explicit scalars, trans flags, a bias, an add, a bias along m and a bias of another
    length or dtype, in turn and repeated, each give what a device that never saw the others gives
    (to rounding: the first call's path may differ from the plan's), or its documented error, on the
    tiny, the skinny and the threaded paths."""
    dev = ffaccel.open("cpu")
    a = RNG.standard_normal((m, k)).astype(np.float32)
    b = RNG.standard_normal((k, n)).astype(np.float32)
    bias_n, bias_m = RNG.standard_normal(n).astype(np.float32), RNG.standard_normal(m).astype(np.float32)
    resid = RNG.standard_normal((m, n)).astype(np.float32)
    calls = [
        ((a, b), {}),
        ((a, b), {"alpha": 2.0}),
        ((a, b), {"alpha": 1.0, "beta": 0.0}),
        ((a, np.ascontiguousarray(b.T)), {"trans_b": True}),
        ((a, b), {"post_ops": [post.bias(bias_n)]}),
        ((a, b), {"post_ops": post.bias(bias_n)}),
        ((a, b), {"post_ops": [post.bias(bias_n)], "alpha": 0.5}),
        ((a, b), {"post_ops": [post.add(resid)]}),
        ((a, b), {"post_ops": [post.bias(bias_m, axis="m")]}),
        ((a, b), {"post_ops": [post.bias(bias_n), post.relu()]}),
        ((a, b), {"post_ops": [post.relu()]}),
    ]
    for _ in range(3):  # the full path, then each key's plan
        for args, kwargs in calls:
            got = ffaccel.matmul(*args, device=dev, **kwargs)
            want = ffaccel.matmul(*args, device=ffaccel.open("cpu"), **kwargs)
            assert got.shape == want.shape and got.dtype == want.dtype, kwargs
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4 * k)
        for bad in (RNG.standard_normal(n + 1).astype(np.float32), bias_n.astype(np.float64)):
            with pytest.raises(FFAccelError) as err:  # a bias the cached plans must not take
                ffaccel.matmul(a, b, post_ops=[post.bias(bad)], device=dev)
            with pytest.raises(FFAccelError) as fresh:
                ffaccel.matmul(a, b, post_ops=[post.bias(bad)], device=ffaccel.open("cpu"))
            assert (err.value.code, err.value.param) == (fresh.value.code, fresh.value.param)


@pytest.mark.parametrize("kind", ["bias_n", "bias_m", "add"])
def test_a_batched_gemm_hands_the_kernel_every_operand_with_the_gemm_batch(kind: str) -> None:
    """The driver contract (``abi.views.gemm_arrays``): a kernel gets op(A), op(B), C, D and the
    post-op operands as (batch, rows, cols) arrays with the GEMM's batch (a bias as (batch, 1, n)
    or (batch, m, 1), broadcast), on the host-array path as on the buffer path. A driver that
    indexes operands by batch entry (the npu's post-processing unit does) raised IndexError on a
    batched convolution's bias when the front-end handed it a batch of 1. Full path and the
    cached per-call plan (second call)."""
    from ffaccel.drivers.ref import RefDriver
    from ffaccel.runtime import Device
    from ffaccel.transports.inproc import InprocTransport

    seen: list = []

    class Checking(RefDriver):
        def prepare_gemm(self, op):  # type: ignore[no-untyped-def]
            run = super().prepare_gemm(op)

            def kernel(a, b, c, d, epi):  # type: ignore[no-untyped-def]
                seen.append([x.shape[0] for x in (a, b, c, d, *epi) if x is not None] + [op.batch])
                return run(a, b, c, d, epi)
            return kernel

    dev = Device("ref", InprocTransport(Checking()))
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((8, 5), np.float32), rng.standard_normal((3, 5, 6), np.float32)
    operand = {"bias_n": rng.standard_normal(6, np.float32), "bias_m": rng.standard_normal(8, np.float32),
               "add": rng.standard_normal((8, 6), np.float32)}[kind]
    op = {"bias_n": post.bias(operand), "bias_m": post.bias(operand, axis="m"), "add": post.add(operand)}[kind]
    addend = {"bias_n": operand, "bias_m": operand[:, None], "add": operand}[kind]
    want = a.astype(np.float64) @ b.astype(np.float64) + addend
    for _ in range(2):
        got = ffaccel.matmul(a, b, post_ops=[op], device=dev)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert len(seen) == 2 and all(set(batches) == {3} for batches in seen), seen
    npu = ffaccel.open("npu")  # the driver that indexed by batch entry: bf16 inputs, f32 D
    got = ffaccel.matmul(a.astype(ml_dtypes.bfloat16), b.astype(ml_dtypes.bfloat16), post_ops=[op],
                         out_dtype=np.float32, device=npu) if kind != "add" else None
    if got is not None:
        wide = a.astype(ml_dtypes.bfloat16).astype(np.float64) @ b.astype(ml_dtypes.bfloat16).astype(np.float64)
        np.testing.assert_allclose(got, wide + addend, rtol=1e-5, atol=1e-4)
