//! The depthwise conv's forward pass on CUDA (`cuda` feature): the kernel in
//! `gpu/dwconv.cu`, compiled to PTX by `build.rs` and loaded once per device.
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use candle_core::cuda_backend::{kernel_name, CudaStorage, Map3, WrapErr};
use candle_core::{CudaDevice, DType, Layout, Result, Shape, WithDType};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/dwconv.ptx"));
const THREADS: u32 = 256;

fn view<'a, T>(s: &'a CudaSlice<T>, l: &Layout, what: &str) -> Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((o1, o2)) => Ok(s.slice(o1..o2)),
        None => candle_core::bail!("depthwise conv: {what} not contiguous"),
    }
}

struct Forward;

impl Map3 for Forward {
    fn f<T: DeviceRepr + WithDType + ValidAsZeroBits>(
        &self,
        x: &CudaSlice<T>,
        lx: &Layout,
        w: &CudaSlice<T>,
        lw: &Layout,
        b: &CudaSlice<T>,
        lb: &Layout,
        dev: &CudaDevice,
    ) -> Result<CudaSlice<T>> {
        let (n, h, wd, c) = lx.shape().dims4()?;
        let k = lw.shape().dims()[0];
        let (x, w, b) = (
            view(x, lx, "input")?,
            view(w, lw, "weight")?,
            view(b, lb, "bias")?,
        );
        let total = n * h * wd * c;
        let dims: Vec<i32> = [n, h, wd, c, k]
            .iter()
            .map(|&d| i32::try_from(d))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| {
                candle_core::Error::Msg("depthwise conv: a dimension exceeds i32".into())
            })?;
        let func =
            dev.get_or_load_custom_func(&kernel_name::<T>("dwconv_nhwc"), "convnext_dwconv", PTX)?;
        // SAFETY: every element is written by the kernel (a grid-stride loop over `total`).
        let y = unsafe { dev.alloc::<T>(total)? };
        let blocks = total.div_ceil(THREADS as usize).clamp(1, 1 << 20) as u32;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut builder = func.builder();
        builder.arg(&x);
        builder.arg(&w);
        builder.arg(&b);
        builder.arg(&y);
        for d in &dims {
            builder.arg(d);
        }
        // SAFETY: argument types and count match the kernel's signature in dwconv.cu.
        unsafe { builder.launch(cfg) }.w()?;
        Ok(y)
    }
}

pub(crate) fn forward(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    s3: &CudaStorage,
    l3: &Layout,
) -> Result<(CudaStorage, Shape)> {
    if !matches!(s1.dtype(), DType::F32 | DType::F16 | DType::BF16) {
        candle_core::bail!("depthwise conv on CUDA: unsupported dtype {:?}", s1.dtype())
    }
    let dev = s1.device();
    let slice = Forward.map(&s1.slice, l1, &s2.slice, l2, &s3.slice, l3, dev)?;
    let out = CudaStorage {
        slice,
        device: dev.clone(),
    };
    Ok((out, l1.shape().clone()))
}
