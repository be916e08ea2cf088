// Runs a GPU kernel's own source on the host, one emulated thread at a time, so that the index
// arithmetic and bounds of the exact code the GPU runs are tested on machines without a GPU.
// Built twice by tests/gpu_kernels_on_host.rs: -DBACKEND_CUDA (src/kernels/gpu/dwconv.cu,
// launched as src/kernels/dwconv_cuda.rs launches it) and -DBACKEND_METAL
// (src/kernels/gpu/dwconv.metal, dispatched as src/kernels/dwconv_metal.rs dispatches it).
//
// Usage: harness IN OUT [MAX_BLOCKS]. IN holds u32 n, h, w, c, k then f32 x, w, b; OUT receives
// f32 y, which starts as NaN so that an element no thread writes shows.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#ifdef BACKEND_CUDA
struct Dim3 {
  unsigned x = 0, y = 0, z = 0;
};
static Dim3 blockIdx, blockDim, threadIdx, gridDim;
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__
#include "dwconv.cu"
#else
#include "dwconv.metal"
#endif

static const unsigned THREADS = 256;

int main(int argc, char **argv) {
  if (argc < 3) return 2;
  FILE *in = std::fopen(argv[1], "rb");
  if (!in) return 3;
  uint32_t d[5];
  if (std::fread(d, 4, 5, in) != 5) return 4;
  const size_t n = d[0], h = d[1], w = d[2], c = d[3], k = d[4];
  const size_t total = n * h * w * c;
  std::vector<float> x(total), wt(k * k * c), b(c), y(total, NAN);
  if (std::fread(x.data(), 4, x.size(), in) != x.size()) return 5;
  if (std::fread(wt.data(), 4, wt.size(), in) != wt.size()) return 6;
  if (std::fread(b.data(), 4, b.size(), in) != b.size()) return 7;
  std::fclose(in);
  size_t blocks = (total + THREADS - 1) / THREADS;
  if (blocks < 1) blocks = 1;
#ifdef BACKEND_CUDA
  size_t cap = argc > 3 ? std::strtoul(argv[3], nullptr, 10) : (1u << 20);
  if (blocks > cap) blocks = cap;
  gridDim.x = (unsigned)blocks;
  blockDim.x = THREADS;
  for (blockIdx.x = 0; blockIdx.x < blocks; ++blockIdx.x)
    for (threadIdx.x = 0; threadIdx.x < THREADS; ++threadIdx.x)
      dwconv_nhwc_f32(x.data(), wt.data(), b.data(), y.data(), (int)n, (int)h, (int)w, (int)c,
                      (int)k);
#else
  const DwParams p{(uint)n, (uint)h, (uint)w, (uint)c, (uint)k};
  for (size_t idx = 0; idx < blocks * THREADS; ++idx)
    dwconv_nhwc_f32(x.data(), wt.data(), b.data(), y.data(), p, (uint)idx);
#endif
  FILE *out = std::fopen(argv[2], "wb");
  if (!out) return 8;
  if (std::fwrite(y.data(), 4, y.size(), out) != y.size()) return 9;
  std::fclose(out);
  return 0;
}
