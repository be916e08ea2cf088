#![allow(dead_code)]
pub mod det;
#[cfg(feature = "app")]
pub mod gui;
#[cfg(feature = "hub")]
pub mod hub_server;
pub mod pth;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;

pub fn fixture(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(p)
}

/// Runs the command line as a user does, with `env` set: whether it succeeded, its stdout and
/// its stderr.
pub fn cli_with_env(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_convnext-explorer"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the command line as a user does: whether it succeeded, its stdout and its stderr.
pub fn cli(args: &[&str]) -> (bool, String, String) {
    cli_with_env(args, &[])
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

/// Depthwise-conv problems `(n, h, w, c, k)` every kernel is held to: one pixel, one channel,
/// odd widths, the ConvNeXt-T stage shapes, 3072 channels, tall and thin, a 3×3 kernel.
pub const DWCONV_SHAPES: &[(usize, usize, usize, usize, usize)] = &[
    (1, 1, 1, 1, 7),
    (1, 3, 5, 1, 7),
    (2, 7, 7, 33, 7),
    (3, 12, 9, 64, 7),
    (1, 56, 56, 96, 7),
    (1, 14, 14, 768, 7),
    (2, 8, 6, 40, 3),
    (1, 2, 3, 3072, 7),
    (1, 112, 4, 5, 7),
    // Blocks of four interior pixels, single edge pixels, and a channel remainder at every width.
    (1, 9, 20, 50, 7),
];

/// Random input `[n,h,w,c]`, weight `[k,k,c]` and bias `[c]` on the CPU.
pub fn dwconv_problem((n, h, w, c, k): (usize, usize, usize, usize, usize)) -> [Tensor; 3] {
    let r = |shape: &[usize]| Tensor::randn(0f32, 1., shape, &Device::Cpu).unwrap();
    [r(&[n, h, w, c]), r(&[k, k, c]), r(&[c])]
}

/// ‖a − b‖₂ / ‖b‖₂, refusing an all-zero reference (the comparison would prove nothing).
pub fn rel_l2(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a = a.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let b = b.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let d: f32 = (&a - &b)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    let n: f32 = b.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
    assert!(
        n > 0.0,
        "the reference map is all zeros: the comparison would prove nothing"
    );
    (d / n).sqrt()
}
