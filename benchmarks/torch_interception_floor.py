"""What intercepting PyTorch costs a GPT-2 decode, by interception mechanism (issue 21).

Greedy decoding of a small GPT-2 (``bench_torch._gpt2_decode``: 4 layers, d 256, random weights,
batch 1, 32 new tokens, KV cache), one PyTorch thread, interleaved medians, four ways:

* ``stock``: PyTorch alone;
* ``function mode``: inside an empty ``TorchFunctionMode`` (it only calls the function): what
  ``ffaccel.torch.offload`` pays before any handler runs, since a mode sees every call
  (about 10,000 per decode here, 672 of them GEMMs or attention);
* ``aten override, NumPy``: ``aten::addmm``'s CPU kernel replaced through ``torch.library`` by a
  Python function computing it with NumPy: only the 512 ``addmm`` calls reach Python;
* ``aten override, ffaccel``: the same, the GEMM and its bias run by ``ffaccel.matmul`` on the
  embedded ``cpu`` device (the bias as its epilogue);
* ``offload``: ``ffaccel.torch.offload`` on the same device with each interception: the
  dispatcher-level one (every ATen operator with FLOPs, the session's accounting) and the
  function mode.

Every way must decode the same tokens (checked). The override is process-wide while it is
registered (a ``torch.library.Library`` object; destroyed after each run), unlike a mode, which
is per thread: what a front-end built on it would have to handle.

Usage: ``python benchmarks/torch_interception_floor.py [--rounds 9] [--tokens 32]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_torch import _gpt2_decode  # noqa: E402

import ffaccel  # noqa: E402
import ffaccel.torch  # noqa: E402
from ffaccel.frontends.torch_offload import dispatcher  # noqa: E402
from ffaccel import post  # noqa: E402


class _EmptyMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        return func(*args, **(kwargs or {}))


def _addmm_numpy(bias: torch.Tensor, m1: torch.Tensor, m2: torch.Tensor, *, beta: float = 1,
                 alpha: float = 1) -> torch.Tensor:
    if beta != 1 or alpha != 1:
        raise NotImplementedError("the decode calls addmm with alpha = beta = 1 only")
    out = np.matmul(m1.numpy(), m2.numpy())
    out += bias.numpy()
    return torch.from_numpy(out)


def _addmm_ffaccel(device: ffaccel.Device) -> Callable[..., torch.Tensor]:
    def addmm(bias: torch.Tensor, m1: torch.Tensor, m2: torch.Tensor, *, beta: float = 1,
              alpha: float = 1) -> torch.Tensor:
        if beta != 1 or alpha != 1:
            raise NotImplementedError("the decode calls addmm with alpha = beta = 1 only")
        b = bias.numpy()
        if b.ndim == 1:
            return torch.from_numpy(ffaccel.matmul(m1.numpy(), m2.numpy(), post_ops=[post.bias(b)], device=device))
        return torch.from_numpy(ffaccel.matmul(m1.numpy(), m2.numpy(), device=device) + b)
    return addmm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)
    _, decode = _gpt2_decode(args.tokens)
    device = ffaccel.open("cpu")
    with torch.no_grad():
        want = decode()

    def overridden(kernel: Callable[..., torch.Tensor]) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            lib = torch.library.Library("aten", "IMPL")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "overriding a previously registered kernel": meant
                lib.impl("addmm", kernel, "CPU")
            try:
                return decode()
            finally:
                lib._destroy()
        return run

    def in_mode() -> torch.Tensor:
        with _EmptyMode():
            return decode()

    def offloaded(interception: str) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with ffaccel.torch.offload(device, interception=interception):
                return decode()
        return run

    ways = {"stock": decode, "function mode": in_mode, "aten override, NumPy": overridden(_addmm_numpy),
            "aten override, ffaccel": overridden(_addmm_ffaccel(device)),
            "offload, interception='dispatcher'": offloaded("dispatcher"),
            "offload, interception='function'": offloaded("function")}
    times: dict[str, list[float]] = {name: [] for name in ways}
    with torch.no_grad():
        for _ in range(args.rounds):
            for name, run in ways.items():
                # untimed: the dispatcher's kernels in place for its run (a loop's steady state: they
                # linger between sessions), PyTorch's own for every other way
                if name == "offload, interception='dispatcher'":
                    with ffaccel.torch.offload(device):
                        pass
                else:
                    dispatcher.release()
                t0 = time.perf_counter()
                got = run()
                times[name].append(time.perf_counter() - t0)
                if not torch.equal(got, want):
                    raise SystemExit(f"{name}: other tokens than stock")
    stock = statistics.median(times["stock"])
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}; GPT-2 decode of {args.tokens} tokens, "
          f"medians of {args.rounds} interleaved rounds")
    print("| interception | ms per decode | / stock |\n|---|---:|---:|")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts) * 1e3:.1f} | {statistics.median(ts) / stock:.2f}x |")


if __name__ == "__main__":
    main()
