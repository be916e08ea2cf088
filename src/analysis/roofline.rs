//! The roofline (Williams, Waterman and Patterson, 2009): each layer's arithmetic intensity
//! (operations per byte it must move) against the rate it achieved, under the machine's two
//! limits, measured here: the compute roof (an FMA loop) and the memory roof (a streaming
//! copy). A layer far under its roof has room to go faster; one on the memory roof cannot,
//! whatever its FLOPs: why ConvNeXt's depthwise convs, LayerNorms and GELUs take more time
//! than their share of the MACs.
use crate::analysis::profile::ProfileRow;
use crate::base::progress::Progress;
use crate::kernels::peak;
use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use std::collections::HashMap;
use std::io::Read as _;
use std::path::PathBuf;

/// Said under a roofline whose matmuls ran in native bf16: their "% of limit" is against the
/// f32 roof.
pub const BF16_ROOF_NOTE: &str = "The matmuls ran in bf16 (vdpbf16ps, twice an f32 FMA's work per instruction): their points can pass the f32 compute roof, up to about twice it, and their % of limit is against that f32 roof.";

/// The machine's limits for the current thread pool.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Limits {
    /// GFLOP/s of the FMA loop on every thread: the compute roof.
    pub peak_gflops: f64,
    /// GFLOP/s of the project's own GEMM on a `kernels::peak::GEMM_SHAPE` product: what a real
    /// kernel reaches.
    pub gemm_gflops: f64,
    /// GB/s of a streaming copy of buffers far larger than the caches: the memory roof.
    pub memory_gbs: f64,
    /// GB/s of the same copy within each core's cache: the roof of data that stays there.
    pub cache_gbs: f64,
    pub threads: usize,
}

impl Limits {
    /// The attainable GFLOP/s at `intensity` FLOP per byte.
    pub fn roof(&self, intensity: f64) -> f64 {
        self.peak_gflops.min(intensity * self.memory_gbs)
    }

    /// "1 thread", "2 threads": what the limits were measured on.
    pub fn threads_text(&self) -> String {
        match self.threads {
            1 => "1 thread".to_string(),
            n => format!("{n} threads"),
        }
    }

    /// The intensity where the memory roof meets the compute roof.
    pub fn ridge(&self) -> f64 {
        self.peak_gflops / self.memory_gbs.max(1e-9)
    }

    /// From the four measured values in [`Limits::to_vec`]'s order, for the current pool.
    fn from_values([peak, gemm, memory, cache]: [f64; 4]) -> Self {
        Limits {
            peak_gflops: peak,
            gemm_gflops: gemm,
            memory_gbs: memory,
            cache_gbs: cache,
            threads: rayon::current_num_threads(),
        }
    }

    fn to_vec(self) -> Vec<f64> {
        vec![
            self.peak_gflops,
            self.gemm_gflops,
            self.memory_gbs,
            self.cache_gbs,
        ]
    }
}

/// Measures the limits on the current rayon pool (a few seconds).
pub fn measure(progress: &mut dyn Progress) -> crate::Result<Limits> {
    let steps = ["FMA loop", "GEMM", "streaming copy", "cache copy"];
    let mut values = [0.0; 4];
    for (i, what) in steps.iter().enumerate() {
        progress.check("measuring the machine")?;
        progress.update(i, steps.len(), what);
        values[i] = match i {
            0 => peak::fma_gflops(),
            1 => peak::gemm_gflops(),
            // 128 MB a side: past the last-level cache of any desktop or server CPU we know.
            2 => peak::copy_gbs(128 << 20),
            _ => peak::cache_copy_gbs(),
        };
    }
    progress.update(steps.len(), steps.len(), "measured");
    Ok(Limits::from_values(values))
}

/// How the limits are measured: limits kept by an earlier way of measuring are not read (the
/// third way also times the copies and the GEMM in short runs, the second the peak loops, and
/// places the copies' buffers apart, `kernels::peak`; the first could keep half the peak or a
/// tenth of the cache roof, the second half the GEMM's rate or the memory roof).
const METHOD: u32 = 3;

/// What identifies this machine for the cache: the CPU, its core count, the SIMD level the
/// kernels use, the thread count, this program's version (the kernels change with it) and the
/// way of measuring.
pub fn machine_key() -> String {
    let cpu = cpu_name().unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "limits{METHOD}|{cpu}|{cores} cores|{:?}|{} threads|{}",
        crate::kernels::simd::level(),
        rayon::current_num_threads(),
        env!("CARGO_PKG_VERSION")
    )
}

