//! `erf`: the effective receptive field of a layer (RepLKNet's definition), averaged over a
//! folder of images or a tensor, with its area-ratio summary.
use super::export::read_input_tensor;
use super::Context;
use crate::analysis::attribution::{erf_log, layer_by_name, ErfAccumulator, ERF_THRESHOLDS};
use crate::analysis::colormap::Colormap;
use crate::analysis::grid;
use crate::io::engine::Engine;
use anyhow::{bail, Context as _, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ErfArgs {
    /// A named variant with seeded random weights (the untrained baseline), instead of --weights.
    #[arg(long, conflicts_with = "weights")]
    variant: Option<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A layer name as the trace names it (`stages.2`, …).
    #[arg(long)]
    layer: String,
    /// A folder of images (searched recursively).
    #[arg(long, conflicts_with = "tensor")]
    images: Option<PathBuf>,
    /// Each image is resized to this square (RepLKNet uses 1024).
    #[arg(long, default_value_t = 1024)]
    size: usize,
    #[arg(long)]
    limit: Option<usize>,
    /// An NCHW f32 tensor named `input` instead of a folder.
    #[arg(long)]
    tensor: Option<PathBuf>,
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    png: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Context, a: &ErfArgs) -> Result<()> {
    let model = super::ModelArgs {
        variant: a.variant.clone(),
        classes: 1000,
        seed: a.seed,
    };
    let engine = ctx.engine(Some(&model), DType::F32)?;
    let layer = layer_by_name(&engine, &a.layer)?;
    let mut acc = ErfAccumulator::new(vec![layer]);
    match (&a.images, &a.tensor) {
        (Some(dir), None) => over_folder(&engine, &mut acc, dir, a)?,
        (None, Some(t)) => acc.add(&engine, &read_input_tensor(t)?)?,
        _ => bail!("give --images DIR or --tensor T.safetensors"),
    };
    let images = acc.images;
    let summary = acc.finish()?.remove(0);
    let (h, w) = summary.size;
    let erf = Tensor::from_vec(summary.map.clone(), (h, w), &Device::Cpu)?;
    candle_core::safetensors::save(&HashMap::from([("erf".to_string(), erf)]), &a.out)
        .with_context(|| format!("{}: cannot write", a.out.display()))?;
    let ratios = summary.ratios;
    if let Some(png) = &a.png {
        log_map_image(&summary.map, (h, w))
            .save(png)
            .with_context(|| format!("{}: cannot write", png.display()))?;
    }
    let json = serde_json::json!({
        "layer": a.layer,
        "images": images,
        "size": [h, w],
        "area_ratio": ERF_THRESHOLDS.iter().zip(&ratios)
            .map(|(t, r)| (format!("{t}"), serde_json::json!(r)))
            .collect::<serde_json::Map<_, _>>(),
    });
    if a.json {
        println!("{json}");
    } else {
        eprintln!(
            "ERF of {} over {images} image(s) at {h}×{w}: area ratios {}",
            a.layer, json["area_ratio"]
        );
    }
    Ok(())
}

/// Every image of a folder into the accumulator, one at a time; those that cannot be read are
/// skipped, named and counted.
fn over_folder(
    engine: &Engine,
    acc: &mut ErfAccumulator,
    dir: &std::path::Path,
    a: &ErfArgs,
) -> Result<()> {
    let files = crate::io::listing::list_images(dir, a.limit)?;
    let mut skipped = 0;
    for (i, f) in files.iter().enumerate() {
        eprintln!("[{}/{}] {}", i + 1, files.len(), f.display());
        let prepared = crate::io::preprocess::load_image(f).and_then(|img| {
            crate::io::preprocess::prepare_square(&img, a.size, &engine.preprocess, &engine.device)
        });
        match prepared {
            Ok(x) => acc.add(engine, &x)?,
            Err(e) => {
                eprintln!("skipped: {e}");
                skipped += 1;
            }
        }
    }
    if skipped > 0 {
        eprintln!("{skipped} image(s) could not be read and were skipped");
    }
    if acc.images == 0 {
        bail!("{}: no image could be read", dir.display());
    }
    Ok(())
}

/// RepLKNet's picture: `log10(map + 1)` normalised, on a red–yellow–green scale.
fn log_map_image(values: &[f32], (h, w): (usize, usize)) -> image::RgbaImage {
    let m = erf_log(values);
    let max = m.iter().cloned().fold(0.0, f32::max);
    grid::map_image(
        &m,
        (h, w),
        (0.0, max.max(f32::MIN_POSITIVE)),
        Colormap::RdYlGn,
    )
}
