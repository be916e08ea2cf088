//! The Faithfulness tab: which map to believe. Every attribution method's map of the current
//! image at one layer, each with its deletion and insertion curves and their areas, beside a
//! random map and the whole-image baseline for scale; the randomisation sanity check of one
//! method as a strip of maps; and the methods ranked over a folder.
use super::tab::{Tab, TabCtx};
use super::views::ModelView;
use super::widgets::job_progress;
use super::worker::{Pending, WorkerCtx};
use super::{heatmap, strip, textures, RunView, Shared};
use crate::analysis::attribution::{self, Method};
use crate::analysis::colormap::Colormap;
use crate::analysis::faithfulness::{self, Curves, Map};
use crate::analysis::grid;
use crate::analysis::sanity::{self, SanityStep};
use crate::base::progress::Progress;
use crate::model::layer_id::LayerId;
use egui::{RichText, Vec2};
use egui_plot::{Legend, Line, Plot, PlotPoints};
use std::path::PathBuf;

use crate::analysis::attribution::COMPARED as METHODS;

/// One row: a map of the current image and its curves.
pub struct Row {
    pub name: String,
    pub map: Vec<f32>,
    pub size: (usize, usize),
    pub curves: Curves,
}

/// Under a map that is zero everywhere (HiResCAM before a LayerNorm): an empty picture is
/// a result, and says so.
pub const ZERO_MAP: &str = "zero everywhere: no evidence at this layer";
const ZERO_MAP_WHY: &str = "Every position's value is 0, so the pixels are removed in reading order and the curves are the whole image's. HiResCAM (Σ gradient × activation) is exactly zero before a per-position LayerNorm (a stage's output, a block's depthwise conv): the score does not change when a position's activations are scaled. Try a layer inside a block (mlp.act) or the last stage.";

/// Every method's row, then the two rows that give the numbers a scale.
pub struct Comparison {
    pub layer: LayerId,
    pub rows: Vec<Row>,
}

use crate::analysis::faithfulness::MethodScore as Ranked;

#[derive(Default)]
pub struct FaithfulnessTab {
    layer: Option<LayerId>,
    comparison: Option<Comparison>,
    pending: Option<Pending<Comparison>>,
    /// The method the sanity check runs on, an index of [`METHODS`].
    sanity_method: usize,
    sanity: Option<(String, Vec<SanityStep>)>,
    sanity_pending: Option<Pending<(String, Vec<SanityStep>)>>,
    ranking: Option<(PathBuf, Vec<Ranked>)>,
    ranking_pending: Option<Pending<(PathBuf, Vec<Ranked>)>>,
}

impl Tab for FaithfulnessTab {
    fn name(&self) -> &'static str {
        "Faithfulness"
    }

    fn poll(&mut self, ctx: &mut TabCtx) {
        if let Some(c) = ctx.take(&mut self.pending) {
            ctx.shared.textures.clear();
            self.comparison = Some(c);
        }
        if let Some(s) = ctx.take(&mut self.sanity_pending) {
            ctx.shared.textures.clear();
            self.sanity = Some(s);
        }
        if let Some(r) = ctx.take(&mut self.ranking_pending) {
            self.ranking = Some(r);
        }
    }

    fn ui(&mut self, ui: &mut egui::Ui, ctx: &mut TabCtx) {
        ui.label("Which of the maps to believe: each method's map of this image, and how fast the class's probability falls as its most important pixels are removed (deletion: lower area is better) or rises as they are put back into a blurred image (insertion: higher is better). A random map and the whole image in reading order give the numbers a scale.");
        let (Some(model), Some(_)) = (&ctx.shared.model, &ctx.shared.run) else {
            ui.label("Open an image first.");
            return;
        };
        let layer = *self.layer.get_or_insert(model.explain_layer().0);
        let depths = model.plan.depths();
        if let Some(id) = strip::layer_strip(ui, &depths, Some(layer), |id| id.name()) {
            self.layer = Some(id);
        }
        self.controls(ui, ctx, layer);
        ui.separator();
        self.rows(ui, ctx.shared);
        ui.separator();
        self.sanity_ui(ui, ctx, layer);
        ui.separator();
        self.ranking_ui(ui, ctx, layer);
    }

    fn on_model_changed(&mut self, _model: &ModelView) {
        (self.layer, self.comparison, self.sanity, self.ranking) = (None, None, None, None);
    }

    fn on_new_run(&mut self, _run: &RunView) {
        (self.comparison, self.sanity) = (None, None);
    }
}

