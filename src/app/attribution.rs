//! Attribution: which positions drive a class at any layer (Grad-CAM, Grad-CAM++), which
//! patches of the input (occlusion), next to the exact class-evidence map of the last stage.
//! The method, layer (from the architecture strip, or any block part) and class (click a
//! prediction) are picked here; the map is computed on the worker whenever they change.
use super::tab::{Tab, TabCtx};
use super::views::{ModelView, RunView};
use super::worker::{Pending, SaveContent, WorkerCtx};
use super::{heatmap, save_as, strip, Shared};
use crate::analysis::attribution::Method;
use crate::analysis::colormap::Colormap;
use crate::analysis::grid;
use crate::analysis::stats::FeatureMap;
use crate::base::progress::Progress;
use crate::model::layer_id::LayerId;
use candle_core::Tensor;
use egui::RichText;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const NAME: &str = "Attribution";

/// A method's map at a layer for the current image, with the exact evidence map beside it.
pub struct AttributionView {
    pub method: crate::analysis::attribution::Method,
    pub layer: LayerId,
    pub class: usize,
    pub label: String,
    /// The method's map (one channel).
    pub map: Arc<FeatureMap>,
    /// The class-evidence map of the last stage, for comparison.
    pub evidence: Arc<FeatureMap>,
    pub elapsed: Duration,
}

const METHODS: [(Method, &str); 9] = [
    (Method::GradCam, "Grad-CAM"),
    (Method::GradCamPlusPlus, "Grad-CAM++"),
    (Method::HiResCam, "HiResCAM"),
    (Method::LayerCam, "LayerCAM"),
    (Method::XGradCam, "XGradCAM"),
    (Method::ScoreCam, "ScoreCAM"),
    (
        Method::IntegratedGradients {
            steps: crate::analysis::attribution::IG_STEPS,
        },
        "IG",
    ),
    (
        Method::Occlusion {
            window: 32,
            stride: 16,
        },
        "occlusion",
    ),
    (Method::Evidence, "evidence"),
];

pub struct AttributionTab {
    /// The last map computed, for the current image.
    view: Option<AttributionView>,
    pending: Option<Pending<AttributionView>>,
    method: Method,
    layer: Option<LayerId>,
    /// What was last asked of the worker: `(method, layer, class, run)`.
    asked: Option<(Method, LayerId, Option<usize>, u64)>,
    opacity: f32,
}

impl Default for AttributionTab {
    fn default() -> Self {
        Self {
            view: None,
            pending: None,
            method: Method::GradCam,
            layer: None,
            asked: None,
            opacity: 0.6,
        }
    }
}

/// How a method's map is coloured: Grad-CAM's from zero up, signed maps about zero.
fn colours(method: Method, fm: &FeatureMap) -> (Colormap, (f32, f32)) {
    let (lo, hi) = fm.range();
    match method {
        m if m.is_cam() => (Colormap::Magma, (0.0, hi.max(f32::MIN_POSITIVE))),
        _ => (Colormap::Diverging, Colormap::Diverging.range(lo, hi)),
    }
}

impl Tab for AttributionTab {
    fn name(&self) -> &'static str {
        NAME
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
        // The layer picked was the old model's: the new one gets its own default.
        (self.view, self.layer) = (None, None);
    }

    // A map still coming is of the old image: the run's serial in `asked` asks again.
    fn on_new_run(&mut self, _run: &RunView) {
        self.view = None;
        self.pending = None;
    }
}

impl AttributionTab {
    /// The last map computed, for the current image.
    pub fn view(&self) -> Option<&AttributionView> {
        self.view.as_ref()
    }

    fn show(&mut self, ui: &mut egui::Ui, ctx: &mut TabCtx) {
        let shared = &mut *ctx.shared;
        let (Some(model), Some(_)) = (&shared.model, &shared.run) else {
            ui.label("Open an image to see which parts of it drive a class, at any layer.");
            return;
        };
        let depths = model.plan.depths();
        let last = LayerId::Stage(depths.len().saturating_sub(1));
        let (default, why) = model.explain_layer();
        let picked = *self.layer.get_or_insert(default);
        let shown = if self.method == Method::Evidence {
            last
        } else {
            picked
        };
        self.controls(ui, shared, &depths, (picked, shown));
        let layer = self.layer.unwrap_or(default);
        if let Some(why) = why.filter(|_| layer == default && self.method != Method::Evidence) {
            ui.label(RichText::new(why).small());
        }
        let method = self.method;
        let layer = if method == Method::Evidence {
            last
        } else {
            layer
        };
        let key = (method, layer, shared.selection.class, shared.run_serial);
        if self.asked != Some(key) && !shared.busy() {
            self.asked = Some(key);
            let class = shared.selection.class;
            let job = move |w: &mut WorkerCtx, p: &mut dyn Progress| {
                attribute(w, (method, layer, class), p)
            };
            self.pending = Some(ctx.jobs.submit("Attribution", job));
        }
        ui.separator();
        self.maps(ui, shared);
    }

