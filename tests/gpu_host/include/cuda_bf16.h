// Host stand-in for CUDA's header; see cuda_fp16.h.
#pragma once
struct __nv_bfloat16 {
  float v;
};
inline float __bfloat162float(__nv_bfloat16 h) { return h.v; }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16{f}; }
