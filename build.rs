//! With the `cuda` feature, compiles the project's CUDA kernels to PTX (the driver JIT-compiles
//! PTX for the GPU it runs on). candle's own `cuda` feature needs nvcc for its kernels already,
//! so this adds no requirement; without the feature nothing happens here.
use std::{env, path::PathBuf, process::Command};

const KERNELS: &[&str] = &["dwconv"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    for k in KERNELS {
        println!("cargo:rerun-if-changed=src/kernels/gpu/{k}.cu");
    }
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let arch = format!("-arch=compute_{}", compute_cap());
    for k in KERNELS {
        let src = format!("src/kernels/gpu/{k}.cu");
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", &arch, "-o"])
            .arg(out_dir.join(format!("{k}.ptx")))
            .arg(&src)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("nvcc failed on {src} ({s})"),
            Err(e) => panic!(
                "the `cuda` feature needs the CUDA toolkit's nvcc on PATH (or NVCC=/path/to/nvcc): {e}"
            ),
        }
    }
}

/// The GPU generation to target: `CUDA_COMPUTE_CAP` (as candle reads it, e.g. `80` or `8.0`),
/// else the first GPU `nvidia-smi` reports, else 7.5 (the oldest CUDA 13 supports; PTX for an
/// older generation runs on every newer one).
fn compute_cap() -> String {
    if let Ok(cap) = env::var("CUDA_COMPUTE_CAP") {
        return cap.trim().replace('.', "");
    }
    Command::new("nvidia-smi")
        .args(["--query-gpu=compute_cap", "--format=csv,noheader"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(|l| l.trim().replace('.', "")))
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()))
        .unwrap_or_else(|| "75".into())
}
