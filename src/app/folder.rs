//! The Folder tab: a folder of images through the model: accuracy, the confusion matrix (a cell
//! opens its images, each with its top-5 and evidence map), per-class precision and recall, the
//! most confident mistakes, feature collapse along the depth (two models on one plot), and the
//! top images of a channel (shown in the Feature maps tab).
use super::folder_jobs::{self, FolderImage, FolderView, JOB, PAGE};
use super::tab::{Tab, TabCtx};
use super::views::{FolderRunInfo, ModelView};
use super::widgets::{job_progress, pick_other_model};
use super::worker::{ImageSource, Pending, WorkerCtx};
use super::{textures, Request, Shared};
use crate::analysis::collapse::LayerCollapse;
use crate::analysis::colormap::Colormap;
use crate::base::progress::Progress;
use crate::io::engine::ModelSpec;
use egui::{Color32, Rect, RichText, Sense, TextureOptions, Vec2};
use std::path::PathBuf;

pub const NAME: &str = "Folder";

/// What the worker has sent about the folder.
#[derive(Default)]
pub struct FolderResults {
    /// The folder being run, until its results come.
    pub running: Option<PathBuf>,
    pub view: Option<FolderView>,
    /// The images of the selected cell (a page of them).
    pub images: Vec<FolderImage>,
    /// Another model's collapse over the same images.
    pub other: Option<(String, Vec<LayerCollapse>)>,
}

/// The folder jobs under way.
#[derive(Default)]
struct FolderJobs {
    run: Option<Pending<FolderView>>,
    images: Option<Pending<Vec<FolderImage>>>,
    other: Option<Pending<(String, Vec<LayerCollapse>)>>,
}

/// Which images the list on the right shows.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Listing {
    /// Labelled `truth`, predicted `predicted`.
    Cell(usize, usize),
    /// Predicted as a class (any label, or none).
    Predicted(usize),
    Mistakes,
}

#[derive(Default)]
pub struct FolderTab {
    results: FolderResults,
    jobs: FolderJobs,
    /// Counts the runs, for [`FolderRunInfo::serial`].
    runs: u64,
    path: String,
    listing: Option<Listing>,
    page: usize,
    /// What the shown images were asked for, so each is asked once.
    asked: Option<(Listing, usize)>,
    other: usize,
    /// The folder the path field was last filled from.
    shown: Option<PathBuf>,
}

impl Tab for FolderTab {
    fn name(&self) -> &'static str {
        NAME
    }

    fn poll(&mut self, ctx: &mut TabCtx) {
        self.take_results(ctx);
    }

    fn ui(&mut self, ui: &mut egui::Ui, ctx: &mut TabCtx) {
        self.controls(ui, ctx);
        ui.separator();
        let Some(view) = &self.results.view else {
            ui.label(match &self.results.running {
                Some(p) => format!("Running {}…", p.display()),
                None => "Drop a folder of images on the window, or open one above. Class sub-folders (ImageFolder) or <label>_<n> file names give labels; otherwise you get predictions.".into(),
            });
            return;
        };
        summary(ui, view);
        // The tab scrolls as a whole: the left column needs no scroll area of its own.
        ui.columns(2, |cols| {
            self.left(&mut cols[0], ctx);
            self.right(&mut cols[1], ctx);
        });
    }

    fn on_model_changed(&mut self, _model: &ModelView) {
        // A folder run belongs to the model that made it.
        self.results = FolderResults::default();
        self.listing = None;
        self.asked = None;
    }
}

impl FolderTab {
    /// What the worker has sent back so far.
    pub fn results(&self) -> &FolderResults {
        &self.results
    }

