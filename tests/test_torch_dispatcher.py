"""The dispatcher-level interception of ``ffaccel.torch.offload`` (the default): ATen's CPU kernels
of the operators with FLOPs, replaced through ``torch.library`` while a session is active.

What a user relies on: PyTorch is itself again after ``dispatcher.release()`` (also after a
session left by an exception), or after a linger where one is set; by default the kernels stay
(removing them races with other threads' dispatch), so back-to-back sessions and sessions in
several threads register them once; another thread's work is never changed or counted; nested sessions count in the
innermost; gradients and ``inference_mode`` work; ATen-level kernels (attention's log-sum-exp,
the oneDNN LSTM layer, ``.out`` overloads) give PyTorch's results.
"""

from __future__ import annotations

import gc
import math
import multiprocessing
import os
import threading
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import ffaccel.torch  # noqa: E402
from ffaccel.frontends.torch_offload import dispatcher, linear, tensors  # noqa: E402
from ffaccel.frontends.torch_offload.accounting import EXTRA_FORMULAS  # noqa: E402

DEADLINE_S = 60.0


def _ours(op: str = "addmm") -> bool:
    """Whether ``aten::<op>``'s CPU kernel is this package's (read from PyTorch's dispatcher, not our state)."""
    for line in torch._C._dispatch_dump(f"aten::{op}").splitlines():
        if line.startswith("CPU:"):
            return "dispatcher.py" in line
    return False


def _addmm_args() -> tuple:
    g = torch.Generator().manual_seed(0)
    return torch.randn(768, generator=g), torch.randn(1, 256, generator=g), torch.randn(256, 768, generator=g)


@pytest.fixture(autouse=True)
def _stock_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with PyTorch's own kernels and a linger no test outlives by accident
    (a test that means the reaper to act sets a short one itself)."""
    assert dispatcher.release()
    monkeypatch.setattr(dispatcher, "LINGER_S", 600.0)


def test_registration_lives_while_a_session_is_active_and_not_after() -> None:
    assert not _ours() and not dispatcher.registered()
    with torch.no_grad(), ffaccel.torch.offload("cpu"):
        assert _ours() and _ours("_scaled_dot_product_flash_attention_for_cpu") and _ours("mm.out")
    assert _ours() and dispatcher.registered()  # the linger: the next session registers nothing
    assert dispatcher.release()
    assert not _ours() and not _ours("mm.out") and not dispatcher.registered()
    with pytest.raises(ZeroDivisionError), torch.no_grad(), ffaccel.torch.offload("cpu"):
        assert _ours()
        1 / 0
    assert dispatcher.release() and not _ours() and not dispatcher.registered()
    with ffaccel.torch.offload("cpu", interception="function"):
        assert not _ours()  # the function mode registers nothing


def test_back_to_back_sessions_register_once_and_the_kernels_go_after_the_linger(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A loop entering a session per forward pass pays the registration once; once the last
    session has been gone for ``LINGER_S`` the reaper restores PyTorch's kernels by itself,
    also after an exit by an exception; ``release`` refuses while a session is active."""
    c, a, b = _addmm_args()
    want = torch.addmm(c, a, b)
    before = dispatcher.registrations
    for _ in range(3):
        with torch.no_grad(), ffaccel.torch.offload("cpu") as session:
            torch.testing.assert_close(torch.addmm(c, a, b), want)
            assert not dispatcher.release() and _ours()  # a session is active: nothing removed
        assert session.stats["offloaded_calls"] == 1
    assert dispatcher.registrations == before + 1
    assert torch.equal(torch.addmm(c, a, b), want)  # lingering, outside a session: PyTorch's own kernel
    monkeypatch.setattr(dispatcher, "LINGER_S", 0.01)
    with pytest.raises(ZeroDivisionError), torch.no_grad(), ffaccel.torch.offload("cpu"):
        1 / 0
    assert dispatcher.wait_released(DEADLINE_S) and not _ours() and not _ours("mm.out")
    assert dispatcher.registrations == before + 1  # the last session found them in place
    with torch.no_grad(), ffaccel.torch.offload("cpu"):  # and the next one registers them again
        assert _ours()
    assert dispatcher.wait_released(DEADLINE_S) and not _ours()
    assert dispatcher.registrations == before + 2
    monkeypatch.setattr(dispatcher, "LINGER_S", 0.0)  # no linger: removed by the last exit itself
    with torch.no_grad(), ffaccel.torch.offload("cpu"):
        assert _ours()
    assert not _ours() and not dispatcher.registered()


