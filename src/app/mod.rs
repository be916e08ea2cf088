//! The desktop app: a thin layer of tabs over the engine. [`Shared`] holds what every tab reads
//! (the model and run the worker last sent, the selection, the settings, errors); app-level
//! actions (open an image, a folder or weights, load, save) are [`Request`]s. Each tab of the
//! central panel is one module implementing [`Tab`]: it owns its state, sends its own jobs to
//! the one [`worker`] thread (a closure, through [`TabCtx::jobs`]) and polls the [`Pending`]
//! handle it got back. The worker only transports; it keeps the engine and the current image.
//!
//! To add a tab: write `app/my_tab.rs` with a struct implementing [`Tab`] (its `ui` draws it,
//! submits jobs with `ctx.jobs.submit("What it does", move |w, progress| ...)` (or
//! `submit_timing` for a job that times something: the window holds still while it runs), shows
//! [`widgets::job_progress`] while one runs and takes the result with [`Pending::take`]; its
//! `on_model_changed` drops what belonged to the old model), then add `mod my_tab;` and one
//! line to [`tabs`]. The tab bar, the View menu and the remembered tab follow from the list.
mod architecture;
mod attribution;
pub mod channel;
mod compare;
mod compare_cka;
mod compare_diff;
#[cfg(feature = "hub")]
mod download;
mod erf;
mod faithfulness;
mod features;
mod folder;
pub mod folder_jobs;
mod heatmap;
mod layer_scale;
mod layer_table;
pub mod path_prompt;
mod plots;
mod profile;
mod roadmap;
mod roofline;
mod sidebar;
mod strip;
mod tab;
mod textures;
mod views;
mod widgets;
pub mod worker;

use crate::analysis::colormap::Colormap;
use crate::analysis::grid::{Scale, SortBy};
use crate::io::checkpoint::{is_weights_dir, is_weights_file};
use crate::io::engine::{default_weights, project_dir, weights_dir, ModelSpec};
use crate::io::preprocess::is_image_file;
use crate::model::layer_id::LayerId;
pub use attribution::{AttributionTab, AttributionView};
pub use compare::{CkaDone, CompareTab, CompareView, CompareWith};
pub use compare_cka::CkaOutcome;
pub use compare_diff::DiffOutcome;
pub use erf::{ErfTab, ErfView};
pub use faithfulness::{FaithfulnessTab, ZERO_MAP};
pub use features::FeaturesTab;
pub use folder::{FolderResults, FolderTab};
pub use profile::{ProfileTab, ProfileView};
pub use roadmap::RoadmapTab;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
pub use tab::{Tab, TabCtx};
pub use views::{FolderRunInfo, ModelView, RunView};
pub use worker::{scan_weights, Pending, WeightsEntry};
use worker::{ImageSource, Job, JobKind, JobSender, Reply, SaveContent, Worker};

/// The variant opened when there is no trained model at all.
pub const FALLBACK_VARIANT: &str = "convnext_atto";

/// The tabs of the central panel, in the tab bar's order. Adding a tab is one line here.
fn tabs() -> Vec<Box<dyn Tab>> {
    vec![
        Box::new(features::FeaturesTab::default()),
        Box::new(attribution::AttributionTab::default()),
        Box::new(erf::ErfTab::default()),
        Box::new(folder::FolderTab::default()),
        Box::new(compare::CompareTab::default()),
        Box::new(layer_scale::LayerScaleTab::default()),
        Box::new(profile::ProfileTab::default()),
        Box::new(architecture::ArchitectureTab::default()),
        Box::new(roadmap::RoadmapTab::default()),
        Box::new(faithfulness::FaithfulnessTab::default()),
        Box::new(channel::ChannelTab::default()),
    ]
}

/// The tabs' names, in the tab bar's order.
pub fn tab_names() -> Vec<&'static str> {
    tabs().iter().map(|t| t.name()).collect()
}

