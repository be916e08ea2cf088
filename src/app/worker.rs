//! The inference thread: the app sends jobs, the worker owns the engine and sends back plain
//! data for the panels to draw. The UI thread never waits on it.
use crate::device::{device_name, dtype_name, parse_device, parse_dtype};
use crate::engine::{Engine, Prediction};
use crate::flops::LayerInfo;
use crate::model::config::Version;
use crate::preprocess;
use crate::stats::FeatureMap;
use crate::trace::{Both, CaptureLevel, CaptureObserver, LayerId, TimingObserver};
use candle_core::{DType, Tensor};
use image::{DynamicImage, RgbImage, RgbaImage};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What model to build.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ModelSpec {
    Weights(PathBuf),
    /// A named variant with seeded random weights (for shapes, MACs and timing).
    Variant {
        name: String,
        classes: usize,
        seed: u64,
    },
}

impl std::fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelSpec::Weights(p) => write!(f, "{}", p.display()),
            ModelSpec::Variant { name, .. } => write!(f, "{name} (random weights)"),
        }
    }
}

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
            ImageSource::Path(p) => p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.display().to_string()),
            ImageSource::Bytes { name, .. } | ImageSource::Pixels { name, .. } => name.clone(),
        }
    }

    fn decode(&self) -> crate::Result<DynamicImage> {
        match self {
            ImageSource::Path(p) => preprocess::load_image(p),
            ImageSource::Bytes { name, bytes } => preprocess::decode_image(bytes, name),
            ImageSource::Pixels { image, .. } => Ok((**image).clone()),
        }
    }
}

pub enum Job {
    Load {
        spec: ModelSpec,
        device: String,
        dtype: String,
    },
    Classify(ImageSource),
    /// Time `runs` forwards of the current input, layer by layer.
    Profile {
        runs: usize,
    },
}

impl Job {
    pub fn kind(&self) -> JobKind {
        match self {
            Job::Load { .. } => JobKind::Load,
            Job::Classify(_) => JobKind::Classify,
            Job::Profile { .. } => JobKind::Profile,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    Load,
    Classify,
    Profile,
}

/// The model as the panels see it.
pub struct ModelView {
    pub spec: ModelSpec,
    pub config: crate::model::Config,
    pub summary: String,
    pub variant: Option<String>,
    pub version: Version,
    pub depths: Vec<usize>,
    pub dims: Vec<usize>,
    pub num_classes: usize,
    pub num_params: usize,
    pub labels: Vec<String>,
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
    pub source: ImageSource,
    pub name: String,
    /// The image as loaded (downscaled for display).
    pub original: RgbaImage,
    /// What the network saw: the resized, centre-cropped input.
    pub input: RgbImage,
    pub top: Vec<Prediction>,
    /// Stem, stage and block outputs, in forward order.
    pub maps: Vec<(LayerId, Arc<FeatureMap>)>,
    /// Class evidence over the last stage's positions for each of `top`.
    pub evidence: Vec<(usize, Arc<FeatureMap>)>,
    pub elapsed: Duration,
}

pub struct ProfileView {
    pub runs: usize,
    /// Median time per layer (containers included).
    pub times: Vec<(LayerId, Duration)>,
    /// Median time of a whole forward with the timing observer on.
    pub total: Duration,
    /// Median of the same forward with no observer (what the observer costs shows as the gap).
    pub plain: Duration,
    pub input_size: (usize, usize),
}

pub enum Reply {
    Loaded(Box<ModelView>),
    Ran(Box<RunView>),
    Profiled(ProfileView),
    Failed { kind: JobKind, message: String },
}

/// The app's end of the worker.
pub struct Worker {
    jobs: Sender<Job>,
    replies: Receiver<Reply>,
    queued: Arc<AtomicUsize>,
}

impl Worker {
    /// Starts the thread; `wake` is called after every reply (the app passes egui's
    /// `request_repaint`).
    pub fn spawn(wake: impl Fn() + Send + 'static) -> Self {
        let (jobs, rx) = channel::<Job>();
        let (tx, replies) = channel::<Reply>();
        let queued = Arc::new(AtomicUsize::new(0));
        let q = queued.clone();
        std::thread::Builder::new()
            .name("inference".into())
            .spawn(move || {
                let mut state = WorkerState::default();
                let mut queue = VecDeque::new();
                loop {
                    if queue.is_empty() {
                        match rx.recv() {
                            Ok(j) => queue.push_back(j),
                            Err(_) => break,
                        }
                    }
                    queue.extend(rx.try_iter());
                    let Some(job) = queue.pop_front() else {
                        continue;
                    };
                    // Of images queued back to back (many dropped at once) only the last matters.
                    if matches!(job, Job::Classify(_))
                        && matches!(queue.front(), Some(Job::Classify(_)))
                    {
                        q.fetch_sub(1, Ordering::SeqCst);
                        continue;
                    }
                    // A bug in a job must not take the worker (and every later job) with it.
                    let kind = job.kind();
                    let replies = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        state.handle(job)
                    }))
                    .unwrap_or_else(|p| {
                        let what = p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        vec![Reply::Failed {
                            kind,
                            message: format!("internal error: {what}"),
                        }]
                    });
                    for reply in replies {
                        let _ = tx.send(reply);
                    }
                    q.fetch_sub(1, Ordering::SeqCst);
                    wake();
                }
            })
            .expect("spawning the inference thread");
        Self {
            jobs,
            replies,
            queued,
        }
    }

    pub fn send(&self, job: Job) {
        self.queued.fetch_add(1, Ordering::SeqCst);
        if self.jobs.send(job).is_err() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Replies that have arrived, without waiting.
    pub fn poll(&self) -> Vec<Reply> {
        self.replies.try_iter().collect()
    }

    /// Jobs sent and not finished.
    pub fn pending(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }
}

