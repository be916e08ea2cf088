//! The Compare tab: two models on the same image, or one model on two images, side by side:
//! predictions, the same layer's channels, the channel picked shown large, and layer scale.
//! One selection (layer, page, channel) drives both sides. Two more views measure the
//! difference: layer similarity (CKA over a folder, [`super::compare_cka`]) and what changed
//! between two checkpoints' weights ([`super::compare_diff`]).
use super::compare_cka::{self, CkaOutcome};
use super::compare_diff::{self, DiffOutcome};
use super::tab::{Tab, TabCtx};
use super::textures::{self, Textures};
use super::views::{model_view, run_image};
use super::widgets::{job_progress, other_models, pick_other_model};
use super::worker::{ImageSource, Pending, WorkerCtx};
use super::{heatmap, strip, ModelView, RunView, Shared};
use crate::analysis::grid::{self, GridLayout, Scale};
use crate::analysis::stats::FeatureMap;
use crate::base::device::{parse_device, parse_dtype};
use crate::base::progress::Progress;
use crate::io::engine::{Engine, ModelSpec};
use crate::model::layer_id::LayerId;
use egui::{Color32, Rect, RichText, Sense, TextureOptions, Vec2};
use std::path::PathBuf;
use std::sync::Arc;

/// What the Compare tab sets beside the current model and image.
#[derive(Clone)]
pub enum CompareWith {
    Model(ModelSpec),
    Image(ImageSource),
}

/// The Compare tab's three views.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CompareView {
    #[default]
    SideBySide,
    Similarity,
    Changes,
}

/// A CKA matrix, and the other model's run on the current image (for a clicked cell's layers).
pub struct CkaDone {
    pub outcome: CkaOutcome,
    pub other: Option<(ModelView, RunView)>,
}

#[derive(Default)]
pub struct CompareTab {
    pub view: CompareView,
    cka: Option<CkaDone>,
    cka_pending: Option<Pending<CkaDone>>,
    /// The CKA cell picked: (A's layer, B's layer), as indices of the outcome's lists.
    cell: Option<(usize, usize)>,
    /// CKA of the current model with itself rather than with the model picked.
    itself: bool,
    diff: Option<DiffOutcome>,
    diff_pending: Option<Pending<DiffOutcome>>,
    /// The checkpoint file picked for the diff, as an index of the files listed.
    diff_file: usize,
    /// The other side: its model and its run.
    other: Option<(ModelView, RunView)>,
    pending: Option<Pending<(ModelView, RunView)>>,
    /// 0: another model, 1: another image.
    mode: usize,
    model: usize,
    image: usize,
    /// What the right side was last asked for, re-asked when the left side changes.
    with: Option<CompareWith>,
    seen: Option<(u64, String)>,
}

impl Tab for CompareTab {
    fn name(&self) -> &'static str {
        "Compare"
    }

    fn poll(&mut self, ctx: &mut TabCtx) {
        if let Some(other) = ctx.take(&mut self.pending) {
            ctx.shared.textures.clear();
            self.other = Some(other);
        }
        if let Some(done) = ctx.take(&mut self.cka_pending) {
            self.cell = None;
            self.cka = Some(done);
        }
        if let Some(done) = ctx.take(&mut self.diff_pending) {
            self.diff = Some(done);
        }
    }

    /// The side-by-side view stays, and follows a new model on the left; the measurements
    /// were the old model's.
    fn on_model_changed(&mut self, _model: &ModelView) {
        (self.cka, self.cell, self.diff) = (None, None, None);
    }

    fn ui(&mut self, ui: &mut egui::Ui, ctx: &mut TabCtx) {
        ui.horizontal(|ui| {
            ui.selectable_value(&mut self.view, CompareView::SideBySide, "side by side");
            ui.selectable_value(
                &mut self.view,
                CompareView::Similarity,
                "layer similarity (CKA)",
            );
            ui.selectable_value(
                &mut self.view,
                CompareView::Changes,
                "what changed (weights)",
            );
        });
        ui.separator();
        match self.view {
            CompareView::SideBySide => self.side_by_side(ui, ctx),
            CompareView::Similarity => self.similarity(ui, ctx),
            CompareView::Changes => self.changes(ui, ctx),
        }
    }
}

