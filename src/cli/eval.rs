//! `eval`: how good a model is, on the Fashion-MNIST test set or on any folder of images
//! labelled by its layout (class sub-folders, or `<label>_<n>` file names).
use super::train::DataArgs;
use super::Context;
use crate::analysis::folder_run::{run_folder, FolderOptions};
use crate::base::progress::Progress;
use crate::train::*;
use anyhow::Result;
use candle_core::DType;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    data: DataArgs,
    /// A folder of images instead of the Fashion-MNIST test set (searched recursively).
    #[arg(long)]
    images: Option<PathBuf>,
    /// How many of the most confident mistakes to list.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// `{"images", "skipped", "top1", "top5", "per_class", "confusion", …}`.
    #[arg(long)]
    json: bool,
    /// Images per forward.
    #[arg(long, default_value_t = 16, value_parser = super::batch_arg)]
    batch: usize,
    /// f32, bf16 (on the CPU: bf16 matmuls, the rest f32) or f16.
    #[arg(long, default_value = "f32", value_parser = super::dtype_arg)]
    dtype: DType,
}

pub fn run(ctx: &Context, a: &EvalArgs) -> Result<()> {
    match &a.images {
        Some(dir) => folder(ctx, a, dir),
        None => fashion(ctx, a),
    }
}

fn fashion(ctx: &Context, a: &EvalArgs) -> Result<()> {
    let engine = ctx.engine(None, a.dtype)?;
    let mut test = fashion_mnist(&a.data.data, "t10k")?;
    if let Some(l) = a.data.limit {
        test.labels.truncate(l);
    }
    let xt = prepare_dataset(&test, &engine.preprocess)?;
    let acc = accuracy(&engine.model, &xt, &test.labels, 500)?;
    if a.json {
        let dtype = crate::base::device::dtype_name(a.dtype);
        let j = serde_json::json!({"images": test.labels.len(), "top1": acc, "dtype": dtype});
        println!("{j}");
    } else {
        println!(
            "{} in {}: top-1 {:.2}% on {} Fashion-MNIST test images",
            engine.source,
            engine.precision(),
            100.0 * acc,
            test.labels.len()
        );
    }
    Ok(())
}

/// Progress on stderr, one line rewritten in place.
pub struct Terminal;

impl Progress for Terminal {
    fn update(&mut self, done: usize, total: usize, what: &str) {
        eprint!("\r{done}/{total} {what}");
        if done >= total {
            eprintln!();
        }
    }
}

fn folder(ctx: &Context, a: &EvalArgs, dir: &std::path::Path) -> Result<()> {
    let engine = ctx.engine(None, a.dtype)?;
    let opts = FolderOptions {
        limit: a.data.limit,
        batch: a.batch,
        ..Default::default()
    };
    let run = run_folder(&engine, dir, opts, &mut Terminal)?;
    let scores = run.eval.scores(&engine.labels);
    let skipped: Vec<_> = run
        .skipped
        .iter()
        .map(|(p, e)| serde_json::json!({"path": p, "error": e}))
        .collect();
    let mistakes: Vec<_> = run
        .eval
        .mistakes()
        .into_iter()
        .take(a.top)
        .map(|i| &run.eval.images[i])
        .collect();
    if a.json {
        let j = serde_json::json!({
            "images": run.eval.images.len(),
            "skipped": skipped,
            "labelled": scores.as_ref().map(|s| s.labelled),
            "top1": scores.as_ref().map(|s| s.top1),
            "top5": scores.as_ref().map(|s| s.top5),
            "per_class": scores.as_ref().map(|s| &s.per_class),
            "confusion": scores.as_ref().and_then(|s| s.confusion.as_ref()),
            "mistakes": mistakes,
            "labels": run.labels_note,
        });
        println!("{j}");
        return Ok(());
    }
    println!(
        "{}: {} images ({})",
        engine.source,
        run.eval.images.len(),
        run.labels_note
    );
    for (p, e) in &run.skipped {
        println!("skipped {}: {e}", p.display());
    }
    let Some(s) = scores else {
        return Ok(());
    };
    println!(
        "top-1 {:.2}%  top-5 {:.2}%  over {} labelled images",
        100.0 * s.top1,
        100.0 * s.top5,
        s.labelled
    );
    println!(
        "{:<24} {:>8} {:>10} {:>8}",
        "class", "images", "precision", "recall"
    );
    let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.1}%", 100.0 * v));
    for c in &s.per_class {
        println!(
            "{:<24} {:>8} {:>10} {:>8}",
            crate::io::labels::short(&c.label),
            c.support,
            pct(c.precision),
            pct(c.recall)
        );
    }
    if !mistakes.is_empty() {
        println!("most confident mistakes:");
    }
    for m in mistakes {
        let (p, prob) = m.top5[0];
        let truth = m.label.map_or("?".into(), |l| engine.labels[l].clone());
        println!(
            "  {:.1}% {} (is {truth}): {}",
            100.0 * prob,
            engine.labels[p],
            m.path.display()
        );
    }
    Ok(())
}
