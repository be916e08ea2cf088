//! The desktop app: a thin layer of panels over the engine. State lives in [`ExplorerApp`];
//! each panel module draws one part of it; all heavy work goes to the [`worker`] thread.
mod architecture;
#[cfg(feature = "hub")]
mod download;
mod features;
mod layer_scale;
mod plots;
mod profile;
mod sidebar;
mod textures;
pub mod worker;

use crate::colormap::Colormap;
use crate::engine::{default_weights, project_dir, weights_dir};
use crate::grid::{Scale, SortBy};
use crate::model::checkpoint::{is_weights_file, Checkpoint, WEIGHTS_EXTENSIONS};
use crate::trace::LayerId;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use worker::{
    ImageSource, Job, JobKind, ModelSpec, ModelView, ProfileView, Reply, RunView, Worker,
};

/// The variant opened when there is no trained model at all.
pub const FALLBACK_VARIANT: &str = "convnext_atto";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Tab {
    #[default]
    Features,
    LayerScale,
    Profile,
    Architecture,
}

impl Tab {
    pub const ALL: [Tab; 4] = [
        Tab::Features,
        Tab::LayerScale,
        Tab::Profile,
        Tab::Architecture,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Tab::Features => "Feature maps",
            Tab::LayerScale => "Layer scale",
            Tab::Profile => "Profile",
            Tab::Architecture => "Architecture",
        }
    }
}

/// What persists between launches.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub model: Option<ModelSpec>,
    pub device: String,
    pub dtype: String,
    pub tab: Tab,
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
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model: None,
            device: "cpu".into(),
            dtype: "f32".into(),
            tab: Tab::Features,
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

/// A checkpoint found in `weights/`, with what the loader made of it.
#[derive(Clone, Debug)]
pub struct WeightsEntry {
    pub path: PathBuf,
    pub summary: Result<String, String>,
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

/// Where a requested screenshot goes, and its pixels once the integration delivers them.
type PendingShot = (PathBuf, Option<Arc<egui::ColorImage>>);

pub struct ExplorerApp {
    pub settings: Settings,
    worker: Worker,
    pub model: Option<ModelView>,
    pub run: Option<RunView>,
    pub profile: Option<ProfileView>,
    /// The model being loaded, for the spinner.
    pub loading: Option<String>,
    /// The last error, shown until dismissed or replaced.
    pub error: Option<String>,
    /// One-line notices (saved files, screenshots).
    pub notice: Option<String>,
    pub selection: Selection,
    pub weights: Arc<Mutex<Option<Vec<WeightsEntry>>>>,
    textures: textures::Textures,
    #[cfg(feature = "hub")]
    pub download: download::DownloadPanel,
    /// A screenshot the integration will deliver (path it goes to, pixels when they arrive).
    screenshot: Arc<Mutex<Option<PendingShot>>>,
    ctx: egui::Context,
    fell_back: bool,
}

impl ExplorerApp {
    /// A new app: starts the worker and asks it for the first model (and image).
    pub fn new(ctx: &egui::Context, settings: Settings, start: StartOptions) -> Self {
        let repaint = ctx.clone();
        let worker = Worker::spawn(move || repaint.request_repaint());
        let mut app = Self {
            settings,
            worker,
            model: None,
            run: None,
            profile: None,
            loading: None,
            error: None,
            notice: None,
            selection: Selection::default(),
            weights: Arc::new(Mutex::new(None)),
            textures: textures::Textures::default(),
            #[cfg(feature = "hub")]
            download: download::DownloadPanel::default(),
            screenshot: Arc::new(Mutex::new(None)),
            ctx: ctx.clone(),
            fell_back: false,
        };
        if let Some(d) = start.device {
            app.settings.device = d;
        }
        let spec = initial_model(start.weights, app.settings.model.clone());
        app.load_model(spec);
        if let Some(img) = start.image {
            app.open_image(ImageSource::Path(img));
        }
        app.rescan_weights();
        app
    }

    pub fn load_model(&mut self, spec: ModelSpec) {
        self.loading = Some(spec.to_string());
        self.worker.send(Job::Load {
            spec,
            device: self.settings.device.clone(),
            dtype: self.settings.dtype.clone(),
        });
    }

