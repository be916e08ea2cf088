//! Receptive field: how far each stage sees (the effective receptive field, RepLKNet's
//! definition), for the current image or a folder, with the loaded weights or random ones of the
//! same architecture (the untrained baseline), on the worker with progress and cancel.
use super::tab::{Tab, TabCtx};
use super::views::ModelView;
use super::widgets::job_progress;
use super::worker::{Pending, WorkerCtx};
use super::{textures, Shared};
use crate::analysis::attribution::{erf_display, ErfAccumulator, ErfSummary, ERF_THRESHOLDS};
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
    /// The same with random weights of the same architecture, when asked: shown beside.
    pub baseline: Option<Vec<ErfSummary>>,
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

/// The sentence under every row of ERF pictures: how they are scaled and what the mark is.
const DISPLAY_NOTE: &str = "Each picture: log10(ERF + 1) scaled to its own 99th percentile (the brightest 1% saturate, so the spread shows, not only the peak); dark = the pixel does not move the centre, bright = it moves it most. The + marks the centre position (row h/2, column w/2, rounded down: an even-sized map has no middle pixel). The table below gives the exact area ratios.";

/// Heat maps side by side, each on its own display scale ([`erf_display`]), titled, with the
/// centre marked.
pub fn erf_row(ui: &mut egui::Ui, shared: &mut Shared, key: &str, maps: &[(String, &ErfSummary)]) {
    let side = ((ui.available_width() - 12.0 * maps.len() as f32) / maps.len().max(1) as f32)
        .clamp(96.0, 300.0);
    ui.horizontal_top(|ui| {
        for (i, (title, s)) in maps.iter().enumerate() {
            ui.vertical(|ui| {
                ui.label(RichText::new(title).strong());
                let (h, w) = s.size;
                let tex = shared.textures.get(
                    ui.ctx(),
                    &format!("{key}:{i}"),
                    TextureOptions::LINEAR,
                    || {
                        let shown = erf_display(&s.map);
                        textures::rgba(&grid::map_image(
                            &shown,
                            (h, w),
                            (0.0, 1.0),
                            Colormap::Magma,
                        ))
                    },
                );
                let r = ui.image((tex.id(), egui::Vec2::splat(side))).rect;
                centre_mark(ui, r, (h, w));
                if let Some(Some(a)) = s.ratios.get(2) {
                    ui.label(format!("area at t = 0.5: {:.2}%", 100.0 * a));
                }
            });
        }
    });
}

/// How the pictures above are scaled, once under all their rows.
pub fn erf_note(ui: &mut egui::Ui) {
    ui.label(RichText::new(DISPLAY_NOTE).small());
    super::heatmap::colour_bar(ui, Colormap::Magma, 240.0);
}

/// A small + at the map's centre position (h/2, w/2), the position the ERF is of.
fn centre_mark(ui: &egui::Ui, r: egui::Rect, (h, w): (usize, usize)) {
    let px = egui::vec2(r.width() / w.max(1) as f32, r.height() / h.max(1) as f32);
    let c = r.min + egui::vec2((w / 2) as f32 + 0.5, (h / 2) as f32 + 0.5) * px;
    let arm = 6.0;
    let stroke = egui::Stroke::new(1.5, egui::Color32::from_rgb(0, 220, 255));
    let p = ui.painter();
    p.line_segment([c - egui::vec2(arm, 0.0), c + egui::vec2(arm, 0.0)], stroke);
    p.line_segment([c - egui::vec2(0.0, arm), c + egui::vec2(0.0, arm)], stroke);
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
            "Which pixels of the image each stage's centre position actually looks at: the \
             larger the bright area, the further the stage sees.",
        );
        ui.label(
            RichText::new(
                "The effective receptive field as RepLKNet defines it: Σ_rgb ReLU(∂s/∂x), with s \
                 the centre position's summed ReLU activations, averaged over the images.",
            )
            .small(),
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
        let baseline: Option<Vec<(String, ErfSummary)>> = view.baseline.as_ref().map(|b| {
            b.iter()
                .map(|s| (format!("{}, random weights", s.layer), s.clone()))
                .collect()
        });
        ui.label(RichText::new(header).strong());
        let refs: Vec<(String, &ErfSummary)> = maps.iter().map(|(n, s)| (n.clone(), s)).collect();
        erf_row(ui, ctx.shared, "erf", &refs);
        let mut rows = refs.clone();
        if let Some(b) = &baseline {
            ui.label(
                RichText::new(
                    "The same architecture with random weights (the untrained baseline), beside:",
                )
                .strong(),
            );
            let brefs: Vec<(String, &ErfSummary)> = b.iter().map(|(n, s)| (n.clone(), s)).collect();
            erf_row(ui, ctx.shared, "erf_baseline", &brefs);
            rows.extend(brefs);
        }
        erf_note(ui);
        ui.separator();
        ratio_table(ui, "erf_ratios", &rows);
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
            ui.checkbox(
                &mut self.random,
                "and random weights beside (the untrained baseline)",
            );
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
/// weights and, when `baseline`, random ones of the same architecture too.
fn erf(
    w: &WorkerCtx,
    (folder, limit): (Option<PathBuf>, usize),
    baseline: bool,
    progress: &mut dyn Progress,
) -> anyhow::Result<ErfView> {
    let loaded = w.engine()?;
    let random = if baseline {
        Some(loaded.random_like(0)?)
    } else {
        None
    };
    let stages = || (0..loaded.plan.stages.len()).map(LayerId::Stage).collect();
    let mut acc = ErfAccumulator::new(stages());
    let mut base = random.as_ref().map(|_| ErfAccumulator::new(stages()));
    let mut skipped = Vec::new();
    let mut add = |x: &candle_core::Tensor| -> crate::Result<()> {
        acc.add(loaded, x)?;
        if let (Some(b), Some(e)) = (&mut base, &random) {
            b.add(e, x)?;
        }
        Ok(())
    };
    let source = match &folder {
        None => {
            let (_, x) = w.current_input()?;
            add(&x)?;
            "the current image".to_string()
        }
        Some(dir) => {
            let files = crate::io::listing::list_images(dir, Some(limit))?;
            for (i, f) in files.iter().enumerate() {
                progress.check("the receptive fields")?;
                progress.update(i, files.len(), &crate::base::text::file_label(f));
                match input_of(loaded, f) {
                    Ok(x) => add(&x)?,
                    Err(e) => skipped.push(e.to_string()),
                }
            }
            format!("{} image(s) of {}", acc.images, dir.display())
        }
    };
    let images = acc.images;
    Ok(ErfView {
        stages: acc.finish()?,
        baseline: base.map(|b| b.finish()).transpose()?,
        images,
        skipped,
        source: format!("{source}, these weights"),
    })
}

/// A file preprocessed as the model takes it.
fn input_of(
    engine: &crate::io::engine::Engine,
    f: &std::path::Path,
) -> crate::Result<candle_core::Tensor> {
    use crate::io::preprocess;
    let img = preprocess::load_image(f)?;
    preprocess::prepare(&img, &engine.preprocess, &engine.device)
        .map(|p| p.tensor)
        .map_err(|e| e.about_image(&f.display().to_string()))
}
