#!/usr/bin/env bash
# Ours, OpenVINO and ONNX Runtime alone, one after another, ROUNDS times (default 5), on one
# model at batch 1 f32: a quicker check of one row of scripts/bench_vs_pytorch.sh (no PyTorch,
# no check of the outputs; bench_runtimes.py exports the model once under target/onnx/). Prints each
# runner's per-round medians (ms), each one's median over the rounds, and ours / it (of the
# medians).
#   scripts/bench_alternate.sh MODEL [THREADS]      e.g. convnext_atto 2
#   ITERS=200   forwards per timing     BIN=path   our binary (default target/release/...)
# Uses .venv (see scripts/bench_vs_pytorch.sh). Not run by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?usage: scripts/bench_alternate.sh MODEL [THREADS]}
threads=${2:-$(nproc)}
rounds=${ROUNDS:-5}
iters=${ITERS:-200}
bin=${BIN:-target/release/convnext-explorer}
py=${PYTHON:-.venv/bin/python}
[ -x "$bin" ] || { echo "no $bin: cargo build --release, or set BIN" >&2; exit 1; }
[ -x "$py" ] || { echo "no $py: run scripts/bench_vs_pytorch.sh once, or set PYTHON" >&2; exit 1; }
ours() {
  "$bin" --threads "$threads" bench --variant "$model" --iters "$iters" 2>&1 |
    grep -o 'median [0-9.]*' | cut -d' ' -f2
}
peer() {
  "$py" scripts/bench_runtimes.py --runtime "$1" --model "$model" --threads "$threads" \
    --iters "$iters" 2>/dev/null | "$py" -c 'import json,sys; print("%.2f" % json.load(sys.stdin)["median_ms"])'
}
declare -A times
for _ in $(seq "$rounds"); do
  times[ours]+=" $(ours)"
  times[openvino]+=" $(peer openvino)"
  times[onnxruntime]+=" $(peer onnxruntime)"
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
m_ours=$(median <<<"${times[ours]}")
for k in ours openvino onnxruntime; do
  m=$(median <<<"${times[$k]}")
  printf '%-12s rounds:%s  median %.2f ms  ours / it %.2f\n' "$k" "${times[$k]}" "$m" \
    "$(awk -v a="$m_ours" -v b="$m" 'BEGIN {print a / b}')"
done
