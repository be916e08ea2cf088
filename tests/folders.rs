//! Folders as input: evaluation against the Fashion-MNIST `eval`, top-activating images against
//! a brute-force search, feature collapse against PyTorch, skipped files, cancel, the CLI.
mod common;
use candle_core::{DType, Device};
use common::cli;
use convnext_explorer::analysis::folder_run::{collapse_of_tensor, run_folder, FolderOptions};
use convnext_explorer::analysis::top_images::TopImages;
use convnext_explorer::analysis::trace::{CaptureLevel, CaptureObserver};
use convnext_explorer::base::error::Error;
use convnext_explorer::base::progress::{Progress, Silent};
use convnext_explorer::model::layer_id::LayerId;
use convnext_explorer::train::*;
use convnext_explorer::Engine;
use std::path::{Path, PathBuf};

fn shipped() -> Engine {
    let p = convnext_explorer::io::engine::default_weights().expect("the shipped model");
    Engine::load(&p, &Device::Cpu, DType::F32).unwrap()
}

/// The committed Fashion-MNIST test images as an ImageFolder: `DIR/<class name>/<i>.png`.
fn fashion_folder(engine: &Engine, dir: &Path) -> (Dataset, usize) {
    let ds = fashion_mnist(&common::fixture("fashion"), "t10k").unwrap();
    for (i, &label) in ds.labels.iter().enumerate() {
        // Folder names as a user would write them: `T-shirt_top`, `Ankle boot`.
        let class = engine.labels[label as usize].replace('/', "_");
        let d = dir.join(class);
        std::fs::create_dir_all(&d).unwrap();
        let img = image::GrayImage::from_raw(ds.cols as u32, ds.rows as u32, ds.image(i).to_vec())
            .unwrap();
        img.save(d.join(format!("{i:05}.png"))).unwrap();
    }
    let n = ds.labels.len();
    (ds, n)
}

#[test]
fn an_image_folder_scores_as_the_fashion_mnist_eval_does() {
    let engine = shipped();
    let dir = tempfile::tempdir().unwrap();
    let (ds, n) = fashion_folder(&engine, dir.path());
    let run = run_folder(&engine, dir.path(), FolderOptions::default(), &mut Silent).unwrap();
    assert_eq!(run.eval.images.len(), n);
    assert!(run.skipped.is_empty());
    let s = run.eval.scores(&engine.labels).expect("labelled");
    assert_eq!(s.labelled, n);
    // The same images through `eval`'s own path.
    let data = prepare_dataset(&ds, &engine.preprocess).unwrap();
    let acc = accuracy(&engine.model, &data, &ds.labels, 500).unwrap();
    assert!(
        (s.top1 - acc as f64).abs() < 1e-9,
        "folder {} vs eval {acc}",
        s.top1
    );
    let m = s.confusion.expect("10 classes");
    assert_eq!(m.iter().flatten().sum::<u32>() as usize, n);
    let diagonal: u32 = (0..10).map(|i| m[i][i]).sum();
    assert_eq!(diagonal as f64 / n as f64, s.top1);
    assert!(s.top5 >= s.top1 && s.top5 > 0.99);
    for c in &s.per_class {
        let recall = m[c.index][c.index] as f64 / c.support as f64;
        assert_eq!(c.recall, Some(recall));
    }
}

#[test]
fn top_images_are_the_brute_force_best() {
    let engine = shipped();
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/samples");
    let layer = LayerId::Block(2, 1);
    let opts = FolderOptions {
        batch: 5, // batches that split the folder unevenly
        top: Some((4, Box::new(move |id| id == layer))),
        ..Default::default()
    };
    let run = run_folder(&engine, &samples, opts, &mut Silent).unwrap();
    let top: &TopImages = run.top.as_ref().unwrap();
    // Brute force: each image alone, its channel maxima.
    let mut per_image: Vec<Vec<f32>> = Vec::new();
    for r in &run.eval.images {
        let x = engine.prepare_file(&r.path).unwrap().tensor;
        let mut cap = CaptureObserver::new(CaptureLevel::Blocks);
        engine.forward_observed(&x, &mut cap).unwrap();
        let t = cap.get(layer).unwrap(); // [1, H, W, C]
        let c = t.dim(3).unwrap();
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        per_image.push(
            (0..c)
                .map(|ch| {
                    v.iter()
                        .skip(ch)
                        .step_by(c)
                        .cloned()
                        .fold(f32::MIN, f32::max)
                })
                .collect(),
        );
    }
    for ch in [0, 7, 127] {
        let mut want: Vec<(usize, f32)> = per_image.iter().map(|m| m[ch]).enumerate().collect();
        want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let got = top.channel(layer, ch).unwrap();
        let got_images: Vec<usize> = got.hits.iter().map(|h| h.image).collect();
        let want_images: Vec<usize> = want.iter().take(4).map(|w| w.0).collect();
        assert_eq!(got_images, want_images, "channel {ch}");
        for h in &got.hits {
            assert!((h.score - per_image[h.image][ch]).abs() < 1e-4);
        }
    }
}

