//! The layer table the Profile and Architecture tabs share: one row per layer (name, kind,
//! shapes, parameters, MACs, and times once measured), sorted by a clicked header. Only the
//! rows in view are laid out.
use crate::analysis::profile::ProfileRow;
use crate::base::text::{blank_if_zero, shape_text};
use egui::RichText;
use egui_extras::{Column, TableBuilder};

#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum SortKey {
    /// The order of the forward pass.
    #[default]
    Order,
    Name,
    Params,
    Macs,
    Time,
}

/// A table's sort state.
#[derive(Default)]
pub struct LayerTable {
    key: SortKey,
    descending: bool,
}

impl LayerTable {
    /// `mult` turns MACs into the unit shown (2 for FLOPs); time columns show when `timed`.
    pub fn ui(&mut self, ui: &mut egui::Ui, mut rows: Vec<ProfileRow>, unit: &str, mult: f64) {
        let timed = rows.iter().any(|r| r.ms.is_some());
        let limited = rows.iter().any(|r| r.percent_of_limit.is_some());
        self.sort(&mut rows);
        if self.key != SortKey::Order && ui.small_button("forward order").clicked() {
            self.key = SortKey::Order;
            self.descending = false;
        }
        let mut clicked = None;
        let mut table = TableBuilder::new(ui)
            .striped(true)
            .resizable(true)
            .column(Column::initial(260.0).at_least(120.0))
            .column(Column::initial(110.0))
            .column(Column::initial(200.0))
            .column(Column::initial(70.0))
            .column(Column::initial(80.0));
        if timed {
            table = table.columns(Column::initial(70.0), 3);
        }
        if limited {
            table = table.column(Column::initial(80.0));
        }
        table
            .column(Column::remainder())
            .header(22.0, |mut h| {
                h.col(|ui| self.header(ui, "layer", SortKey::Name, &mut clicked));
                h.col(|ui| {
                    ui.add(egui::Label::new(RichText::new("kind").strong()).extend());
                });
                h.col(|ui| {
                    ui.add(egui::Label::new(RichText::new("in -> out (NCHW)").strong()).extend());
                });
                h.col(|ui| self.header(ui, "params", SortKey::Params, &mut clicked));
                h.col(|ui| self.header(ui, unit, SortKey::Macs, &mut clicked));
                if timed {
                    h.col(|ui| self.header(ui, "ms", SortKey::Time, &mut clicked));
                    h.col(|ui| {
                        ui.add(egui::Label::new(RichText::new("% time").strong()).extend());
                    });
                    h.col(|ui| {
                        ui.add(
                            egui::Label::new(RichText::new(format!("G{unit}/s")).strong()).extend(),
                        );
                    });
                }
                if limited {
                    h.col(|ui| {
                        ui.add(egui::Label::new(RichText::new("% of limit").strong()).extend())
                            .on_hover_text("Achieved rate ÷ the roofline's limit at the layer's intensity (over 100: its data came from the caches, faster than the memory roof)");
                    });
                }
                h.col(|_| {});
            })
            .body(|body| {
                body.rows(18.0, rows.len(), |mut row| {
                    let r = &rows[row.index()];
                    row.col(|ui| {
                        let text = RichText::new(format!("{}{}", "  ".repeat(r.depth), r.name));
                        let text = text.monospace();
                        ui.label(if r.container { text.strong() } else { text });
                    });
                    row.col(|ui| {
                        ui.label(&r.kind);
                    });
                    row.col(|ui| {
                        let (i, o) = (shape_text(&r.in_shape, '×'), shape_text(&r.out_shape, '×'));
                        ui.label(format!("{i} -> {o}"));
                    });
                    row.col(|ui| {
                        ui.label(blank_if_zero(r.params as f64));
                    });
                    row.col(|ui| {
                        ui.label(blank_if_zero(r.macs as f64 * mult));
                    });
                    if timed {
                        let cell = |v: Option<f64>, digits: usize| {
                            v.map(|v| format!("{v:.digits$}")).unwrap_or_default()
                        };
                        row.col(|ui| {
                            ui.label(cell(r.ms, 3));
                        });
                        row.col(|ui| {
                            ui.label(cell(r.percent, 1));
                        });
                        // Achieved rate in the unit shown (GFLOP/s is twice GMAC/s).
                        row.col(|ui| {
                            ui.label(cell(r.gflops.map(|g| g / 2.0 * mult), 1));
                        });
                    }
                    if limited {
                        row.col(|ui| {
                            let text = r.percent_of_limit.map(|p| format!("{p:.0}"));
                            ui.label(text.unwrap_or_default());
                        });
                    }
                    row.col(|_| {});
                });
            });
        if let Some(k) = clicked {
            if k == self.key {
                self.descending = !self.descending;
            } else {
                self.key = k;
                // Big first for numbers, A first for names.
                self.descending = k != SortKey::Name;
            }
        }
    }

    fn sort(&self, rows: &mut [ProfileRow]) {
        match self.key {
            SortKey::Order => {}
            SortKey::Name => rows.sort_by(|a, b| a.name.cmp(&b.name)),
            SortKey::Params => rows.sort_by_key(|r| r.params),
            SortKey::Macs => rows.sort_by_key(|r| r.macs),
            SortKey::Time => {
                rows.sort_by(|a, b| a.ms.unwrap_or(-1.0).total_cmp(&b.ms.unwrap_or(-1.0)))
            }
        }
        if self.descending {
            rows.reverse();
        }
    }

    fn header(&self, ui: &mut egui::Ui, label: &str, k: SortKey, clicked: &mut Option<SortKey>) {
        let arrow = match (self.key == k, self.descending) {
            (false, _) => "",
            (true, true) => " (desc)",
            (true, false) => " (asc)",
        };
        let text = RichText::new(format!("{label}{arrow}")).strong();
        if ui.button(text).on_hover_text("Sort").clicked() {
            *clicked = Some(k);
        }
    }
}
