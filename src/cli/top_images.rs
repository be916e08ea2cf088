//! `top-images`: the images of a folder that excite one channel of one layer most, with where
//! (JSON) and the patch of the input around the peak (PNGs).
use super::{Context, ModelArgs};
use crate::analysis::attribution::layer_by_name;
use crate::analysis::folder_run::{run_folder, FolderOptions};
use crate::analysis::top_images::{patch_rect, Hit};
use anyhow::{bail, Context as _, Result};
use candle_core::DType;
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct TopImagesArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A layer name as the trace names it (`stages.2`, `stages.1.blocks.0.mlp.act`, …).
    #[arg(long)]
    layer: String,
    #[arg(long)]
    channel: usize,
    /// A folder of images (searched recursively).
    #[arg(long)]
    images: PathBuf,
    /// How many images to keep.
    #[arg(long, default_value_t = 9, value_parser = clap::value_parser!(u16).range(1..=1000))]
    k: u16,
    #[arg(long)]
    limit: Option<usize>,
    /// Where to write the patches (`<rank>_<image>.png`); none written without it.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(ctx: &Context, a: &TopImagesArgs) -> Result<()> {
    let engine = ctx.engine(Some(&a.model), DType::F32)?;
    let layer = layer_by_name(&engine, &a.layer)?;
    let opts = FolderOptions {
        limit: a.limit,
        top: Some((a.k as usize, Box::new(move |id| id == layer))),
        ..Default::default()
    };
    let run = run_folder(&engine, &a.images, opts, &mut super::eval::Terminal)?;
    let top = run.top.as_ref().context("no top images kept")?;
    let Some(ch) = top.channel(layer, a.channel) else {
        match top.layers().is_empty() {
            true => bail!("layer `{}` gave no 4-D map to rank images by", a.layer),
            false => bail!("layer `{}` has no channel {}", a.layer, a.channel),
        }
    };
    if let Some(out) = &a.out {
        std::fs::create_dir_all(out)
            .with_context(|| format!("{}: cannot create", out.display()))?;
    }
    let mut images = Vec::new();
    for (rank, hit) in ch.hits.iter().enumerate() {
        let path = &run.eval.images[hit.image].path;
        let rect = patch_rect(engine.preprocess.input_size, ch.map, (hit.y, hit.x));
        let png = match &a.out {
            Some(out) => Some(write_patch(&engine, path, rect, out, rank)?),
            None => None,
        };
        images.push(entry(path, hit, rect, png));
    }
    let j = serde_json::json!({
        "layer": ch.layer,
        "channel": ch.channel,
        "map": [ch.map.0, ch.map.1],
        "input": [engine.preprocess.input_size.0, engine.preprocess.input_size.1],
        "scanned": run.eval.images.len(),
        "skipped": run.skipped.len(),
        "images": images,
    });
    println!("{}", serde_json::to_string_pretty(&j)?);
    Ok(())
}

fn entry(
    path: &Path,
    hit: &Hit,
    (top, left, side): (usize, usize, usize),
    png: Option<PathBuf>,
) -> serde_json::Value {
    serde_json::json!({
        "path": path,
        "score": hit.score,
        "y": hit.y,
        "x": hit.x,
        "patch": {"top": top, "left": left, "side": side},
        "png": png,
    })
}

/// The patch as the network saw it (resized and cropped), enlarged to at least 96 px.
fn write_patch(
    engine: &crate::io::engine::Engine,
    path: &Path,
    (top, left, side): (usize, usize, usize),
    out: &Path,
    rank: usize,
) -> Result<PathBuf> {
    let img = crate::io::preprocess::load_image(path)?;
    let seen = crate::io::preprocess::resize_and_crop(&img, &engine.preprocess)?;
    let patch = image::imageops::crop_imm(&seen, left as u32, top as u32, side as u32, side as u32)
        .to_image();
    let scale = (96 / side.max(1)).max(1) as u32;
    let big = image::imageops::resize(
        &patch,
        side as u32 * scale,
        side as u32 * scale,
        image::imageops::FilterType::Nearest,
    );
    let stem = path
        .file_stem()
        .map_or("image".into(), |s| s.to_string_lossy());
    let file = out.join(format!("{rank}_{stem}.png"));
    big.save(&file)
        .with_context(|| format!("{}: cannot write", file.display()))?;
    Ok(file)
}