/// What persists between launches.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub model: Option<ModelSpec>,
    pub device: String,
    pub dtype: String,
    /// The tab shown, by its name (an unknown name shows the first tab).
    pub tab: String,
    pub colormap: Colormap,
    pub scale: Scale,
    pub sort: SortBy,
    pub page_size: usize,
    pub overlay_opacity: f32,
    /// Show FLOPs (2 × MACs) instead of MACs.
    pub flops: bool,
    pub profile_runs: usize,
    pub variant: String,
    pub variant_classes: usize,
    pub show_containers: bool,
    pub sidebar_width: f32,
    /// The sidebar (model, image, predictions) is shown; hidden, the tabs get the whole width.
    pub sidebar_open: bool,
    /// The last image opened from a file, reopened at the next start.
    pub last_image: Option<PathBuf>,
    /// Most images a folder run takes.
    pub folder_limit: usize,
    /// The last folder of images run.
    pub last_folder: Option<PathBuf>,
}

impl Settings {
    /// The device and dtype a second model is built on: the ones chosen for the first.
    pub fn device_and_dtype(&self) -> (String, String) {
        (self.device.clone(), self.dtype.clone())
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model: None,
            device: "cpu".into(),
            dtype: "f32".into(),
            tab: features::NAME.into(),
            colormap: Colormap::Viridis,
            scale: Scale::PerChannel,
            sort: SortBy::Mean,
            page_size: 64,
            overlay_opacity: 0.6,
            flops: false,
            profile_runs: 10,
            variant: "convnext_tiny".into(),
            variant_classes: 1000,
            show_containers: false,
            sidebar_width: 300.0,
            sidebar_open: true,
            last_image: None,
            folder_limit: 10_000,
            last_folder: None,
        }
    }
}

/// How the app was started.
#[derive(Default, Clone, Debug)]
pub struct StartOptions {
    pub weights: Option<PathBuf>,
    pub device: Option<String>,
    pub image: Option<PathBuf>,
}

/// What the user is looking at.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub layer: Option<LayerId>,
    pub channel: Option<usize>,
    pub class: Option<usize>,
    pub page: usize,
    /// Block whose per-channel layer scale is shown.
    pub block: Option<(usize, usize)>,
}

/// How far the worker's current long job is.
#[derive(Clone, Debug)]
pub struct JobStatus {
    pub kind: JobKind,
    pub done: usize,
    pub total: usize,
    pub what: String,
}

/// What the status bar and the spinners show.
#[derive(Clone, Debug, Default)]
pub struct Status {
    /// The model being loaded.
    pub loading: Option<String>,
    /// Errors, oldest first, each shown until the user dismisses it.
    pub errors: Vec<String>,
    /// The image being decoded and run, while it is.
    pub decoding: Option<String>,
    /// One-line notices (saved files, downloads).
    pub notice: Option<String>,
    /// Progress of the running long job, if it reported any.
    pub job: Option<JobStatus>,
    /// Jobs sent to the worker and not finished.
    pub pending: usize,
}

/// What the app is asked to do (by the menus, the sidebar, the tabs, a drop or a paste); the app
/// turns requests into worker jobs after drawing. A tab's own work is not a request: the tab
/// sends it to the worker itself.
pub enum Request {
    Load(ModelSpec),
    /// The current model again, on the device and dtype now chosen.
    Reload,
    OpenImage(ImageSource),
    /// A dropped or chosen file: weights load as the model, anything else is tried as an image.
    OpenPath(PathBuf),
    /// The model over a folder of images (at most the settings' limit), in the Folder tab.
    RunFolder(PathBuf),
    /// Stops the running app-level job (a download).
    CancelJob,
    RescanWeights,
    #[cfg(feature = "hub")]
    Download(String),
    #[cfg(feature = "hub")]
    ShowDownload,
    Save {
        path: PathBuf,
        content: SaveContent,
    },
    Screenshot(PathBuf),
}

/// The state every tab reads.
pub struct Shared {
    pub settings: Settings,
    pub model: Option<ModelView>,
    pub run: Option<RunView>,
    pub selection: Selection,
    /// What `weights/` holds, once the worker has looked.
    pub weights: Option<Vec<WeightsEntry>>,
    /// The folder run the Folder tab made, for the tabs that show more of it (a channel's top
    /// images in Feature maps); it belongs to the model that made it.
    pub folder_run: Option<FolderRunInfo>,
    /// Counts the runs taken in, so tabs can tell when their results are stale.
    pub run_serial: u64,
    /// Counts the models loaded, as the worker does: a tab job's result made with an earlier
    /// model is dropped.
    generation: u64,
    pub status: Status,
    /// The in-app path prompt, where no native file dialog could be shown.
    pub prompt: Option<path_prompt::PathPrompt>,
    textures: textures::Textures,
    requests: Vec<Request>,
}

