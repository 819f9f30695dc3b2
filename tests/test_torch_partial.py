"""PyTorch offload on a partial device: the GEMMs it can do go, whatever the op around them needs.

The partial device is the ``cpu`` driver declaring only what the ``npu`` driver declares
(int8 -> int32 and bf16 -> f32 GEMMs with a bf16 or f32 D, bias and ReLU, one COPY), opened
by name through the runtime as ``offload`` opens any device. Where the ``npu`` driver is
installed the same tests run on it too.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import ffaccel  # noqa: E402
import ffaccel.drivers  # noqa: E402
import ffaccel.torch  # noqa: E402
from ffaccel.abi import DeviceCaps  # noqa: E402
from ffaccel.drivers.cpu import CpuDriver  # noqa: E402
from ffaccel.frontends.torch_offload import DTYPE, LAYOUT, POST_OP, SIZE  # noqa: E402
from ffaccel.frontends.torch_offload.fit import refusal_reason  # noqa: E402
from ffaccel.spec import GEMM_COMBOS, DType, Limits, PostOpKind, violation  # noqa: E402

_NPU_COMBOS = {(DType.I8, DType.I8, DType.I32), (DType.BF16, DType.BF16, DType.BF16),
               (DType.BF16, DType.BF16, DType.F32)}


def _caps(combos: set, post_ops: set, limits: Limits = Limits()) -> DeviceCaps:
    return DeviceCaps(combos=frozenset(c for c in GEMM_COMBOS if (c.a, c.b, c.d) in combos),
                      copies=frozenset({(DType.BF16, DType.BF16)}), post_ops=frozenset(post_ops), limits=limits)


class NpuSubsetCpu(CpuDriver):
    """The cpu driver declaring the npu's subset: int8 -> int32, bf16 -> bf16|f32, bias and ReLU."""

    name = "npu-subset"

    def caps(self) -> DeviceCaps:
        return _caps(_NPU_COMBOS, {PostOpKind.BIAS_N, PostOpKind.BIAS_M, PostOpKind.RELU})


class F16OnlyCpu(CpuDriver):
    """A device with f16 -> f32 GEMMs and no post-ops at all."""

    name = "f16-only"

    def caps(self) -> DeviceCaps:
        return _caps({(DType.F16, DType.F16, DType.F32)}, set())


class SmallCpu(CpuDriver):
    """Everything, but no dimension beyond 32."""

    name = "small"

    def caps(self) -> DeviceCaps:
        return DeviceCaps(limits=Limits(max_dim=32))


_TEST_DRIVERS = {"npu-subset": NpuSubsetCpu, "f16-only": F16OnlyCpu, "small": SmallCpu}
#: the partial devices every model test runs on: the subset, and the npu driver where installed
PARTIAL = ["npu-subset"] + (["npu"] if "npu" in ffaccel.devices() else [])


@pytest.fixture(autouse=True)
def _registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test drivers, installed as a plug-in would be (by name, in the driver table)."""
    for name, cls in _TEST_DRIVERS.items():
        monkeypatch.setitem(ffaccel.drivers._BUILTIN, name, f"{__name__}:{cls.__name__}")


def _bf16_tolerance(want: torch.Tensor) -> dict:
    """bf16 inputs (8 significant bits), f32 accumulation: a few bf16 ulps of the output's scale."""
    return dict(rtol=2e-2, atol=2e-2 * float(want.abs().max()))


@pytest.mark.parametrize("device", PARTIAL)
@pytest.mark.parametrize("need_weights", [False, True])
def test_bf16_multihead_attention_offloads_its_gemms(device: str, need_weights: bool) -> None:
    # need_weights=False: scaled_dot_product_attention (its scale is the GEMM's alpha, no
    # post-op the device lacks); True: the composite's bmm path
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(64, 4).to(torch.bfloat16).eval()
    x = torch.randn(16, 2, 64).to(torch.bfloat16)
    with torch.no_grad():
        want = mha(x, x, x, need_weights=need_weights)[0]
        with ffaccel.torch.offload(device) as session:
            got = mha(x, x, x, need_weights=need_weights)[0]
    s = session.stats
    assert s["offloaded_fraction"] >= 0.95, s
    assert s["offloaded_flops"] == 2 * 32 * 64 * 192 + 2 * 2 * (2 * 4 * 16 * 16 * 16) + 2 * 32 * 64 * 64
    assert s["host_calls"] == 0 and s["relaxed_calls"] == 0, s
    torch.testing.assert_close(got.float(), want.float(), **_bf16_tolerance(want.float()))


