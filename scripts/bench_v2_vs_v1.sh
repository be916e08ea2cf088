#!/usr/bin/env bash
# ConvNeXt V2 against V1 of the same size (random weights, 224x224, batch 1, f32): ROUNDS
# interleaved rounds of `bench --iters 10` each, then per pair the median of the rounds' V2/V1
# ratios with their range. Usage: scripts/bench_v2_vs_v1.sh [THREADS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
rounds=${2:-5}
cargo build --release --quiet
bin=target/release/convnext-explorer
log=$(mktemp)
for r in $(seq "$rounds"); do
  for v in convnext_atto convnextv2_atto convnext_tiny convnextv2_tiny; do
    ms=$("$bin" --threads "$threads" bench --variant "$v" --iters 10 --json |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["median_ms"])')
    echo "$r $v $ms" >>"$log"
  done
done
python3 - "$log" <<'PY'
import statistics as st, sys
d = {}
for line in open(sys.argv[1]):
    r, v, ms = line.split()
    d.setdefault(r, {})[v] = float(ms)
for v1, v2 in [("convnext_atto", "convnextv2_atto"), ("convnext_tiny", "convnextv2_tiny")]:
    ratios = [x[v2] / x[v1] for x in d.values()]
    print(f"{v2} / {v1}: median {st.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f}), "
          f"V1 {st.median(x[v1] for x in d.values()):.1f} ms, V2 {st.median(x[v2] for x in d.values()):.1f} ms")
PY
