//! The shipped default model: accuracy on Fashion-MNIST test images and the bundled samples.
mod common;
use candle_core::{DType, Device};
use convnext_explorer::io::engine::default_weights;
use convnext_explorer::train::*;
use convnext_explorer::Engine;
use std::path::Path;

fn engine() -> Engine {
    let p = default_weights().expect("weights/convnext_fashion.safetensors ships with the repo");
    Engine::load(&p, &Device::Cpu, DType::F32).unwrap()
}

#[test]
fn accuracy_on_committed_test_subset() {
    let e = engine();
    let ds = fashion_mnist(&common::fixture("fashion"), "t10k").unwrap();
    let acc = accuracy(
        &e.model,
        &prepare_dataset(&ds, &e.preprocess).unwrap(),
        &ds.labels,
        250,
    )
    .unwrap();
    // The shipped model's figures are in weights/README.md; the project's target is 90%.
    assert!(acc >= 0.90, "top-1 {acc} on the first 1000 test images");
}

#[test]
fn accuracy_on_full_test_set_where_installed() {
    let dir = Path::new(FASHION_DIR);
    if !dir.join("t10k-images-idx3-ubyte.gz").exists() {
        // CI installs the dataset (.ci/run): there, its absence is a failure, not a skip.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but {FASHION_DIR} lacks the Fashion-MNIST test set"
        );
        eprintln!("SKIPPED: dataset-fashion-mnist not installed, full test set not checked");
        return;
    }
    let e = engine();
    let ds = fashion_mnist(dir, "t10k").unwrap();
    assert_eq!(ds.len(), 10_000);
    let acc = accuracy(
        &e.model,
        &prepare_dataset(&ds, &e.preprocess).unwrap(),
        &ds.labels,
        500,
    )
    .unwrap();
    // The shipped model has 91.80% (weights/README.md); issue 15's target of 92% is not yet
    // reached, so this guards against a regression from it.
    assert!(acc >= 0.915, "top-1 {acc} on the 10,000 test images");
}

#[test]
fn samples_are_classified_as_named() {
    let e = engine();
    let names = [
        "tshirt",
        "trouser",
        "pullover",
        "dress",
        "coat",
        "sandal",
        "shirt",
        "sneaker",
        "bag",
        "ankle_boot",
    ];
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/samples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&samples).unwrap() {
        let p = entry.unwrap().path();
        let stem = p.file_stem().unwrap().to_str().unwrap().to_string();
        let Some(class) = names
            .iter()
            .position(|n| stem.rsplit_once('_').map(|(a, _)| a) == Some(*n))
        else {
            continue;
        };
        let x = e.prepare_file(&p).unwrap().tensor;
        let top = e.top_k(&e.forward(&x).unwrap(), 1).unwrap();
        assert_eq!(
            top[0][0].index, class,
            "{stem} classified as {}",
            top[0][0].label
        );
        seen += 1;
    }
    assert_eq!(seen, 10);
}