    /// Reloads the current model on the chosen device and dtype.
    pub fn reload(&mut self) {
        if let Some(spec) = self.model.as_ref().map(|m| m.spec.clone()) {
            self.load_model(spec);
        }
    }

    pub fn open_image(&mut self, src: ImageSource) {
        self.worker.send(Job::Classify(src));
    }

    /// A dropped or opened file: weights load as the model, anything else is tried as an image.
    pub fn open_path(&mut self, path: &Path) {
        if is_weights_file(path) || path.is_dir() {
            self.load_model(ModelSpec::Weights(path.to_path_buf()));
        } else {
            self.open_image(ImageSource::Path(path.to_path_buf()));
        }
    }

    /// File > Open image (and the sidebar's button).
    pub fn open_image_dialog(&mut self) {
        if let Some(p) = pick_file("Images", IMAGE_EXTS) {
            self.open_image(ImageSource::Path(p));
        }
    }

    /// File > Open weights (and the sidebar's button).
    pub fn open_weights_dialog(&mut self) {
        if let Some(p) = pick_file("Checkpoints", WEIGHTS_EXTENSIONS) {
            self.load_model(ModelSpec::Weights(p));
        }
    }

    pub fn start_profile(&mut self) {
        self.profile = None;
        self.worker.send(Job::Profile {
            runs: self.settings.profile_runs,
        });
    }

    /// Jobs the worker has not finished.
    pub fn busy(&self) -> bool {
        self.worker.pending() > 0
    }

    /// Lists `weights/` on a helper thread (opening real checkpoints takes a while).
    pub fn rescan_weights(&mut self) {
        let out = self.weights.clone();
        let ctx = self.ctx.clone();
        *out.lock().expect("weights list") = None;
        std::thread::spawn(move || {
            let list = scan_weights(&weights_dir());
            *out.lock().expect("weights list") = Some(list);
            ctx.request_repaint();
        });
    }

    /// Takes in what the worker sent back.
    pub fn poll(&mut self) {
        for reply in self.worker.poll() {
            match reply {
                Reply::Loaded(view) => {
                    self.loading = None;
                    // After a fallback the error says why this is not the model asked for.
                    if !(self.fell_back && self.model.is_none()) {
                        self.error = None;
                    }
                    self.settings.model = Some(view.spec.clone());
                    self.selection = Selection {
                        layer: Some(LayerId::Stem),
                        ..Default::default()
                    };
                    self.profile = None;
                    self.run = None;
                    self.textures.clear();
                    self.model = Some(*view);
                }
                Reply::Ran(view) => {
                    self.error = None;
                    self.selection.channel = None;
                    self.selection.class = view.top.first().map(|p| p.index);
                    if self.selection.layer.is_none() {
                        self.selection.layer = Some(LayerId::Stem);
                    }
                    self.textures.clear();
                    self.run = Some(*view);
                }
                Reply::Profiled(p) => self.profile = Some(p),
                Reply::Failed { kind, message } => {
                    if kind == JobKind::Load {
                        self.loading = None;
                        // The remembered model is gone or broken: open the default instead of
                        // leaving the window empty (once; the error stays on show).
                        if self.model.is_none() && !self.fell_back {
                            self.fell_back = true;
                            self.load_model(initial_model(None, None));
                        }
                    }
                    let what = match kind {
                        JobKind::Load => "Could not load the model",
                        JobKind::Classify => "Could not open the image",
                        JobKind::Profile => "Profiling failed",
                    };
                    self.error = Some(format!("{what}: {message}"));
                }
            }
        }
        // Take the request only once its pixels are there (putting it back instead could lose
        // pixels that arrive in between).
        let shot = {
            let mut slot = self.screenshot.lock().expect("screenshot");
            match slot.as_ref() {
                Some((_, Some(_))) => slot.take(),
                _ => None,
            }
        };
        if let Some((path, Some(img))) = shot {
            self.notice = Some(match save_color_image(&img, &path) {
                Ok(()) => format!("Saved screenshot to {}", path.display()),
                Err(e) => format!("Could not save the screenshot: {e}"),
            })
        }
    }

