# Sourced by the scripts that build the `cuda` feature on a machine without a CUDA toolkit:
# nvcc 13.0 from PyPI into .cuda-venv, then PATH and CUDA_ROOT pointing at it and
# CUDA_COMPUTE_CAP set to $1 (default 80).
if [ ! -x .cuda-venv/bin/python ]; then
  python3 -m venv .cuda-venv
  # crt must match nvcc's version exactly (a newer crt breaks the host stubs).
  .cuda-venv/bin/pip install -q "nvidia-cuda-nvcc==13.0.88" "nvidia-cuda-crt==13.0.88" \
    "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*" "nvidia-nvvm==13.0.88"
fi
cuda=$(.cuda-venv/bin/python -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
export PATH="$cuda/bin:$PATH" CUDA_ROOT="$cuda" CUDA_COMPUTE_CAP="${1:-80}"
nvcc --version | tail -1
