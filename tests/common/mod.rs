#![allow(dead_code)]
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;

pub fn fixture(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(p)
}

pub fn load_ref(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(&format!("{name}.ref.safetensors")), &Device::Cpu)
        .unwrap()
}

/// max |a - b| relative to max |b|.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let b = b.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let diff: f32 = (&a - &b)
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap();
    let scale: f32 = b.abs().unwrap().max(0).unwrap().to_scalar().unwrap();
    assert!(diff.is_finite(), "non-finite values");
    diff / scale.max(1e-12)
}