#[derive(Default)]
struct WorkerState {
    engine: Option<Engine>,
    /// The last image's network input, for re-runs and profiling.
    image: Option<(ImageSource, DynamicImage)>,
}

impl WorkerState {
    fn handle(&mut self, job: Job) -> Vec<Reply> {
        let (kind, result) = match job {
            Job::Load {
                spec,
                device,
                dtype,
            } => (JobKind::Load, self.load(spec, &device, &dtype)),
            Job::Classify(src) => (JobKind::Classify, self.classify(src).map(|r| vec![r])),
            Job::Profile { runs } => (JobKind::Profile, self.profile(runs).map(|r| vec![r])),
        };
        result.unwrap_or_else(|e| {
            vec![Reply::Failed {
                kind,
                message: format!("{e:#}"),
            }]
        })
    }

    /// Loads a model and, if an image is open, runs it through the new model too.
    fn load(&mut self, spec: ModelSpec, device: &str, dtype: &str) -> anyhow::Result<Vec<Reply>> {
        let dev = parse_device(device)?;
        let dt = parse_dtype(dtype)?;
        let engine = match &spec {
            ModelSpec::Weights(p) => Engine::load(p, &dev, dt)?,
            ModelSpec::Variant {
                name,
                classes,
                seed,
            } => Engine::random(name, *classes, *seed, &dev, dt)?,
        };
        let view = model_view(&engine, spec)?;
        // Only a model that loaded replaces the one in use.
        self.engine = Some(engine);
        let mut replies = vec![Reply::Loaded(Box::new(view))];
        if let (Some(engine), Some((src, img))) = (&self.engine, &self.image) {
            replies.push(match run_image(engine, src, img) {
                Ok(v) => Reply::Ran(Box::new(v)),
                Err(e) => Reply::Failed {
                    kind: JobKind::Classify,
                    message: format!("{e:#}"),
                },
            });
        }
        Ok(replies)
    }

    fn classify(&mut self, src: ImageSource) -> anyhow::Result<Reply> {
        let engine = self
            .engine
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no model loaded"))?;
        let img = src.decode()?;
        let view = run_image(engine, &src, &img)?;
        self.image = Some((src, img));
        Ok(Reply::Ran(Box::new(view)))
    }

    fn profile(&mut self, runs: usize) -> anyhow::Result<Reply> {
        let engine = self
            .engine
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no model loaded"))?;
        let x = match &self.image {
            Some((_, img)) => preprocess::prepare(img, &engine.preprocess, &engine.device)?.tensor,
            None => {
                let (h, w) = engine.preprocess.input_size;
                Tensor::zeros((1, 3, h, w), DType::F32, &engine.device)?
            }
        };
        let runs = runs.clamp(1, 1000);
        // One warm-up so that first-touch allocation and kernel compilation stay out.
        engine.forward(&x)?;
        let measured = crate::profile::time_layers(engine, &x, runs, true)?;
        Ok(Reply::Profiled(ProfileView {
            runs,
            times: measured.times,
            total: measured.total,
            plain: measured.plain.unwrap_or_default(),
            input_size: (x.dim(2)?, x.dim(3)?),
        }))
    }
}

pub fn model_view(engine: &Engine, spec: ModelSpec) -> anyhow::Result<ModelView> {
    let c = &engine.config;
    Ok(ModelView {
        spec,
        config: c.clone(),
        summary: engine.describe(),
        variant: c.variant_name().map(str::to_string),
        version: c.version,
        depths: c.depths.clone(),
        dims: c.dims.clone(),
        num_classes: c.num_classes,
        num_params: engine.num_params,
        labels: engine.labels.clone(),
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
    let prepared = preprocess::prepare(img, &engine.preprocess, &engine.device)?;
    let start = Instant::now();
    let mut capture = CaptureObserver::new(CaptureLevel::Blocks);
    let mut timing = TimingObserver::new(&engine.device);
    let logits = engine.forward_observed(&prepared.tensor, &mut Both(&mut timing, &mut capture))?;
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
    Ok(RunView {
        source: src.clone(),
        name: src.name(),
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
