//! The app as a newcomer meets it: it says what its model knows, keeps every error on show
//! until dismissed, works without a native file dialog, and never leaves the window stuck.
#![cfg(feature = "app")]
use convnext_explorer::app::{ProfileTab, Request, Settings, StartOptions};
use convnext_explorer::io::engine::ModelSpec;
use convnext_explorer::model::layer_id::LayerId;
use egui::Key;
use egui_kittest::kittest::Queryable;
use std::path::Path;
use std::time::{Duration, Instant};

mod common;
use common::gui::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_model_card_says_what_the_shipped_model_knows() {
    let mut h = shipped(Some("sneaker_9.png"));
    h.get_by_label_contains("knows 28×28 grey images of clothing");
    h.get_by_label_contains("what the network sees (64×64)");
    // No notice for what the model was trained on.
    assert!(h.state().shared().run.as_ref().unwrap().notices.is_empty());
    h.get_by_label("Model card").click();
    h.run_steps(3);
    h.get_by_label("trained on");
    // The brief line says it; the open card says it in its domain, dataset and accuracy.
    assert!(h.query_all_by_label_contains("Fashion-MNIST").count() >= 3);
    h.get_by_label("accuracy");
    h.get_by_label_contains("10 classes: T-shirt/top, Trouser");
    h.get_by_label_contains("64×64 RGB: shorter side to 64 px");
    snap(&mut h, "app_model_card");
}

#[test]
fn a_colour_photo_in_a_grey_model_gets_a_notice() {
    let mut h = shipped(Some("coffee.png"));
    let run = h.state().shared().run.as_ref().unwrap();
    assert_eq!(run.notices.len(), 1, "{:?}", run.notices);
    h.get_by_label_contains("This is a colour image; the model was trained on 28×28 grey");
    // A named variant (random weights) says its predictions mean nothing instead.
    h.state_mut().request(Request::Load(ModelSpec::Variant {
        name: "convnext_atto".into(),
        classes: 10,
        seed: 0,
    }));
    settle(&mut h);
    assert!(h.state().shared().run.as_ref().unwrap().notices.is_empty());
    h.get_by_label_contains("knows nothing: the weights are random");
}

#[test]
fn bad_weights_on_the_command_line_keep_their_error_and_the_image() {
    // `convnext-explorer --weights README.md IMAGE`
    let mut h = harness(
        Settings::default(),
        StartOptions {
            weights: Some(root().join("README.md")),
            image: Some(sample("trouser_2.png")),
            ..Default::default()
        },
    );
    settle(&mut h);
    let errors = &h.state().shared().status.errors;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("Could not load the model") && errors[0].contains("README.md"),
        "{errors:?}"
    );
    // The image waited for the model that did load (the shipped one) and ran on it.
    let s = h.state().shared();
    assert!(
        matches!(&s.model.as_ref().unwrap().spec, ModelSpec::Weights(p) if p.ends_with("convnext_fashion.safetensors"))
    );
    assert_eq!(
        s.run.as_ref().expect("the image ran").top[0].label,
        "Trouser"
    );
    h.get_by_label_contains("README.md");
}

#[cfg(not(feature = "cuda"))]
#[test]
fn a_device_this_build_lacks_says_so_and_uses_the_cpu() {
    let mut h = harness(
        Settings::default(),
        StartOptions {
            device: Some("cuda".into()),
            image: Some(sample("bag_18.png")),
            ..Default::default()
        },
    );
    settle(&mut h);
    let err = last_error(h.state());
    assert!(err.contains("cuda") && err.contains("using cpu"), "{err}");
    let s = h.state().shared();
    assert_eq!(s.settings.device, "cpu");
    assert_eq!(s.run.as_ref().expect("ran on the cpu").top[0].label, "Bag");
}

#[test]
fn errors_stay_until_each_is_dismissed() {
    let mut h = shipped(Some("dress_13.png"));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("corrupt.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot an image").unwrap();
    h.state_mut().request(Request::OpenPath(bad));
    settle(&mut h);
    let bad_weights = dir.path().join("w.safetensors");
    std::fs::write(&bad_weights, b"nonsense").unwrap();
    h.state_mut().request(Request::OpenPath(bad_weights));
    settle(&mut h);
    // Later work that succeeds does not sweep them away.
    h.get_by_label("coat_6").click();
    h.step();
    settle(&mut h);
    assert_eq!(h.state().shared().run.as_ref().unwrap().name, "coat_6.png");
    let errors = h.state().shared().status.errors.clone();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].contains("corrupt.png") && errors[1].contains("w.safetensors"));
    h.get_by_label_contains("corrupt.png");
    // Dismissing one leaves the other.
    h.get_all_by_label("x").next().unwrap().click();
    h.run_steps(2);
    let errors = &h.state().shared().status.errors;
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("w.safetensors"));
}

