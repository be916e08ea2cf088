//! Profile: where the time and the MACs go, per layer and per stage, with the median of N runs.
use super::layer_table::LayerTable;
use super::plots::stage_colour;
use super::worker::{JobKind, SaveContent};
use super::{save_as, Request, Shared};
use crate::analysis::profile::{group_totals, rows, to_csv, to_json, ProfileRow};
use crate::base::text::human;
use crate::model::flops::{totals, Totals};
use egui::Color32;
use egui_plot::{Bar, BarChart, Plot};

#[derive(Default)]
pub struct ProfilePanel {
    table: LayerTable,
}

/// The rows the table shows (with times once profiled).
pub fn current_rows(shared: &Shared) -> Vec<ProfileRow> {
    let Some(m) = &shared.model else {
        return vec![];
    };
    match &shared.profile {
        Some(p) => rows(&m.layers, &p.times, p.total),
        None => rows(&m.layers, &[], std::time::Duration::ZERO),
    }
}

impl ProfilePanel {
    pub fn ui(&mut self, ui: &mut egui::Ui, shared: &mut Shared) {
        let Some(model) = &shared.model else {
            ui.label("No model loaded.");
            return;
        };
        let t = totals(&model.layers);
        let (h, w) = model.input_size;
        controls(ui, shared);
        let (unit, mult) = unit(shared);
        ui.label(summary(shared, &t, (h, w), unit, mult));
        let all = current_rows(shared);
        charts(ui, shared, &all, &t);
        ui.separator();
        let shown = all
            .into_iter()
            .filter(|r| shared.settings.show_containers || !r.container)
            .collect();
        self.table.ui(ui, shown, unit, mult);
    }
}

fn unit(shared: &Shared) -> (&'static str, f64) {
    if shared.settings.flops {
        ("FLOPs", 2.0)
    } else {
        ("MACs", 1.0)
    }
}

fn controls(ui: &mut egui::Ui, shared: &mut Shared) {
    ui.horizontal_wrapped(|ui| {
        ui.add(
            egui::DragValue::new(&mut shared.settings.profile_runs)
                .range(1..=200)
                .suffix(" runs"),
        );
        let busy = shared.busy();
        if ui
            .add_enabled(!busy, egui::Button::new("Run profile"))
            .on_hover_text("Time every layer over N forwards (median), on the current image")
            .clicked()
        {
            shared.request(Request::Profile);
        }
        let running = shared
            .status
            .job
            .as_ref()
            .filter(|j| j.kind == JobKind::Profile);
        if let Some(j) = running {
            ui.spinner();
            ui.label(format!("run {}/{}", j.done, j.total));
            if ui.button("Cancel").clicked() {
                shared.request(Request::CancelJob);
            }
        } else if busy {
            ui.spinner();
        }
        ui.separator();
        ui.checkbox(&mut shared.settings.flops, "FLOPs = 2 × MACs");
        ui.checkbox(
            &mut shared.settings.show_containers,
            "show stem/stage/block rows",
        );
        ui.separator();
        if ui.button("Export CSV…").clicked() {
            let content = Ok(SaveContent::Text(to_csv(&current_rows(shared))));
            save_as(shared, "profile.csv", ("CSV", "csv"), content);
        }
        if ui.button("Export JSON…").clicked() {
            let content = Ok(SaveContent::Text(to_json(&current_rows(shared))));
            save_as(shared, "profile.json", ("JSON", "json"), content);
        }
    });
}

fn summary(shared: &Shared, t: &Totals, (h, w): (usize, usize), unit: &str, mult: f64) -> String {
    let mut line = format!(
        "Input 1×3×{h}×{w} · {} {unit} (fvcore convention: conv + linear + LayerNorm + pooling; GELU, GRN, layer scale and adds not counted) · {} params",
        human(t.total_macs as f64 * mult),
        human(t.total_params as f64),
    );
    if let Some(p) = &shared.profile {
        let ms = p.total.as_secs_f64() * 1e3;
        line += &format!(
            " · median of {} runs: {:.2} ms with per-layer timing, {:.2} ms without ({:.1} G{unit}/s)",
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

fn charts(ui: &mut egui::Ui, shared: &Shared, all: &[ProfileRow], t: &Totals) {
    let (unit, mult) = unit(shared);
    let timed = shared.profile.is_some();
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
        .x_axis_formatter(move |m, _| {
            let i = m.value.round();
            if (m.value - i).abs() < 1e-6 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .show(ui, |p| {
            p.bar_chart(BarChart::new(unit.to_string(), macs_bars));
            p.bar_chart(BarChart::new("time", time_bars));
        });
}
