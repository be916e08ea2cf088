//! `train`: the shipped Fashion-MNIST model, trained.
use crate::train::*;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Folder with Fashion-MNIST IDX files (`apt-get install dataset-fashion-mnist`).
    #[arg(long, default_value = crate::train::FASHION_DIR)]
    pub data: PathBuf,
    /// Use only the first N images.
    #[arg(long)]
    pub limit: Option<usize>,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
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
    /// Input side in pixels (Fashion-MNIST's 28×28 resized, bicubic).
    #[arg(long, default_value_t = crate::train::INPUT)]
    size: usize,
    /// Stop after N optimiser steps (with `--bench`: steps per run, default 6).
    #[arg(long)]
    steps: Option<usize>,
    /// Time training steps instead of training: the fused kernels against candle's generic
    /// ops (and glibc's initial allocator thresholds), interleaved, `--rounds` times.
    #[arg(long)]
    bench: bool,
    /// Rounds of `--bench` (each runs both paths, in alternating order).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// Print `--bench`'s result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn train(a: &TrainArgs) -> Result<()> {
    if a.bench {
        return bench(a);
    }
    check(a)?;
    let ds = fashion_mnist(&a.data.data, "train")?;
    let test = fashion_mnist(&a.data.data, "t10k")?;
    eprintln!("preparing {} training images…", ds.len());
    let pre = preprocess_config(a.size);
    let x = prepare_dataset(&ds, &pre)?;
    let xt = prepare_dataset(&test, &pre)?;
    let t0 = Instant::now();
    let mut cfg = TrainConfig::fashion_default();
    cfg.input = a.size;
    (
        cfg.epochs,
        cfg.batch,
        cfg.lr,
        cfg.seed,
        cfg.max_steps,
        cfg.limit,
    ) = (a.epochs, a.batch, a.lr, a.seed, a.steps, a.data.limit);
    let mut bar = TrainProgress::new(t0);
    let trained = crate::train::train(&cfg, &x, &ds.labels, |step, total, loss, lr| {
        bar.step(step, total, loss, lr)
    })?;
    bar.bar.finish();
    let model = model_from(&trained.ema, &cfg.config)?;
    let acc = accuracy(&model, &xt, &test.labels, 500)?;
    if let Some(dir) = a.out.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    let extra = serde_json::json!({
        "dataset": "Fashion-MNIST (Debian dataset-fashion-mnist)",
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "epochs": cfg.epochs, "batch": cfg.batch, "lr": cfg.lr, "min_lr": cfg.min_lr,
        "weight_decay": cfg.weight_decay, "warmup_epochs": cfg.warmup_epochs,
        "label_smoothing": cfg.label_smoothing, "drop_path": cfg.drop_path,
        "ema_decay": cfg.ema_decay, "seed": cfg.seed, "input": cfg.input,
        "test_top1_ema": acc,
        "train_seconds": t0.elapsed().as_secs_f64(),
    });
    let json = save(&trained.ema, &cfg.config, &pre, &a.out, extra)?;
    println!(
        "test top-1 (EMA weights): {:.2}%; wrote {} and {}",
        100.0 * acc,
        a.out.display(),
        json.display()
    );
    Ok(())
}

/// Refuses sizes the network cannot take and batches that cannot be formed.
fn check(a: &TrainArgs) -> Result<()> {
    let size = a.size;
    if size == 0 || !size.is_multiple_of(32) || size > crate::io::preprocess::MAX_INPUT_SIDE {
        anyhow::bail!(
            "--size {size}: want a multiple of 32 (the network's stride) up to {}",
            crate::io::preprocess::MAX_INPUT_SIDE
        );
    }
    if !(1..=super::MAX_BATCH).contains(&a.batch) {
        anyhow::bail!("--batch {}: want 1 to {}", a.batch, super::MAX_BATCH);
    }
    Ok(())
}

