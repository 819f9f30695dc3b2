"""Convolutions under offload: im2col + device GEMM, against torch.nn.functional.conv*d."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import ffaccel.torch  # noqa: E402

# PyTorch warns about its own copy for an even kernel with padding="same" (the reference side)
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")

# (dims, in channels, out channels, kernel, stride, padding, dilation, groups, batch, spatial)
CASES = [
    (2, 3, 4, 3, 1, 1, 1, 1, 2, 7),
    (2, 3, 4, 3, 2, 0, 1, 1, 1, 8),
    (2, 4, 6, (3, 2), (2, 1), (1, 0), (1, 2), 2, 3, 9),
    (2, 4, 4, 3, 1, "same", 2, 4, 2, 6),  # depthwise, dilated, 'same'
    (2, 3, 5, 4, 1, "same", 1, 1, 2, 6),  # even kernel: 'same' pads one more on the right
    (2, 3, 5, 3, 1, "valid", 1, 1, 1, 5),
    (2, 6, 8, 1, 1, 0, 1, 1, 3, 5),  # 1x1: no im2col copy
    (2, 6, 8, 1, 2, 0, 1, 2, 2, 5),  # 1x1, strided, grouped
    (1, 3, 4, 3, 1, 1, 1, 1, 2, 11),
    (1, 4, 6, 5, 3, 2, 2, 2, 1, 20),
    (1, 2, 3, 4, 1, "same", 3, 1, 2, 9),
    (3, 2, 3, 3, 1, 1, 1, 1, 2, 5),
    (3, 4, 4, (2, 3, 1), (1, 2, 1), (0, 1, 0), 1, 2, 1, 5),
]


def _conv(nd: int):
    return {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]


def _run(fn, *args):
    with torch.inference_mode():
        want = fn(*args)
        with ffaccel.torch.offload("cpu") as session:
            got = fn(*args)
    return want, got, session.stats


# 1-D convolutions have no channels-last memory format
_LAYOUTS = [(i, lay) for i, c in enumerate(CASES) for lay in ("contiguous", "channels_last", "unbatched")
            if not (lay == "channels_last" and c[0] == 1)]


@pytest.mark.parametrize("i, layout", _LAYOUTS, ids=[f"c{i}-{lay}" for i, lay in _LAYOUTS])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_conv_matches_functional(i: int, layout: str, with_bias: bool) -> None:
    case = CASES[i]
    nd, cin, cout, k, stride, padding, dilation, groups, batch, size = case
    g = torch.Generator().manual_seed(hash((case, layout)) % 2**31)
    ks = (k,) * nd if isinstance(k, int) else k
    x = torch.randn(batch, cin, *(size,) * nd, generator=g)
    w = torch.randn(cout, cin // groups, *ks, generator=g)
    b = torch.randn(cout, generator=g) if with_bias else None
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last if nd == 2 else torch.channels_last_3d)
    if layout == "unbatched":
        x = x[0]
    want, got, stats = _run(lambda x: _conv(nd)(x, w, b, stride, padding, dilation, groups), x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    if layout == "channels_last":  # the same memory format as PyTorch's result, not only the values
        assert got.stride() == want.stride()
    assert stats["host_calls"] == 0 and stats["offloaded_calls"] == 1, stats
    assert stats["offloaded_fraction"] == 1.0


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_every_padding_mode_of_the_module(mode: str, nd: int) -> None:
    torch.manual_seed(nd)
    conv = getattr(torch.nn, f"Conv{nd}d")(3, 4, 3, padding=1, padding_mode=mode).eval()
    x = torch.randn(2, 3, *(6,) * nd)
    want, got, stats = _run(conv, x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert stats["offloaded_calls"] == 1 and stats["host_calls"] == 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_conv_dtypes(dtype) -> None:
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 3, 6, 6).to(dtype), torch.randn(4, 3, 3, 3).to(dtype), torch.randn(4).to(dtype)
    want, got, stats = _run(lambda x: F.conv2d(x, w, b, padding=1), x)
    tol = 1e-10 if dtype == torch.float64 else 3e-2
    torch.testing.assert_close(got.double(), want.double(), rtol=tol, atol=tol * 10)
    assert stats["offloaded_calls"] == 1


@pytest.mark.parametrize("interception", ["dispatcher", "function"])
def test_conv_under_grad_is_counted_where_it_runs(interception: str) -> None:
    """The function mode sees the call before autograd and leaves it to PyTorch ("grad
    required"); the dispatcher sees ``aten::convolution`` below autograd and offloads it (autograd
    still records it: gradients in test_gradients_under_offload_equal_stock)."""
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(2, 3, 6, 6)
    with ffaccel.torch.offload("cpu", interception=interception) as session:
        y = conv(x)
    assert y.grad_fn is not None
    torch.testing.assert_close(y, conv(x), rtol=1e-4, atol=1e-4)
    s = session.stats
    flops = 2 * 2 * 4 * 16 * 27
    if interception == "function":
        assert s["host_reasons"] == {"grad required": 1}
        assert s["host_flops"] == flops and s["offloaded_fraction"] == 0.0
    else:
        assert s["host_calls"] == 0 and s["offloaded_flops"] == flops, s


# (dims, in channels, out channels, kernel, stride, padding, output padding, groups, dilation, batch)
T_CASES = [
    (1, 4, 6, 3, 2, 1, 1, 2, 1, 2),
    (1, 3, 5, 2, 1, 0, 0, 1, 2, 1),
    (2, 4, 6, 3, 2, 1, 1, 2, 1, 2),
    (2, 3, 5, 2, 1, 0, 0, 1, 2, 1),
    (2, 4, 4, (3, 2), (2, 3), (1, 0), (1, 2), 4, 1, 3),
]


@pytest.mark.parametrize("case", T_CASES, ids=[f"t{i}" for i in range(len(T_CASES))])
@pytest.mark.parametrize("layout", ["contiguous", "unbatched"])
def test_transposed_convolution_matches_functional(case, layout: str) -> None:
    nd, cin, cout, k, stride, padding, out_pad, groups, dilation, batch = case
    g = torch.Generator().manual_seed(len(str(case)))
    ks = (k,) * nd if isinstance(k, int) else k
    x = torch.randn(batch, cin, *(5,) * nd, generator=g)
    w, b = torch.randn(cin, cout // groups, *ks, generator=g), torch.randn(cout, generator=g)
    if layout == "unbatched":
        x = x[0]
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d}[nd]
    want, got, stats = _run(lambda x: fn(x, w, b, stride, padding, out_pad, groups, dilation), x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert stats["offloaded_calls"] == 1 and stats["host_calls"] == 0, stats


def test_3d_transposed_convolution_is_counted_on_the_host() -> None:
    torch.manual_seed(0)
    up = torch.nn.ConvTranspose3d(4, 3, 3, stride=2).eval()
    x = torch.randn(2, 4, 3, 3, 3)
    want, got, stats = _run(up, x)
    torch.testing.assert_close(got, want)
    assert stats["offloaded_calls"] == 0 and stats["host_flops"] == 2 * 2 * 4 * 27 * 3 * 27
    assert stats["host_reasons"] == {"not offloaded (conv_transpose3d)": 1}, stats


@pytest.mark.parametrize("interception", ["dispatcher", "function"])
@pytest.mark.parametrize("case", ["channels-last weight", "transposed, channels-last input",
                                  "3-D f64, channels-last input"])
def test_the_output_has_the_strides_pytorch_gives_it(case: str, interception: str) -> None:
    """PyTorch's output layout follows its backend, not the input's format alone: channels-last for a
    channels-last weight and for a channels-last transposed convolution; contiguous for a 3-D f64
    convolution of a channels-last input (its slow kernel). Offload followed the input only, so code
    that relies on the strides (``.view`` after a permute) saw others than stock's."""
    g = torch.Generator().manual_seed(0)
    last = torch.channels_last
    if case == "channels-last weight":
        fn, x = F.conv2d, torch.randn(2, 3, 6, 6, generator=g)
        w = torch.randn(4, 3, 3, 3, generator=g).to(memory_format=last)
    elif case == "transposed, channels-last input":
        fn, x = F.conv_transpose2d, torch.randn(2, 3, 5, 5, generator=g).to(memory_format=last)
        w = torch.randn(3, 4, 3, 3, generator=g)
    else:
        fn = F.conv3d
        x = torch.randn(2, 3, 4, 5, 5, generator=g, dtype=torch.float64).to(memory_format=torch.channels_last_3d)
        w = torch.randn(4, 3, 3, 3, 3, generator=g, dtype=torch.float64)
    with torch.no_grad():
        want = fn(x, w)
        with ffaccel.torch.offload("cpu", interception=interception) as session:
            got = fn(x, w)
    torch.testing.assert_close(got, want)
    assert got.stride() == want.stride()
    assert session.stats["offloaded_calls"] == 1