#[test]
fn collapse_matches_pytorch() {
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(common::fixture("collapse.json")).unwrap()).unwrap();
    let x = common::load_ref("v1")["input"].clone();
    for name in ["v1", "v2", "v1convmlp"] {
        let ck = common::fixture(&format!("checkpoints/timm_{name}.safetensors"));
        let engine = Engine::load(&ck, &Device::Cpu, DType::F32).unwrap();
        let got = collapse_of_tensor(&engine, &x).unwrap();
        assert_eq!(got.images(), 2);
        let got = got.finish();
        let want = reference["models"][name].as_array().unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g.name, w["name"].as_str().unwrap(), "{name}");
            let w = w["distance"].as_f64().unwrap();
            assert!(
                ((g.distance - w) / w).abs() < 1e-4,
                "{name} {}: {} vs PyTorch {w}",
                g.name,
                g.distance
            );
        }
        assert_eq!(got.first().unwrap().depth, 0.0);
        assert_eq!(got.last().unwrap().depth, 1.0);
    }
}

#[test]
fn undecodable_files_are_skipped_and_listed() {
    let engine = shipped();
    let dir = tempfile::tempdir().unwrap();
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/samples");
    for f in ["bag_18.png", "coat_6.png", "dress_13.png"] {
        std::fs::copy(samples.join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(dir.path().join("shirt_1.png"), b"\x89PNG\r\n\x1a\nbroken").unwrap();
    let run = run_folder(&engine, dir.path(), FolderOptions::default(), &mut Silent).unwrap();
    assert_eq!(run.eval.images.len(), 3);
    assert_eq!(run.skipped.len(), 1);
    assert!(run.skipped[0].0.ends_with("shirt_1.png"));
    assert_eq!(run.eval.scores(&engine.labels).unwrap().top1, 1.0);
    // --limit counts files listed, broken ones included.
    let opts = FolderOptions {
        limit: Some(2),
        ..Default::default()
    };
    let run = run_folder(&engine, dir.path(), opts, &mut Silent).unwrap();
    assert_eq!(run.eval.images.len(), 2);
}

struct CancelAfter(usize, usize);
impl Progress for CancelAfter {
    fn update(&mut self, done: usize, _: usize, _: &str) {
        self.1 = done;
    }
    fn cancelled(&self) -> bool {
        self.1 >= self.0
    }
}

#[test]
fn a_folder_run_cancels_between_batches() {
    let engine = shipped();
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/samples");
    let opts = FolderOptions {
        batch: 2,
        ..Default::default()
    };
    let mut p = CancelAfter(4, 0);
    let e = run_folder(&engine, &samples, opts, &mut p).err().unwrap();
    assert!(matches!(e, Error::Cancelled(_)), "{e}");
    assert_eq!(p.1, 4);
}

#[test]
fn the_cli_evaluates_measures_collapse_and_finds_top_images() {
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/samples");
    let s = samples.to_str().unwrap();
    let (ok, out, err) = cli(&["eval", "--images", s, "--json"]);
    assert!(ok, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["images"], 12);
    assert_eq!(j["top1"], 1.0);
    assert_eq!(j["skipped"].as_array().unwrap().len(), 0);
    let m = j["confusion"].as_array().unwrap();
    let total: u64 = m
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(total, 10);
    assert_eq!(j["per_class"].as_array().unwrap().len(), 10);

    let t = common::fixture("v1.ref.safetensors");
    let w = common::fixture("checkpoints/timm_v2.safetensors");
    let (ok, out, err) = cli(&[
        "collapse",
        "--weights",
        w.to_str().unwrap(),
        "--tensor",
        t.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["images"], 2);
    let names: Vec<&str> = j["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names[0], "stages.0.blocks.0.mlp.act");
    assert!(names.contains(&"stages.2") && names.contains(&"stages.1.blocks.1.mlp.act"));

    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = cli(&[
        "top-images",
        "--layer",
        "stages.2",
        "--channel",
        "5",
        "--images",
        s,
        "--k",
        "3",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    let imgs = j["images"].as_array().unwrap();
    assert_eq!(imgs.len(), 3);
    let scores: Vec<f64> = imgs.iter().map(|i| i["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]));
    for i in imgs {
        let png = PathBuf::from(i["png"].as_str().unwrap());
        let img = image::open(&png).unwrap();
        assert!(img.width() >= 96 && img.width() == img.height());
    }
    // A channel the layer does not have, and a layer the model does not have: one line each.
    let (ok, _, err) = cli(&[
        "top-images",
        "--layer",
        "stages.2",
        "--channel",
        "999",
        "--images",
        s,
    ]);
    assert!(!ok && err.contains("has no channel 999"), "{err}");
    let (ok, _, err) = cli(&[
        "top-images",
        "--layer",
        "stages.9",
        "--channel",
        "0",
        "--images",
        s,
    ]);
    assert!(!ok && err.contains("no layer `stages.9`"), "{err}");
}