    /// Asks the integration for a picture of the window, saved to `path` when it arrives.
    pub fn request_screenshot(&mut self, path: PathBuf) {
        *self.screenshot.lock().expect("screenshot") = Some((path, None));
        let slot = self.screenshot.clone();
        let ctx = self.ctx.clone();
        self.ctx.request_screenshot(move |img| {
            if let Some((_, pixels)) = slot.lock().expect("screenshot").as_mut() {
                *pixels = Some(img);
            }
            ctx.request_repaint();
        });
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
                self.open_path(&path);
            } else {
                match f.bytes() {
                    Ok(bytes) => self.open_image(ImageSource::Bytes {
                        name: path.display().to_string(),
                        bytes: bytes.into(),
                    }),
                    Err(e) => self.error = Some(format!("Could not read the dropped file: {e}")),
                }
            }
        }
        for e in pasted {
            match e {
                egui::Event::PasteImage(img) => {
                    let rgba = image::RgbaImage::from_raw(
                        img.width() as u32,
                        img.height() as u32,
                        img.pixels
                            .iter()
                            .flat_map(|c| c.to_srgba_unmultiplied())
                            .collect(),
                    );
                    if let Some(rgba) = rgba {
                        self.open_image(ImageSource::Pixels {
                            name: "pasted image".into(),
                            image: Arc::new(image::DynamicImage::ImageRgba8(rgba)),
                        });
                    }
                }
                // A pasted file path (copied from a file manager) opens that file.
                egui::Event::Paste(text) => {
                    let p = PathBuf::from(text.trim().trim_start_matches("file://"));
                    if p.is_file() {
                        self.open_path(&p);
                    }
                }
                _ => {}
            }
        }
    }

    /// The whole window.
    pub fn show(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        self.poll();
        self.handle_input(&ctx);

        egui::Panel::top("menu").show(ui, |ui| self.menu_bar(ui));
        egui::Panel::bottom("status").show(ui, |ui| self.status_bar(ui));
        egui::Panel::left("sidebar")
            .resizable(true)
            .default_size(self.settings.sidebar_width)
            .size_range(220.0..=520.0)
            .show(ui, |ui| {
                self.settings.sidebar_width = ui.available_width();
                egui::ScrollArea::vertical().show(ui, |ui| sidebar::show(self, ui));
            });
        egui::CentralPanel::default().show(ui, |ui| {
            ui.horizontal(|ui| {
                for tab in Tab::ALL {
                    ui.selectable_value(&mut self.settings.tab, tab, tab.name());
                }
            });
            ui.separator();
            match self.settings.tab {
                Tab::Features => features::show(self, ui),
                Tab::LayerScale => layer_scale::show(self, ui),
                Tab::Profile => profile::show(self, ui),
                Tab::Architecture => architecture::show(self, ui),
            }
        });
        #[cfg(feature = "hub")]
        download::window(self, &ctx);
        drop_hint(&ctx);
        if self.busy() {
            // Keep the spinner turning while the worker is at it.
            ctx.request_repaint_after(std::time::Duration::from_millis(100));
        }
    }

    fn menu_bar(&mut self, ui: &mut egui::Ui) {
        egui::MenuBar::new().ui(ui, |ui| {
            ui.menu_button("File", |ui| {
                if ui.button("Open image…").clicked() {
                    self.open_image_dialog();
                    ui.close();
                }
                if ui.button("Open weights…").clicked() {
                    self.open_weights_dialog();
                    ui.close();
                }
                #[cfg(feature = "hub")]
                if ui.button("Download from Hugging Face…").clicked() {
                    self.download.open = true;
                    ui.close();
                }
                ui.separator();
                if ui.button("Save feature grid as PNG…").clicked() {
                    if let Some(p) = save_file("feature_grid.png", "PNG", "png") {
                        self.save_grid_png(&p);
                    }
                    ui.close();
                }
                if ui.button("Save overlay as PNG…").clicked() {
                    if let Some(p) = save_file("overlay.png", "PNG", "png") {
                        self.save_overlay_png(&p);
                    }
                    ui.close();
                }
                if ui.button("Save screenshot…").clicked() {
                    if let Some(p) = save_file("convnext-explorer.png", "PNG", "png") {
                        self.request_screenshot(p);
                    }
                    ui.close();
                }
                ui.separator();
                if ui.button("Quit").clicked() {
                    ui.ctx().send_viewport_cmd(egui::ViewportCommand::Close);
                }
            });
            ui.menu_button("View", |ui| {
                for tab in Tab::ALL {
                    if ui
                        .selectable_value(&mut self.settings.tab, tab, tab.name())
                        .clicked()
                    {
                        ui.close();
                    }
                }
            });
        });
    }

    fn status_bar(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            if self.busy() {
                ui.spinner();
                ui.label(match &self.loading {
                    Some(what) => format!("Loading {what}…"),
                    None => "Working…".to_string(),
                });
            } else if let Some(m) = &self.model {
                ui.label(format!("{} · {}", m.device, m.dtype));
                if let Some(r) = &self.run {
                    ui.separator();
                    ui.label(format!(
                        "{}: forward + capture {:.1} ms",
                        r.name,
                        r.elapsed.as_secs_f64() * 1e3
                    ));
                }
            }
            if let Some(e) = self.error.clone() {
                ui.separator();
                ui.colored_label(ui.visuals().error_fg_color, format!("Error: {e}"));
                if ui.small_button("x").on_hover_text("Dismiss").clicked() {
                    self.error = None;
                }
            } else if let Some(n) = self.notice.clone() {
                ui.separator();
                ui.label(n);
                if ui.small_button("x").on_hover_text("Dismiss").clicked() {
                    self.notice = None;
                }
            }
        });
    }

    pub fn save_grid_png(&mut self, path: &Path) {
        let result = features::grid_image(self)
            .ok_or_else(|| "no feature map to save".to_string())
            .and_then(|img| img.save(path).map_err(|e| e.to_string()));
        self.report_save(path, result);
    }

    pub fn save_overlay_png(&mut self, path: &Path) {
        let result = features::overlay_image(self)
            .ok_or_else(|| "select a channel (or class) first".to_string())
            .and_then(|img| img.save(path).map_err(|e| e.to_string()));
        self.report_save(path, result);
    }

    fn report_save(&mut self, path: &Path, result: Result<(), String>) {
        match result {
            Ok(()) => self.notice = Some(format!("Saved {}", path.display())),
            Err(e) => self.error = Some(format!("Could not save {}: {e}", path.display())),
        }
    }
}

