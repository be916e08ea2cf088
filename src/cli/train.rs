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
    /// Stop after N optimiser steps.
    #[arg(long)]
    steps: Option<usize>,
}

pub fn train(a: &TrainArgs) -> Result<()> {
    let ds = fashion_mnist(&a.data.data, "train")?;
    let test = fashion_mnist(&a.data.data, "t10k")?;
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
        "ema_decay": cfg.ema_decay, "seed": cfg.seed,
        "test_top1_ema": acc,
        "train_seconds": t0.elapsed().as_secs_f64(),
    });
    let json = save(&trained.ema, &cfg.config, &a.out, extra)?;
    println!(
        "test top-1 (EMA weights): {:.2}%; wrote {} and {}",
        100.0 * acc,
        a.out.display(),
        json.display()
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
