//! The Hugging Face download, run for real against a hub on 127.0.0.1 (`HF_ENDPOINT`): timm and
//! transformers repos, the pickle fallback, a missing repo, a repo without weights, transfers cut
//! short (resumed) or broken for good (a clean error, nothing in `weights/`), cancel, progress;
//! the same through the CLI and the app's Download window.
#![cfg(feature = "hub")]
mod common;
use candle_core::{DType, Device, Tensor};
use common::hub_server::{Behaviour, Hub, Repo};
use convnext_explorer::base::error::Error;
use convnext_explorer::base::progress::Progress;
use convnext_explorer::io::checkpoint::{CheckpointInfo, Format};
use convnext_explorer::io::hub::download_with_progress;
use convnext_explorer::Engine;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(p: &str) -> Vec<u8> {
    std::fs::read(root().join(p)).unwrap()
}

/// 8 MB of weights served slowly: long enough to cancel in the middle.
const SLOW_SIZE: usize = 8 << 20;

fn repos() -> HashMap<String, Repo> {
    let repo = |files: &[(&str, Vec<u8>)], behaviour| Repo {
        files: files
            .iter()
            .map(|(n, b)| (n.to_string(), b.clone()))
            .collect(),
        behaviour,
    };
    let timm = [
        ("config.json", read("weights/convnext_fashion.json")),
        (
            "model.safetensors",
            read("weights/convnext_fashion.safetensors"),
        ),
    ];
    let hf_config = read("tests/fixtures/checkpoints/hf_v1/config.json");
    let hf = [
        ("config.json", hf_config.clone()),
        (
            "model.safetensors",
            read("tests/fixtures/checkpoints/hf_v1/model.safetensors"),
        ),
        (
            "preprocessor_config.json",
            br#"{"crop_pct": 0.875, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "resample": 3, "size": {"shortest_edge": 224}}"#.to_vec(),
        ),
    ];
    let bin = [
        (
            "config.json",
            read("tests/fixtures/checkpoints/hf_v2_bin/config.json"),
        ),
        (
            "pytorch_model.bin",
            read("tests/fixtures/checkpoints/hf_v2_bin/pytorch_model.bin"),
        ),
    ];
    let slow = [
        ("config.json", hf_config.clone()),
        ("model.safetensors", vec![0u8; SLOW_SIZE]),
    ];
    HashMap::from([
        (
            "timm/convnext_fashion".into(),
            repo(&timm, Behaviour::Normal),
        ),
        ("facebook/convnext-hf".into(), repo(&hf, Behaviour::Normal)),
        (
            "facebook/convnextv2-bin".into(),
            repo(&bin, Behaviour::Normal),
        ),
        (
            "someone/no-weights".into(),
            repo(&[("config.json", hf_config)], Behaviour::Normal),
        ),
        ("cut/once".into(), repo(&hf, Behaviour::CutFirst)),
        ("cut/always".into(), repo(&hf, Behaviour::CutAlways)),
        ("slow/big".into(), repo(&slow, Behaviour::Slow)),
        ("slow/app".into(), repo(&slow, Behaviour::Slow)),
        ("app/convnext-hf".into(), repo(&hf, Behaviour::Normal)),
    ])
}

struct Env {
    hub: Hub,
    tmp: PathBuf,
}

/// One hub and one hf-hub cache for the whole test binary: the environment is the process's.
fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let hub = Hub::start(repos());
        let tmp =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("hub-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(tmp.join("weights")).unwrap();
        std::env::set_var("HF_ENDPOINT", &hub.url);
        std::env::set_var("HF_HOME", tmp.join("hf"));
        std::env::set_var("CONVNEXT_WEIGHTS_DIR", tmp.join("weights"));
        Env { hub, tmp }
    })
}

