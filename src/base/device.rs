//! Device and dtype choice, by name, as the CLI and the app offer them.
use crate::base::error::{Error, Result};
use candle_core::{DType, Device};

#[allow(clippy::vec_init_then_push)]
/// Devices this build can use, in order of preference for `auto`.
pub fn available() -> Vec<String> {
    let mut v: Vec<String> = Vec::with_capacity(3);
    #[cfg(feature = "cuda")]
    if candle_core::utils::cuda_is_available() && cuda(0).is_ok() {
        v.push("cuda".to_string());
    }
    #[cfg(feature = "metal")]
    if candle_core::utils::metal_is_available() && Device::new_metal(0).is_ok() {
        v.push("metal".to_string());
    }
    v.push("cpu".to_string());
    v
}

/// `cpu`, `cuda`, `cuda:N`, `metal`, `metal:N` or `auto`.
pub fn parse_device(name: &str) -> Result<Device> {
    let name = name.trim().to_ascii_lowercase();
    let (kind, ordinal) = match name.split_once(':') {
        Some((k, o)) => (
            k.to_string(),
            o.parse::<usize>()
                .map_err(|_| Error::Device(name.clone(), "bad device ordinal".into()))?,
        ),
        None => (name.clone(), 0),
    };
    match kind.as_str() {
        "cpu" => Ok(Device::Cpu),
        "auto" => {
            let first = available()
                .into_iter()
                .next()
                .unwrap_or_else(|| "cpu".into());
            if first == "cpu" {
                Ok(Device::Cpu)
            } else {
                parse_device(&first)
            }
        }
        "cuda" => {
            if !cfg!(feature = "cuda") {
                return Err(Error::Device(
                    name,
                    "this build has no CUDA support (rebuild with `--features cuda`)".into(),
                ));
            }
            cuda(ordinal).map_err(|e| Error::Device(name, e.to_string()))
        }
        "metal" => {
            if !cfg!(feature = "metal") {
                return Err(Error::Device(
                    name,
                    "this build has no Metal support (rebuild with `--features metal`)".into(),
                ));
            }
            Device::new_metal(ordinal).map_err(|e| Error::Device(name, e.to_string()))
        }
        _ => Err(Error::Device(
            name,
            "expected cpu, cuda[:N], metal[:N] or auto".into(),
        )),
    }
}

/// The GPU `ordinal` with one stream of its own, made once and shared by every thread.
///
/// candle's `Device::new_cuda` queues work on the calling thread's default stream. Our forwards
/// run on a rayon worker ([`crate::base::pool::run_awake`]) while inputs are copied in, results
/// read back and buffers freed on the caller's thread, so one forward's work landed on
/// unordered streams: on an H200 the numbers changed from run to run and 4 runs in 11 at
/// batch 8 or 64 stopped on an illegal address. On one stream the work runs in the order it is
/// issued, whichever thread issues it.
#[cfg(feature = "cuda")]
fn cuda(ordinal: usize) -> candle_core::Result<Device> {
    use std::sync::Mutex;
    static MADE: Mutex<Vec<(usize, Device)>> = Mutex::new(Vec::new());
    let mut made = crate::base::sync::lock(&MADE);
    if let Some((_, d)) = made.iter().find(|(o, _)| *o == ordinal) {
        return Ok(d.clone());
    }
    let gpu = candle_core::CudaDevice::new_with_stream(ordinal)?;
    // SAFETY: every tensor on this device is made, used and freed on its one stream, so the
    // events cudarc would record to order work across streams have nothing to order.
    unsafe { gpu.disable_event_tracking() };
    let d = Device::Cuda(gpu);
    made.push((ordinal, d.clone()));
    Ok(d)
}

#[cfg(not(feature = "cuda"))]
fn cuda(ordinal: usize) -> candle_core::Result<Device> {
    Device::new_cuda(ordinal)
}

pub fn device_name(d: &Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda".into(),
        Device::Metal(_) => "metal".into(),
    }
}

pub fn parse_dtype(name: &str) -> Result<DType> {
    match name.trim().to_ascii_lowercase().as_str() {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" | "half" => Ok(DType::F16),
        other => Err(Error::Input(format!(
            "unknown dtype `{other}` (expected f32, bf16 or f16)"
        ))),
    }
}

pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        DType::F64 => "f64",
        _ => "other",
    }
}

/// Memory the OS says a new allocation can have (`MemAvailable`, Linux); `None` elsewhere.
pub fn host_memory_available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = s
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Most CPU threads `--threads` may ask for: four per core.
pub fn max_threads() -> usize {
    4 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Sets the CPU thread count (rayon's global pool, which candle's kernels and ours share).
/// Only the first call takes effect.
pub fn set_threads(n: usize) -> Result<()> {
    let max = max_threads();
    if n == 0 || n > max {
        return Err(Error::Input(format!(
            "--threads {n}: want 1 to {max} (four per core on this machine)"
        )));
    }
    // candle sizes its matmul parallelism from this variable.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| Error::Input(format!("--threads {n}: {e}")))
}
