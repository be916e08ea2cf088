//! `erf`: the effective receptive field of a layer (RepLKNet's definition), averaged over a
//! folder of images or a tensor, with its area-ratio summary.
use super::export::read_input_tensor;
use super::Context;
use crate::attribution::{self, area_ratios, layer_by_name, ERF_THRESHOLDS};
use crate::colormap::Colormap;
use crate::engine::Engine;
use crate::grid;
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
    let (sum, images, (h, w)) = match (&a.images, &a.tensor) {
        (Some(dir), None) => over_folder(&engine, layer, dir, a)?,
        (None, Some(t)) => {
            let x = read_input_tensor(t)?;
            let maps = attribution::erf_maps(&engine, &x, layer)?;
            let (n, h, w) = maps.dims3()?;
            (maps.sum(0)?, n, (h, w))
        }
        _ => bail!("give --images DIR or --tensor T.safetensors"),
    };
    let erf = (sum / images as f64)?.to_device(&Device::Cpu)?;
    let values: Vec<f32> = erf.flatten_all()?.to_vec1()?;
    candle_core::safetensors::save(&HashMap::from([("erf".to_string(), erf)]), &a.out)
        .with_context(|| format!("{}: cannot write", a.out.display()))?;
    let ratios = area_ratios(&values, (h, w), &ERF_THRESHOLDS);
    if let Some(png) = &a.png {
        log_map_image(&values, (h, w))
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

/// Σ of the per-image maps over a folder, one image at a time (memory stays one image's).
fn over_folder(
    engine: &Engine,
    layer: crate::trace::LayerId,
    dir: &std::path::Path,
    a: &ErfArgs,
) -> Result<(Tensor, usize, (usize, usize))> {
    let files = crate::folder::list_images(dir, a.limit)?;
    let mut sum: Option<Tensor> = None;
    let (mut used, mut skipped) = (0usize, Vec::new());
    for (i, f) in files.iter().enumerate() {
        eprintln!("[{}/{}] {}", i + 1, files.len(), f.display());
        let prepared = crate::preprocess::load_image(f).and_then(|img| {
            crate::preprocess::prepare_square(&img, a.size, &engine.preprocess, &engine.device)
        });
        let x = match prepared {
            Ok(x) => x,
            Err(e) => {
                eprintln!("skipped: {e}");
                skipped.push(f.clone());
                continue;
            }
        };
        let map = attribution::erf_maps(engine, &x, layer)?.sum(0)?;
        sum = Some(match sum {
            Some(s) => (s + map)?,
            None => map,
        });
        used += 1;
    }
    if !skipped.is_empty() {
        eprintln!(
            "{} image(s) could not be read and were skipped",
            skipped.len()
        );
    }
    let sum = sum.with_context(|| format!("{}: no image could be read", dir.display()))?;
    Ok((sum, used, (a.size, a.size)))
}

/// RepLKNet's picture: `log10(map + 1)` normalised, on a red–yellow–green scale.
fn log_map_image(values: &[f32], (h, w): (usize, usize)) -> image::RgbaImage {
    let m: Vec<f32> = values.iter().map(|v| (v + 1.0).log10()).collect();
    let max = m.iter().cloned().fold(0.0, f32::max);
    grid::map_image(
        &m,
        (h, w),
        (0.0, max.max(f32::MIN_POSITIVE)),
        Colormap::RdYlGn,
    )
}
