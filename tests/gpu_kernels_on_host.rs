//! The CUDA and Metal depthwise-conv kernels' own source, compiled by the host C++ compiler with
//! the GPU built-ins shimmed (tests/gpu_host), run one emulated thread at a time and compared with
//! candle's ops. This checks the index arithmetic, bounds and grid-stride loop of the exact code
//! the GPUs run on machines without a GPU (CI's); `dwconv.rs` checks the kernels on a real device
//! where the build has the feature and the machine the device.
mod common;
use candle_core::{Device, Tensor};
use common::{dwconv_problem, rel_err, DWCONV_SHAPES};
use convnext_explorer::kernels::depthwise_conv_nhwc_reference;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn build_harness(backend: &str, dir: &Path) -> PathBuf {
    let exe = dir.join(format!("harness_{backend}"));
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let out = Command::new(&cxx)
        .args(["-O2", "-std=c++17", "-Wall", "-Wno-attributes"])
        .arg("-I")
        .arg(root().join("tests/gpu_host/include"))
        .arg("-I")
        .arg(root().join("src/kernels/gpu"))
        .arg(format!("-DBACKEND_{backend}"))
        .arg(root().join("tests/gpu_host/harness.cpp"))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("this test needs a C++ compiler ({cxx}): {e}"));
    assert!(
        out.status.success(),
        "{backend} kernel did not compile on the host:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

fn as_bytes(t: &Tensor) -> Vec<u8> {
    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Runs the harness on one problem and returns its output as an `[N,H,W,C]` tensor.
fn run(
    exe: &Path,
    dir: &Path,
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    max_blocks: Option<usize>,
) -> Tensor {
    let (n, h, wd, c) = x.dims4().unwrap();
    let k = w.dim(0).unwrap();
    let mut input: Vec<u8> = [n, h, wd, c, k]
        .iter()
        .flat_map(|&d| (d as u32).to_le_bytes())
        .collect();
    for t in [x, w, b] {
        input.extend(as_bytes(t));
    }
    let (inp, outp) = (dir.join("in.bin"), dir.join("out.bin"));
    std::fs::write(&inp, input).unwrap();
    let mut cmd = Command::new(exe);
    cmd.arg(&inp).arg(&outp);
    if let Some(m) = max_blocks {
        cmd.arg(m.to_string());
    }
    let status = cmd.status().unwrap();
    assert!(status.success(), "harness failed: {status}");
    let y: Vec<f32> = std::fs::read(&outp)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert!(
        y.iter().all(|v| v.is_finite()),
        "an output element was never written"
    );
    Tensor::from_vec(y, (n, h, wd, c), &Device::Cpu).unwrap()
}

#[test]
fn cuda_and_metal_kernels_equal_the_reference_on_the_host() {
    let dir = tempfile::tempdir().unwrap();
    for backend in ["CUDA", "METAL"] {
        let exe = build_harness(backend, dir.path());
        for &shape in DWCONV_SHAPES {
            let [x, wt, b] = dwconv_problem(shape);
            let want = depthwise_conv_nhwc_reference(&x, &wt, &b).unwrap();
            // CUDA: as launched, and with a grid too small for one thread per element so that
            // the grid-stride loop has to cover the rest.
            let caps: &[Option<usize>] = if backend == "CUDA" {
                &[None, Some(3)]
            } else {
                &[None]
            };
            for &cap in caps {
                let got = run(&exe, dir.path(), &x, &wt, &b, cap);
                let e = rel_err(&got, &want);
                assert!(e < 1e-5, "{backend} {shape:?} cap {cap:?}: rel err {e}");
            }
        }
    }
}
