"""Recurrent layers under offload: gate GEMMs on the device, against stock PyTorch."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import ffaccel.torch  # noqa: E402


def _run(model, *inputs, interception: str = "dispatcher"):
    model.eval()
    with torch.inference_mode():
        want = model(*inputs)
        with ffaccel.torch.offload("cpu", interception=interception) as session:
            got = model(*inputs)
    return want, got, session.stats


def _close(got, want) -> None:
    if isinstance(want, tuple):
        for g, w in zip(got, want):
            _close(g, w)
        return
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert got.shape == want.shape and got.is_contiguous() == want.is_contiguous()


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
def test_lstm_gru_match_stock(kind: str, layers: int, bidirectional: bool, batch_first: bool) -> None:
    torch.manual_seed(layers + 2 * bidirectional)
    rnn = getattr(torch.nn, kind)(6, 5, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first)
    x = torch.randn(3, 7, 6) if batch_first else torch.randn(7, 3, 6)
    dirs = 2 if bidirectional else 1
    h0 = torch.randn(layers * dirs, 3, 5)
    hx = (h0, torch.randn(layers * dirs, 3, 5)) if kind == "LSTM" else h0
    want, got, stats = _run(rnn, x, hx)
    _close(got, want)
    gates = 4 if kind == "LSTM" else 3
    inputs = [6] + [5 * dirs] * (layers - 1)
    flops = sum(2 * 7 * 3 * gates * 5 * (i + 5) * dirs for i in inputs)  # input projection + recurrence
    assert stats["offloaded_flops"] == flops and stats["host_calls"] == 0, stats


@pytest.mark.parametrize("interception,dtype", [("dispatcher", torch.float32), ("function", torch.float32),
                                               ("function", torch.float64)], ids=["dispatcher", "function", "function-f64"])
@pytest.mark.parametrize("memory", ["seq_first", "batch_first", "batch_first_view"])
def test_lstm_step_loop_matches_stock_in_every_layout(interception: str, dtype: torch.dtype, memory: str) -> None:
    # the LSTM's own step loop (each step's input gates copied to one block, h buffered then written to the
    # output, one sigmoid over the four gates): 2 layers, both directions, with and without a given state;
    # "batch_first_view" is a batch-first input in (batch, features, time) memory, as after a Conv1d
    torch.manual_seed(1)
    lstm = torch.nn.LSTM(6, 5, num_layers=2, bidirectional=True, batch_first=memory != "seq_first").to(dtype)
    x = {"seq_first": torch.randn(9, 3, 6), "batch_first": torch.randn(3, 9, 6),
         "batch_first_view": torch.randn(3, 6, 9).transpose(1, 2)}[memory].to(dtype)
    state = (torch.randn(4, 3, 5, dtype=dtype), torch.randn(4, 3, 5, dtype=dtype))
    for inputs in ((x,), (x, state)):
        want, got, stats = _run(lstm, *inputs, interception=interception)
        _close(got, want)
        assert stats["host_calls"] == 0 and stats["offloaded_fraction"] == 1.0, stats
        # per layer and direction: the input projection, then one recurrent GEMM per step (counted at once)
        assert stats["offloaded_calls"] == 2 * 2 * (1 + 9), stats
        assert stats["offloaded_flops"] == 2 * 9 * 3 * 4 * 5 * ((6 + 5) + (10 + 5)) * 2, stats


@pytest.mark.parametrize("interception", ["dispatcher", "function"])
def test_lstm_step_loop_chunks_of_two_steps_match_stock(monkeypatch, interception: str) -> None:
    # the smallest chunk the loop allows: every step's h read across a chunk boundary, both directions,
    # and an odd length (a last chunk of one step)
    from ffaccel.frontends.torch_offload import rnn

    monkeypatch.setattr(rnn, "_CHUNK_STEPS", 2)
    torch.manual_seed(2)
    lstm = torch.nn.LSTM(4, 6, num_layers=2, bidirectional=True)
    want, got, stats = _run(lstm, torch.randn(7, 2, 4), interception=interception)
    _close(got, want)
    assert stats["host_calls"] == 0


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_matches_stock(nonlinearity: str) -> None:
    torch.manual_seed(0)
    rnn = torch.nn.RNN(4, 6, num_layers=2, nonlinearity=nonlinearity, bidirectional=True)
    want, got, stats = _run(rnn, torch.randn(5, 2, 4))
    _close(got, want)
    assert stats["host_calls"] == 0 and stats["offloaded_fraction"] == 1.0


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell", "RNNCell"])
@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
def test_cells_match_stock(kind: str, unbatched: bool) -> None:
    torch.manual_seed(0)
    cell = getattr(torch.nn, kind)(6, 5)
    x = torch.randn(6) if unbatched else torch.randn(3, 6)
    h = torch.randn(5) if unbatched else torch.randn(3, 5)
    hx = (h, torch.randn(h.shape)) if kind == "LSTMCell" else h
    want, got, stats = _run(cell, x, hx)
    _close(got, want)
    gates = {"LSTMCell": 4, "GRUCell": 3, "RNNCell": 1}[kind]
    assert stats["offloaded_flops"] == 2 * (1 if unbatched else 3) * gates * 5 * (6 + 5)
    assert stats["host_calls"] == 0 and stats["offloaded_calls"] == 2


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")  # the reference side
def test_lstm_projection_unbatched_and_no_bias() -> None:
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(4, 6, proj_size=3, bias=False, num_layers=2)
    want, got, stats = _run(lstm, torch.randn(5, 4))  # unbatched: nn.LSTM adds the batch dimension
    _close(got, want)
    assert stats["host_calls"] == 0 and stats["offloaded_fraction"] == 1.0


@pytest.mark.parametrize("interception", ["dispatcher", "function"])
def test_packed_sequences_are_counted_where_they_run(interception: str) -> None:
    """The function mode's LSTM handler leaves a packed sequence to PyTorch ("arguments
    unsupported"); under the dispatcher PyTorch's own packed loop runs its gate GEMMs as
    ``aten::addmm``, which are offloaded."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(4, 6)
    x = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(5, 2, 4), [5, 3])
    want, got, stats = _run(lstm, x, interception=interception)
    torch.testing.assert_close(got[0].data, want[0].data)
    if interception == "function":
        assert stats["offloaded_calls"] == 0 and stats["host_reasons"] == {"arguments unsupported": 1}
        assert stats["host_flops"] > 0 and stats["offloaded_fraction"] == 0.0
    else:
        assert stats["host_calls"] == 0 and stats["offloaded_fraction"] == 1.0 and stats["offloaded_flops"] > 0


