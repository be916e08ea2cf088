//! Receptive field: how far each stage sees (the effective receptive field, RepLKNet's
//! definition), for the current image or a folder, with the loaded weights or random ones of the
//! same architecture (the untrained baseline), on the worker with progress and cancel.
use super::tab::{Tab, TabCtx};
use super::views::ModelView;
use super::widgets::job_progress;
use super::worker::{Pending, WorkerCtx};
use super::{textures, Shared};
use crate::analysis::attribution::{ErfSummary, ERF_THRESHOLDS};
use crate::analysis::colormap::Colormap;
use crate::analysis::grid;
use crate::base::progress::Progress;
use crate::model::layer_id::LayerId;
use egui::{RichText, TextureOptions};
use egui_extras::{Column, TableBuilder};
use std::path::PathBuf;

/// Effective receptive fields of every stage.
pub struct ErfView {
    pub stages: Vec<crate::analysis::attribution::ErfSummary>,
    pub images: usize,
    /// Images of a folder that could not be read, with why.
    pub skipped: Vec<String>,
    /// What was measured: `the current image`, a folder, and whether the weights were random.
    pub source: String,
}

pub struct ErfTab {
    view: Option<ErfView>,
    pending: Option<Pending<ErfView>>,
    folder: String,
    use_folder: bool,
    limit: usize,
    random: bool,
}

impl Default for ErfTab {
    fn default() -> Self {
        Self {
            view: None,
            pending: None,
            folder: String::new(),
            use_folder: false,
            limit: 100,
            random: false,
        }
    }
}

/// `log10(map + 1)` of every map, and their common maximum (one colour scale for all).
pub fn log_maps(maps: &[&ErfSummary]) -> (Vec<Vec<f32>>, f32) {
    let logs: Vec<Vec<f32>> = maps
        .iter()
        .map(|s| s.map.iter().map(|v| (v + 1.0).log10()).collect())
        .collect();
    let max = logs.iter().flatten().cloned().fold(0.0, f32::max);
    (logs, max.max(f32::MIN_POSITIVE))
}

/// Heat maps side by side on one colour scale, each titled.
pub fn erf_row(ui: &mut egui::Ui, shared: &mut Shared, key: &str, maps: &[(String, &ErfSummary)]) {
    let summaries: Vec<&ErfSummary> = maps.iter().map(|(_, s)| *s).collect();
    let (logs, max) = log_maps(&summaries);
    let side = ((ui.available_width() - 12.0 * maps.len() as f32) / maps.len().max(1) as f32)
        .clamp(96.0, 300.0);
    ui.horizontal_top(|ui| {
        for (i, ((title, s), log)) in maps.iter().zip(&logs).enumerate() {
            ui.vertical(|ui| {
                ui.label(RichText::new(title).strong());
                let (h, w) = s.size;
                let tex = shared.textures.get(
                    ui.ctx(),
                    &format!("{key}:{i}"),
                    TextureOptions::LINEAR,
                    || textures::rgba(&grid::map_image(log, (h, w), (0.0, max), Colormap::RdYlGn)),
                );
                ui.image((tex.id(), egui::Vec2::splat(side)));
            });
        }
    });
    ui.label(format!(
        "log10(ERF + 1), one colour scale for all (0 … {max:.3}, RdYlGn: green low, red high)"
    ));
    super::heatmap::colour_bar(ui, Colormap::RdYlGn, 240.0);
}

/// Area ratios per map: the share of the image the smallest centred square holding t of the
/// (log) receptive field covers.
pub fn ratio_table(ui: &mut egui::Ui, id: &str, rows: &[(String, &ErfSummary)]) {
    ui.push_id(id, |ui| {
        TableBuilder::new(ui)
            .striped(true)
            .column(Column::initial(200.0))
            .columns(Column::initial(90.0), ERF_THRESHOLDS.len())
            .header(20.0, |mut h| {
                h.col(|ui| {
                    ui.strong("area ratio at");
                });
                for t in ERF_THRESHOLDS {
                    h.col(|ui| {
                        ui.strong(format!("t = {t}"));
                    });
                }
            })
            .body(|mut body| {
                for (name, s) in rows {
                    body.row(18.0, |mut row| {
                        row.col(|ui| {
                            ui.label(name);
                        });
                        for r in &s.ratios {
                            row.col(|ui| {
                                ui.label(
                                    r.map(|v| format!("{:.2}%", 100.0 * v))
                                        .unwrap_or("> half".into()),
                                );
                            });
                        }
                    });
                }
            });
    });
}

