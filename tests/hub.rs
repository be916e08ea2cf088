//! The Hugging Face download, run for real against hubs on 127.0.0.1 that behave or misbehave
//! (`tests/common/hub_server.rs`): timm and transformers repos, the pickle fallback, missing
//! repos and files, transfers cut short (resumed) or broken for good, cancel and progress; and
//! one case or more for every way a hostile or broken mirror was seen to abuse the download
//! (issue 26's table: hash headers as paths, commit headers, stalls, redirect loops, a token sent
//! to another host, redirects without a place, wrong lengths, tampered weights, a good model
//! replaced by a bad one, a cache that remembers a failure, files a repo no longer has, the
//! build tree as destination). Each case checks the exit or error, the message, that nothing was
//! written outside the destination, and that an existing model is byte-identical after a
//! failure. The same through the CLI and the app's Download window.
#![cfg(feature = "hub")]
mod common;
use candle_core::{DType, Device, Tensor};
use common::hub_server::{git_sha1_hex, sha256_hex, tampered, Fault, Hub, Repo, Served};
use convnext_explorer::base::error::Error;
use convnext_explorer::base::progress::Progress;
use convnext_explorer::io::checkpoint::{CheckpointInfo, Format};
use convnext_explorer::io::hub::{download, DownloadOptions, Downloaded};
use convnext_explorer::Engine;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(p: &str) -> Vec<u8> {
    std::fs::read(root().join(p)).unwrap()
}

/// 8 MB of weights served slowly: long enough to cancel in the middle.
const SLOW_SIZE: usize = 8 << 20;
const TIMM_WEIGHTS: &str = "weights/convnext_fashion.safetensors";
const HF_WEIGHTS: &str = "tests/fixtures/checkpoints/hf_v1/model.safetensors";

fn timm() -> Repo {
    Repo::from([
        (
            "config.json".into(),
            Served::git(read("weights/convnext_fashion.json")),
        ),
        ("model.safetensors".into(), Served::lfs(read(TIMM_WEIGHTS))),
    ])
}