    /// Runs the model over a folder (at most `limit` images), dropping the last run's results.
    pub fn run(&mut self, ctx: &mut TabCtx, dir: PathBuf, limit: usize) {
        self.results = FolderResults {
            running: Some(dir.clone()),
            ..Default::default()
        };
        self.jobs = FolderJobs::default();
        self.listing = None;
        self.asked = None;
        ctx.shared.folder_run = None;
        let job = move |w: &mut WorkerCtx, p: &mut dyn Progress| {
            folder_jobs::folder_job(w, dir, Some(limit), p)
        };
        self.jobs.run = Some(ctx.jobs.submit(JOB, job));
    }

    /// Takes in the results that have come.
    fn take_results(&mut self, ctx: &mut TabCtx) {
        if let Some(view) = ctx.take(&mut self.jobs.run) {
            let shared = &mut *ctx.shared;
            self.runs += 1;
            shared.folder_run = Some(FolderRunInfo {
                root: view.root.clone(),
                top_layers: view.top_layers.clone(),
                serial: self.runs,
            });
            self.results = FolderResults {
                view: Some(view),
                ..Default::default()
            };
        } else if self.jobs.run.is_none() {
            // Ended without a result (failed or cancelled): nothing is running any more.
            self.results.running = None;
        }
        if let Some(images) = ctx.take(&mut self.jobs.images) {
            ctx.shared.textures.clear();
            self.results.images = images;
        }
        if let Some(other) = ctx.take(&mut self.jobs.other) {
            self.results.other = Some(other);
        }
    }

    fn controls(&mut self, ui: &mut egui::Ui, ctx: &mut TabCtx) {
        let shared = &mut *ctx.shared;
        ui.horizontal_wrapped(|ui| {
            if ui.button("Open folder…").clicked() {
                super::open_folder_dialog(shared);
            }
            // The folder on show (dropped, opened or typed) fills the field.
            let on_show = self.results.running.as_ref();
            let on_show = on_show.or(self.results.view.as_ref().map(|v| &v.root));
            if let Some(p) = on_show.or(shared.settings.last_folder.as_ref()) {
                if self.path.is_empty() || Some(p) != self.shown.as_ref() {
                    self.path = p.display().to_string();
                    self.shown = Some(p.clone());
                }
            }
            ui.add(
                egui::TextEdit::singleline(&mut self.path)
                    .hint_text("folder of images")
                    .desired_width(280.0),
            );
            ui.add(
                egui::DragValue::new(&mut shared.settings.folder_limit)
                    .range(1..=1_000_000)
                    .prefix("at most ")
                    .suffix(" images"),
            );
            let busy = shared.busy();
            let ok = !self.path.trim().is_empty() && shared.model.is_some();
            if ui
                .add_enabled(ok && !busy, egui::Button::new("Run"))
                .clicked()
            {
                let dir = PathBuf::from(self.path.trim());
                shared.settings.last_folder = Some(dir.clone());
                shared.request(Request::RunFolder(dir));
            }
            // The long jobs: the run, and another model over its images.
            if let Some(p) = &self.jobs.run {
                job_progress(ui, p);
            } else if let Some(p) = &self.jobs.other {
                job_progress(ui, p);
            }
        });
    }

    fn left(&mut self, ui: &mut egui::Ui, ctx: &mut TabCtx) {
        let shared = &mut *ctx.shared;
        let Some(view) = &self.results.view else {
            return;
        };
        let mut pick;
        if view.scores.is_some() {
            pick = confusion(ui, &mut shared.textures, view, self.listing);
            if view.eval.mistakes().is_empty() {
                ui.label(
                    "Most confident mistakes: none (every labelled image was called its own class)",
                );
            } else if ui
                .selectable_label(
                    self.listing == Some(Listing::Mistakes),
                    "Most confident mistakes",
                )
                .clicked()
            {
                pick = Some(Listing::Mistakes);
            }
            pick = top_confusions(ui, view, self.listing).or(pick);
            per_class(ui, view);
            unlabelled(ui, view);
        } else {
            pick = predicted_counts(ui, view, self.listing);
        }
        ui.separator();
        if let Some(spec) = self.collapse_controls(ui, shared) {
            let (device, dtype) = shared.settings.device_and_dtype();
            let on = (spec, device, dtype);
            let job = move |w: &mut WorkerCtx, p: &mut dyn Progress| {
                folder_jobs::other_collapse_job(w, on, p)
            };
            self.jobs.other = Some(ctx.jobs.submit(JOB, job));
        }
        if let Some(v) = &self.results.view {
            collapse_plot(ui, v, self.results.other.as_ref());
        }
        if let Some(l) = pick {
            self.listing = Some(l);
            self.page = 0;
        }
    }

