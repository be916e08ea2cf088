//! `bench`: forward time (median and min after warm-up), optionally what tracing costs, peak
//! memory, and the per-layer profile.
use super::{batch_arg, dtype_arg, parse_size, Context, ModelArgs};
use crate::analysis::profile::{self, PlainBaseline};
use crate::analysis::roofline;
use crate::analysis::stats::median;
use crate::analysis::trace::{CaptureLevel, CaptureObserver, TimingObserver};
use crate::base::device::{device_name, dtype_name};
use crate::base::progress::Silent;
use crate::io::engine::Engine;
use crate::model::flops;
use anyhow::{bail, Context as _, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, default_value_t = 1, value_parser = batch_arg)]
    batch: usize,
    #[arg(long, default_value_t = 20)]
    iters: usize,
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    #[arg(long, default_value = "f32", value_parser = dtype_arg)]
    dtype: DType,
    /// Input size, `H` or `HxW` (default: the model's).
    #[arg(long, value_parser = parse_size)]
    size: Option<(usize, usize)>,
    /// Time each layer too (the timing observer) and report its overhead.
    #[arg(long)]
    layers: bool,
    /// Write the per-layer profile (median over the runs) as CSV, as the app exports it,
    /// and print the time per kind of layer.
    #[arg(long)]
    profile_csv: Option<PathBuf>,
    /// Also time Grad-CAM at this layer (e.g. `stages.3`) and report its time and peak memory
    /// against the plain forward's.
    #[arg(long)]
    gradcam: Option<String>,
    /// Also time CKA of the model against a second, separately built copy of itself over this
    /// many random images (mini-batches of 32) and report it against the two models' forwards
    /// over the same images.
    #[arg(long)]
    cka: Option<usize>,
    /// Also time issue 22's costs against plain forwards, interleaved: ScoreCAM at the last
    /// stage against as many forwards as it has channels (batched as it batches them), IG at
    /// 32 steps and a deletion + insertion pair at n = 32 against one forward. Give any of
    /// `scorecam,ig,deletion`.
    #[arg(long, value_delimiter = ',')]
    faithfulness: Vec<String>,
    /// Also time feature visualisation at this layer (e.g. `stages.2`): one optimisation step
    /// of `--batch` channels (one image each) against a forward up to the layer at that batch.
    #[arg(long)]
    visualize: Option<String>,
    /// Place every layer on the roofline: the machine's limits (an FMA loop, the project's
    /// GEMM, a streaming copy; measured once per machine and thread count, then read from the
    /// cache) and per layer its intensity, achieved GFLOP/s and % of its roof (CPU only).
    #[arg(long)]
    roofline: bool,
    /// With `--roofline`: measure the machine again rather than read the cache.
    #[arg(long, requires = "roofline")]
    remeasure: bool,
    #[arg(long)]
    json: bool,
}

/// What `bench` measured, as `--json` prints it.
#[derive(Serialize, Debug)]
struct BenchReport {
    model: String,
    batch: usize,
    size: [usize; 2],
    device: String,
    dtype: &'static str,
    /// What the dtype means here (bf16 on the CPU: native or emulated bf16 matmuls).
    precision: String,
    threads: usize,
    iters: usize,
    median_ms: f64,
    min_ms: f64,
    #[serde(flatten)]
    tracing: Option<TracingCost>,
    #[serde(flatten)]
    memory: Option<Memory>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ms_per_kind: Option<BTreeMap<String, f64>>,
    #[serde(flatten)]
    gradcam: Option<GradCamCost>,
    #[serde(flatten)]
    cka: Option<CkaCost>,
    #[serde(skip_serializing_if = "Option::is_none")]
    faithfulness: Option<Vec<FaithCost>>,
    #[serde(flatten)]
    visualize: Option<VisCost>,
    #[serde(skip_serializing_if = "Option::is_none")]
    roofline: Option<Roofline>,
}

