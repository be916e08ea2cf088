//! What the worker hands the tabs: plain data made from the engine's results, so that no tab
//! touches candle.
use crate::analysis::stats::FeatureMap;
use crate::analysis::trace::{CaptureLevel, CaptureObserver};
use crate::base::device::device_name;
use crate::io::engine::{Engine, ModelSpec, Prediction};
use crate::io::preprocess;
use crate::model::flops::LayerInfo;
use crate::model::layer_id::LayerId;
use image::{DynamicImage, RgbImage, RgbaImage};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An image as it reached the app.
#[derive(Clone)]
pub enum ImageSource {
    Path(PathBuf),
    /// Dropped bytes (web-style drops and pasted files).
    Bytes {
        name: String,
        bytes: Arc<[u8]>,
    },
    /// Pixels from the clipboard.
    Pixels {
        name: String,
        image: Arc<DynamicImage>,
    },
}

impl ImageSource {
    pub fn name(&self) -> String {
        match self {
            ImageSource::Path(p) => crate::base::text::file_label(p),
            ImageSource::Bytes { name, .. } | ImageSource::Pixels { name, .. } => name.clone(),
        }
    }

    pub fn decode(&self) -> crate::Result<DynamicImage> {
        match self {
            ImageSource::Path(p) => preprocess::load_image(p),
            ImageSource::Bytes { name, bytes } => preprocess::decode_image(bytes, name),
            ImageSource::Pixels { image, .. } => Ok((**image).clone()),
        }
    }
}

/// The model as the tabs see it.
pub struct ModelView {
    pub spec: ModelSpec,
    pub card: crate::io::card::ModelCard,
    pub plan: crate::model::Plan,
    pub num_params: usize,
    pub input_size: (usize, usize),
    pub device: String,
    pub dtype: String,
    pub is_random: bool,
    /// The layer list at the model's input size, batch 1.
    pub layers: Vec<LayerInfo>,
    /// V1 layer scale per block: `(stage, block, gamma)`.
    pub gammas: Vec<(usize, usize, Vec<f32>)>,
    /// V2 GRN per block: `(stage, block, gamma, beta)`.
    pub grn: Vec<(usize, usize, Vec<f32>, Vec<f32>)>,
}

/// A map with a side under this shows as a few flat blocks of colour (a two-colour gradient
/// once smoothed): too coarse to say where in the image something is.
pub const MIN_VISIBLE_SIDE: usize = 7;

impl ModelView {
    /// The layer a map is best explained at by default, and why ([`explain_layer`]).
    pub fn explain_layer(&self) -> (LayerId, Option<String>) {
        explain_layer(&self.layers, self.plan.depths().len())
    }
}

/// The deepest stage output whose map is at least [`MIN_VISIBLE_SIDE`] on each side in
/// `layers` (else the first stage), and why, when that is not the last of the `stages`.
pub fn explain_layer(layers: &[LayerInfo], stages: usize) -> (LayerId, Option<String>) {
    let shape = |id: LayerId| {
        layers
            .iter()
            .find(|l| l.id == id)
            .filter(|l| l.out_shape.len() == 4)
            .map(|l| (l.out_shape[2], l.out_shape[3]))
    };
    let last = LayerId::Stage(stages.saturating_sub(1));
    let pick = (0..stages)
        .rev()
        .map(LayerId::Stage)
        .find(|&id| shape(id).is_some_and(|(h, w)| h.min(w) >= MIN_VISIBLE_SIDE))
        .unwrap_or(LayerId::Stage(0));
    if pick == last {
        return (pick, None);
    }
    let size = |id| shape(id).map_or("?".into(), |(h, w)| format!("{h}×{w}"));
    let reason = format!(
        "{pick} by default: the deepest layer whose map is at least {MIN_VISIBLE_SIDE}×{MIN_VISIBLE_SIDE} ({pick} is {}; {last} is only {} at this model's input size)",
        size(pick),
        size(last)
    );
    (pick, Some(reason))
}

/// The first picture of an image, where the last stage is too coarse to show where the
/// evidence lies: Grad-CAM for the top class at [`explain_layer`]'s layer.
pub struct Explained {
    pub class: usize,
    pub layer: LayerId,
    pub reason: String,
    pub map: Arc<FeatureMap>,
}