    /// Picks another model (a checkpoint in `weights/` or a named variant) to compare with.
    fn collapse_controls(&mut self, ui: &mut egui::Ui, shared: &Shared) -> Option<ModelSpec> {
        let mut go = None;
        ui.horizontal(|ui| {
            let label = "Feature collapse; compare with";
            let chosen = pick_other_model(ui, label, shared, &mut self.other);
            if ui
                .add_enabled(!shared.busy(), egui::Button::new("Add to plot"))
                .clicked()
            {
                go = chosen;
            }
        });
        go
    }

    fn right(&mut self, ui: &mut egui::Ui, ctx: &mut TabCtx) {
        let Some(view) = &self.results.view else {
            return;
        };
        let Some(listing) = self.listing else {
            ui.label("Click a cell of the confusion matrix (or a class, or the mistakes) to see its images here, each with its top-5 and its evidence map.");
            return;
        };
        let indices = match listing {
            Listing::Cell(t, p) => view.eval.cell(t, p),
            Listing::Mistakes => view.eval.mistakes(),
            Listing::Predicted(c) => predicted(view, c),
        };
        let pages = indices.len().div_ceil(PAGE).max(1);
        self.page = self.page.min(pages - 1);
        ui.horizontal(|ui| {
            ui.strong(listing_title(view, listing, indices.len()));
            if ui.small_button("<").clicked() && self.page > 0 {
                self.page -= 1;
            }
            ui.label(format!("page {}/{pages}", self.page + 1));
            if ui.small_button(">").clicked() && self.page + 1 < pages {
                self.page += 1;
            }
        });
        if indices.is_empty() {
            ui.label("none");
            return;
        }
        let page: Vec<usize> = indices
            .iter()
            .skip(self.page * PAGE)
            .take(PAGE)
            .cloned()
            .collect();
        if self.asked != Some((listing, self.page)) && !page.is_empty() {
            self.asked = Some((listing, self.page));
            self.results.images.clear();
            let job =
                move |w: &mut WorkerCtx, _: &mut dyn Progress| folder_jobs::images_job(w, &page);
            self.jobs.images = Some(ctx.jobs.submit(JOB, job));
        }
        image_list(ui, ctx.shared, &self.results);
    }
}

fn summary(ui: &mut egui::Ui, view: &FolderView) {
    let mut line = format!(
        "{} images in {} · {} · {}",
        view.eval.images.len(),
        view.root.display(),
        view.model,
        view.labels_note
    );
    if let Some(s) = &view.scores {
        line += &format!(
            " · top-1 {:.2}% · top-5 {:.2}% over {} labelled",
            100.0 * s.top1,
            100.0 * s.top5,
            s.labelled
        );
    }
    ui.label(RichText::new(line).strong());
    if !view.skipped.is_empty() {
        egui::CollapsingHeader::new(format!("{} files skipped", view.skipped.len()))
            .id_salt("skipped")
            .show(ui, |ui| {
                for (p, e) in view.skipped.iter().take(200) {
                    ui.label(RichText::new(format!("{}: {e}", p.display())).small());
                }
            });
    }
}

