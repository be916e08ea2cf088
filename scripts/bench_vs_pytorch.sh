#!/usr/bin/env bash
# Ours vs PyTorch, same machine, same session, interleaved: prints a Markdown table of medians
# and the ratio ours / PyTorch (< 1 means we are faster).
#   scripts/bench_vs_pytorch.sh [THREADS]
# PyTorch goes into .venv (created on first use); set PYTHON to use an existing interpreter
# that has torch and timm. Not run by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-$(nproc)}
if [ -z "${PYTHON:-}" ]; then
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
    .venv/bin/pip install -q -r scripts/bench-requirements.txt
  fi
  PYTHON=.venv/bin/python
fi
cargo build --release -q
bin=target/release/convnext-explorer
iters=${ITERS:-20}
echo "| model | batch | dtype | ours (ms) | PyTorch (ms) | ours / PyTorch |"
echo "| --- | --- | --- | --- | --- | --- |"
while read -r model batch dtype; do
  ours=$($bin bench --variant "$model" --batch "$batch" --dtype "$dtype" --iters "$iters" --threads "$threads" --json | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["median_ms"])')
  theirs=$("$PYTHON" scripts/bench_pytorch.py --model "$model" --batch "$batch" --dtype "$dtype" --threads "$threads" --iters "$iters" | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["median_ms"])')
  "$PYTHON" -c "print(f'| $model | $batch | $dtype | {$ours:.1f} | {$theirs:.1f} | {$ours/$theirs:.2f} |')"
done <<'LIST'
convnext_atto 1 f32
convnext_tiny 1 f32
convnext_tiny 1 bf16
convnext_small 1 f32
convnext_base 1 f32
convnext_tiny 8 f32
LIST
