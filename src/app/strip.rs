//! The architecture strip: stem, each stage, each block, as buttons to pick a layer by.
use crate::model::layer_id::LayerId;

/// Draws the strip for `depths` with `selected` highlighted (`hover` says what each is);
/// returns the layer clicked, if any.
pub fn layer_strip(
    ui: &mut egui::Ui,
    depths: &[usize],
    selected: Option<LayerId>,
    hover: impl Fn(LayerId) -> String,
) -> Option<LayerId> {
    let mut pick = None;
    ui.horizontal_wrapped(|ui| {
        ui.spacing_mut().item_spacing.x = 3.0;
        let mut button = |ui: &mut egui::Ui, id: LayerId, text: String| {
            if ui
                .selectable_label(selected == Some(id), text)
                .on_hover_text(hover(id))
                .clicked()
            {
                pick = Some(id);
            }
        };
        button(ui, LayerId::Stem, "stem".into());
        for (s, &d) in depths.iter().enumerate() {
            ui.separator();
            button(ui, LayerId::Stage(s), format!("stage {s}"));
            for b in 0..d {
                button(ui, LayerId::Block(s, b), format!("{b}"));
            }
        }
    });
    pick
}