impl Tab for ErfTab {
    fn name(&self) -> &'static str {
        "Receptive field"
    }

    fn poll(&mut self, ctx: &mut TabCtx) {
        if let Some(view) = ctx.take(&mut self.pending) {
            ctx.shared.textures.clear();
            self.view = Some(view);
        }
    }

    fn ui(&mut self, ui: &mut egui::Ui, ctx: &mut TabCtx) {
        self.show(ui, ctx);
    }

    fn on_model_changed(&mut self, _model: &ModelView) {
        self.view = None;
    }
}

impl ErfTab {
    /// The last receptive fields computed.
    pub fn view(&self) -> Option<&ErfView> {
        self.view.as_ref()
    }

    fn show(&mut self, ui: &mut egui::Ui, ctx: &mut TabCtx) {
        if ctx.shared.model.is_none() {
            ui.label("No model loaded.");
            return;
        }
        ui.label(
            "The effective receptive field (RepLKNet's definition): how much each input pixel moves \
             the centre of a stage's map, Σ_rgb ReLU(∂s/∂x) with s the centre position's summed \
             ReLU activations, averaged over the images.",
        );
        self.controls(ui, ctx);
        ui.separator();
        let Some(view) = &self.view else {
            ui.label("Press Compute.");
            return;
        };
        let maps: Vec<(String, ErfSummary)> = view
            .stages
            .iter()
            .map(|s| {
                (
                    format!("{} ({}×{})", s.layer, s.size.0, s.size.1),
                    s.clone(),
                )
            })
            .collect();
        let header = format!("{} · {} image(s)", view.source, view.images);
        let skipped = view.skipped.clone();
        ui.label(RichText::new(header).strong());
        let refs: Vec<(String, &ErfSummary)> = maps.iter().map(|(n, s)| (n.clone(), s)).collect();
        erf_row(ui, ctx.shared, "erf", &refs);
        ui.separator();
        ratio_table(ui, "erf_ratios", &refs);
        if !skipped.is_empty() {
            ui.label(format!("{} image(s) skipped:", skipped.len()));
            for s in skipped.iter().take(20) {
                ui.label(RichText::new(s).small().weak());
            }
        }
    }

    fn controls(&mut self, ui: &mut egui::Ui, ctx: &mut TabCtx) {
        ui.horizontal(|ui| {
            ui.selectable_value(&mut self.use_folder, false, "current image");
            ui.selectable_value(&mut self.use_folder, true, "folder");
            ui.add_enabled_ui(self.use_folder, |ui| {
                ui.add(
                    egui::TextEdit::singleline(&mut self.folder)
                        .hint_text("path to a folder of images")
                        .desired_width(260.0),
                );
                let browse = ui.button("Browse…");
                if browse.clicked() {
                    let t = std::time::Instant::now();
                    match rfd::FileDialog::new().pick_folder() {
                        Some(p) => self.folder = p.display().to_string(),
                        // Too fast to have been shown: there is no portal to show one.
                        None if t.elapsed() < std::time::Duration::from_millis(150) => {
                            ctx.shared.status.notice = Some(
                                "No folder dialog could be shown here: type the folder's path."
                                    .into(),
                            )
                        }
                        None => {}
                    }
                }
                ui.add(
                    egui::DragValue::new(&mut self.limit)
                        .range(1..=100_000)
                        .prefix("at most ")
                        .suffix(" images"),
                );
            });
            ui.separator();
            ui.checkbox(&mut self.random, "random weights (the untrained baseline)");
        });
        ui.horizontal(|ui| {
            let ready = !self.use_folder || !self.folder.trim().is_empty();
            let shared = &ctx.shared;
            let can = ready && !shared.busy() && (self.use_folder || shared.run.is_some());
            if ui.add_enabled(can, egui::Button::new("Compute")).clicked() {
                let folder = self.use_folder.then(|| PathBuf::from(self.folder.trim()));
                let (limit, random) = (self.limit, self.random);
                let job = move |w: &mut WorkerCtx, p: &mut dyn Progress| {
                    erf(w, (folder, limit), random, p)
                };
                self.pending = Some(ctx.jobs.submit("The receptive field", job));
            }
            if !self.use_folder && ctx.shared.run.is_none() {
                ui.label("open an image first (or pick a folder)");
            }
            if let Some(p) = &self.pending {
                job_progress(ui, p);
            }
        });
    }
}

/// Every stage's ERF over the current image or (at most `limit` images of) a folder, for these
/// weights or random ones.
fn erf(
    w: &WorkerCtx,
    (folder, limit): (Option<PathBuf>, usize),
    random: bool,
    progress: &mut dyn Progress,
) -> anyhow::Result<ErfView> {
    use crate::io::preprocess;
    let loaded = w.engine()?;
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
            let (_, x) = w.current_input()?;
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
    Ok(ErfView {
        stages: acc.finish()?,
        images,
        skipped,
        source: format!("{source}, {weights}"),
    })
}