/// The matrix as an image, rows normalised (true class → predicted); the cell clicked.
fn confusion(
    ui: &mut egui::Ui,
    tex: &mut textures::Textures,
    view: &FolderView,
    listing: Option<Listing>,
) -> Option<Listing> {
    let m = view.scores.as_ref()?.confusion.as_ref()?;
    let k = m.len();
    ui.label(
        RichText::new("Confusion (rows: true class, columns: predicted; colour: share of the row)")
            .small(),
    );
    let texture = tex.get(ui.ctx(), "confusion", TextureOptions::NEAREST, || {
        textures::rgba(&matrix_image(m))
    });
    let side = ui.available_width().min(360.0);
    let names = k <= 20;
    let label_w = if names { 90.0 } else { 0.0 };
    let (outer, resp) = ui.allocate_exact_size(Vec2::new(side + label_w, side), Sense::click());
    let rect = Rect::from_min_size(outer.min + Vec2::new(label_w, 0.0), Vec2::splat(side));
    let uv = Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0));
    ui.painter().image(texture.id(), rect, uv, Color32::WHITE);
    let cell = side / k as f32;
    let painter = ui.painter();
    for (t, row) in m.iter().enumerate() {
        if names {
            let y = rect.top() + (t as f32 + 0.5) * cell;
            painter.text(
                egui::pos2(outer.left(), y),
                egui::Align2::LEFT_CENTER,
                crate::io::labels::short(&view.labels[t]),
                egui::FontId::proportional(10.0),
                ui.visuals().text_color(),
            );
        }
        if k <= 12 {
            for (p, &n) in row.iter().enumerate() {
                let c = rect.min + Vec2::new((p as f32 + 0.5) * cell, (t as f32 + 0.5) * cell);
                // Dark digits on the bright cells, light on the dark ones.
                let share = n as f32 / row.iter().sum::<u32>().max(1) as f32;
                let ink = if share > 0.5 {
                    Color32::BLACK
                } else {
                    Color32::WHITE
                };
                let font = egui::FontId::monospace(10.0);
                painter.text(c, egui::Align2::CENTER_CENTER, n.to_string(), font, ink);
            }
        }
    }
    if let Some(Listing::Cell(t, p)) = listing {
        let r = Rect::from_min_size(
            rect.min + Vec2::new(p as f32 * cell, t as f32 * cell),
            Vec2::splat(cell),
        );
        painter.rect_stroke(
            r,
            0.0,
            egui::Stroke::new(2.0, Color32::from_rgb(255, 80, 0)),
            egui::StrokeKind::Outside,
        );
    }
    let at = |pos: egui::Pos2| -> Option<(usize, usize)> {
        let q = (pos - rect.min) / cell;
        (rect.contains(pos)).then(|| ((q.y as usize).min(k - 1), (q.x as usize).min(k - 1)))
    };
    if let Some((t, p)) = resp.hover_pos().and_then(at) {
        resp.clone().on_hover_text_at_pointer(format!(
            "{} predicted as {}: {} images",
            view.labels[t], view.labels[p], m[t][p]
        ));
    }
    let clicked = resp
        .clicked()
        .then(|| resp.interact_pointer_pos())
        .flatten();
    clicked.and_then(at).map(|(t, p)| Listing::Cell(t, p))
}

/// The largest off-diagonal cells, one click each.
fn top_confusions(
    ui: &mut egui::Ui,
    view: &FolderView,
    listing: Option<Listing>,
) -> Option<Listing> {
    let m = view.scores.as_ref()?.confusion.as_ref()?;
    let mut cells: Vec<(u32, usize, usize)> = m
        .iter()
        .enumerate()
        .flat_map(|(t, row)| row.iter().enumerate().map(move |(p, &n)| (n, t, p)))
        .filter(|&(n, t, p)| t != p && n > 0)
        .collect();
    cells.sort_by_key(|c| std::cmp::Reverse(c.0));
    let mut pick = None;
    ui.horizontal_wrapped(|ui| {
        ui.label("Largest confusions:");
        if cells.is_empty() {
            ui.label("none: every labelled image was called its own class");
        }
        let name = |c: usize| crate::io::labels::short(&view.labels[c]).to_string();
        for (n, t, p) in cells.into_iter().take(6) {
            let text = format!("{} as {} ({n})", name(t), name(p));
            let on = listing == Some(Listing::Cell(t, p));
            if ui.selectable_label(on, text).clicked() {
                pick = Some(Listing::Cell(t, p));
            }
        }
    });
    pick
}