impl CompareTab {
    fn side_by_side(&mut self, ui: &mut egui::Ui, ctx: &mut TabCtx) {
        self.controls(ui, ctx);
        self.follow(ctx);
        let shared = &mut *ctx.shared;
        let (Some(model), Some(run)) = (&shared.model, &shared.run) else {
            ui.label("Open an image first: the comparison is of what the network does with it.");
            return;
        };
        let Some((other_model, other_run)) = &self.other else {
            ui.label("Pick another model (the same image through both) or another image (the same model on both), then Show side by side.");
            return;
        };
        let depths = model.plan.depths();
        if let Some(id) = strip::layer_strip(ui, &depths, shared.selection.layer, |id| id.name()) {
            shared.selection.layer = Some(id);
            shared.selection.channel = None;
        }
        let layer = shared.selection.layer.unwrap_or(LayerId::Stem);
        let mut pick = None;
        let channel = shared.selection.channel;
        let tex = &mut shared.textures;
        ui.columns(2, |cols| {
            pick = side(&mut cols[0], tex, "a", model, run, layer, channel).or(pick);
            pick = side(
                &mut cols[1],
                tex,
                "b",
                other_model,
                other_run,
                layer,
                channel,
            )
            .or(pick);
        });
        if pick.is_some() {
            shared.selection.channel = pick;
        }
        layer_scale(ui, model, other_model);
    }

    /// The other side, once it has come: its model and its run.
    pub fn other(&self) -> Option<&(ModelView, RunView)> {
        self.other.as_ref()
    }

    fn controls(&mut self, ui: &mut egui::Ui, ctx: &mut TabCtx) {
        let images = super::sample_images();
        let mut model = None;
        ui.horizontal_wrapped(|ui| {
            ui.selectable_value(&mut self.mode, 0, "another model");
            ui.selectable_value(&mut self.mode, 1, "another image");
            ui.separator();
            if self.mode == 0 {
                model = pick_other_model(ui, "model", ctx.shared, &mut self.model);
            } else {
                self.image = self.image.min(images.len().saturating_sub(1));
                let name = |i: usize| {
                    images
                        .get(i)
                        .map(|p| crate::base::text::file_label(p))
                        .unwrap_or_default()
                };
                egui::ComboBox::from_id_salt("compare image")
                    .selected_text(name(self.image))
                    .show_ui(ui, |ui| {
                        for i in 0..images.len() {
                            ui.selectable_value(&mut self.image, i, name(i));
                        }
                    });
            }
            let ready = ctx.shared.run.is_some() && !ctx.shared.busy();
            if ui
                .add_enabled(ready, egui::Button::new("Show side by side"))
                .clicked()
            {
                let with = match self.mode {
                    0 => model.clone().map(CompareWith::Model),
                    _ => images
                        .get(self.image)
                        .cloned()
                        .map(|p| CompareWith::Image(ImageSource::Path(p))),
                };
                if let Some(w) = with {
                    self.ask(ctx, w);
                }
            }
            if let Some(p) = &self.pending {
                job_progress(ui, p);
            }
        });
    }

