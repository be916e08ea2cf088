//! Profile: where the time and the MACs go, per layer and per stage, with the median of N runs.
use super::layer_table::LayerTable;
use super::plots::stage_colour;
use super::tab::{Tab, TabCtx};
use super::views::ModelView;
use super::widgets::job_progress;
use super::worker::{Pending, SaveContent, WorkerCtx};
use super::{save_as, Shared};
use crate::analysis::profile::{group_totals, rows, to_csv, to_json, ProfileRow};
use crate::analysis::roofline::{self, Limits};
use crate::base::progress::Progress;
use crate::base::text::human;
use crate::model::flops::{totals, Totals};
use crate::model::layer_id::LayerId;
use candle_core::{DType, Tensor};
use egui::Color32;
use egui_plot::{AxisHints, Bar, BarChart, GridInput, GridMark, Plot};
use std::time::Duration;

/// Per-layer times of the current model.
pub struct ProfileView {
    pub runs: usize,
    /// Median time per layer (containers included).
    pub times: Vec<(LayerId, Duration)>,
    /// Median time of a whole forward with the timing observer on.
    pub total: Duration,
    /// Median of the same forward with no observer (what the observer costs shows as the gap).
    pub plain: Duration,
    pub input_size: (usize, usize),
    /// Bytes per element of the model's dtype (the roofline's bytes moved).
    pub dtype_bytes: usize,
    /// Whether the matmuls ran in native bf16, whose peak is above the f32 roof.
    pub bf16_matmuls: bool,
}

#[derive(Default)]
pub struct ProfileTab {
    table: LayerTable,
    /// The last profile; it stays while a new one runs.
    profile: Option<ProfileView>,
    pending: Option<Pending<(ProfileView, Option<Limits>)>>,
    /// The CPU's limits (measured with the first profile on the CPU, or read from the cache).
    limits: Option<Limits>,
    remeasuring: Option<Pending<Limits>>,
}

/// The rows the table shows (with times once profiled).
fn current_rows(shared: &Shared, profile: Option<&ProfileView>) -> Vec<ProfileRow> {
    let Some(m) = &shared.model else {
        return vec![];
    };
    match profile {
        Some(p) => rows(&m.layers, &p.times, p.total),
        None => rows(&m.layers, &[], Duration::ZERO),
    }
}

impl Tab for ProfileTab {
    fn name(&self) -> &'static str {
        "Profile"
    }

    fn poll(&mut self, ctx: &mut TabCtx) {
        if let Some((p, l)) = ctx.take(&mut self.pending) {
            self.profile = Some(p);
            self.limits = l;
        }
        if let Some(l) = ctx.take(&mut self.remeasuring) {
            self.limits = Some(l);
        }
    }

    fn ui(&mut self, ui: &mut egui::Ui, ctx: &mut TabCtx) {
        let Some(model) = &ctx.shared.model else {
            ui.label("No model loaded.");
            return;
        };
        let t = totals(&model.layers);
        let (h, w) = model.input_size;
        self.controls(ui, ctx);
        let shared = &*ctx.shared;
        let profile = self.profile.as_ref();
        let (unit, mult) = unit(shared);
        ui.label(summary(profile, &t, (h, w), unit, mult));
        let mut all = current_rows(shared, profile);
        charts(ui, shared, profile.is_some(), &all, &t);
        let show_containers = shared.settings.show_containers;
        if let (Some(p), Some(l)) = (profile, self.limits) {
            let points = roofline::points(&all, &l, p.dtype_bytes);
            roofline::annotate(&mut all, &points);
            roofline_section(ui, ctx, &l, &mut self.remeasuring, &points);
            if p.bf16_matmuls {
                ui.label(roofline::BF16_ROOF_NOTE);
            }
        }
        ui.separator();
        let shown = all
            .into_iter()
            .filter(|r| show_containers || !r.container)
            .collect();
        self.table.ui(ui, shown, unit, mult);
    }

    fn on_model_changed(&mut self, _model: &ModelView) {
        self.profile = None;
    }
}

/// The roofline under its heading, with the limits it is drawn against and a button that
/// measures them again.
fn roofline_section(
    ui: &mut egui::Ui,
    ctx: &mut TabCtx,
    l: &Limits,
    remeasuring: &mut Option<Pending<Limits>>,
    points: &[roofline::Point],
) {
    egui::CollapsingHeader::new("Roofline: each layer against this machine's limits")
        .default_open(true)
        .show(ui, |ui| {
            ui.horizontal_wrapped(|ui| {
                ui.label(format!(
                    "{}: compute roof {:.0} GFLOP/s (an FMA loop; our GEMM reaches {:.0}), memory roof {:.1} GB/s (a streaming copy; {:.0} GB/s within the caches). Layers left of the ridge ({:.1} FLOP/byte) can go no faster than memory feeds them, whatever their FLOPs.",
                    l.threads_text(), l.peak_gflops, l.gemm_gflops, l.memory_gbs, l.cache_gbs, l.ridge()
                ));
                if let Some(p) = remeasuring {
                    job_progress(ui, p);
                } else if ui
                    .add_enabled(!ctx.shared.busy(), egui::Button::new("Measure again"))
                    .on_hover_text("The limits were measured once on this machine and kept; measure them again (a few seconds)")
                    .clicked()
                {
                    let job = |_: &mut WorkerCtx, p: &mut dyn Progress| {
                        Ok(crate::analysis::roofline::limits(true, p)?)
                    };
                    *remeasuring = Some(ctx.jobs.submit_timing("Measuring the machine", job));
                }
            });
            super::roofline::plot(ui, points, l, 230.0);
        });
}

