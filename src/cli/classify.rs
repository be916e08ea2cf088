//! `classify`: top-k predictions for image files and folders.
use super::{dtype_arg, Context};
use crate::io::preprocess::is_image_file;
use anyhow::{bail, Context as _, Result};
use candle_core::DType;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ClassifyArgs {
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// One JSON object per image: `{"image", "top": [{"index", "label", "prob"}]}`.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value = "f32", value_parser = dtype_arg)]
    dtype: DType,
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

pub fn run(ctx: &Context, a: &ClassifyArgs) -> Result<()> {
    let engine = ctx.engine(None, a.dtype)?;
    if !a.json {
        eprintln!("model: {}", engine.describe());
    }
    let mut failed = 0;
    for path in image_files(&a.paths)? {
        let res = engine
            .prepare_file(&path)
            .and_then(|p| engine.forward(&p.tensor))
            .and_then(|logits| engine.top_k(&logits, a.top));
        match res {
            Ok(mut preds) => {
                let preds = preds.remove(0);
                if a.json {
                    let line =
                        serde_json::json!({"image": path.display().to_string(), "top": preds});
                    println!("{line}");
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

/// Files as given, and the images directly inside each folder, in name order.
fn image_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("{}: cannot list folder", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && is_image_file(f))
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
