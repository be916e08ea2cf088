# Sourced on the GPU machine by scripts/gpu_check.sh (and by hand, to run one binary): unpacks
# the binaries scripts/build_for_gpu.sh left in $1 into $bin, makes the checkout reachable at
# the path the tests were built at, and puts the CUDA libraries on LD_LIBRARY_PATH.
carry=${1:-target/gpu-carry}
bin=$(mktemp -d)
for f in "$carry"/*.xz; do # python's lzma: the one unpacker sure to be there
  python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
    "$f" "$bin/$(basename "$f" .xz)"
done
chmod +x "$bin"/*
# The tests find tests/fixtures through the checkout's path where they were built.
built=$(cat "$carry/MANIFEST_DIR")
if [ "$(realpath -m "$built")" != "$PWD" ] && [ ! -e "$built" ]; then
  mkdir -p "$(dirname "$built")" && ln -s "$PWD" "$built"
fi
# The CUDA libraries by the sonames the binaries were linked with: pip's nvidia packages first.
libs=$(mktemp -d)
roots=$(python3 -c 'import nvidia, sys; print(" ".join(nvidia.__path__))' 2>/dev/null)
for so in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10; do
  f=$(find $roots /usr/local/cuda*/ -name "$so*" 2>/dev/null | sort | head -1)
  [ -n "$f" ] || f=$(find /usr /opt -name "$so*" 2>/dev/null | sort | head -1)
  [ -n "$f" ] && ln -sf "$f" "$libs/$so" || echo "NOT FOUND: $so"
done
export LD_LIBRARY_PATH="$libs:/usr/local/nvidia/lib64:/usr/local/nvidia/lib:${LD_LIBRARY_PATH:-}"