/// A fresh `weights/` for one test.
fn dest(name: &str) -> PathBuf {
    let d = env().tmp.join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Records every report; cancels once `cancel_after` bytes have come.
#[derive(Default)]
struct Recorder {
    updates: Vec<(usize, usize, String)>,
    cancel_after: Option<usize>,
}

impl Progress for Recorder {
    fn update(&mut self, done: usize, total: usize, what: &str) {
        self.updates.push((done, total, what.to_string()));
    }
    fn cancelled(&self) -> bool {
        let done = self.updates.last().map_or(0, |u| u.0);
        self.cancel_after.is_some_and(|n| done >= n)
    }
}

fn same_file(a: &Path, b: &str) {
    assert!(
        std::fs::read(a).unwrap() == read(b),
        "{} differs from {b}",
        a.display()
    );
}

#[test]
fn a_timm_repo_downloads_with_progress_and_classifies() {
    let w = dest("timm");
    let mut rec = Recorder::default();
    let dir = download_with_progress("timm/convnext_fashion", &w, &mut rec).unwrap();
    assert_eq!(dir, w.join("timm--convnext_fashion"));
    same_file(
        &dir.join("model.safetensors"),
        "weights/convnext_fashion.safetensors",
    );
    same_file(&dir.join("config.json"), "weights/convnext_fashion.json");
    assert!(!dir.join("preprocessor_config.json").exists());
    // Progress: the weights' bytes, rising to the whole file.
    let size = read("weights/convnext_fashion.safetensors").len();
    let w_updates: Vec<_> = rec
        .updates
        .iter()
        .filter(|u| u.2 == "model.safetensors")
        .collect();
    assert!(w_updates.len() > 3, "{:?}", rec.updates);
    assert!(w_updates.windows(2).all(|p| p[0].0 <= p[1].0));
    assert_eq!(w_updates.last().map(|u| (u.0, u.1)), Some((size, size)));
    // What the loader makes of it: the shipped model, which knows a sneaker.
    let info = CheckpointInfo::read(&dir).unwrap();
    assert_eq!(info.format, Format::Timm);
    let e = Engine::load(&dir, &Device::Cpu, DType::F32).unwrap();
    let x = e
        .prepare_file(&root().join("assets/samples/sneaker_9.png"))
        .unwrap()
        .tensor;
    assert_eq!(
        e.top_k(&e.forward(&x).unwrap(), 1).unwrap()[0][0].label,
        "Sneaker"
    );
}

/// The same logits from the downloaded folder as from the fixture it was served from.
fn same_model(downloaded: &Path, fixture: &str) {
    let a = Engine::load(downloaded, &Device::Cpu, DType::F32).unwrap();
    let b = Engine::load(&root().join(fixture), &Device::Cpu, DType::F32).unwrap();
    let x = Tensor::randn(0f32, 1.0, (1, 3, 64, 64), &Device::Cpu).unwrap();
    let d = (a.forward(&x).unwrap() - b.forward(&x).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(d, 0.0);
}

#[test]
fn a_transformers_repo_brings_its_preprocessing() {
    let w = dest("hf");
    let dir = download_with_progress("facebook/convnext-hf", &w, &mut Recorder::default()).unwrap();
    let info = CheckpointInfo::read(&dir).unwrap();
    assert_eq!(info.format, Format::HuggingFace);
    assert!(dir.join("preprocessor_config.json").is_file());
    assert_eq!(info.preprocess.crop_pct, 0.875);
    same_model(&dir, "tests/fixtures/checkpoints/hf_v1");
}

#[test]
fn a_repo_with_only_a_pickle_falls_back_to_pytorch_model_bin() {
    let w = dest("bin");
    let dir =
        download_with_progress("facebook/convnextv2-bin", &w, &mut Recorder::default()).unwrap();
    assert!(dir.join("pytorch_model.bin").is_file());
    assert!(!dir.join("model.safetensors").exists());
    same_model(&dir, "tests/fixtures/checkpoints/hf_v2_bin");
}

#[test]
fn a_missing_repo_is_a_clear_error_and_writes_nothing() {
    let w = dest("missing");
    let e = download_with_progress("nobody/nothing", &w, &mut Recorder::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("nobody/nothing") && e.contains("no such repo on") && e.contains("127.0.0.1"),
        "{e}"
    );
    assert_eq!(std::fs::read_dir(&w).unwrap().count(), 0);
}

#[test]
fn a_repo_without_weights_says_so_and_writes_nothing() {
    let w = dest("noweights");
    let e = download_with_progress("someone/no-weights", &w, &mut Recorder::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("neither model.safetensors nor pytorch_model.bin"),
        "{e}"
    );
    assert_eq!(std::fs::read_dir(&w).unwrap().count(), 0);
}

#[test]
fn a_transfer_cut_short_resumes_where_it_stopped() {
    let w = dest("cut_once");
    let dir = download_with_progress("cut/once", &w, &mut Recorder::default()).unwrap();
    same_file(
        &dir.join("model.safetensors"),
        "tests/fixtures/checkpoints/hf_v1/model.safetensors",
    );
    // The second request for the weights asked only for what the first did not bring.
    let half = read("tests/fixtures/checkpoints/hf_v1/model.safetensors").len() / 2;
    let log = env().hub.requests();
    let asked = format!("/cut/once/resolve/main/model.safetensors bytes={half}-");
    assert!(log.contains(&asked), "{asked} not in {log:#?}");
}

#[test]
fn a_transfer_that_keeps_breaking_is_a_clean_error_with_nothing_in_weights() {
    let w = dest("cut_always");
    let e = download_with_progress("cut/always", &w, &mut Recorder::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("cut/always") && e.contains("config.json"), "{e}");
    assert_eq!(
        std::fs::read_dir(&w).unwrap().count(),
        0,
        "a half download in weights/"
    );
}

#[test]
fn cancel_stops_the_transfer_and_writes_nothing() {
    let w = dest("cancel");
    let mut rec = Recorder {
        cancel_after: Some(1 << 20),
        ..Default::default()
    };
    let t = std::time::Instant::now();
    let e = download_with_progress("slow/big", &w, &mut rec).unwrap_err();
    assert!(matches!(e, Error::Cancelled(_)), "{e}");
    // 8 MB at 64 KiB per 20 ms is 2.6 s: stopping at 1 MB is well before.
    assert!(t.elapsed().as_secs_f64() < 2.0, "{:?}", t.elapsed());
    let last = rec.updates.last().unwrap();
    assert!(
        last.0 >= 1 << 20 && last.0 < SLOW_SIZE && last.1 == SLOW_SIZE,
        "{last:?}"
    );
    assert_eq!(std::fs::read_dir(&w).unwrap().count(), 0);
}

#[test]
fn the_cli_downloads_into_weights_and_says_what_it_got() {
    let e = env();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_convnext-explorer"))
        .args(["download", "facebook/convnext-hf"])
        .env("HF_ENDPOINT", &e.hub.url)
        .env("HF_HOME", e.tmp.join("hf-cli"))
        .env("CONVNEXT_WEIGHTS_DIR", e.tmp.join("cli-weights"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("facebook--convnext-hf"), "{stdout}");
    assert!(e
        .tmp
        .join("cli-weights/facebook--convnext-hf/model.safetensors")
        .is_file());
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_convnext-explorer"))
        .args(["download", "nobody/nothing"])
        .env("HF_ENDPOINT", &e.hub.url)
        .env("HF_HOME", e.tmp.join("hf-cli"))
        .env("CONVNEXT_WEIGHTS_DIR", e.tmp.join("cli-weights"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr.contains("no such repo") && stderr.lines().count() == 1,
        "{stderr}"
    );
}

#[cfg(feature = "app")]
mod app {
    use super::*;
    use common::gui::{harness, settle, App};
    use convnext_explorer::app::{Request, Settings, StartOptions};
    use convnext_explorer::io::engine::ModelSpec;
    use egui_kittest::kittest::Queryable;

    fn app() -> App {
        let weights = env().tmp.join("weights");
        assert_eq!(convnext_explorer::io::engine::weights_dir(), weights);
        let settings = Settings {
            model: Some(ModelSpec::Weights(
                root().join("weights/convnext_fashion.safetensors"),
            )),
            ..Default::default()
        };
        let mut h = harness(settings, StartOptions::default());
        settle(&mut h);
        h.state_mut().request(Request::ShowDownload);
        h.run_steps(3);
        h
    }

    fn type_repo(h: &mut App, repo: &str) {
        h.get_by_role(egui::accesskit::Role::TextInput).focus();
        h.run_steps(1);
        h.get_by_role(egui::accesskit::Role::TextInput)
            .type_text(repo);
        h.run_steps(2);
        h.get_by_label("Download").click();
        h.step();
    }

    /// Both app tests in one: they share `weights/` and the window.
    #[test]
    fn the_download_window_downloads_loads_and_cancels() {
        let mut h = app();
        h.get_by_label_contains("timm/convnext_tiny.fb_in1k");
        type_repo(&mut h, "app/convnext-hf");
        settle(&mut h);
        let folder = env().tmp.join("weights/app--convnext-hf");
        let s = h.state().shared();
        assert!(s.status.errors.is_empty(), "{:?}", s.status.errors);
        assert!(
            matches!(&s.model.as_ref().unwrap().spec, ModelSpec::Weights(p) if *p == folder),
            "the download was not loaded: {:?} {:?}",
            s.model.as_ref().map(|m| &m.spec),
            s.status.notice
        );
        assert!(s.weights.as_ref().unwrap().iter().any(|e| e.path == folder));
        h.get_by_label_contains("Downloaded into");
        // A slow one: progress in the window, then cancel; nothing lands in weights/.
        let field = h.get_by_role(egui::accesskit::Role::TextInput);
        field.focus();
        h.run_steps(1);
        h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::A);
        h.run_steps(1);
        type_repo(&mut h, "slow/app");
        let start = std::time::Instant::now();
        while h.query_by_label_contains(" MB").is_none() {
            assert!(start.elapsed().as_secs() < 30, "no progress shown");
            h.step();
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        h.get_by_label("Cancel").click();
        h.step();
        settle(&mut h);
        h.get_by_label_contains("cancelled");
        assert!(!env().tmp.join("weights/slow--app").exists());
        // The model the user had is still loaded.
        let s = h.state().shared();
        assert!(matches!(&s.model.as_ref().unwrap().spec, ModelSpec::Weights(p) if *p == folder));
    }
}