    fn similarity(&mut self, ui: &mut egui::Ui, ctx: &mut TabCtx) {
        let folder = super::widgets::image_set(ctx.shared);
        let mut other = None;
        ui.horizontal_wrapped(|ui| {
            ui.checkbox(&mut self.itself, "this model against itself");
            if !self.itself {
                other = pick_other_model(ui, "against", ctx.shared, &mut self.model);
            }
            ui.label(format!(
                "over the first {} images of {}",
                compare_cka::LIMIT,
                folder.display()
            ));
            let ready = ctx.shared.model.is_some() && self.cka_pending.is_none();
            if ui
                .add_enabled(ready, egui::Button::new("Compute CKA"))
                .clicked()
            {
                let with = if self.itself { None } else { other.clone() };
                if self.itself || with.is_some() {
                    self.ask_cka(ctx, with, folder.clone());
                }
            }
            if let Some(p) = &self.cka_pending {
                job_progress(ui, p);
            }
        });
        let Some(done) = &self.cka else {
            ui.label("Pick the other model (or this one against itself), then Compute CKA: it runs both models over the folder the Folder tab ran, or the samples.");
            return;
        };
        // The tab scrolls as a whole: no scroll area of its own.
        let clicked = compare_cka::view(ui, &done.outcome, self.cell);
        self.cell_layers(ui, ctx.shared);
        if clicked.is_some() {
            self.cell = clicked;
        }
    }

    /// The clicked cell's two layers, side by side on the current image.
    fn cell_layers(&self, ui: &mut egui::Ui, shared: &mut Shared) {
        let (Some(done), Some((i, j))) = (&self.cka, self.cell) else {
            ui.label("Click a cell to see those two layers' channels side by side.");
            return;
        };
        let (Some(model), Some(run), Some((om, or))) = (&shared.model, &shared.run, &done.other)
        else {
            ui.label("Open an image to see the two layers' channels.");
            return;
        };
        let (la, lb) = (done.outcome.la[i], done.outcome.lb[j]);
        ui.separator();
        let channel = shared.selection.channel;
        let tex = &mut shared.textures;
        let mut pick = None;
        ui.columns(2, |cols| {
            pick = side(&mut cols[0], tex, "ckaa", model, run, la, channel).or(pick);
            pick = side(&mut cols[1], tex, "ckab", om, or, lb, channel).or(pick);
        });
        if pick.is_some() {
            shared.selection.channel = pick;
        }
    }

    /// CKA of the current model with `other` (itself when `None`) over `folder`.
    pub fn ask_cka(&mut self, ctx: &mut TabCtx, other: Option<ModelSpec>, folder: PathBuf) {
        let on = ctx.shared.settings.device_and_dtype();
        let job = move |w: &mut WorkerCtx, p: &mut dyn Progress| cka_job(w, other, on, &folder, p);
        self.cka_pending = Some(ctx.jobs.submit("CKA", job));
    }

    /// Picks a CKA cell (A's layer `i`, B's layer `j`), as a click on the heat map does.
    pub fn pick_cell(&mut self, i: usize, j: usize) {
        self.cell = Some((i, j));
    }

    /// The CKA matrix on show, once it has come.
    pub fn cka(&self) -> Option<&CkaDone> {
        self.cka.as_ref()
    }

    fn changes(&mut self, ui: &mut egui::Ui, ctx: &mut TabCtx) {
        let Some(ModelSpec::Weights(a)) = ctx.shared.model.as_ref().map(|m| m.spec.clone()) else {
            ui.label("What changed compares two checkpoint files: open a model from a file (this one has random weights).");
            return;
        };
        // Only files have weights to compare: the named variants are left out.
        let files: Vec<PathBuf> = other_models(ctx.shared)
            .into_iter()
            .filter_map(|m| match m {
                ModelSpec::Weights(p) if p != a => Some(p),
                _ => None,
            })
            .collect();
        ui.horizontal_wrapped(|ui| {
            ui.label(format!("From {} to", crate::base::text::file_label(&a)));
            if files.is_empty() {
                ui.label("none: no other checkpoint file is listed (put one in weights/, or download one)");
            }
            self.diff_file = self.diff_file.min(files.len().saturating_sub(1));
            let name = |i: usize| files.get(i).map(|p| p.display().to_string()).unwrap_or_default();
            if !files.is_empty() {
                let lbl = ui.label("checkpoint");
                egui::ComboBox::from_id_salt("diff file")
                    .selected_text(name(self.diff_file))
                    .show_ui(ui, |ui| {
                        for i in 0..files.len() {
                            ui.selectable_value(&mut self.diff_file, i, name(i));
                        }
                    })
                    .response
                    .labelled_by(lbl.id);
            }
            let file = files.get(self.diff_file).cloned();
            let ready = file.is_some() && self.diff_pending.is_none();
            if ui
                .add_enabled(ready, egui::Button::new("Compare weights"))
                .clicked()
            {
                if let Some(b) = file {
                    self.ask_diff(ctx, a.clone(), b);
                }
            }
            if let Some(p) = &self.diff_pending {
                job_progress(ui, p);
            }
        });
        match &self.diff {
            Some(d) => compare_diff::view(ui, d),
            None => {
                ui.label("Pick another checkpoint file (a fine-tuned copy, the next roadmap step, another training run), then Compare weights.");
            }
        }
    }

