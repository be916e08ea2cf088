//! `collapse`: feature collapse (ConvNeXt V2, Sec. 4) at every block's `mlp.act` and every
//! stage output, over a folder of images or a ready input tensor.
use super::export::read_input_tensor;
use super::{Context, ModelArgs};
use crate::analysis::collapse::CollapseAccumulator;
use crate::analysis::folder_run::{collapse_of_tensor, run_folder, FolderOptions};
use anyhow::{bail, Result};
use candle_core::DType;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct CollapseArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A folder of images (searched recursively).
    #[arg(long, conflicts_with = "tensor")]
    images: Option<PathBuf>,
    /// An NCHW f32 tensor named `input` instead of a folder.
    #[arg(long)]
    tensor: Option<PathBuf>,
    #[arg(long)]
    limit: Option<usize>,
    /// `{"images", "layers": [{"name", "distance", "depth"}]}`.
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Context, a: &CollapseArgs) -> Result<()> {
    let engine = ctx.engine(Some(&a.model), DType::F32)?;
    let acc: CollapseAccumulator = match (&a.images, &a.tensor) {
        (Some(dir), None) => {
            let opts = FolderOptions {
                limit: a.limit,
                collapse: true,
                ..Default::default()
            };
            let run = run_folder(&engine, dir, opts, &mut super::eval::Terminal)?;
            for (p, e) in &run.skipped {
                eprintln!("skipped {}: {e}", p.display());
            }
            run.collapse.unwrap_or_default()
        }
        (None, Some(t)) => collapse_of_tensor(&engine, &read_input_tensor(t)?)?,
        _ => bail!("give --images DIR or --tensor T.safetensors"),
    };
    let layers = acc.finish();
    if a.json {
        println!(
            "{}",
            serde_json::json!({"images": acc.images(), "layers": layers})
        );
        return Ok(());
    }
    println!(
        "{}: feature collapse over {} images",
        engine.source,
        acc.images()
    );
    println!("{:<32} {:>6} {:>9}", "layer", "depth", "distance");
    for l in layers {
        println!("{:<32} {:>6.2} {:>9.4}", l.name, l.depth, l.distance);
    }
    Ok(())
}
