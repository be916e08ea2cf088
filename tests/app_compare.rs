//! The Compare tab, driven through egui_kittest: two models on one image, one model on two
//! images; one selection drives both sides; the right side follows the left.
#![cfg(feature = "app")]
use convnext_explorer::app::worker::ImageSource;
use convnext_explorer::app::{CompareTab, CompareWith};
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
    h.get_by_label_contains("convnext_fashion.safetensors · sandal_8.png");
}