fn hf() -> Repo {
    Repo::from([
        (
            "config.json".into(),
            Served::git(read("tests/fixtures/checkpoints/hf_v1/config.json")),
        ),
        ("model.safetensors".into(), Served::lfs(read(HF_WEIGHTS))),
        (
            "preprocessor_config.json".into(),
            Served::git(br#"{"crop_pct": 0.875, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "resample": 3, "size": {"shortest_edge": 224}}"#.to_vec()),
        ),
    ])
}

fn bin() -> Repo {
    Repo::from([
        (
            "config.json".into(),
            Served::git(read("tests/fixtures/checkpoints/hf_v2_bin/config.json")),
        ),
        (
            "pytorch_model.bin".into(),
            Served::lfs(read(
                "tests/fixtures/checkpoints/hf_v2_bin/pytorch_model.bin",
            )),
        ),
    ])
}

/// `repo` with one file misbehaving.
fn faulty(repo: Repo, file: &str, fault: Fault) -> Repo {
    let mut r = repo;
    let s = r.get_mut(file).unwrap();
    s.fault = fault;
    r
}

fn slow() -> Repo {
    let mut r = hf();
    r.insert(
        "model.safetensors".into(),
        Served::lfs(vec![0u8; SLOW_SIZE]).with(Fault::Slow),
    );
    r
}

struct Env {
    hub: Hub,
    /// Another origin (a redirect's target).
    other: Hub,
    tmp: PathBuf,
}

/// The hubs and a scratch folder for the whole test binary (the environment is the process's).
fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let other = Hub::start(HashMap::from([("x/hf".into(), hf())]));
        let elsewhere = format!("{}/cdn/x/hf/model.safetensors", other.url);
        let big_config = Served::git(vec![b' '; 9_000_000]);
        let mut too_big = hf();
        too_big.insert("config.json".into(), big_config);
        let repos: HashMap<String, Repo> = HashMap::from([
            ("timm/convnext_fashion".into(), timm()),
            ("facebook/convnext-hf".into(), hf()),
            ("facebook/convnextv2-bin".into(), bin()),
            (
                "someone/no-weights".into(),
                Repo::from([("config.json".into(), hf()["config.json"].clone())]),
            ),
            (
                "cut/once".into(),
                faulty(hf(), "model.safetensors", Fault::CutFirst),
            ),
            (
                "cut/always".into(),
                faulty(hf(), "config.json", Fault::CutAlways),
            ),
            (
                "cut/whole".into(),
                faulty(hf(), "model.safetensors", Fault::CutFirstThenWhole),
            ),
            ("slow/big".into(), slow()),
            ("slow/app".into(), slow()),
            ("app/convnext-hf".into(), hf()),
            (
                "etag/abs".into(),
                faulty(hf(), "config.json", Fault::Etag("/tmp/etag-victim".into())),
            ),
            (
                "etag/rel".into(),
                faulty(
                    hf(),
                    "model.safetensors",
                    Fault::Etag("../../../etag-x".into()),
                ),
            ),
            (
                "commit/abs".into(),
                faulty(
                    hf(),
                    "model.safetensors",
                    Fault::Commit("/tmp/commit-x".into()),
                ),
            ),
            (
                "commit/rel".into(),
                faulty(hf(), "config.json", Fault::Commit("../../commit-x".into())),
            ),
            (
                "stall/after4k".into(),
                faulty(hf(), "model.safetensors", Fault::StallAfter(4096)),
            ),
            (
                "stall/trickle".into(),
                faulty(hf(), "model.safetensors", Fault::Trickle),
            ),
            (
                "stall/silent".into(),
                faulty(hf(), "config.json", Fault::Silent),
            ),
            (
                "loop/self".into(),
                faulty(hf(), "model.safetensors", Fault::RedirectSelf),
            ),
            (
                "away/other".into(),
                faulty(hf(), "model.safetensors", Fault::RedirectTo(elsewhere)),
            ),
            (
                "away/ftp".into(),
                faulty(
                    hf(),
                    "model.safetensors",
                    Fault::RedirectTo("ftp://127.0.0.1/x".into()),
                ),
            ),
            (
                "away/nowhere".into(),
                faulty(hf(), "model.safetensors", Fault::RedirectNoLocation),
            ),
            (
                "away/304".into(),
                faulty(hf(), "config.json", Fault::NotModified),
            ),
            (
                "len/longer".into(),
                faulty(hf(), "model.safetensors", Fault::Longer),
            ),
            (
                "len/longer-config".into(),
                faulty(hf(), "config.json", Fault::Longer),
            ),
            (
                "tamper/weights".into(),
                faulty(hf(), "model.safetensors", Fault::Tampered),
            ),
            (
                "tamper/config".into(),
                faulty(hf(), "config.json", Fault::Tampered),
            ),
            (
                "tamper/lying".into(),
                faulty(hf(), "model.safetensors", Fault::TamperedConsistently),
            ),
            ("big/config".into(), too_big),
        ]);
        let hub = Hub::start(repos);
        let tmp =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("hub-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(tmp.join("weights")).unwrap();
        // For the app, which reads the environment like the CLI.
        std::env::set_var("HF_ENDPOINT", &hub.url);
        std::env::set_var("CONVNEXT_WEIGHTS_DIR", tmp.join("weights"));
        std::env::set_var("CONVNEXT_DOWNLOAD_STALL_SECS", "2");
        Env { hub, other, tmp }
    })
}

fn options() -> DownloadOptions {
    DownloadOptions {
        endpoint: env().hub.url.clone(),
        token: None,
        sha256: None,
        stall: Duration::from_secs(2),
    }
}