    /// What changed from checkpoint `a` to `b`.
    pub fn ask_diff(&mut self, ctx: &mut TabCtx, a: PathBuf, b: PathBuf) {
        let job = move |_: &mut WorkerCtx, _: &mut dyn Progress| {
            let diff = crate::analysis::diff::diff_files(&a, &b)?;
            Ok(DiffOutcome { diff, a, b })
        };
        self.diff_pending = Some(ctx.jobs.submit("The weights' diff", job));
    }

    /// The diff on show, once it has come.
    pub fn diff(&self) -> Option<&DiffOutcome> {
        self.diff.as_ref()
    }

    /// Shows `with` on the right, beside the current model and image.
    pub fn ask(&mut self, ctx: &mut TabCtx, with: CompareWith) {
        self.seen = Some(left_side(ctx.shared));
        self.with = Some(with.clone());
        let on = ctx.shared.settings.device_and_dtype();
        let job = move |w: &mut WorkerCtx, _: &mut dyn Progress| compare(w, with, on);
        self.pending = Some(ctx.jobs.submit("The comparison", job));
    }

    /// A new image (for two models) or a new model (for two images) on the left: the right
    /// side follows.
    fn follow(&mut self, ctx: &mut TabCtx) {
        let (Some(with), Some(seen)) = (&self.with, &self.seen) else {
            return;
        };
        let shared = &ctx.shared;
        if shared.run.is_none() || shared.busy() || *seen == left_side(shared) {
            return;
        }
        let with = with.clone();
        self.ask(ctx, with);
    }
}

/// The other model of a comparison, kept on the worker while it is compared with.
struct OtherModel {
    spec: ModelSpec,
    on: (String, String),
    engine: Engine,
}

/// Runs the other side on the worker: another model (loaded once, then kept) on the current
/// image, or this model on another image.
fn compare(
    w: &mut WorkerCtx,
    with: CompareWith,
    on: (String, String),
) -> anyhow::Result<(ModelView, RunView)> {
    match with {
        CompareWith::Model(spec) => {
            keep_other(w, spec, on)?;
            let (src, img) = w
                .image()
                .ok_or_else(|| anyhow::anyhow!("open an image first"))?;
            let other = other_engine(w)?;
            let view = model_view(&other.engine, other.spec.clone())?;
            Ok((view, run_image(&other.engine, src, img)?))
        }
        CompareWith::Image(src) => {
            w.take_kept::<OtherModel>();
            let img = src.decode()?;
            let engine = w.engine()?;
            let view = model_view(engine, w.spec()?)?;
            Ok((view, run_image(engine, &src, &img)?))
        }
    }
}