def _encoder() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(64, 4, 128, batch_first=True)
    return torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval(), torch.randn(2, 16, 64)


@pytest.mark.parametrize("interception", ["dispatcher", "function"])
@pytest.mark.parametrize("device", PARTIAL)
def test_f32_encoder_runs_relaxed_in_bf16_within_bf16_tolerance(device: str, interception: str) -> None:
    model, x = _encoder()
    with torch.no_grad():
        want = model(x)
        with ffaccel.torch.offload(device, relaxed="bf16", interception=interception) as session:
            got = model(x)
    s = session.stats
    assert s["offloaded_fraction"] >= 0.95 and s["host_calls"] == 0, s
    assert s["relaxed_flops"] == s["offloaded_flops"] > 0 and s["relaxed_calls"] == s["offloaded_calls"]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, **_bf16_tolerance(want))
    assert not torch.equal(got, want)  # it did run in bf16: f32 would agree to a few f32 ulps


@pytest.mark.parametrize("interception", ["dispatcher", "function"])
@pytest.mark.parametrize("device", PARTIAL)
def test_f32_cnn_runs_relaxed_in_bf16_within_bf16_tolerance(device: str, interception: str) -> None:
    """A batch of images through convolutions with a bias: each convolution is one batched GEMM
    (the weight shared by the batch) with the bias along m; the npu's post-processing unit, which
    reads the bias per batch entry, raised IndexError here before the front-end handed it the
    bias with the GEMM's batch."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3, stride=2),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 2 * 2, 5)).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        want = model(x)
        with ffaccel.torch.offload(device, relaxed="bf16", interception=interception) as session:
            got = model(x)
    s = session.stats
    assert s["offloaded_fraction"] == 1.0 and s["host_calls"] == 0 and s["offloaded_calls"] == 3, s
    torch.testing.assert_close(got, want, **_bf16_tolerance(want))


@pytest.mark.parametrize("device", PARTIAL)
@pytest.mark.parametrize("relaxed", [None, "bf16"])
def test_lstm_on_a_partial_device_runs_relaxed_or_stays_whole_on_the_host(device: str, relaxed: str) -> None:
    # the layer's own step loop (gate buffers made once per direction) on a device without f32 GEMMs
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(6, 8, num_layers=2, bidirectional=True, batch_first=True).eval()
    x = torch.randn(3, 5, 6)
    with torch.no_grad():
        want = lstm(x)
        with ffaccel.torch.offload(device, relaxed=relaxed) as session:
            got = lstm(x)
    s = session.stats
    if relaxed is None:  # one host call, whole: no step of it counted on the device
        torch.testing.assert_close(got, want)
        assert s["offloaded_calls"] == 0 and set(s["host_reasons"]) == {f"{DTYPE} (f32xf32->f32->f32)"}, s
        return
    assert s["host_calls"] == 0 and s["relaxed_calls"] == s["offloaded_calls"] == 4 * (1 + 5), s
    for g, w in zip((got[0], *got[1]), (want[0], *want[1])):
        torch.testing.assert_close(g, w, **_bf16_tolerance(w))


@pytest.mark.parametrize("device", PARTIAL)
def test_relaxed_is_off_by_default_and_the_reason_names_the_dtype(device: str) -> None:
    model, x = _encoder()
    with torch.no_grad():
        want = model(x)
        with ffaccel.torch.offload(device) as session:
            got = model(x)
    s = session.stats
    torch.testing.assert_close(got, want)  # PyTorch ran every GEMM itself
    assert s["offloaded_flops"] == 0 and s["relaxed_calls"] == 0 and s["host_flops"] > 0
    assert set(s["host_reasons"]) == {f"{DTYPE} (f32xf32->f32->f32)"}, s


def test_relaxed_never_changes_a_device_with_f32() -> None:
    model, x = _encoder()
    with torch.no_grad():
        with ffaccel.torch.offload("cpu") as plain:
            want = model(x)
        with ffaccel.torch.offload("cpu", relaxed="bf16") as relaxed:
            got = model(x)
    assert torch.equal(got, want) and relaxed.stats["relaxed_calls"] == 0
    assert relaxed.stats["offloaded_flops"] == plain.stats["offloaded_flops"] > 0


def test_relaxed_f16_on_a_device_with_f16_and_no_post_ops() -> None:
    # the bias the device lacks runs on the host after the f16 GEMM, in f32
    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 40)
    x = torch.randn(8, 48)
    with torch.no_grad():
        want = lin(x)
        with ffaccel.torch.offload("f16-only", relaxed="f16") as session:
            got = lin(x)
    s = session.stats
    assert s["offloaded_calls"] == 1 and s["relaxed_calls"] == 1 and s["offloaded_fraction"] == 1.0
    assert s["host_reasons"] == {f"{POST_OP} (bias_n)": 1}, s
    torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3 * float(want.abs().max()))


@pytest.mark.parametrize("device", PARTIAL)
def test_a_post_op_the_device_lacks_runs_on_the_host_after_the_device_gemm(device: str) -> None:
    # addmm + GELU in one call (what PyTorch's Linear+GELU fusion hands over): the GEMM and its
    # bias on the device, the GELU on the host in f32 on the f32 D, then one rounding to bf16
    torch.manual_seed(0)
    x, w, b = (torch.randn(16, 32).to(torch.bfloat16), torch.randn(24, 32).to(torch.bfloat16),
               torch.randn(24).to(torch.bfloat16))
    with torch.no_grad():
        with ffaccel.torch.offload(device) as session:
            got = torch._addmm_activation(b, x, w.T, use_gelu=True)
    want = F.gelu(x.float() @ w.float().T + b.float()).to(torch.bfloat16)  # rounded once
    torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)
    s = session.stats
    assert got.dtype == torch.bfloat16 and s["offloaded_calls"] == 1 and s["offloaded_fraction"] == 1.0
    assert s["host_reasons"] == {f"{POST_OP} (gelu_erf)": 1} and s["host_flops"] == 0, s


@pytest.mark.parametrize("interception", ["dispatcher", "function"])
@pytest.mark.parametrize("device", PARTIAL)
def test_attention_mask_is_added_on_the_host_when_the_device_lacks_add(device: str, interception: str) -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 8, 16).to(torch.bfloat16) for _ in range(3))
    mask = torch.rand(8, 8) > 0.3
    mask[:, 0] = True  # no fully masked row
    with torch.no_grad():
        want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
        with ffaccel.torch.offload(device, interception=interception) as session:
            got = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(got.float(), want, **_bf16_tolerance(want))
    s = session.stats
    assert s["offloaded_calls"] == 1 and s["offloaded_fraction"] == 1.0
    assert s["host_reasons"] == {f"{POST_OP} (add)": 1}, s


@pytest.mark.parametrize("device", PARTIAL)
def test_dtype_and_post_op_reasons_differ_and_name_what_is_missing(device: str) -> None:
    torch.manual_seed(0)
    x16, w16 = torch.randn(8, 16).half(), torch.randn(4, 16).half()
    xb, wb, bb = x16.bfloat16(), w16.bfloat16(), torch.randn(4).bfloat16()
    with torch.no_grad():
        with ffaccel.torch.offload(device) as session:
            y16 = F.linear(x16, w16)  # f16: the device has no f16 GEMM
            yb = torch._addmm_activation(bb, xb, wb.T, use_gelu=True)  # bf16 GEMM + GELU it lacks
    torch.testing.assert_close(y16, F.linear(x16, w16))
    torch.testing.assert_close(yb, F.gelu(F.linear(xb, wb, bb)), rtol=2e-2, atol=2e-2)
    reasons = session.stats["host_reasons"]
    assert reasons == {f"{DTYPE} (f16xf16->f32->f16)": 1, f"{POST_OP} (gelu_erf)": 1}, reasons


def test_a_size_beyond_the_device_limits_is_named() -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 64)  # n = 64 > max_dim 32
    x = torch.randn(8, 16)
    with torch.no_grad():
        with ffaccel.torch.offload("small") as session:
            got = lin(x)
        torch.testing.assert_close(got, lin(x))
    assert session.stats["host_reasons"] == {f"{SIZE} (n)": 1}, session.stats


def test_refusals_are_named_by_their_kind() -> None:
    layout = violation("operand.alignment", 3, "a multiple of 8", operand="a")
    assert refusal_reason(layout) == f"{LAYOUT} (a.offset_bytes)"
    assert refusal_reason(violation("gemm.combo_supported", "f32", "bf16")) == f"{DTYPE} (dtypes)"
    assert refusal_reason(violation("memory.quota", 1 << 40, "less")) == f"{SIZE} (size_bytes)"


@pytest.mark.parametrize("interception", ["dispatcher", "function"])
@pytest.mark.parametrize("device", PARTIAL)
def test_a_decode_step_linear_falls_back_with_its_reason_in_f32_and_goes_in_bf16(device: str, interception: str
                                                                                ) -> None:
    # GPT-2's Conv1D at batch 1 (an addmm of 1 x 256 x 768 with a bias): f32 is not on the device
    g = torch.Generator().manual_seed(0)
    c, a, b = torch.randn(768, generator=g), torch.randn(1, 256, generator=g), torch.randn(256, 768, generator=g)
    with torch.no_grad():
        with ffaccel.torch.offload(device, interception=interception) as session:
            got32 = torch.addmm(c, a, b)
            got16 = torch.addmm(c.bfloat16(), a.bfloat16(), b.bfloat16())
    assert torch.equal(got32, torch.addmm(c, a, b))  # PyTorch's own kernel ran it
    want16 = torch.addmm(c, a.bfloat16().float(), b.bfloat16().float())
    torch.testing.assert_close(got16.float(), want16, **_bf16_tolerance(want16))
    s = session.stats
    flops = 2 * 256 * 768
    assert s["host_reasons"] == {f"{DTYPE} (f32xf32->f32->f32)": 1} and s["host_flops"] == flops, s
    assert s["offloaded_calls"] == 1 and s["offloaded_flops"] == flops and s["offloaded_fraction"] == 0.5


@pytest.mark.parametrize("interception", ["dispatcher", "function"])
def test_int8_gemm_goes_to_the_partial_device(interception: str) -> None:
    a = torch.randint(-128, 127, (32, 64), dtype=torch.int8)
    b = torch.randint(-128, 127, (64, 32), dtype=torch.int8)
    with torch.no_grad():
        with ffaccel.torch.offload("npu-subset", interception=interception) as session:
            got = torch._int_mm(a, b)
    assert torch.equal(got, a.int() @ b.int()) and session.stats["offloaded_calls"] == 1


def test_the_host_epilogue_matches_the_device_epilogue() -> None:
    # every post-op kind on the host gives what the full cpu device gives in its epilogue
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((8, 16)).astype(np.float32), rng.standard_normal((16, 12)).astype(np.float32)
    ops = [ffaccel.post.bias(rng.standard_normal(12).astype(np.float32)),
           ffaccel.post.bias(rng.standard_normal(8).astype(np.float32), axis="m"), ffaccel.post.scale(0.5),
           ffaccel.post.gelu("tanh")]
    ops2 = [ffaccel.post.add(rng.standard_normal((8, 12)).astype(np.float32)), ffaccel.post.clamp(-0.5, 0.7),
            ffaccel.post.gelu(), ffaccel.post.relu()]
    from ffaccel.frontends.torch_offload.fit import finish_on_host

    for post in (ops, ops2):
        want = ffaccel.matmul(a, b, post_ops=post, device="cpu")
        got = finish_on_host(ffaccel.matmul(a, b, device="cpu"), post, None)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
