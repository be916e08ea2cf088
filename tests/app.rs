//! The app, driven through egui_kittest: the real `eframe::App`, the real worker thread, the
//! shipped model. Snapshots render on the CPU (wgpu on llvmpipe/lavapipe).
#![cfg(feature = "app")]
use convnext_explorer::app::worker::ImageSource;
use convnext_explorer::app::{
    AttributionTab, ErfTab, ProfileTab, Request, RoadmapTab, Settings, StartOptions,
};
use convnext_explorer::io::engine::ModelSpec;
use convnext_explorer::model::layer_id::LayerId;
use egui_kittest::kittest::Queryable;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::gui::*;

#[test]
fn opens_on_the_shipped_model_and_classifies_a_sample() {
    let mut h = shipped(Some("sneaker_9.png"));
    let app = h.state();
    let model = app.shared().model.as_ref().expect("a model");
    assert!(!model.is_random);
    assert!(
        matches!(&model.spec, ModelSpec::Weights(p) if p.ends_with("convnext_fashion.safetensors"))
    );
    let run = app.shared().run.as_ref().expect("a run");
    assert_eq!(run.top[0].label, "Sneaker");
    assert!(
        app.shared().status.errors.is_empty(),
        "{:?}",
        app.shared().status.errors
    );
    // The prediction list shows it, and the grid shows the stem's 32 channels.
    h.get_by_label_contains("%  Sneaker");
    h.get_by_label_contains("32 channels");
    snap(&mut h, "app_feature_maps");
}

#[test]
fn switching_layers_changes_the_grid_and_a_channel_opens_large() {
    let mut h = shipped(Some("bag_18.png"));
    h.get_by_label("stage 2").click();
    h.run_steps(2);
    assert_eq!(h.state().shared().selection.layer, Some(LayerId::Stage(2)));
    h.get_by_label_contains("128 channels · 4×4");
    h.get_by_label("1").click(); // block 1 of stage 0 (stage labels come first in the strip)
    h.run_steps(2);
    let layer = h.state().shared().selection.layer.expect("a layer");
    assert!(matches!(layer, LayerId::Block(_, 1)), "{layer:?}");
    h.get_by_label("stage 1").click();
    h.run_steps(2);
    h.get_by_label_contains("64 channels · 8×8");
    // The first button is the first channel of the page: the highest mean, by default.
    let c = {
        let run = h.state().shared().run.as_ref().unwrap();
        let (_, fm) = run
            .maps
            .iter()
            .find(|(id, _)| *id == LayerId::Stage(1))
            .unwrap();
        convnext_explorer::analysis::grid::order(
            fm,
            convnext_explorer::analysis::grid::SortBy::Mean,
        )[0]
    };
    h.get_by_label(&format!("ch {c}")).click();
    h.run_steps(2);
    assert_eq!(h.state().shared().selection.channel, Some(c));
    h.get_by_label_contains(&format!("stages.1 · channel {c}"));
    snap(&mut h, "app_channel_overlay");
}

#[test]
fn clicking_a_class_shows_its_evidence() {
    let mut h = shipped(Some("trouser_2.png"));
    h.get_by_label_contains("%  Trouser").click();
    h.run_steps(2);
    let app = h.state();
    let trouser = app.shared().run.as_ref().unwrap().top[0].index;
    assert_eq!(app.shared().selection.class, Some(trouser));
    // The shipped model's last stage is 2×2: the top class's first picture is Grad-CAM at the
    // deepest layer at least 7×7 (stages.1, 8×8), saying why; another class gets its exact
    // evidence map.
    let e = app
        .shared()
        .run
        .as_ref()
        .unwrap()
        .explained
        .as_ref()
        .unwrap();
    assert_eq!(
        (e.layer, e.map.height, e.map.width),
        (LayerId::Stage(1), 8, 8)
    );
    h.get_by_label_contains("Grad-CAM at stages.1 for “Trouser”");
    h.get_by_label_contains("stages.1 by default: the deepest layer whose map is at least 7×7");
    let second = h.state().shared().run.as_ref().unwrap().top[1].clone();
    h.get_by_label_contains(&format!("%  {}", second.label))
        .click();
    h.run_steps(2);
    h.get_by_label_contains(&format!("evidence for “{}”", second.label));
}

