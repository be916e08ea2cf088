#!/usr/bin/env bash
# On a machine with an NVIDIA GPU, the CUDA driver and CUDA 13's runtime, cuBLAS and cuRAND
# (as PyTorch's pip wheels carry them), with binaries from scripts/build_for_gpu.sh:
#  1. the GPU tests (tests/cuda.rs: the model against PyTorch's references, Grad-CAM, half
#     precision, CKA, feature visualisation; tests/dwconv.rs: the depthwise kernel);
#  2. `classify` on the GPU against the CPU;
#  3. ConvNeXt-T timed against PyTorch eager on the same GPU (scripts/bench_pytorch.py, timm),
#     interleaved, ROUNDS rounds, batch 1, 8 and 64 in f32 and 64 in bf16, then per-layer
#     profiles and Grad-CAM's cost. Prints the table last; everything is kept in OUT_DIR.
#   scripts/gpu_check.sh [BIN_DIR] [OUT_DIR] [ROUNDS]  (target/gpu-carry, $OUT or target/gpu-out, 5)
set -uo pipefail
cd "$(dirname "$0")/.."
carry=${1:-target/gpu-carry} out=${2:-${OUT:-target/gpu-out}} rounds=${3:-5}
mkdir -p "$out"
. scripts/gpu_env.sh "$carry"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv |
  tee "$out/gpu.txt"
ldd "$bin/convnext-explorer" | grep -E 'cu|nvrtc' | tee -a "$out/gpu.txt"
cli="$bin/convnext-explorer"
fails=0
step() { # name, command...: runs it with a time limit, logs it, counts failures
  local name=$1; shift
  echo "== $name"
  if ! timeout 200 "$@" >"$out/$name.log" 2>&1; then
    fails=$((fails + 1)); echo "FAILED: $name"; tail -40 "$out/$name.log"; return 1
  else
    grep -E '^test |test result|rel err|CKA|objective|error' "$out/$name.log" | tail -30
  fi
  return 0 # (grep finds nothing in a quiet log: not a failure)
}
step test-cuda "$bin/test-cuda" --test-threads 1 --nocapture
step test-dwconv "$bin/test-dwconv" --test-threads 1 --nocapture
img=tests/fixtures/chelsea.png
if step classify-cuda "$cli" --device cuda classify --json "$img" &&
  step classify-cpu "$cli" --device cpu classify --json "$img"; then
  python3 - "$out"/classify-{cuda,cpu}.log <<'PY' || { fails=$((fails + 1)); echo "FAILED: classify differs"; }
import json, sys
g, c = ([json.loads(l) for l in open(p) if l.startswith("{")] for p in sys.argv[1:])
assert g and len(g) == len(c), "no answer"
for a, b in zip(g, c):
    assert [t["index"] for t in a["top"]] == [t["index"] for t in b["top"]], (a, b)
    d = max(abs(s["prob"] - t["prob"]) for s, t in zip(a["top"], b["top"]))
    assert d < 1e-4, d
print("classify: the same top 5 on CUDA as on the CPU, probabilities within", d)
PY
fi
: >"$out/bench.jsonl"
cases=("1 f32" "8 f32" "64 f32" "64 bf16")
for r in $(seq "$rounds"); do
  for c in "${cases[@]}"; do
    set -- $c
    iters=$((1 < $1 ? 20 : 50))
    timeout 120 "$cli" --device cuda bench --variant tiny --batch "$1" --dtype "$2" \
      --iters "$iters" --warmup 5 --json >>"$out/bench.jsonl" 2>>"$out/bench.err" ||
      echo "ours b$1 $2 failed"
    timeout 120 python3 scripts/bench_pytorch.py --model convnext_tiny --batch "$1" --dtype "$2" \
      --iters "$iters" --warmup 5 --device cuda >>"$out/bench.jsonl" 2>>"$out/bench.err" ||
      echo "pytorch b$1 $2 failed"
  done
done
for b in 1 64; do
  step "profile-b$b" "$cli" --device cuda bench --variant tiny --batch "$b" --iters 10 \
    --profile-csv "$out/profile-b$b.csv" --gradcam stages.3 --layers
done
python3 - "$out/bench.jsonl" <<'PY' | tee "$out/table.md"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def times(tool, b, dt):
    return [r["median_ms"] for r in rows if r["batch"] == b and r["dtype"] == dt
            and ("torch" in r) == (tool == "pytorch")]
print("| ConvNeXt-T on CUDA | ours ms | PyTorch eager ms | ours / PyTorch |")
print("| --- | --- | --- | --- |")
for b, dt in [(1, "f32"), (8, "f32"), (64, "f32"), (64, "bf16")]:
    o, p = times("ours", b, dt), times("pytorch", b, dt)
    if not o or not p:
        print(f"| batch {b} {dt} | {o} | {p} | missing |"); continue
    f = lambda v: f"{statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})"
    print(f"| batch {b} {dt} | {f(o)} | {f(p)} | {statistics.median(o) / statistics.median(p):.2f} |")
PY
echo "failed steps: $fails"
exit "$fails"
