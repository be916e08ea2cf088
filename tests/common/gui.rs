//! Driving the real app through egui_kittest: the harness, settling, snapshots.
use convnext_explorer::app::{ExplorerApp, Settings, StartOptions};
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub type App = Harness<'static, ExplorerApp>;

pub fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets/samples")
        .join(name)
}

/// One cache folder per test binary (the variable is process-wide and the tests run in
/// parallel): no test reads or writes the user's cache (atlases, the machine's limits).
pub fn cache_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let dir = DIR
        .get_or_init(|| tempfile::tempdir().unwrap())
        .path()
        .to_path_buf();
    std::env::set_var("CONVNEXT_CACHE_DIR", &dir);
    dir
}

pub fn harness(settings: Settings, start: StartOptions) -> App {
    // Tests never open a native dialog: the in-app path field stands in, always.
    std::env::set_var(convnext_explorer::app::path_prompt::NO_DIALOG_ENV, "1");
    cache_dir();
    Harness::builder()
        .with_size([1400.0, 900.0])
        .build_eframe(move |cc| ExplorerApp::new(&cc.egui_ctx, settings, start).unwrap())
}

pub fn shipped(image: Option<&str>) -> App {
    let mut h = harness(
        Settings::default(),
        StartOptions {
            image: image.map(sample),
            ..Default::default()
        },
    );
    settle(&mut h);
    h
}

/// Steps until the worker has finished everything asked of it and the weights list is read.
pub fn settle(h: &mut App) {
    let start = Instant::now();
    loop {
        h.step();
        let shared = h.state().shared();
        if !shared.busy() && shared.weights.is_some() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the app did not settle"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Take in the last replies and let the layout settle.
    h.run_steps(4);
}

/// A snapshot with the run-to-run varying timings masked out. A little tolerance: a pixel must
/// differ perceptibly (threshold 1.0) to count, and up to 100 may. Rendered here with every
/// SIMD level (`CONVNEXT_SIMD=avx2|baseline`) the snapshots came out identical; a changed label
/// moves a thousand pixels or more.
pub fn snap(h: &mut App, name: &str) {
    mask_timings(h);
    let opts = egui_kittest::SnapshotOptions::new()
        .threshold(1.0)
        .max_failed_pixels(100);
    h.snapshot_options(name, &opts);
}

/// Timings differ from run to run: keep them out of pictures.
pub fn mask_timings(h: &mut App) {
    let rects: Vec<egui::Rect> = h
        .query_all_by_label_contains(" ms")
        .map(|n| n.rect())
        .collect();
    // Whole width: the label's own width changes with the digits.
    for r in rects {
        h.mask(egui::Rect::from_min_max(r.min, egui::pos2(1400.0, r.max.y)));
    }
}

/// The newest error on show; fails the test when there is none.
pub fn last_error(app: &ExplorerApp) -> String {
    app.shared()
        .status
        .errors
        .last()
        .cloned()
        .expect("an error on show")
}