/// One pixel per cell, each row scaled to its own total.
fn matrix_image(m: &[Vec<u32>]) -> image::RgbaImage {
    let k = m.len() as u32;
    image::RgbaImage::from_fn(k, k, |x, y| {
        let row = &m[y as usize];
        let total = row.iter().sum::<u32>().max(1) as f32;
        let [r, g, b] = Colormap::Magma.rgb(row[x as usize] as f32 / total);
        image::Rgba([r, g, b, 255])
    })
}

fn per_class(ui: &mut egui::Ui, view: &FolderView) {
    let Some(s) = &view.scores else { return };
    let pct = |v: Option<f64>| v.map_or("–".into(), |v| format!("{:.1}%", 100.0 * v));
    egui::CollapsingHeader::new("Per class: images, precision, recall")
        .default_open(s.per_class.len() <= 20)
        .show(ui, |ui| {
            egui::ScrollArea::vertical()
                .id_salt("per class")
                .max_height(260.0)
                .show(ui, |ui| {
                    egui::Grid::new("per class grid")
                        .striped(true)
                        .num_columns(4)
                        .show(ui, |ui| {
                            for h in ["class", "images", "precision", "recall"] {
                                ui.strong(h);
                            }
                            ui.end_row();
                            for c in &s.per_class {
                                ui.label(crate::io::labels::short(&c.label));
                                ui.monospace(format!("{:>6}", c.support));
                                ui.monospace(format!("{:>7}", pct(c.precision)));
                                ui.monospace(format!("{:>7}", pct(c.recall)));
                                ui.end_row();
                            }
                        });
                });
        });
}

/// The images the folder's layout gives no label: they count in no score, so name them.
fn unlabelled(ui: &mut egui::Ui, view: &FolderView) {
    let names: Vec<String> = view
        .eval
        .images
        .iter()
        .filter(|r| r.label.is_none())
        .map(|r| crate::base::text::file_label(&r.path))
        .collect();
    if names.is_empty() {
        return;
    }
    let shown = names
        .iter()
        .take(20)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    let more = names.len().saturating_sub(20);
    let tail = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    ui.label(format!(
        "{} images without a label (in no score above): {shown}{tail}",
        names.len()
    ));
}

/// Without labels: how many images each class got; a click lists them.
fn predicted_counts(
    ui: &mut egui::Ui,
    view: &FolderView,
    listing: Option<Listing>,
) -> Option<Listing> {
    let mut counts = vec![0usize; view.labels.len()];
    for r in &view.eval.images {
        if let Some(c) = counts.get_mut(r.predicted()) {
            *c += 1;
        }
    }
    let mut order: Vec<usize> = (0..counts.len()).filter(|&c| counts[c] > 0).collect();
    order.sort_by(|&a, &b| counts[b].cmp(&counts[a]));
    ui.label("Predicted classes (no labels in this folder):");
    let mut pick = None;
    for c in order.into_iter().take(30) {
        let text = format!(
            "{:>5}  {}",
            counts[c],
            crate::io::labels::short(&view.labels[c])
        );
        if ui
            .selectable_label(
                listing == Some(Listing::Predicted(c)),
                RichText::new(text).monospace(),
            )
            .clicked()
        {
            pick = Some(Listing::Predicted(c));
        }
    }
    pick
}

fn predicted(view: &FolderView, c: usize) -> Vec<usize> {
    (0..view.eval.images.len())
        .filter(|&i| view.eval.images[i].predicted() == c)
        .collect()
}