/// The CPU's model name from `/proc/cpuinfo` (Linux), read bounded.
pub fn cpu_name() -> Option<String> {
    let mut text = String::new();
    std::fs::File::open("/proc/cpuinfo")
        .ok()?
        .take(1 << 20)
        .read_to_string(&mut text)
        .ok()?;
    let line = text.lines().find(|l| l.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

fn cache_path() -> Option<PathBuf> {
    let name = crate::io::cache::file_name(&machine_key(), "safetensors");
    crate::io::cache::dir().map(|d| d.join("machine").join(name))
}

/// The limits measured earlier on this machine with this many threads, if they were kept (a
/// cache file that cannot be read is ignored: the caller measures again).
pub fn cached() -> Option<Limits> {
    let path = cache_path()?;
    let t = crate::io::cache::read(&path, &[("limits", DType::F64, &[4])]).ok()??;
    let v: Vec<f64> = t.first()?.to_vec1().ok()?;
    let values: [f64; 4] = v.try_into().ok()?;
    values
        .iter()
        .all(|x| x.is_finite() && *x > 0.0)
        .then(|| Limits::from_values(values))
}

/// Keeps `limits` for [`cached`]; without a cache folder there is nothing to keep them in.
pub fn keep(limits: &Limits) -> crate::Result<()> {
    let Some(path) = cache_path() else {
        return Ok(());
    };
    let t = Tensor::new(limits.to_vec(), &Device::Cpu)?;
    crate::io::cache::write(&path, HashMap::from([("limits".to_string(), t)]))
}

/// The cached limits, else measured and kept; `remeasure` measures whatever is cached.
pub fn limits(remeasure: bool, progress: &mut dyn Progress) -> crate::Result<Limits> {
    if !remeasure {
        if let Some(l) = cached() {
            return Ok(l);
        }
    }
    let l = measure(progress)?;
    // A cache that cannot be written costs a re-measurement next time, nothing more.
    let _ = keep(&l);
    Ok(l)
}

/// Whether a layer's roof is its memory traffic or the compute peak.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Bound {
    Memory,
    Compute,
}

/// One timed layer on the roofline.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub name: String,
    pub kind: String,
    pub stage: Option<usize>,
    /// 2 × MACs (fvcore's) + the elementwise operations fvcore leaves out.
    pub flops: f64,
    /// Bytes the layer must read and write at least (input, output, parameters).
    pub bytes: f64,
    /// FLOP per byte.
    pub intensity: f64,
    pub ms: f64,
    /// Achieved GFLOP/s.
    pub gflops: f64,
    /// The roof at this intensity, GFLOP/s.
    pub roof_gflops: f64,
    pub bound: Bound,
    /// Achieved ÷ roof, in percent: above 100 when the data came from the caches faster than
    /// the memory roof allows.
    pub percent_of_limit: f64,
}

/// The timed leaf layers of `rows` on the roofline; `dtype_bytes` per element moved.
pub fn points(rows: &[ProfileRow], limits: &Limits, dtype_bytes: usize) -> Vec<Point> {
    rows.iter()
        .filter(|r| !r.container)
        .filter_map(|r| {
            let ms = r.ms.filter(|&m| m > 0.0)?;
            let flops = 2.0 * r.macs as f64 + r.elementwise as f64;
            let bytes = (r.traffic as f64) * dtype_bytes as f64;
            if flops <= 0.0 || bytes <= 0.0 {
                return None;
            }
            let intensity = flops / bytes;
            let gflops = flops / (ms * 1e-3) / 1e9;
            let roof = limits.roof(intensity);
            Some(Point {
                name: r.name.clone(),
                kind: r.kind.clone(),
                stage: r.stage,
                flops,
                bytes,
                intensity,
                ms,
                gflops,
                roof_gflops: roof,
                bound: if intensity < limits.ridge() {
                    Bound::Memory
                } else {
                    Bound::Compute
                },
                percent_of_limit: 100.0 * gflops / roof.max(1e-12),
            })
        })
        .collect()
}

/// Fills each row's `percent_of_limit` from the points of the same layers.
pub fn annotate(rows: &mut [ProfileRow], points: &[Point]) {
    let by_name: HashMap<&str, f64> = points
        .iter()
        .map(|p| (p.name.as_str(), p.percent_of_limit))
        .collect();
    for r in rows.iter_mut() {
        r.percent_of_limit = by_name.get(r.name.as_str()).copied();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::profile::rows;
    use crate::model::flops::layers;
    use crate::model::Plan;
    use std::time::Duration;

    fn limits() -> Limits {
        Limits {
            peak_gflops: 200.0,
            gemm_gflops: 180.0,
            memory_gbs: 20.0,
            cache_gbs: 100.0,
            threads: 2,
        }
    }

    #[test]
    fn the_roof_is_the_lower_of_bandwidth_times_intensity_and_the_peak() {
        let l = limits();
        assert_eq!(l.ridge(), 10.0);
        assert_eq!(l.roof(1.0), 20.0);
        assert_eq!(l.roof(10.0), 200.0);
        assert_eq!(l.roof(50.0), 200.0);
    }

    #[test]
    fn convnext_t_puts_its_linear_layers_on_the_compute_side_and_the_rest_on_memory() {
        let plan = Plan::named("convnext_tiny", 1000).unwrap();
        let ls = layers(&plan, 1, 224, 224);
        let times: Vec<_> = ls
            .iter()
            .filter(|l| !l.container)
            .map(|l| (l.id, Duration::from_micros(500)))
            .collect();
        let r = rows(&ls, &times, Duration::from_millis(80));
        let p = points(&r, &limits(), 4);
        let fc1 = p
            .iter()
            .find(|p| p.name == "stages.0.blocks.0.mlp.fc1")
            .unwrap();
        // 3136 × 96 × 384 MACs over (3136 × 96 + 3136 × 384 + 96 × 384 + 384) floats.
        let want = 2.0 * 3136.0 * 96.0 * 384.0 / (4.0 * (3136.0 * 480.0 + 96.0 * 384.0 + 384.0));
        assert!((fc1.intensity - want).abs() < 1e-9, "{}", fc1.intensity);
        assert_eq!(fc1.bound, Bound::Compute);
        for kind in ["LayerNorm", "GELU", "Add", "LayerScale"] {
            let all: Vec<_> = p.iter().filter(|p| p.kind == kind).collect();
            assert!(!all.is_empty(), "{kind}");
            assert!(all.iter().all(|p| p.bound == Bound::Memory), "{kind}");
        }
        let gelu = p.iter().find(|p| p.kind == "GELU").unwrap();
        // One operation per element, read once and written once: 1/8 FLOP per byte.
        assert!((gelu.intensity - 0.125).abs() < 1e-12);
        let pct = gelu.gflops / (0.125 * 20.0) * 100.0;
        assert!((gelu.percent_of_limit - pct).abs() < 1e-9);
    }
}