impl FaithfulnessTab {
    /// The comparison on show, once it has come.
    pub fn comparison(&self) -> Option<&Comparison> {
        self.comparison.as_ref()
    }

    /// The sanity check on show: the method and its steps.
    pub fn sanity(&self) -> Option<&(String, Vec<SanityStep>)> {
        self.sanity.as_ref()
    }

    /// The folder ranking on show.
    pub fn ranking(&self) -> Option<&(PathBuf, Vec<Ranked>)> {
        self.ranking.as_ref()
    }

    fn controls(&mut self, ui: &mut egui::Ui, ctx: &mut TabCtx, layer: LayerId) {
        ui.horizontal(|ui| {
            let ready = self.pending.is_none();
            if ui
                .add_enabled(
                    ready,
                    egui::Button::new(format!("Compare the methods at {layer}")),
                )
                .clicked()
            {
                self.compare(ctx, layer);
            }
            if let Some(p) = &self.pending {
                job_progress(ui, p);
            }
        });
    }

    /// Every method's map and curves for the current image at `layer`, on the worker.
    pub fn compare(&mut self, ctx: &mut TabCtx, layer: LayerId) {
        let class = ctx.shared.selection.class;
        let job = move |w: &mut WorkerCtx, p: &mut dyn Progress| compare_job(w, layer, class, p);
        self.pending = Some(ctx.jobs.submit("Faithfulness", job));
    }

    fn rows(&self, ui: &mut egui::Ui, shared: &mut Shared) {
        let Some(c) = &self.comparison else {
            ui.label("Press Compare: every method runs on the worker (ScoreCAM and IG take longest), with progress and Cancel.");
            return;
        };
        let (Some(run), tex) = (&shared.run, &mut shared.textures) else {
            return;
        };
        let best_del = best(&c.rows, |r| -r.curves.deletion_auc);
        let best_ins = best(&c.rows, |r| r.curves.insertion_auc);
        ui.label(format!(
            "At {}: the most faithful by deletion is {}, by insertion {}.",
            c.layer, best_del, best_ins
        ));
        // Two methods to a line: a map over the image, its curves with their areas.
        for (k, pair) in c.rows.chunks(2).enumerate() {
            ui.horizontal_top(|ui| {
                for (j, r) in pair.iter().enumerate() {
                    let i = 2 * k + j;
                    ui.vertical(|ui| {
                        ui.set_width(128.0);
                        ui.strong(&r.name);
                        map_over(ui, tex, run, (i, r));
                        if r.map.iter().all(|&v| v == 0.0) {
                            ui.weak(ZERO_MAP).on_hover_text(ZERO_MAP_WHY);
                        }
                    });
                    curve_plot(ui, i, &r.curves);
                    ui.add_space(24.0);
                }
            });
        }
    }

    fn sanity_ui(&mut self, ui: &mut egui::Ui, ctx: &mut TabCtx, layer: LayerId) {
        ui.strong("Sanity check: the map as the weights are destroyed, from the head down");
        ui.horizontal(|ui| {
            let lbl = ui.label("method");
            egui::ComboBox::from_id_salt("sanity method")
                .selected_text(METHODS[self.sanity_method])
                .show_ui(ui, |ui| {
                    for (i, m) in METHODS.iter().enumerate() {
                        ui.selectable_value(&mut self.sanity_method, i, *m);
                    }
                })
                .response
                .labelled_by(lbl.id);
            if ui
                .add_enabled(
                    self.sanity_pending.is_none(),
                    egui::Button::new("Run the sanity check"),
                )
                .clicked()
            {
                self.run_sanity(ctx, layer);
            }
            if let Some(p) = &self.sanity_pending {
                job_progress(ui, p);
            }
        });
        let Some((method, steps)) = &self.sanity else {
            ui.label("A method whose map stays the same when the weights it should explain are random is not explaining the model (Adebayo et al. 2018).");
            return;
        };
        ui.horizontal_wrapped(|ui| {
            for (i, s) in steps.iter().enumerate() {
                ui.vertical(|ui| {
                    ui.label(if i == 0 {
                        "trained".to_string()
                    } else {
                        format!("− {}", s.randomised)
                    });
                    sanity_map(ui, &mut ctx.shared.textures, (method, i), s);
                    ui.label(
                        RichText::new(format!("ρ {:+.2} · SSIM {:+.2}", s.spearman, s.ssim))
                            .small(),
                    );
                });
            }
        });
        let kept = steps.last().is_some_and(|s| s.spearman > 0.5);
        ui.label(if kept {
            format!("{method}'s map still resembles the trained one with every weight random (Spearman > 0.5): it shows the image more than the model.")
        } else {
            format!("{method}'s map changes as the weights are destroyed: it depends on what the model learned.")
        });
    }

