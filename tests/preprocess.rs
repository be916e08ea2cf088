//! Preprocessing against timm's eval transform (PIL bicubic resize, centre crop, normalise).
mod common;
use candle_core::Device;
use common::{fixture, rel_err};
use convnext_explorer::io::preprocess::{load_image, prepare, PreprocessConfig};

#[test]
fn matches_timm_eval_transform_on_a_photo() {
    let reference =
        candle_core::safetensors::load(fixture("preprocess_chelsea.safetensors"), &Device::Cpu)
            .unwrap();
    let img = load_image(&fixture("chelsea.png")).unwrap();
    let ours = prepare(&img, &PreprocessConfig::default(), &Device::Cpu)
        .unwrap()
        .tensor;
    let want = &reference["input"];
    assert_eq!(ours.dims(), want.dims());
    // The image crate and PIL round their bicubic passes differently: allow a few grey
    // levels at edges, and demand agreement on average.
    let diff = (&ours - want).unwrap().abs().unwrap();
    let mean: f32 = diff.mean_all().unwrap().to_scalar().unwrap();
    let max: f32 = diff
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(mean < 0.01, "mean abs diff {mean}");
    assert!(max < 0.15, "max abs diff {max}");
    assert!(rel_err(&ours, want) < 0.06);
}

#[test]
fn config_from_timm_and_hf_json() {
    let timm: serde_json::Value = serde_json::json!({
        "architecture": "convnext_tiny",
        "pretrained_cfg": {"input_size": [3, 288, 288], "crop_pct": 1.0, "interpolation": "bilinear",
                           "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    });
    let mut p = PreprocessConfig::default();
    p.apply_timm(&timm).unwrap();
    assert_eq!(p.input_size, (288, 288));
    assert_eq!(p.crop_pct, 1.0);
    assert_eq!(p.mean, [0.5; 3]);
    let hf = serde_json::json!({"crop_pct": 0.875, "size": {"shortest_edge": 384}, "resample": 3,
                                "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]});
    let mut p = PreprocessConfig::default();
    p.apply_hf(&hf).unwrap();
    assert_eq!(p.input_size, (384, 384));
    assert_eq!(
        p.crop_pct, 1.0,
        "HF's ConvNeXt processor does not crop at 384"
    );
}
