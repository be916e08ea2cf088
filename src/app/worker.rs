//! The one background thread: the app sends jobs (loads, runs, profiles, weights scans,
//! downloads, file saves), the worker owns the engine and sends back plain data for the panels
//! to draw, with progress for long jobs and a cancel flag they check. The UI thread never waits
//! on it.
use super::folder_jobs::{FolderImage, FolderView, TopPatches};
use super::views::{
    model_view, run_image, AttributionView, ErfView, ImageSource, ModelView, ProfileView, RunView,
};
use crate::analysis::stats::FeatureMap;
use crate::base::device::{parse_device, parse_dtype};
use crate::base::progress::Progress;
use crate::io::engine::{Engine, ModelSpec};
use crate::io::preprocess;
use crate::model::layer_id::LayerId;
use candle_core::{DType, Tensor};
use image::{DynamicImage, RgbaImage};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;

/// What a save job writes.
pub enum SaveContent {
    Png(RgbaImage),
    Text(String),
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
    /// Say what each checkpoint in these folders is.
    ScanWeights(Vec<PathBuf>),
    /// Fetch a Hugging Face repo into `weights/`.
    #[cfg(feature = "hub")]
    Download(String),
    Save {
        path: PathBuf,
        content: SaveContent,
    },
    /// Time every roadmap step (random weights, batch 1) on a device.
    TimeRoadmap {
        device: String,
        iters: usize,
    },
    /// A method's map at a layer for the current image.
    Attribute {
        method: crate::analysis::attribution::Method,
        layer: LayerId,
        class: Option<usize>,
    },
    /// Every stage's ERF over the current image or a folder, for these weights or random ones.
    Erf {
        folder: Option<PathBuf>,
        limit: usize,
        random: bool,
    },
    /// The last stage's ERF of roadmap steps 6–10 (kernel 3 to 11), random weights, 224×224.
    RoadmapErf,
    /// The model over a folder of images.
    Folder {
        dir: PathBuf,
        limit: Option<usize>,
    },
    /// These images of the last folder run, with their evidence maps.
    FolderImages(Vec<usize>),
    /// The patches of a channel's top images in the last folder run.
    TopPatches {
        layer: LayerId,
        channel: usize,
    },
    /// Another model's feature collapse over the last folder run's images.
    OtherCollapse {
        spec: ModelSpec,
        device: String,
        dtype: String,
    },
    /// The right-hand side of the Compare tab: another model on the current image, or the
    /// current model on another image.
    Compare {
        other: CompareWith,
        device: String,
        dtype: String,
    },
}

/// What the Compare tab sets beside the current model and image.
#[derive(Clone)]
pub enum CompareWith {
    Model(ModelSpec),
    Image(ImageSource),
}

