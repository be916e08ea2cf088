//! The depthwise conv's forward pass on Metal (`metal` feature): the kernel in
//! `gpu/dwconv.metal`, compiled from source once per device.
use candle_core::backend::BackendStorage;
use candle_core::{DType, Layout, MetalDevice, MetalStorage, Result, Shape};
use candle_metal_kernels::metal::{ComputePipeline, Library};
use objc2_metal::MTLSize;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

const SOURCE: &str = include_str!("gpu/dwconv.metal");
const THREADS: usize = 256;

/// Matches `DwParams` in dwconv.metal.
#[repr(C)]
struct DwParams {
    n: u32,
    h: u32,
    w: u32,
    c: u32,
    k: u32,
}

/// The pipeline for one dtype's kernel; the source is compiled once per device, not per dtype.
fn pipeline(device: &MetalDevice, name: &'static str) -> Result<ComputePipeline> {
    #[derive(Default)]
    struct Cache {
        libraries: HashMap<u64, Library>,
        pipelines: HashMap<(u64, &'static str), ComputePipeline>,
    }
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    let dev = device.metal_device();
    let id = dev.registry_id();
    let mut cache = crate::base::sync::lock(CACHE.get_or_init(Default::default));
    if let Some(p) = cache.pipelines.get(&(id, name)) {
        return Ok(p.clone());
    }
    let library = match cache.libraries.get(&id) {
        Some(l) => l.clone(),
        None => {
            let l = dev
                .new_library_with_source(SOURCE, None)
                .map_err(candle_core::Error::wrap)?;
            cache.libraries.insert(id, l.clone());
            l
        }
    };
    let function = library
        .get_function(name, None)
        .map_err(candle_core::Error::wrap)?;
    let p = dev
        .new_compute_pipeline_state_with_function(&function)
        .map_err(candle_core::Error::wrap)?;
    cache.pipelines.insert((id, name), p.clone());
    Ok(p)
}

pub(crate) fn forward(
    s1: &MetalStorage,
    l1: &Layout,
    s2: &MetalStorage,
    l2: &Layout,
    s3: &MetalStorage,
    l3: &Layout,
) -> Result<(MetalStorage, Shape)> {
    let dtype = s1.dtype();
    let name = match dtype {
        DType::F32 => "dwconv_nhwc_f32",
        DType::F16 => "dwconv_nhwc_f16",
        DType::BF16 => "dwconv_nhwc_bf16",
        d => candle_core::bail!("depthwise conv on Metal: unsupported dtype {d:?}"),
    };
    if !(l1.is_contiguous() && l2.is_contiguous() && l3.is_contiguous()) {
        candle_core::bail!("depthwise conv on Metal: inputs must be contiguous")
    }
    let (n, h, w, c) = l1.shape().dims4()?;
    let k = l2.shape().dims()[0];
    let total = n * h * w * c;
    let to_u32 = |d: usize| {
        u32::try_from(d).map_err(|_| {
            candle_core::Error::Msg("depthwise conv on Metal: tensor too large".into())
        })
    };
    to_u32(total)?;
    let params = DwParams {
        n: to_u32(n)?,
        h: to_u32(h)?,
        w: to_u32(w)?,
        c: to_u32(c)?,
        k: to_u32(k)?,
    };

    let device = s1.device();
    let pipeline = pipeline(device, name)?;
    let output = device
        .new_buffer_builder()
        .with_size_for(total, dtype)
        .with_label("depthwise-conv-nhwc")
        .build()?;
    let encoder = device.command_encoder()?;
    encoder.set_label("depthwise-conv-nhwc");
    let enc: &candle_metal_kernels::metal::ComputeCommandEncoder = encoder.as_ref();
    enc.set_compute_pipeline_state(&pipeline);
    let threads = THREADS
        .min(pipeline.max_total_threads_per_threadgroup())
        .max(1);
    let size = dtype.size_in_bytes();
    enc.set_input_buffer(0, Some(s1.buffer()), l1.start_offset() * size);
    enc.set_input_buffer(1, Some(s2.buffer()), l2.start_offset() * size);
    enc.set_input_buffer(2, Some(s3.buffer()), l3.start_offset() * size);
    enc.set_output_buffer(3, Some(&*output), 0);
    enc.set_bytes(4, &params);
    // Whole threadgroups; the kernel returns early past the last element.
    enc.dispatch_thread_groups(
        MTLSize {
            width: total.div_ceil(threads).max(1),
            height: 1,
            depth: 1,
        },
        MTLSize {
            width: threads,
            height: 1,
            depth: 1,
        },
    );
    drop(encoder);
    Ok((
        MetalStorage::new(output, device.clone(), total, dtype),
        l1.shape().clone(),
    ))
}