    fn controls(
        &mut self,
        ui: &mut egui::Ui,
        shared: &mut Shared,
        depths: &[usize],
        (layer, shown): (LayerId, LayerId),
    ) {
        ui.horizontal(|ui| {
            ui.label("Method");
            for (m, name) in METHODS {
                ui.selectable_value(&mut self.method, m, name);
            }
            ui.separator();
            if ui.button("Export PNG…").clicked() {
                let img = overlay(shared, self.view.as_ref(), self.opacity);
                save_as(
                    shared,
                    "attribution.png",
                    ("PNG", "png"),
                    img.map(SaveContent::Png),
                );
            }
        });
        let layer_matters = self.method.takes_layer();
        ui.add_enabled_ui(layer_matters, |ui| {
            ui.horizontal(|ui| {
                ui.label("Layer");
                let parts = shared
                    .model
                    .as_ref()
                    .map(|m| part_names(&m.plan))
                    .unwrap_or_default();
                egui::ComboBox::from_id_salt("attr_layer")
                    .selected_text(layer.name())
                    .height(400.0)
                    .show_ui(ui, |ui| {
                        for (id, name) in parts {
                            ui.selectable_value(&mut self.layer, Some(id), name);
                        }
                    });
            });
            // The strip marks the layer the map is at (the evidence map's is the last stage).
            if let Some(id) = strip::layer_strip(ui, depths, Some(shown), |id| id.name()) {
                self.layer = Some(id);
            }
        });
        let note = match self.method {
            Method::Occlusion { window, stride } => format!("occlusion works on the input: {window}×{window} windows every {stride} px, set to the mean"),
            Method::IntegratedGradients { steps } => format!("Integrated Gradients work on the input: {steps} points from the mean image; the Faithfulness tab compares every method"),
            Method::Evidence => "the evidence map is exact at the last stage".into(),
            _ => "click a prediction on the left to explain another class".into(),
        };
        ui.label(RichText::new(note).small().weak());
    }

    fn maps(&mut self, ui: &mut egui::Ui, shared: &mut Shared) {
        let running = self
            .pending
            .as_ref()
            .is_some_and(|p| p.progress().is_some());
        let Some(a) = &self.view else {
            ui.horizontal(|ui| {
                super::widgets::busy(ui);
                ui.label(if running {
                    "computing…"
                } else {
                    "waiting for the worker…"
                });
            });
            return;
        };
        let Some(run) = &shared.run else { return };
        let side = ((ui.available_width() - 40.0) / 2.0).clamp(160.0, 420.0);
        let (cmap, range) = colours(a.method, &a.map);
        let (ecmap, erange) = colours(Method::Evidence, &a.evidence);
        self.stale_note(ui, a);
        let place = match a.method {
            Method::Occlusion { .. } | Method::IntegratedGradients { .. } => {
                "on the input".to_string()
            }
            _ => format!("at {}", a.layer),
        };
        let title = format!(
            "{} {place} for “{}” ({}×{}, {:.0} ms)",
            a.method.name(),
            crate::io::labels::short(&a.label),
            a.map.height,
            a.map.width,
            a.elapsed.as_secs_f64() * 1e3
        );
        let (map, ev, input) = (a.map.clone(), a.evidence.clone(), run.input.clone());
        let input_key = run.texture_key();
        let key = format!(
            "attr:{}:{}:{}:{}",
            a.method.name(),
            a.layer,
            a.class,
            shared.run_serial
        );
        ui.horizontal_top(|ui| {
            ui.vertical(|ui| {
                ui.strong(title);
                let make = || grid::map_image(map.plane(0), (map.height, map.width), range, cmap);
                // A map that is zero everywhere is not drawn (black would only darken the image).
                let zero = map.stats[0].max <= 0.0 && cmap == Colormap::Magma;
                let opacity = if zero { 0.0 } else { self.opacity };
                let base = heatmap::Base { key: input_key.clone(), image: &input };
                heatmap::over_input(ui, &mut shared.textures, base, &key, make, side, opacity);
                ui.label(format!("colours span {:.3} … {:.3} ({})", range.0, range.1, cmap.name()));
                heatmap::colour_bar(ui, cmap, side);
                ui.label(RichText::new(sign_note(a.method)).small());
                if zero {
                    ui.label(RichText::new("Zero everywhere: at this layer every position's weighted sum is negative, or exactly zero (HiResCAM before a per-position LayerNorm, where the score does not change with a position's scale).").small().weak());
                }
            });
            if a.method == Method::Evidence {
                return;
            }
            ui.add_space(16.0);
            ui.vertical(|ui| {
                ui.strong("evidence (exact, last stage), for comparison");
                let make = || grid::map_image(ev.plane(0), (ev.height, ev.width), erange, ecmap);
                let base = heatmap::Base { key: input_key.clone(), image: &input };
                heatmap::over_input(ui, &mut shared.textures, base, &format!("{key}:ev"), make, side, self.opacity);
                ui.label(format!("colours span {:.3} … {:.3} ({})", erange.0, erange.1, ecmap.name()));
                heatmap::colour_bar(ui, ecmap, side);
                ui.label(RichText::new(sign_note(Method::Evidence)).small());
            });
        });
        ui.add(egui::Slider::new(&mut self.opacity, 0.0..=1.0).text("opacity"));
    }
}