impl Shared {
    pub fn request(&mut self, r: Request) {
        self.requests.push(r);
    }

    pub fn busy(&self) -> bool {
        self.status.pending > 0
    }

    /// Whether a texture is cached under `key` (for tests: which image an overlay was drawn on).
    pub fn has_texture(&self, key: &str) -> bool {
        self.textures.contains(key)
    }

    /// Shows the outcome of a save as a notice or an error.
    fn report(&mut self, result: Result<String, String>) {
        match result {
            Ok(n) => self.status.notice = Some(n),
            Err(e) => self.status.errors.push(e),
        }
    }
}

pub struct ExplorerApp {
    shared: Shared,
    sidebar: sidebar::Sidebar,
    /// The tabs of the central panel, as [`tabs`] lists them.
    tabs: Vec<Box<dyn Tab>>,
    #[cfg(feature = "hub")]
    download: download::DownloadWindow,
    worker: Worker,
    ctx: egui::Context,
    fell_back: bool,
}

impl ExplorerApp {
    /// A new app: starts the worker and asks it for the first model (and image) and for the
    /// list of `weights/`.
    pub fn new(
        ctx: &egui::Context,
        settings: Settings,
        start: StartOptions,
    ) -> std::io::Result<Self> {
        readable_text(ctx);
        let repaint = ctx.clone();
        let worker = Worker::spawn(move || repaint.request_repaint())?;
        let mut app = Self {
            shared: Shared {
                settings,
                model: None,
                run: None,
                selection: Selection::default(),
                weights: None,
                folder_run: None,
                run_serial: 0,
                generation: 0,
                status: Status::default(),
                prompt: None,
                textures: textures::Textures::default(),
                requests: Vec::new(),
            },
            sidebar: sidebar::Sidebar,
            tabs: tabs(),
            #[cfg(feature = "hub")]
            download: Default::default(),
            worker,
            ctx: ctx.clone(),
            fell_back: false,
        };
        if let Some(d) = start.device {
            app.shared.settings.device = d;
        }
        // A device this build or machine lacks (from the command line, or remembered from
        // another build) would leave the window without a model: say so and use the CPU.
        if let Err(e) = crate::base::device::parse_device(&app.shared.settings.device) {
            app.shared.status.errors.push(format!("{e}; using cpu"));
            app.shared.settings.device = "cpu".into();
        }
        let spec = initial_model(start.weights, app.shared.settings.model.clone());
        app.shared.request(Request::Load(spec));
        // The image waits on the worker's queue for the model to load (or fall back).
        let last = app
            .shared
            .settings
            .last_image
            .clone()
            .filter(|p| p.is_file());
        match start.image.or(last) {
            // A folder on the command line: weights if it holds a checkpoint, else images.
            Some(p) if p.is_dir() => app.shared.request(Request::OpenPath(p)),
            Some(img) => app
                .shared
                .request(Request::OpenImage(ImageSource::Path(img))),
            None => {}
        }
        app.shared.request(Request::RescanWeights);
        app.handle_requests();
        Ok(app)
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    pub fn shared_mut(&mut self) -> &mut Shared {
        &mut self.shared
    }

    /// The tab of type `T` (for tests, and for app-level actions that end in a tab).
    pub fn tab<T: Tab>(&self) -> Option<&T> {
        self.tabs
            .iter()
            .find_map(|t| (t.as_ref() as &dyn std::any::Any).downcast_ref::<T>())
    }

    /// Lets the tab of type `T` act as its buttons would, and hands what it asked for to the
    /// worker at once.
    pub fn with_tab<T: Tab, R>(&mut self, f: impl FnOnce(&mut T, &mut TabCtx) -> R) -> Option<R> {
        let tab = self
            .tabs
            .iter_mut()
            .find_map(|t| (t.as_mut() as &mut dyn std::any::Any).downcast_mut::<T>())?;
        let mut ctx = TabCtx {
            shared: &mut self.shared,
            jobs: self.worker.sender(),
        };
        let r = f(tab, &mut ctx);
        self.handle_requests();
        Some(r)
    }

    /// Asks for work as a panel would, and hands it to the worker at once.
    pub fn request(&mut self, r: Request) {
        self.shared.request(r);
        self.handle_requests();
    }

    /// Turns the requests into worker jobs.
    fn handle_requests(&mut self) {
        for r in std::mem::take(&mut self.shared.requests) {
            let job = match r {
                Request::Load(spec) => Some(self.load_job(spec)),
                Request::Reload => {
                    // With no model (a device that failed, say), the one remembered or shipped.
                    let spec = match &self.shared.model {
                        Some(m) => m.spec.clone(),
                        None => initial_model(None, self.shared.settings.model.clone()),
                    };
                    Some(self.load_job(spec))
                }
                Request::OpenImage(src) => {
                    self.shared.status.decoding = Some(src.name());
                    Some(Job::Classify(src))
                }
                Request::OpenPath(p) if is_weights_file(&p) || is_weights_dir(&p) => {
                    Some(self.load_job(ModelSpec::Weights(p)))
                }
                // Any other folder is a folder of images.
                Request::OpenPath(p) if p.is_dir() => self.run_folder(p),
                Request::RunFolder(dir) => self.run_folder(dir),
                Request::OpenPath(p) => {
                    let src = ImageSource::Path(p);
                    self.shared.status.decoding = Some(src.name());
                    Some(Job::Classify(src))
                }
                Request::CancelJob => {
                    self.worker.cancel();
                    None
                }
                Request::RescanWeights => {
                    self.shared.weights = None;
                    Some(Job::ScanWeights(crate::io::engine::weights_dirs()))
                }
                #[cfg(feature = "hub")]
                Request::Download(repo) => Some(Job::Download(repo)),
                #[cfg(feature = "hub")]
                Request::ShowDownload => {
                    self.download.open = true;
                    None
                }
                Request::Save { path, content } => Some(Job::Save { path, content }),
                Request::Screenshot(path) => {
                    request_screenshot(&self.ctx, self.worker.sender().clone(), path);
                    None
                }
            };
            if let Some(job) = job {
                self.worker.send(job);
            }
        }
        self.shared.status.pending = self.worker.pending();
    }

    /// A folder of images opens in the Folder tab, which sends its own job.
    fn run_folder(&mut self, dir: PathBuf) -> Option<Job> {
        self.shared.settings.tab = folder::NAME.into();
        let limit = self.shared.settings.folder_limit;
        let tab = self.tabs.iter_mut().find_map(|t| {
            (t.as_mut() as &mut dyn std::any::Any).downcast_mut::<folder::FolderTab>()
        })?;
        let mut ctx = TabCtx {
            shared: &mut self.shared,
            jobs: self.worker.sender(),
        };
        tab.run(&mut ctx, dir, limit);
        None
    }

    fn load_job(&mut self, spec: ModelSpec) -> Job {
        self.shared.status.loading = Some(spec.to_string());
        Job::Load {
            spec,
            device: self.shared.settings.device.clone(),
            dtype: self.shared.settings.dtype.clone(),
        }
    }

    /// Takes in what the worker sent back.
    pub fn poll(&mut self) {
        for reply in self.worker.poll() {
            self.take_reply(reply);
        }
        let mut ctx = TabCtx {
            shared: &mut self.shared,
            jobs: self.worker.sender(),
        };
        for tab in &mut self.tabs {
            tab.poll(&mut ctx);
        }
        self.shared.status.pending = self.worker.pending();
        if self.shared.status.pending == 0 {
            self.shared.status.job = None;
        }
    }

    fn take_reply(&mut self, reply: Reply) {
        let s = &mut self.shared;
        match reply {
            Reply::Loaded(view) => {
                s.status.loading = None;
                s.settings.model = Some(view.spec.clone());
                // The same architecture again (another device or dtype) keeps what was picked.
                let same = s.model.as_ref().is_some_and(|m| m.plan == view.plan);
                if !same {
                    s.selection = Selection {
                        layer: Some(LayerId::Stem),
                        ..Default::default()
                    };
                }
                s.run = None;
                s.generation += 1;
                // A folder run belongs to the model that made it.
                s.folder_run = None;
                s.textures.clear();
                for tab in &mut self.tabs {
                    tab.on_model_changed(&view);
                }
                s.model = Some(*view);
            }
            Reply::Ran(view) => {
                s.status.decoding = None;
                s.selection.channel = None;
                s.selection.class = view.top.first().map(|p| p.index);
                if s.selection.layer.is_none() {
                    s.selection.layer = Some(LayerId::Stem);
                }
                s.textures.clear();
                if let Some(p) = &view.path {
                    s.settings.last_image = Some(p.clone());
                }
                for tab in &mut self.tabs {
                    tab.on_new_run(&view);
                }
                s.run = Some(*view);
                s.run_serial += 1;
            }
            Reply::Weights(list) => s.weights = Some(list),
            Reply::Downloaded { dir: folder, notes } => {
                let mut notice = format!("Downloaded into {}", folder.display());
                for n in notes {
                    notice.push_str(&format!("; {n}"));
                }
                s.status.notice = Some(notice);
                s.request(Request::RescanWeights);
                s.request(Request::Load(ModelSpec::Weights(folder)));
                self.handle_requests();
            }
            Reply::Saved(path) => s.report(Ok(format!("Saved {}", path.display()))),
            Reply::Progress {
                kind,
                done,
                total,
                what,
            } => {
                s.status.job = Some(JobStatus {
                    kind,
                    done,
                    total,
                    what,
                })
            }
            Reply::Cancelled(kind) => {
                s.status.job = None;
                s.status.notice = Some(format!("{} cancelled", kind_name(kind)));
            }
            Reply::Failed { kind, message } => self.failed(kind, message),
        }
    }

    fn failed(&mut self, kind: JobKind, message: String) {
        if kind == JobKind::Load {
            self.shared.status.loading = None;
            // The remembered model is gone or broken: open the default instead of leaving the
            // window empty (once; the error stays on show).
            if self.shared.model.is_none() && !self.fell_back {
                self.fell_back = true;
                self.request(Request::Load(initial_model(None, None)));
            }
        }
        let what = match kind {
            JobKind::Load => "Could not load the model".to_string(),
            JobKind::Classify => "Could not open the image".to_string(),
            JobKind::ScanWeights => "Could not list weights/".to_string(),
            JobKind::Download => "Download failed".to_string(),
            JobKind::Save => "Could not save".to_string(),
            JobKind::Tab(name) => format!("{name} failed"),
        };
        if kind == JobKind::Classify {
            self.shared.status.decoding = None;
        }
        self.shared.status.errors.push(format!("{what}: {message}"));
    }

    fn handle_input(&mut self, ctx: &egui::Context) {
        let (dropped, pasted) = ctx.input(|i| {
            let pasted: Vec<egui::Event> = i
                .events
                .iter()
                .filter(|e| matches!(e, egui::Event::PasteImage(_) | egui::Event::Paste(_)))
                .cloned()
                .collect();
            (i.raw.dropped_files.clone(), pasted)
        });
        if let Some(f) = dropped.into_iter().last() {
            let path = f.path().to_path_buf();
            if path.exists() {
                self.shared.request(Request::OpenPath(path));
            } else {
                match f.bytes() {
                    Ok(bytes) => self.shared.request(Request::OpenImage(ImageSource::Bytes {
                        name: path.display().to_string(),
                        bytes: bytes.into(),
                    })),
                    Err(e) => self
                        .shared
                        .status
                        .errors
                        .push(format!("Could not read the dropped file: {e}")),
                }
            }
        }
        for e in pasted {
            if let Some(r) = pasted_request(e) {
                self.shared.request(r);
            }
        }
    }

    /// The whole window.
    pub fn show(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        self.poll();
        widgets::set_timing(&ctx, self.worker.timing());
        self.handle_input(&ctx);
        let shared = &mut self.shared;
        egui::Panel::top("menu").show(ui, |ui| menu_bar(ui, shared, &self.tabs));
        egui::Panel::bottom("status").show(ui, |ui| status_bar(ui, shared));
        if !shared.status.errors.is_empty() {
            egui::Panel::bottom("errors").show(ui, |ui| errors_panel(ui, shared));
        }
        let sidebar = &mut self.sidebar;
        if shared.settings.sidebar_open {
            egui::Panel::left("sidebar")
                .resizable(true)
                .default_size(shared.settings.sidebar_width)
                .size_range(220.0..=520.0)
                .show(ui, |ui| {
                    shared.settings.sidebar_width = ui.available_width();
                    egui::ScrollArea::vertical().show(ui, |ui| sidebar.ui(ui, shared));
                });
        }
        let mut tab_ctx = TabCtx {
            shared,
            jobs: self.worker.sender(),
        };
        egui::CentralPanel::default().show(ui, |ui| central(ui, &mut self.tabs, &mut tab_ctx));
        #[cfg(feature = "hub")]
        self.download.ui(&ctx, &mut self.shared);
        path_prompt::window(&ctx, &mut self.shared);
        drop_hint(&ctx);
        self.handle_requests();
        // Keep the spinner turning while the worker is at it; while it times, the window
        // redraws only when the worker reports (its progress, its end).
        if self.shared.busy() && !self.worker.timing() {
            ctx.request_repaint_after(std::time::Duration::from_millis(100));
        }
    }
}

/// egui's small text is 9 px, too small to read notes, hints and tables by: 11 px, in every
/// theme.
fn readable_text(ctx: &egui::Context) {
    ctx.all_styles_mut(|style| {
        use egui::{FontFamily, FontId, TextStyle};
        style.text_styles.insert(
            TextStyle::Small,
            FontId::new(11.0, FontFamily::Proportional),
        );
    });
}

/// The tab bar and the tab shown (the first, if the remembered one is gone). The bar wraps and
/// the tab scrolls both ways, so that every tab can be reached and read on a small screen.
fn central(ui: &mut egui::Ui, tabs: &mut [Box<dyn Tab>], ctx: &mut TabCtx) {
    ui.horizontal_wrapped(|ui| {
        for tab in tabs.iter() {
            let on = ctx.shared.settings.tab == tab.name();
            if ui.selectable_label(on, tab.name()).clicked() {
                ctx.shared.settings.tab = tab.name().into();
            }
        }
        ui.separator();
        let open = &mut ctx.shared.settings.sidebar_open;
        let arrow = if *open {
            "Hide sidebar"
        } else {
            "Show sidebar"
        };
        if ui
            .button(arrow)
            .on_hover_text("Show or hide the sidebar (model, image, predictions)")
            .clicked()
        {
            *open = !*open;
        }
    });
    ui.separator();
    let shown = tabs
        .iter()
        .position(|t| t.name() == ctx.shared.settings.tab)
        .unwrap_or(0);
    if let Some(tab) = tabs.get_mut(shown) {
        // Solid bars take their own room: a floating one would lie over the tab's last row of
        // widgets and take their clicks.
        ui.spacing_mut().scroll = egui::style::ScrollStyle::solid();
        egui::ScrollArea::both()
            .id_salt(("tab", tab.name()))
            .auto_shrink(false)
            .show(ui, |ui| tab.ui(ui, ctx));
    }
}

impl eframe::App for ExplorerApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.show(ui);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, eframe::APP_KEY, &self.shared.settings);
    }
}

