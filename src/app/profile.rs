//! Profile: where the time and the MACs go, per layer and per stage, with the median of N runs.
use super::plots::{shape_text, stage_colour};
use super::{nonzero, ExplorerApp};
use crate::flops::{human, totals};
use crate::profile::{group_totals, rows, to_csv, to_json, ProfileRow};
use egui::{Color32, RichText};
use egui_extras::{Column, TableBuilder};
use egui_plot::{Bar, BarChart, Plot};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SortKey {
    Order,
    Name,
    Params,
    Macs,
    Time,
}

/// The rows the table shows (with times once profiled).
pub fn current_rows(app: &ExplorerApp) -> Vec<ProfileRow> {
    let Some(m) = &app.model else { return vec![] };
    match &app.profile {
        Some(p) => rows(&m.layers, &p.times, p.total),
        None => rows(&m.layers, &[], std::time::Duration::ZERO),
    }
}

pub fn show(app: &mut ExplorerApp, ui: &mut egui::Ui) {
    let Some(model) = &app.model else {
        ui.label("No model loaded.");
        return;
    };
    let t = totals(&model.layers);
    let mult = if app.settings.flops { 2.0 } else { 1.0 };
    let unit = if app.settings.flops { "FLOPs" } else { "MACs" };
    ui.horizontal_wrapped(|ui| {
        ui.add(
            egui::DragValue::new(&mut app.settings.profile_runs)
                .range(1..=200)
                .suffix(" runs"),
        );
        let busy = app.busy();
        if ui
            .add_enabled(!busy, egui::Button::new("Run profile"))
            .on_hover_text("Time every layer over N forwards (median), on the current image")
            .clicked()
        {
            app.start_profile();
        }
        if busy {
            ui.spinner();
        }
        ui.separator();
        ui.checkbox(&mut app.settings.flops, "FLOPs = 2 × MACs");
        ui.checkbox(
            &mut app.settings.show_containers,
            "show stem/stage/block rows",
        );
        ui.separator();
        if ui.button("Export CSV…").clicked() {
            if let Some(p) = super::save_file("profile.csv", "CSV", "csv") {
                let r = std::fs::write(&p, to_csv(&current_rows(app))).map_err(|e| e.to_string());
                app.report_save(&p, r);
            }
        }
        if ui.button("Export JSON…").clicked() {
            if let Some(p) = super::save_file("profile.json", "JSON", "json") {
                let r = std::fs::write(&p, to_json(&current_rows(app))).map_err(|e| e.to_string());
                app.report_save(&p, r);
            }
        }
    });
    let model = app.model.as_ref().expect("checked above");
    let (h, w) = model.input_size;
    let mut line = format!(
        "Input 1×3×{h}×{w} · {} {unit} (fvcore convention: conv + linear + LayerNorm + pooling; GELU, GRN, layer scale and adds not counted) · {} params",
        human(t.total_macs as f64 * mult),
        human(t.total_params as f64),
    );
    if let Some(p) = &app.profile {
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
    ui.label(line);

    let all = current_rows(app);
    let leaves: Vec<&ProfileRow> = all.iter().filter(|r| !r.container).collect();
    let groups = group_totals(&all);
    let timed = app.profile.is_some();
    let chart_h = 150.0;
    ui.horizontal(|ui| {
        let w = ui.available_width() / 2.0 - 8.0;
        ui.vertical(|ui| {
            ui.label(if timed {
                "Time per layer (ms)".to_string()
            } else {
                format!("{unit} per layer")
            });
            let bars: Vec<Bar> = leaves
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let v = if timed {
                        r.ms.unwrap_or(0.0)
                    } else {
                        r.macs as f64 * mult
                    };
                    Bar::new(i as f64, v)
                        .name(&r.name)
                        .width(0.9)
                        .fill(stage_colour(r.stage))
                })
                .collect();
            Plot::new("per_layer")
                .width(w)
                .height(chart_h)
                .allow_scroll(false)
                .show(ui, |p| p.bar_chart(BarChart::new("per layer", bars)));
        });
        ui.vertical(|ui| {
            ui.label(format!(
                "Per stage: {unit} (left bar) and time share (right bar), % of total"
            ));
            let total_ms: f64 = groups.iter().map(|g| g.ms).sum();
            let mut macs_bars = Vec::new();
            let mut time_bars = Vec::new();
            for (i, g) in groups.iter().enumerate() {
                macs_bars.push(
                    Bar::new(
                        i as f64 - 0.2,
                        100.0 * g.macs as f64 / t.total_macs.max(1) as f64,
                    )
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
                .height(chart_h)
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
                    p.bar_chart(BarChart::new(unit, macs_bars));
                    p.bar_chart(BarChart::new("time", time_bars));
                });
        });
    });
    ui.separator();
    table(app, ui, all, mult);
}