def test_nested_sessions_count_in_the_innermost_and_keep_the_kernels_until_the_last_exits() -> None:
    c, a, b = _addmm_args()
    with torch.no_grad(), ffaccel.torch.offload("cpu") as outer:
        torch.addmm(c, a, b)
        with ffaccel.torch.offload("cpu") as inner:
            torch.addmm(c, a, b)
            torch.mm(a, b)
        assert _ours()
        torch.mm(a, b)
    assert dispatcher.release() and not _ours()
    assert outer.stats["offloaded_calls"] == 2 and inner.stats["offloaded_calls"] == 2
    assert outer.stats["host_calls"] == inner.stats["host_calls"] == 0


@pytest.mark.parametrize("outer_interception", ["dispatcher", "function"])
@pytest.mark.parametrize("inner_interception", ["dispatcher", "function"])
def test_the_innermost_session_decides_whatever_the_interceptions(outer_interception: str,
                                                                   inner_interception: str) -> None:
    """An ``npu`` session inside a ``cpu`` one: the npu runs its bf16 GEMM, leaves the f32 one to
    PyTorch (stock result, counted on the npu session's host side only), and the outer session
    sees neither. A function mode outside a dispatcher session took every call itself (the inner
    session saw nothing), and an outer session offloaded what the inner one gave back to PyTorch
    (counted in both)."""
    g = torch.Generator().manual_seed(0)
    a16, b16 = torch.randn(16, 16, generator=g).bfloat16(), torch.randn(16, 16, generator=g).bfloat16()
    a, b = torch.randn(16, 16, generator=g), torch.randn(16, 16, generator=g)
    want = a @ b
    with torch.no_grad(), ffaccel.torch.offload("cpu", interception=outer_interception) as outer:
        with ffaccel.torch.offload("npu", interception=inner_interception) as inner:
            a16 @ b16
            got = a @ b
        a @ b
    assert torch.equal(got, want)  # PyTorch's own kernel, bit for bit
    assert inner.stats["offloaded_calls"] == 1 and inner.stats["host_calls"] == 1, inner.stats
    assert outer.stats["offloaded_calls"] == 1 and outer.stats["host_calls"] == 0, outer.stats


def test_another_thread_gets_stock_results_and_counts_only_in_its_own_session() -> None:
    """Thread B runs while thread A's session is active: without a session of its own B gets
    PyTorch's own kernel (bit-equal to stock) and A's count does not move; with its own session
    B's work counts there only. The kernels stay until the last of the two sessions exits."""
    c, a, b = _addmm_args()
    want = torch.addmm(c, a, b)
    a_open, b_done = threading.Event(), threading.Event()
    seen: dict = {}

    def thread_b() -> None:
        try:
            assert a_open.wait(DEADLINE_S)
            with torch.no_grad():
                seen["plain"] = torch.addmm(c, a, b)
                seen["registered"] = _ours()
                with ffaccel.torch.offload("cpu") as mine:
                    seen["own"] = torch.addmm(c, a, b)
                    torch.mm(a, b)
            seen["stats"] = mine.stats
        finally:
            b_done.set()

    t = threading.Thread(target=thread_b)
    t.start()
    with torch.no_grad(), ffaccel.torch.offload("cpu") as session_a:
        a_open.set()
        assert b_done.wait(DEADLINE_S)
        assert _ours()  # B's exit leaves A's registration
        torch.addmm(c, a, b)
    t.join(DEADLINE_S)
    assert seen["registered"] and torch.equal(seen["plain"], want)
    torch.testing.assert_close(seen["own"], want)
    assert session_a.stats["offloaded_calls"] == 1 and session_a.stats["host_calls"] == 0
    assert seen["stats"]["offloaded_calls"] == 2
    assert dispatcher.release() and not _ours()