@pytest.mark.parametrize("interception", ["dispatcher", "function"])
@pytest.mark.parametrize("case", ["no output channels", "no input channels", "transposed, no input channels"])
def test_a_convolution_without_channels_is_pytorchs(case: str, interception: str) -> None:
    """PyTorch refuses a weight of no output channels (and a transposed convolution of no input
    channels) and returns an empty result of no channels for an input of none; the im2col GEMM
    answered the first two and gave zeros of the weight's output channels for the third."""
    g = torch.Generator().manual_seed(0)
    if case == "no output channels":
        call = lambda: F.conv2d(torch.randn(2, 3, 6, 6, generator=g), torch.randn(0, 3, 3, 3, generator=g))
    elif case == "no input channels":
        call = lambda: F.conv2d(torch.randn(2, 0, 6, 6, generator=g), torch.randn(4, 0, 3, 3, generator=g))
    else:
        call = lambda: F.conv_transpose2d(torch.randn(2, 0, 5, 5, generator=g), torch.randn(0, 4, 3, 3, generator=g))
    try:
        want = call()
    except RuntimeError:
        want = None
    with torch.no_grad(), ffaccel.torch.offload("cpu", interception=interception) as session:
        if want is None:
            with pytest.raises(RuntimeError):
                call()
        else:
            got = call()
            assert got.shape == want.shape
    assert session.stats["offloaded_calls"] == 0