impl ProfileTab {
    /// The last profile taken.
    pub fn profile(&self) -> Option<&ProfileView> {
        self.profile.as_ref()
    }

    /// The machine's limits, once measured or read from the cache.
    pub fn limits(&self) -> Option<&Limits> {
        self.limits.as_ref()
    }

    /// Times every layer over the settings' number of runs, on the current image.
    pub fn run(&mut self, ctx: &mut TabCtx) {
        let runs = ctx.shared.settings.profile_runs;
        let job = move |w: &mut WorkerCtx, p: &mut dyn Progress| profile(w, runs, p);
        self.pending = Some(ctx.jobs.submit_timing("Profiling", job));
    }

    fn controls(&mut self, ui: &mut egui::Ui, ctx: &mut TabCtx) {
        ui.horizontal_wrapped(|ui| {
            ui.add(
                egui::DragValue::new(&mut ctx.shared.settings.profile_runs)
                    .range(1..=200)
                    .suffix(" runs"),
            );
            let busy = ctx.shared.busy();
            if ui
                .add_enabled(!busy, egui::Button::new("Run profile"))
                .on_hover_text("Time every layer over N forwards (median), on the current image")
                .clicked()
            {
                self.run(ctx);
            }
            if let Some(p) = &self.pending {
                job_progress(ui, p);
            } else if busy {
                super::widgets::busy(ui);
            }
            let shared = &mut *ctx.shared;
            ui.separator();
            ui.checkbox(&mut shared.settings.flops, "FLOPs = 2 × MACs");
            ui.checkbox(
                &mut shared.settings.show_containers,
                "show stem/stage/block rows",
            );
            ui.separator();
            let profile = self.profile.as_ref();
            if ui.button("Export CSV…").clicked() {
                let content = Ok(SaveContent::Text(to_csv(&current_rows(shared, profile))));
                save_as(shared, "profile.csv", ("CSV", "csv"), content);
            }
            if ui.button("Export JSON…").clicked() {
                let content = Ok(SaveContent::Text(to_json(&current_rows(shared, profile))));
                save_as(shared, "profile.json", ("JSON", "json"), content);
            }
        });
    }
}

/// Times `runs` forwards of the current image (or of zeros, with no image), layer by layer.
/// On the CPU the machine's limits come first (read from the cache, or measured once).
fn profile(
    w: &WorkerCtx,
    runs: usize,
    progress: &mut dyn Progress,
) -> anyhow::Result<(ProfileView, Option<Limits>)> {
    let engine = w.engine()?;
    let x = match w.image() {
        Some((_, img)) => {
            crate::io::preprocess::prepare(img, &engine.preprocess, &engine.device)?.tensor
        }
        None => {
            let (h, w) = engine.preprocess.input_size;
            Tensor::zeros((1, 3, h, w), DType::F32, &engine.device)?
        }
    };
    let runs = runs.clamp(1, 1000);
    // The roofline is the CPU's: a GPU's profile has none.
    let limits = match engine.device.is_cpu() {
        true => Some(crate::analysis::roofline::limits(false, progress)?),
        false => None,
    };
    // One warm-up so that first-touch allocation and kernel compilation stay out.
    engine.forward(&x)?;
    let baseline = crate::analysis::profile::PlainBaseline::Interleaved;
    let measured = crate::analysis::profile::time_layers(engine, &x, runs, baseline, progress)?;
    let view = ProfileView {
        runs,
        times: measured.times,
        total: measured.total,
        plain: measured.plain.unwrap_or_default(),
        input_size: (x.dim(2)?, x.dim(3)?),
        dtype_bytes: engine.storage_dtype().size_in_bytes(),
        bf16_matmuls: engine.native_bf16_matmuls(),
    };
    Ok((view, limits))
}

fn unit(shared: &Shared) -> (&'static str, f64) {
    if shared.settings.flops {
        ("FLOPs", 2.0)
    } else {
        ("MACs", 1.0)
    }
}