fn kind_name(kind: JobKind) -> &'static str {
    match kind {
        JobKind::Load => "Loading",
        JobKind::Classify => "Classifying",
        JobKind::ScanWeights => "Listing weights",
        JobKind::Download => "Download",
        JobKind::Save => "Saving",
        JobKind::Tab(name) => name,
    }
}

/// A pasted image opens as the image; a pasted file path (copied from a file manager) opens
/// that file.
fn pasted_request(e: egui::Event) -> Option<Request> {
    match e {
        egui::Event::PasteImage(img) => {
            let rgba = image::RgbaImage::from_raw(
                img.width() as u32,
                img.height() as u32,
                img.pixels
                    .iter()
                    .flat_map(|c| c.to_srgba_unmultiplied())
                    .collect(),
            )?;
            Some(Request::OpenImage(ImageSource::Pixels {
                name: "pasted image".into(),
                image: Arc::new(image::DynamicImage::ImageRgba8(rgba)),
            }))
        }
        egui::Event::Paste(text) => {
            let p = PathBuf::from(text.trim().trim_start_matches("file://"));
            p.is_file().then_some(Request::OpenPath(p))
        }
        _ => None,
    }
}

/// Asks the integration for a picture of the window; its pixels go to the worker to be saved.
fn request_screenshot(ctx: &egui::Context, jobs: JobSender, path: PathBuf) {
    let repaint = ctx.clone();
    ctx.request_screenshot(move |img| {
        let [w, h] = img.size;
        let bytes: Vec<u8> = img.pixels.iter().flat_map(|c| c.to_array()).collect();
        if let Some(rgba) = image::RgbaImage::from_raw(w as u32, h as u32, bytes) {
            jobs.send(Job::Save {
                path,
                content: SaveContent::Png(rgba),
            });
        }
        repaint.request_repaint();
    });
}

