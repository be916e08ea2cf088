//! Architecture: the layer list with shapes, parameters and MACs, at any input size.
use super::plots::shape_text;
use super::{nonzero, ExplorerApp};
use crate::flops::{human, layers, totals};
use egui::RichText;
use egui_extras::{Column, TableBuilder};

pub fn show(app: &mut ExplorerApp, ui: &mut egui::Ui) {
    let Some(m) = &app.model else {
        ui.label("No model loaded.");
        return;
    };
    let size_id = egui::Id::unique("arch_size");
    let mut size = ui
        .data(|d| d.get_temp::<(usize, usize)>(size_id))
        .unwrap_or(m.input_size);
    let stride = m.config.stride();
    ui.horizontal(|ui| {
        ui.label(format!("{} · input", m.config.describe()));
        ui.add(
            egui::DragValue::new(&mut size.0)
                .range(stride..=4096)
                .speed(stride as f64)
                .prefix("H "),
        );
        ui.add(
            egui::DragValue::new(&mut size.1)
                .range(stride..=4096)
                .speed(stride as f64)
                .prefix("W "),
        );
        if ui.button("model's size").clicked() {
            size = m.input_size;
        }
    });
    // Sizes snap to the network's total stride (every downsampling must divide evenly).
    size = (
        (size.0 / stride).max(1) * stride,
        (size.1 / stride).max(1) * stride,
    );
    ui.data_mut(|d| d.insert_temp(size_id, size));
    let list = layers(&m.config, 1, size.0, size.1);
    let t = totals(&list);
    ui.label(format!(
        "{} layers · {} params · {} MACs ({} FLOPs) at {}×{}",
        list.iter().filter(|l| !l.container).count(),
        human(t.total_params as f64),
        human(t.total_macs as f64),
        human(2.0 * t.total_macs as f64),
        size.0,
        size.1
    ));
    ui.separator();
    TableBuilder::new(ui)
        .striped(true)
        .resizable(true)
        .column(Column::initial(280.0).at_least(140.0))
        .column(Column::initial(110.0))
        .column(Column::initial(130.0))
        .column(Column::initial(130.0))
        .column(Column::initial(80.0))
        .column(Column::remainder())
        .header(20.0, |mut h| {
            for name in ["layer", "kind", "input", "output", "params", "MACs"] {
                h.col(|ui| {
                    ui.strong(name);
                });
            }
        })
        .body(|body| {
            body.rows(18.0, list.len(), |mut row| {
                let l = &list[row.index()];
                row.col(|ui| {
                    let text =
                        RichText::new(format!("{}{}", "  ".repeat(l.depth), l.name)).monospace();
                    ui.label(if l.container { text.strong() } else { text });
                });
                row.col(|ui| {
                    ui.label(&l.kind);
                });
                row.col(|ui| {
                    ui.label(shape_text(&l.in_shape));
                });
                row.col(|ui| {
                    ui.label(shape_text(&l.out_shape));
                });
                row.col(|ui| {
                    ui.label(nonzero(l.params as f64));
                });
                row.col(|ui| {
                    ui.label(nonzero(l.macs as f64));
                });
            });
        });
}
