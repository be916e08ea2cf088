//! Layer scale: the learned per-channel gamma of every block (V1), or GRN's gamma and beta
//! (V2), along the depth, per channel for one block, and as a distribution. Weights only, so
//! this tab needs no image.
use super::plots::{histogram_bars, stage_colour};
use super::tab::{Tab, TabCtx};
use super::Shared;
use crate::model::layer_id::LayerId;
use egui::Color32;
use egui_plot::{Bar, BarChart, Plot};

/// Per block: `(stage, block, values)` of the parameter shown.
fn params(shared: &Shared, grn_beta: bool) -> (String, Vec<(usize, usize, Vec<f32>)>) {
    let Some(m) = &shared.model else {
        return (String::new(), vec![]);
    };
    if !m.gammas.is_empty() {
        return ("layer scale γ".into(), m.gammas.clone());
    }
    let name = if grn_beta { "GRN β" } else { "GRN γ" };
    let v = m
        .grn
        .iter()
        .map(|(s, b, g, beta)| (*s, *b, if grn_beta { beta.clone() } else { g.clone() }))
        .collect();
    (name.into(), v)
}

/// The layer-scale tab; for V2 it shows GRN's γ or β, as the user picks.
#[derive(Default)]
pub struct LayerScaleTab {
    grn_beta: bool,
}

impl Tab for LayerScaleTab {
    fn name(&self) -> &'static str {
        "Layer scale"
    }

    fn ui(&mut self, ui: &mut egui::Ui, ctx: &mut TabCtx) {
        let shared = &mut *ctx.shared;
        let Some(model) = &shared.model else {
            ui.label("No model loaded.");
            return;
        };
        if model.gammas.is_empty() && !model.grn.is_empty() {
            ui.horizontal(|ui| {
                ui.label(
                    "ConvNeXt V2 has no layer scale; its Global Response Normalisation learns:",
                );
                ui.selectable_value(&mut self.grn_beta, false, "γ (weight)");
                ui.selectable_value(&mut self.grn_beta, true, "β (bias)");
            });
        }
        show(shared, ui, self.grn_beta)
    }
}

type BlockValues = Vec<(usize, usize, Vec<f32>)>;

fn show(shared: &mut Shared, ui: &mut egui::Ui, beta: bool) {
    let (name, blocks) = params(shared, beta);
    if blocks.is_empty() {
        ui.label("This model has neither layer scale nor GRN parameters.");
        return;
    }
    let mean_abs: Vec<f64> = blocks
        .iter()
        .map(|(_, _, v)| v.iter().map(|x| x.abs() as f64).sum::<f64>() / v.len().max(1) as f64)
        .collect();
    let chosen = shared
        .selection
        .block
        .and_then(|sb| blocks.iter().position(|(s, b, _)| (*s, *b) == sb))
        .unwrap_or(blocks.len() - 1);
    let h = ((ui.available_height() - 80.0) / 2.0).max(140.0);
    depth_chart(ui, shared, &name, &blocks, &mean_abs, chosen, h);
    block_picker(ui, shared, &name, &blocks, mean_abs[chosen], chosen);
    block_detail(ui, &name, &blocks, chosen, h);
}

/// Mean |value| per block along the depth; a click picks the block.
fn depth_chart(
    ui: &mut egui::Ui,
    shared: &mut Shared,
    name: &str,
    blocks: &BlockValues,
    mean_abs: &[f64],
    chosen: usize,
    h: f32,
) {
    ui.label(format!(
        "Mean |{name}| per block along the depth, coloured by stage (click a bar to pick a block)"
    ));
    let bars: Vec<Bar> = blocks
        .iter()
        .zip(mean_abs)
        .enumerate()
        .map(|(i, ((s, b, _), &m))| {
            let mut bar = Bar::new(i as f64, m)
                .name(LayerId::Block(*s, *b).to_string())
                .fill(stage_colour(Some(*s)))
                .width(0.8);
            if i == chosen {
                bar = bar.stroke(egui::Stroke::new(2.0, Color32::WHITE));
            }
            bar
        })
        .collect();
    let r = Plot::new("gamma_depth")
        .height(h)
        .allow_scroll(false)
        .x_axis_label("block (in forward order)")
        .y_axis_label(format!("mean |{name}|"))
        .show(ui, |p| {
            p.bar_chart(BarChart::new(name.to_string(), bars));
            p.pointer_coordinate()
        });
    if r.response.clicked() {
        if let Some(pt) = r.inner {
            let i = pt.x.round().clamp(0.0, (blocks.len() - 1) as f64) as usize;
            shared.selection.block = Some((blocks[i].0, blocks[i].1));
        }
    }
}

fn block_picker(
    ui: &mut egui::Ui,
    shared: &mut Shared,
    name: &str,
    blocks: &BlockValues,
    mean_abs: f64,
    chosen: usize,
) {
    let (s, b, values) = &blocks[chosen];
    ui.horizontal(|ui| {
        let lbl = ui.label("Block");
        egui::ComboBox::from_id_salt("gamma_block")
            .selected_text(LayerId::Block(*s, *b).to_string())
            .height(300.0)
            .show_ui(ui, |ui| {
                for (s2, b2, _) in blocks {
                    if ui
                        .selectable_label((s2, b2) == (s, b), LayerId::Block(*s2, *b2).to_string())
                        .clicked()
                    {
                        shared.selection.block = Some((*s2, *b2));
                    }
                }
            })
            .response
            .labelled_by(lbl.id);
        let (lo, hi) = min_max(values);
        ui.label(format!(
            "{} channels · min {lo:.3e} · max {hi:.3e} · mean |{name}| {mean_abs:.3e}",
            values.len(),
        ));
    });
}

fn min_max(v: &[f32]) -> (f32, f32) {
    v.iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, c), &v| {
            (a.min(v), c.max(v))
        })
}

/// The chosen block's values sorted, and the distribution of log₁₀ |value| over all blocks.
fn block_detail(ui: &mut egui::Ui, name: &str, blocks: &BlockValues, chosen: usize, h: f32) {
    let (s, b, values) = &blocks[chosen];
    let w = ui.available_width() / 2.0 - 8.0;
    let mut sorted = values.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let colour = stage_colour(Some(*s));
    let per_channel: Vec<Bar> = sorted
        .iter()
        .enumerate()
        .map(|(i, &v)| Bar::new(i as f64, v as f64).width(1.0).fill(colour))
        .collect();
    // log10 |value| over every block: layer scale spans decades (init 1e-6).
    let logs: Vec<f32> = blocks
        .iter()
        .flat_map(|(_, _, v)| v.iter().map(|x| x.abs().max(1e-12).log10()))
        .collect();
    let (lo, hi) = min_max(&logs);
    let hist = histogram_bars(&logs, 50, lo, hi, 1e-6);
    ui.horizontal(|ui| {
        ui.vertical(|ui| {
            ui.label(format!(
                "{name} of {}, per channel, sorted",
                LayerId::Block(*s, *b)
            ));
            Plot::new("gamma_channels")
                .width(w)
                .height(h)
                .allow_scroll(false)
                .show(ui, |p| {
                    p.bar_chart(BarChart::new("per channel", per_channel))
                });
        });
        ui.vertical(|ui| {
            ui.label(format!("Distribution of log₁₀ |{name}| (all blocks)"));
            Plot::new("gamma_hist")
                .width(w)
                .height(h)
                .allow_scroll(false)
                .x_axis_label("log₁₀ |value|")
                .show(ui, |p| p.bar_chart(BarChart::new("count", hist)));
        });
    });
}
