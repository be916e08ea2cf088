//! The Profile tab's roofline plot: every timed layer at its arithmetic intensity and achieved
//! GFLOP/s, log-log, under the machine's memory and compute roofs.
use crate::analysis::roofline::{Limits, Point};
use egui::Color32;
use egui_plot::{Legend, Line, LineStyle, Plot, PlotPoints, Points};

/// The kinds drawn as their own series (with their colour); the rest share one.
const KINDS: [(&str, Color32); 5] = [
    ("Linear", Color32::from_rgb(31, 119, 180)),
    ("DwConv", Color32::from_rgb(255, 127, 14)),
    ("LayerNorm", Color32::from_rgb(44, 160, 44)),
    ("GELU", Color32::from_rgb(214, 39, 40)),
    ("Conv2d", Color32::from_rgb(148, 103, 189)),
];
const OTHER: (&str, Color32) = ("other", Color32::from_rgb(140, 140, 140));

fn series_of(kind: &str) -> (&'static str, Color32) {
    let head = kind.split_whitespace().next().unwrap_or("");
    KINDS.into_iter().find(|(k, _)| *k == head).unwrap_or(OTHER)
}

/// The layers of each series, in the order the plot's points are, for the hover label.
fn grouped(points: &[Point]) -> Vec<(&'static str, Color32, Vec<&Point>)> {
    let mut out: Vec<(&'static str, Color32, Vec<&Point>)> = KINDS
        .into_iter()
        .chain([OTHER])
        .map(|(k, c)| (k, c, Vec::new()))
        .collect();
    for p in points {
        let (k, _) = series_of(&p.kind);
        if let Some(g) = out.iter_mut().find(|g| g.0 == k) {
            g.2.push(p);
        }
    }
    out.retain(|g| !g.2.is_empty());
    out
}

/// `10^v` as a short number, for the log axes.
fn pow10_text(v: f64) -> String {
    let x = 10f64.powf(v);
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 1.0 {
        format!("{x:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        format!("{x:.3}")
    }
}

/// The plot, `height` points tall.
pub fn plot(ui: &mut egui::Ui, points: &[Point], limits: &Limits, height: f32) {
    let groups = grouped(points);
    let lo = points
        .iter()
        .map(|p| p.intensity)
        .fold(limits.ridge(), f64::min)
        / 2.0;
    let hi = points
        .iter()
        .map(|p| p.intensity)
        .fold(limits.ridge(), f64::max)
        * 2.0;
    let (lx, hx, rx) = (lo.log10(), hi.log10(), limits.ridge().log10());
    let memory = |x: f64| x + limits.memory_gbs.log10();
    let labels: Vec<(&'static str, Vec<String>)> = groups
        .iter()
        .map(|(k, _, ps)| {
            let text = ps
                .iter()
                .map(|p| {
                    format!(
                        "{} ({})\n{:.2} FLOP/byte, {:.1} GFLOP/s\n{:.0} % of its roof ({:.0} GFLOP/s), {:.3} ms",
                        p.name, p.kind, p.intensity, p.gflops, p.percent_of_limit, p.roof_gflops, p.ms
                    )
                })
                .collect();
            (*k, text)
        })
        .collect();
    Plot::new("roofline")
        .height(height)
        .allow_scroll(false)
        .x_axis_label("arithmetic intensity (FLOP per byte moved, log)")
        .y_axis_label("GFLOP/s (log)")
        .x_axis_formatter(|m, _| pow10_text(m.value))
        .y_axis_formatter(|m, _| pow10_text(m.value))
        .legend(
            Legend::default()
                .position(egui_plot::Corner::RightBottom)
                .text_style(egui::TextStyle::Small),
        )
        .label_formatter(move |pos| match pos {
            egui_plot::HoverPosition::NearDataPoint {
                plot_name, index, ..
            } => labels
                .iter()
                .find(|(k, _)| k == plot_name)
                .and_then(|(_, t)| t.get(*index).cloned()),
            _ => None,
        })
        .show(ui, |p| {
            let peak = limits.peak_gflops.log10();
            let roof = vec![[lx, memory(lx)], [rx, peak], [hx, peak]];
            p.line(
                Line::new("roof: memory / FMA peak", PlotPoints::from(roof))
                    .color(Color32::from_gray(60))
                    .width(2.0),
            );
            let gemm = limits.gemm_gflops.log10();
            let (m, k, n) = crate::kernels::peak::GEMM_SHAPE;
            p.line(
                Line::new(
                    format!("our GEMM, {m}×{k}×{n}"),
                    PlotPoints::from(vec![[rx, gemm], [hx, gemm]]),
                )
                .color(Color32::from_rgb(31, 119, 180))
                .style(LineStyle::dashed_loose()),
            );
            let cache = |x: f64| x + limits.cache_gbs.log10();
            let cache_ridge = (peak - limits.cache_gbs.log10()).max(lx);
            p.line(
                Line::new(
                    "cache roof",
                    PlotPoints::from(vec![[lx, cache(lx)], [cache_ridge, cache(cache_ridge)]]),
                )
                .color(Color32::from_gray(150))
                .style(LineStyle::dashed_dense()),
            );
            for (k, colour, ps) in &groups {
                let xy: Vec<[f64; 2]> = ps
                    .iter()
                    .map(|p| [p.intensity.log10(), p.gflops.max(1e-6).log10()])
                    .collect();
                p.points(
                    Points::new(*k, PlotPoints::from(xy))
                        .color(*colour)
                        .radius(3.0),
                );
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_labels_read_as_plain_numbers() {
        assert_eq!(pow10_text(2.0), "100");
        assert_eq!(pow10_text(0.0), "1");
        assert_eq!(pow10_text(-1.0), "0.100");
        assert_eq!(series_of("DwConv 7×7").0, "DwConv");
        assert_eq!(series_of("Add").0, "other");
    }
}