fn listing_title(view: &FolderView, l: Listing, n: usize) -> String {
    let name = |c: usize| crate::io::labels::short(&view.labels[c]).to_string();
    match l {
        Listing::Cell(t, p) if t == p => format!("{} correctly called {}", n, name(t)),
        Listing::Cell(t, p) => format!("{n} {} called {}", name(t), name(p)),
        Listing::Predicted(c) => format!("{n} called {}", name(c)),
        Listing::Mistakes => format!("{n} mistakes, most confident first"),
    }
}

/// The page of images: what the network saw, the evidence for its top class, the top-5.
fn image_list(ui: &mut egui::Ui, shared: &mut Shared, results: &FolderResults) {
    if results.images.is_empty() {
        super::widgets::busy(ui);
        return;
    }
    let mut open = None;
    egui::ScrollArea::vertical()
        .id_salt("folder images")
        .show(ui, |ui| {
            for img in &results.images {
                ui.horizontal(|ui| {
                    let ctx = ui.ctx().clone();
                    let key = |k: &str| format!("folder:{k}:{}", img.index);
                    let opts = TextureOptions::LINEAR;
                    let input = shared
                        .textures
                        .get(&ctx, &key("in"), opts, || textures::rgb(&img.input));
                    ui.add(egui::Image::new((input.id(), Vec2::splat(72.0))));
                    let ev = shared
                        .textures
                        .get(&ctx, &key("ev"), opts, || textures::rgba(&img.evidence));
                    ui.add(egui::Image::new((ev.id(), Vec2::splat(72.0))))
                        .on_hover_text("evidence for the top class (red for, blue against)");
                    ui.vertical(|ui| {
                        for (label, p) in &img.top5 {
                            ui.label(
                                RichText::new(format!(
                                    "{:5.1}%  {}",
                                    100.0 * p,
                                    crate::io::labels::short(label)
                                ))
                                .small()
                                .monospace(),
                            );
                        }
                        if ui
                            .small_button("open")
                            .on_hover_text("Open in the Feature maps tab")
                            .clicked()
                        {
                            open = results
                                .view
                                .as_ref()
                                .map(|v| v.eval.images[img.index].path.clone());
                        }
                    });
                });
            }
        });
    if let Some(p) = open {
        shared.request(Request::OpenImage(ImageSource::Path(p)));
        shared.settings.tab = super::features::NAME.into();
    }
}

/// Distance against normalised depth, for this model and the one compared with.
fn collapse_plot(
    ui: &mut egui::Ui,
    view: &FolderView,
    other: Option<&(String, Vec<LayerCollapse>)>,
) {
    use egui_plot::{Legend, Line, Plot, PlotPoints, Points};
    let curve = |c: &[LayerCollapse]| -> Vec<[f64; 2]> {
        c.iter().map(|l| [l.depth, l.distance]).collect()
    };
    ui.label("How different a layer's channels are from one another, along the depth (feature collapse: a distance near 0 means the channels have become copies of each other, as ConvNeXt V2's GRN was made to prevent).");
    Plot::new("collapse")
        .height(240.0)
        .x_axis_label("normalised depth")
        .y_axis_label("feature cosine distance")
        .legend(Legend::default().position(egui_plot::Corner::RightBottom))
        .show(ui, |plot| {
            plot.line(Line::new(
                view.model.clone(),
                PlotPoints::from(curve(&view.collapse)),
            ));
            plot.points(
                Points::new(view.model.clone(), PlotPoints::from(curve(&view.collapse)))
                    .radius(2.5),
            );
            if let Some((name, c)) = other {
                plot.line(Line::new(name.clone(), PlotPoints::from(curve(c))));
                plot.points(Points::new(name.clone(), PlotPoints::from(curve(c))).radius(2.5));
            }
        });
}