impl Job {
    pub fn kind(&self) -> JobKind {
        match self {
            Job::Load { .. } => JobKind::Load,
            Job::Classify(_) => JobKind::Classify,
            Job::Profile { .. } => JobKind::Profile,
            Job::ScanWeights(_) => JobKind::ScanWeights,
            #[cfg(feature = "hub")]
            Job::Download(_) => JobKind::Download,
            Job::Save { .. } => JobKind::Save,
            Job::TimeRoadmap { .. } | Job::RoadmapErf => JobKind::Roadmap,
            Job::Attribute { .. } => JobKind::Attribute,
            Job::Erf { .. } => JobKind::Erf,
            Job::Folder { .. }
            | Job::FolderImages(_)
            | Job::TopPatches { .. }
            | Job::OtherCollapse { .. } => JobKind::Folder,
            Job::Compare { .. } => JobKind::Compare,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    Load,
    Classify,
    Profile,
    ScanWeights,
    Download,
    Save,
    Roadmap,
    Attribute,
    Erf,
    Folder,
    Compare,
}

/// A checkpoint found in `weights/`, with what the loader made of it.
#[derive(Clone, Debug)]
pub struct WeightsEntry {
    pub path: PathBuf,
    pub summary: Result<String, String>,
}

pub enum Reply {
    Loaded(Box<ModelView>),
    Ran(Box<RunView>),
    Profiled(ProfileView),
    Weights(Vec<WeightsEntry>),
    /// The folder a download landed in, and what the user should know about it.
    Downloaded {
        dir: PathBuf,
        notes: Vec<String>,
    },
    Saved(PathBuf),
    /// Median ms of each roadmap step, in order.
    RoadmapTimes(Vec<f64>),
    Attributed(Box<AttributionView>),
    Erf(Box<ErfView>),
    /// `(step name, ERF)` for roadmap steps 6–10.
    RoadmapErf(Vec<(String, crate::analysis::attribution::ErfSummary)>),
    Folder(Box<FolderView>),
    FolderImages(Vec<FolderImage>),
    TopPatches(Box<TopPatches>),
    /// `(model, curve)`: another model's collapse over the same folder.
    OtherCollapse(String, Vec<crate::analysis::collapse::LayerCollapse>),
    /// The other side of the comparison: its model and its run.
    Compared(Box<(ModelView, RunView)>),
    /// How far the running job is.
    Progress {
        kind: JobKind,
        done: usize,
        total: usize,
        what: String,
    },
    Cancelled(JobKind),
    Failed {
        kind: JobKind,
        message: String,
    },
}

/// The app's end of the worker.
pub struct Worker {
    jobs: Sender<Job>,
    replies: Receiver<Reply>,
    queued: Arc<AtomicUsize>,
    cancel: Arc<AtomicBool>,
}

/// What the thread shares with the app.
struct Link {
    replies: Sender<Reply>,
    queued: Arc<AtomicUsize>,
    cancel: Arc<AtomicBool>,
    wake: Box<dyn Fn() + Send>,
}

impl Worker {
    /// Starts the thread; `wake` is called after every reply (the app passes egui's
    /// `request_repaint`).
    pub fn spawn(wake: impl Fn() + Send + 'static) -> std::io::Result<Self> {
        let (jobs, rx) = channel::<Job>();
        let (tx, replies) = channel::<Reply>();
        let queued = Arc::new(AtomicUsize::new(0));
        let cancel = Arc::new(AtomicBool::new(false));
        let link = Link {
            replies: tx,
            queued: queued.clone(),
            cancel: cancel.clone(),
            wake: Box::new(wake),
        };
        std::thread::Builder::new()
            .name("inference".into())
            .spawn(move || serve(rx, link))?;
        Ok(Self {
            jobs,
            replies,
            queued,
            cancel,
        })
    }

    pub fn send(&self, job: Job) {
        self.queued.fetch_add(1, Ordering::SeqCst);
        if self.jobs.send(job).is_err() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// A sender for code that runs off the UI thread (the screenshot callback).
    pub fn sender(&self) -> JobSender {
        JobSender {
            jobs: self.jobs.clone(),
            queued: self.queued.clone(),
        }
    }

    /// Asks the running job to stop at its next step (jobs queued behind it still run).
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
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

/// Sends jobs to the worker from any thread.
#[derive(Clone)]
pub struct JobSender {
    jobs: Sender<Job>,
    queued: Arc<AtomicUsize>,
}

impl JobSender {
    pub fn send(&self, job: Job) {
        self.queued.fetch_add(1, Ordering::SeqCst);
        if self.jobs.send(job).is_err() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// The thread's loop: one job at a time, in order, until the app drops its end.
fn serve(rx: Receiver<Job>, link: Link) {
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
        if matches!(job, Job::Classify(_)) && matches!(queue.front(), Some(Job::Classify(_))) {
            link.queued.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        link.cancel.store(false, Ordering::SeqCst);
        let kind = job.kind();
        // A bug in a job must not take the worker (and every later job) with it.
        let replies =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| state.handle(job, &link)))
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
            let _ = link.replies.send(reply);
        }
        link.queued.fetch_sub(1, Ordering::SeqCst);
        (link.wake)();
    }
}

/// A running job's progress, sent to the app as it happens, and the app's cancel button.
struct JobProgress<'a> {
    kind: JobKind,
    link: &'a Link,
}

impl Progress for JobProgress<'_> {
    fn update(&mut self, done: usize, total: usize, what: &str) {
        let _ = self.link.replies.send(Reply::Progress {
            kind: self.kind,
            done,
            total,
            what: what.to_string(),
        });
        (self.link.wake)();
    }

    fn cancelled(&self) -> bool {
        self.link.cancel.load(Ordering::SeqCst)
    }
}

#[derive(Default)]
struct WorkerState {
    engine: Option<Engine>,
    /// The last image, for re-runs (a new model) and profiling.
    image: Option<(ImageSource, DynamicImage)>,
    /// The last folder run of this model, and its image limit.
    folder: Option<crate::analysis::folder_run::FolderRun>,
    folder_limit: Option<usize>,
    /// What the current engine was built from.
    current_spec: Option<ModelSpec>,
    /// The other model of the Compare tab, kept while it is compared with.
    other: Option<(ModelSpec, String, String, Engine)>,
}

impl WorkerState {
    fn handle(&mut self, job: Job, link: &Link) -> Vec<Reply> {
        let kind = job.kind();
        let mut progress = JobProgress { kind, link };
        let result = match job {
            Job::Load {
                spec,
                device,
                dtype,
            } => self.load(spec, &device, &dtype),
            Job::Classify(src) => self.classify(src),
            Job::Profile { runs } => self.profile(runs, &mut progress).map(|r| vec![r]),
            Job::ScanWeights(dir) => Ok(vec![Reply::Weights(scan_weights(&dir))]),
            #[cfg(feature = "hub")]
            Job::Download(repo) => download(&repo, &mut progress).map(|r| vec![r]),
            Job::Save { path, content } => save(path, content).map(|r| vec![r]),
            Job::TimeRoadmap { device, iters } => time_roadmap(&device, iters, &mut progress),
            Job::Attribute {
                method,
                layer,
                class,
            } => self.attribute(method, layer, class, &mut progress),
            Job::Erf {
                folder,
                limit,
                random,
            } => self.erf(folder, limit, random, &mut progress),
            Job::RoadmapErf => self.roadmap_erf(&mut progress),
            Job::Folder { dir, limit } => self.folder(dir, limit, &mut progress),
            Job::FolderImages(indices) => self.folder_images(&indices),
            Job::TopPatches { layer, channel } => self.top_patches(layer, channel),
            Job::OtherCollapse {
                spec,
                device,
                dtype,
            } => self.other_collapse(spec, &device, &dtype, &mut progress),
            Job::Compare {
                other,
                device,
                dtype,
            } => self.compare(other, device, dtype),
        };
        result.unwrap_or_else(|e| match e.downcast_ref::<crate::Error>() {
            Some(crate::Error::Cancelled(_)) => vec![Reply::Cancelled(kind)],
            _ => vec![Reply::Failed {
                kind,
                message: format!("{e:#}"),
            }],
        })
    }

