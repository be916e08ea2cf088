//! Compare → layer similarity: the linear CKA of every layer of the left model with every layer
//! of the other, as a heat map (A's layers down, B's across, stage borders marked) and the
//! curve along the diagonal.
use crate::analysis::cka::{self, CkaResult};
use crate::analysis::colormap::Colormap;
use crate::base::progress::Progress;
use crate::io::engine::Engine;
use crate::model::layer_id::LayerId;
use egui::{Color32, Pos2, Rect, RichText, Sense, Stroke, Vec2};
use std::path::{Path, PathBuf};

/// How many images of the folder CKA runs over, at most.
pub const LIMIT: usize = 256;

/// A CKA matrix with what it was computed from.
pub struct CkaOutcome {
    pub result: CkaResult,
    pub la: Vec<LayerId>,
    pub lb: Vec<LayerId>,
    pub folder: PathBuf,
    pub a_label: String,
    pub b_label: String,
}

/// CKA over the images of `folder` (at most [`LIMIT`]): runs on the worker.
pub fn compute(
    a: (&Engine, String),
    b: (&Engine, String),
    folder: &Path,
    progress: &mut dyn Progress,
) -> anyhow::Result<CkaOutcome> {
    let result = cka::cka_folder(a.0, b.0, folder, Some(LIMIT), cka::BATCH, progress)?;
    if result.images == 0 {
        anyhow::bail!(
            "no images to compare in {} (CKA needs at least {} that decode)",
            folder.display(),
            cka::MIN_BATCH
        );
    }
    Ok(CkaOutcome {
        result,
        la: cka::layers(&a.0.plan),
        lb: cka::layers(&b.0.plan),
        folder: folder.to_path_buf(),
        a_label: a.1,
        b_label: b.1,
    })
}

/// What the heat map shows: one sentence first, then the matrix; returns the cell clicked
/// (A's layer, B's layer).
pub fn view(
    ui: &mut egui::Ui,
    o: &CkaOutcome,
    picked: Option<(usize, usize)>,
) -> Option<(usize, usize)> {
    ui.label(format!(
        "How alike each layer of {} (rows) and each layer of {} (columns) represent the same {} images of {} (linear CKA: 1 = the same up to rotation and scale, 0 = unrelated; mini-batches of {}).",
        o.a_label,
        o.b_label,
        o.result.images,
        crate::base::text::file_label(&o.folder),
        o.result.batch
    ));
    ui.label(RichText::new(format!("rows: {} · columns: {}", o.a_label, o.b_label)).strong());
    let mut clicked = None;
    ui.horizontal_top(|ui| {
        clicked = heat_map(ui, o, picked);
        ui.vertical(|ui| {
            ui.label(RichText::new("CKA").small());
            colour_scale(ui);
            diagonal_plot(ui, o);
        });
    });
    clicked
}

fn heat_map(
    ui: &mut egui::Ui,
    o: &CkaOutcome,
    picked: Option<(usize, usize)>,
) -> Option<(usize, usize)> {
    let (na, nb) = (o.la.len(), o.lb.len());
    let label_w = 110.0;
    let room = (ui.available_width() - label_w - 260.0).clamp(200.0, 560.0);
    let cell = (room / nb.max(na) as f32).clamp(6.0, 40.0);
    let top = 18.0;
    let size = Vec2::new(label_w + cell * nb as f32, top + cell * na as f32);
    let (rect, resp) = ui.allocate_exact_size(size, Sense::click());
    let origin = rect.min + Vec2::new(label_w, top);
    let painter = ui.painter_at(rect);
    let cell_rect = |i: usize, j: usize| {
        Rect::from_min_size(
            origin + Vec2::new(j as f32 * cell, i as f32 * cell),
            Vec2::splat(cell),
        )
    };
    for (i, row) in o.result.cka.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            painter.rect_filled(cell_rect(i, j), 0.0, cell_colour(*v));
        }
    }
    stage_borders(&painter, origin, cell, (&o.la, &o.lb));
    axis_labels(ui, &painter, origin, cell, o);
    if let Some((i, j)) = picked.filter(|&(i, j)| i < na && j < nb) {
        painter.rect_stroke(
            cell_rect(i, j).expand(1.0),
            0.0,
            Stroke::new(2.0, Color32::from_rgb(255, 80, 0)),
            egui::StrokeKind::Outside,
        );
    }
    let at = |p: Pos2| {
        let d = (p - origin) / cell;
        (d.x >= 0.0 && d.y >= 0.0 && (d.y as usize) < na && (d.x as usize) < nb)
            .then_some((d.y as usize, d.x as usize))
    };
    let hovered = resp.hover_pos().and_then(at);
    if let Some((i, j)) = hovered {
        let v = o.result.cka[i][j].map_or("constant over the images: no CKA".into(), |v| {
            format!("CKA {v:.3}")
        });
        resp.clone().on_hover_text(format!(
            "{} (left) × {} (right): {v}",
            o.la[i].name(),
            o.lb[j].name()
        ));
    }
    resp.clicked()
        .then(|| resp.interact_pointer_pos().and_then(at))
        .flatten()
}