#[test]
fn an_absolute_path_typed_into_the_prefilled_field_replaces_it() {
    let mut h = shipped(None);
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/samples");
    h.state_mut().shared_mut().settings.last_image = Some(samples.join("coat_6.png"));
    h.get_by_label("Open image…").click();
    h.run_steps(3);
    let prefilled = h.state().shared().prompt.as_ref().unwrap().text.clone();
    assert_eq!(prefilled, format!("{}/", samples.display()));
    let target = samples.join("sneaker_9.png");
    h.get_by_role(egui::accesskit::Role::TextInput)
        .type_text(&target.display().to_string());
    h.run_steps(2);
    assert_eq!(
        h.state().shared().prompt.as_ref().unwrap().text,
        target.display().to_string()
    );
    h.key_press(Key::Enter);
    h.run_steps(2);
    settle(&mut h);
    assert_eq!(
        h.state().shared().run.as_ref().unwrap().name,
        "sneaker_9.png"
    );
    assert!(h.state().shared().status.errors.is_empty());
}

#[test]
fn without_a_file_dialog_a_path_field_opens_images_with_completion() {
    let mut h = shipped(None);
    h.get_by_label("Open image…").click();
    h.run_steps(3);
    assert!(h.state().shared().prompt.is_some());
    h.get_by_label_contains("Type a path");
    // Relative to the working directory, as a user would type it (and the same on any
    // checkout, so the snapshot is too).
    let dir = "assets/samples/";
    let field = h.get_by_role(egui::accesskit::Role::TextInput);
    field.type_text(&format!("{dir}s"));
    h.run_steps(2);
    for name in ["sandal_8.png", "shirt_4.png", "sneaker_9.png"] {
        h.get_by_label(&format!("{dir}{name}"));
    }
    snap(&mut h, "app_path_prompt");
    // Tab fills in what the matches share; one more letter leaves one match, Tab takes it.
    h.key_press(Key::Tab);
    h.run_steps(2);
    assert_eq!(
        h.state().shared().prompt.as_ref().unwrap().text,
        format!("{dir}s")
    );
    h.get_by_role(egui::accesskit::Role::TextInput)
        .type_text("n");
    h.run_steps(2);
    h.key_press(Key::Tab);
    h.run_steps(2);
    let typed = h.state().shared().prompt.as_ref().unwrap().text.clone();
    assert_eq!(typed, format!("{dir}sneaker_9.png"));
    h.get_by_label("Open").click();
    h.step();
    settle(&mut h);
    assert!(h.state().shared().prompt.is_none());
    let run = h
        .state()
        .shared()
        .run
        .as_ref()
        .expect("the typed image ran");
    assert_eq!(run.name, "sneaker_9.png");
}

#[test]
fn without_a_file_dialog_a_path_field_saves_exports() {
    let mut h = shipped(Some("bag_18.png"));
    h.get_by_label("Profile").click();
    h.run_steps(3);
    h.get_by_label("Export CSV…").click();
    h.run_steps(2);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("profile.csv");
    // The field starts with the suggested name; the user types a full path instead.
    assert_eq!(
        h.state().shared().prompt.as_ref().unwrap().text,
        "profile.csv"
    );
    h.state_mut().shared_mut().prompt.as_mut().unwrap().text = out.display().to_string();
    h.run_steps(2);
    h.get_by_label("Save").click();
    h.step();
    settle(&mut h);
    let csv = std::fs::read_to_string(&out).expect("the CSV was saved");
    assert!(
        csv.lines().count() > 10 && csv.contains("stages.2"),
        "{csv}"
    );
    h.get_by_label_contains("Saved");
}

#[test]
fn tiny_maps_are_shown_on_one_scale_and_say_why() {
    let mut h = shipped(Some("bag_18.png"));
    h.get_by_label("stage 3").click();
    h.run_steps(3);
    assert_eq!(h.state().shared().selection.layer, Some(LayerId::Stage(3)));
    h.get_by_label_contains("2×2 maps: stretched channel by channel");
    // A map larger than 2×2 keeps the per-channel scale, without the note.
    h.get_by_label("stage 1").click();
    h.run_steps(3);
    assert!(h
        .query_by_label_contains("stretched channel by channel")
        .is_none());
}

#[test]
fn changing_the_dtype_keeps_the_selected_stage() {
    let mut h = shipped(Some("shirt_4.png"));
    h.get_by_label("stage 2").click();
    h.run_steps(2);
    h.state_mut().shared_mut().settings.dtype = "bf16".into();
    h.state_mut().request(Request::Reload);
    settle(&mut h);
    let s = h.state().shared();
    assert_eq!(s.selection.layer, Some(LayerId::Stage(2)));
    assert_eq!(s.run.as_ref().expect("re-ran").name, "shirt_4.png");
    h.get_by_label_contains("cpu · bf16");
}

#[test]
fn a_restart_reopens_the_last_image() {
    let h = shipped(Some("pullover_1.png"));
    let settings = h.state().shared().settings.clone();
    drop(h);
    assert!(settings.last_image.is_some());
    let mut h = harness(settings, StartOptions::default());
    settle(&mut h);
    let run = h.state().shared().run.as_ref().expect("reopened");
    assert_eq!(run.name, "pullover_1.png");
}

