"""The torch driver and the PyTorch offload mode (skipped where torch is not installed)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import ffaccel  # noqa: E402
import ffaccel.torch  # noqa: E402
from ffaccel.conformance import check_device  # noqa: E402
from ffaccel.drivers.torch import TorchDriver  # noqa: E402
from ffaccel.runtime import Device  # noqa: E402
from ffaccel.transports.inproc import InprocTransport  # noqa: E402


#: offload's two interceptions; the core behaviour tests run under both
INTERCEPTIONS = ["dispatcher", "function"]


@pytest.fixture
def one_torch_thread():
    # The suite alternates NumPy/OpenBLAS (the golden model) with PyTorch calls: with both
    # pools spinning on 2 cores that is several times slower (see README, thread pools).
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


# --------------------------------------------------------------------------------------
# the driver


def test_import_ffaccel_does_not_import_torch() -> None:
    code = "import sys, ffaccel; names = ffaccel.devices(); assert 'torch' in names; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_torch_driver_loads_pytorch_with_the_passive_openmp_policy() -> None:
    """A process whose first PyTorch import is the torch driver's gets OMP_WAIT_POLICY=PASSIVE
    (its OpenMP team then sleeps between GEMMs instead of spinning against NumPy's OpenBLAS).
    A chosen policy is kept: ``tests/test_cpu_kernels.py::test_openmp_wait_policy_default``."""
    code = ("import os, sys; import ffaccel.drivers.torch; assert 'torch' in sys.modules; "
            "print(os.environ.get('OMP_WAIT_POLICY'))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["PASSIVE"]


def test_conformance_torch_cpu(one_torch_thread) -> None:
    report = check_device("torch:cpu", "quick")
    assert report.passed, report.to_markdown()


@pytest.mark.parametrize("host_memory", [True, False], ids=["native-kernels", "device-memory"])
def test_conformance_native_kernels_and_device_memory(one_torch_thread, host_memory: bool) -> None:
    # native bf16/f16/int8 kernels (what a CPU with AVX512_BF16/VNNI or a GPU uses), and the
    # non-host-visible memory path a GPU takes (TorchMemory), both exercised on the CPU
    def factory() -> Device:
        return Device("torch:cpu", InprocTransport(TorchDriver("cpu", native="bf16,f16,int8",
                                                               host_memory=host_memory)))

    report = check_device(factory, "quick")
    assert report.passed, report.to_markdown()


def test_device_memory_buffers_copy_in_and_out() -> None:
    dev = Device("torch:cpu", InprocTransport(TorchDriver("cpu", host_memory=False)))
    buf = dev.alloc(16)
    assert not buf.host_visible
    buf.write(np.arange(4, dtype=np.float32))
    np.testing.assert_array_equal(buf.read(np.float32, 4), np.arange(4, dtype=np.float32))
    with pytest.raises(ffaccel.FFAccelError) as e:
        buf.array(np.float32)
    assert e.value.code == ffaccel.ErrorCode.UNSUPPORTED


def test_bad_torch_device_names_the_parameter() -> None:
    with pytest.raises(ffaccel.FFAccelError) as e:
        ffaccel.open("torch:nosuchdevice")
    assert e.value.param == "name" and "torch:nosuchdevice" in e.value.message
    with pytest.raises(ffaccel.FFAccelError) as e:
        TorchDriver("cpu", native="fp4")
    assert "fp4" in e.value.message


# --------------------------------------------------------------------------------------
# matmul on DLPack arrays


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_matmul_takes_and_returns_tensors(dtype) -> None:
    a, b = torch.randn(5, 7).to(dtype), torch.randn(7, 3).to(dtype)
    r = ffaccel.matmul(a, b)
    assert isinstance(r, torch.Tensor) and r.dtype == dtype and r.shape == (5, 3)
    torch.testing.assert_close(r.double(), (a.double() @ b.double()).to(dtype).double(), rtol=1e-2, atol=1e-5)
    out = torch.empty(5, 3, dtype=dtype)
    assert ffaccel.matmul(a, b, out=out) is out
    torch.testing.assert_close(out, r)


@pytest.mark.parametrize("out_dtype", [np.float32, np.dtype(np.float32), "float32", torch.float32])
def test_matmul_of_bf16_tensors_into_f32_on_the_npu(out_dtype) -> None:
    # bf16 x bf16 -> f32 is declared; out_dtype=np.float32 with tensors was refused: its name was
    # taken from str(), "<class 'numpy.float32'>", cut to "float32'>"
    a, b = torch.ones(3, 4, dtype=torch.bfloat16), torch.full((4, 5), 1.5, dtype=torch.bfloat16)
    r = ffaccel.matmul(a, b, out_dtype=out_dtype, device="npu")
    assert r.dtype == torch.float32 and torch.equal(r, torch.full((3, 5), 6.0))


def test_post_op_operands_may_be_tensors_bf16_included() -> None:
    # post.bias / post.add took np.asarray(operand): a bf16 tensor raised a foreign TypeError
    # ("Got unsupported ScalarType BFloat16") and one that requires grad a RuntimeError
    a, b = torch.ones(3, 4, dtype=torch.bfloat16), torch.ones(4, 5, dtype=torch.bfloat16)
    bias = torch.arange(5, dtype=torch.bfloat16)
    r = ffaccel.matmul(a, b, post_ops=[ffaccel.post.bias(bias), ffaccel.post.relu()], device="npu")
    assert torch.equal(r, (4 + bias).expand(3, 5))
    r = ffaccel.matmul(a.float(), b.float(), post_ops=ffaccel.post.add(torch.full((3, 5), 2.0)), device="cpu")
    assert torch.equal(r, torch.full((3, 5), 6.0))
    with pytest.raises(ffaccel.FFAccelError) as e:
        ffaccel.post.bias(torch.ones(5, requires_grad=True))
    assert e.value.param == "v" and "grad" in e.value.message


def test_matmul_refuses_tensors_that_need_grad() -> None:
    with pytest.raises(ffaccel.FFAccelError) as e:
        ffaccel.matmul(torch.ones(2, 2, requires_grad=True), torch.ones(2, 2))
    assert e.value.param == "a" and "grad" in e.value.message


# --------------------------------------------------------------------------------------
# offload mode


def _gemm_calls(x: torch.Tensor) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(6, 8, generator=g)
    b3 = torch.randn(4, 8, 5, generator=g)
    q = torch.randn(2, 3, 10, 8, generator=g)
    mask = torch.rand(10, 10, generator=g) > 0.3
    mask.fill_diagonal_(True)
    return {
        "linear": F.linear(x, w, torch.ones(6)),
        "matmul": x @ w.T,
        "rmatmul": w.T.__rmatmul__(x),
        "mm": torch.mm(x, w.T),
        "addmm": torch.addmm(torch.ones(6), x, w.T, beta=0.5, alpha=2.0),
        "addmm_bias": torch.addmm(torch.ones(6), x, w.T),
        "addmm_act": torch._addmm_activation(torch.ones(6), x, w.T, use_gelu=True),
        "bmm": torch.bmm(torch.stack([x[:4]] * 4), b3),
        "baddbmm": torch.baddbmm(torch.ones(4, 4, 5), torch.stack([x[:4]] * 4), b3, beta=2.0),
        "sdpa": F.scaled_dot_product_attention(q, q, q),
        "sdpa_causal": F.scaled_dot_product_attention(q, q, q, is_causal=True),
        "sdpa_boolmask": F.scaled_dot_product_attention(q, q, q, attn_mask=mask),
        "sdpa_scale": F.scaled_dot_product_attention(q, q, q, scale=0.3),
    }


@pytest.mark.parametrize("interception", INTERCEPTIONS)
def test_every_gemm_family_call_is_offloaded_and_matches(interception: str) -> None:
    x = torch.randn(7, 8)
    with torch.no_grad():
        want = _gemm_calls(x)
        with ffaccel.torch.offload("cpu", interception=interception) as session:
            got = _gemm_calls(x)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5, msg=name)
    assert session.stats["host_calls"] == 0, session.stats
    assert session.stats["offloaded_calls"] == len(want)
    assert session.stats["offloaded_fraction"] == 1.0


@pytest.mark.parametrize("interception", INTERCEPTIONS)
@pytest.mark.parametrize("op", ["linear", "_int_mm", "_addmm_activation"])
def test_an_out_tensor_is_written_as_stock_writes_it(op: str, interception: str) -> None:
    """``F.linear(..., out=o)``, ``torch._int_mm(..., out=o)``, ``torch._addmm_activation(..., out=o)``:
    ``o`` holds the result, as in stock PyTorch (the function mode's handlers used to return a fresh
    tensor and leave ``o`` as it was)."""
    g = torch.Generator().manual_seed(0)
    if op == "_int_mm":
        a, b = (torch.randint(-8, 8, (32, 32), generator=g, dtype=torch.int8) for _ in range(2))
        call = lambda o: torch._int_mm(a, b, out=o)
        like = torch.empty(32, 32, dtype=torch.int32)
    else:
        x, w, bias = torch.randn(5, 7, generator=g), torch.randn(3, 7, generator=g), torch.randn(3, generator=g)
        if op == "linear":
            call = lambda o: F.linear(x, w, bias, out=o)
        else:
            call = lambda o: torch._addmm_activation(bias, x, w.t(), out=o)
        like = torch.empty(5, 3)
    want = call(torch.zeros_like(like))
    out = torch.zeros_like(like)
    with torch.no_grad(), ffaccel.torch.offload("cpu", interception=interception):
        r = call(out)
    torch.testing.assert_close(out, want)
    assert r.data_ptr() == out.data_ptr()


@pytest.mark.parametrize("interception", INTERCEPTIONS)
@pytest.mark.parametrize("transform", ["autocast", "vmap", "forward AD"])
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")  # PyTorch's own, at the first make_dual
def test_autocast_vmap_and_forward_ad_give_stock_results(transform: str, interception: str) -> None:
    """What PyTorch does below the Python-level call: autocast runs a Linear in bf16 (a bf16 result),
    vmap hands batched tensors without storage, forward-mode AD carries a tangent. The function mode's
    handlers saw none of it: an f32 result under autocast, a RuntimeError under vmap, the tangent
    lost. The dispatcher sees the call below them and offloads it."""
    import torch.autograd.forward_ad as fwAD

    g = torch.Generator().manual_seed(0)
    x, w, t = torch.randn(4, 5, 7, generator=g), torch.randn(3, 7, generator=g), torch.randn(4, 5, 7, generator=g)

    def call() -> tuple:
        if transform == "autocast":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return (F.linear(x, w),)
        if transform == "vmap":
            return (torch.vmap(lambda row: F.linear(row, w))(x),)
        with fwAD.dual_level():
            y = fwAD.unpack_dual(F.linear(fwAD.make_dual(x, t), w))
            return y.primal, y.tangent

    want = call()
    with ffaccel.torch.offload("cpu", interception=interception) as session:
        got = call()
    for a, b in zip(got, want):
        assert isinstance(a, torch.Tensor) and a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=1e-2 if a.dtype == torch.bfloat16 else 1e-5, atol=1e-5)
    if interception == "function":
        assert session.stats["host_reasons"]["transform active"] == 1, session.stats
    else:
        assert session.stats["offloaded_calls"] >= 1, session.stats


@pytest.mark.parametrize("interception", INTERCEPTIONS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_attention_with_an_f32_mask_on_other_inputs_is_offloaded(dtype: torch.dtype, interception: str) -> None:
    """An f32 mask with bf16 (f64) q, k, v, as autocast leaves a model's mask: PyTorch's kernel takes it,
    the handlers sent it to PyTorch as "dtype unsupported"."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 5, 8, generator=g).to(dtype), torch.randn(2, 3, 6, 8, generator=g).to(dtype)
    mask = torch.randn(2, 1, 5, 6, generator=g)
    mask[0, 0, 1, :4] = float("-inf")
    want = F.scaled_dot_product_attention(q, k, k, attn_mask=mask)
    with torch.no_grad(), ffaccel.torch.offload("cpu", interception=interception) as session:
        got = F.scaled_dot_product_attention(q, k, k, attn_mask=mask)
    torch.testing.assert_close(got, want, **({"rtol": 2e-2, "atol": 2e-2} if dtype == torch.bfloat16 else {}))
    assert session.stats["host_calls"] == 0 and session.stats["offloaded_calls"] == 1, session.stats


@pytest.mark.parametrize("interception", INTERCEPTIONS)
def test_attention_with_a_1d_mask_or_an_empty_head_dimension_behaves_as_stock(interception: str) -> None:
    """PyTorch refuses a 1-D mask (IndexError) and answers for an empty head dimension (E = 0); the
    function mode's handler broadcast the mask and divided by sqrt(0) (ZeroDivisionError)."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 4, 8, generator=g)
    empty, v = torch.randn(2, 3, 4, 0, generator=g), torch.randn(2, 3, 4, 5, generator=g)
    want = F.scaled_dot_product_attention(empty, empty, v)
    with torch.no_grad(), ffaccel.torch.offload("cpu", interception=interception):
        with pytest.raises(IndexError):
            F.scaled_dot_product_attention(q, q, q, attn_mask=torch.zeros(4))
        got = F.scaled_dot_product_attention(empty, empty, v)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("interception", INTERCEPTIONS)
@pytest.mark.parametrize("layout", ["contiguous", "seq-first", "batch-first heads", "broadcast kv"])
def test_attention_on_every_query_layout_matches(layout: str, interception: str) -> None:
    """Values, not strides: PyTorch returns a seq-first query's output in the query's memory
    order; offload returns it contiguous (writing S V into that interleaved order measured
    slower: 5.9-6.3 vs 5.3-5.4 ms per MHA forward), which sdpa's contract allows. Keys and
    values broadcast over the batch are not for PyTorch's fused CPU kernel: at the ATen level
    (the dispatcher) they arrive as its math path's two ``bmm``."""
    g = torch.Generator().manual_seed(3)
    n, h, L, d = 2, 3, 5, 4
    if layout == "contiguous":
        q = torch.randn(n, h, L, d, generator=g)
    elif layout == "seq-first":  # nn.MultiheadAttention's: (L, N*H, d) viewed as (N, H, L, d)
        q = torch.randn(L, n * h, d, generator=g).view(L, n, h, d).permute(1, 2, 0, 3)
    elif layout == "batch-first heads":
        q = torch.randn(n, L, h, d, generator=g).transpose(1, 2)
    else:
        q = torch.randn(n, h, L, d, generator=g)
    k = torch.randn(1 if layout == "broadcast kv" else n, h, 6, d, generator=g)
    v = torch.randn(k.shape[:-1] + (d,), generator=g)
    with torch.no_grad():
        want = F.scaled_dot_product_attention(q, k, v)
        with ffaccel.torch.offload("cpu", interception=interception) as session:
            got = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(got, want)
    calls = 2 if interception == "dispatcher" and layout == "broadcast kv" else 1
    assert got.shape == want.shape and session.stats["offloaded_calls"] == calls
    assert session.stats["host_calls"] == 0 and session.stats["offloaded_fraction"] == 1.0


@pytest.mark.parametrize("shape", [(3, 5, 8), (5, 3, 8), (4, 4, 8), (1, 6, 8)])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_linear_on_a_transposed_3d_input_is_one_gemm(shape: tuple, bias: bool) -> None:
    # what nn.MultiheadAttention(batch_first=True) hands its projections: (L, N, E) of an (N, L, E)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape[1], shape[0], shape[2], generator=g).transpose(0, 1)
    w, b = torch.randn(6, 8, generator=g), (torch.randn(6, generator=g) if bias else None)
    with torch.no_grad():
        want = F.linear(x, w, b)
        with ffaccel.torch.offload("cpu") as session:
            got = F.linear(x, w, b)
    torch.testing.assert_close(got, want)
    assert got.is_contiguous() and session.stats["offloaded_calls"] == 1
    assert session.stats["offloaded_flops"] == 2 * shape[0] * shape[1] * 6 * 8


@pytest.mark.parametrize("interception", INTERCEPTIONS)
@pytest.mark.parametrize("broadcast", ["query", "keys"])
def test_attention_over_a_broadcast_batch_counts_every_flop(broadcast: str, interception: str) -> None:
    """A query of batch 1 against keys of batch 2 (or the reverse) makes both GEMMs twice: the FLOPs
    are PyTorch's count (FlopCounterMode on stock PyTorch). The function mode counted the query's
    own batch: half of them for a broadcast query."""
    from torch.utils.flop_counter import FlopCounterMode

    g = torch.Generator().manual_seed(0)
    q = torch.randn(1 if broadcast == "query" else 2, 3, 5, 8, generator=g)
    k = torch.randn(2 if broadcast == "query" else 1, 3, 6, 8, generator=g)
    with FlopCounterMode(display=False) as counter:
        want = F.scaled_dot_product_attention(q, k, k)
    with torch.no_grad(), ffaccel.torch.offload("cpu", interception=interception) as session:
        got = F.scaled_dot_product_attention(q, k, k)
    torch.testing.assert_close(got, want)
    assert session.stats["host_calls"] == 0
    assert session.stats["offloaded_flops"] == counter.get_total_flops() == 2 * 2 * 3 * 5 * 6 * (8 + 8)


@pytest.mark.parametrize("interception", INTERCEPTIONS)
def test_a_matrix_vector_product_is_offloaded_and_counted(interception: str) -> None:
    """``A @ v``, ``torch.mv`` and a batch of matrices times a vector run ``aten::mv``: offloaded with
    2 m k FLOPs each under both interceptions (the dispatcher did not intercept it and counted
    nothing, where the function mode offloaded ``A @ v``); a bad shape is PyTorch's error."""
    g = torch.Generator().manual_seed(0)
    a, a3, v = torch.randn(5, 7, generator=g), torch.randn(2, 5, 7, generator=g), torch.randn(7, generator=g)
    calls = (lambda: a @ v, lambda: torch.mv(a, v), lambda: torch.matmul(a3, v))
    want = [f() for f in calls]
    with torch.no_grad(), ffaccel.torch.offload("cpu", interception=interception) as session:
        got = [f() for f in calls]
        with pytest.raises(RuntimeError):
            torch.mv(a, torch.randn(6, generator=g))
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y)
    assert session.stats["offloaded_calls"] == 3 and session.stats["host_flops"] == 0, session.stats
    assert session.stats["offloaded_flops"] == 2 * 5 * 7 * 4


