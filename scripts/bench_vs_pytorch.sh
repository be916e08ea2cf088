#!/usr/bin/env bash
# Ours vs PyTorch, same machine, same session: ROUNDS (default 5) interleaved rounds per row, each
# round our median over ITERS forwards then PyTorch's (the faster of NCHW and channels_last, both
# timed), and the ratio ours / PyTorch of that round (< 1: we are faster). Prints a Markdown table
# with the median ratio and its min–max over the rounds.
#   scripts/bench_vs_pytorch.sh [THREADS]        (ROUNDS=5 ITERS=10 by default)
# PyTorch goes into .venv (created on first use); set PYTHON to use an existing interpreter
# that has torch and timm. Not run by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-$(nproc)}
rounds=${ROUNDS:-5}
if [ -z "${PYTHON:-}" ]; then
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
    .venv/bin/pip install -q -r scripts/bench-requirements.txt
  fi
  PYTHON=.venv/bin/python
fi
cargo build --release -q
bin=target/release/convnext-explorer
json() { "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["median_ms"])'; }
echo "$(nproc) cores, $threads threads, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $rounds rounds"
echo
echo "| model | batch | dtype | ours (ms) | PyTorch (ms) | ours / PyTorch: median (min–max) |"
echo "| --- | --- | --- | --- | --- | --- |"
while read -r model batch dtype iters; do
  iters=${ITERS:-$iters}
  ours=() theirs=()
  for _ in $(seq "$rounds"); do
    ours+=("$($bin bench --variant "$model" --batch "$batch" --dtype "$dtype" --iters "$iters" --threads "$threads" --json | json)")
    theirs+=("$("$PYTHON" scripts/bench_pytorch.py --model "$model" --batch "$batch" --dtype "$dtype" --threads "$threads" --iters "$iters" | json)")
  done
  "$PYTHON" - "$model" "$batch" "$dtype" "${ours[*]}" "${theirs[*]}" <<'PY'
import statistics, sys
model, batch, dtype, ours, theirs = sys.argv[1:]
o = [float(v) for v in ours.split()]
t = [float(v) for v in theirs.split()]
r = [a / b for a, b in zip(o, t)]
print(f"| {model} | {batch} | {dtype} | {statistics.median(o):.1f} | {statistics.median(t):.1f} "
      f"| {statistics.median(r):.2f} ({min(r):.2f}–{max(r):.2f}) |")
PY
done <<'LIST'
convnext_atto 1 f32 20
convnext_tiny 1 f32 10
convnext_small 1 f32 10
convnext_base 1 f32 6
convnext_large 1 f32 4
convnext_xlarge 1 f32 3
convnext_tiny 8 f32 4
convnext_tiny 1 bf16 4
convnextv2_atto 1 f32 20
convnextv2_tiny 1 f32 10
LIST
