//! The folder jobs, run on the worker: a folder run (predictions, scores, top images of every
//! stage and block, feature collapse), the images of a confusion cell with their evidence maps,
//! a channel's top-image patches, and another model's collapse curve on the same folder. The
//! run stays on the worker ([`KeptRun`]) for the jobs that follow it.
use super::worker::WorkerCtx;
use crate::analysis::collapse::LayerCollapse;
use crate::analysis::colormap::Colormap;
use crate::analysis::evaluation::{Evaluation, Scores};
use crate::analysis::folder_run::{run_folder, FolderOptions, FolderRun};
use crate::analysis::top_images::patch_rect;
use crate::analysis::top_images::LayerFilter;
use crate::base::device::{parse_device, parse_dtype};
use crate::base::progress::Progress;
use crate::io::engine::{Engine, ModelSpec};
use crate::model::layer_id::LayerId;
use image::{RgbImage, RgbaImage};
use std::path::PathBuf;

/// What the folder jobs are called in the status bar and in errors.
pub const JOB: &str = "The folder run";

/// The last folder run of the current model, kept on the worker, with its image limit.
pub struct KeptRun {
    run: FolderRun,
    limit: Option<usize>,
}

fn kept_run(w: &WorkerCtx) -> anyhow::Result<&KeptRun> {
    w.kept::<KeptRun>()
        .ok_or_else(|| anyhow::anyhow!("run a folder first"))
}

/// Runs the current model over a folder and keeps the run on the worker.
pub fn folder_job(
    w: &mut WorkerCtx,
    dir: PathBuf,
    limit: Option<usize>,
    progress: &mut dyn Progress,
) -> anyhow::Result<FolderView> {
    // The old run goes first: two runs of a large folder need not fit at once.
    w.take_kept::<KeptRun>();
    let engine = w.engine()?;
    let model = engine.source.to_string();
    let mut run = None;
    let view = folder(engine, model, dir, limit, &mut run, progress)?;
    if let Some(run) = run {
        w.keep(KeptRun { run, limit });
    }
    Ok(view)
}

/// The images at `indices` of the kept run, with their evidence maps.
pub fn images_job(w: &WorkerCtx, indices: &[usize]) -> anyhow::Result<Vec<FolderImage>> {
    Ok(images(w.engine()?, &kept_run(w)?.run, indices)?)
}

/// The patches of a channel's top images in the kept run.
pub fn patches_job(w: &WorkerCtx, layer: LayerId, channel: usize) -> anyhow::Result<TopPatches> {
    Ok(patches(w.engine()?, &kept_run(w)?.run, layer, channel)?)
}

/// Another model's collapse curve over the kept run's images: `(model, curve)`.
pub fn other_collapse_job(
    w: &WorkerCtx,
    (spec, device, dtype): (ModelSpec, String, String),
    progress: &mut dyn Progress,
) -> anyhow::Result<(String, Vec<LayerCollapse>)> {
    let kept = kept_run(w)?;
    let other = Engine::build(&spec, &parse_device(&device)?, parse_dtype(&dtype)?)?;
    let curve = other_collapse(&other, &kept.run.root, kept.limit, progress)?;
    Ok((spec.label(), curve))
}

/// Top images kept per channel.
pub const TOP_K: usize = 9;
/// Images of a cell (or of the mistakes) shown with their evidence maps at a time.
pub const PAGE: usize = 12;

/// A folder's results as the Folder tab sees them.
pub struct FolderView {
    pub root: PathBuf,
    pub model: String,
    pub labels: Vec<String>,
    pub eval: Evaluation,
    pub scores: Option<Scores>,
    pub skipped: Vec<(PathBuf, String)>,
    pub labels_note: String,
    pub collapse: Vec<LayerCollapse>,
    /// The layers whose channels have top images.
    pub top_layers: Vec<LayerId>,
}

/// One image of a cell: what the network saw, its evidence for the predicted class, its top-5.
pub struct FolderImage {
    pub index: usize,
    pub input: RgbImage,
    pub evidence: RgbaImage,
    pub top5: Vec<(String, f32)>,
}

/// A channel's best images: the patch around each peak, as the network saw it.
pub struct TopPatches {
    pub layer: LayerId,
    pub channel: usize,
    pub patches: Vec<(RgbImage, f32, PathBuf)>,
}

