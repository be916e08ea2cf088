//! `faithfulness`: deletion and insertion curves of a method's maps (or of given maps), for
//! images or a tensor, or the methods ranked over a folder; `sanity`: the cascading
//! model-randomisation check of a method.
use super::attribute::with_settings;
use super::export::{image_or_tensor, read_input_tensor};
use super::{Context, ModelArgs};
use crate::analysis::attribution::{self, layer_by_name, Method};
use crate::analysis::faithfulness::{self, deletion_insertion, Curves, Map};
use crate::analysis::sanity;
use crate::io::engine::Engine;
use anyhow::{bail, Context as _, Result};
use candle_core::{DType, Tensor};
use clap::Args;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct FaithfulnessArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, conflicts_with_all = ["tensor", "images"])]
    image: Option<PathBuf>,
    /// An NCHW f32 tensor named `input` (preprocessing skipped).
    #[arg(long, conflicts_with = "images")]
    tensor: Option<PathBuf>,
    /// A folder: every method ranked by its mean deletion and insertion AUC.
    #[arg(long)]
    images: Option<PathBuf>,
    #[arg(long)]
    limit: Option<usize>,
    /// The method whose maps are measured (see `attribute`).
    #[arg(long, conflicts_with = "map")]
    method: Option<String>,
    #[arg(long)]
    layer: Option<String>,
    /// Maps to measure instead: a safetensors file with `map` (f32 `[N, h, w]`, any h, w).
    #[arg(long)]
    map: Option<PathBuf>,
    #[arg(long)]
    class: Option<usize>,
    /// Deletion and insertion steps n (n + 1 points each).
    #[arg(long, default_value_t = faithfulness::STEPS)]
    steps: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    images: Vec<Curves>,
}

pub fn run(ctx: &Context, a: &FaithfulnessArgs) -> Result<()> {
    let engine = ctx.engine(Some(&a.model), DType::F32)?;
    if let Some(dir) = &a.images {
        return rank_folder(&engine, dir, a);
    }
    let x = match (&a.image, &a.tensor) {
        (Some(img), None) => engine.prepare_file(img)?.tensor,
        (None, Some(t)) => read_input_tensor(t)?,
        _ => bail!("give --image IMG, --tensor T.safetensors or --images DIR"),
    };
    let maps = match (&a.method, &a.map) {
        (Some(m), None) => {
            let layer = a.layer.as_deref().unwrap_or("stages.0");
            method_maps(&engine, &x, m, layer, a.class)?
        }
        (None, Some(p)) => read_maps(p)?,
        _ => bail!("give --method M --layer NAME, or --map MAP.safetensors"),
    };
    let curves = measure(&engine, &x, &maps, a.class, a.steps)?;
    if a.json {
        println!("{}", serde_json::to_string(&Report { images: curves })?);
    } else {
        for (i, c) in curves.iter().enumerate() {
            println!(
                "image {i} (class {}): deletion AUC {:.4} (lower is more faithful), insertion AUC {:.4} (higher is)",
                c.class, c.deletion_auc, c.insertion_auc
            );
        }
    }
    Ok(())
}

/// Each image's map as host values with its size.
type HostMaps = Vec<(Vec<f32>, (usize, usize))>;

fn to_host(map: &Tensor) -> Result<HostMaps> {
    let (n, h, w) = map.dims3()?;
    let m = map.to_dtype(DType::F32)?;
    (0..n)
        .map(|i| Ok((m.get(i)?.flatten_all()?.to_vec1()?, (h, w))))
        .collect()
}

fn method_maps(
    engine: &Engine,
    x: &Tensor,
    method: &str,
    layer: &str,
    class: Option<usize>,
) -> Result<HostMaps> {
    let m = with_settings(Method::parse(method)?, 32, 16, attribution::IG_STEPS);
    let layer = layer_by_name(engine, layer)?;
    let attr = attribution::attribute(
        engine,
        x,
        m,
        layer,
        class,
        &mut crate::base::progress::Silent,
    )?;
    to_host(&attr.map)
}

fn read_maps(path: &Path) -> Result<HostMaps> {
    let bytes = crate::base::files::read_capped(path, 1 << 30, "a map file")?;
    let t = candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu)
        .with_context(|| format!("{}: cannot read safetensors", path.display()))?;
    let map = t
        .get("map")
        .with_context(|| format!("{}: no tensor named `map`", path.display()))?;
    if map.rank() != 3 {
        bail!(
            "{}: `map` must be [N, h, w], not {:?}",
            path.display(),
            map.dims()
        );
    }
    to_host(map)
}

fn measure(
    engine: &Engine,
    x: &Tensor,
    maps: &HostMaps,
    class: Option<usize>,
    steps: usize,
) -> Result<Vec<Curves>> {
    let views: Vec<Map> = maps
        .iter()
        .map(|(v, size)| Map {
            values: v,
            size: *size,
        })
        .collect();
    Ok(deletion_insertion(
        engine,
        x,
        &views,
        class,
        steps,
        &mut crate::base::progress::Silent,
    )?)
}

/// Every method's mean and spread of deletion and insertion AUC over a folder, one image at a
/// time (memory stays one image's).
fn rank_folder(engine: &Engine, dir: &Path, a: &FaithfulnessArgs) -> Result<()> {
    let files = crate::io::listing::list_images(dir, a.limit)?;
    let last = format!("stages.{}", engine.plan.stages.len() - 1);
    let layer = a.layer.clone().unwrap_or(last);
    let id = layer_by_name(engine, &layer)?;
    let methods = attribution::COMPARED
        .iter()
        .map(|m| Method::parse(m))
        .collect::<crate::Result<Vec<_>>>()?;
    let table = faithfulness::rank_methods(
        engine,
        &files,
        &methods,
        id,
        a.steps,
        &mut super::eval::Terminal,
    )?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "layer": layer, "methods": table })
        );
    } else {
        println!(
            "at {layer}, over {} images:",
            table.first().map_or(0, |t| t.images)
        );
        for t in &table {
            println!(
                "{:<10} deletion {:.4} ± {:.4}  insertion {:.4} ± {:.4}",
                t.method, t.deletion_mean, t.deletion_std, t.insertion_mean, t.insertion_std
            );
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct SanityArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, conflicts_with = "tensor")]
    image: Option<PathBuf>,
    #[arg(long)]
    tensor: Option<PathBuf>,
    #[arg(long)]
    method: String,
    #[arg(long)]
    layer: String,
    #[arg(long)]
    class: Option<usize>,
    /// `{"steps": [{"randomised", "spearman", "ssim"}]}`. `--seed` seeds the re-initialisation.
    #[arg(long)]
    json: bool,
}

pub fn run_sanity(ctx: &Context, a: &SanityArgs) -> Result<()> {
    let engine = ctx.engine(Some(&a.model), DType::F32)?;
    let x = image_or_tensor(&engine, a.image.as_deref(), a.tensor.as_deref())?;
    let m = with_settings(Method::parse(&a.method)?, 32, 16, attribution::IG_STEPS);
    sanity::check_method(m)?;
    let layer = layer_by_name(&engine, &a.layer)?;
    let steps = sanity::cascade(
        &engine,
        &x,
        (m, layer),
        a.class,
        a.model.seed,
        &mut crate::base::progress::Silent,
    )?;
    if a.json {
        println!("{}", serde_json::json!({ "steps": steps }));
    } else {
        for s in &steps {
            println!(
                "{:<10} spearman {:+.3}  ssim {:+.3}",
                s.randomised, s.spearman, s.ssim
            );
        }
    }
    Ok(())
}
