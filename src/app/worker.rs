//! The one background thread, which only transports: the app and the tabs send it jobs, it
//! runs them one at a time on the engine it owns and sends back what they made, with progress
//! and cancellation. It knows the app-level jobs (load a model, run the image, list and
//! download weights, save a file) and nothing of any tab: a tab's job is a closure
//! ([`TabJob`]) defined beside the tab, whose result comes back to the tab's [`Pending`]
//! handle. The UI thread never waits on it.
pub use super::views::ImageSource;
use super::views::{model_view, run_image, ModelView, RunView};
use crate::base::device::{parse_device, parse_dtype};
use crate::base::progress::Progress;
use crate::io::engine::{Engine, ModelSpec};
use crate::io::preprocess;
use candle_core::Tensor;
use image::{DynamicImage, RgbaImage};
use std::any::{Any, TypeId};
use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

/// What a save job writes.
pub enum SaveContent {
    Png(RgbaImage),
    Text(String),
}

/// The app-level jobs, and the tabs' jobs as opaque closures.
pub enum Job {
    Load {
        spec: ModelSpec,
        device: String,
        dtype: String,
    },
    Classify(ImageSource),
    /// Say what each checkpoint in these folders is.
    ScanWeights(Vec<PathBuf>),
    /// Fetch a Hugging Face repo into `weights/`.
    #[cfg(feature = "hub")]
    Download(String),
    Save {
        path: PathBuf,
        content: SaveContent,
    },
    /// A tab's job.
    Tab(TabJob),
}

impl Job {
    pub fn kind(&self) -> JobKind {
        match self {
            Job::Load { .. } => JobKind::Load,
            Job::Classify(_) => JobKind::Classify,
            Job::ScanWeights(_) => JobKind::ScanWeights,
            #[cfg(feature = "hub")]
            Job::Download(_) => JobKind::Download,
            Job::Save { .. } => JobKind::Save,
            Job::Tab(t) => JobKind::Tab(t.name),
        }
    }

    /// A tab's job sent with [`JobSender::submit_timing`].
    fn is_timing(&self) -> bool {
        matches!(self, Job::Tab(t) if t.timing)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    Load,
    Classify,
    ScanWeights,
    Download,
    Save,
    /// A tab's job, by the name it was given ("Profiling", "The roadmap job").
    Tab(&'static str),
}

/// A checkpoint found in `weights/`, with what the loader made of it.
#[derive(Clone, Debug)]
pub struct WeightsEntry {
    pub path: PathBuf,
    pub summary: Result<String, String>,
}

/// What the worker sends the app. A tab job's result goes to its [`Pending`] instead; the app
/// hears of it only to show its progress, its cancellation or its error.
pub enum Reply {
    Loaded(Box<ModelView>),
    Ran(Box<RunView>),
    Weights(Vec<WeightsEntry>),
    /// The folder a download landed in, and what the user should know about it.
    Downloaded {
        dir: PathBuf,
        notes: Vec<String>,
    },
    Saved(PathBuf),
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

/// What a tab job's closure gets: the worker's state, with the engine and the current image.
pub type JobFn = Box<
    dyn FnOnce(&mut WorkerCtx, &mut dyn Progress) -> anyhow::Result<Box<dyn Any + Send>> + Send,
>;

/// A tab's job: a name for the status bar and the error list, the work, and where its result
/// goes.
pub struct TabJob {
    name: &'static str,
    run: JobFn,
    slot: Arc<Slot>,
    /// Whether the job times something ([`JobSender::submit_timing`]).
    timing: bool,
}

/// Where a tab job's progress and result meet its [`Pending`] handle.
#[derive(Default)]
struct Slot {
    cancel: AtomicBool,
    progress: Mutex<Option<(usize, usize, String)>>,
    /// `Some` once the job has ended: the model it ran on ([`WorkerCtx::generation`]) and its
    /// result if it made one.
    done: Mutex<Option<(u64, Option<JobOutput>)>>,
}

/// What a tab job returns, opened by its [`Pending`] as the type the tab expects.
type JobOutput = Box<dyn Any + Send>;

/// A tab's handle on a job it sent: poll it each frame for the result, show its progress
/// ([`super::widgets::job_progress`]), cancel it. Dropping it discards the result to come.
pub struct Pending<T> {
    slot: Arc<Slot>,
    _result: PhantomData<fn() -> T>,
}

impl<T: 'static> Pending<T> {
    /// The job's result once it has ended, taken once, if it ran on the model loaded
    /// `generation` times (a result of the model before is dropped: the job was queued before
    /// a load). The handle is cleared when the job has ended either way (failures and
    /// cancellations are reported by the app). Tabs call it through [`super::TabCtx::take`].
    pub fn take(pending: &mut Option<Self>, generation: u64) -> Option<T> {
        let (ran_on, result) = pending.as_ref()?.slot.done.lock().ok()?.take()?;
        *pending = None;
        let result = result.filter(|_| ran_on == generation)?;
        result.downcast::<T>().ok().map(|b| *b)
    }

    /// `(done, total, what)` as the job last reported it.
    pub fn progress(&self) -> Option<(usize, usize, String)> {
        self.slot.progress.lock().ok()?.clone()
    }

    /// Asks the job to stop at its next step (or not to start).
    pub fn cancel(&self) {
        self.slot.cancel.store(true, Ordering::SeqCst);
    }
}

/// Makes a tab job and its handle.
fn tab_job<T: Send + 'static>(
    name: &'static str,
    timing: bool,
    f: impl FnOnce(&mut WorkerCtx, &mut dyn Progress) -> anyhow::Result<T> + Send + 'static,
) -> (TabJob, Pending<T>) {
    let slot = Arc::new(Slot::default());
    let run: JobFn = Box::new(move |ctx, p| f(ctx, p).map(|t| Box::new(t) as Box<dyn Any + Send>));
    let job = TabJob {
        name,
        run,
        slot: slot.clone(),
        timing,
    };
    let pending = Pending {
        slot,
        _result: PhantomData,
    };
    (job, pending)
}

/// The app's end of the worker.
pub struct Worker {
    sender: JobSender,
    replies: Receiver<Reply>,
    cancel: Arc<AtomicBool>,
}

/// What the thread shares with the app.
struct Link {
    replies: Sender<Reply>,
    queued: Arc<AtomicUsize>,
    timing: Arc<AtomicUsize>,
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
        let timing = Arc::new(AtomicUsize::new(0));
        let cancel = Arc::new(AtomicBool::new(false));
        let link = Link {
            replies: tx,
            queued: queued.clone(),
            timing: timing.clone(),
            cancel: cancel.clone(),
            wake: Box::new(wake),
        };
        std::thread::Builder::new()
            .name("inference".into())
            .spawn(move || serve(rx, link))?;
        Ok(Self {
            sender: JobSender {
                jobs,
                queued,
                timing,
            },
            replies,
            cancel,
        })
    }

