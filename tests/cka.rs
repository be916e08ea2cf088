//! CKA and the checkpoint diff against float64 numpy references over PyTorch's activations
//! (`tests/fixtures/cka_fixtures.py`): V1 against V2 and a model against itself over 70 images
//! in mini-batches of 32 (three batches, the last of 6), through the `cka` and `diff` commands.
mod common;
use candle_core::{Device, Tensor};
use serde_json::Value;
use std::path::Path;

fn fixture() -> Value {
    let text = std::fs::read_to_string(common::fixture("cka.ref.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn cli(args: &[&str]) -> Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_convnext-explorer"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn ck(name: &str) -> String {
    common::fixture(&format!("checkpoints/{name}"))
        .display()
        .to_string()
}

/// The fixture's input, from the hash both sides share, written where `--tensor` reads it.
fn input(dir: &Path, r: &Value) -> String {
    let (n, s) = (
        r["n"].as_u64().unwrap() as usize,
        r["size"].as_u64().unwrap() as usize,
    );
    let v: Vec<f32> = common::det::values("cka.input", n * 3 * s * s)
        .into_iter()
        .map(|x| x as f32)
        .collect();
    let t = Tensor::from_vec(v, (n, 3, s, s), &Device::Cpu).unwrap();
    let p = dir.join("input.safetensors");
    candle_core::safetensors::save(&std::collections::HashMap::from([("input", t)]), &p).unwrap();
    p.display().to_string()
}

fn max_diff(got: &Value, want: &Value) -> f64 {
    let (g, w) = (got.as_array().unwrap(), want.as_array().unwrap());
    assert_eq!(g.len(), w.len(), "rows");
    g.iter()
        .zip(w)
        .flat_map(|(gr, wr)| {
            let (gr, wr) = (gr.as_array().unwrap(), wr.as_array().unwrap());
            assert_eq!(gr.len(), wr.len(), "columns");
            gr.iter()
                .zip(wr)
                .map(|(a, b)| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs())
                .collect::<Vec<_>>()
        })
        .fold(0.0, f64::max)
}

#[test]
fn cka_matches_numpy_for_v1_against_v2_and_against_itself() {
    let r = fixture();
    let dir = tempfile::tempdir().unwrap();
    let x = input(dir.path(), &r);
    let v1 = ck("timm_v1.safetensors");
    let got = cli(&[
        "cka",
        "--weights",
        &v1,
        "--other",
        &ck("timm_v2.safetensors"),
        "--tensor",
        &x,
        "--json",
    ]);
    assert_eq!(got["images"], r["images"]);
    assert_eq!(got["batch"], 32);
    assert_eq!(got["layers_a"], r["layers_v1"]);
    assert_eq!(got["layers_b"], r["layers_v2"]);
    let d = max_diff(&got["cka"], &r["cka_v1_v2"]);
    assert!(d < 1e-4, "V1 vs V2: max difference {d}");
    let same = cli(&[
        "cka",
        "--weights",
        &v1,
        "--other",
        &v1,
        "--tensor",
        &x,
        "--json",
    ]);
    let d = max_diff(&same["cka"], &r["cka_v1_v1"]);
    assert!(d < 1e-4, "V1 vs V1: max difference {d}");
    for (i, row) in same["cka"].as_array().unwrap().iter().enumerate() {
        let v = row[i].as_f64().unwrap();
        assert!((v - 1.0).abs() < 1e-9, "diagonal {i}: {v}");
    }
    // A last batch under 4 images is dropped: 70 = 34 + 34 + 2 counts 68.
    let short = cli(&[
        "cka",
        "--weights",
        &v1,
        "--other",
        &v1,
        "--tensor",
        &x,
        "--batch",
        "34",
        "--json",
    ]);
    assert_eq!(short["images"], 68);
}

/// `{name: {field: value}}` of the reference, for one of the command's lists.
fn by_name<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("{name} missing"))
}

fn close(a: &Value, b: &Value, what: &str) {
    let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
    assert!((a - b).abs() < 1e-6, "{what}: {a} vs {b}");
}

#[test]
fn the_checkpoint_diff_matches_numpy() {
    let r = fixture();
    for (other, key) in [
        ("timm_v1_tuned.safetensors", "diff_v1_tuned"),
        ("timm_v2.safetensors", "diff_v1_v2"),
    ] {
        let want = &r[key];
        let got = cli(&["diff", &ck("timm_v1.safetensors"), &ck(other), "--json"]);
        let tensors = want["tensors"].as_object().unwrap();
        assert_eq!(got["tensors"].as_array().unwrap().len(), tensors.len());
        for (name, w) in tensors {
            let g = by_name(&got["tensors"], name);
            close(&g["rel_change"], &w["rel_change"], name);
            close(&g["cosine"], &w["cosine"], name);
        }
        for (name, w) in want["groups"].as_object().unwrap() {
            let g = by_name(&got["groups"], name);
            close(&g["rel_change"], &w["rel_change"], name);
            assert_eq!(
                g.get("gamma_change").is_some(),
                w.get("gamma_change").is_some(),
                "{name}"
            );
            if let Some(wg) = w.get("gamma_change") {
                close(&g["gamma_change"], wg, name);
            }
        }
        let sorted = |v: &Value| {
            let mut s: Vec<String> = v
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().to_string())
                .collect();
            s.sort();
            s
        };
        assert_eq!(sorted(&got["only_a"]), sorted(&want["only_a"]), "{key}");
        assert_eq!(sorted(&got["only_b"]), sorted(&want["only_b"]), "{key}");
    }
    // The tensor order is the network's: stem first, head last.
    let got = cli(&[
        "diff",
        &ck("timm_v1.safetensors"),
        &ck("timm_v1_tuned.safetensors"),
        "--json",
    ]);
    let names: Vec<&str> = got["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names[0].starts_with("stem.0") && names.last().unwrap().starts_with("head.fc"),
        "{names:?}"
    );
}

#[test]
fn a_diff_of_two_shapes_names_the_first_tensor_and_fails() {
    // The V1 fixture with a 1x1-conv MLP has other widths: its stem already differs.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_convnext-explorer"))
        .args([
            "diff",
            &ck("timm_v1.safetensors"),
            &ck("timm_v1convmlp.safetensors"),
            "--json",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("stem.0.weight") && stderr.lines().count() == 1,
        "{stderr}"
    );
}
