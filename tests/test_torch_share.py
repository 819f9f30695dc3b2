"""The offloaded share against an independent count: torch.utils.flop_counter.FlopCounterMode.

The independent count runs the stock model under ``FlopCounterMode`` with PyTorch's fused CPU
kernels that have no FLOP formula switched off (oneDNN for the LSTM, the fused attention
kernel and the MHA fast path), so that every GEMM is one of the library's own priced ops and
none of ffaccel's code takes part in the count.
"""

from __future__ import annotations

import contextlib

import pytest

torch = pytest.importorskip("torch")
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import ffaccel.torch  # noqa: E402


def _independent(model: torch.nn.Module, *inputs: torch.Tensor) -> FlopCounterMode:
    torch.backends.mha.set_fastpath_enabled(False)
    saved = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.no_grad())
            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
            fc = stack.enter_context(FlopCounterMode(display=False))
            model(*inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
        torch.backends.mkldnn.enabled = saved
    return fc


INTERCEPTIONS = ["dispatcher", "function"]


def _offloaded(model: torch.nn.Module, *inputs: torch.Tensor, interception: str = "dispatcher") -> dict:
    with torch.inference_mode(), ffaccel.torch.offload("cpu", interception=interception) as session:
        model(*inputs)
    return session.stats


class _Host(torch.nn.Module):
    """Work with no device lowering: a 3-D transposed convolution and an einsum."""

    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.ConvTranspose3d(8, 4, (1, 2, 2), stride=(1, 2, 2))
        self.w = torch.nn.Parameter(torch.randn(4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nchw,cd->ndhw", self.up(x.unsqueeze(2)).squeeze(2), self.w)


class _Mixed(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.down = torch.nn.Conv2d(8, 8, 2, stride=2)
        self.up = torch.nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.host = _Host()
        self.head = torch.nn.Linear(4 * 16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(self.down(torch.relu(self.conv(x))))
        return self.head(self.host(y).flatten(1))


def _models() -> dict:
    torch.manual_seed(0)
    cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Conv2d(8, 16, 3, stride=2, groups=2), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(16 * 3 * 3, 10))
    enc = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2,
                                      enable_nested_tensor=False)
    lstm = torch.nn.LSTM(8, 16, num_layers=2, bidirectional=True)
    gru = torch.nn.GRU(8, 16, batch_first=True)
    return {
        "cnn": (cnn, (torch.randn(2, 3, 16, 16),), None),
        "transformer": (enc, (torch.randn(2, 10, 32),), None),
        "lstm": (lstm, (torch.randn(7, 2, 8),), None),
        "gru": (gru, (torch.randn(2, 7, 8),), None),
        "mixed": (_Mixed(), (torch.randn(2, 3, 8, 8),), "host"),
    }


@pytest.mark.parametrize("interception", INTERCEPTIONS)
@pytest.mark.parametrize("name", list(_models()))
def test_share_agrees_with_flop_counter(name: str, interception: str) -> None:
    """The mixed model's host work: a 3-D transposed convolution (no lowering either way) and an
    ``einsum``, which the function mode sees whole (no lowering: on the host) and the dispatcher
    as the ``bmm`` PyTorch runs it with (offloaded)."""
    model, inputs, host_module = _models()[name]
    model.eval()
    fc = _independent(model, *inputs)
    total = fc.get_total_flops()
    if host_module and interception == "dispatcher":
        host_module += ".up"
    host = sum(fc.get_flop_counts()[f"{type(model).__name__}.{host_module}"].values()) if host_module else 0
    stats = _offloaded(model, *inputs, interception=interception)
    mine = stats["offloaded_flops"] + stats["host_flops"]
    assert total > 0 and abs(mine - total) <= 0.02 * total, (mine, total)
    want_share = (total - host) / total
    assert abs(stats["offloaded_fraction"] - want_share) <= 0.02, (stats, want_share)
    if host_module:
        assert 0 < stats["offloaded_fraction"] < 1
        want = {"not offloaded (conv_transpose3d)"}
        if interception == "function":
            want.add("not offloaded (einsum)")
        assert set(stats["host_reasons"]) == want
    else:
        assert stats["host_calls"] == 0 and stats["offloaded_fraction"] == 1.0


@pytest.mark.parametrize("interception", INTERCEPTIONS)
def test_share_under_grad_counts_the_same_flops(interception: str) -> None:
    """Under grad the function mode leaves every call to autograd (share 0, all host FLOPs "grad
    required"); the dispatcher offloads the forward GEMMs and convolutions below autograd (share 1)."""
    model, inputs, _ = _models()["cnn"]
    total = _independent(model, *inputs).get_total_flops()
    with ffaccel.torch.offload("cpu", interception=interception) as session:  # parameters require grad
        model(*inputs)
    s = session.stats
    if interception == "function":
        assert s["offloaded_fraction"] == 0.0 and s["host_flops"] == total
        assert set(s["host_reasons"]) == {"grad required"}
    else:
        assert s["offloaded_fraction"] == 1.0 and s["offloaded_flops"] == total and s["host_calls"] == 0, s


@pytest.mark.parametrize("name", ["cnn", "transformer", "mixed"])
def test_the_free_list_changes_speed_only(name: str, monkeypatch) -> None:
    # the function mode's calls in accounting.FREE skip the pricing mode; with the list empty, every call is priced
    from ffaccel.frontends.torch_offload import session as session_module

    model, inputs, _ = _models()[name]
    model.eval()
    fast = _offloaded(model, *inputs, interception="function")
    monkeypatch.setattr(session_module, "FREE", frozenset())
    assert _offloaded(model, *inputs, interception="function") == fast