/// `train --bench`: seconds per step of the shipped model's training, fused kernels against
/// candle's generic ops, in one process, interleaved; a run's first step (allocations, thread
/// start-up) is not counted.
fn bench(a: &TrainArgs) -> Result<()> {
    use crate::analysis::stats::median;
    check(a)?;
    let mut ds = fashion_mnist(&a.data.data, "train")?;
    let n = a.data.limit.unwrap_or(1024).clamp(1, ds.len().max(1));
    ds.labels.truncate(n);
    ds.images.truncate(n * ds.rows * ds.cols);
    let data = prepare_dataset(&ds, &preprocess_config(a.size))?;
    let mut cfg = TrainConfig::fashion_default();
    (cfg.batch, cfg.lr, cfg.seed, cfg.input) = (a.batch, a.lr, a.seed, a.size);
    let steps = a.steps.unwrap_or(6).max(2);
    let (mut fused, mut generic, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let time = |generic_ops: bool| -> Result<f64> {
        if generic_ops {
            crate::base::allocator::glibc_initial();
        }
        let t = time_steps(&cfg, &data, &ds.labels, steps, generic_ops);
        crate::base::allocator::keep_freed_memory();
        Ok(median(&t?[1..]))
    };
    for round in 0..a.rounds {
        let (f, g) = if round % 2 == 0 {
            let f = time(false)?;
            (f, time(true)?)
        } else {
            let g = time(true)?;
            (time(false)?, g)
        };
        eprintln!(
            "round {}: fused {f:.3} s/step, candle ops {g:.3} s/step",
            round + 1
        );
        fused.push(f);
        generic.push(g);
        ratios.push(g / f);
    }
    let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let threads = rayon::current_num_threads();
    // Both paths run candle's elementwise ops as the program does (`base::pool`): on the calling
    // thread, unless CANDLE_NUM_THREADS gives candle a pool of its own, which helps the
    // reference and slows the fused step.
    let candle_pool = candle_core::utils::barrier_pool().n_workers();
    if a.json {
        let j = serde_json::json!({
            "batch": cfg.batch, "size": cfg.input, "threads": threads, "rounds": a.rounds,
            "candle_pool_threads": candle_pool,
            "steps_per_run": steps, "fused_s_per_step": median(&fused),
            "generic_s_per_step": median(&generic), "speedup_median": median(&ratios),
            "speedup_min": lo, "speedup_max": hi,
        });
        println!("{j}");
        return Ok(());
    }
    println!(
        "training step, batch {}, {}×{}, {threads} threads, {} rounds × {} steps a run; \
         candle's own pool: {candle_pool} threads (CANDLE_NUM_THREADS)",
        cfg.batch, cfg.input, cfg.input, a.rounds, steps
    );
    println!("fused kernels: {:.3} s/step (median)", median(&fused));
    println!("candle ops:    {:.3} s/step (median)", median(&generic));
    println!(
        "speed-up: {:.2}× (median of the rounds' ratios; range {lo:.2}–{hi:.2})",
        median(&ratios)
    );
    Ok(())
}

/// A progress bar on a terminal, a log line every 100 steps elsewhere.
struct TrainProgress {
    bar: indicatif::ProgressBar,
    avg: Option<f32>,
    t0: Instant,
}

impl TrainProgress {
    fn new(t0: Instant) -> Self {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} steps {elapsed_precise} eta {eta} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Self { bar, avg: None, t0 }
    }

    fn step(&mut self, step: usize, total: usize, loss: f32, lr: f64) {
        self.bar.set_length(total as u64);
        self.bar.set_position(step as u64);
        let a = self.avg.map_or(loss, |a| 0.98 * a + 0.02 * loss);
        self.avg = Some(a);
        self.bar.set_message(format!("loss {a:.4} lr {lr:.2e}"));
        if self.bar.is_hidden() && (step.is_multiple_of(100) || step == total) {
            eprintln!(
                "step {step}/{total} loss {a:.4} lr {lr:.2e} {:.0}s",
                self.t0.elapsed().as_secs_f64()
            );
        }
    }
}