fn summary(
    profile: Option<&ProfileView>,
    t: &Totals,
    (h, w): (usize, usize),
    unit: &str,
    mult: f64,
) -> String {
    let mut line = format!(
        "Input 1×3×{h}×{w} · {} {unit} (fvcore convention: conv + linear + LayerNorm + pooling; GELU, GRN, layer scale and adds not counted) · {} params",
        human(t.total_macs as f64 * mult),
        human(t.total_params as f64),
    );
    if let Some(p) = profile {
        let ms = p.total.as_secs_f64() * 1e3;
        line += &format!(
            " · median of {} runs: {:.2} ms with per-layer timing, {:.2} ms without ({:.1} G{unit}/s; runs on a busy machine vary by several %, so a difference smaller than that is noise)",
            p.runs,
            ms,
            p.plain.as_secs_f64() * 1e3,
            t.total_macs as f64 * mult / p.plain.as_secs_f64().max(1e-9) / 1e9
        );
    } else {
        line += " · press Run profile for times";
    }
    line
}

fn charts(ui: &mut egui::Ui, shared: &Shared, timed: bool, all: &[ProfileRow], t: &Totals) {
    let (unit, mult) = unit(shared);
    let chart_h = 150.0;
    ui.horizontal(|ui| {
        let w = ui.available_width() / 2.0 - 8.0;
        ui.vertical(|ui| {
            ui.label(if timed {
                "Time per layer (ms)".to_string()
            } else {
                format!("{unit} per layer")
            });
            let bars: Vec<Bar> = all
                .iter()
                .filter(|r| !r.container)
                .enumerate()
                .map(|(i, r)| {
                    let v = match timed {
                        true => r.ms.unwrap_or(0.0),
                        false => r.macs as f64 * mult,
                    };
                    let bar = Bar::new(i as f64, v).name(&r.name).width(0.9);
                    bar.fill(stage_colour(r.stage))
                })
                .collect();
            Plot::new("per_layer")
                .width(w)
                .height(chart_h)
                .allow_scroll(false)
                .y_axis_formatter(|m, _| human(m.value.max(0.0)))
                .show(ui, |p| p.bar_chart(BarChart::new("per layer", bars)));
        });
        ui.vertical(|ui| {
            ui.label(format!(
                "Per stage: {unit} (left bar) and time share (right bar), % of total"
            ));
            per_stage_chart(ui, all, t, unit, (w, chart_h));
        });
    });
}

/// One grid mark per whole number in view (the per-stage chart's groups).
fn every_group(input: GridInput) -> Vec<GridMark> {
    let (lo, hi) = input.bounds;
    let (first, last) = (lo.ceil().max(0.0) as i64, hi.floor() as i64);
    (first..=last.min(first + 64))
        .map(|i| GridMark {
            value: i as f64,
            step_size: 1.0,
        })
        .collect()
}

fn per_stage_chart(
    ui: &mut egui::Ui,
    all: &[ProfileRow],
    t: &Totals,
    unit: &str,
    (w, h): (f32, f32),
) {
    let groups = group_totals(all);
    let total_ms: f64 = groups.iter().map(|g| g.ms).sum();
    let mut macs_bars = Vec::new();
    let mut time_bars = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        let share = 100.0 * g.macs as f64 / t.total_macs.max(1) as f64;
        macs_bars.push(
            Bar::new(i as f64 - 0.2, share)
                .name(format!("{} {unit}", g.name))
                .width(0.38)
                .fill(Color32::from_rgb(90, 140, 200)),
        );
        if total_ms > 0.0 {
            time_bars.push(
                Bar::new(i as f64 + 0.2, 100.0 * g.ms / total_ms)
                    .name(format!("{} time", g.name))
                    .width(0.38)
                    .fill(Color32::from_rgb(230, 140, 60)),
            );
        }
    }
    let names: Vec<String> = groups.iter().map(|g| g.name.clone()).collect();
    Plot::new("per_stage")
        .width(w)
        .height(h)
        .allow_scroll(false)
        // A mark and a label on every group: at 1024 points wide the default spacer's marks, and
        // x labels wanting 60 points apart, left only "stem" labelled.
        .x_grid_spacer(every_group)
        .custom_x_axes(vec![AxisHints::new_x()
            .label_spacing(20.0..=30.0)
            .formatter(move |m, _| {
                let i = m.value.round();
                if (m.value - i).abs() < 1e-6 && i >= 0.0 {
                    names.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })])
        .show(ui, |p| {
            p.bar_chart(BarChart::new(unit.to_string(), macs_bars));
            p.bar_chart(BarChart::new("time", time_bars));
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_per_stage_chart_has_a_mark_on_every_group() {
        let input = GridInput {
            bounds: (-0.45, 5.45),
            base_step_size: 0.1,
        };
        let values: Vec<f64> = every_group(input).iter().map(|m| m.value).collect();
        assert_eq!(values, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        let none = GridInput {
            bounds: (0.2, 0.8),
            base_step_size: 0.1,
        };
        assert!(every_group(none).is_empty());
    }
}
