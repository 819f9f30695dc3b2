#!/usr/bin/env bash
# One unattended check of the torch driver on a CUDA GPU, in under 10 minutes (issue 15, "## GPU"):
#   1. the machine (nvidia-smi, torch and CUDA versions, ffaccel info)
#   2. ffaccel conformance DEVICE --quick        -> conformance-quick.{json,md}
#      ffaccel report DEVICE --quick             -> report-quick/
#   3. models under ffaccel.torch.offload(DEVICE) against stock PyTorch -> offload.json
#   4. ffaccel conformance DEVICE --full         -> conformance-full.{json,md}
#      ffaccel report DEVICE                     -> report/ (report.html, plots, results.json)
# The cheap, most telling steps come first, so that a budget cut short still leaves them.
# Everything lands in one folder, with summary.md (each step's exit status and seconds).
# A step that fails or runs out of time is recorded and the next one runs; the exit status
# is 0 only when every step passed.
#
# Usage: benchmarks/gpu_check.sh [OUT_DIR]
# Environment:
#   FFACCEL_GPU_CHECK_DEVICE    device to check (default torch:cuda; torch:cpu runs the script's
#                               logic on a machine without a GPU)
#   FFACCEL_GPU_CHECK_BUDGET_S  wall-clock budget for all steps (default 570)
#   PYTHON                      interpreter with ffaccel and torch installed (default: python3)
set -uo pipefail

DEVICE="${FFACCEL_GPU_CHECK_DEVICE:-torch:cuda}"
BUDGET="${FFACCEL_GPU_CHECK_BUDGET_S:-570}"
PY="${PYTHON:-python3}"
OUT="${1:-gpu-check-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT" || { echo "cannot create $OUT" >&2; exit 2; }
OUT="$(cd "$OUT" && pwd)"
START=$(date +%s)
FAILED=0
SUMMARY="$OUT/summary.md"
printf '# ffaccel GPU check: %s\n\nstarted %s (UTC), budget %ss\n\n| step | exit | seconds | output |\n|---|---:|---:|---|\n' \
  "$DEVICE" "$(date -u '+%Y-%m-%d %H:%M:%S')" "$BUDGET" > "$SUMMARY"

# step NAME SHARE_S OUTPUT CMD...: runs CMD with at most SHARE_S seconds (less when the budget is
# nearly spent), its stdout and stderr in OUT/NAME.log, and records it in the summary.
step() {
  local name="$1" share="$2" output="$3"
  shift 3
  local left=$((BUDGET - ($(date +%s) - START)))
  local limit=$((share < left ? share : left))
  local t0 rc
  t0=$(date +%s)
  if ((limit < 5)); then
    rc=124
    echo "skipped: the budget is spent" > "$OUT/$name.log"
  else
    echo "== $name (at most ${limit}s)"
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
  fi
  local dt=$(($(date +%s) - t0))
  ((rc != 0)) && FAILED=1
  local note="$output"
  if ((limit < 5)); then
    note="$output (skipped: the budget was spent)"
  elif ((rc == 124 || rc == 137)); then
    note="$output (timed out after ${limit}s)"
  fi
  printf '| %s | %s | %s | %s |\n' "$name" "$rc" "$dt" "$note" >> "$SUMMARY"
  echo "   exit $rc in ${dt}s"
  return 0
}

# 1. the machine; on a CUDA device, stop early (and say why) when PyTorch sees no GPU
step env 60 "env.log" "$PY" - "$DEVICE" <<'EOF'
import platform, subprocess, sys
import torch, ffaccel
dev = sys.argv[1]
print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| ffaccel", ffaccel.__version__)
print("cuda available:", torch.cuda.is_available(), "| devices:", torch.cuda.device_count())
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.1f} GiB, sm {p.major}.{p.minor}")
try:
    print(subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20).stdout)
except (OSError, subprocess.TimeoutExpired) as e:
    print("nvidia-smi:", e)
if dev.startswith("torch:cuda") and not torch.cuda.is_available():
    sys.exit("PyTorch sees no CUDA device")
EOF
if ! grep -q "^| env | 0 |" "$SUMMARY"; then
  echo "the environment check failed: see $OUT/env.log" >&2
  printf '\nstopped: the environment check failed (see env.log)\n' >> "$SUMMARY"
  exit 1
fi
step info 60 "info.json" "$PY" -m ffaccel.cli info "$DEVICE" --json
[ -s "$OUT/info.log" ] && cp "$OUT/info.log" "$OUT/info.json"

# 2. the quick checks first (their results are worth most if the budget runs short)
step conformance-quick 90 "conformance-quick.json, .md" \
  "$PY" -m ffaccel.cli conformance "$DEVICE" --quick --report "$OUT/conformance-quick.json"
step report-quick 120 "report-quick/" "$PY" -m ffaccel.cli report "$DEVICE" --quick --out "$OUT/report-quick"

# 3. models under offload, against stock PyTorch on the host
step offload 120 "offload.json" "$PY" - "$DEVICE" "$OUT/offload.json" <<'EOF'
import json, statistics, sys, time
import torch
import ffaccel.torch

dev, path = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
models = {
    "transformer encoder (2 layers, d 256, batch 8 x 64)": (
        torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(256, 4, 1024, batch_first=True,
                                                                     dropout=0.0), 2, enable_nested_tensor=False),
        torch.randn(8, 64, 256)),
    "MLP (3 Linear + GELU, 4096 x 1024)": (
        torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.GELU(), torch.nn.Linear(4096, 4096),
                            torch.nn.GELU(), torch.nn.Linear(4096, 1024)),
        torch.randn(4096, 1024)),
    "CNN (2 Conv2d + ReLU + Linear, 16 x 3 x 64 x 64)": (
        torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, 64, 3, stride=2),
                            torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(64 * 31 * 31, 10)),
        torch.randn(16, 3, 64, 64)),
}


def timed(fn, repeats=5):
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


results = {"device": dev, "models": {}}
ok = True
for name, (model, x) in models.items():
    model.eval()
    entry = {}
    try:
        with torch.no_grad():
            want = model(x)
            stock_s = timed(lambda: model(x))
            with ffaccel.torch.offload(dev) as session:
                got = model(x)
                off_s = timed(lambda: model(x))
        err = (got.double() - want.double()).abs().max().item()
        scale = want.double().abs().max().item()
        entry = {"max_abs_error": err, "max_abs_value": scale, "stock_host_s": stock_s, "offload_s": off_s,
                 "stats": {k: v for k, v in session.stats.items() if isinstance(v, (int, float, str))}}
        entry["ok"] = bool(err <= 1e-3 * max(1.0, scale)) and session.stats.get("offloaded_calls", 0) > 0
    except Exception as e:  # recorded; the other models still run
        entry = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    ok = ok and entry["ok"]
    results["models"][name] = entry
    print(name, json.dumps(entry, default=str))
with open(path, "w") as f:
    json.dump(results, f, indent=2, default=str)
sys.exit(0 if ok else 1)
EOF

# 4. the full conformance suite and the full report, with what is left of the budget
step conformance-full 240 "conformance-full.json, .md" \
  "$PY" -m ffaccel.cli conformance "$DEVICE" --full --report "$OUT/conformance-full.json"
step report "$BUDGET" "report/" "$PY" -m ffaccel.cli report "$DEVICE" --out "$OUT/report"

TOTAL=$(($(date +%s) - START))
printf '\nfinished in %ss; %s\n' "$TOTAL" "$([ $FAILED = 0 ] && echo 'every step passed' || echo 'SOME STEPS FAILED')" >> "$SUMMARY"
cat "$SUMMARY"
exit $FAILED
