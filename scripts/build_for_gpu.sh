#!/usr/bin/env bash
# Builds, on a machine with no GPU and no CUDA libraries, what scripts/gpu_check.sh runs on one
# that has both: the command line and the GPU test binaries (tests/cuda.rs, tests/dwconv.rs)
# with the `cuda` feature, stripped and compressed into target/gpu-carry/.
# candle links the CUDA driver, runtime, cuBLAS, cuBLASLt, cuRAND and NVRTC. Here (but for the
# runtime, which nvcc's wheel carries) they are stand-ins:
# libraries with the real ones' sonames whose functions (every one cudarc binds) are empty,
# as the toolkit's lib/stubs/libcuda.so is for the driver. Nothing calls them here; on the GPU
# machine the dynamic linker finds the real libraries by those sonames.
#   [CUDA_STUBS=DIR] scripts/build_for_gpu.sh [COMPUTE_CAP]   (target/cuda-stubs; 90: H100/H200)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/cuda_toolkit.sh "${1:-90}"
stubs=$(realpath -m "${CUDA_STUBS:-target/cuda-stubs}")
mkdir -p "$stubs"
cudarc=$(cargo metadata --format-version 1 --features cuda --no-default-features |
  python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc").rsplit("/", 1)[0])')
stub() { # name soname bindings
  grep -o 'pub unsafe fn [A-Za-z0-9_]*' "$cudarc/src/$3" | awk '{print "void " $4 "(void) {}"}' |
    sort -u >"$stubs/$1.c"
  cc -shared -fPIC -Wl,-soname,"$2" -o "$stubs/lib$1.so" "$stubs/$1.c"
}
stub cuda libcuda.so.1 driver/sys/mod.rs
stub cublas libcublas.so.13 cublas/sys/mod.rs
stub cublasLt libcublasLt.so.13 cublaslt/sys/mod.rs
stub curand libcurand.so.10 curand/sys/mod.rs
stub nvrtc libnvrtc.so.13 nvrtc/sys/mod.rs
# The runtime library itself comes with nvcc's wheel, without the unversioned name ld asks for.
ln -sf "$CUDA_ROOT/lib/libcudart.so.13" "$stubs/libcudart.so"
export RUSTFLAGS="-L native=$stubs"
build=(--release --no-default-features --features cuda --target-dir target/cuda)
cargo build "${build[@]}" --bin convnext-explorer
cargo test "${build[@]}" --test cuda --test dwconv --no-run 2>&1 | tee target/cuda/tests.log
carry=target/gpu-carry
rm -rf "$carry" && mkdir -p "$carry"
# xz: the three together must travel in well under 64 MB (gzip leaves 15 MB each, xz 7).
pack() { strip -o "$carry/$2" "$1" && xz -9 -T0 "$carry/$2"; }
pack target/cuda/release/convnext-explorer convnext-explorer
for t in cuda dwconv; do
  pack "$(grep -o "target/cuda/release/deps/$t-[0-9a-f]*" target/cuda/tests.log | tail -1)" "test-$t"
done
# The tests find their fixtures through the path they were built at.
echo "$PWD" >"$carry/MANIFEST_DIR"
du -sh "$carry"