    /// The cascading randomisation check of the chosen method for the current image.
    pub fn run_sanity(&mut self, ctx: &mut TabCtx, layer: LayerId) {
        let name = METHODS[self.sanity_method].to_string();
        let class = ctx.shared.selection.class;
        let job = move |w: &mut WorkerCtx, p: &mut dyn Progress| {
            let method = Method::parse(&name)?;
            let (engine, x) = w.current_input()?;
            let steps = sanity::cascade(engine, &x, (method, layer), class, 0, p)?;
            Ok((name, steps))
        };
        self.sanity_pending = Some(ctx.jobs.submit("Sanity check", job));
    }

    fn ranking_ui(&mut self, ui: &mut egui::Ui, ctx: &mut TabCtx, layer: LayerId) {
        let folder = super::widgets::image_set(ctx.shared);
        ui.strong("The methods ranked over a folder");
        ui.horizontal_wrapped(|ui| {
            ui.label(format!(
                "{} (at most {RANK_LIMIT} images)",
                folder.display()
            ));
            if ui
                .add_enabled(self.ranking_pending.is_none(), egui::Button::new("Rank"))
                .clicked()
            {
                self.rank(ctx, layer, folder.clone());
            }
            if let Some(p) = &self.ranking_pending {
                job_progress(ui, p);
            }
        });
        let Some((dir, table)) = &self.ranking else {
            ui.label("Ranks every method by its mean deletion and insertion area over the folder the Folder tab ran (else the samples).");
            return;
        };
        ui.label(format!(
            "over {} images of {}",
            table.first().map_or(0, |t| t.images),
            dir.display()
        ));
        egui::Grid::new("ranking")
            .striped(true)
            .num_columns(3)
            .show(ui, |ui| {
                for h in [
                    "method",
                    "deletion AUC (lower is better)",
                    "insertion AUC (higher is better)",
                ] {
                    ui.strong(h);
                }
                ui.end_row();
                for r in table {
                    ui.label(&r.method);
                    ui.monospace(format!("{:.3} ± {:.3}", r.deletion_mean, r.deletion_std));
                    ui.monospace(format!("{:.3} ± {:.3}", r.insertion_mean, r.insertion_std));
                    ui.end_row();
                }
            });
    }

    /// Every method's deletion and insertion areas over (at most [`RANK_LIMIT`] images of)
    /// `folder`.
    pub fn rank(&mut self, ctx: &mut TabCtx, layer: LayerId, folder: PathBuf) {
        let job = move |w: &mut WorkerCtx, p: &mut dyn Progress| {
            let table = rank_job(w.engine()?, layer, &folder, p)?;
            Ok((folder, table))
        };
        self.ranking_pending = Some(ctx.jobs.submit("Ranking", job));
    }
}

/// How many images a folder ranking takes at most.
pub const RANK_LIMIT: usize = 64;
/// Deletion and insertion steps in the app (the command line's default is finer).
const APP_STEPS: usize = 16;

/// The name of the row with the largest `score`.
fn best(rows: &[Row], score: impl Fn(&Row) -> f64) -> String {
    rows.iter()
        .filter(|r| METHODS.contains(&r.name.as_str()))
        .max_by(|a, b| score(a).total_cmp(&score(b)))
        .map_or("-".into(), |r| r.name.clone())
}

/// A row's map over the image it explains.
fn map_over(ui: &mut egui::Ui, tex: &mut textures::Textures, run: &RunView, (i, r): (usize, &Row)) {
    let (lo, hi) = r
        .map
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
    let signed = lo < 0.0;
    let (cmap, range) = if signed {
        (Colormap::Diverging, Colormap::Diverging.range(lo, hi))
    } else {
        (Colormap::Magma, (0.0, hi.max(f32::MIN_POSITIVE)))
    };
    let key = format!("faith:{}:{i}:{}", run.id, r.name);
    let make = || grid::map_image(&r.map, r.size, range, cmap);
    heatmap::over_input(ui, tex, heatmap::Base::of(run), &key, make, 128.0, 0.6);
}

