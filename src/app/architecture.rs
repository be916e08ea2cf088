//! Architecture: the layer list with shapes, parameters and MACs, at any input size.
use super::layer_table::LayerTable;
use super::tab::{Tab, TabCtx};
use super::views::ModelView;
use crate::analysis::profile::rows;
use crate::base::text::human;
use crate::model::flops::{layers, totals};

#[derive(Default)]
pub struct ArchitectureTab {
    /// The input size shown; `None` follows the model's own.
    size: Option<(usize, usize)>,
    table: LayerTable,
}

impl Tab for ArchitectureTab {
    fn name(&self) -> &'static str {
        "Architecture"
    }

    /// A new model brings its own input size.
    fn on_model_changed(&mut self, _model: &ModelView) {
        self.size = None;
    }

    fn ui(&mut self, ui: &mut egui::Ui, ctx: &mut TabCtx) {
        let Some(m) = &ctx.shared.model else {
            ui.label("No model loaded.");
            return;
        };
        let mut size = self.size.unwrap_or(m.input_size);
        let stride = m.plan.stride();
        ui.horizontal(|ui| {
            ui.label(format!("{} · input", m.plan.name));
            for (v, prefix) in [(&mut size.0, "H "), (&mut size.1, "W ")] {
                ui.add(
                    egui::DragValue::new(v)
                        .range(stride..=4096)
                        .speed(stride as f64)
                        .prefix(prefix),
                );
            }
            if ui.button("model's size").clicked() {
                size = m.input_size;
            }
        });
        // Sizes snap to the network's total stride (every downsampling must divide evenly).
        size = (
            (size.0 / stride).max(1) * stride,
            (size.1 / stride).max(1) * stride,
        );
        self.size = (size != m.input_size).then_some(size);
        let list = layers(&m.plan, 1, size.0, size.1);
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
        let table = rows(&list, &[], std::time::Duration::ZERO);
        self.table.ui(ui, table, "MACs", 1.0);
    }
}