#[test]
fn a_large_image_says_it_is_decoding() {
    let mut h = shipped(None);
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.png");
    // Noise compresses badly: a decode long enough to be seen.
    let img = image::RgbImage::from_fn(3000, 3000, |x, y| {
        let v = (x.wrapping_mul(2654435761) ^ y.wrapping_mul(40503)) as u8;
        image::Rgb([v, v.rotate_left(3), v.rotate_left(5)])
    });
    img.save(&big).unwrap();
    h.state_mut().request(Request::OpenPath(big));
    h.run_steps(1);
    let start = Instant::now();
    let mut seen = false;
    while h.state().shared().run.is_none() {
        seen |= h
            .query_all_by_label_contains("decoding big.png")
            .next()
            .is_some();
        assert!(start.elapsed() < Duration::from_secs(60));
        h.step();
    }
    assert!(seen, "\"decoding…\" was never shown");
    assert!(h.query_by_label_contains("No image yet").is_none());
}

#[test]
fn the_top_ten_fit_without_scrolling() {
    let mut h = shipped(Some("ankle_boot_0.png"));
    h.run_steps(2);
    let last = h.state().shared().run.as_ref().unwrap().top[9]
        .label
        .clone();
    let rect = h.get_by_label_contains(&format!("%  {last}")).rect();
    assert!(rect.max.y < 850.0, "the 10th prediction is at {rect:?}");
}

#[test]
fn a_profile_run_keeps_the_old_results_shows_progress_and_cancels() {
    let mut h = shipped(Some("sneaker_9.png"));
    h.state_mut().shared_mut().settings.tab = "Profile".into();
    h.state_mut().shared_mut().settings.profile_runs = 2;
    h.state_mut().with_tab(|t: &mut ProfileTab, ctx| t.run(ctx));
    settle(&mut h);
    let first = h
        .state()
        .tab::<ProfileTab>()
        .unwrap()
        .profile()
        .expect("profiled")
        .runs;
    assert_eq!(first, 2);
    // A long run: the old figures stay while it goes, with k/N and a cancel button.
    h.state_mut().shared_mut().settings.profile_runs = 200;
    h.state_mut().with_tab(|t: &mut ProfileTab, ctx| t.run(ctx));
    let start = Instant::now();
    while h.query_all_by_label_contains("/200").next().is_none()
        || h.state().shared().status.job.is_none()
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no progress shown"
        );
        assert!(
            h.state().tab::<ProfileTab>().unwrap().profile().is_some(),
            "old results dropped"
        );
        h.step();
    }
    h.get_by_label_contains("median of 2 runs");
    h.get_by_label("Cancel").click();
    h.step();
    settle(&mut h);
    assert_eq!(
        h.state()
            .tab::<ProfileTab>()
            .unwrap()
            .profile()
            .unwrap()
            .runs,
        2
    );
    h.get_by_label_contains("cancelled");
}

#[test]
fn long_layer_tables_lay_out_only_the_rows_in_view() {
    let settings = Settings {
        model: Some(ModelSpec::Variant {
            name: "convnext_tiny".into(),
            classes: 1000,
            seed: 0,
        }),
        show_containers: true,
        tab: "Profile".into(),
        ..Default::default()
    };
    let mut h = harness(settings, StartOptions::default());
    settle(&mut h);
    let layers = h.state().shared().model.as_ref().unwrap().layers.len();
    assert!(layers > 150, "{layers}");
    let laid_out = h.query_all_by_label_contains("stages.").count();
    assert!(
        laid_out > 5 && laid_out < 80,
        "{laid_out} of {layers} rows laid out"
    );
}

/// A laptop screen: at 1024×640 every tab's button lies inside the window, every tab opens and
/// draws (scrolling where it does not fit), and the sidebar folds away for more room.
#[test]
fn every_tab_is_reachable_at_1024_by_640() {
    std::env::set_var(convnext_explorer::app::path_prompt::NO_DIALOG_ENV, "1");
    let mut h = egui_kittest::Harness::builder()
        .with_size([1024.0, 640.0])
        .build_eframe(|cc| {
            convnext_explorer::app::ExplorerApp::new(
                &cc.egui_ctx,
                Settings::default(),
                StartOptions {
                    image: Some(sample("sneaker_9.png")),
                    ..Default::default()
                },
            )
            .unwrap()
        });
    settle(&mut h);
    let window = egui::Rect::from_min_size(egui::Pos2::ZERO, egui::vec2(1024.0, 640.0));
    for name in convnext_explorer::app::tab_names() {
        // The tab bar's button: the topmost widget of that name.
        let button = h
            .get_all_by_label(name)
            .min_by(|a, b| a.rect().min.y.total_cmp(&b.rect().min.y))
            .unwrap_or_else(|| panic!("no button for the {name} tab"));
        assert!(
            window.contains_rect(button.rect()),
            "the {name} tab's button lies outside the window: {:?}",
            button.rect()
        );
        button.click();
        h.run_steps(3);
        assert_eq!(h.state().shared().settings.tab, name);
    }
    h.get_by_label("Hide sidebar").click();
    h.run_steps(2);
    assert!(!h.state().shared().settings.sidebar_open);
    h.get_by_label("Show sidebar").click();
    h.run_steps(2);
    assert!(h.state().shared().settings.sidebar_open);
}