    /// Loads a model and, if an image is open, runs it through the new model too.
    fn load(&mut self, spec: ModelSpec, device: &str, dtype: &str) -> anyhow::Result<Vec<Reply>> {
        let engine = Engine::build(&spec, &parse_device(device)?, parse_dtype(dtype)?)?;
        let view = model_view(&engine, spec.clone())?;
        self.current_spec = Some(spec);
        // Only a model that loaded replaces the one in use; a folder run was another model's.
        self.folder = None;
        let engine = self.engine.insert(engine);
        let mut replies = vec![Reply::Loaded(Box::new(view))];
        if let Some((src, img)) = &self.image {
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

    fn folder(
        &mut self,
        dir: PathBuf,
        limit: Option<usize>,
        progress: &mut dyn Progress,
    ) -> anyhow::Result<Vec<Reply>> {
        let engine = self
            .engine
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no model loaded"))?;
        let model = engine.source.to_string();
        self.folder = None;
        let view =
            super::folder_jobs::folder(engine, model, dir, limit, &mut self.folder, progress)?;
        self.folder_limit = limit;
        Ok(vec![Reply::Folder(Box::new(view))])
    }

    fn kept_folder(&self) -> anyhow::Result<&crate::analysis::folder_run::FolderRun> {
        self.folder
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("run a folder first"))
    }

    fn folder_images(&self, indices: &[usize]) -> anyhow::Result<Vec<Reply>> {
        let imgs = super::folder_jobs::images(self.engine()?, self.kept_folder()?, indices)?;
        Ok(vec![Reply::FolderImages(imgs)])
    }

    fn top_patches(&self, layer: LayerId, channel: usize) -> anyhow::Result<Vec<Reply>> {
        let p = super::folder_jobs::patches(self.engine()?, self.kept_folder()?, layer, channel)?;
        Ok(vec![Reply::TopPatches(Box::new(p))])
    }

    fn other_collapse(
        &self,
        spec: ModelSpec,
        device: &str,
        dtype: &str,
        progress: &mut dyn Progress,
    ) -> anyhow::Result<Vec<Reply>> {
        let root = self.kept_folder()?.root.clone();
        let other = Engine::build(&spec, &parse_device(device)?, parse_dtype(dtype)?)?;
        let curve = super::folder_jobs::other_collapse(&other, &root, self.folder_limit, progress)?;
        Ok(vec![Reply::OtherCollapse(spec.label(), curve)])
    }

    /// Runs the other side: another model (loaded once, then kept) on the current image, or
    /// this model on another image.
    fn compare(
        &mut self,
        other: CompareWith,
        device: String,
        dtype: String,
    ) -> anyhow::Result<Vec<Reply>> {
        let (engine, spec, src, img) = match other {
            CompareWith::Model(spec) => {
                let fresh = !matches!(&self.other, Some((s, d, t, _)) if *s == spec && *d == device && *t == dtype);
                if fresh {
                    let e = Engine::build(&spec, &parse_device(&device)?, parse_dtype(&dtype)?)?;
                    self.other = Some((spec.clone(), device, dtype, e));
                }
                let (src, img) = self
                    .image
                    .clone()
                    .ok_or_else(|| anyhow::anyhow!("open an image first"))?;
                let engine = &self.other.as_ref().expect("just set").3;
                (engine, spec, src, img)
            }
            CompareWith::Image(src) => {
                self.other = None;
                let img = src.decode()?;
                let engine = self.engine()?;
                let spec = self
                    .current_spec
                    .clone()
                    .ok_or_else(|| anyhow::anyhow!("no model loaded"))?;
                (engine, spec, src, img)
            }
        };
        let view = model_view(engine, spec)?;
        let run = run_image(engine, &src, &img)?;
        Ok(vec![Reply::Compared(Box::new((view, run)))])
    }

    fn engine(&self) -> anyhow::Result<&Engine> {
        self.engine
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no model loaded"))
    }

    /// Runs an image through the model; with no model yet, keeps it for the model to come.
    fn classify(&mut self, src: ImageSource) -> anyhow::Result<Vec<Reply>> {
        let img = src.decode()?;
        let Some(engine) = &self.engine else {
            self.image = Some((src, img));
            return Ok(vec![]);
        };
        let view = run_image(engine, &src, &img)?;
        self.image = Some((src, img));
        Ok(vec![Reply::Ran(Box::new(view))])
    }

    /// The current image's network input.
    fn current_input(&self) -> anyhow::Result<(&Engine, Tensor)> {
        let engine = self.engine()?;
        let (src, img) = self
            .image
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("open an image first"))?;
        let x = preprocess::prepare(img, &engine.preprocess, &engine.device)
            .map_err(|e| e.about_image(&src.name()))?
            .tensor;
        Ok((engine, x))
    }