/// One image through the model.
pub struct RunView {
    /// Unique among the runs this process made: names the textures drawn from this run.
    pub id: u64,
    pub name: String,
    /// The file it came from (not for pasted or dropped pixels).
    pub path: Option<std::path::PathBuf>,
    /// Cautions: an image far from what the model was trained on.
    pub notices: Vec<String>,
    /// The image as loaded (downscaled for display).
    pub original: RgbaImage,
    /// What the network saw: the resized, centre-cropped input.
    pub input: RgbImage,
    pub top: Vec<Prediction>,
    /// Stem, stage and block outputs, in forward order.
    pub maps: Vec<(LayerId, Arc<FeatureMap>)>,
    /// Class evidence over the last stage's positions for each of `top`.
    pub evidence: Vec<(usize, Arc<FeatureMap>)>,
    /// The top class explained at a finer layer, when the last stage's map is too coarse.
    pub explained: Option<Explained>,
    /// The forward with its outputs captured.
    pub elapsed: Duration,
}

/// What tabs other than Folder know of its folder run: where it ran, and the layers whose
/// channels have top images.
#[derive(Clone, Debug)]
pub struct FolderRunInfo {
    pub root: PathBuf,
    pub top_layers: Vec<LayerId>,
    /// Counts the folder runs, so that results made from an older run can tell.
    pub serial: u64,
}

pub fn model_view(engine: &Engine, spec: ModelSpec) -> anyhow::Result<ModelView> {
    Ok(ModelView {
        spec,
        card: engine.card.clone(),
        plan: engine.plan.clone(),
        num_params: engine.num_params,
        input_size: engine.preprocess.input_size,
        device: device_name(&engine.device),
        dtype: engine.precision(),
        is_random: engine.is_random(),
        layers: engine.layers(1),
        gammas: engine.model.gammas()?,
        grn: engine.model.grn_params()?,
    })
}

/// How many classes the prediction list and the evidence maps cover.
pub const TOP_K: usize = 10;

pub fn run_image(
    engine: &Engine,
    src: &ImageSource,
    img: &DynamicImage,
) -> anyhow::Result<RunView> {
    let prepared = preprocess::prepare(img, &engine.preprocess, &engine.device)
        .map_err(|e| e.about_image(&src.name()))?;
    let start = Instant::now();
    let mut capture = CaptureObserver::new(CaptureLevel::Blocks);
    let logits = engine.forward_observed(&prepared.tensor, &mut capture)?;
    let top = engine.top_k(&logits, TOP_K)?.remove(0);
    let elapsed = start.elapsed();
    let mut maps = Vec::new();
    let mut last = None;
    for (id, t) in &capture.outputs {
        if id.is_spatial() {
            maps.push((*id, Arc::new(FeatureMap::from_nhwc(t, 0)?)));
            if matches!(id, LayerId::Stage(_)) {
                last = Some(t.clone());
            }
        }
    }
    let mut evidence = Vec::new();
    if let Some(last) = last {
        for p in &top {
            let m = engine.model.class_evidence(&last, p.index)?.unsqueeze(3)?;
            evidence.push((p.index, Arc::new(FeatureMap::from_nhwc(&m, 0)?)));
        }
    }
    let explained = explain_top(engine, &prepared.tensor, &top)?;
    let path = match src {
        ImageSource::Path(p) => Some(p.clone()),
        _ => None,
    };
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    Ok(RunView {
        id: RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        name: src.name(),
        path,
        notices: engine.card.notice_for(img).into_iter().collect(),
        original: thumbnail(img, 512),
        input: prepared.crop,
        top,
        maps,
        evidence,
        explained,
        elapsed,
    })
}

/// Grad-CAM of the top class at [`explain_layer`]'s layer, unless that is the last stage (whose
/// exact evidence map is then the better first picture).
fn explain_top(
    engine: &Engine,
    x: &candle_core::Tensor,
    top: &[crate::io::engine::Prediction],
) -> anyhow::Result<Option<Explained>> {
    let (layer, reason) = explain_layer(&engine.layers(1), engine.plan.stages.len());
    let (Some(reason), Some(first)) = (reason, top.first()) else {
        return Ok(None);
    };
    let a = crate::analysis::attribution::grad_cam(engine, x, layer, Some(first.index), false)?;
    let map = Arc::new(FeatureMap::from_nhwc(&a.map.unsqueeze(3)?, 0)?);
    Ok(Some(Explained {
        class: first.index,
        layer,
        reason,
        map,
    }))
}

impl RunView {
    /// The key the input's texture is cached under.
    pub fn texture_key(&self) -> String {
        format!("run:{}:input", self.id)
    }
}

fn thumbnail(img: &DynamicImage, max: u32) -> RgbaImage {
    if img.width() > max || img.height() > max {
        img.resize(max, max, image::imageops::FilterType::Triangle)
            .to_rgba8()
    } else {
        img.to_rgba8()
    }
}
