"""MobileNetV1 (1.0, 224x224, int8) as im2col GEMMs through the ``npu`` driver's cost model.

Each convolution becomes the GEMM an im2col lowering gives it: a standard convolution with a
KxK kernel is (H_out * W_out) x (K * K * C_in) @ (K * K * C_in) x C_out; a depthwise one is a
batch of C GEMMs (H_out * W_out) x 9 @ 9 x 1, one per channel (the GEMM-only interface has no
depthwise operation); the classifier is 1 x 1024 @ 1024 x 1001. Every layer is one job. The
script runs those GEMMs through an ``npu`` device (random int8 data: the values do not change
the model) and prints the modeled time per preset next to the published measurement it is
compared with in docs/npu.md (MobileNetV1 int8 on one RK3588 NPU core with Mesa's Teflon
delegate: 10-11 ms per inference).

Usage: ``python benchmarks/bench_npu_mobilenet.py [--preset rk3588] [--layers] [--model-only]``
"""

from __future__ import annotations

import argparse

import numpy as np

import ffaccel
from ffaccel.drivers.npu import PRESETS, gemm_cost

#: (name, batch, m, n, k): MobileNetV1's layers as GEMMs (Howard et al. 2017, table 1)
_BLOCKS = [  # (depthwise stride, C_in, C_out, H_out)
    (1, 32, 64, 112), (2, 64, 128, 56), (1, 128, 128, 56), (2, 128, 256, 28), (1, 256, 256, 28),
    (2, 256, 512, 14), *[(1, 512, 512, 14)] * 5, (2, 512, 1024, 7), (1, 1024, 1024, 7),
]
LAYERS: list[tuple[str, int, int, int, int]] = [("conv0 3x3/2", 1, 112 * 112, 32, 27)]
for i, (_stride, cin, cout, h) in enumerate(_BLOCKS, 1):
    LAYERS.append((f"dw{i} 3x3 x{cin}", cin, h * h, 1, 9))
    LAYERS.append((f"pw{i} 1x1 {cin}->{cout}", 1, h * h, cout, cin))
LAYERS.append(("fc 1024->1001", 1, 1, 1001, 1024))
#: MobileNetV1 1.0/224's multiply-adds as its paper gives them (569 million)
PUBLISHED_MACS = 569e6
#: what the comparison is against: one RK3588 NPU core, Mesa Teflon delegate (10-11 ms, docs/npu.md)
PUBLISHED_RK3588_MS = (10.0, 11.0)


def modeled_ms(preset: str) -> list[tuple[str, float, int]]:
    """(layer, modeled ms, MACs) per layer, from the cost model alone."""
    model = PRESETS[preset]
    return [(name, gemm_cost(model, True, batch, m, n, k, 4).seconds * 1e3, batch * m * n * k)
            for name, batch, m, n, k in LAYERS]


def run_through_driver(preset: str) -> float:
    """Run every layer's GEMM on an ``npu`` device; the modeled ms its stats report."""
    rng = np.random.default_rng(0)
    with ffaccel.open(f"npu:preset={preset},arena_mib=4096") as dev:
        for _name, batch, m, n, k in LAYERS:
            a = rng.integers(-128, 128, (batch, m, k), dtype=np.int8)
            b = rng.integers(-128, 128, (batch, k, n), dtype=np.int8)
            ffaccel.matmul(a, b, device=dev)
        return dev.stats()["driver_usage"]["modeled_s"] * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", action="append", help="preset(s) to model (default: all)")
    p.add_argument("--layers", action="store_true", help="print the per-layer table")
    p.add_argument("--model-only", action="store_true", help="skip running the GEMMs through the driver")
    args = p.parse_args()
    macs = sum(b * m * n * k for _, b, m, n, k in LAYERS)
    print(f"MobileNetV1 as {len(LAYERS)} GEMM jobs: {macs / 1e6:.1f} M MACs (paper: {PUBLISHED_MACS / 1e6:.0f} M)")
    for preset in args.preset or sorted(PRESETS):
        rows = modeled_ms(preset)
        total = sum(ms for _, ms, _ in rows)
        dw = sum(ms for name, ms, _ in rows if name.startswith("dw"))
        peak_ms = macs / PRESETS[preset].peak_macs_per_s(True) * 1e3
        line = (f"{preset:14s} modeled {total:7.2f} ms  (depthwise {dw:6.2f} ms, peak-MAC floor {peak_ms:5.2f} ms, "
                f"job latency {len(rows) * PRESETS[preset].job_latency_us / 1e3:4.2f} ms)")
        if not args.model_only:
            line += f"  through the driver: {run_through_driver(preset):7.2f} ms"
        print(line)
        if args.layers:
            for name, ms, n_macs in rows:
                print(f"    {name:22s} {ms:7.3f} ms  {n_macs / 1e6:7.2f} M MACs")
    lo, hi = PUBLISHED_RK3588_MS
    print(f"published: one RK3588 core, Mesa Teflon: {lo:g}-{hi:g} ms per inference")


if __name__ == "__main__":
    main()