impl eframe::App for ExplorerApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.show(ui);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, eframe::APP_KEY, &self.settings);
    }
}

/// A count for a table cell: empty for zero, so that the layers that do the work stand out.
pub fn nonzero(x: f64) -> String {
    if x == 0.0 {
        String::new()
    } else {
        crate::flops::human(x)
    }
}

pub const IMAGE_EXTS: &[&str] = &["png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"];

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

/// Checkpoints in a folder (files and model folders), each opened to say what it is.
pub fn scan_weights(dir: &Path) -> Vec<WeightsEntry> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_weights_file(p) || (p.is_dir() && p.join("config.json").is_file()))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let summary = Checkpoint::open(&path)
                .map(|ck| {
                    format!(
                        "{} · {} · {} params · {} classes",
                        ck.config.variant_name().unwrap_or("custom"),
                        ck.format,
                        crate::flops::human(ck.num_params() as f64),
                        ck.config.num_classes
                    )
                })
                .map_err(|e| e.to_string());
            WeightsEntry { path, summary }
        })
        .collect()
}

/// Sample images shipped in `assets/samples`.
pub fn sample_images() -> Vec<PathBuf> {
    let dir = project_dir("assets/samples");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| IMAGE_EXTS.contains(&e.to_ascii_lowercase().as_str()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn pick_file(what: &str, exts: &[&str]) -> Option<PathBuf> {
    rfd::FileDialog::new().add_filter(what, exts).pick_file()
}

fn save_file(name: &str, what: &str, ext: &str) -> Option<PathBuf> {
    rfd::FileDialog::new()
        .set_file_name(name)
        .add_filter(what, &[ext])
        .save_file()
}

fn save_color_image(img: &egui::ColorImage, path: &Path) -> Result<(), String> {
    let [w, h] = img.size;
    let bytes: Vec<u8> = img.pixels.iter().flat_map(|c| c.to_array()).collect();
    image::RgbaImage::from_raw(w as u32, h as u32, bytes)
        .ok_or_else(|| "bad screenshot buffer".to_string())?
        .save(path)
        .map_err(|e| e.to_string())
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
            Ok(Box::new(ExplorerApp::new(&cc.egui_ctx, settings, start)))
        }),
    )
    .map_err(|e| anyhow::anyhow!("could not open the window: {e}"))
}