@pytest.mark.parametrize("interception", ["dispatcher", "function"])
def test_gradients_under_offload_equal_stock(interception: str) -> None:
    """A conv + linear model trained one step: the same loss and gradients as stock PyTorch
    (the dispatcher offloads the forward GEMMs and the backward ``mm``; autograd's formulas are
    PyTorch's own), and every FLOP of the step counted, as an independent FlopCounterMode counts it."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 5))
    x = torch.randn(2, 3, 8, 8)

    def step() -> tuple:
        model.zero_grad()
        loss = model(x).square().sum()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    with FlopCounterMode(display=False) as counter:  # the independent count of a training step
        want_loss, want_grads = step()
    with ffaccel.torch.offload("cpu", interception=interception) as session:
        loss, grads = step()
    torch.testing.assert_close(loss, want_loss, rtol=1e-4, atol=1e-4)
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
    s = session.stats
    assert s["offloaded_flops"] + s["host_flops"] == counter.get_total_flops() > 0  # forward and backward
    if interception == "dispatcher":  # forward conv + linear, backward linear's two mm; conv backward on the host
        assert s["offloaded_calls"] == 4 and s["host_reasons"] == {"not offloaded (convolution_backward)": 1}, s
    else:
        # the forward calls under grad, and Tensor.backward (a Python-level call) with no lowering
        assert s["offloaded_calls"] == 0 and s["host_reasons"]["grad required"] == 2, s


def test_inference_mode_reaches_the_kernels() -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 8)
    x = torch.randn(4, 16)
    with torch.inference_mode():
        want = lin(x)
        with ffaccel.torch.offload("cpu") as session:
            got = lin(x)
    torch.testing.assert_close(got, want)
    assert got.is_inference() and session.stats["offloaded_calls"] == 1 and session.stats["host_calls"] == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mask", ["none", "causal", "float"])
def test_attention_kernel_output_and_logsumexp_equal_stock(mask: str, dtype: torch.dtype) -> None:
    """``aten::_scaled_dot_product_flash_attention_for_cpu`` returns (output, logsumexp): both
    from the device's GEMMs, against PyTorch's kernel (which takes a mask in the query's dtype:
    ``F.scaled_dot_product_attention`` turns a boolean one into that form first)."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 6, 8, generator=g).to(dtype) for _ in range(3))
    kw: dict = {}
    args = (q, k, v)
    if mask == "causal":
        args = (q, k, v, 0.0, True)
    elif mask == "float":
        kw["attn_mask"] = torch.randn(6, 6, generator=g).to(dtype)
    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    with torch.no_grad():
        want = op(*args, **kw)
        with ffaccel.torch.offload("cpu") as session:
            got = op(*args, **kw)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    for gt, wt in zip(got, want):
        assert gt.shape == wt.shape and gt.dtype == wt.dtype
        torch.testing.assert_close(gt, wt, **tol)
    assert session.stats["offloaded_calls"] == 1 and session.stats["host_calls"] == 0


def test_attention_and_lstm_under_grad_stay_on_the_host_for_their_backward() -> None:
    """Their kernels return tensors PyTorch's backward reads (the log-sum-exp, oneDNN's
    workspace): under grad they run in PyTorch, counted as "grad required", and backward works."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(4, 6)
    q = torch.randn(1, 2, 5, 8, requires_grad=True)
    x = torch.randn(5, 2, 4)
    with ffaccel.torch.offload("cpu") as session:
        (F.scaled_dot_product_attention(q, q, q).sum() + lstm(x)[0].sum()).backward()
    assert q.grad is not None and lstm.weight_hh_l0.grad is not None
    assert session.stats["host_reasons"]["grad required"] == 2, session.stats


@pytest.mark.parametrize("op", ["mm", "bmm", "addmm", "baddbmm"])
def test_out_overloads_write_out(op: str) -> None:
    """``torch.mm(a, b, out=o)`` & co reach the ``.out`` kernels: offloaded into ``o``; an ``out``
    of another shape goes to PyTorch's kernel, which resizes it as usual (counted on the host)."""
    g = torch.Generator().manual_seed(2)
    batched = op in ("bmm", "baddbmm")
    a = torch.randn(*((3,) if batched else ()), 5, 7, generator=g)
    b = torch.randn(*((3,) if batched else ()), 7, 4, generator=g)
    c = torch.randn(4, generator=g)
    fn = getattr(torch, op)
    call = (lambda o: fn(c, a, b, out=o)) if op.startswith(("add", "badd")) else (lambda o: fn(a, b, out=o))
    want = call(torch.empty(a.shape[:-1] + (4,)))
    out, small = torch.empty(want.shape), torch.empty(0)
    with torch.no_grad(), ffaccel.torch.offload("cpu") as session:
        r = call(out)
        r2 = call(small)
    assert r is out and r2 is small
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(small, want)
    s = session.stats
    assert s["offloaded_calls"] == 1 and s["host_reasons"] == {"arguments unsupported": 1}, s


def test_parameter_memo_key_tells_apart_every_view_of_the_same_memory() -> None:
    """``tensors.param_memo`` memoizes a parameter's NumPy view by what the view's reading depends
    on: a view of the same memory with another shape, strides (a square W's transpose), dtype or
    negative bit must not get the memoized one."""
    w = torch.nn.Parameter(torch.randn(6, 6))
    variants = {"as it is": w, "rows": w[:3], "transposed": w.t(), "int32 bits": w.view(torch.int32),
                "negative bit": torch._neg_view(w)}
    for name, t in variants.items():
        tensors.param_memo(w)  # the first view memoized for that memory
        got, want = tensors.param_memo(t), t.detach().resolve_neg().numpy()
        assert got.shape == want.shape and got.strides == want.strides and got.dtype == want.dtype, name
        assert np.array_equal(got, want), name
    assert tensors.param_memo(torch.ones(3)) is not tensors.param_memo(torch.ones(3))  # activations: not memoized