fn menu_bar(ui: &mut egui::Ui, shared: &mut Shared, tabs: &[Box<dyn Tab>]) {
    egui::MenuBar::new().ui(ui, |ui| {
        ui.menu_button("File", |ui| {
            if ui.button("Open image…").clicked() {
                open_image_dialog(shared);
                ui.close();
            }
            if ui.button("Open folder of images…").clicked() {
                open_folder_dialog(shared);
                ui.close();
            }
            if ui.button("Open weights…").clicked() {
                open_weights_dialog(shared);
                ui.close();
            }
            #[cfg(feature = "hub")]
            if ui.button("Download from Hugging Face…").clicked() {
                shared.request(Request::ShowDownload);
                ui.close();
            }
            ui.separator();
            if ui.button("Save feature grid as PNG…").clicked() {
                features::save_grid(shared);
                ui.close();
            }
            if ui.button("Save overlay as PNG…").clicked() {
                features::save_overlay(shared);
                ui.close();
            }
            if ui.button("Save screenshot…").clicked() {
                let name = "convnext-explorer.png";
                let dialog = || save_dialog(name, "PNG", "png");
                path_prompt::with_dialog(shared, path_prompt::Purpose::Screenshot, name, dialog);
                ui.close();
            }
            ui.separator();
            if ui.button("Quit").clicked() {
                ui.ctx().send_viewport_cmd(egui::ViewportCommand::Close);
            }
        });
        ui.menu_button("View", |ui| {
            for tab in tabs {
                let on = shared.settings.tab == tab.name();
                if ui.selectable_label(on, tab.name()).clicked() {
                    shared.settings.tab = tab.name().into();
                    ui.close();
                }
            }
        });
    });
}

