// Host stand-in for CUDA's header, for tests/gpu_kernels_on_host.rs: a value type with the
// conversions the kernels use (stored as f32; only the f32 kernels are run on the host).
#pragma once
struct __half {
  float v;
};
inline float __half2float(__half h) { return h.v; }
inline __half __float2half(float f) { return __half{f}; }