def test_parameter_memo_never_holds_a_copy_that_an_update_would_leave_stale() -> None:
    """A negative-bit view's NumPy form is a resolved copy: after an in-place update of the
    parameter (an optimizer step) the next call must read the new values, not the first copy."""
    w = torch.nn.Parameter(torch.ones(4, 4))
    neg = torch._neg_view(w)
    first = tensors.param_memo(neg)
    with torch.no_grad():
        w.add_(1.0)
    assert np.array_equal(first, -np.ones((4, 4), np.float32))
    assert np.array_equal(tensors.param_memo(neg), -2 * np.ones((4, 4), np.float32))


def test_fast_paths_tell_a_square_weight_from_its_transpose_and_forget_parameters_with_the_kernels() -> None:
    """GPT-2's Conv1D ``addmm(b, x, W)`` and ``F.linear``'s ``addmm(b, x, W.t())`` of one square
    parameter (and ``mm`` likewise) share W's memory and shape: each gets its own result; the
    memoized views go with the kernels (they keep their parameters alive)."""
    g = torch.Generator().manual_seed(3)
    w, c = torch.nn.Parameter(torch.randn(8, 8, generator=g)), torch.nn.Parameter(torch.randn(8, generator=g))
    x = torch.randn(2, 8, generator=g)
    calls = (lambda: torch.addmm(c, x, w), lambda: F.linear(x, w, c), lambda: torch.mm(x, w), lambda: F.linear(x, w))
    with torch.no_grad():
        want = [f() for f in calls]
        with ffaccel.torch.offload("cpu") as session:
            for _ in range(2):  # the second round from the memo
                for f, wt in zip(calls, want):
                    torch.testing.assert_close(f(), wt)
    assert session.stats["offloaded_calls"] == 8 and session.stats["host_calls"] == 0
    assert tensors.PARAM_MEMO and dispatcher.release() and not tensors.PARAM_MEMO


