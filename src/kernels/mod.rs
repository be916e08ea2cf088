//! Hand-written kernels where candle's generic path is too slow for an interactive explorer.
pub mod bias_scale;
pub mod dwconv;
#[cfg(feature = "cuda")]
mod dwconv_cuda;
#[cfg(feature = "metal")]
mod dwconv_metal;
pub mod gelu;
pub mod gemm;
pub mod grn;
pub mod layer_norm;
pub mod mlp;
pub mod patches;
pub mod peak;
pub mod reduce;
pub mod simd;
pub mod storage;

pub use dwconv::{depthwise_conv_nhwc, depthwise_conv_nhwc_reference};