/// A fresh destination for one test, inside a folder of its own (so that "nothing outside the
/// destination" can be checked by listing that folder).
fn dest(name: &str) -> PathBuf {
    let d = env().tmp.join(name).join("weights");
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

fn get(repo: &str, w: &Path) -> Result<Downloaded, Error> {
    download(repo, w, &options(), &mut Recorder::default())
}

fn fails(repo: &str, w: &Path) -> String {
    let e = get(repo, w).unwrap_err().to_string();
    assert!(e.contains(repo), "the message does not name the repo: {e}");
    assert_eq!(e.lines().count(), 1, "not one line: {e}");
    e
}

/// Every file under `dir`, with its bytes.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.insert(p.clone(), Vec::new());
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// The test's folder holds `weights/` and nothing else, and `weights/` holds nothing (no
/// staging folder left behind, nothing written through a server-given name).
fn nothing_written(w: &Path) {
    let outer = tree(w.parent().unwrap());
    assert_eq!(
        outer.keys().collect::<Vec<_>>(),
        vec![&w.to_path_buf()],
        "written outside or left behind"
    );
}

fn same_file(a: &Path, b: &str) {
    assert!(
        std::fs::read(a).unwrap() == read(b),
        "{} differs from {b}",
        a.display()
    );
}

#[test]
fn a_timm_repo_downloads_verified_with_progress_and_classifies() {
    let w = dest("timm");
    let mut rec = Recorder::default();
    let got = download("timm/convnext_fashion", &w, &options(), &mut rec).unwrap();
    let dir = got.dir;
    assert_eq!(dir, w.join("timm--convnext_fashion"));
    same_file(&dir.join("model.safetensors"), TIMM_WEIGHTS);
    same_file(&dir.join("config.json"), "weights/convnext_fashion.json");
    assert!(!dir.join("preprocessor_config.json").exists());
    // What was kept, with the weights' sha256.
    let weights: Vec<_> = got.files.iter().filter(|f| f.weights).collect();
    assert_eq!(weights.len(), 1);
    assert_eq!(weights[0].sha256, sha256_hex(&read(TIMM_WEIGHTS)));
    // Progress: the weights' bytes, rising to the whole file.
    let size = read(TIMM_WEIGHTS).len();
    let w_updates: Vec<_> = rec
        .updates
        .iter()
        .filter(|u| u.2 == "model.safetensors")
        .collect();
    assert!(w_updates.len() > 3, "{:?}", rec.updates);
    assert!(w_updates.windows(2).all(|p| p[0].0 <= p[1].0));
    assert_eq!(w_updates.last().map(|u| (u.0, u.1)), Some((size, size)));
    // The folder holds the model and nothing else (no staging folder).
    assert_eq!(std::fs::read_dir(&w).unwrap().count(), 1);
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
    // And `classify` on the result, as a user would run it.
    let sample = root().join("assets/samples/sneaker_9.png");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_convnext-explorer"))
        .args([
            "classify",
            "--weights",
            dir.to_str().unwrap(),
            sample.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("Sneaker"),
        "{stdout}"
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
    let dir = get("facebook/convnext-hf", &w).unwrap().dir;
    let info = CheckpointInfo::read(&dir).unwrap();
    assert_eq!(info.format, Format::HuggingFace);
    assert!(dir.join("preprocessor_config.json").is_file());
    assert_eq!(info.preprocess.crop_pct, 0.875);
    same_model(&dir, "tests/fixtures/checkpoints/hf_v1");
}

#[test]
fn a_repo_with_only_a_pickle_falls_back_to_pytorch_model_bin() {
    let w = dest("bin");
    let dir = get("facebook/convnextv2-bin", &w).unwrap().dir;
    assert!(dir.join("pytorch_model.bin").is_file());
    assert!(!dir.join("model.safetensors").exists());
    same_model(&dir, "tests/fixtures/checkpoints/hf_v2_bin");
}

#[test]
fn a_missing_repo_is_a_clear_error_and_writes_nothing() {
    let w = dest("missing");
    let e = fails("nobody/nothing", &w);
    assert!(
        e.contains("no such repo on") && e.contains("127.0.0.1"),
        "{e}"
    );
    nothing_written(&w);
}

#[test]
fn a_repo_without_weights_says_so_and_writes_nothing() {
    let w = dest("noweights");
    let e = fails("someone/no-weights", &w);
    assert!(
        e.contains("neither model.safetensors nor pytorch_model.bin"),
        "{e}"
    );
    nothing_written(&w);
}

#[test]
fn a_transfer_cut_short_resumes_where_it_stopped() {
    let w = dest("cut_once");
    let dir = get("cut/once", &w).unwrap().dir;
    same_file(&dir.join("model.safetensors"), HF_WEIGHTS);
    // The second request for the weights asked only for what the first did not bring.
    let half = read(HF_WEIGHTS).len() / 2;
    let asked = env()
        .hub
        .requests_to("/cut/once/resolve/main/model.safetensors");
    assert!(
        asked
            .iter()
            .any(|s| s.range.as_deref() == Some(&format!("bytes={half}-"))),
        "{asked:#?}"
    );
}

#[test]
fn a_resume_answered_from_byte_0_starts_the_file_again() {
    let w = dest("cut_whole");
    let dir = get("cut/whole", &w).unwrap().dir;
    same_file(&dir.join("model.safetensors"), HF_WEIGHTS);
}

#[test]
fn a_body_shorter_than_declared_every_time_is_an_error_with_nothing_kept() {
    let w = dest("cut_always");
    let e = fails("cut/always", &w);
    assert!(
        e.contains("config.json") && e.contains("broke off 3 times"),
        "{e}"
    );
    nothing_written(&w);
}

#[test]
fn a_body_longer_than_declared_is_refused() {
    for (repo, file) in [
        ("len/longer", "model.safetensors"),
        ("len/longer-config", "config.json"),
    ] {
        let w = dest(&repo.replace('/', "_"));
        let e = fails(repo, &w);
        assert!(e.contains(file), "{e}");
        assert!(
            e.contains("longer than") || e.contains("corrupt or tampered"),
            "{e}"
        );
        nothing_written(&w);
    }
}

#[test]
fn cancel_stops_within_a_moment_and_writes_nothing() {
    let w = dest("cancel");
    let mut rec = Recorder {
        cancel_after: Some(1 << 20),
        ..Default::default()
    };
    let t = Instant::now();
    let e = download("slow/big", &w, &options(), &mut rec).unwrap_err();
    assert!(matches!(e, Error::Cancelled(_)), "{e}");
    // 8 MB at 64 KiB per 20 ms is 2.6 s: stopping at 1 MB is well before.
    assert!(t.elapsed().as_secs_f64() < 2.0, "{:?}", t.elapsed());
    let last = rec.updates.last().unwrap();
    assert!(
        last.0 >= 1 << 20 && last.0 < SLOW_SIZE && last.1 == SLOW_SIZE,
        "{last:?}"
    );
    nothing_written(&w);
}

#[test]
fn hash_headers_never_become_paths() {
    // The victim the old client overwrote: a file named by an absolute ETag.
    let victim = Path::new("/tmp/etag-victim");
    std::fs::write(victim, b"keep me").unwrap();
    for (repo, file) in [
        ("etag/abs", "config.json"),
        ("etag/rel", "model.safetensors"),
    ] {
        let w = dest(&repo.replace('/', "_"));
        let e = fails(repo, &w);
        assert!(e.contains(file), "{e}");
        assert!(e.contains("no hash") || e.contains("not a sha256"), "{e}");
        nothing_written(&w);
    }
    assert_eq!(std::fs::read(victim).unwrap(), b"keep me");
    assert!(!env().tmp.join("../../etag-x").exists() && !Path::new("/etag-x").exists());
}

#[test]
fn commit_headers_are_ignored() {
    for repo in ["commit/abs", "commit/rel"] {
        let w = dest(&repo.replace('/', "_"));
        let dir = get(repo, &w).unwrap().dir;
        same_file(&dir.join("model.safetensors"), HF_WEIGHTS);
        assert_eq!(std::fs::read_dir(&w).unwrap().count(), 1);
        assert_eq!(
            tree(w.parent().unwrap()).len(),
            1 + 1 + 3,
            "weights/, the folder, 3 files"
        );
    }
    assert!(!Path::new("/tmp/commit-x").exists());
}

#[test]
fn a_stalled_trickling_or_silent_mirror_ends_within_seconds() {
    for (repo, file) in [
        ("stall/after4k", "model.safetensors"),
        ("stall/trickle", "model.safetensors"),
        ("stall/silent", "config.json"),
    ] {
        let w = dest(&repo.replace('/', "_"));
        let t = Instant::now();
        let e = fails(repo, &w);
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{repo}: {:?}",
            t.elapsed()
        );
        assert!(e.contains(file) && e.contains("stalled"), "{e}");
        nothing_written(&w);
    }
}

#[test]
fn a_redirect_loop_ends_after_five_redirects() {
    let w = dest("loop");
    let e = fails("loop/self", &w);
    assert!(e.contains("more than 5 redirects"), "{e}");
    let asked = env().hub.requests_to("/loop/self/");
    assert!(asked.len() <= 1 + 1 + 6, "{} requests", asked.len());
    nothing_written(&w);
}

#[test]
fn the_token_never_follows_a_redirect_to_another_origin() {
    let w = dest("away");
    let opts = DownloadOptions {
        token: Some("hf_secret".into()),
        ..options()
    };
    let got = download("away/other", &w, &opts, &mut Recorder::default()).unwrap();
    same_file(&got.dir.join("model.safetensors"), HF_WEIGHTS);
    // The endpoint saw the token; the other origin did not, and the user is told.
    let ours = env()
        .hub
        .requests_to("/away/other/resolve/main/model.safetensors");
    // (The CLI test sends its own token to the same repo at the same time.)
    assert!(ours.iter().all(|s| s.authorization.is_some()), "{ours:?}");
    assert!(ours
        .iter()
        .any(|s| s.authorization.as_deref() == Some("Bearer hf_secret")));
    let theirs = env().other.requests_to("/cdn/x/hf/model.safetensors");
    assert!(!theirs.is_empty());
    assert!(
        theirs.iter().all(|s| s.authorization.is_none()),
        "{theirs:?}"
    );
    assert!(
        got.notes
            .iter()
            .any(|n| n.contains("token was not sent") && n.contains(&env().other.url)),
        "{:?}",
        got.notes
    );
}

#[test]
fn redirects_without_a_place_or_to_other_schemes_are_errors_not_panics() {
    for (repo, words) in [
        ("away/nowhere", "without saying where"),
        ("away/304", "304"),
        ("away/ftp", "only http and https"),
    ] {
        let w = dest(&repo.replace('/', "_"));
        let e = fails(repo, &w);
        assert!(e.contains(words), "{e}");
        nothing_written(&w);
    }
}

#[test]
fn tampered_files_are_refused_naming_both_hashes() {
    let w = dest("tamper");
    let e = fails("tamper/weights", &w);
    let good = sha256_hex(&read(HF_WEIGHTS));
    let bad = sha256_hex(&tampered(&read(HF_WEIGHTS)));
    assert!(
        e.contains("model.safetensors") && e.contains(&good) && e.contains(&bad),
        "{e}"
    );
    nothing_written(&w);
    let e = fails("tamper/config", &w);
    let cfg = read("tests/fixtures/checkpoints/hf_v1/config.json");
    assert!(
        e.contains("config.json") && e.contains(&git_sha1_hex(&cfg)),
        "{e}"
    );
    nothing_written(&w);
}

#[test]
fn a_pinned_sha256_catches_a_mirror_that_lies_consistently() {
    let w = dest("pin");
    let good = sha256_hex(&read(HF_WEIGHTS));
    // Without a pin the lie is consistent: only the strict loader could notice, and it can't.
    let pinned = DownloadOptions {
        sha256: Some(good.clone()),
        ..options()
    };
    let e = download("tamper/lying", &w, &pinned, &mut Recorder::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("--sha256") && e.contains(&good), "{e}");
    nothing_written(&w);
    let ok = download(
        "facebook/convnext-hf",
        &w,
        &pinned,
        &mut Recorder::default(),
    )
    .unwrap();
    assert_eq!(ok.files.iter().find(|f| f.weights).unwrap().sha256, good);
    let bad_pin = DownloadOptions {
        sha256: Some("12ab".into()),
        ..options()
    };
    let e = download(
        "facebook/convnext-hf",
        &w,
        &bad_pin,
        &mut Recorder::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("not a sha256"), "{e}");
}

#[test]
fn a_failed_download_leaves_the_model_already_there_byte_for_byte() {
    let w = dest("keep");
    env().hub.set("keep/model", hf());
    get("keep/model", &w).unwrap();
    let before = tree(&w);
    // The same repo again, its weights now tampered, cut or stalled.
    for fault in [Fault::Tampered, Fault::CutAlways, Fault::StallAfter(100)] {
        env()
            .hub
            .set("keep/model", faulty(hf(), "model.safetensors", fault));
        fails("keep/model", &w);
        assert_eq!(tree(&w), before, "the model already there changed");
    }
}

#[test]
fn a_rerun_after_the_mirror_is_fixed_downloads_again() {
    let w = dest("fixed");
    env().hub.set(
        "fixed/model",
        faulty(hf(), "model.safetensors", Fault::Tampered),
    );
    fails("fixed/model", &w);
    fails("fixed/model", &w);
    env().hub.set("fixed/model", hf());
    let dir = get("fixed/model", &w).unwrap().dir;
    same_file(&dir.join("model.safetensors"), HF_WEIGHTS);
}

#[test]
fn files_the_repo_no_longer_has_go_with_the_old_folder() {
    let w = dest("moved");
    env().hub.set("moved/model", hf());
    let dir = get("moved/model", &w).unwrap().dir;
    assert!(dir.join("model.safetensors").is_file());
    env().hub.set("moved/model", bin());
    get("moved/model", &w).unwrap();
    assert!(dir.join("pytorch_model.bin").is_file());
    assert!(!dir.join("model.safetensors").exists());
    assert!(!dir.join("preprocessor_config.json").exists());
    same_model(&dir, "tests/fixtures/checkpoints/hf_v2_bin");
    assert_eq!(
        std::fs::read_dir(&w).unwrap().count(),
        1,
        "an old folder left behind"
    );
}

#[test]
fn a_config_over_8_mb_is_refused() {
    let w = dest("bigconfig");
    let e = fails("big/config", &w);
    assert!(e.contains("config.json") && e.contains("over 8 MB"), "{e}");
    nothing_written(&w);
}

fn cli(args: &[&str], cwd: &Path, envs: &[(&str, &Path)]) -> std::process::Output {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_convnext-explorer"));
    c.args(args)
        .current_dir(cwd)
        .env("HF_ENDPOINT", &env().hub.url)
        .env("CONVNEXT_DOWNLOAD_STALL_SECS", "2")
        .env_remove("CONVNEXT_WEIGHTS_DIR")
        .env_remove("HF_TOKEN");
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().unwrap()
}

#[test]
fn the_cli_downloads_verified_and_prints_the_weights_sha256() {
    let w = dest("cli");
    let cwd = w.parent().unwrap();
    let out = cli(&["download", "facebook/convnext-hf"], cwd, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ./weights exists here, so that is where it goes.
    assert!(w.join("facebook--convnext-hf/model.safetensors").is_file());
    let sha = sha256_hex(&read(HF_WEIGHTS));
    assert!(
        stdout.contains(&format!("sha256 {sha}  model.safetensors")),
        "{stdout}"
    );
    // A missing repo, a pin that does not match: exit 1 and one line naming the problem.
    let other = "0".repeat(64);
    for (args, words) in [
        (vec!["download", "nobody/nothing"], "no such repo"),
        (
            vec!["download", "facebook/convnext-hf", "--sha256", &other],
            "--sha256",
        ),
    ] {
        let bad = cli(&args, cwd, &[]);
        let stderr = String::from_utf8_lossy(&bad.stderr);
        assert_eq!(bad.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(words) && stderr.lines().count() == 1,
            "{stderr}"
        );
    }
    // The existing folder survived the refused download.
    same_file(
        &w.join("facebook--convnext-hf/model.safetensors"),
        HF_WEIGHTS,
    );
}

#[test]
fn without_weights_here_the_cli_uses_the_users_data_folder_or_out() {
    let base = env().tmp.join("xdg");
    let cwd = base.join("elsewhere");
    std::fs::create_dir_all(&cwd).unwrap();
    let data = base.join("data");
    let out = cli(
        &["download", "facebook/convnext-hf"],
        &cwd,
        &[("XDG_DATA_HOME", &data), ("HOME", &base)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = data.join("convnext-explorer/weights/facebook--convnext-hf/model.safetensors");
    assert!(got.is_file());
    assert_eq!(
        std::fs::read_dir(&cwd).unwrap().count(),
        0,
        "written into the current folder"
    );
    let explicit = base.join("out");
    let out = cli(
        &[
            "download",
            "facebook/convnext-hf",
            "--out",
            explicit.to_str().unwrap(),
        ],
        &cwd,
        &[("XDG_DATA_HOME", &data), ("HOME", &base)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(explicit.join("facebook--convnext-hf/config.json").is_file());
}

#[test]
fn the_cli_says_when_it_withholds_the_token() {
    let base = env().tmp.join("token");
    let hf_home = base.join("hf");
    std::fs::create_dir_all(&hf_home).unwrap();
    std::fs::write(hf_home.join("token"), "hf_from_file\n").unwrap();
    let w = base.join("weights");
    std::fs::create_dir_all(&w).unwrap();
    let out = cli(&["download", "away/other"], &base, &[("HF_HOME", &hf_home)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("token was not sent"), "{stderr}");
    let sent = env().hub.requests_to("/away/other/");
    assert!(sent
        .iter()
        .any(|s| s.authorization.as_deref() == Some("Bearer hf_from_file")));
    assert!(env()
        .other
        .requests()
        .iter()
        .all(|s| s.authorization.is_none()));
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
            model: Some(ModelSpec::Weights(root().join(TIMM_WEIGHTS))),
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

    fn clear_repo(h: &mut App) {
        let field = h.get_by_role(egui::accesskit::Role::TextInput);
        field.focus();
        h.run_steps(1);
        h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::A);
        h.run_steps(1);
    }

    /// The app tests in one: they share `weights/` and the window.
    #[test]
    fn the_download_window_downloads_loads_cancels_and_keeps_the_model_on_failure() {
        let mut h = app();
        h.get_by_label_contains("timm/convnext_tiny.fb_in1k");
        h.get_by_label_contains("hash the hub states");
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
        // A slow one: bytes, total and rate in the window, then cancel, which stops at once;
        // nothing lands in weights/.
        clear_repo(&mut h);
        type_repo(&mut h, "slow/app");
        let start = Instant::now();
        while h.query_by_label_contains(" MB/s").is_none() {
            assert!(
                start.elapsed().as_secs() < 30,
                "no progress with a rate shown"
            );
            h.step();
            std::thread::sleep(Duration::from_millis(10));
        }
        h.get_by_label("Cancel").click();
        let t = Instant::now();
        h.step();
        settle(&mut h);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "cancel took {:?}",
            t.elapsed()
        );
        h.get_by_label_contains("cancelled");
        assert!(!env().tmp.join("weights/slow--app").exists());
        // A tampered one: an error naming the file; the model the user had is still loaded.
        clear_repo(&mut h);
        type_repo(&mut h, "tamper/weights");
        settle(&mut h);
        let s = h.state().shared();
        assert!(
            s.status
                .errors
                .iter()
                .any(|e| e.contains("model.safetensors") && e.contains("tampered")),
            "{:?}",
            s.status.errors
        );
        assert!(matches!(&s.model.as_ref().unwrap().spec, ModelSpec::Weights(p) if *p == folder));
    }
}