@pytest.mark.parametrize("interception", INTERCEPTIONS)
def test_host_calls_are_counted_with_their_reason(interception: str) -> None:
    """An int64 GEMM stays on the host as "dtype unsupported", with its FLOPs. A Linear under
    grad: the function mode sees it before autograd and leaves it to PyTorch ("grad required");
    the dispatcher sees its ``aten::addmm`` below autograd, offloads it, and PyTorch's autograd
    still records it (the result has its grad_fn; gradients: test_gradients_under_offload_equal_stock)."""
    lin = torch.nn.Linear(8, 4)
    x = torch.randn(3, 8)
    with ffaccel.torch.offload("cpu", interception=interception) as session:
        y = lin(x)  # grad enabled and weights need grad
        i = torch.ones(3, 3, dtype=torch.int64) @ torch.ones(3, 3, dtype=torch.int64)
        h = torch.ones(2, 2, dtype=torch.float32) @ torch.ones(2, 2, dtype=torch.float64).float()
    assert y.requires_grad and y.grad_fn is not None
    torch.testing.assert_close(y, lin(x))
    assert int(i[0, 0]) == 3 and float(h[0, 0]) == 2.0
    s = session.stats
    assert s["host_reasons"]["dtype unsupported"] == 1
    if interception == "function":
        assert s["host_reasons"]["grad required"] == 1
        assert s["offloaded_calls"] == 1 and s["host_calls"] == 2
        assert s["host_flops"] == 2 * 3 * 4 * 8 + 2 * 27
    else:
        assert s["offloaded_calls"] == 2 and s["host_calls"] == 1 and s["host_flops"] == 2 * 27, s


