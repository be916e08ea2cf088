//! The command line: the same engine as the app, scriptable.
use crate::device::{device_name, dtype_name, parse_device, parse_dtype, set_threads};
use crate::engine::{default_weights, Engine};
use crate::flops::{self, human};
use crate::trace::{to_nchw, CaptureLevel, CaptureObserver, LayerId};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::{Args, Parser, Subcommand};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(
    name = "convnext-explorer",
    version,
    about = "Look inside ConvNeXt image classifiers. With no subcommand, opens the app."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Weights for the app to open (file or folder); default: the shipped model.
    #[arg(long, global = true)]
    pub weights: Option<PathBuf>,
    /// Device: cpu, cuda[:N], metal[:N] or auto (default: cpu; the app remembers its last).
    #[arg(long, global = true)]
    pub device: Option<String>,
    /// CPU threads (default: all cores).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// Image for the app to open.
    pub image: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Top-k predictions for images (files or folders).
    Classify {
        #[arg(long, default_value_t = 5)]
        top: usize,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = "f32")]
        dtype: String,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// The layer table: shapes, parameters and MACs (fvcore convention).
    Inspect {
        #[command(flatten)]
        model: ModelArgs,
        /// Input size, `H` or `HxW`.
        #[arg(long)]
        size: Option<String>,
        #[arg(long, default_value_t = 1)]
        batch: usize,
        #[arg(long)]
        json: bool,
    },
    /// Write the input, logits and stage (optionally block) outputs to a safetensors file.
    Export {
        #[arg(long, conflicts_with = "tensor")]
        image: Option<PathBuf>,
        /// Read an NCHW f32 tensor named `input` and skip preprocessing.
        #[arg(long)]
        tensor: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// Also write every block's output.
        #[arg(long)]
        blocks: bool,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Train the small Fashion-MNIST ConvNeXt (the shipped default model).
    Train {
        #[command(flatten)]
        data: DataArgs,
        #[arg(long, default_value = "weights/convnext_fashion.safetensors")]
        out: PathBuf,
        #[arg(long, default_value_t = 20)]
        epochs: usize,
        #[arg(long, default_value_t = 128)]
        batch: usize,
        #[arg(long, default_value_t = 2e-3)]
        lr: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Stop after N optimiser steps.
        #[arg(long)]
        steps: Option<usize>,
    },
    /// Download a Hugging Face repo (timm or transformers ConvNeXt) into `weights/`.
    #[cfg(feature = "hub")]
    Download {
        /// e.g. `timm/convnext_tiny.fb_in1k` or `facebook/convnext-tiny-224`.
        repo: String,
    },
    /// Top-1 accuracy on the Fashion-MNIST test set.
    Eval {
        #[command(flatten)]
        data: DataArgs,
    },
    /// Time the forward pass.
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, default_value_t = 1)]
        batch: usize,
        #[arg(long, default_value_t = 20)]
        iters: usize,
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        #[arg(long, default_value = "f32")]
        dtype: String,
        #[arg(long)]
        size: Option<String>,
        /// Time each layer too (the timing observer) and report its overhead.
        #[arg(long)]
        layers: bool,
        /// Write the per-layer profile (median over the runs) as CSV, as the app exports it,
        /// and print the time per kind of layer.
        #[arg(long)]
        profile_csv: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Folder with Fashion-MNIST IDX files (`apt-get install dataset-fashion-mnist`).
    #[arg(long, default_value = crate::train::FASHION_DIR)]
    pub data: PathBuf,
    /// Use only the first N images.
    #[arg(long)]
    pub limit: Option<usize>,
}

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A named variant with seeded random weights (instead of --weights).
    #[arg(long, conflicts_with = "weights")]
    pub variant: Option<String>,
    #[arg(long, default_value_t = 1000)]
    pub classes: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn parse_size(s: &str) -> Result<(usize, usize)> {
    let parse = |p: &str| -> Result<usize> {
        p.trim()
            .parse()
            .with_context(|| format!("bad size `{s}` (expected H or HxW)"))
    };
    match s.split_once(['x', 'X']) {
        Some((h, w)) => Ok((parse(h)?, parse(w)?)),
        None => {
            let v = parse(s)?;
            Ok((v, v))
        }
    }
}