/// The machine's limits and every timed layer under them.
#[derive(Serialize, Debug)]
struct Roofline {
    cpu: Option<String>,
    limits: roofline::Limits,
    /// The intensity (FLOP/byte) where the memory roof meets the compute roof.
    ridge: f64,
    /// Whether the matmuls ran in native bf16: their points can pass the (f32) compute roof.
    bf16_matmuls: bool,
    layers: Vec<roofline::Point>,
}

/// One feature-visualisation step against the forward up to its layer, same run.
#[derive(Serialize, Debug)]
struct VisCost {
    visualize_layer: String,
    visualize_rounds: usize,
    visualize_step_median_ms: f64,
    visualize_forward_median_ms: f64,
    /// Median over the rounds of a step's time / the forward's, and the rounds' range.
    visualize_step_ratio: f64,
    visualize_step_ratio_range: [f64; 2],
}

/// One of issue 22's costs against plain forwards, same run.
#[derive(Serialize, Debug)]
struct FaithCost {
    what: String,
    /// How many single-image forwards the time is compared with.
    forwards: usize,
    median_ms: f64,
    /// Median over the rounds of the time / the forwards' time, and the rounds' range.
    ratio: f64,
    ratio_range: [f64; 2],
}

/// CKA against the forwards it needs, same run.
#[derive(Serialize, Debug)]
struct CkaCost {
    cka_images: usize,
    cka_rounds: usize,
    cka_median_ms: f64,
    forwards_median_ms: f64,
    /// Median over the rounds of CKA's time / the two models' forwards' time.
    cka_time_ratio: f64,
    cka_time_ratio_range: [f64; 2],
}

/// Grad-CAM against the plain forward, same run.
#[derive(Serialize, Debug)]
struct GradCamCost {
    gradcam_layer: String,
    gradcam_rounds: usize,
    gradcam_median_ms: f64,
    /// Median over the rounds of Grad-CAM's time / the forward's.
    gradcam_time_ratio: f64,
    /// The rounds' smallest and largest ratio.
    gradcam_time_ratio_range: [f64; 2],
    #[serde(skip_serializing_if = "Option::is_none")]
    gradcam_peak_mb: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gradcam_memory_ratio: Option<f64>,
}

/// Medians of observed forwards, and their ratio to the plain forward's.
#[derive(Serialize, Debug)]
struct TracingCost {
    timing_observer_median_ms: f64,
    capture_stages_median_ms: f64,
    timing_overhead: f64,
    capture_overhead: f64,
}

#[derive(Serialize, Debug)]
struct Memory {
    /// Peak resident memory above what the process held before loading.
    peak_mb: f64,
    memory_budget_mb: f64,
    memory_ratio: f64,
}