def test_offload_threads_follow_where_the_device_runs_its_gemms(monkeypatch: pytest.MonkeyPatch) -> None:
    from ffaccel.drivers.cpu import CpuDriver
    from ffaccel.frontends.torch_offload import session as session_mod

    torch.set_num_threads(2)
    try:
        own = Device("cpu", InprocTransport(CpuDriver(kernels="blas")))  # OpenBLAS's own spinning threads
        assert own.thread_pool() == "own"
        with ffaccel.torch.offload(own):
            assert torch.get_num_threads() == 1  # one spinning pool at a time
        assert torch.get_num_threads() == 2
        with ffaccel.torch.offload("torch:cpu"):
            assert torch.get_num_threads() == 2  # GEMMs run in PyTorch's own pool
        with ffaccel.torch.offload(own, threads=None):
            assert torch.get_num_threads() == 2
        with ffaccel.torch.offload(own, threads=3):
            assert torch.get_num_threads() == 3
        assert torch.get_num_threads() == 2
        cpu = ffaccel.open("cpu")
        shared = cpu.thread_pool() == "openmp"  # oneDNN on the OpenMP runtime PyTorch loaded
        with ffaccel.torch.offload(cpu):
            assert torch.get_num_threads() == (2 if shared else 1)
        monkeypatch.setattr(session_mod, "_one_openmp_runtime", lambda: False)  # e.g. PyTorch on Intel's OpenMP
        with ffaccel.torch.offload(cpu):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)  # this module's setting (see the top)