/// Every error not yet dismissed, newest last, each with its own dismiss button.
fn errors_panel(ui: &mut egui::Ui, shared: &mut Shared) {
    let mut dismiss = None;
    for (i, e) in shared.status.errors.iter().enumerate() {
        ui.horizontal(|ui| {
            if ui.small_button("x").on_hover_text("Dismiss").clicked() {
                dismiss = Some(i);
            }
            ui.add(
                egui::Label::new(
                    egui::RichText::new(format!("Error: {e}")).color(ui.visuals().error_fg_color),
                )
                .wrap(),
            );
        });
    }
    if let Some(i) = dismiss {
        shared.status.errors.remove(i);
    }
}

fn status_bar(ui: &mut egui::Ui, shared: &mut Shared) {
    ui.horizontal(|ui| {
        let status = &mut shared.status;
        if status.pending > 0 {
            widgets::busy(ui);
            ui.label(match (&status.loading, &status.job) {
                (Some(what), _) => format!("Loading {what}…"),
                (None, Some(j)) => {
                    format!(
                        "{}: {}",
                        kind_name(j.kind),
                        widgets::progress_text(j.done, j.total, &j.what)
                    )
                }
                (None, None) => "Working…".to_string(),
            });
        } else if let Some(m) = &shared.model {
            ui.label(format!("{} · {}", m.device, m.dtype));
            if let Some(r) = &shared.run {
                ui.separator();
                ui.label(format!(
                    "{}: forward + capture {:.1} ms",
                    r.name,
                    r.elapsed.as_secs_f64() * 1e3
                ));
            }
        }
        if let Some(n) = status.notice.clone() {
            ui.separator();
            ui.label(n);
            if ui.small_button("x").on_hover_text("Dismiss").clicked() {
                status.notice = None;
            }
        }
    });
}

