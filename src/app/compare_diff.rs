//! Compare → what changed: two checkpoints' weights, group by group along the depth (relative
//! change), the layer-scale change per block, and the tensors that moved most.
use crate::analysis::diff::{CheckpointDiff, GroupDiff};
use egui::RichText;
use egui_plot::{Bar, BarChart, Plot};
use std::path::PathBuf;

/// A diff with the two files it compares.
pub struct DiffOutcome {
    pub diff: CheckpointDiff,
    pub a: PathBuf,
    pub b: PathBuf,
}

/// How many of the most changed tensors the table lists.
const TOP_TENSORS: usize = 12;

pub fn view(ui: &mut egui::Ui, o: &DiffOutcome) {
    let (a, b) = (
        crate::base::text::file_label(&o.a),
        crate::base::text::file_label(&o.b),
    );
    ui.label(format!(
        "How far the weights of {b} moved from {a}, part by part along the network: the norm of B - A over the norm of A, over each part's tensors (0 = unchanged, 1 = as large as the weights themselves)."
    ));
    ui.horizontal_top(|ui| {
        ui.vertical(|ui| {
            ui.set_max_width(520.0);
            ui.strong("Relative change per part");
            bars(ui, "diff rel", &o.diff.groups, |g| g.rel_change);
            let gammas: Vec<&GroupDiff> =
                o.diff.groups.iter().filter(|g| g.gamma_change.is_some()).collect();
            ui.strong("Layer-scale change per block: mean |γ| of B - mean |γ| of A");
            if gammas.is_empty() {
                ui.label("none: these checkpoints have no layer scale on both sides (V2 blocks have GRN instead)");
            } else {
                let owned: Vec<GroupDiff> = gammas.into_iter().cloned().collect();
                bars(ui, "diff gamma", &owned, |g| g.gamma_change);
            }
        });
        ui.vertical(|ui| {
            ui.strong(format!("The {TOP_TENSORS} tensors that changed most"));
            top_tensors(ui, &o.diff);
            only_one_side(ui, "only in", &a, &o.diff.only_a);
            only_one_side(ui, "only in", &b, &o.diff.only_b);
        });
    });
}

/// One bar per group, in the order the network computes them; hover names it.
fn bars(
    ui: &mut egui::Ui,
    id: &str,
    groups: &[GroupDiff],
    value: impl Fn(&GroupDiff) -> Option<f64>,
) {
    let bars: Vec<Bar> = groups
        .iter()
        .enumerate()
        .filter_map(|(i, g)| value(g).map(|v| Bar::new(i as f64, v).name(&g.name).width(0.8)))
        .collect();
    let names: Vec<String> = groups.iter().map(|g| g.name.clone()).collect();
    Plot::new(id)
        .height(180.0)
        .allow_scroll(false)
        .x_axis_formatter(move |m, _| {
            let i = m.value.round();
            if (m.value - i).abs() > 1e-6 || i < 0.0 {
                return String::new();
            }
            names.get(i as usize).map(|n| short(n)).unwrap_or_default()
        })
        .show(ui, |plot| plot.bar_chart(BarChart::new(id, bars)));
}

/// `stages.2.blocks.5` → `2.5`, `stages.1.downsample` → `ds1`.
fn short(name: &str) -> String {
    let p: Vec<&str> = name.split('.').collect();
    match p.as_slice() {
        ["stages", s, "blocks", b] => format!("{s}.{b}"),
        ["stages", s, "downsample"] => format!("ds{s}"),
        _ => name.to_string(),
    }
}

fn top_tensors(ui: &mut egui::Ui, d: &CheckpointDiff) {
    let mut ranked: Vec<_> = d
        .tensors
        .iter()
        .filter(|t| t.rel_change.is_some())
        .collect();
    ranked.sort_by(|x, y| {
        y.rel_change
            .unwrap_or(0.0)
            .total_cmp(&x.rel_change.unwrap_or(0.0))
    });
    if ranked.is_empty() {
        ui.label("none: no tensor present on both sides has any weight");
        return;
    }
    egui::Grid::new("diff top")
        .striped(true)
        .num_columns(3)
        .show(ui, |ui| {
            ui.label(RichText::new("tensor").strong());
            ui.label(RichText::new("rel. change").strong());
            ui.label(RichText::new("cosine").strong());
            ui.end_row();
            for t in ranked.iter().take(TOP_TENSORS) {
                ui.monospace(&t.name);
                ui.monospace(format!("{:.4}", t.rel_change.unwrap_or(0.0)));
                ui.monospace(t.cosine.map_or("-".into(), |c| format!("{c:.4}")));
                ui.end_row();
            }
        });
}

fn only_one_side(ui: &mut egui::Ui, what: &str, file: &str, names: &[String]) {
    ui.add_space(6.0);
    let text = if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    };
    ui.label(format!("Tensors {what} {file}: {text}"));
}