pub fn run(ctx: &Context, a: &BenchArgs) -> Result<()> {
    let rss_before = proc_status_kb("VmRSS");
    let engine = ctx.engine(Some(&a.model), a.dtype)?;
    let (h, w) = a.size.unwrap_or(engine.preprocess.input_size);
    engine.plan.check_input(h, w)?;
    if a.iters == 0 {
        bail!("--iters must be at least 1");
    }
    check_fits(&engine, a, (h, w))?;
    let dev = &ctx.device;
    let x = Tensor::randn(0f32, 1f32, (a.batch, 3, h, w), dev)?.to_dtype(a.dtype)?;
    let plain = time_runs(a, dev, &mut || engine.forward(&x).map(drop))?;
    let mut report = BenchReport {
        model: engine.plan.name.clone(),
        batch: a.batch,
        size: [h, w],
        device: device_name(dev),
        dtype: dtype_name(a.dtype),
        precision: engine.precision(),
        threads: candle_core::utils::get_num_threads(),
        iters: a.iters,
        median_ms: median(&plain),
        min_ms: plain.iter().copied().fold(f64::INFINITY, f64::min),
        tracing: None,
        memory: None,
        ms_per_kind: None,
        gradcam: None,
        cka: None,
        faithfulness: None,
        visualize: None,
        roofline: None,
    };
    if a.layers {
        report.tracing = Some(tracing_cost(a, &engine, &x, report.median_ms)?);
    }
    if let (Some(before), Some(peak)) = (rss_before, proc_status_kb("VmHWM")) {
        report.memory = Some(memory(&engine, a, (h, w), peak.saturating_sub(before)));
    }
    if let Some(out) = &a.profile_csv {
        report.ms_per_kind = Some(profile_csv(&engine, &x, a.iters, out)?);
    }
    if let Some(layer) = &a.gradcam {
        let forward_peak_kb = report.memory.as_ref().map(|m| m.peak_mb * 1e3 / 1.024);
        report.gradcam = Some(gradcam_cost(
            a,
            &engine,
            &x,
            layer,
            (rss_before, forward_peak_kb),
        )?);
    }
    if !a.faithfulness.is_empty() {
        report.faithfulness = Some(faithfulness_cost(a, &engine, &x)?);
    }
    if let Some(layer) = &a.visualize {
        report.visualize = Some(visualize_cost(a, &engine, h, layer)?);
    }
    if let Some(n) = a.cka {
        report.cka = Some(cka_cost(ctx, a, &engine, (h, w), n)?);
    }
    if a.roofline {
        report.roofline = Some(roofline_report(a, &engine, &x)?);
    }
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

/// Refuses a batch and size whose forward would not fit in the memory the machine has free.
fn check_fits(engine: &Engine, a: &BenchArgs, (h, w): (usize, usize)) -> Result<()> {
    let need = engine.working_set_bytes(a.batch, h, w);
    if let Some(free) = crate::base::device::host_memory_available() {
        if need > free {
            bail!(
                "--batch {} at {h}×{w} needs about {} (weights and the two largest activations), more than the {} free on this machine",
                a.batch,
                crate::base::files::mb(need),
                crate::base::files::mb(free)
            );
        }
    }
    Ok(())
}

/// `iters` timed runs of `f` (each waits for the device) after `warmup` untimed ones, in ms.
fn time_runs(
    a: &BenchArgs,
    dev: &Device,
    f: &mut dyn FnMut() -> crate::Result<()>,
) -> Result<Vec<f64>> {
    for _ in 0..a.warmup {
        f()?;
        dev.synchronize()?;
    }
    let mut v = Vec::with_capacity(a.iters);
    for _ in 0..a.iters {
        let t = Instant::now();
        f()?;
        dev.synchronize()?;
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(v)
}

fn tracing_cost(a: &BenchArgs, engine: &Engine, x: &Tensor, plain_ms: f64) -> Result<TracingCost> {
    let dev = &engine.device;
    let timed = median(&time_runs(a, dev, &mut || {
        engine
            .forward_observed(x, &mut TimingObserver::new(dev))
            .map(drop)
    })?);
    let captured = median(&time_runs(a, dev, &mut || {
        engine
            .forward_observed(x, &mut CaptureObserver::new(CaptureLevel::Stages))
            .map(drop)
    })?);
    Ok(TracingCost {
        timing_observer_median_ms: timed,
        capture_stages_median_ms: captured,
        timing_overhead: timed / plain_ms,
        capture_overhead: captured / plain_ms,
    })
}

/// Grad-CAM's time and peak memory, each against the plain forward's: rounds (at least 5) of
/// one forward then one Grad-CAM, interleaved so that the machine's drift hits both; the ratio
/// is reported as the median of the rounds' ratios with its range. The peak is read after
/// resetting the process's high-water mark (Linux `clear_refs`), so it is Grad-CAM's own.
fn gradcam_cost(
    a: &BenchArgs,
    engine: &Engine,
    x: &Tensor,
    layer: &str,
    (rss_before, forward_peak_kb): (Option<u64>, Option<f64>),
) -> Result<GradCamCost> {
    let id = crate::analysis::attribution::layer_by_name(engine, layer)?;
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let dev = &engine.device;
    let gradcam = || crate::analysis::attribution::grad_cam(engine, x, id, None, false).map(drop);
    gradcam()?;
    let (mut ratios, mut times) = (Vec::new(), Vec::new());
    for _ in 0..a.iters.max(5) {
        let t = Instant::now();
        engine.forward(x)?;
        dev.synchronize()?;
        let f = t.elapsed().as_secs_f64();
        let t = Instant::now();
        gradcam()?;
        dev.synchronize()?;
        let g = t.elapsed().as_secs_f64();
        times.push(g * 1e3);
        ratios.push(g / f);
    }
    let peak_kb = match (reset, rss_before, proc_status_kb("VmHWM")) {
        (true, Some(before), Some(peak)) => Some(peak.saturating_sub(before) as f64),
        _ => None,
    };
    Ok(GradCamCost {
        gradcam_layer: layer.to_string(),
        gradcam_rounds: ratios.len(),
        gradcam_median_ms: median(&times),
        gradcam_time_ratio: median(&ratios),
        gradcam_time_ratio_range: min_max(&ratios),
        gradcam_peak_mb: peak_kb.map(|kb| kb * 1.024 / 1e3),
        gradcam_memory_ratio: peak_kb.zip(forward_peak_kb).map(|(g, f)| g / f),
    })
}

/// CKA's time against its forwards': rounds (at least 5) of the two models' plain forwards over
/// `n` random images in mini-batches, then CKA over the same images, interleaved; the ratio is
/// the median of the rounds' ratios with its range.
fn cka_cost(
    ctx: &Context,
    a: &BenchArgs,
    engine: &Engine,
    (h, w): (usize, usize),
    n: usize,
) -> Result<CkaCost> {
    use crate::analysis::cka::{cka_tensor, BATCH, MIN_BATCH};
    if n < MIN_BATCH {
        bail!("--cka needs at least {MIN_BATCH} images");
    }
    let other = ctx.engine(Some(&a.model), a.dtype)?;
    let dev = &engine.device;
    let x = Tensor::randn(0f32, 1f32, (n, 3, h, w), dev)?.to_dtype(a.dtype)?;
    let forwards = || -> Result<()> {
        for start in (0..n).step_by(BATCH) {
            let xs = x.narrow(0, start, BATCH.min(n - start))?;
            engine.forward(&xs)?;
            other.forward(&xs)?;
        }
        dev.synchronize()?;
        Ok(())
    };
    let cka = || -> Result<()> {
        cka_tensor(engine, &other, &x, BATCH, &mut Silent)?;
        dev.synchronize()?;
        Ok(())
    };
    let (mut ratios, mut times, mut fwd) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..a.iters.clamp(5, 7) {
        let t = Instant::now();
        forwards()?;
        let f = t.elapsed().as_secs_f64();
        let t = Instant::now();
        cka()?;
        let c = t.elapsed().as_secs_f64();
        times.push(c * 1e3);
        fwd.push(f * 1e3);
        ratios.push(c / f);
    }
    Ok(CkaCost {
        cka_images: n,
        cka_rounds: ratios.len(),
        cka_median_ms: median(&times),
        forwards_median_ms: median(&fwd),
        cka_time_ratio: median(&ratios),
        cka_time_ratio_range: min_max(&ratios),
    })
}

/// One optimisation step of feature visualisation (a batch of `--batch` channels at `layer`,
/// transforms on) against the forward up to that layer at the same batch, interleaved over at
/// least 5 rounds.
fn visualize_cost(a: &BenchArgs, engine: &Engine, size: usize, layer: &str) -> Result<VisCost> {
    use crate::analysis::attribution::layer_by_name;
    use crate::analysis::feature_vis::{measure, Objective, Run, Settings};
    let layer = layer_by_name(engine, layer)?;
    let channels = crate::model::flops::channels(&engine.layers(1), layer).unwrap_or(1);
    let objectives: Vec<Objective> = (0..a.batch)
        .map(|c| Objective::Channel {
            layer,
            channel: c % channels,
        })
        .collect();
    let mut s = Settings::for_model(engine);
    s.size = size;
    let mut run = Run::new(engine, objectives.clone(), None, &s)?;
    let x = Tensor::randn(0f32, 1f32, (a.batch, 3, size, size), &engine.device)?;
    run.step(true)?;
    measure(engine, &x, &objectives)?;
    let (mut ratios, mut steps, mut fwd) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..a.iters.clamp(5, 7) {
        let t = Instant::now();
        measure(engine, &x, &objectives)?;
        engine.device.synchronize()?;
        let f = t.elapsed().as_secs_f64();
        let t = Instant::now();
        run.step(true)?;
        engine.device.synchronize()?;
        let st = t.elapsed().as_secs_f64();
        ratios.push(st / f);
        steps.push(st * 1e3);
        fwd.push(f * 1e3);
    }
    Ok(VisCost {
        visualize_layer: layer.name(),
        visualize_rounds: ratios.len(),
        visualize_step_median_ms: median(&steps),
        visualize_forward_median_ms: median(&fwd),
        visualize_step_ratio: median(&ratios),
        visualize_step_ratio_range: min_max(&ratios),
    })
}

/// ScoreCAM, IG and deletion + insertion, each against the plain forwards it should cost at
/// most a multiple of, in interleaved rounds (at least 5); ratios as medians with their range.
fn faithfulness_cost(a: &BenchArgs, engine: &Engine, x: &Tensor) -> Result<Vec<FaithCost>> {
    use crate::analysis::attribution::{integrated_gradients, score_cam};
    use crate::analysis::faithfulness::{deletion_insertion, Map};
    let x = x.narrow(0, 0, 1)?;
    let dev = &engine.device;
    let last = crate::model::layer_id::LayerId::Stage(engine.plan.stages.len() - 1);
    let channels = crate::model::flops::channels(&engine.layers(1), last).unwrap_or(1);
    let (_, _, h, w) = x.dims4()?;
    let map = vec![0.5f32; 49];
    let batch = (16 * 224 * 224 / (h * w)).clamp(1, 256);
    let timed = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        let t = Instant::now();
        f()?;
        dev.synchronize()?;
        Ok(t.elapsed().as_secs_f64())
    };
    let forwards = |n: usize| -> Result<()> {
        for start in (0..n).step_by(batch) {
            let m = batch.min(n - start);
            engine.forward(&x.repeat((m, 1, 1, 1))?)?;
        }
        Ok(())
    };
    let cases: [(&str, &str, usize); 3] = [
        ("scorecam", "ScoreCAM at the last stage", channels),
        ("ig", "Integrated Gradients, 32 steps", 1),
        ("deletion", "deletion + insertion, n = 32", 1),
    ];
    for f in &a.faithfulness {
        if !cases.iter().any(|c| c.0 == f) {
            bail!("--faithfulness takes scorecam, ig or deletion, not `{f}`");
        }
    }
    let chosen = |i: usize| a.faithfulness.iter().any(|f| f == cases[i].0);
    let mut ratios = vec![Vec::new(); 3];
    let mut times = vec![Vec::new(); 3];
    for _ in 0..a.iters.clamp(5, 7) {
        for (i, (_, _, n)) in cases.iter().enumerate() {
            if !chosen(i) {
                continue;
            }
            let base = timed(&mut || forwards(*n))?;
            let t = timed(&mut || {
                match i {
                    0 => drop(score_cam(engine, &x, last, None, &mut Silent)?),
                    1 => drop(integrated_gradients(
                        engine,
                        &x,
                        None,
                        None,
                        32,
                        &mut Silent,
                    )?),
                    _ => {
                        let m = Map {
                            values: &map,
                            size: (7, 7),
                        };
                        drop(deletion_insertion(engine, &x, &[m], None, 32, &mut Silent)?)
                    }
                }
                Ok(())
            })?;
            ratios[i].push(t / base);
            times[i].push(t * 1e3);
        }
    }
    Ok(cases
        .iter()
        .enumerate()
        .filter(|(i, _)| chosen(*i))
        .map(|(i, (_, what, n))| FaithCost {
            what: what.to_string(),
            forwards: *n,
            median_ms: median(&times[i]),
            ratio: median(&ratios[i]),
            ratio_range: min_max(&ratios[i]),
        })
        .collect())
}

fn min_max(v: &[f64]) -> [f64; 2] {
    v.iter()
        .fold([f64::INFINITY, f64::NEG_INFINITY], |[l, h], &x| {
            [l.min(x), h.max(x)]
        })
}

/// Peak memory against a budget of 1.2 × (weights + the two largest activations): one copy of
/// the weights, the input and output of the largest layer alive at once, and a fifth more for
/// the allocator and small tensors. A second copy of the weights, or activations kept past
/// their use, breaks it.
fn memory(engine: &Engine, a: &BenchArgs, (h, w): (usize, usize), used_kb: u64) -> Memory {
    let budget = 1.2 * engine.working_set_bytes(a.batch, h, w) as f64;
    let used = used_kb as f64 * 1024.0;
    Memory {
        peak_mb: used / 1e6,
        memory_budget_mb: budget / 1e6,
        memory_ratio: used / budget,
    }
}

/// Writes the per-layer profile as CSV and returns the time per kind of layer (ms).
fn profile_csv(
    engine: &Engine,
    x: &Tensor,
    iters: usize,
    out: &Path,
) -> Result<BTreeMap<String, f64>> {
    let measured = profile::time_layers(engine, x, iters, PlainBaseline::Skip, &mut Silent)?;
    let (_, _, h, w) = x.dims4()?;
    let layers = flops::layers(&engine.plan, x.dim(0)?, h, w);
    let rows = profile::rows(&layers, &measured.times, measured.total);
    std::fs::write(out, profile::to_csv(&rows))
        .with_context(|| format!("writing {}", out.display()))?;
    let mut by_kind = BTreeMap::new();
    for r in rows.iter().filter(|r| !r.container) {
        let kind = r.kind.split_whitespace().next().unwrap_or("").to_string();
        *by_kind.entry(kind).or_insert(0.0) += r.ms.unwrap_or(0.0);
    }
    Ok(by_kind)
}

/// The limits (cached or measured) and the layers timed over `--iters` runs under them.
fn roofline_report(a: &BenchArgs, engine: &Engine, x: &Tensor) -> Result<Roofline> {
    if !engine.device.is_cpu() {
        bail!("--roofline measures this machine's CPU; run it with --device cpu");
    }
    let limits = roofline::limits(a.remeasure, &mut Silent)?;
    let measured = profile::time_layers(engine, x, a.iters, PlainBaseline::Skip, &mut Silent)?;
    let (n, _, h, w) = x.dims4()?;
    let rows = profile::rows(
        &flops::layers(&engine.plan, n, h, w),
        &measured.times,
        measured.total,
    );
    Ok(Roofline {
        cpu: roofline::cpu_name(),
        ridge: limits.ridge(),
        bf16_matmuls: engine.native_bf16_matmuls(),
        layers: roofline::points(&rows, &limits, engine.storage_dtype().size_in_bytes()),
        limits,
    })
}

fn print_roofline(r: &Roofline) {
    let l = &r.limits;
    println!(
        "{} on {}: compute roof {:.0} GFLOP/s (FMA loop; our GEMM reaches {:.0}), memory roof {:.1} GB/s (streaming copy; {:.0} GB/s within the caches), ridge at {:.1} FLOP/byte",
        r.cpu.as_deref().unwrap_or("this CPU"),
        l.threads_text(),
        l.peak_gflops,
        l.gemm_gflops,
        l.memory_gbs,
        l.cache_gbs,
        r.ridge
    );
    println!(
        "{:<34} {:<14} {:>9} {:>8} {:>9} {:>9} {:>8}  bound",
        "layer", "kind", "FLOP/byte", "ms", "GFLOP/s", "roof", "% limit"
    );
    for p in &r.layers {
        println!(
            "{:<34} {:<14} {:>9.2} {:>8.3} {:>9.1} {:>9.1} {:>8.1}  {:?}",
            p.name, p.kind, p.intensity, p.ms, p.gflops, p.roof_gflops, p.percent_of_limit, p.bound
        );
    }
    if r.bf16_matmuls {
        println!("{}", roofline::BF16_ROOF_NOTE);
    }
}

fn print_report(r: &BenchReport) {
    println!(
        "{} batch {} {}×{} on {} {}: median {:.2} ms, min {:.2} ms over {} runs",
        r.model,
        r.batch,
        r.size[0],
        r.size[1],
        r.device,
        r.precision,
        r.median_ms,
        r.min_ms,
        r.iters
    );
    if let Some(m) = &r.memory {
        println!(
            "peak memory {:.0} MB above the start, {:.2}× the budget of 1.2 × (weights + two largest activations)",
            m.peak_mb, m.memory_ratio
        );
    }
    if let Some(t) = &r.tracing {
        println!(
            "timing observer ×{:.3}, capturing stage outputs ×{:.3}",
            t.timing_overhead, t.capture_overhead
        );
    }
    if let Some(g) = &r.gradcam {
        println!(
            "Grad-CAM at {}: median {:.2} ms, {:.2}× the forward's time (median of {} interleaved rounds, range {:.2}–{:.2}); peak memory {}",
            g.gradcam_layer,
            g.gradcam_median_ms,
            g.gradcam_time_ratio,
            g.gradcam_rounds,
            g.gradcam_time_ratio_range[0],
            g.gradcam_time_ratio_range[1],
            match (g.gradcam_peak_mb, g.gradcam_memory_ratio) {
                (Some(p), Some(r)) => format!("{p:.0} MB, {r:.2}× the forward's"),
                _ => "not measured (needs Linux's /proc/self/clear_refs)".into(),
            }
        );
    }
    if let Some(c) = &r.cka {
        println!(
            "CKA of the model against a copy of itself over {} images: median {:.0} ms, {:.2}× the two models' forwards ({:.0} ms; median of {} interleaved rounds, range {:.2}–{:.2})",
            c.cka_images,
            c.cka_median_ms,
            c.cka_time_ratio,
            c.forwards_median_ms,
            c.cka_rounds,
            c.cka_time_ratio_range[0],
            c.cka_time_ratio_range[1]
        );
    }
    if let Some(v) = &r.visualize {
        println!(
            "feature visualisation at {}, batch {}: one step median {:.1} ms, {:.2}× the forward up to the layer ({:.1} ms; median of {} interleaved rounds, range {:.2}–{:.2})",
            v.visualize_layer,
            r.batch,
            v.visualize_step_median_ms,
            v.visualize_step_ratio,
            v.visualize_forward_median_ms,
            v.visualize_rounds,
            v.visualize_step_ratio_range[0],
            v.visualize_step_ratio_range[1]
        );
    }
    for f in r.faithfulness.iter().flatten() {
        println!(
            "{}: median {:.0} ms, {:.2}× the time of {} forward(s) (median of interleaved rounds, range {:.2}–{:.2})",
            f.what, f.median_ms, f.ratio, f.forwards, f.ratio_range[0], f.ratio_range[1]
        );
    }
    if let Some(roof) = &r.roofline {
        print_roofline(roof);
    }
    if let Some(kinds) = &r.ms_per_kind {
        let mut v: Vec<(&String, &f64)> = kinds.iter().collect();
        v.sort_by(|a, b| b.1.total_cmp(a.1));
        let sum: f64 = kinds.values().sum();
        for (k, ms) in v {
            println!("{k:>12} {ms:8.2} ms {:5.1}%", 100.0 * ms / sum.max(1e-9));
        }
    }
}

/// A `kB` field of `/proc/self/status` (Linux); `None` elsewhere.
fn proc_status_kb(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
