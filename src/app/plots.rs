//! Small drawing helpers more than one panel uses.
use egui::Color32;
use egui_plot::Bar;

/// One colour per stage (the stem and head, `None`, in grey), the same in every chart.
pub fn stage_colour(stage: Option<usize>) -> Color32 {
    const STAGES: [Color32; 4] = [
        Color32::from_rgb(31, 119, 180),
        Color32::from_rgb(255, 127, 14),
        Color32::from_rgb(44, 160, 44),
        Color32::from_rgb(214, 39, 40),
    ];
    match stage {
        Some(s) => STAGES[s.min(STAGES.len() - 1)],
        None => Color32::GRAY,
    }
}

/// A histogram of `values` over `[lo, hi]` as touching bars (bin width at least `min_step`).
pub fn histogram_bars(values: &[f32], bins: usize, lo: f32, hi: f32, min_step: f32) -> Vec<Bar> {
    let step = ((hi - lo) / bins as f32).max(min_step) as f64;
    crate::analysis::stats::histogram(values, bins, lo, hi)
        .iter()
        .enumerate()
        .map(|(i, &n)| Bar::new(lo as f64 + (i as f64 + 0.5) * step, n as f64).width(step))
        .collect()
}