#[test]
fn tabs_show_layer_scale_profile_and_architecture() {
    let mut h = shipped(Some("coat_6.png"));
    h.get_by_label("Layer scale").click();
    h.run_steps(3);
    assert_eq!(h.state().shared().settings.tab, "Layer scale");
    h.get_by_label_contains("Mean |layer scale γ| per block");
    snap(&mut h, "app_layer_scale");

    h.get_by_label("Architecture").click();
    h.run_steps(3);
    h.get_by_label_contains("stages.0.blocks.0.conv_dw");
    snap(&mut h, "app_architecture");

    h.get_by_label("Profile").click();
    h.run_steps(3);
    h.get_by_label_contains("press Run profile for times");
    snap(&mut h, "app_profile_macs");
    // While it times, the window holds still: "timing" where a spinner would turn (a long
    // profile, cancelled).
    h.state_mut().shared_mut().settings.profile_runs = 1000;
    h.get_by_label("Run profile").click();
    h.run_steps(2);
    assert_eq!(
        h.query_all_by_label("timing").count(),
        2,
        "status bar and tab"
    );
    h.get_by_label("Cancel").click();
    settle(&mut h);
    assert!(h.query_by_label("timing").is_none());
    h.state_mut().shared_mut().settings.profile_runs = 2;
    h.get_by_label("Run profile").click();
    h.run_steps(1);
    settle(&mut h);
    let p = h.state().tab::<ProfileTab>().unwrap().profile();
    let p = p.expect("a profile");
    assert_eq!(p.runs, 2);
    assert!(p.total > Duration::ZERO);
    h.get_by_label_contains("median of 2 runs");
    // The roofline: the machine's limits (measured with the first profile) and the layers'
    // share of them in the table.
    h.get_by_label_contains("compute roof");
    h.get_by_label("% of limit");
    let limits = *h.state().tab::<ProfileTab>().unwrap().limits().unwrap();
    assert!(limits.peak_gflops > 0.0 && limits.memory_gbs > 0.0);
    // Kept for the next launch on this machine.
    assert_eq!(
        convnext_explorer::analysis::roofline::cached(),
        Some(limits)
    );
}

#[test]
fn a_broken_checkpoint_shows_an_error_and_keeps_the_model() {
    let mut h = shipped(Some("dress_13.png"));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.safetensors");
    let good = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/convnext_fashion.safetensors"),
    )
    .unwrap();
    std::fs::write(&bad, &good[..good.len() / 3]).unwrap();
    // File ▸ Open weights ends in this call (the dialog itself is not driven in tests).
    h.state_mut()
        .request(Request::Load(ModelSpec::Weights(bad)));
    settle(&mut h);
    let app = h.state();
    let err = last_error(app);
    assert!(
        err.contains("Could not load the model") && err.contains("broken.safetensors"),
        "{err}"
    );
    assert!(
        matches!(&app.shared().model.as_ref().unwrap().spec, ModelSpec::Weights(p) if p.ends_with("convnext_fashion.safetensors"))
    );
    assert_eq!(app.shared().run.as_ref().unwrap().name, "dress_13.png");
    h.get_by_label_contains("Could not load the model");
}

#[test]
fn a_corrupt_image_shows_an_error_and_keeps_the_results() {
    let mut h = shipped(Some("sandal_8.png"));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("corrupt.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nthis is not an image").unwrap();
    h.state_mut()
        .request(Request::OpenImage(ImageSource::Path(bad)));
    settle(&mut h);
    let app = h.state();
    let err = last_error(app);
    assert!(err.contains("Could not open the image"), "{err}");
    assert_eq!(app.shared().run.as_ref().unwrap().name, "sandal_8.png");
    assert_eq!(app.shared().run.as_ref().unwrap().top[0].label, "Sandal");
}