# --------------------------------------------------------------------------------------
# real models, unchanged


def _compare(model: torch.nn.Module, *inputs: torch.Tensor, device: str = "cpu", rtol: float = 1e-4,
             atol: float = 1e-4, interception: str = "dispatcher") -> dict:
    model.eval()
    with torch.inference_mode():
        want = model(*inputs)
        with ffaccel.torch.offload(device, interception=interception) as session:
            got = model(*inputs)
    if hasattr(want, "last_hidden_state"):
        want, got = want.last_hidden_state, got.last_hidden_state
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)
    assert session.stats["offloaded_fraction"] >= 0.95, session.stats
    return session.stats


@pytest.mark.parametrize("interception", INTERCEPTIONS)
def test_mlp(interception: str) -> None:
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                              torch.nn.Linear(64, 10))
    stats = _compare(mlp, torch.randn(16, 32), interception=interception)
    assert stats["offloaded_calls"] == 3 and stats["host_calls"] == 0


@pytest.mark.parametrize("interception", INTERCEPTIONS)
@pytest.mark.parametrize("need_weights", [True, False])
def test_multihead_attention_layer_gemms_are_offloaded(need_weights: bool, interception: str) -> None:
    # nn.MultiheadAttention hides its GEMMs from a function mode in a fused fast path and a
    # Python composite; the function-mode session opens both. The dispatcher sees the fast path's
    # own ATen GEMMs. Either way all projection/attention GEMMs are offloaded.
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(64, 4, batch_first=True)
    x = torch.randn(2, 16, 64)

    class Wrap(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return mha(x, x, x, need_weights=need_weights)[0]

    stats = _compare(Wrap(), x, interception=interception)
    qkv, attn, out = 2 * 32 * 64 * 192, 2 * 2 * (2 * 4 * 16 * 16 * 16), 2 * 32 * 64 * 64
    assert stats["offloaded_flops"] == qkv + attn + out and stats["host_calls"] == 0
    assert torch.backends.mha.get_fastpath_enabled()  # restored after the session


@pytest.mark.parametrize("interception", INTERCEPTIONS)
def test_one_session_object_entered_again_and_from_two_threads_ends_cleanly(interception: str) -> None:
    """``with s: with s:`` and ``with s:`` in two threads at once count every call in ``s`` and
    leave nothing active after the last exit. The session kept one interception per object: the
    second entry replaced the first, whose runner (or function mode) then stayed active on its
    thread after every exit, offloading and counting that thread's calls for good."""
    a = torch.randn(8, 8)
    session = ffaccel.torch.offload("cpu", interception=interception)
    with torch.no_grad():
        with session:
            with session:
                a @ a
            a @ a
        both = threading.Barrier(2, timeout=60)

        def other() -> None:
            with session:
                both.wait()
                a @ a
                both.wait()

        t = threading.Thread(target=other)
        t.start()
        with session:  # both entries active at once; the calls one after the other (the counts are
            both.wait()  # plain dict updates, not made for two threads counting at the same instant)
            both.wait()
            a @ a
        t.join(60)
        assert session.stats["offloaded_calls"] == 4
        a @ a  # after every exit: PyTorch's, not counted
    assert session.stats["offloaded_calls"] == 4 and session.stats["host_calls"] == 0
    assert torch._C._len_torch_function_stack() == 0


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")  # the stock fast path's own
def test_a_function_session_leaves_other_threads_attention_fast_path_alone() -> None:
    """PyTorch's fused MHA / encoder fast path is a process-wide switch. The function mode turned it
    off for its session, so another thread's stock encoder ran the slow path meanwhile (its output
    at padded positions is not the fast path's zeros), and two overlapping sessions in two threads
    left it off for good. A function mode needs no switch: with a mode active these layers take
    their ordinary path by themselves (``has_torch_function``), which test_multihead_attention_
    layer_gemms_are_offloaded checks is offloaded whole."""
    torch.manual_seed(0)
    enc = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(16, 4, 32, batch_first=True), 2,
                                      enable_nested_tensor=True).eval()
    x = torch.randn(2, 5, 16)
    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[0, 3:] = True
    with torch.no_grad():
        want = enc(x, src_key_padding_mask=pad)
    opened, done = threading.Event(), threading.Event()
    seen: dict = {}

    def other() -> None:
        try:
            assert opened.wait(60)
            with torch.no_grad():
                seen["out"] = enc(x, src_key_padding_mask=pad)
            with ffaccel.torch.offload("cpu", interception="function"):  # overlapping sessions
                done.set()
        finally:
            done.set()

    t = threading.Thread(target=other)
    t.start()
    with ffaccel.torch.offload("cpu", interception="function"):
        opened.set()
        assert done.wait(60)
    t.join(60)
    assert torch.equal(seen["out"], want)
    assert torch.backends.mha.get_fastpath_enabled()


