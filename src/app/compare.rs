//! The Compare tab: two models on the same image, or one model on two images, side by side:
//! predictions, the same layer's channels, the channel picked shown large, and layer scale.
//! One selection (layer, page, channel) drives both sides.
use super::tab::{Tab, TabCtx};
use super::textures::{self, Textures};
use super::views::{model_view, run_image};
use super::widgets::{job_progress, pick_other_model};
use super::worker::{ImageSource, Pending, WorkerCtx};
use super::{heatmap, strip, ModelView, RunView, Shared};
use crate::analysis::grid::{self, GridLayout, Scale};
use crate::analysis::stats::FeatureMap;
use crate::base::device::{parse_device, parse_dtype};
use crate::base::progress::Progress;
use crate::io::engine::{Engine, ModelSpec};
use crate::model::layer_id::LayerId;
use egui::{Color32, Rect, RichText, Sense, TextureOptions, Vec2};
use std::sync::Arc;

/// What the Compare tab sets beside the current model and image.
#[derive(Clone)]
pub enum CompareWith {
    Model(ModelSpec),
    Image(ImageSource),
}

#[derive(Default)]
pub struct CompareTab {
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

    // No `on_model_changed`: the other side stays, and follows a new model on the left.
    fn poll(&mut self, ctx: &mut TabCtx) {
        if let Some(other) = ctx.take(&mut self.pending) {
            ctx.shared.textures.clear();
            self.other = Some(other);
        }
    }

    fn ui(&mut self, ui: &mut egui::Ui, ctx: &mut TabCtx) {
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
}

impl CompareTab {
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
                model = pick_other_model(ui, "compare model", ctx.shared, &mut self.model);
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

    /// Shows `with` on the right, beside the current model and image.
    pub fn ask(&mut self, ctx: &mut TabCtx, with: CompareWith) {
        self.seen = Some(left_side(ctx.shared));
        self.with = Some(with.clone());
        let (device, dtype) = (&ctx.shared.settings.device, &ctx.shared.settings.dtype);
        let on = (device.clone(), dtype.clone());
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
    (device, dtype): (String, String),
) -> anyhow::Result<(ModelView, RunView)> {
    match with {
        CompareWith::Model(spec) => {
            let on = (device, dtype);
            let kept = w.kept::<OtherModel>();
            if !kept.is_some_and(|o| o.spec == spec && o.on == on) {
                // The old one goes first: two large models need not fit at once.
                w.take_kept::<OtherModel>();
                let engine = Engine::build(&spec, &parse_device(&on.0)?, parse_dtype(&on.1)?)?;
                w.keep(OtherModel { spec, on, engine });
            }
            let (src, img) = w
                .image()
                .ok_or_else(|| anyhow::anyhow!("open an image first"))?;
            let other = w
                .kept::<OtherModel>()
                .ok_or_else(|| anyhow::anyhow!("the other model was not kept"))?;
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
        let input = tex.get(
            ui.ctx(),
            &format!("cmp:{key}:input"),
            TextureOptions::NEAREST,
            || textures::rgb(&run.input),
        );
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
                Scale::PerChannel,
                crate::analysis::colormap::Colormap::Viridis,
            )
        };
        heatmap::over_input(
            ui,
            tex,
            &run.input,
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
                Scale::PerChannel,
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
