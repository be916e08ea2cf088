#!/usr/bin/env bash
# Builds the `cuda` feature without a GPU or a system CUDA toolkit: nvcc 13.0 from PyPI (into
# .cuda-venv), then clippy on the library and tests with the feature, which compiles candle's
# kernels and ours (src/kernels/gpu/dwconv.cu, via build.rs) to PTX. Linking and running need the
# CUDA libraries and a GPU; on such a machine run `cargo test --release --features cuda`
# instead (or build here with scripts/build_for_gpu.sh and run scripts/gpu_check.sh there).
# Not run by CI (about 12 minutes on 2 cores, most of it candle's kernels).
#   scripts/check_cuda_build.sh [COMPUTE_CAP]   (default 80)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cuda_toolkit.sh "${1:-80}"
cargo clippy --lib --tests --no-default-features --features cuda --target-dir target/cuda-check -- -D warnings
echo "cuda feature: builds and passes clippy"