    fn attribute(
        &self,
        method: crate::analysis::attribution::Method,
        layer: LayerId,
        class: Option<usize>,
        progress: &mut dyn Progress,
    ) -> anyhow::Result<Vec<Reply>> {
        let (engine, x) = self.current_input()?;
        let t0 = Instant::now();
        let a =
            crate::analysis::attribution::attribute(engine, &x, method, layer, class, progress)?;
        let elapsed = t0.elapsed();
        let k = a.classes[0];
        let ev = crate::analysis::attribution::evidence(engine, &x, Some(k))?;
        let one = |m: &Tensor| -> anyhow::Result<std::sync::Arc<FeatureMap>> {
            Ok(std::sync::Arc::new(FeatureMap::from_nhwc(
                &m.unsqueeze(3)?,
                0,
            )?))
        };
        Ok(vec![Reply::Attributed(Box::new(AttributionView {
            method,
            layer,
            class: k,
            label: engine
                .labels
                .get(k)
                .cloned()
                .unwrap_or_else(|| format!("class {k}")),
            map: one(&a.map)?,
            evidence: one(&ev.map)?,
            elapsed,
        }))])
    }

    fn erf(
        &self,
        folder: Option<PathBuf>,
        limit: usize,
        random: bool,
        progress: &mut dyn Progress,
    ) -> anyhow::Result<Vec<Reply>> {
        let loaded = self.engine()?;
        let randomised;
        let engine = if random {
            randomised = loaded.random_like(0)?;
            &randomised
        } else {
            loaded
        };
        let stages = (0..engine.plan.stages.len()).map(LayerId::Stage).collect();
        let mut acc = crate::analysis::attribution::ErfAccumulator::new(stages);
        let mut skipped = Vec::new();
        let source = match &folder {
            None => {
                let (_, x) = self.current_input()?;
                acc.add(engine, &x)?;
                "the current image".to_string()
            }
            Some(dir) => {
                let files = crate::io::listing::list_images(dir, Some(limit))?;
                for (i, f) in files.iter().enumerate() {
                    progress.check("the receptive fields")?;
                    progress.update(i, files.len(), &crate::base::text::file_label(f));
                    let x = preprocess::load_image(f).and_then(|img| {
                        preprocess::prepare(&img, &engine.preprocess, &engine.device)
                            .map_err(|e| e.about_image(&f.display().to_string()))
                    });
                    match x {
                        Ok(p) => acc.add(engine, &p.tensor)?,
                        Err(e) => skipped.push(e.to_string()),
                    }
                }
                format!("{} image(s) of {}", acc.images, dir.display())
            }
        };
        let weights = if random {
            "random weights"
        } else {
            "these weights"
        };
        let images = acc.images;
        Ok(vec![Reply::Erf(Box::new(ErfView {
            stages: acc.finish()?,
            images,
            skipped,
            source: format!("{source}, {weights}"),
        }))])
    }