fn curve_plot(ui: &mut egui::Ui, i: usize, c: &Curves) {
    let pts = |v: &[f32]| -> PlotPoints {
        let n = v.len().saturating_sub(1).max(1) as f64;
        v.iter()
            .enumerate()
            .map(|(k, &p)| [k as f64 / n, p as f64])
            .collect()
    };
    Plot::new(("curves", i))
        .width(260.0)
        .height(128.0)
        .include_y(0.0)
        // Headroom above the curves for the legend.
        .include_y(1.5)
        .allow_scroll(false)
        .allow_drag(false)
        .legend(Legend::default().position(egui_plot::Corner::RightTop))
        .x_axis_label("share of pixels")
        .y_axis_label("probability")
        .show(ui, |plot| {
            let del = format!("deletion, AUC {:.3}", c.deletion_auc);
            let ins = format!("insertion, AUC {:.3}", c.insertion_auc);
            plot.line(Line::new(del, pts(&c.deletion)));
            plot.line(Line::new(ins, pts(&c.insertion)));
        });
}

fn sanity_map(
    ui: &mut egui::Ui,
    tex: &mut textures::Textures,
    (method, i): (&str, usize),
    s: &SanityStep,
) {
    let size = s.size;
    let t = tex.get(
        ui.ctx(),
        &format!("sanity:{method}:{i}"),
        egui::TextureOptions::LINEAR,
        || textures::rgba(&grid::map_image(&s.map, size, (0.0, 1.0), Colormap::Magma)),
    );
    ui.image((t.id(), Vec2::splat(96.0)));
}

/// Every method's map and curves for the current image, then a random map's and the whole
/// image's (a constant map: pixels go in reading order).
fn compare_job(
    w: &WorkerCtx,
    layer: LayerId,
    class: Option<usize>,
    progress: &mut dyn Progress,
) -> anyhow::Result<Comparison> {
    let (engine, x) = w.current_input()?;
    let (_, _, h, wd) = x.dims4()?;
    let mut rows = Vec::new();
    for (i, name) in METHODS.iter().enumerate() {
        progress.check("the comparison")?;
        progress.update(i, METHODS.len() + 2, name);
        let quiet = &mut crate::base::progress::Silent;
        let a = attribution::attribute(engine, &x, Method::parse(name)?, layer, class, quiet)?;
        let (map, size) = faithfulness::first_map(&a.map)?;
        rows.push(row(engine, &x, name, map, size, class)?);
    }
    let random: Vec<f32> = (0..49).map(|i| ((i * 7919 % 97) as f32) / 97.0).collect();
    rows.push(row(engine, &x, "random map", random, (7, 7), class)?);
    rows.push(row(
        engine,
        &x,
        "whole image, reading order",
        vec![1.0; h * wd],
        (h, wd),
        class,
    )?);
    Ok(Comparison { layer, rows })
}

fn row(
    engine: &crate::io::engine::Engine,
    x: &candle_core::Tensor,
    name: &str,
    map: Vec<f32>,
    size: (usize, usize),
    class: Option<usize>,
) -> anyhow::Result<Row> {
    let view = Map { values: &map, size };
    let curves = faithfulness::deletion_insertion(
        engine,
        x,
        &[view],
        class,
        APP_STEPS,
        &mut crate::base::progress::Silent,
    )?
    .remove(0);
    Ok(Row {
        name: name.to_string(),
        map,
        size,
        curves,
    })
}

fn rank_job(
    engine: &crate::io::engine::Engine,
    layer: LayerId,
    folder: &std::path::Path,
    progress: &mut dyn Progress,
) -> anyhow::Result<Vec<Ranked>> {
    let files = crate::io::listing::list_images(folder, Some(RANK_LIMIT))?;
    let methods = METHODS
        .iter()
        .map(|m| Method::parse(m))
        .collect::<crate::Result<Vec<_>>>()?;
    Ok(faithfulness::rank_methods(
        engine, &files, &methods, layer, APP_STEPS, progress,
    )?)
}