def test_a_deleted_modules_parameters_leave_the_memo_while_the_kernels_stay() -> None:
    """The kernels stay after the last session (by default until ``release()``), and the memo of
    parameters' views with them: a process that loads models one after another held every deleted
    model's weights (64 MB a 4096 x 4096 Linear) until the memo reached 2048 entries."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, generator=g)
    with torch.no_grad():
        for _ in range(3):
            lin = torch.nn.Linear(16, 8)
            with ffaccel.torch.offload("cpu") as session:
                lin(x)
                torch.mm(x, lin.weight.t())
            assert session.stats["offloaded_calls"] == 2 and len(tensors.PARAM_MEMO) == 3  # W^T, bias, W^T for mm
            del lin
            gc.collect(0)  # (its refcount frees a Linear; the youngest generation, in case)
            assert not tensors.PARAM_MEMO  # nothing of the deleted module is held
    assert dispatcher.registered()


@pytest.mark.parametrize("case", ["broadcast bias", "broadcast bias, W^T", "bias matrix", "beta", "bf16", "f64"])
def test_addmm_beyond_the_fast_path_goes_the_generic_way(case: str) -> None:
    """The calls the decode's fast path does not take are offloaded as before, with stock's result
    (a one-element bias with ``F.linear``'s transposed weight went to the host: the linear handler
    takes only a bias of the output's length)."""
    g = torch.Generator().manual_seed(4)
    x, w, c = torch.randn(3, 5, generator=g), torch.randn(5, 4, generator=g), torch.randn(4, generator=g)
    kw: dict = {}
    if case.startswith("broadcast bias"):
        c = c[:1]
        if case.endswith("W^T"):
            w = torch.randn(4, 5, generator=g).t()
    elif case == "bias matrix":
        c = torch.randn(3, 4, generator=g)
    elif case == "beta":
        kw = {"beta": 0.5}
    elif case in ("bf16", "f64"):
        dt = torch.bfloat16 if case == "bf16" else torch.float64
        x, w, c = x.to(dt), w.to(dt), c.to(dt)
    with torch.no_grad():
        want = torch.addmm(c, x, w, **kw)
        with ffaccel.torch.offload("cpu") as session:
            got = torch.addmm(c, x, w, **kw)
    tol = dict(rtol=2e-2, atol=2e-2) if case == "bf16" else {}
    torch.testing.assert_close(got, want, **tol)
    assert session.stats["offloaded_calls"] == 1 and session.stats["host_calls"] == 0, session.stats


def test_addmm_with_disagreeing_shapes_raises_pytorchs_own_error() -> None:
    c, x, w = torch.randn(4), torch.randn(3, 5), torch.randn(6, 4)
    with pytest.raises(RuntimeError) as stock:
        torch.addmm(c, x, w)
    with torch.no_grad(), ffaccel.torch.offload("cpu") as session:
        with pytest.raises(RuntimeError) as got:
            torch.addmm(c, x, w)
    assert str(got.value) == str(stock.value) and session.stats["offloaded_calls"] == 0


@pytest.mark.parametrize("softmax", ["numpy", "torch"])
@pytest.mark.parametrize("scale", [None, 0.3, -0.3])
@pytest.mark.parametrize("layout", ["contiguous", "heads transposed"])
def test_attention_at_decode_equals_stock_with_its_flops(scale: "float | None", layout: str, softmax: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A decode step's attention (one query row against a KV cache, no mask; the fast path):
    output and log-sum-exp as PyTorch's kernel gives them, and PyTorch's FLOP count offloaded.
    The layout of the (batch, heads, rows, dim) tensors as a model's head split leaves them; the
    scale folded into the softmax (positive) or the GEMM's alpha; the softmax in NumPy or in
    PyTorch's passes (chosen by size: both forced here)."""
    monkeypatch.setattr(linear, "SOFTMAX_TORCH_MIN_ELEMENTS", 0 if softmax == "torch" else 1 << 62)

    def generic(*args: object) -> None:
        raise AssertionError("the generic attention path ran: the fast path gave the call back")

    monkeypatch.setattr(linear, "_attention", generic)
    g = torch.Generator().manual_seed(5)
    if layout == "contiguous":
        q, k, v = torch.randn(1, 4, 1, 16, generator=g), torch.randn(1, 4, 9, 16, generator=g), \
            torch.randn(1, 4, 9, 16, generator=g)
    else:  # (batch, rows, heads, dim) storage viewed as (batch, heads, rows, dim)
        q, k, v = (torch.randn(1, n, 4, 16, generator=g).transpose(1, 2) for n in (1, 9, 9))
    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    kw = {} if scale is None else {"scale": scale}
    with torch.no_grad():
        want = op(q, k, v, **kw)
        with FlopCounterMode(display=False, custom_mapping=dict(EXTRA_FORMULAS)) as counter:
            op(q, k, v, **kw)
        with ffaccel.torch.offload("cpu") as session:
            got = op(q, k, v, **kw)
    for gt, wt in zip(got, want):
        assert gt.shape == wt.shape and gt.dtype == wt.dtype
        torch.testing.assert_close(gt, wt, rtol=1e-5, atol=1e-5)
    s = session.stats
    assert s["offloaded_calls"] == 1 and s["host_calls"] == 0 and s["offloaded_flops"] == counter.get_total_flops()


def _forked_child() -> None:
    c, a, b = _addmm_args()
    dispatcher.LINGER_S = 0.01
    with torch.no_grad(), ffaccel.torch.offload("cpu") as session:
        torch.testing.assert_close(torch.addmm(c, a, b), torch.addmm(c, a, b))
    assert session.stats["offloaded_calls"] == 2
    assert dispatcher.wait_released(DEADLINE_S) and not _ours()  # the child's own reaper


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_child_forked_while_the_kernels_linger_runs_sessions_and_releases_them() -> None:
    """A data loader's worker forked during the linger: it inherits the kernels but not the reaper
    thread (nor a lock that thread held): its sessions work and its own reaper removes them."""
    with torch.no_grad(), ffaccel.torch.offload("cpu"):
        pass
    assert _ours()
    child = multiprocessing.get_context("fork").Process(target=_forked_child)
    child.start()
    child.join(DEADLINE_S)
    assert child.exitcode == 0


@pytest.mark.parametrize("interception", ["dispatcher", "function"])
@pytest.mark.parametrize("case", ["heads-transposed", "row-major", "heads-transposed-masked", "other-value-size"])
def test_attention_output_has_the_stock_kernels_layout(interception: str, case: str) -> None:
    """PyTorch's CPU attention writes its output in the memory order of a heads-transposed query
    (``x.view(B, L, H, E).transpose(1, 2)``, how BERT- and GPT-style layers make q), so code after it
    may ``out.transpose(1, 2).view(B, L, H * E)``; under offload that must work as it does in stock."""
    g = torch.Generator().manual_seed(5)
    b, h, n, s, e = 2, 4, 5, 7, 8
    ev = 16 if case == "other-value-size" else e

    def heads(length: int, size: int) -> torch.Tensor:
        x = torch.randn(b, length, h, size, generator=g)
        return x.transpose(1, 2) if case != "row-major" else x.transpose(1, 2).contiguous()

    q, k, v = heads(n, e), heads(s, e), heads(s, ev)
    mask = torch.ones(n, s, dtype=torch.bool).tril() if case.endswith("masked") else None
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    with torch.no_grad(), ffaccel.torch.offload("cpu", interception=interception) as session:
        got = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert session.stats["offloaded_calls"] >= 1 and session.stats["host_calls"] == 0, session.stats
    assert got.stride() == want.stride(), (got.stride(), want.stride())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if case != "row-major" and case != "other-value-size":
        torch.testing.assert_close(got.transpose(1, 2).view(b, n, h * ev), want.transpose(1, 2).view(b, n, h * ev))


@pytest.mark.parametrize("kind", ["float", "bool"])
@pytest.mark.parametrize("shape", ["B,1,1,S", "B,1,L,S", "L,S"])
def test_masked_attention_takes_the_fast_path_and_equals_stock_and_the_generic_path(
        shape: str, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A BERT-style encoder's attention (heads-transposed q, k, v and a padding mask broadcast over
    the heads) on the fast path: output and log-sum-exp as PyTorch's kernel and as the generic path
    (the function interception's) give them. The mask hides keys (a padded batch entry), so a
    dropped mask fails the comparison (checked: the unmasked result differs)."""
    def generic(*args: object) -> None:
        raise AssertionError("the generic attention path ran: the fast path gave the call back")

    g = torch.Generator().manual_seed(7)
    b, h, n, e = 3, 4, 6, 8
    q, k, v = (torch.randn(b, n, h, e, generator=g).transpose(1, 2) for _ in range(3))
    keep = torch.ones(b, n, dtype=torch.bool)
    keep[0, 4:] = keep[2, 2:] = False  # padded entries: their last keys hidden
    sizes = {"B,1,1,S": (b, 1, 1, n), "B,1,L,S": (b, 1, n, n), "L,S": (n, n)}[shape]
    keep = keep[:, None, None, :].expand(b, 1, n, n) if shape != "L,S" else keep[0].expand(n, n)
    keep = keep[..., :1, :] if shape == "B,1,1,S" else keep
    assert keep.shape == sizes
    mask = keep if kind == "bool" else torch.zeros(sizes).masked_fill_(~keep, torch.finfo(torch.float32).min)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    with torch.no_grad():
        want, unmasked = sdpa(q, k, v, attn_mask=mask), sdpa(q, k, v)
        assert not torch.allclose(want, unmasked, atol=1e-3)  # the mask matters here
        with ffaccel.torch.offload("cpu", interception="function") as generic_session:
            via_generic = sdpa(q, k, v, attn_mask=mask)
        with monkeypatch.context() as patch:
            patch.setattr(linear, "_attention", generic)
            with ffaccel.torch.offload("cpu") as session:
                got = sdpa(q, k, v, attn_mask=mask)
    assert session.stats["offloaded_calls"] == 1 and session.stats["host_calls"] == 0, session.stats
    assert generic_session.stats["offloaded_calls"] >= 1 and generic_session.stats["host_calls"] == 0
    assert got.stride() == want.stride()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, via_generic, rtol=1e-5, atol=1e-5)
    if kind == "float":  # the kernel's log-sum-exp too, against PyTorch's
        op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        with torch.no_grad():
            want_out, want_lse = op(q, k, v, attn_mask=mask)
            with monkeypatch.context() as patch:
                patch.setattr(linear, "_attention", generic)
                with ffaccel.torch.offload("cpu"):
                    got_out, got_lse = op(q, k, v, attn_mask=mask)
        torch.testing.assert_close(got_out, want_out, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got_lse, want_lse, rtol=1e-5, atol=1e-5)


def test_attention_with_a_mask_that_does_not_broadcast_is_pytorchs_error() -> None:
    """A mask the scores cannot take (wrong key length) is left to the generic path: PyTorch's own error."""
    q = torch.randn(2, 3, 4, 8)
    mask = torch.zeros(4, 5)
    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    with pytest.raises(RuntimeError):
        op(q, q, q, attn_mask=mask)
    with torch.no_grad(), ffaccel.torch.offload("cpu"), pytest.raises(RuntimeError):
        op(q, q, q, attn_mask=mask)


@pytest.mark.parametrize("case", ["1-D mask", "3-D mask", "bool mask", "3-D q, k, v", "value head size"])
def test_the_attention_kernel_called_directly_refuses_what_pytorchs_refuses(case: str) -> None:
    """``aten::_scaled_dot_product_flash_attention_for_cpu`` takes 4-D q, k, v of one head size and a
    2-D or 4-D mask of q's dtype or f32; F.scaled_dot_product_attention sends it nothing else, but a direct call may,
    and PyTorch raises. The adapters broadcast the rest and answered instead."""
    g = torch.Generator().manual_seed(0)
    q, v, mask = torch.randn(2, 3, 4, 8, generator=g), None, None
    if case == "1-D mask":
        mask = torch.zeros(4)
    elif case == "3-D mask":
        mask = torch.zeros(3, 4, 4)
    elif case == "bool mask":
        mask = torch.ones(4, 4, dtype=torch.bool)
    elif case == "3-D q, k, v":
        q = q[0]
    else:
        v = torch.randn(2, 3, 4, 6, generator=g)
    v = q if v is None else v
    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    with pytest.raises(RuntimeError, match="flash_attention"):
        op(q, q, v, attn_mask=mask)
    with torch.no_grad(), ffaccel.torch.offload("cpu") as session, pytest.raises(RuntimeError, match="flash_attention"):
        op(q, q, v, attn_mask=mask)
    assert session.stats["offloaded_calls"] == 0


@pytest.mark.parametrize("interception", ["dispatcher", "function"])
@pytest.mark.parametrize("size", ["numpy-softmax", "torch-softmax"])
@pytest.mark.parametrize("kind", ["float", "bool"])
def test_a_row_the_mask_hides_whole_gives_zeros_as_in_stock(interception: str, size: str, kind: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A query row whose every key is masked (left padding, a padded query) gets output 0 and a
    log-sum-exp of 0 from PyTorch's CPU kernel; offload must give the same, not NaN, and warn of
    nothing. Both softmax implementations of the fast path (forced), and the generic path (function mode)."""
    monkeypatch.setattr(linear, "SOFTMAX_TORCH_MIN_ELEMENTS", 1 << 62 if size == "numpy-softmax" else 0)
    b, h, n, e, s = (1, 2, 3, 4, 5) if size == "numpy-softmax" else (2, 8, 64, 16, 64)
    g = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(b, h, x, e, generator=g) for x in (n, s, s))
    additive = torch.zeros(b, 1, n, s)
    additive[..., 1, :] = float("-inf")
    additive[..., 2, 1:] = float("-inf")  # a row with one key left: its softmax is 1 there
    mask = additive if kind == "float" else additive == 0
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    want_out, want_lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=additive)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with torch.no_grad(), ffaccel.torch.offload("cpu", interception=interception) as session:
            got = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            got_out, got_lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=additive)
    # (the function mode offloads F.scaled_dot_product_attention and leaves the aten call to PyTorch)
    assert session.stats["host_calls"] == (0 if interception == "dispatcher" else 1), session.stats
    assert session.stats["offloaded_calls"] >= 1, session.stats
    assert torch.equal(want[..., 1, :], torch.zeros_like(want[..., 1, :]))  # what stock gives
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_out, want_out, rtol=1e-5, atol=1e-5)
    if interception == "dispatcher":  # (the function mode hands this aten call to PyTorch's own kernel)
        torch.testing.assert_close(got_lse, want_lse, rtol=1e-5, atol=1e-5)


def test_the_softmax_crossover_is_measured_at_the_first_attention_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Which softmax the fast path runs (NumPy's calls or PyTorch's passes) depends on the CPU's
    vector units and each library's exp, so the size where PyTorch's starts to win is measured on
    the running machine at the first call, once, and kept; the answer is a size, not a constant."""
    monkeypatch.setattr(linear, "SOFTMAX_TORCH_MIN_ELEMENTS", None)
    q = torch.randn(1, 2, 3, 4)
    with torch.no_grad(), ffaccel.torch.offload("cpu") as session:
        got = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert session.stats["offloaded_calls"] == 1
    torch.testing.assert_close(got, torch.nn.functional.scaled_dot_product_attention(q, q, q), rtol=1e-5, atol=1e-5)
    measured = linear.SOFTMAX_TORCH_MIN_ELEMENTS
    assert isinstance(measured, int) and 0 <= measured <= 1 << 62
    assert linear.softmax_torch_min_elements() >= 0  # measuring again gives a size too


@pytest.mark.parametrize("numpy_line, torch_line, want", [
    ((2.0 ** -20, 2.0 ** -29), (2.0 ** -19, 2.0 ** -30), 1024),  # dearer per call, cheaper per element: they meet
    ((1e-6, 2e-9), (1e-6, 1e-9), 0),  # no dearer either way: from the start
    ((2e-6, 2e-9), (1e-6, 3e-9), 1 << 62),  # dearer per element: never
    ((1e-6, 1e-9), (2e-6, 1e-9), 1 << 62),  # equal per element, dearer per call: never
])
def test_the_softmax_crossover_is_where_the_cost_lines_meet(numpy_line: tuple, torch_line: tuple, want: int) -> None:
    assert linear.crossover_elements(numpy_line, torch_line) == want


@pytest.mark.parametrize("softmax", ["numpy", "torch"])
@pytest.mark.parametrize("hidden_by", ["finfo.min", "-inf", "far below"])
def test_keys_the_softmax_weighs_zero_add_nothing_to_the_output(hidden_by: str, softmax: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys a padding mask hides (PyTorch's ``finfo.min`` or -inf), or whose score sits far below the
    row's best (its exp underflows), add nothing: their values, here 1e30, must not reach the
    output or the log-sum-exp. The fast path's PyTorch softmax clamps such scores to skip the slow
    exp of an underflow (``_EXP_FLOOR``): a clamp without zeroing their terms after it fails here."""
    monkeypatch.setattr(linear, "SOFTMAX_TORCH_MIN_ELEMENTS", 0 if softmax == "torch" else 1 << 62)
    g = torch.Generator().manual_seed(17)
    b, h, n, s, e = 2, 3, 5, 7, 8
    q, k, v = torch.randn(b, h, n, e, generator=g), torch.randn(b, h, s, e, generator=g), torch.randn(b, h, s, e, generator=g)
    mask = torch.zeros(b, 1, 1, s)
    if hidden_by == "far below":
        q = q.abs() + 1.0
        k[..., -2:, :] = -60.0  # the last two keys score < -160 (the others > -30): far below the best
    else:
        mask[..., -2:] = float("-inf") if hidden_by == "-inf" else torch.finfo(torch.float32).min
    v[..., -2:, :] = 1e30
    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    want_out, want_lse = op(q, k, v, attn_mask=mask)
    assert want_out.abs().max() < 100  # the hidden values reach nothing in PyTorch's own kernel either
    with torch.no_grad(), ffaccel.torch.offload("cpu") as session:
        got_out, got_lse = op(q, k, v, attn_mask=mask)
    assert session.stats["offloaded_calls"] == 1 and session.stats["host_calls"] == 0, session.stats
    torch.testing.assert_close(got_out, want_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_lse, want_lse, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("key_heads", [1, 2])
def test_grouped_query_attention_is_offloaded_as_the_kernel_groups_it(key_heads: int) -> None:
    """``F.scaled_dot_product_attention(..., enable_gqa=True)`` reaches PyTorch's CPU kernel as a
    query with a multiple of the keys' heads; query head i reads key head i // (4 / key_heads).
    Offloaded (the device used to refuse the disagreeing batches: the call went to the host) and
    equal to stock, with and without a mask."""
    g = torch.Generator().manual_seed(13)
    q, k, v = torch.randn(2, 4, 3, 8, generator=g), *(torch.randn(2, key_heads, 5, 8, generator=g) for _ in "kv")
    mask = torch.zeros(2, 1, 3, 5)
    mask[0, ..., 3:] = float("-inf")
    for m in (None, mask):
        want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=True)
        with torch.no_grad(), ffaccel.torch.offload("cpu") as session:
            got = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=True)
        assert session.stats["host_calls"] == 0 and session.stats["offloaded_calls"] == 1, session.stats
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_by_default_the_kernels_stay_after_the_last_session_while_other_threads_dispatch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The default: the last exit schedules no removal (removing a kernel while another thread
    dispatches its operator is a use-after-free in PyTorch's dispatcher; with ``LINGER_S = 0``
    this very loop had ``addmm`` calls reach the ``mm`` kernel). Sessions come and go in two
    threads while a third runs ``torch.addmm`` outside any session: every result is PyTorch's own
    or the device's equal one, each session counts its own call, the kernels are registered once."""
    monkeypatch.setattr(dispatcher, "LINGER_S", math.inf)
    c, a, b = _addmm_args()
    want = torch.addmm(c, a, b)
    before = dispatcher.registrations
    problems: list = []
    sessions_done = threading.Event()

    def with_sessions() -> None:
        for _ in range(150):
            with torch.no_grad(), ffaccel.torch.offload("cpu") as session:
                got = torch.addmm(c, a, b)
            if session.stats["offloaded_calls"] != 1 or not torch.allclose(got, want, rtol=1e-5, atol=1e-5):
                problems.append(("session", session.stats["offloaded_calls"]))

    def stock() -> None:
        while not sessions_done.is_set():
            if not torch.equal(torch.addmm(c, a, b), want):
                problems.append("stock")

    workers = [threading.Thread(target=with_sessions) for _ in range(2)]
    outside = threading.Thread(target=stock)
    outside.start()
    for t in workers:
        t.start()
    for t in workers:
        t.join(DEADLINE_S)
    sessions_done.set()
    outside.join(DEADLINE_S)
    assert not any(t.is_alive() for t in (*workers, outside))
    assert problems == []
    assert dispatcher.registrations == before + 1 and dispatcher.registered() and _ours()
    assert dispatcher._release_at is None  # nothing scheduled: in place until release()
    assert dispatcher.release() and not _ours()