    pub fn send(&self, job: Job) {
        self.sender.send(job);
    }

    /// A sender for the tabs and for code that runs off the UI thread (the screenshot callback).
    pub fn sender(&self) -> &JobSender {
        &self.sender
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
        self.sender.queued.load(Ordering::SeqCst)
    }

    /// Whether a job that times something is queued or running.
    pub fn timing(&self) -> bool {
        self.sender.timing.load(Ordering::SeqCst) > 0
    }
}

/// Sends jobs to the worker from any thread.
#[derive(Clone)]
pub struct JobSender {
    jobs: Sender<Job>,
    queued: Arc<AtomicUsize>,
    /// Timing jobs queued or running: counted from the send, so that the window holds still
    /// from the click that asked for the timings.
    timing: Arc<AtomicUsize>,
}

impl JobSender {
    pub fn send(&self, job: Job) {
        let timing = job.is_timing();
        self.queued.fetch_add(1, Ordering::SeqCst);
        if timing {
            self.timing.fetch_add(1, Ordering::SeqCst);
        }
        if self.jobs.send(job).is_err() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            if timing {
                self.timing.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// Sends a tab's job: `f` runs on the worker with its state; `name` says what it is in the
    /// status bar and in errors ("Profiling", "The roadmap job"). Poll the handle for `f`'s
    /// result.
    pub fn submit<T: Send + 'static>(
        &self,
        name: &'static str,
        f: impl FnOnce(&mut WorkerCtx, &mut dyn Progress) -> anyhow::Result<T> + Send + 'static,
    ) -> Pending<T> {
        let (job, pending) = tab_job(name, false, f);
        self.send(Job::Tab(job));
        pending
    }

    /// [`submit`](Self::submit) for a job that times something (a profile, the machine's
    /// limits): while it is queued or running, the window does not animate
    /// ([`super::widgets::busy`]), so that drawing frames does not take the cores it times.
    pub fn submit_timing<T: Send + 'static>(
        &self,
        name: &'static str,
        f: impl FnOnce(&mut WorkerCtx, &mut dyn Progress) -> anyhow::Result<T> + Send + 'static,
    ) -> Pending<T> {
        let (job, pending) = tab_job(name, true, f);
        self.send(Job::Tab(job));
        pending
    }
}

/// The thread's loop: one job at a time, in order, until the app drops its end.
fn serve(rx: Receiver<Job>, link: Link) {
    let mut state = WorkerCtx::default();
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
        let timing = job.is_timing();
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
        if timing {
            link.timing.fetch_sub(1, Ordering::SeqCst);
        }
        link.queued.fetch_sub(1, Ordering::SeqCst);
        (link.wake)();
    }
}

/// A running job's progress, sent to the app (and to the tab's handle) as it happens, and the
/// cancel buttons (the app's, and the tab's).
struct JobProgress<'a> {
    kind: JobKind,
    link: &'a Link,
    slot: Option<&'a Slot>,
}