#[derive(Debug)]
struct Dropped(PathBuf);
impl egui::DroppedFile for Dropped {
    fn path(&self) -> &Path {
        &self.0
    }
    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

#[test]
fn dropping_a_file_classifies_it() {
    let mut h = shipped(None);
    assert!(h.state().shared().run.is_none());
    h.get_by_label_contains("Drop an image on the window");
    h.input_mut()
        .dropped_files
        .push(Arc::new(Dropped(sample("ankle_boot_0.png"))));
    h.step();
    settle(&mut h);
    let run = h
        .state()
        .shared()
        .run
        .as_ref()
        .expect("the dropped image ran");
    assert_eq!(run.name, "ankle_boot_0.png");
    assert_eq!(run.top[0].label, "Ankle boot");
}

#[test]
fn a_sample_button_opens_the_sample() {
    let mut h = shipped(None);
    h.get_by_label("pullover_1").click();
    h.step();
    settle(&mut h);
    assert_eq!(
        h.state().shared().run.as_ref().unwrap().name,
        "pullover_1.png"
    );
}

#[test]
fn a_named_variant_opens_with_a_random_weights_notice() {
    let settings = Settings {
        model: Some(ModelSpec::Variant {
            name: "convnextv2_atto".into(),
            classes: 1000,
            seed: 0,
        }),
        ..Default::default()
    };
    let mut h = harness(settings, StartOptions::default());
    settle(&mut h);
    let m = h.state().shared().model.as_ref().expect("a model");
    assert!(m.is_random);
    assert_eq!(
        m.plan.convnext_config().unwrap().dims,
        vec![40, 80, 160, 320]
    );
    h.get_by_label_contains("predictions are meaningless");
    // V2 has GRN instead of layer scale: the tab says so and plots GRN γ.
    h.get_by_label("Layer scale").click();
    h.run_steps(3);
    h.get_by_label_contains("Mean |GRN γ| per block");
}

#[test]
fn a_remembered_model_that_no_longer_loads_falls_back_to_the_shipped_one() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("deleted_since.safetensors");
    std::fs::write(&gone, b"not a checkpoint").unwrap();
    let settings = Settings {
        model: Some(ModelSpec::Weights(gone)),
        ..Default::default()
    };
    let mut h = harness(settings, StartOptions::default());
    settle(&mut h);
    let app = h.state();
    let err = last_error(app);
    assert!(err.contains("deleted_since.safetensors"), "{err}");
    assert!(
        matches!(&app.shared().model.as_ref().expect("fell back").spec, ModelSpec::Weights(p) if p.ends_with("convnext_fashion.safetensors"))
    );
}

#[test]
fn the_weights_list_says_what_each_file_is() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(
        root.join("weights/convnext_fashion.safetensors"),
        dir.path().join("a.safetensors"),
    )
    .unwrap();
    std::fs::write(dir.path().join("b.pth"), b"garbage").unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"not listed").unwrap();
    let list = convnext_explorer::app::scan_weights(&[dir.path().to_path_buf()]);
    assert_eq!(list.len(), 2);
    let ok = list[0].summary.as_ref().unwrap();
    assert!(
        ok.contains("timm") && ok.contains("10 classes") && ok.contains("1.18M params"),
        "{ok}"
    );
    let err = list[1].summary.as_ref().unwrap_err();
    assert!(err.contains("b.pth"), "{err}");
}