fn build_engine(
    cli: &Cli,
    model: Option<&ModelArgs>,
    device: &Device,
    dtype: DType,
) -> Result<Engine> {
    if let Some(v) = model.and_then(|m| m.variant.as_deref()) {
        let m = model.unwrap();
        return Ok(Engine::random(v, m.classes, m.seed, device, dtype)?);
    }
    let path = match &cli.weights {
        Some(p) => p.clone(),
        None => default_weights().context(
            "no --weights given and the shipped default model (weights/convnext_fashion.safetensors) is missing; pass --weights or --variant",
        )?,
    };
    Ok(Engine::load(&path, device, dtype)?)
}

fn image_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("{}: cannot list folder", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.is_file()
                        && matches!(
                            f.extension()
                                .and_then(|e| e.to_str())
                                .map(|e| e.to_ascii_lowercase())
                                .as_deref(),
                            Some("png" | "jpg" | "jpeg" | "webp" | "bmp" | "gif" | "tif" | "tiff")
                        )
                })
                .collect();
            v.sort();
            out.extend(v);
        } else {
            out.push(p.clone());
        }
    }
    if out.is_empty() {
        bail!("no images found in {paths:?}");
    }
    Ok(out)
}

pub fn run(cli: Cli) -> Result<()> {
    if let Some(t) = cli.threads {
        set_threads(t);
    }
    let device = parse_device(cli.device.as_deref().unwrap_or("cpu"))?;
    let Some(cmd) = &cli.command else {
        bail!("no subcommand (the app is started by main)");
    };
    match cmd {
        Command::Classify {
            top,
            json,
            dtype,
            paths,
        } => {
            let engine = build_engine(&cli, None, &device, parse_dtype(dtype)?)?;
            if !json {
                eprintln!("model: {}", engine.describe());
            }
            let mut failed = 0;
            for path in image_files(paths)? {
                let res = engine
                    .prepare_file(&path)
                    .and_then(|p| engine.forward(&p.tensor))
                    .and_then(|logits| engine.top_k(&logits, *top));
                match res {
                    Ok(mut preds) => {
                        let preds = preds.remove(0);
                        if *json {
                            println!(
                                "{}",
                                serde_json::json!({"image": path.display().to_string(), "top": preds})
                            );
                        } else {
                            println!("{}", path.display());
                            for p in preds {
                                println!("  {:6.2}%  {:>5}  {}", 100.0 * p.prob, p.index, p.label);
                            }
                        }
                    }
                    Err(e) => {
                        failed += 1;
                        eprintln!("error: {e}");
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} image(s) could not be classified");
            }
            Ok(())
        }
        Command::Inspect {
            model,
            size,
            batch,
            json,
        } => {
            let engine_cfg = if let Some(v) = &model.variant {
                (
                    crate::model::Config::variant(v, model.classes)?,
                    (224, 224),
                    v.clone(),
                )
            } else {
                let path = cli
                    .weights
                    .clone()
                    .or_else(default_weights)
                    .context("give --weights or --variant")?;
                let ck = crate::model::Checkpoint::open(&path)?;
                let pre = crate::preprocess::PreprocessConfig::from_json(
                    ck.json.as_ref(),
                    ck.preprocessor_json.as_ref(),
                );
                (ck.config, pre.input_size, path.display().to_string())
            };
            let (cfg, default_size, source) = engine_cfg;
            let (h, w) = match size {
                Some(s) => parse_size(s)?,
                None => default_size,
            };
            cfg.check_input(h, w)?;
            if *batch == 0 {
                bail!("--batch must be at least 1");
            }
            let layers = flops::layers(&cfg, *batch, h, w);
            let totals = flops::totals(&layers);
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "model": cfg.describe(),
                        "source": source,
                        "config": cfg,
                        "input": [*batch, 3, h, w],
                        "layers": layers,
                        "total_macs": totals.total_macs,
                        "total_params": totals.total_params,
                        "conv_linear_macs": totals.conv_linear_macs,
                        "elementwise_ops": totals.elementwise,
                    }))?
                );
            } else {
                println!("{} ({source}), input {batch}×3×{h}×{w}", cfg.describe());
                println!(
                    "{:<36} {:<15} {:>22} {:>22} {:>10} {:>10}",
                    "layer", "kind", "in", "out", "params", "MACs"
                );
                for l in &layers {
                    let name = format!("{}{}", "  ".repeat(l.depth), l.name);
                    println!(
                        "{:<36} {:<15} {:>22} {:>22} {:>10} {:>10}",
                        name,
                        l.kind,
                        format!("{:?}", l.in_shape),
                        format!("{:?}", l.out_shape),
                        human(l.params as f64),
                        human(l.macs as f64)
                    );
                }
                println!(
                    "total: {} MACs ({} FLOPs = 2×MACs), {} params ({} exactly); MACs follow fvcore: conv+linear {}, LayerNorm ×5 and pooling ×1 per element; {} other elementwise ops not counted",
                    human(totals.total_macs as f64),
                    human(2.0 * totals.total_macs as f64),
                    human(totals.total_params as f64),
                    totals.total_params,
                    human(totals.conv_linear_macs as f64),
                    human(totals.elementwise as f64),
                );
            }
            Ok(())
        }
        Command::Export {
            image,
            tensor,
            out,
            blocks,
            model,
        } => {
            let engine = build_engine(&cli, Some(model), &device, DType::F32)?;
            let input = match (image, tensor) {
                (Some(img), None) => engine.prepare_file(img)?.tensor,
                (None, Some(t)) => read_input_tensor(t)?,
                _ => bail!("give --image IMG or --tensor T.safetensors"),
            };
            let level = if *blocks {
                CaptureLevel::Blocks
            } else {
                CaptureLevel::Stages
            };
            let mut cap = CaptureObserver::new(level);
            let logits = engine.forward_observed(&input, &mut cap)?;
            let mut map: HashMap<String, Tensor> = HashMap::new();
            map.insert(
                "input".into(),
                input.to_device(&Device::Cpu)?.to_dtype(DType::F32)?,
            );
            map.insert(
                "logits".into(),
                logits.to_device(&Device::Cpu)?.to_dtype(DType::F32)?,
            );
            for (id, t) in &cap.outputs {
                let name = match id {
                    LayerId::Stem => "stem".to_string(),
                    LayerId::Stage(s) => format!("stages.{s}"),
                    LayerId::Block(..) => id.name(),
                    _ => continue,
                };
                map.insert(
                    name,
                    to_nchw(t)?.to_device(&Device::Cpu)?.to_dtype(DType::F32)?,
                );
            }
            candle_core::safetensors::save(&map, out)
                .with_context(|| format!("{}: cannot write", out.display()))?;
            eprintln!("wrote {} tensors to {}", map.len(), out.display());
            Ok(())
        }
        Command::Train {
            data,
            out,
            epochs,
            batch,
            lr,
            seed,
            steps,
        } => {
            use crate::train::*;
            let ds = fashion_mnist(&data.data, "train")?;
            let test = fashion_mnist(&data.data, "t10k")?;
            eprintln!("preparing {} training images…", ds.len());
            let x = prepare_dataset(&ds);
            let xt = prepare_dataset(&test);
            let t0 = Instant::now();
            let mut cfg = TrainConfig::fashion_default();
            (
                cfg.epochs,
                cfg.batch,
                cfg.lr,
                cfg.seed,
                cfg.max_steps,
                cfg.limit,
            ) = (*epochs, *batch, *lr, *seed, *steps, data.limit);
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} steps {elapsed_precise} eta {eta} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let mut avg = None::<f32>;
            let trained = train(&cfg, &x, &ds.labels, |step, total, loss, lr| {
                bar.set_length(total as u64);
                bar.set_position(step as u64);
                let a = avg.map_or(loss, |a| 0.98 * a + 0.02 * loss);
                avg = Some(a);
                bar.set_message(format!("loss {a:.4} lr {lr:.2e}"));
                // Progress bars are hidden when stderr is no terminal: log now and then.
                if bar.is_hidden() && (step % 100 == 0 || step == total) {
                    eprintln!(
                        "step {step}/{total} loss {a:.4} lr {lr:.2e} {:.0}s",
                        t0.elapsed().as_secs_f64()
                    );
                }
            })?;
            bar.finish();
            let model = model_from(&trained.ema, &cfg.config)?;
            let acc = accuracy(&model, &xt, &test.labels, 500)?;
            if let Some(dir) = out.parent() {
                std::fs::create_dir_all(dir).ok();
            }
            let extra = serde_json::json!({
                "dataset": "Fashion-MNIST (Debian dataset-fashion-mnist)",
                "command": std::env::args().collect::<Vec<_>>().join(" "),
                "epochs": cfg.epochs, "batch": cfg.batch, "lr": cfg.lr, "min_lr": cfg.min_lr,
                "weight_decay": cfg.weight_decay, "warmup_epochs": cfg.warmup_epochs,
                "label_smoothing": cfg.label_smoothing, "drop_path": cfg.drop_path,
                "ema_decay": cfg.ema_decay, "seed": cfg.seed,
                "test_top1_ema": acc,
                "train_seconds": t0.elapsed().as_secs_f64(),
            });
            let json = save(&trained.ema, &cfg.config, out, extra)?;
            println!(
                "test top-1 (EMA weights): {:.2}%; wrote {} and {}",
                100.0 * acc,
                out.display(),
                json.display()
            );
            Ok(())
        }
        #[cfg(feature = "hub")]
        Command::Download { repo } => {
            let dir = crate::hub::download(repo, &crate::engine::weights_dir())?;
            let ck = crate::model::Checkpoint::open(&dir)?;
            println!(
                "{} ({}, {}) in {}",
                ck.config.describe(),
                ck.format,
                human(ck.num_params() as f64),
                dir.display()
            );
            Ok(())
        }
        Command::Eval { data } => {
            use crate::train::*;
            let engine = build_engine(&cli, None, &device, DType::F32)?;
            let mut test = fashion_mnist(&data.data, "t10k")?;
            if let Some(l) = data.limit {
                test.labels.truncate(l);
            }
            let xt = prepare_dataset(&test);
            let acc = accuracy(&engine.model, &xt, &test.labels, 500)?;
            println!(
                "{}: top-1 {:.2}% on {} Fashion-MNIST test images",
                engine.source,
                100.0 * acc,
                test.labels.len()
            );
            Ok(())
        }
        Command::Bench {
            model,
            batch,
            iters,
            warmup,
            dtype,
            size,
            layers,
            profile_csv,
            json,
        } => {
            let dt = parse_dtype(dtype)?;
            let rss_before = proc_status_kb("VmRSS");
            let engine = build_engine(&cli, Some(model), &device, dt)?;
            let (h, w) = match size {
                Some(s) => parse_size(s)?,
                None => engine.preprocess.input_size,
            };
            engine.config.check_input(h, w)?;
            if *batch == 0 || *iters == 0 {
                bail!("--batch and --iters must be at least 1");
            }
            let x = Tensor::randn(0f32, 1f32, (*batch, 3, h, w), &device)?.to_dtype(dt)?;
            let time = |f: &mut dyn FnMut() -> Result<()>| -> Result<Vec<f64>> {
                for _ in 0..*warmup {
                    f()?;
                }
                let mut v = Vec::with_capacity(*iters);
                for _ in 0..*iters {
                    let t = Instant::now();
                    f()?;
                    v.push(t.elapsed().as_secs_f64() * 1e3);
                }
                Ok(v)
            };
            let sync = |d: &Device| -> Result<()> { Ok(d.synchronize()?) };
            let plain = time(&mut || {
                engine.forward(&x)?;
                sync(&device)
            })?;
            let mut result = serde_json::json!({
                "model": engine.config.describe(),
                "batch": batch,
                "size": [h, w],
                "device": device_name(&device),
                "dtype": dtype_name(dt),
                "threads": candle_core::utils::get_num_threads(),
                "iters": iters,
                "median_ms": median(&plain),
                "min_ms": plain.iter().cloned().fold(f64::INFINITY, f64::min),
            });
            if *layers {
                let timed = time(&mut || {
                    let mut obs = crate::trace::TimingObserver::new(&device);
                    engine.forward_observed(&x, &mut obs)?;
                    sync(&device)
                })?;
                let captured = time(&mut || {
                    let mut obs = CaptureObserver::new(CaptureLevel::Stages);
                    engine.forward_observed(&x, &mut obs)?;
                    sync(&device)
                })?;
                result["timing_observer_median_ms"] = median(&timed).into();
                result["capture_stages_median_ms"] = median(&captured).into();
                result["timing_overhead"] = (median(&timed) / median(&plain)).into();
                result["capture_overhead"] = (median(&captured) / median(&plain)).into();
            }
            // Peak memory above what the process held before loading, against the budget:
            // 1.2 × (weights + the two largest activations).
            if let (Some(before), Some(peak)) = (rss_before, proc_status_kb("VmHWM")) {
                let elt = dt.size_in_bytes() as f64;
                let mut acts: Vec<f64> = flops::layers(&engine.config, *batch, h, w)
                    .iter()
                    .map(|l| l.out_shape.iter().product::<usize>() as f64 * elt)
                    .collect();
                acts.sort_by(|a, b| b.total_cmp(a));
                let budget =
                    1.2 * (engine.num_params as f64 * elt + acts.iter().take(2).sum::<f64>());
                let used = (peak.saturating_sub(before)) as f64 * 1024.0;
                result["peak_mb"] = (used / 1e6).into();
                result["memory_budget_mb"] = (budget / 1e6).into();
                result["memory_ratio"] = (used / budget).into();
            }
            if let Some(out) = profile_csv {
                let measured = crate::profile::time_layers(&engine, &x, *iters, false)?;
                let layers = flops::layers(&engine.config, *batch, h, w);
                let rows = crate::profile::rows(&layers, &measured.times, measured.total);
                std::fs::write(out, crate::profile::to_csv(&rows))
                    .with_context(|| format!("writing {}", out.display()))?;
                let mut by_kind: Vec<(String, f64)> = Vec::new();
                for r in rows.iter().filter(|r| !r.container) {
                    let kind = r.kind.split_whitespace().next().unwrap_or("").to_string();
                    match by_kind.iter_mut().find(|(k, _)| *k == kind) {
                        Some((_, ms)) => *ms += r.ms.unwrap_or(0.0),
                        None => by_kind.push((kind, r.ms.unwrap_or(0.0))),
                    }
                }
                by_kind.sort_by(|a, b| b.1.total_cmp(&a.1));
                let sum: f64 = by_kind.iter().map(|(_, m)| m).sum();
                let mut kinds = serde_json::Map::new();
                for (k, ms) in &by_kind {
                    if !*json {
                        eprintln!("{k:>12} {ms:8.2} ms {:5.1}%", 100.0 * ms / sum.max(1e-9));
                    }
                    kinds.insert(k.clone(), (*ms).into());
                }
                result["ms_per_kind"] = kinds.into();
            }
            if *json {
                println!("{result}");
            } else {
                println!(
                    "{} batch {} {}×{} on {} {}: median {:.2} ms, min {:.2} ms over {} runs",
                    engine.config.describe(),
                    batch,
                    h,
                    w,
                    device_name(&device),
                    dtype_name(dt),
                    result["median_ms"].as_f64().unwrap_or(0.0),
                    result["min_ms"].as_f64().unwrap_or(0.0),
                    iters
                );
                if let Some(r) = result["memory_ratio"].as_f64() {
                    println!(
                        "peak memory {:.0} MB above the start, {:.2}× the budget of 1.2 × (weights + two largest activations)",
                        result["peak_mb"].as_f64().unwrap_or(0.0),
                        r
                    );
                }
                if *layers {
                    println!(
                        "timing observer ×{:.3}, capturing stage outputs ×{:.3}",
                        result["timing_overhead"].as_f64().unwrap_or(0.0),
                        result["capture_overhead"].as_f64().unwrap_or(0.0)
                    );
                }
            }
            Ok(())
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

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        0.5 * (s[m - 1] + s[m])
    }
}

fn read_input_tensor(path: &Path) -> Result<Tensor> {
    let map = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("{}: cannot read safetensors", path.display()))?;
    let t = map
        .get("input")
        .with_context(|| format!("{}: no tensor named `input`", path.display()))?;
    Ok(t.to_dtype(DType::F32)?)
}
