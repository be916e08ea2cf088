// Depthwise K×K convolution ("same" padding, stride 1) on channels-last tensors, for the `metal`
// feature; the same loop as dwconv.cu. x [N,H,W,C], w [K,K,C], b [C], y [N,H,W,C], all
// contiguous. One thread per output element, channel fastest, f32 accumulation.
#include <metal_stdlib>
using namespace metal;

struct DwParams {
  uint n;
  uint h;
  uint w;
  uint c;
  uint k;
};

template <typename T>
void dwconv_nhwc(device const T *x, device const T *wt, device const T *b, device T *y,
                 constant DwParams &p, uint idx) {
  const uint total = p.n * p.h * p.w * p.c;
  if (idx >= total) return;
  const int half_k = int(p.k / 2);
  const uint ch = idx % p.c;
  uint rest = idx / p.c;
  const int col = int(rest % p.w);
  rest /= p.w;
  const int row = int(rest % p.h);
  const uint img = rest / p.h;
  device const T *xi = x + img * p.h * p.w * p.c;
  float acc = float(b[ch]);
  for (int i = 0; i < int(p.k); ++i) {
    const int r = row + i - half_k;
    if (r < 0 || r >= int(p.h)) continue;
    for (int j = 0; j < int(p.k); ++j) {
      const int q = col + j - half_k;
      if (q < 0 || q >= int(p.w)) continue;
      acc = fma(float(xi[(uint(r) * p.w + uint(q)) * p.c + ch]),
                float(wt[uint(i * int(p.k) + j) * p.c + ch]), acc);
    }
  }
  y[idx] = T(acc);
}

#define DWCONV(NAME, T)                                                                       \
  kernel void NAME(device const T *x [[buffer(0)]], device const T *wt [[buffer(1)]],         \
                   device const T *b [[buffer(2)]], device T *y [[buffer(3)]],                \
                   constant DwParams &p [[buffer(4)]], uint idx [[thread_position_in_grid]]) { \
    dwconv_nhwc<T>(x, wt, b, y, p, idx);                                                      \
  }

DWCONV(dwconv_nhwc_f32, float)
DWCONV(dwconv_nhwc_f16, half)
#if defined(__HAVE_BFLOAT__)
DWCONV(dwconv_nhwc_bf16, bfloat)
#endif