impl Progress for JobProgress<'_> {
    fn update(&mut self, done: usize, total: usize, what: &str) {
        if let Some(Ok(mut p)) = self.slot.map(|s| s.progress.lock()) {
            *p = Some((done, total, what.to_string()));
        }
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
            || self.slot.is_some_and(|s| s.cancel.load(Ordering::SeqCst))
    }
}

/// The worker's state, which every job may use: the engine, the current image, and what jobs
/// keep between them (a tab's folder run, another model). Kept values belong to the model that
/// made them: loading a model drops them.
#[derive(Default)]
pub struct WorkerCtx {
    engine: Option<Engine>,
    /// The last image, for re-runs (a new model) and for the tabs' jobs.
    image: Option<(ImageSource, DynamicImage)>,
    /// What the current engine was built from.
    spec: Option<ModelSpec>,
    /// How many models have loaded: which model a tab job's result was made with.
    generation: u64,
    kept: HashMap<TypeId, Box<dyn Any + Send>>,
}

impl WorkerCtx {
    pub fn engine(&self) -> anyhow::Result<&Engine> {
        self.engine
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no model loaded"))
    }

    /// What the current engine was built from.
    pub fn spec(&self) -> anyhow::Result<ModelSpec> {
        self.spec
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no model loaded"))
    }

    /// The current image as it reached the app, and decoded.
    pub fn image(&self) -> Option<&(ImageSource, DynamicImage)> {
        self.image.as_ref()
    }

    /// The current image's network input.
    pub fn current_input(&self) -> anyhow::Result<(&Engine, Tensor)> {
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

    /// Keeps a value for later jobs (one per type), until the next model loads.
    pub fn keep<T: Any + Send>(&mut self, value: T) {
        self.kept.insert(TypeId::of::<T>(), Box::new(value));
    }

    /// A value an earlier job kept.
    pub fn kept<T: Any + Send>(&self) -> Option<&T> {
        self.kept.get(&TypeId::of::<T>())?.downcast_ref()
    }

    /// Takes a kept value out (to replace it, or to free it before a long job).
    pub fn take_kept<T: Any + Send>(&mut self) -> Option<T> {
        let b = self.kept.remove(&TypeId::of::<T>())?;
        b.downcast().ok().map(|b| *b)
    }

    fn handle(&mut self, job: Job, link: &Link) -> Vec<Reply> {
        let kind = job.kind();
        let result = match job {
            Job::Load {
                spec,
                device,
                dtype,
            } => self.load(spec, &device, &dtype),
            Job::Classify(src) => self.classify(src),
            Job::ScanWeights(dir) => Ok(vec![Reply::Weights(scan_weights(&dir))]),
            #[cfg(feature = "hub")]
            Job::Download(repo) => {
                let mut progress = JobProgress {
                    kind,
                    link,
                    slot: None,
                };
                download(&repo, &mut progress).map(|r| vec![r])
            }
            Job::Save { path, content } => save(path, content).map(|r| vec![r]),
            Job::Tab(job) => self.tab_job(job, kind, link),
        };
        result.unwrap_or_else(|e| match e.downcast_ref::<crate::Error>() {
            Some(crate::Error::Cancelled(_)) => vec![Reply::Cancelled(kind)],
            _ => vec![Reply::Failed {
                kind,
                message: format!("{e:#}"),
            }],
        })
    }

    /// Runs a tab's job and hands its result to the tab's handle, whatever becomes of it.
    fn tab_job(&mut self, job: TabJob, kind: JobKind, link: &Link) -> anyhow::Result<Vec<Reply>> {
        let TabJob { run, slot, .. } = job;
        // The handle's end: set on every way out, so a tab never waits on a job that ended.
        struct Ended(Arc<Slot>, u64, Option<Box<dyn Any + Send>>);
        impl Drop for Ended {
            fn drop(&mut self) {
                if let Ok(mut d) = self.0.done.lock() {
                    *d = Some((self.1, self.2.take()));
                }
            }
        }
        let mut ended = Ended(slot.clone(), self.generation, None);
        if slot.cancel.load(Ordering::SeqCst) {
            return Err(crate::Error::Cancelled("not started".into()).into());
        }
        let mut progress = JobProgress {
            kind,
            link,
            slot: Some(&slot),
        };
        ended.2 = Some(run(self, &mut progress)?);
        Ok(vec![])
    }

    /// Loads a model and, if an image is open, runs it through the new model too.
    fn load(&mut self, spec: ModelSpec, device: &str, dtype: &str) -> anyhow::Result<Vec<Reply>> {
        let engine = Engine::build(&spec, &parse_device(device)?, parse_dtype(dtype)?)?;
        let view = model_view(&engine, spec.clone())?;
        self.spec = Some(spec);
        // Only a model that loaded replaces the one in use; what jobs kept was another model's.
        self.kept.clear();
        self.generation += 1;
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
