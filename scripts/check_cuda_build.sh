#!/usr/bin/env bash
# Builds the `cuda` feature without a GPU or a system CUDA toolkit: nvcc 13.0 from PyPI (into
# .cuda-venv), then clippy on the library and tests with the feature, which compiles candle's
# kernels and ours (src/kernels/gpu/dwconv.cu, via build.rs) to PTX. Linking and running need the
# CUDA libraries and a GPU; on such a machine run `cargo test --release --features cuda`
# instead. Not run by CI (about 12 minutes on 2 cores, most of it candle's kernels).
#   scripts/check_cuda_build.sh [COMPUTE_CAP]   (default 80)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .cuda-venv/bin/python ]; then
  python3 -m venv .cuda-venv
  # crt must match nvcc's version exactly (a newer crt breaks the host stubs).
  .cuda-venv/bin/pip install -q "nvidia-cuda-nvcc==13.0.88" "nvidia-cuda-crt==13.0.88" \
    "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*" "nvidia-nvvm==13.0.88"
fi
cuda=$(.cuda-venv/bin/python -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
export PATH="$cuda/bin:$PATH" CUDA_ROOT="$cuda" CUDA_COMPUTE_CAP="${1:-80}"
nvcc --version | tail -1
cargo clippy --lib --tests --no-default-features --features cuda --target-dir target/cuda-check -- -D warnings
echo "cuda feature: builds and passes clippy"