fn cell_colour(v: Option<f64>) -> Color32 {
    match v {
        Some(v) => {
            let [r, g, b] = Colormap::Viridis.rgb(v.clamp(0.0, 1.0) as f32);
            Color32::from_rgb(r, g, b)
        }
        None => Color32::from_gray(60),
    }
}

/// A line after each stage's output: the matrix reads by stage.
fn stage_borders(
    painter: &egui::Painter,
    origin: Pos2,
    cell: f32,
    (la, lb): (&[LayerId], &[LayerId]),
) {
    let (h, w) = (la.len() as f32 * cell, lb.len() as f32 * cell);
    let stroke = Stroke::new(1.5, Color32::WHITE);
    for (i, id) in la.iter().enumerate() {
        if matches!(id, LayerId::Stem | LayerId::Stage(_)) {
            let y = origin.y + (i + 1) as f32 * cell;
            painter.line_segment([Pos2::new(origin.x, y), Pos2::new(origin.x + w, y)], stroke);
        }
    }
    for (j, id) in lb.iter().enumerate() {
        if matches!(id, LayerId::Stem | LayerId::Stage(_)) {
            let x = origin.x + (j + 1) as f32 * cell;
            painter.line_segment([Pos2::new(x, origin.y), Pos2::new(x, origin.y + h)], stroke);
        }
    }
}

/// Row labels at each stage's first row; column labels as stage numbers above.
fn axis_labels(ui: &egui::Ui, painter: &egui::Painter, origin: Pos2, cell: f32, o: &CkaOutcome) {
    let font = egui::FontId::proportional(11.0);
    let colour = ui.visuals().text_color();
    for (i, id) in o.la.iter().enumerate() {
        if let Some(text) = group_label(&o.la, i, id) {
            let pos = Pos2::new(origin.x - 4.0, origin.y + (i as f32 + 0.5) * cell);
            painter.text(pos, egui::Align2::RIGHT_CENTER, text, font.clone(), colour);
        }
    }
    // Columns are narrow: a stage's label starts at its first column.
    for (j, id) in o.lb.iter().enumerate() {
        if let Some(text) = group_label(&o.lb, j, id) {
            let text = if cell < 32.0 {
                text.replace("stage ", "")
            } else {
                text
            };
            let pos = Pos2::new(origin.x + j as f32 * cell + 2.0, origin.y - 3.0);
            painter.text(pos, egui::Align2::LEFT_BOTTOM, text, font.clone(), colour);
        }
    }
}

/// "stem", or "stage S" at a stage's first block.
fn group_label(layers: &[LayerId], i: usize, id: &LayerId) -> Option<String> {
    match id {
        LayerId::Stem => Some("stem".into()),
        LayerId::Block(s, 0) => Some(format!("stage {s}")),
        LayerId::Stage(_) if i > 0 && !matches!(layers[i - 1], LayerId::Block(..)) => {
            Some(id.name())
        }
        _ => None,
    }
}

fn colour_scale(ui: &mut egui::Ui) {
    let (rect, _) = ui.allocate_exact_size(Vec2::new(160.0, 12.0), Sense::hover());
    let n = 32;
    for k in 0..n {
        let x0 = rect.left() + rect.width() * k as f32 / n as f32;
        let x1 = rect.left() + rect.width() * (k + 1) as f32 / n as f32;
        let r = Rect::from_min_max(Pos2::new(x0, rect.top()), Pos2::new(x1, rect.bottom()));
        ui.painter()
            .rect_filled(r, 0.0, cell_colour(Some((k as f64 + 0.5) / n as f64)));
    }
    ui.label(RichText::new("0 … 1 (grey: a layer constant over the images)").small());
}

/// CKA along the diagonal: each of A's layers against B's layer at the same relative depth
/// (the same layer when both have the same layers).
pub fn diagonal(o: &CkaOutcome) -> Vec<[f64; 2]> {
    let (na, nb) = (o.la.len(), o.lb.len());
    let span = |n: usize| n.saturating_sub(1).max(1) as f64;
    (0..na)
        .filter_map(|i| {
            let t = i as f64 / span(na);
            let j = (t * span(nb)).round() as usize;
            o.result.cka[i]
                .get(j.min(nb - 1))
                .copied()
                .flatten()
                .map(|v| [t, v])
        })
        .collect()
}

fn diagonal_plot(ui: &mut egui::Ui, o: &CkaOutcome) {
    use egui_plot::{Line, Plot, PlotPoints};
    ui.add_space(8.0);
    ui.label(RichText::new("Along the diagonal: each layer of the left model against the right model's layer at the same depth").small());
    Plot::new("cka diagonal")
        .width(260.0)
        .height(160.0)
        .include_y(0.0)
        .include_y(1.0)
        .x_axis_label("normalised depth")
        .allow_scroll(false)
        .show(ui, |plot| {
            plot.line(Line::new("CKA", PlotPoints::from(diagonal(o))));
        });
}
