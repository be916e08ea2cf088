//! A model over a folder, streaming: images are decoded a batch at a time (in parallel), run,
//! and reduced on the spot to what the analyses keep (each image's top-5, per-channel bests,
//! collapse sums), so memory does not grow with the folder. Images that fail to decode are
//! skipped and listed; progress and cancel between batches.
use crate::analysis::collapse::CollapseAccumulator;
use crate::analysis::evaluation::{Evaluation, ImageResult};
use crate::analysis::top_images::{LayerFilter, TopImages};
use crate::base::error::{Error, Result};
use crate::base::progress::Progress;
use crate::io::engine::Engine;
use crate::model::layer_id::LayerId;
use crate::model::observer::Observer;
use candle_core::Tensor;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// What to compute besides the predictions.
pub struct FolderOptions {
    pub limit: Option<usize>,
    pub batch: usize,
    /// Top images per channel: how many, and of which layers.
    pub top: Option<(usize, LayerFilter)>,
    pub collapse: bool,
}

impl Default for FolderOptions {
    fn default() -> Self {
        Self {
            limit: None,
            batch: 16,
            top: None,
            collapse: false,
        }
    }
}

/// Everything a folder run keeps.
pub struct FolderRun {
    pub root: PathBuf,
    pub eval: Evaluation,
    pub skipped: Vec<(PathBuf, String)>,
    pub top: Option<TopImages>,
    pub collapse: Option<CollapseAccumulator>,
    /// Said once about the labels (where they came from, or why there are none).
    pub labels_note: String,
}

/// The observers a run needs, as one.
struct Watchers<'a> {
    top: Option<&'a mut TopImages>,
    collapse: Option<&'a mut CollapseAccumulator>,
}

impl Observer for Watchers<'_> {
    fn layer(&mut self, id: LayerId, out: &Tensor) -> candle_core::Result<()> {
        if let Some(t) = self.top.as_deref_mut() {
            t.layer(id, out)?;
        }
        if let Some(c) = self.collapse.as_deref_mut() {
            c.layer(id, out)?;
        }
        Ok(())
    }
    fn sees_outputs(&self) -> bool {
        self.top.is_some() || self.collapse.is_some()
    }
}

/// Runs `engine` over the images below `root`.
pub fn run_folder(
    engine: &Engine,
    root: &Path,
    opts: FolderOptions,
    progress: &mut dyn Progress,
) -> Result<FolderRun> {
    let paths = crate::io::listing::list_images(root, opts.limit)?;
    let labels = crate::io::listing::labels_from_layout(root, &paths, &engine.labels)?;
    let labelled = labels.iter().filter(|l| l.is_some()).count();
    let labels_note = match labelled {
        0 => "no labels in the folder's layout (class sub-folders or <label>_<n> names): predictions only".to_string(),
        n => format!("{n} of {} images labelled by the folder's layout", paths.len()),
    };
    let mut run = FolderRun {
        root: root.to_path_buf(),
        eval: Evaluation::default(),
        skipped: Vec::new(),
        top: opts.top.map(|(k, wants)| TopImages::new(k, wants)),
        collapse: opts.collapse.then(CollapseAccumulator::default),
        labels_note,
    };
    let total = paths.len();
    let batch = opts.batch.max(1);
    for (b, chunk) in paths.chunks(batch).enumerate() {
        progress.check("folder run")?;
        let chunk_labels = &labels[b * batch..b * batch + chunk.len()];
        run_batch(engine, chunk, chunk_labels, &mut run)?;
        progress.update((b * batch + chunk.len()).min(total), total, "images");
    }
    Ok(run)
}

/// Decodes a batch in parallel, runs the ones that decode, and takes the results in.
fn run_batch(
    engine: &Engine,
    paths: &[PathBuf],
    labels: &[Option<usize>],
    run: &mut FolderRun,
) -> Result<()> {
    let decoded: Vec<Result<Tensor>> = paths
        .par_iter()
        .map(|p| engine.prepare_file(p).map(|prep| prep.tensor))
        .collect();
    let mut ok = Vec::new();
    let mut xs = Vec::new();
    for ((p, l), d) in paths.iter().zip(labels).zip(decoded) {
        match d {
            Ok(x) => {
                ok.push((p.clone(), *l));
                xs.push(x);
            }
            Err(e) => run.skipped.push((p.clone(), e.to_string())),
        }
    }
    if xs.is_empty() {
        return Ok(());
    }
    let x = Tensor::cat(&xs, 0)?;
    if let Some(t) = run.top.as_mut() {
        t.start_batch(run.eval.images.len());
    }
    let mut watchers = Watchers {
        top: run.top.as_mut(),
        collapse: run.collapse.as_mut(),
    };
    let logits = engine.forward_observed(&x, &mut watchers)?;
    if let Some(c) = run.collapse.as_mut() {
        c.images_done(ok.len());
    }
    let top = engine.top_k(&logits, 5)?;
    for ((path, label), preds) in ok.into_iter().zip(top) {
        run.eval.push(ImageResult {
            path,
            label,
            top5: preds.iter().map(|p| (p.index, p.prob)).collect(),
        });
    }
    Ok(())
}

/// Feature collapse of a ready `[N, 3, H, W]` batch (`collapse --tensor`).
pub fn collapse_of_tensor(engine: &Engine, x: &Tensor) -> Result<CollapseAccumulator> {
    let mut acc = CollapseAccumulator::default();
    engine.forward_observed(x, &mut acc)?;
    acc.images_done(x.dim(0)?);
    if acc.finish().is_empty() {
        return Err(Error::Input(format!(
            "{} has no block `mlp.act` or stage output to measure",
            engine.plan.name
        )));
    }
    Ok(acc)
}
