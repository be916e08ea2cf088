//! The Compare tab, driven through egui_kittest: two models on one image, one model on two
//! images; one selection drives both sides; the right side follows the left; each side's
//! enlarged channel is drawn over its own image; CKA of a model with itself; what changed
//! between two checkpoints.
#![cfg(feature = "app")]
use convnext_explorer::app::worker::ImageSource;
use convnext_explorer::app::{CompareTab, CompareView, CompareWith, Settings, StartOptions};
use convnext_explorer::model::layer_id::LayerId;
use egui_kittest::kittest::Queryable;

mod common;
use common::gui::*;

#[test]
fn two_models_on_one_image_share_one_selection_and_follow_the_image() {
    let mut h = shipped(Some("bag_18.png"));
    h.state_mut().shared_mut().settings.tab = "Compare".into();
    h.run_steps(2);
    h.get_by_label_contains("Pick another model");
    // The model list opens on the shipped checkpoint; pick a V2 variant from it.
    h.get_all_by_role(egui::accesskit::Role::ComboBox)
        .find(|n| n.value().is_some_and(|v| v.contains("convnext_fashion")))
        .expect("the model list")
        .click();
    h.run_steps(2);
    h.get_by_label("convnextv2_atto (random weights)").click();
    h.run_steps(2);
    h.get_by_label("Show side by side").click();
    h.step();
    settle(&mut h);
    let (m, r) = h
        .state()
        .tab::<CompareTab>()
        .unwrap()
        .other()
        .expect("the other side");
    assert_eq!(m.spec.label(), "convnextv2_atto");
    assert_eq!(r.name, "bag_18.png");
    // One layer for both: stage 1 has 64 channels here, 80 in atto.
    h.get_by_label("stage 1").click();
    h.run_steps(2);
    assert_eq!(h.state().shared().selection.layer, Some(LayerId::Stage(1)));
    h.get_by_label_contains("stages.1: 64 channels");
    h.get_by_label_contains("stages.1: 80 channels");
    // One channel for both.
    h.state_mut().shared_mut().selection.channel = Some(3);
    h.run_steps(2);
    assert_eq!(h.query_all_by_label_contains("channel 3: min").count(), 2);
    snap(&mut h, "app_compare");
    // A new image on the left: the right side runs it too.
    h.get_by_label("coat_6").click();
    h.step();
    settle(&mut h);
    h.run_steps(2);
    settle(&mut h);
    let (_, r) = h.state().tab::<CompareTab>().unwrap().other().unwrap();
    assert_eq!(r.name, "coat_6.png");
}

#[test]
fn one_model_on_two_images() {
    let mut h = shipped(Some("sneaker_9.png"));
    h.state_mut().shared_mut().settings.tab = "Compare".into();
    let other = ImageSource::Path(sample("sandal_8.png"));
    h.state_mut()
        .with_tab(|t: &mut CompareTab, ctx| t.ask(ctx, CompareWith::Image(other)));
    settle(&mut h);
    let (m, r) = h
        .state()
        .tab::<CompareTab>()
        .unwrap()
        .other()
        .expect("the other side");
    let s = h.state().shared();
    assert_eq!(m.spec, s.model.as_ref().unwrap().spec);
    assert_eq!(r.top[0].label, "Sandal");
    assert_eq!(s.run.as_ref().unwrap().top[0].label, "Sneaker");
    let other_key = r.texture_key();
    h.get_by_label_contains("convnext_fashion.safetensors · sandal_8.png");
    // A channel picked: each side's enlarged map lies over that side's own image (issue 25:
    // the right side's was drawn over the left's).
    h.state_mut().shared_mut().selection.channel = Some(2);
    h.run_steps(2);
    let s = h.state().shared();
    let keys = (s.run.as_ref().unwrap().texture_key(), other_key);
    assert_ne!(keys.0, keys.1);
    assert!(s.has_texture(&keys.0) && s.has_texture(&keys.1));
    assert!(
        !s.has_texture("input"),
        "no overlay may use a key shared by all images"
    );
}