/// The model to open first: the one asked for, else the last one (if it still exists), else
/// the shipped model, else a random-weights variant.
pub fn initial_model(asked: Option<PathBuf>, last: Option<ModelSpec>) -> ModelSpec {
    if let Some(p) = asked {
        return ModelSpec::Weights(p);
    }
    match last {
        Some(ModelSpec::Weights(p)) if p.exists() => return ModelSpec::Weights(p),
        Some(v @ ModelSpec::Variant { .. }) => return v,
        _ => {}
    }
    match default_weights() {
        Some(p) => ModelSpec::Weights(p),
        None => ModelSpec::Variant {
            name: FALLBACK_VARIANT.into(),
            classes: 1000,
            seed: 0,
        },
    }
}

/// Sample images shipped in `assets/samples`.
pub fn sample_images() -> Vec<PathBuf> {
    let dir = project_dir("assets/samples");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_image_file(p))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// File > Open image (and the sidebar's button).
fn open_image_dialog(shared: &mut Shared) {
    let exts = crate::io::preprocess::IMAGE_EXTENSIONS;
    let dialog = || {
        rfd::FileDialog::new()
            .add_filter("Images", exts)
            .pick_file()
    };
    // The prompt starts where the last image came from.
    let start = shared
        .settings
        .last_image
        .as_ref()
        .and_then(|p| p.parent())
        .map(|d| format!("{}/", d.display()))
        .unwrap_or_default();
    path_prompt::with_dialog(shared, path_prompt::Purpose::OpenImage, &start, dialog);
}

