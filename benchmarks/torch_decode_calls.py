"""A GPT-2 decode step's intercepted calls, one by one, under ``offload("cpu")`` against stock PyTorch
and against ``ffaccel.matmul`` on the same operands (issue 21's per-call targets).

Thread CPU time per call, one thread, best of ``--rounds`` samples of ``--calls`` calls, the
candidates interleaved (alternating order); each offload sample runs inside one session, stock
samples with PyTorch's own kernels (``dispatcher.release()`` first, where this tree has it):

* ``addmm``: GPT-2's Conv1D, ``torch.addmm(bias, x, W)``, 1 x 256 x 768, parameters W and bias;
* ``F.linear``: ``aten::addmm(bias, x, W.t())``, the same sizes;
* ``sdpa``: ``F.scaled_dot_product_attention`` of one query row against a 40-row KV cache,
  1 x 4 heads x 64;
* ``session``: a session's entry and exit back to back (a serving loop's per-pass cost).

"overhead" lines: offload's time above ``ffaccel.matmul`` on the same ndarrays (``x`` and the
parameters viewed once, outside the loop).

Usage: ``python benchmarks/torch_decode_calls.py [--rounds 15] [--calls 300]``
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import ffaccel
import ffaccel.torch
from ffaccel import post
from ffaccel.frontends.torch_offload import dispatcher


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(1)
    dev = ffaccel.open("cpu")
    g = torch.Generator().manual_seed(0)
    param = torch.nn.Parameter
    c, x = param(torch.randn(768, generator=g)), torch.randn(1, 256, generator=g)
    w_conv1d, w_linear = param(torch.randn(256, 768, generator=g)), param(torch.randn(768, 256, generator=g))
    xn, cn = x.numpy(), c.detach().numpy()
    conv1d_n, linear_n = w_conv1d.detach().numpy(), w_linear.detach().numpy()
    q, k, v = (torch.randn(1, 4, n, 64, generator=g) for n in (1, 40, 40))
    session = ffaccel.torch.offload(dev)
    release = getattr(dispatcher, "release", lambda: None)  # (a tree before the linger has none)

    def enter_exit() -> None:
        with ffaccel.torch.offload(dev):
            pass

    # name -> (call, runs inside the session)
    cases: dict[str, tuple[Callable[[], object], bool]] = {
        "ffaccel.matmul, bias": (lambda: ffaccel.matmul(xn, conv1d_n, post_ops=[post.bias(cn)], device=dev), False),
        "ffaccel.matmul, W trans_b, bias": (
            lambda: ffaccel.matmul(xn, linear_n, trans_b=True, post_ops=[post.bias(cn)], device=dev), False),
        "stock addmm": (lambda: torch.addmm(c, x, w_conv1d), False),
        "offload addmm": (lambda: torch.addmm(c, x, w_conv1d), True),
        "stock F.linear": (lambda: F.linear(x, w_linear, c), False),
        "offload F.linear": (lambda: F.linear(x, w_linear, c), True),
        "stock sdpa": (lambda: F.scaled_dot_product_attention(q, k, v), False),
        "offload sdpa": (lambda: F.scaled_dot_product_attention(q, k, v), True),
        "session entry + exit": (enter_exit, False),
    }
    best = {name: float("inf") for name in cases}
    names = list(cases)
    with torch.no_grad():
        for r in range(args.rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                call, inside = cases[name]
                if inside:
                    session.__enter__()
                elif name != "session entry + exit":
                    release()
                t = time.thread_time()
                for _ in range(args.calls):
                    call()
                best[name] = min(best[name], (time.thread_time() - t) / args.calls)
                if inside:
                    session.__exit__(None, None, None)
    print(f"load average {' '.join(f'{a:.1f}' for a in os.getloadavg())}; thread CPU time per call, best of "
          f"{args.rounds} x {args.calls}")
    print("| call | µs |\n|---|---:|")
    for name, s in best.items():
        print(f"| {name} | {s * 1e6:.1f} |")
    print(f"| addmm overhead above ffaccel.matmul | {(best['offload addmm'] - best['ffaccel.matmul, bias']) * 1e6:.1f} |")
    print(f"| F.linear overhead above ffaccel.matmul | "
          f"{(best['offload F.linear'] - best['ffaccel.matmul, W trans_b, bias']) * 1e6:.1f} |")


if __name__ == "__main__":
    main()