#[test]
fn cka_of_the_shipped_model_with_itself() {
    let mut h = shipped(Some("bag_18.png"));
    h.state_mut().shared_mut().settings.tab = "Compare".into();
    h.run_steps(2);
    h.get_by_label("layer similarity (CKA)").click();
    h.run_steps(2);
    h.get_by_label("this model against itself").click();
    h.run_steps(2);
    h.get_by_label("Compute CKA").click();
    h.step();
    settle(&mut h);
    let tab = h.state().tab::<CompareTab>().unwrap();
    assert_eq!(tab.view, CompareView::Similarity);
    let done = tab.cka().expect("the CKA matrix");
    let r = &done.outcome.result;
    // The samples, in one mini-batch.
    let samples = convnext_explorer::io::listing::list_images(&sample(""), None).unwrap();
    assert_eq!(r.images, samples.len());
    assert!(r.skipped.is_empty());
    assert_eq!(r.layers_a, r.layers_b);
    assert_eq!(r.layers_a.len(), done.outcome.la.len());
    for (i, row) in r.cka.iter().enumerate() {
        if let Some(v) = row[i] {
            assert!((v - 1.0).abs() < 1e-9, "{}: {v}", r.layers_a[i]);
        }
        for v in row.iter().flatten() {
            assert!((-0.2..=1.0 + 1e-9).contains(v), "{v}");
        }
    }
    assert!(
        r.cka[0][r.cka.len() - 1].unwrap() < 0.9,
        "the stem is not the last stage"
    );
    h.get_by_label_contains("How alike each layer of convnext_fashion.safetensors");
    h.get_by_label("Click a cell to see those two layers' channels side by side.");
    // A cell: the stem against stage 1's output, side by side on the current image.
    let j = r.layers_b.iter().position(|n| n == "stages.1").unwrap();
    h.state_mut()
        .with_tab(|t: &mut CompareTab, _| t.pick_cell(0, j));
    h.run_steps(2);
    h.get_by_label_contains("stem: ");
    h.get_by_label_contains("stages.1: 64 channels");
    snap(&mut h, "app_compare_cka");
}

fn fixture_checkpoint(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/checkpoints")
        .join(name)
}

#[test]
fn what_changed_between_two_checkpoints() {
    let mut h = harness(
        Settings::default(),
        StartOptions {
            weights: Some(fixture_checkpoint("timm_v1.safetensors")),
            image: Some(sample("bag_18.png")),
            ..Default::default()
        },
    );
    settle(&mut h);
    h.state_mut().shared_mut().settings.tab = "Compare".into();
    h.run_steps(2);
    h.get_by_label("what changed (weights)").click();
    h.run_steps(2);
    h.get_by_label_contains("Pick another checkpoint file");
    let (a, b) = (
        fixture_checkpoint("timm_v1.safetensors"),
        fixture_checkpoint("timm_v1_tuned.safetensors"),
    );
    h.state_mut()
        .with_tab(|t: &mut CompareTab, ctx| t.ask_diff(ctx, a.clone(), b.clone()));
    settle(&mut h);
    let want = convnext_explorer::analysis::diff::diff_files(&a, &b).unwrap();
    let got = &h
        .state()
        .tab::<CompareTab>()
        .unwrap()
        .diff()
        .expect("the diff")
        .diff;
    assert_eq!(*got, want);
    h.get_by_label_contains("How far the weights of timm_v1_tuned.safetensors moved");
    h.get_by_label("Relative change per part");
    // The most changed tensor heads the table.
    let top = want
        .tensors
        .iter()
        .filter(|t| t.rel_change.is_some())
        .max_by(|x, y| x.rel_change.unwrap().total_cmp(&y.rel_change.unwrap()))
        .unwrap();
    h.get_by_label(&top.name);
    snap(&mut h, "app_compare_diff");
}