/// File > Open folder (and the Folder tab's button).
fn open_folder_dialog(shared: &mut Shared) {
    let dialog = || rfd::FileDialog::new().pick_folder();
    path_prompt::with_dialog(shared, path_prompt::Purpose::OpenFolder, "", dialog);
}

/// File > Open weights (and the sidebar's button).
fn open_weights_dialog(shared: &mut Shared) {
    let exts = crate::io::checkpoint::WEIGHTS_EXTENSIONS;
    let dialog = || {
        rfd::FileDialog::new()
            .add_filter("Checkpoints", exts)
            .pick_file()
    };
    let weights = format!("{}/", weights_dir().display());
    path_prompt::with_dialog(shared, path_prompt::Purpose::OpenWeights, &weights, dialog);
}

fn save_dialog(name: &str, what: &str, ext: &str) -> Option<PathBuf> {
    rfd::FileDialog::new()
        .set_file_name(name)
        .add_filter(what, &[ext])
        .save_file()
}

/// Saves what `make` gives through the worker (after asking where), or says why there is
/// nothing to save.
fn save_as(
    shared: &mut Shared,
    name: &str,
    (what, ext): (&str, &str),
    content: Result<SaveContent, String>,
) {
    match content {
        Ok(content) => {
            let dialog = || save_dialog(name, what, ext);
            path_prompt::with_dialog(shared, path_prompt::Purpose::Save(content), name, dialog);
        }
        Err(e) => shared.report(Err(format!("Nothing to save: {e}"))),
    }
}

fn drop_hint(ctx: &egui::Context) {
    let hovering = ctx.input(|i| !i.raw.hovered_files.is_empty());
    if !hovering {
        return;
    }
    let painter = ctx.layer_painter(egui::LayerId::new(
        egui::Order::Foreground,
        egui::Id::unique("drop_hint"),
    ));
    let rect = ctx.content_rect();
    painter.rect_filled(rect, 0.0, egui::Color32::from_black_alpha(180));
    painter.text(
        rect.center(),
        egui::Align2::CENTER_CENTER,
        "Drop an image to classify it\n(or a checkpoint to load it)",
        egui::FontId::proportional(28.0),
        egui::Color32::WHITE,
    );
}

/// CPU threads for inference in the app: every core but one, which the UI thread keeps.
pub fn default_worker_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.saturating_sub(1).max(1)
}

/// Opens the native window.
pub fn run(start: StartOptions) -> anyhow::Result<()> {
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("ConvNeXt Explorer")
            .with_inner_size([1400.0, 900.0])
            .with_min_inner_size([900.0, 600.0])
            .with_drag_and_drop(true),
        ..Default::default()
    };
    eframe::run_native(
        "ConvNeXt Explorer",
        options,
        Box::new(move |cc| {
            let settings: Settings = cc
                .storage
                .and_then(|s| eframe::get_value(s, eframe::APP_KEY))
                .unwrap_or_default();
            Ok(Box::new(ExplorerApp::new(&cc.egui_ctx, settings, start)?))
        }),
    )
    .map_err(|e| anyhow::anyhow!("could not open the window: {e}"))
}
