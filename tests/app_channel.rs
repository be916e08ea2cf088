//! The Channel tab (issue 23), driven through egui_kittest: the selected channel's optimised
//! image beside its map on the current image; the layer atlas, made in the background, kept on
//! disk, read back at once by a new app, and a click on it opening that channel.
#![cfg(feature = "app")]
use convnext_explorer::app::channel::ChannelTab;
use convnext_explorer::model::layer_id::LayerId;
use egui_kittest::kittest::Queryable;

mod common;
use common::gui::*;

#[test]
fn the_channel_view_shows_what_the_selected_channel_looks_for() {
    cache_dir();
    let mut h = shipped(Some("bag_18.png"));
    let shared = h.state_mut().shared_mut();
    shared.selection.layer = Some(LayerId::Stage(1));
    shared.selection.channel = Some(10);
    shared.settings.tab = "Channel".into();
    h.run_steps(2);
    settle(&mut h);
    let imgs = h
        .state()
        .tab::<ChannelTab>()
        .unwrap()
        .images()
        .expect("an image");
    assert_eq!((imgs.layer, imgs.channel), (LayerId::Stage(1), 10));
    let (w, ht) = imgs.pictures[0].rgb.dimensions();
    assert_eq!((w, ht), (64, 64), "the model's own input size");
    let optimised = imgs.pictures[0].objective;
    let run = h.state().shared().run.as_ref().unwrap();
    let (_, fm) = run
        .maps
        .iter()
        .find(|(id, _)| *id == LayerId::Stage(1))
        .unwrap();
    let on_image = fm.stats[10].mean;
    assert!(
        optimised > on_image,
        "the optimised image ({optimised}) excites the channel less than the bag ({on_image})"
    );
    h.get_by_label("What stages.1 channel 10 looks for");
    h.get_by_label("On bag_18.png");
    snap(&mut h, "app_channel");
    // Four different images on request.
    h.get_by_label_contains("4 different images").click();
    h.step();
    settle(&mut h);
    let imgs = h.state().tab::<ChannelTab>().unwrap().images().unwrap();
    assert_eq!(imgs.pictures.len(), 4);
    assert_ne!(imgs.pictures[0].rgb, imgs.pictures[1].rgb);
    // Another layer picked on the strip: the selection follows and its channel is optimised.
    h.get_by_label("stage 2").click();
    h.run_steps(2);
    settle(&mut h);
    assert_eq!(h.state().shared().selection.layer, Some(LayerId::Stage(2)));
    let imgs = h.state().tab::<ChannelTab>().unwrap().images().unwrap();
    assert_eq!((imgs.layer, imgs.channel), (LayerId::Stage(2), 0));
}

#[test]
fn the_atlas_is_kept_on_disk_and_opens_a_channel() {
    let dir = cache_dir();
    let mut h = shipped(Some("sneaker_9.png"));
    let shared = h.state_mut().shared_mut();
    shared.selection.layer = Some(LayerId::Stem);
    shared.settings.tab = "Channel".into();
    h.run_steps(2);
    settle(&mut h);
    h.get_by_label("Make the atlas of stem (cached on disk)")
        .click();
    h.step();
    settle(&mut h);
    let atlas = h
        .state()
        .tab::<ChannelTab>()
        .unwrap()
        .atlas()
        .expect("the atlas");
    assert_eq!(
        (atlas.layer, atlas.pictures.len(), atlas.cached),
        (LayerId::Stem, 32, false)
    );
    let first: Vec<Vec<u8>> = atlas.pictures.iter().map(|p| p.rgb.to_vec()).collect();
    let files = std::fs::read_dir(dir.join("atlas")).unwrap().count();
    assert!(files >= 1, "nothing written to the cache");
    snap(&mut h, "app_channel_atlas");
    // A click on a cell opens that channel above.
    h.get_by_label("atlas channel 5").click_accesskit();
    h.run_steps(2);
    settle(&mut h);
    assert_eq!(h.state().shared().selection.channel, Some(5));
    let imgs = h.state().tab::<ChannelTab>().unwrap().images().unwrap();
    assert_eq!((imgs.layer, imgs.channel), (LayerId::Stem, 5));
    // A new app (a new launch) reads the same atlas back from the disk.
    let mut again = shipped(None);
    let shared = again.state_mut().shared_mut();
    shared.selection.layer = Some(LayerId::Stem);
    shared.settings.tab = "Channel".into();
    again.run_steps(2);
    settle(&mut again);
    again
        .get_by_label("Make the atlas of stem (cached on disk)")
        .click();
    again.step();
    settle(&mut again);
    let atlas = again.state().tab::<ChannelTab>().unwrap().atlas().unwrap();
    assert!(atlas.cached, "made again instead of read back");
    let back: Vec<Vec<u8>> = atlas.pictures.iter().map(|p| p.rgb.to_vec()).collect();
    assert_eq!(back, first);
}