fn watched(id: LayerId) -> bool {
    matches!(id, LayerId::Stem | LayerId::Stage(_) | LayerId::Block(..))
}

/// Runs the folder and keeps the run (for patches and cells) in `keep`.
fn folder(
    engine: &Engine,
    model: String,
    root: PathBuf,
    limit: Option<usize>,
    keep: &mut Option<FolderRun>,
    progress: &mut dyn Progress,
) -> crate::Result<FolderView> {
    let filter: LayerFilter = Box::new(watched);
    let opts = FolderOptions {
        limit,
        top: Some((TOP_K, filter)),
        collapse: true,
        ..Default::default()
    };
    let run = run_folder(engine, &root, opts, progress)?;
    let view = FolderView {
        root,
        model,
        labels: engine.labels.clone(),
        scores: run.eval.scores(&engine.labels),
        eval: run.eval.clone(),
        skipped: run.skipped.clone(),
        labels_note: run.labels_note.clone(),
        collapse: run
            .collapse
            .as_ref()
            .map(|c| c.finish())
            .unwrap_or_default(),
        top_layers: run.top.as_ref().map(|t| t.layers()).unwrap_or_default(),
    };
    *keep = Some(run);
    Ok(view)
}

/// Another model's collapse curve over the same folder.
fn other_collapse(
    other: &Engine,
    root: &std::path::Path,
    limit: Option<usize>,
    progress: &mut dyn Progress,
) -> crate::Result<Vec<LayerCollapse>> {
    let opts = FolderOptions {
        limit,
        collapse: true,
        ..Default::default()
    };
    let run = run_folder(other, root, opts, progress)?;
    Ok(run.collapse.map(|c| c.finish()).unwrap_or_default())
}

/// The images at `indices` of the kept run, each with its evidence map for its top class.
fn images(engine: &Engine, run: &FolderRun, indices: &[usize]) -> crate::Result<Vec<FolderImage>> {
    let mut out = Vec::new();
    for &i in indices.iter().take(PAGE) {
        let Some(r) = run.eval.images.get(i) else {
            continue;
        };
        let img = crate::io::preprocess::load_image(&r.path)?;
        let prepared = crate::io::preprocess::prepare(&img, &engine.preprocess, &engine.device)?;
        let ev = crate::analysis::attribution::evidence(engine, &prepared.tensor, None)?;
        let (h, w) = (ev.map.dim(1)?, ev.map.dim(2)?);
        let map: Vec<f32> = ev.map.flatten_all()?.to_vec1()?;
        let m = map.iter().fold(0f32, |a, v| a.max(v.abs())).max(1e-12);
        let colours = crate::analysis::grid::map_image(&map, (h, w), (-m, m), Colormap::Diverging);
        out.push(FolderImage {
            index: i,
            evidence: crate::analysis::grid::overlay(&prepared.crop, &colours, 0.6),
            input: prepared.crop,
            top5: r
                .top5
                .iter()
                .map(|&(c, p)| (engine.labels.get(c).cloned().unwrap_or_default(), p))
                .collect(),
        });
    }
    Ok(out)
}

/// The patches around the peaks of a channel's top images.
fn patches(
    engine: &Engine,
    run: &FolderRun,
    layer: LayerId,
    channel: usize,
) -> crate::Result<TopPatches> {
    let top = run
        .top
        .as_ref()
        .and_then(|t| t.channel(layer, channel))
        .ok_or_else(|| {
            crate::Error::Input(format!("no top images for {layer} channel {channel}"))
        })?;
    let mut patches = Vec::new();
    for h in &top.hits {
        let path = run.eval.images[h.image].path.clone();
        let img = crate::io::preprocess::load_image(&path)?;
        let seen = crate::io::preprocess::resize_and_crop(&img, &engine.preprocess)?;
        let (t, l, side) = patch_rect(engine.preprocess.input_size, top.map, (h.y, h.x));
        let p = image::imageops::crop_imm(&seen, l as u32, t as u32, side as u32, side as u32)
            .to_image();
        patches.push((p, h.score, path));
    }
    Ok(TopPatches {
        layer,
        channel,
        patches,
    })
}
