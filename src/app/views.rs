//! What the worker hands the tabs: plain data made from the engine's results, so that no tab
//! touches candle.
use crate::analysis::stats::FeatureMap;
use crate::analysis::trace::{CaptureLevel, CaptureObserver};
use crate::base::device::{device_name, dtype_name};
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

/// One image through the model.
pub struct RunView {
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
        dtype: dtype_name(engine.dtype).to_string(),
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
    let path = match src {
        ImageSource::Path(p) => Some(p.clone()),
        _ => None,
    };
    Ok(RunView {
        name: src.name(),
        path,
        notices: engine.card.notice_for(img).into_iter().collect(),
        original: thumbnail(img, 512),
        input: prepared.crop,
        top,
        maps,
        evidence,
        elapsed,
    })
}

fn thumbnail(img: &DynamicImage, max: u32) -> RgbaImage {
    if img.width() > max || img.height() > max {
        img.resize(max, max, image::imageops::FilterType::Triangle)
            .to_rgba8()
    } else {
        img.to_rgba8()
    }
}