/// Builds the other model on the worker unless it is kept there already.
fn keep_other(w: &mut WorkerCtx, spec: ModelSpec, on: (String, String)) -> anyhow::Result<()> {
    let kept = w.kept::<OtherModel>();
    if !kept.is_some_and(|o| o.spec == spec && o.on == on) {
        // The old one goes first: two large models need not fit at once.
        w.take_kept::<OtherModel>();
        let engine = Engine::build(&spec, &parse_device(&on.0)?, parse_dtype(&on.1)?)?;
        w.keep(OtherModel { spec, on, engine });
    }
    Ok(())
}

fn other_engine(w: &WorkerCtx) -> anyhow::Result<&OtherModel> {
    w.kept::<OtherModel>()
        .ok_or_else(|| anyhow::anyhow!("the other model was not kept"))
}

/// CKA of the current model with `other` (itself when `None`) over `folder`, and the other
/// model's run on the current image, so that a clicked cell can show both layers.
fn cka_job(
    w: &mut WorkerCtx,
    other: Option<ModelSpec>,
    on: (String, String),
    folder: &std::path::Path,
    progress: &mut dyn Progress,
) -> anyhow::Result<CkaDone> {
    let spec = w.spec()?;
    if let Some(o) = &other {
        keep_other(w, o.clone(), on)?;
    }
    let a = w.engine()?;
    let (b, b_spec) = match &other {
        Some(_) => {
            let k = other_engine(w)?;
            (&k.engine, k.spec.clone())
        }
        None => (a, spec.clone()),
    };
    let outcome = compare_cka::compute((a, spec.label()), (b, b_spec.label()), folder, progress)?;
    let other = match w.image() {
        Some((src, img)) => Some((model_view(b, b_spec)?, run_image(b, src, img)?)),
        None => None,
    };
    Ok(CkaDone { outcome, other })
}

/// What the left side shows: the run and the model.
fn left_side(shared: &Shared) -> (u64, String) {
    let model = shared
        .model
        .as_ref()
        .map(|m| m.spec.to_string())
        .unwrap_or_default();
    (shared.run_serial, model)
}

/// One side: the model and image, the top-5, the layer's channels; returns a channel clicked.
fn side(
    ui: &mut egui::Ui,
    tex: &mut Textures,
    key: &str,
    model: &ModelView,
    run: &RunView,
    layer: LayerId,
    channel: Option<usize>,
) -> Option<usize> {
    ui.label(RichText::new(format!("{} · {}", model.spec.label(), run.name)).strong());
    ui.horizontal(|ui| {
        let input = tex.get(ui.ctx(), &run.texture_key(), TextureOptions::LINEAR, || {
            textures::rgb(&run.input)
        });
        ui.add(egui::Image::new((input.id(), Vec2::splat(72.0))));
        ui.vertical(|ui| {
            for p in run.top.iter().take(5) {
                ui.label(
                    RichText::new(format!(
                        "{:5.1}%  {}",
                        100.0 * p.prob,
                        crate::io::labels::short(&p.label)
                    ))
                    .monospace()
                    .small(),
                );
            }
        });
    });
    let Some((_, fm)) = run.maps.iter().find(|(id, _)| *id == layer) else {
        ui.label(format!("{} has no layer {layer}", model.spec.label()));
        return None;
    };
    ui.label(
        RichText::new(format!(
            "{layer}: {} channels · {}×{} (first 64, by index)",
            fm.channels, fm.height, fm.width
        ))
        .small(),
    );
    let picked = channel_grid(ui, tex, &format!("{key}:{layer}"), fm, channel);
    if let Some(c) = channel.filter(|&c| c < fm.channels) {
        let w = ui.available_width().min(220.0);
        let fm2 = fm.clone();
        let make = move || {
            grid::channel_image(
                &fm2,
                c,
                Scale::PerChannel.for_map(&fm2),
                crate::analysis::colormap::Colormap::Viridis,
            )
        };
        heatmap::over_input(
            ui,
            tex,
            heatmap::Base::of(run),
            &format!("cmp:{key}:large:{layer}:{c}"),
            make,
            w,
            0.6,
        );
        ui.label(
            RichText::new(format!(
                "channel {c}: min {:.3} · max {:.3} · mean {:.3}",
                fm.stats[c].min, fm.stats[c].max, fm.stats[c].mean
            ))
            .small(),
        );
    }
    picked
}

