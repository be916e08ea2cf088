// Depthwise K×K convolution ("same" padding, stride 1) on channels-last tensors, for the `cuda`
// feature. Layouts as on the CPU: x [N,H,W,C], w [K,K,C], b [C], y [N,H,W,C]; all contiguous.
//
// One thread per output element, channel fastest: neighbouring threads read neighbouring
// channels of the same pixel, so every tap's loads of x and w are coalesced, and the 7×7 window
// that neighbouring pixels share is served from L1/L2. Accumulation is in f32 for every dtype.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stddef.h>

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

__device__ __forceinline__ void from_f32(float v, float *out) { *out = v; }
__device__ __forceinline__ void from_f32(float v, __half *out) { *out = __float2half(v); }
__device__ __forceinline__ void from_f32(float v, __nv_bfloat16 *out) { *out = __float2bfloat16(v); }

template <typename T>
__device__ void dwconv_nhwc(const T *__restrict__ x, const T *__restrict__ w,
                            const T *__restrict__ b, T *__restrict__ y, int n, int h, int wd,
                            int c, int k) {
  const int p = k / 2;
  const size_t total = (size_t)n * h * wd * c;
  const size_t step = (size_t)blockDim.x * gridDim.x;
  for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += step) {
    const int ch = (int)(idx % c);
    size_t rest = idx / c;
    const int col = (int)(rest % wd);
    rest /= wd;
    const int row = (int)(rest % h);
    const size_t img = rest / h;
    const T *xi = x + img * h * wd * c;
    float acc = to_f32(b[ch]);
    for (int i = 0; i < k; ++i) {
      const int r = row + i - p;
      if (r < 0 || r >= h) continue;
      for (int j = 0; j < k; ++j) {
        const int q = col + j - p;
        if (q < 0 || q >= wd) continue;
        acc = fmaf(to_f32(xi[((size_t)r * wd + q) * c + ch]), to_f32(w[(i * k + j) * c + ch]), acc);
      }
    }
    from_f32(acc, y + idx);
  }
}

#define DWCONV(NAME, T)                                                                        \
  extern "C" __global__ void NAME(const T *x, const T *w, const T *b, T *y, int n, int h,      \
                                  int wd, int c, int k) {                                      \
    dwconv_nhwc<T>(x, w, b, y, n, h, wd, c, k);                                                \
  }

DWCONV(dwconv_nhwc_f32, float)
DWCONV(dwconv_nhwc_f16, __half)
DWCONV(dwconv_nhwc_bf16, __nv_bfloat16)