fn table(app: &mut ExplorerApp, ui: &mut egui::Ui, all: Vec<ProfileRow>, mult: f64) {
    let sort_id = egui::Id::unique("profile_sort");
    let (mut key, mut desc) = ui
        .data(|d| d.get_temp::<(u8, bool)>(sort_id))
        .map(|(k, d)| (decode(k), d))
        .unwrap_or((SortKey::Order, false));
    let mut rows: Vec<ProfileRow> = all
        .into_iter()
        .filter(|r| app.settings.show_containers || !r.container)
        .collect();
    match key {
        SortKey::Order => {}
        SortKey::Name => rows.sort_by(|a, b| a.name.cmp(&b.name)),
        SortKey::Params => rows.sort_by_key(|r| r.params),
        SortKey::Macs => rows.sort_by_key(|r| r.macs),
        SortKey::Time => rows.sort_by(|a, b| a.ms.unwrap_or(-1.0).total_cmp(&b.ms.unwrap_or(-1.0))),
    }
    if desc {
        rows.reverse();
    }
    let unit = if app.settings.flops { "FLOPs" } else { "MACs" };
    let mut header_click = None;
    let mut sort_header = |ui: &mut egui::Ui, label: &str, k: SortKey| {
        let arrow = if key == k {
            if desc {
                " (desc)"
            } else {
                " (asc)"
            }
        } else {
            ""
        };
        if ui
            .button(RichText::new(format!("{label}{arrow}")).strong())
            .on_hover_text("Sort")
            .clicked()
        {
            header_click = Some(k);
        }
    };
    TableBuilder::new(ui)
        .striped(true)
        .resizable(true)
        .column(Column::initial(240.0).at_least(120.0))
        .column(Column::initial(90.0))
        .column(Column::initial(190.0))
        .column(Column::initial(70.0))
        .column(Column::initial(80.0))
        .column(Column::initial(70.0))
        .column(Column::initial(60.0))
        .column(Column::remainder())
        .header(22.0, |mut h| {
            h.col(|ui| sort_header(ui, "layer", SortKey::Name));
            h.col(|ui| {
                ui.strong("kind");
            });
            h.col(|ui| {
                ui.strong("in -> out (NCHW)");
            });
            h.col(|ui| sort_header(ui, "params", SortKey::Params));
            h.col(|ui| sort_header(ui, unit, SortKey::Macs));
            h.col(|ui| sort_header(ui, "ms", SortKey::Time));
            h.col(|ui| {
                ui.strong("% time");
            });
            h.col(|ui| {
                ui.strong(format!("G{unit}/s"));
            });
        })
        .body(|body| {
            body.rows(18.0, rows.len(), |mut row| {
                let r = &rows[row.index()];
                row.col(|ui| {
                    let indent = "  ".repeat(r.depth);
                    let text = RichText::new(format!("{indent}{}", r.name)).monospace();
                    ui.label(if r.container { text.strong() } else { text });
                });
                row.col(|ui| {
                    ui.label(&r.kind);
                });
                row.col(|ui| {
                    ui.label(format!(
                        "{} -> {}",
                        shape_text(&r.in_shape),
                        shape_text(&r.out_shape)
                    ));
                });
                row.col(|ui| {
                    ui.label(nonzero(r.params as f64));
                });
                row.col(|ui| {
                    ui.label(nonzero(r.macs as f64 * mult));
                });
                row.col(|ui| {
                    ui.label(r.ms.map(|m| format!("{m:.3}")).unwrap_or_default());
                });
                row.col(|ui| {
                    ui.label(r.percent.map(|p| format!("{p:.1}")).unwrap_or_default());
                });
                row.col(|ui| {
                    // Achieved rate in the unit shown (GFLOP/s is twice GMAC/s).
                    let g = r.gflops.map(|g| g / 2.0 * mult);
                    ui.label(g.map(|g| format!("{g:.1}")).unwrap_or_default());
                });
            });
        });
    if let Some(k) = header_click {
        if k == key {
            desc = !desc;
        } else {
            key = k;
            desc = k != SortKey::Name;
        }
        ui.data_mut(|d| d.insert_temp(sort_id, (encode(key), desc)));
    }
}

fn encode(k: SortKey) -> u8 {
    k as u8
}

fn decode(k: u8) -> SortKey {
    match k {
        1 => SortKey::Name,
        2 => SortKey::Params,
        3 => SortKey::Macs,
        4 => SortKey::Time,
        _ => SortKey::Order,
    }
}