fn channel_grid(
    ui: &mut egui::Ui,
    tex: &mut Textures,
    key: &str,
    fm: &Arc<FeatureMap>,
    channel: Option<usize>,
) -> Option<usize> {
    let channels: Vec<usize> = (0..fm.channels.min(64)).collect();
    let zoom = (64 / fm.height.max(fm.width).max(1)).clamp(1, 16);
    let layout = GridLayout::for_count(channels.len(), zoom, 1);
    let t = tex.get(
        ui.ctx(),
        &format!("cmp:{key}:grid"),
        TextureOptions::NEAREST,
        || {
            textures::rgba(&grid::render_grid(
                fm,
                &channels,
                layout,
                Scale::PerChannel.for_map(fm),
                crate::analysis::colormap::Colormap::Viridis,
            ))
        },
    );
    let px = t.size_vec2();
    let fit = (ui.available_width() / px.x).min(260.0 / px.y);
    let (rect, resp) = ui.allocate_exact_size(px * fit, Sense::click());
    let uv = Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0));
    ui.painter().image(t.id(), rect, uv, Color32::WHITE);
    if let Some(c) = channel.filter(|c| channels.contains(c)) {
        let (x, y) = layout.cell_origin(fm, c);
        let (cw, ch) = layout.cell_px(fm);
        let r = Rect::from_min_size(
            rect.min + Vec2::new(x as f32, y as f32) * fit,
            Vec2::new(cw as f32, ch as f32) * fit,
        );
        ui.painter().rect_stroke(
            r.expand(1.0),
            0.0,
            egui::Stroke::new(2.0, Color32::from_rgb(255, 80, 0)),
            egui::StrokeKind::Outside,
        );
    }
    let at = |pos: egui::Pos2| {
        let p = (pos - rect.min) / fit;
        layout.cell_at(fm, p.x.max(0.0) as usize, p.y.max(0.0) as usize)
    };
    let clicked = resp
        .clicked()
        .then(|| resp.interact_pointer_pos())
        .flatten();
    clicked.and_then(at).filter(|&c| c < channels.len())
}

/// Mean |γ| per block (V1 layer scale, or V2 GRN's γ) of both models along their depth.
fn layer_scale(ui: &mut egui::Ui, a: &ModelView, b: &ModelView) {
    use egui_plot::{Legend, Line, Plot, PlotPoints};
    let curve = |m: &ModelView| -> Vec<[f64; 2]> {
        let means: Vec<f64> = if m.gammas.is_empty() {
            m.grn.iter().map(|(_, _, g, _)| mean_abs(g)).collect()
        } else {
            m.gammas.iter().map(|(_, _, g)| mean_abs(g)).collect()
        };
        let n = means.len().saturating_sub(1).max(1) as f64;
        means
            .iter()
            .enumerate()
            .map(|(i, &v)| [i as f64 / n, v])
            .collect()
    };
    ui.separator();
    ui.label(
        RichText::new("Mean |γ| per block along the depth (layer scale; GRN γ for V2)").small(),
    );
    Plot::new("compare gamma")
        .height(ui.available_height().clamp(100.0, 180.0))
        .legend(Legend::default())
        .x_axis_label("normalised depth")
        .show(ui, |plot| {
            plot.line(Line::new(
                format!("{} (left)", a.spec.label()),
                PlotPoints::from(curve(a)),
            ));
            plot.line(Line::new(
                format!("{} (right)", b.spec.label()),
                PlotPoints::from(curve(b)),
            ));
        });
}

fn mean_abs(v: &[f32]) -> f64 {
    v.iter().map(|x| x.abs() as f64).sum::<f64>() / v.len().max(1) as f64
}