@pytest.mark.parametrize("interception", ["dispatcher", "function"])
def test_conv1d_lstm_model_reports_an_honest_share(interception: str) -> None:
    """The model of issue 13: its heavy work is a Conv1d and an LSTM; both reach the device.
    Under grad the same FLOPs are counted, each where it ran: all on the host for the function
    mode (it sees calls before autograd); for the dispatcher the convolution and the head on the
    device and the LSTM layer on the host ("grad required": oneDNN's backward reads a workspace
    only its own kernel makes)."""
    torch.manual_seed(0)

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv1d(8, 16, 5, padding=2)
            self.lstm = torch.nn.LSTM(16, 32, batch_first=True)
            self.head = torch.nn.Linear(32, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.conv(x)).transpose(1, 2)
            return self.head(self.lstm(y)[0][:, -1])

    model = Model()
    x = torch.randn(2, 8, 20)
    want, got, stats = _run(model, x, interception=interception)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert stats["offloaded_fraction"] == 1.0 and stats["host_calls"] == 0
    with ffaccel.torch.offload("cpu", interception=interception) as s:  # grad on
        model(x)
    g = s.stats
    assert set(g["host_reasons"]) == {"grad required"}
    assert g["host_flops"] + g["offloaded_flops"] == stats["offloaded_flops"]  # the same work, all of it priced
    lstm_flops = 2 * 20 * 2 * 4 * 32 * (16 + 32)
    assert g["host_flops"] == (stats["offloaded_flops"] if interception == "function" else lstm_flops), g