#[test]
fn a_model_that_computes_nan_says_where_and_keeps_the_window_usable() {
    let mut h = shipped(Some("bag_18.png"));
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights");
    let mut map = candle_core::safetensors::load(
        root.join("convnext_fashion.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let k = "stages.2.blocks.1.mlp.fc2.weight";
    map.insert(
        k.into(),
        (map[k].ones_like().unwrap() * f64::INFINITY).unwrap(),
    );
    let bad = dir.path().join("overflowing.safetensors");
    candle_core::safetensors::save(&map, &bad).unwrap();
    h.state_mut()
        .request(Request::Load(ModelSpec::Weights(bad)));
    settle(&mut h);
    let err = last_error(h.state());
    assert!(
        err.contains("not finite") && err.contains("stages.2.blocks.1.mlp.fc2"),
        "{err}"
    );
    h.get_by_label_contains("not finite");
    // The window still works: back to the shipped model, the image runs again.
    h.get_by_label("convnext_fashion.safetensors").click();
    h.step();
    settle(&mut h);
    // The error stays until dismissed: the user may still want to read it.
    assert_eq!(h.state().shared().status.errors.len(), 1);
    assert_eq!(h.state().shared().run.as_ref().unwrap().top[0].label, "Bag");
    h.get_by_label("x").click();
    h.run_steps(2);
    assert!(h.state().shared().status.errors.is_empty());
}

#[test]
fn the_roadmap_tab_counts_diffs_loads_and_times_the_steps() {
    let mut h = shipped(None);
    h.get_by_label("Roadmap").click();
    h.run_steps(3);
    h.get_by_label("inverted_bottleneck");
    h.get_by_label_contains("Step 0 is where the roadmap starts");
    // What kernel_7 changed from move_up_dwconv: the depthwise kernels.
    h.get_by_label("kernel_7").click();
    h.run_steps(3);
    h.get_by_label_contains(
        "Step 8 (kernel_7) from step 6 (move_up_dwconv): 0 layers added, 0 removed, 18 changed",
    );
    h.get_by_label_contains("stages.0.blocks.0.conv1: DwConv 3×3");
    snap(&mut h, "app_roadmap");
    // Loading a step makes it the model, with the random-weights notice.
    let load = h
        .query_all_by_label("load")
        .nth(8)
        .expect("a load button per step");
    load.click();
    h.step();
    settle(&mut h);
    let m = h.state().shared().model.as_ref().unwrap();
    assert_eq!(m.plan.name, "roadmap:kernel_7");
    assert!(m.is_random);
    h.get_by_label_contains("predictions are meaningless");
    // Timing reports its progress and can be cancelled.
    h.get_by_label("Measure latency here").click();
    let start = Instant::now();
    while h.state().shared().status.job.is_none() {
        h.step();
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no progress reported"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    h.get_by_label("Cancel").click();
    settle(&mut h);
    assert!(h.state().tab::<RoadmapTab>().unwrap().times().is_none());
    let s = h.state().shared();
    assert_eq!(
        s.status.notice.as_deref(),
        Some("The roadmap job cancelled")
    );
}

#[test]
fn the_attribution_tab_explains_a_class_at_any_layer() {
    use convnext_explorer::analysis::attribution::Method;
    let mut h = shipped(Some("trouser_2.png"));
    h.get_by_label("Attribution").click();
    h.run_steps(2);
    settle(&mut h);
    let a = h
        .state()
        .tab::<AttributionTab>()
        .unwrap()
        .view()
        .expect("a map");
    assert_eq!(a.method, Method::GradCam);
    // The shipped model's last stage is 2×2: the default is the deepest layer at least 7×7,
    // and the tab says why.
    assert_eq!(a.layer, LayerId::Stage(1));
    assert_eq!((a.map.height, a.map.width), (8, 8));
    h.get_by_label_contains("stages.1 by default: the deepest layer whose map is at least 7×7");
    assert_eq!(a.label, "Trouser");
    h.get_by_label("Grad-CAM++").click();
    h.run_steps(2);
    settle(&mut h);
    h.get_by_label("stage 2").click();
    h.run_steps(2);
    settle(&mut h);
    let a = h.state().tab::<AttributionTab>().unwrap().view().unwrap();
    assert_eq!(
        (a.method, a.layer),
        (Method::GradCamPlusPlus, LayerId::Stage(2))
    );
    assert_eq!((a.map.height, a.map.width), (4, 4));
    h.get_by_label_contains("gradcam++ at stages.2 for “Trouser”");
    h.get_by_label_contains("evidence (exact, last stage)");
    h.get_by_label_contains("bright: drives the class most");
    // Occlusion works on the input, and its title says so; the evidence method shows its map
    // once, not beside itself.
    h.get_by_label("occlusion").click();
    h.run_steps(2);
    settle(&mut h);
    h.get_by_label_contains("occlusion on the input for “Trouser”");
    h.get_by_label_contains("red: covering it lowers the class's score");
    h.get_by_label("evidence").click();
    h.run_steps(2);
    settle(&mut h);
    h.get_by_label_contains("evidence at stages.3 for “Trouser”");
    assert_eq!(
        h.query_all_by_label_contains("evidence (exact, last stage)")
            .count(),
        0
    );
    h.get_by_label("Grad-CAM++").click();
    h.run_steps(2);
    settle(&mut h);
    // Another class: click it among the predictions.
    let second = h.state().shared().run.as_ref().unwrap().top[1].clone();
    h.get_by_label_contains(&format!("%  {}", second.label))
        .click();
    h.run_steps(2);
    assert_eq!(h.state().shared().selection.class, Some(second.index));
    h.get_by_label("Attribution").click();
    h.run_steps(2);
    settle(&mut h);
    assert_eq!(
        h.state()
            .tab::<AttributionTab>()
            .unwrap()
            .view()
            .unwrap()
            .label,
        second.label
    );
    snap(&mut h, "app_attribution");
}

#[test]
fn the_receptive_field_tab_compares_trained_and_random_weights() {
    let mut h = shipped(Some("bag_18.png"));
    h.get_by_label("Receptive field").click();
    h.run_steps(2);
    h.get_by_label("Compute").click();
    h.step();
    settle(&mut h);
    let e = h
        .state()
        .tab::<ErfTab>()
        .unwrap()
        .view()
        .expect("receptive fields");
    assert_eq!(e.stages.len(), 4);
    assert_eq!(e.images, 1);
    assert!(e.source.contains("these weights"));
    assert_eq!(e.stages[0].size, (64, 64));
    h.get_by_label_contains("t = 0.99");
    snap(&mut h, "app_erf");
    h.get_by_label("and random weights beside (the untrained baseline)")
        .click();
    h.get_by_label("Compute").click();
    h.step();
    settle(&mut h);
    // Beside, not instead: both rows, each stage's ratios in the one table.
    let e = h.state().tab::<ErfTab>().unwrap().view().unwrap();
    assert!(e.source.contains("these weights"));
    assert_eq!(e.stages.len(), 4);
    let base = e.baseline.as_ref().expect("the random-weights row");
    assert_eq!(base.len(), 4);
    assert_ne!(base[3].map, e.stages[3].map);
    assert!(
        h.query_all_by_label_contains("stages.3, random weights")
            .count()
            >= 2
    );
    h.get_by_label_contains("The + marks the centre position");
    // The roadmap's kernels 3 to 11, on the worker.
    h.state_mut()
        .with_tab(|t: &mut RoadmapTab, ctx| t.compute_kernel_erfs(ctx));
    settle(&mut h);
    let k = h
        .state()
        .tab::<RoadmapTab>()
        .unwrap()
        .kernel_erfs()
        .expect("kernel ERFs");
    assert_eq!(k.len(), 5);
    assert_eq!(k[0].0, "move_up_dwconv");
    // What the pictures show grows with the kernel (issue 25: at 224 px five identical
    // squares): the area holding half the displayed picture's mass, from 3×3 to 11×11.
    use convnext_explorer::analysis::attribution::{area_ratios, erf_display};
    let shown: Vec<f64> = k
        .iter()
        .map(|(_, s)| area_ratios(&erf_display(&s.map), s.size, &[0.5])[0].expect("a ratio"))
        .collect();
    assert!(shown[4] > 1.5 * shown[0], "{shown:?}");
    for w in shown.windows(2) {
        assert!(w[1] >= w[0] * 0.95, "{shown:?}");
    }
}

/// The Faithfulness tab: every method's map with its curves, a random map and the whole image
/// for scale, the sanity check's strip, and the methods ranked over the samples.
#[test]
fn the_faithfulness_tab_compares_checks_and_ranks_the_methods() {
    use convnext_explorer::analysis::faithfulness::{deletion_insertion, Map};
    use convnext_explorer::app::FaithfulnessTab;
    let mut h = shipped(Some("sneaker_9.png"));
    h.get_by_label("Faithfulness").click();
    h.run_steps(2);
    h.get_by_label("Compare the methods at stages.1").click();
    h.step();
    settle(&mut h);
    // HiResCAM at stages.1 (before the downsample's LayerNorm) is zero, and says so.
    h.get_by_label(convnext_explorer::app::ZERO_MAP);
    let tab = h.state().tab::<FaithfulnessTab>().unwrap();
    let c = tab.comparison().expect("the comparison");
    let names: Vec<&str> = c.rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "gradcam",
            "gradcam++",
            "hirescam",
            "layercam",
            "xgradcam",
            "scorecam",
            "ig",
            "random map",
            "whole image, reading order"
        ]
    );
    // Each row's curves are the engine's for that map (16 steps: 17 points).
    let engine = convnext_explorer::Engine::load(
        &convnext_explorer::io::engine::default_weights().unwrap(),
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
    )
    .unwrap();
    let x = engine
        .prepare_file(&sample("sneaker_9.png"))
        .unwrap()
        .tensor;
    for r in &c.rows {
        assert_eq!(r.curves.deletion.len(), 17);
        let map = Map {
            values: &r.map,
            size: r.size,
        };
        let want = deletion_insertion(
            &engine,
            &x,
            &[map],
            None,
            16,
            &mut convnext_explorer::base::progress::Silent,
        )
        .unwrap()
        .remove(0);
        assert!(
            (want.deletion_auc - r.curves.deletion_auc).abs() < 1e-5,
            "{}",
            r.name
        );
        assert!(
            (want.insertion_auc - r.curves.insertion_auc).abs() < 1e-5,
            "{}",
            r.name
        );
    }
    h.get_by_label_contains("the most faithful by deletion is");
    snap(&mut h, "app_faithfulness");
    // The sanity check of Grad-CAM: the trained map, then six parts destroyed in turn.
    // Below the fold: through accesskit (kittest's pointer does not scroll).
    h.get_by_label("Run the sanity check").click_accesskit();
    h.step();
    settle(&mut h);
    let (method, steps) = h
        .state()
        .tab::<FaithfulnessTab>()
        .unwrap()
        .sanity()
        .expect("the sanity check");
    assert_eq!(method, "gradcam");
    assert_eq!(steps.len(), 7);
    assert!(steps.iter().skip(1).any(|s| s.spearman < 0.9));
    h.get_by_label_contains("changes as the weights are destroyed");
    // The ranking over the samples.
    h.get_by_label("Rank").click_accesskit();
    h.step();
    settle(&mut h);
    let (_, table) = h
        .state()
        .tab::<FaithfulnessTab>()
        .unwrap()
        .ranking()
        .unwrap();
    assert_eq!(table.len(), 7);
    assert!(table.iter().all(|t| t.images == 12));
}