def test_transformer_encoder_layer() -> None:
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(64, 4, 128, batch_first=True)
    stats = _compare(layer, torch.randn(2, 16, 64))
    assert stats["offloaded_calls"] >= 5 and stats["host_calls"] == 0


def test_mlp_bf16_on_torch_driver() -> None:
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).to(torch.bfloat16)
    # bf16 results: the epilogue rounds once where PyTorch may round twice; a few bf16 ulps apart
    _compare(mlp, torch.randn(16, 32).to(torch.bfloat16), device="torch:cpu", rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("interception", INTERCEPTIONS)
def test_cnn_convolutions_are_offloaded(interception: str) -> None:
    torch.manual_seed(0)
    cnn = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(),
        torch.nn.Linear(16 * 16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    stats = _compare(cnn, torch.randn(4, 3, 16, 16), interception=interception)
    assert stats["offloaded_calls"] == 4 and stats["host_calls"] == 0  # two convolutions, two Linear layers


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_bert_encoder(impl: str) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=64, attn_implementation=impl)
    model = transformers.BertModel(cfg)
    ids = torch.randint(0, 128, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 11:] = 0  # padding: the attention mask reaches the fused epilogue as add(E)
    stats = _compare(model, ids, mask)
    # per layer: q, k, v, attention output, intermediate, output (+ 2 attention GEMMs) and the pooler
    assert stats["offloaded_calls"] >= 2 * 6 + 1 and stats["host_calls"] == 0


@pytest.mark.parametrize("interception", INTERCEPTIONS)
def test_a_call_the_device_refuses_midway_counts_only_on_the_host(monkeypatch, interception: str) -> None:
    """A 2-LSTM-layer call the device refuses in its second layer's first step: PyTorch redoes
    the refused call, and the device work done for it before the refusal is not counted. The
    refused call is the whole ``torch.lstm`` for the function mode, the second layer's
    ``aten::mkldnn_rnn_layer`` for the dispatcher (its first layer stays offloaded)."""
    from ffaccel.frontends.torch_offload import runner

    real = runner.matmul
    calls = []

    def refusing(*a, **kw):
        calls.append(1)
        if len(calls) == 8:  # past layer 1 (input GEMM + 5 steps) and layer 2's input GEMM: its first step
            raise ffaccel.FFAccelError(ffaccel.ErrorCode.UNSUPPORTED, "a", "refused for the test")
        return real(*a, **kw)

    monkeypatch.setattr(runner, "matmul", refusing)
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(4, 6, num_layers=2).eval()
    x = torch.randn(5, 2, 4)
    with torch.inference_mode():
        want = lstm(x)[0]
        with ffaccel.torch.offload("cpu", interception=interception) as session:
            got = lstm(x)[0]
    torch.testing.assert_close(got, want)
    s = session.stats
    layer1, layer2 = 2 * 5 * 2 * 24 * (4 + 6), 2 * 5 * 2 * 24 * (6 + 6)  # T N 4H (I + H), both layers
    if interception == "dispatcher":
        assert s["offloaded_calls"] == 6 and s["offloaded_flops"] == layer1 and s["host_flops"] == layer2, s
    else:
        assert s["offloaded_calls"] == 0 and s["offloaded_flops"] == 0 and s["host_flops"] == layer1 + layer2, s
    assert len(calls) == 8 and s["host_reasons"] == {"device refused (UNSUPPORTED)": 1}


@pytest.mark.parametrize("interception", INTERCEPTIONS)
def test_greedy_decoding_with_a_kv_cache_is_offloaded_and_unchanged(interception: str) -> None:
    # batch-1 decoding: m = 1 GEMMs, attention against a KV cache that grows every step
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=96, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                  bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    prompt = torch.randint(1, 96, (1, 5))

    def decode() -> torch.Tensor:
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, min_new_tokens=6,
                              do_sample=False, pad_token_id=0)

    with torch.inference_mode():
        want = decode()
        with ffaccel.torch.offload("cpu", interception=interception) as session:
            got = decode()
    assert torch.equal(got, want)
    s = session.stats
    # 6 forward passes (the prompt, then one per new token): 2 layers x (qkv, attention, proj, 2 MLP) + the head
    assert s["offloaded_calls"] == 6 * (2 * 5 + 1) and s["host_calls"] == 0 and s["offloaded_fraction"] == 1.0, s


def test_a_session_exited_twice_is_a_named_error_and_still_works_after() -> None:
    """``session.__exit__`` twice (or a `with` block exited by hand as well) was an IndexError from
    an internal list; now INVALID_PARAMETER naming the session, and PyTorch is left as it was."""
    from ffaccel.spec import ErrorCode, FFAccelError

    lin = torch.nn.Linear(4, 2)
    session = ffaccel.torch.offload("cpu")
    with torch.no_grad(), session:
        pass
    with pytest.raises(FFAccelError) as e:
        session.__exit__(None, None, None)
    assert (e.value.code, e.value.param) == (ErrorCode.INVALID_PARAMETER, "session")
    with torch.no_grad(), session:  # entered again: it still offloads
        lin(torch.ones(3, 4))
    assert session.stats["offloaded_calls"] == 1