    /// Steps 6–10 of the roadmap differ only in their depthwise kernel (3, 5, 7, 9, 11).
    fn roadmap_erf(&self, progress: &mut dyn Progress) -> anyhow::Result<Vec<Reply>> {
        use crate::model::roadmap::STEPS;
        let img = match &self.image {
            Some((_, img)) => img.clone(),
            None => preprocess::load_image(
                &crate::io::engine::project_dir("assets/samples").join("chelsea.png"),
            )?,
        };
        let mut out = Vec::new();
        for (i, step) in STEPS[6..=10].iter().enumerate() {
            progress.check("the roadmap's receptive fields")?;
            progress.update(i, 5, step.name);
            let name = format!("roadmap:{}", step.name);
            let engine = Engine::random(&name, 1000, 0, &candle_core::Device::Cpu, DType::F32)?;
            let x = preprocess::prepare(&img, &engine.preprocess, &engine.device)?.tensor;
            let last = LayerId::Stage(engine.plan.stages.len() - 1);
            let mut acc = crate::analysis::attribution::ErfAccumulator::new(vec![last]);
            acc.add(&engine, &x)?;
            out.push((step.name.to_string(), acc.finish()?.remove(0)));
        }
        Ok(vec![Reply::RoadmapErf(out)])
    }

    fn profile(&mut self, runs: usize, progress: &mut dyn Progress) -> anyhow::Result<Reply> {
        let engine = self.engine()?;
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
        let baseline = crate::analysis::profile::PlainBaseline::Interleaved;
        let measured = crate::analysis::profile::time_layers(engine, &x, runs, baseline, progress)?;
        Ok(Reply::Profiled(ProfileView {
            runs,
            times: measured.times,
            total: measured.total,
            plain: measured.plain.unwrap_or_default(),
            input_size: (x.dim(2)?, x.dim(3)?),
        }))
    }
}

/// Checkpoints in folders (files and model folders), each opened to say what it is. Hidden
/// entries (a download's staging folder) are not models.
pub fn scan_weights(dirs: &[PathBuf]) -> Vec<WeightsEntry> {
    use crate::io::checkpoint::{is_weights_file, CheckpointInfo};
    let mut paths: Vec<PathBuf> = dirs
        .iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flat_map(|rd| {
            let mut v: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
            v.sort();
            v
        })
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .filter(|p| is_weights_file(p) || (p.is_dir() && p.join("config.json").is_file()))
        .collect();
    paths.dedup();
    paths
        .into_iter()
        .map(|path| {
            // Tables only: a broken or hostile file costs a header read, never a tensor.
            let summary = CheckpointInfo::read(&path)
                .map(|ck| {
                    format!(
                        "{} · {} · {} params · {} classes",
                        ck.config.variant_name().unwrap_or("custom"),
                        ck.format,
                        crate::base::text::human(ck.num_params as f64),
                        ck.config.num_classes
                    )
                })
                .map_err(|e| e.to_string());
            WeightsEntry { path, summary }
        })
        .collect()
}

fn time_roadmap(
    device: &str,
    iters: usize,
    progress: &mut dyn Progress,
) -> anyhow::Result<Vec<Reply>> {
    let dev = parse_device(device)?;
    let times = crate::analysis::profile::time_roadmap(&dev, (224, 224), iters, progress)?;
    Ok(vec![Reply::RoadmapTimes(times)])
}

#[cfg(feature = "hub")]
fn download(repo: &str, progress: &mut dyn Progress) -> anyhow::Result<Reply> {
    let root = crate::io::engine::download_dir()
        .ok_or_else(|| anyhow::anyhow!("no folder to download into (no ./weights, no HOME)"))?;
    let options = crate::io::hub::DownloadOptions::from_env();
    let got = crate::io::hub::download(repo, &root, &options, progress)?;
    Ok(Reply::Downloaded {
        dir: got.dir,
        notes: got.notes,
    })
}

fn save(path: PathBuf, content: SaveContent) -> anyhow::Result<Reply> {
    let result = match content {
        SaveContent::Png(img) => img.save(&path).map_err(anyhow::Error::from),
        SaveContent::Text(s) => std::fs::write(&path, s).map_err(anyhow::Error::from),
    };
    result.map_err(|e| anyhow::anyhow!("could not save {}: {e}", path.display()))?;
    Ok(Reply::Saved(path))
}