impl AttributionTab {
    /// While another method or layer is computed, says so above the map still on show, which
    /// is the previous one.
    fn stale_note(&self, ui: &mut egui::Ui, a: &AttributionView) {
        let Some(p) = &self.pending else { return };
        let (method, layer) = (self.method, self.layer);
        let same = a.method == method && (!method.takes_layer() || Some(a.layer) == layer);
        if same {
            return;
        }
        ui.horizontal(|ui| {
            super::widgets::job_progress(ui, p);
            ui.label(
                RichText::new(format!(
                    "computing {}; below, still the previous map ({} at {})",
                    method.name(),
                    a.method.name(),
                    a.layer
                ))
                .strong(),
            );
        });
    }
}

/// Which end of the colours means "important".
fn sign_note(method: Method) -> &'static str {
    match method {
        m if m.is_cam() => "bright: drives the class most · dark: not at all",
        Method::IntegratedGradients { .. } => {
            "red: the pixel raises the class's score (relative to the mean image) · blue: lowers it"
        }
        Method::Occlusion { .. } => {
            "red: covering it lowers the class's score (important) · blue: raises it"
        }
        _ => "red: evidence for the class · blue: against it",
    }
}

/// Every spatial layer of the plan, for the finer choice than the strip offers.
fn part_names(plan: &crate::model::Plan) -> Vec<(LayerId, String)> {
    let s = plan.stride();
    crate::model::flops::layers(plan, 1, s, s)
        .into_iter()
        .filter(|l| l.id.is_spatial())
        .map(|l| (l.id, l.name))
        .collect()
}

/// The method's map over the input, as a picture (for saving).
fn overlay(
    shared: &Shared,
    view: Option<&AttributionView>,
    opacity: f32,
) -> Result<image::RgbaImage, String> {
    let (Some(a), Some(run)) = (view, &shared.run) else {
        return Err("no map yet".into());
    };
    let (cmap, range) = colours(a.method, &a.map);
    let heat = grid::map_image(a.map.plane(0), (a.map.height, a.map.width), range, cmap);
    let side = 448;
    let base = image::imageops::resize(
        &run.input,
        side,
        side,
        image::imageops::FilterType::Triangle,
    );
    Ok(grid::overlay(&base, &heat, opacity))
}

/// A method's map at a layer for a class (the top one if none) of the current image, with the
/// exact evidence map beside it.
fn attribute(
    w: &WorkerCtx,
    (method, layer, class): (Method, LayerId, Option<usize>),
    progress: &mut dyn Progress,
) -> anyhow::Result<AttributionView> {
    let (engine, x) = w.current_input()?;
    let t0 = Instant::now();
    let a = crate::analysis::attribution::attribute(engine, &x, method, layer, class, progress)?;
    let elapsed = t0.elapsed();
    let k = a.classes[0];
    let ev = crate::analysis::attribution::evidence(engine, &x, Some(k))?;
    let one = |m: &Tensor| -> anyhow::Result<Arc<FeatureMap>> {
        Ok(Arc::new(FeatureMap::from_nhwc(&m.unsqueeze(3)?, 0)?))
    };
    Ok(AttributionView {
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
    })
}
