#!/usr/bin/env bash
# Ours vs PyTorch eager, ONNX Runtime and OpenVINO, same machine, same session: ROUNDS (default 5)
# interleaved rounds per row; each round runs, one after another, our median over ITERS forwards,
# PyTorch's (the faster of NCHW and channels_last, both timed; scripts/bench_pytorch.py), ONNX
# Runtime's and OpenVINO's (scripts/bench_runtimes.py, on timm's ONNX export of the same model,
# made once per row before the rounds and cached under target/onnx/), and the ratios ours / each
# peer of that round (< 1: we are faster), and ours / the faster of ONNX Runtime and OpenVINO in
# that round. Prints the machine, the versions, then a Markdown table: each time is the median
# over the rounds, each ratio the median and its min–max over the rounds. bf16: OpenVINO with the
# bf16 precision hint; ONNX Runtime has no bf16 CPU path (n/a, see scripts/bench_runtimes.py).
# Before the rounds, each runtime's output is checked against PyTorch's (max abs diff on stderr).
#   scripts/bench_vs_pytorch.sh [THREADS]        (threads default: nproc)
#   ROUNDS=5         rounds per row
#   ITERS=N          forwards per timing, for every row (default: the row's own, in the list below)
#   ROWS="convnext_tiny 1 f32; convnext_tiny 1 bf16"
#                    only these rows ("model batch dtype [iters]", ';' or newline between rows)
#   BUILD=0          don't run `cargo build --release` first (use the binary as it is)
#   BIN=path         our binary (default target/release/convnext-explorer; implies nothing about BUILD)
# The peers go into .venv from scripts/bench-requirements.txt (created on first use, reinstalled
# when that file changes); set PYTHON to use an existing interpreter that has those packages.
# Not run by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-$(nproc)}
rounds=${ROUNDS:-5}
if [ -z "${PYTHON:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  if ! cmp -s scripts/bench-requirements.txt .venv/bench-requirements.txt; then
    .venv/bin/pip install -q -r scripts/bench-requirements.txt
    cp scripts/bench-requirements.txt .venv/bench-requirements.txt
  fi
  PYTHON=.venv/bin/python
fi
[ "${BUILD:-1}" = 0 ] || cargo build --release -q
bin=${BIN:-target/release/convnext-explorer}
[ -x "$bin" ] || { echo "no $bin: build it (cargo build --release) or set BIN" >&2; exit 1; }
median_ms() { "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["median_ms"])'; }

default_rows='convnext_atto 1 f32 20
convnext_tiny 1 f32 10
convnext_small 1 f32 10
convnext_base 1 f32 6
convnext_large 1 f32 4
convnext_xlarge 1 f32 3
convnext_tiny 8 f32 4
convnext_atto 1 bf16 20
convnext_tiny 1 bf16 4
convnext_base 1 bf16 4
convnextv2_atto 1 f32 20
convnextv2_tiny 1 f32 10'
rows=$default_rows
if [ -n "${ROWS:-}" ]; then
  rows=
  while read -r m b d i; do
    [ -n "${m:-}" ] || continue
    if [ -z "${d:-}" ]; then
      echo "ROWS: '$m ${b:-}' is not 'model batch dtype [iters]'" >&2
      exit 1
    fi
    [ -n "${i:-}" ] || i=$(awk -v m="$m" -v b="$b" -v d="$d" '$1 == m && $2 == b && $3 == d { print $4 }' <<<"$default_rows")
    rows+="$m $b $d ${i:-10}"$'\n'
  done < <(tr ';' '\n' <<<"$ROWS")
fi

flag() { grep -qw "$1" /proc/cpuinfo && echo "$1 yes" || echo "$1 no"; }
echo "$(nproc) cores, $threads threads, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
  "$(flag avx512f), $(flag avx512_bf16), $rounds rounds"
echo "ours $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo '+changes');" \
  "$("$PYTHON" -c '
import importlib.metadata as m, openvino as ov
v = {p: m.version(p) for p in ("torch", "timm", "onnx", "onnxruntime", "openvino")}
print(", ".join(f"{k} {x}" for k, x in v.items()) + "; OpenVINO CPU capabilities: "
      + " ".join(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")))')"
echo
echo "| model | batch | dtype | ours (ms) | PyTorch (ms) | ORT (ms) | OpenVINO (ms) | ours / PyTorch | ours / ORT | ours / OpenVINO | ours / faster of ORT, OpenVINO |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
any_bf16=0
while read -r model batch dtype iters <&3; do
  [ -n "$model" ] || continue
  iters=${ITERS:-$iters}
  common=(--model "$model" --batch "$batch" --dtype "$dtype" --threads "$threads" --iters "$iters")
  "$PYTHON" scripts/bench_runtimes.py --export-only --model "$model" --batch "$batch"
  ours=() torch=() ort=() ov=()
  for r in $(seq "$rounds"); do
    check=()
    [ "$r" != 1 ] || check=(--print-check)
    t=$($bin bench --variant "$model" --batch "$batch" --dtype "$dtype" --iters "$iters" --threads "$threads" --json | median_ms)
    ours+=("$t")
    t=$("$PYTHON" scripts/bench_pytorch.py "${common[@]}" | median_ms)
    torch+=("$t")
    if [ "$dtype" = f32 ]; then
      t=$("$PYTHON" scripts/bench_runtimes.py --runtime onnxruntime "${common[@]}" "${check[@]}" | median_ms)
      ort+=("$t")
    else
      any_bf16=1  # ONNX Runtime: no bf16 CPU kernels, nothing to time (scripts/bench_runtimes.py)
    fi
    t=$("$PYTHON" scripts/bench_runtimes.py --runtime openvino "${common[@]}" "${check[@]}" | median_ms)
    ov+=("$t")
  done
  "$PYTHON" - "$model" "$batch" "$dtype" "${ours[*]}" "${torch[*]}" "${ort[*]}" "${ov[*]}" <<'PY'
import statistics, sys
model, batch, dtype, *cols = sys.argv[1:]
ours, torch, ort, ov = ([float(v) for v in c.split()] for c in cols)
def ms(v):
    return f"{statistics.median(v):.1f}" if v else "n/a"
def ratio(peer):
    if not peer:
        return "n/a"
    r = [a / b for a, b in zip(ours, peer)]
    return f"{statistics.median(r):.2f} ({min(r):.2f}–{max(r):.2f})"
if ort:
    faster = [min(a, b) for a, b in zip(ort, ov)]
    ov_wins = sum(b < a for a, b in zip(ort, ov))
    who = "OpenVINO" if ov_wins * 2 > len(ov) else "ORT" if ov_wins * 2 < len(ov) else "either"
    best = f"{ratio(faster)} {who}"
else:
    best = f"{ratio(ov)} OpenVINO"
print(f"| {model} | {batch} | {dtype} | {ms(ours)} | {ms(torch)} | {ms(ort)} | {ms(ov)} "
      f"| {ratio(torch)} | {ratio(ort)} | {ratio(ov)} | {best} |")
PY
done 3<<<"$rows"
echo
echo "Last column: ours / min(ORT, OpenVINO) of each round, and which peer was faster in most rounds."
if [ "$any_bf16" = 1 ]; then
  echo "bf16: OpenVINO runs its bf16 precision hint; ONNX Runtime has no bf16 CPU kernels (n/a), so" \
    "the last column is ours / OpenVINO there."
fi
