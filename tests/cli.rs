//! The command line, run as a user runs it.
mod common;
use candle_core::{DType, Device};
use common::{fixture, load_ref, rel_err};

/// No default weights: every run names its model.
fn cli(args: &[&str]) -> (bool, String, String) {
    common::cli_with_env(args, &[("CONVNEXT_WEIGHTS_DIR", "/nonexistent")])
}

#[test]
fn classify_json_uses_checkpoint_labels() {
    let w = fixture("checkpoints/hf_v1");
    let img = fixture("chelsea.png");
    let (ok, out, err) = cli(&[
        "classify",
        "--weights",
        w.to_str().unwrap(),
        "--top",
        "3",
        "--json",
        img.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(v["image"], img.to_str().unwrap());
    let top = v["top"].as_array().unwrap();
    assert_eq!(top.len(), 3);
    assert!(top[0]["label"].as_str().unwrap().starts_with("thing "));
    let p0 = top[0]["prob"].as_f64().unwrap();
    let p1 = top[1]["prob"].as_f64().unwrap();
    assert!(p0 >= p1 && p0 <= 1.0);
}

#[test]
fn classify_a_folder_and_report_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("chelsea.png"), dir.path().join("a.png")).unwrap();
    std::fs::write(dir.path().join("b.png"), "not a png").unwrap();
    let w = fixture("checkpoints/timm_v2.safetensors");
    let (ok, out, err) = cli(&[
        "classify",
        "--weights",
        w.to_str().unwrap(),
        "--json",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!ok);
    assert_eq!(out.lines().count(), 1, "the good image is still classified");
    assert!(err.contains("b.png"), "{err}");
    assert!(!err.contains("panicked"));
}

#[test]
fn inspect_json_totals() {
    let (ok, out, err) = cli(&["inspect", "--variant", "tiny", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["total_macs"], 4_470_437_376u64);
    assert_eq!(v["total_params"], 28_589_128u64);
    let layers = v["layers"].as_array().unwrap();
    assert!(layers
        .iter()
        .any(|l| l["name"] == "stages.2.blocks.8.mlp.fc2"));
    let (ok, out, _) = cli(&[
        "inspect",
        "--weights",
        fixture("checkpoints/fb_v2.pth").to_str().unwrap(),
        "--size",
        "64x96",
    ]);
    assert!(ok);
    assert!(out.contains("stages.3.blocks.0.mlp.grn"));
}

#[test]
fn export_matches_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let r = load_ref("v2");
    let input = dir.path().join("input.safetensors");
    let mut m = std::collections::HashMap::new();
    m.insert("input".to_string(), r["input"].clone());
    candle_core::safetensors::save(&m, &input).unwrap();
    let out = dir.path().join("acts.safetensors");
    let w = fixture("checkpoints/timm_v2.safetensors");
    let (ok, _, err) = cli(&[
        "export",
        "--weights",
        w.to_str().unwrap(),
        "--tensor",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--blocks",
    ]);
    assert!(ok, "{err}");
    let got = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    assert!(rel_err(&got["logits"], &r["logits"]) < 1e-4);
    for s in 0..4 {
        let k = format!("stages.{s}");
        assert!(rel_err(&got[&k], &r[&k]) < 1e-4, "{k}");
    }
    assert_eq!(got["stages.1.blocks.1"].dims(), &[2, 24, 8, 12]);
    assert_eq!(got["input"].dtype(), DType::F32);

    let img_out = dir.path().join("img.safetensors");
    let (ok, _, err) = cli(&[
        "export",
        "--weights",
        w.to_str().unwrap(),
        "--image",
        fixture("chelsea.png").to_str().unwrap(),
        "--out",
        img_out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let got = candle_core::safetensors::load(&img_out, &Device::Cpu).unwrap();
    assert_eq!(got["input"].dims(), &[1, 3, 224, 224]);
    assert_eq!(got["stages.3"].dims(), &[1, 40, 7, 7]);
}

#[test]
fn bench_json_fields() {
    let v = bench_atto_json(&["--layers", "--gradcam", "stages.1"], &[]);
    assert_eq!(v["gradcam_layer"], "stages.1");
    assert!(v["gradcam_rounds"].as_u64().unwrap() >= 5);
    for k in [
        "median_ms",
        "min_ms",
        "timing_overhead",
        "capture_overhead",
        "gradcam_median_ms",
        "gradcam_time_ratio",
    ] {
        assert!(v[k].as_f64().unwrap() > 0.0, "{k}");
    }
    assert_eq!(v["batch"], 1);
    assert_eq!(v["device"], "cpu");
    assert_eq!(v["dtype"], "f32");
}

/// `bench --json` of ConvNeXt-atto at 64×64 (2 timed runs after 1 warm-up) with `extra`
/// options, `env` set; it must succeed.
fn bench_atto_json(extra: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let mut args = vec![
        "bench",
        "--variant",
        "atto",
        "--iters",
        "2",
        "--warmup",
        "1",
        "--size",
        "64",
    ];
    args.extend_from_slice(extra);
    args.push("--json");
    let (ok, out, err) = common::cli_with_env(&args, env);
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap()
}

/// `bench --roofline --json` of ConvNeXt-atto at 64×64 in `dtype`, the machine's limits kept
/// in the cache folder `cache`.
fn bench_roofline_json(cache: &str, dtype: &str) -> serde_json::Value {
    let env = [
        ("CONVNEXT_WEIGHTS_DIR", "/nonexistent"),
        ("CONVNEXT_CACHE_DIR", cache),
    ];
    bench_atto_json(&["--dtype", dtype, "--roofline"], &env)
}

/// `bench --roofline --json`: the machine's limits (measured into the cache named by
/// `CONVNEXT_CACHE_DIR`, then read back by a second run) and every timed layer under them.
#[test]
fn bench_roofline_places_every_layer_under_the_limits() {
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().to_str().unwrap();
    let run = || bench_roofline_json(dir, "f32");
    let v = run();
    let r = &v["roofline"];
    let limits = &r["limits"];
    for k in ["peak_gflops", "gemm_gflops", "memory_gbs", "cache_gbs"] {
        assert!(limits[k].as_f64().unwrap() > 0.0, "{k}");
    }
    let peak = limits["peak_gflops"].as_f64().unwrap();
    let bw = limits["memory_gbs"].as_f64().unwrap();
    assert!((r["ridge"].as_f64().unwrap() - peak / bw).abs() < 1e-9 * peak / bw);
    assert!(
        std::fs::read_dir(cache.path().join("machine"))
            .unwrap()
            .count()
            == 1
    );
    // The second run reads the limits back rather than measuring them again.
    assert_eq!(run()["roofline"]["limits"], *limits);
    assert_eq!(r["bf16_matmuls"], false);
    let layers = r["layers"].as_array().unwrap();
    let kinds: Vec<&str> = layers.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    for kind in ["Linear", "DwConv 7×7", "LayerNorm", "GELU", "Add"] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    for l in layers {
        let f = |k: &str| l[k].as_f64().unwrap();
        assert!((f("intensity") - f("flops") / f("bytes")).abs() < 1e-9 * f("intensity"));
        let roof = peak.min(f("intensity") * bw);
        assert!((f("roof_gflops") - roof).abs() < 1e-9 * roof, "{l}");
        let pct = 100.0 * f("gflops") / roof;
        assert!((f("percent_of_limit") - pct).abs() < 1e-6 * pct, "{l}");
        let bound = if f("intensity") < peak / bw {
            "memory"
        } else {
            "compute"
        };
        assert_eq!(l["bound"], bound, "{l}");
    }
}

/// `bench --roofline` in bf16: the activations stay f32 on the CPU, so every layer moves the
/// bytes it moves in f32, and the report says whether the matmuls ran in native bf16 (their
/// points can then pass the f32 compute roof).
#[test]
fn bench_roofline_in_bf16_counts_f32_storage_and_says_when_matmuls_are_native() {
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().to_str().unwrap();
    let run = |dtype: &str| bench_roofline_json(dir, dtype)["roofline"].clone();
    let (f32_run, bf16_run) = (run("f32"), run("bf16"));
    assert_eq!(f32_run["bf16_matmuls"], false);
    let native = convnext_explorer::kernels::gemm::bf16_native();
    assert_eq!(bf16_run["bf16_matmuls"], native);
    let bytes = |r: &serde_json::Value| -> Vec<(String, f64)> {
        let layers = r["layers"].as_array().unwrap();
        let named = |l: &serde_json::Value| l["name"].as_str().unwrap().to_string();
        layers
            .iter()
            .map(|l| (named(l), l["bytes"].as_f64().unwrap()))
            .collect()
    };
    assert!(!bytes(&f32_run).is_empty());
    assert_eq!(bytes(&f32_run), bytes(&bf16_run));
}

#[test]
fn errors_are_one_clear_line() {
    let cases: Vec<Vec<String>> = vec![
        vec![
            "inspect".into(),
            "--variant".into(),
            "convnext_gigantic".into(),
        ],
        vec![
            "classify".into(),
            "--weights".into(),
            "/no/such/file.safetensors".into(),
            "x.png".into(),
        ],
        vec![
            "classify".into(),
            "--device".into(),
            "cuda".into(),
            "x.png".into(),
        ],
        vec![
            "classify".into(),
            "--weights".into(),
            fixture("chelsea.png").display().to_string(),
            fixture("chelsea.png").display().to_string(),
        ],
        vec![
            "classify".into(),
            fixture("chelsea.png").display().to_string(),
        ],
        vec![
            "bench".into(),
            "--variant".into(),
            "atto".into(),
            "--size".into(),
            "50".into(),
        ],
    ];
    for args in cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, _, err) = cli(&a);
        assert!(!ok, "{args:?} should fail");
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{args:?}: {err}"
        );
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(lines[0].starts_with("error: "), "{err}");
    }
}

#[test]
fn roadmap_lists_the_sixteen_steps_with_both_conventions() {
    let (ok, out, err) = cli(&["roadmap", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let steps = v.as_array().unwrap();
    assert_eq!(steps.len(), 16);
    assert_eq!(steps[0]["name"], "resnet50");
    assert_eq!(steps[15]["name"], "separate_downsampling");
    // torchvision's 4.09 GFLOPs for ResNet-50 is conv + linear; ConvNeXt-T's 4.47 is fvcore's.
    assert_eq!(
        format!(
            "{:.2}",
            steps[0]["conv_linear_macs"].as_f64().unwrap() / 1e9
        ),
        "4.09"
    );
    assert_eq!(
        format!("{:.2}", steps[15]["total_macs"].as_f64().unwrap() / 1e9),
        "4.47"
    );
    for s in steps {
        for k in ["title", "change", "total_params"] {
            assert!(!s[k].is_null(), "{k} missing in {s}");
        }
        assert!(s["median_ms"].is_null(), "no timing without --time");
    }
    let (ok, out, err) = cli(&["inspect", "--variant", "roadmap:kernel_7", "--json"]);
    assert!(ok, "{err}");
    assert!(out.contains("stages.2.blocks.8.conv1") && out.contains("DwConv 7×7"));
    let (ok, _, err) = cli(&["inspect", "--variant", "roadmap:kernel_13"]);
    assert!(!ok && err.contains("roadmap:kernel_11"), "{err}");
}

#[test]
fn attribute_writes_maps_at_the_layers_resolution() {
    let dir = tempfile::tempdir().unwrap();
    let w = fixture("checkpoints/timm_v1.safetensors");
    let input = dir.path().join("input.safetensors");
    let mut m = std::collections::HashMap::new();
    m.insert("input".to_string(), load_ref("v1")["input"].clone());
    candle_core::safetensors::save(&m, &input).unwrap();
    for (method, layer, shape) in [
        ("gradcam", "stages.2.blocks.0", [2, 4, 6]),
        ("gradcam++", "stem", [2, 16, 24]),
        ("occlusion", "stem", [2, 3, 5]),
        ("evidence", "stages.3", [2, 2, 3]),
    ] {
        let out = dir.path().join(format!("{method}.safetensors"));
        let png = dir.path().join(format!("{method}.png"));
        let (ok, _, err) = cli(&[
            "attribute",
            "--weights",
            w.to_str().unwrap(),
            "--tensor",
            input.to_str().unwrap(),
            "--method",
            method,
            "--layer",
            layer,
            "--out",
            out.to_str().unwrap(),
            "--png",
            png.to_str().unwrap(),
        ]);
        assert!(ok, "{method}: {err}");
        let got = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
        assert_eq!(got["map"].dims(), &shape, "{method}");
        assert_eq!(got["logits"].dims(), &[2, 7]);
        let img = image::open(&png).unwrap();
        assert_eq!(
            (img.width(), img.height()),
            (96, 64),
            "{method}: the PNG is the input's size"
        );
    }
    let bad = |args: &[&str], want: &str| {
        let mut all = vec![
            "attribute",
            "--weights",
            w.to_str().unwrap(),
            "--tensor",
            input.to_str().unwrap(),
            "--out",
            "/tmp/x.safetensors",
        ];
        all.extend_from_slice(args);
        let (ok, _, err) = cli(&all);
        assert!(
            !ok && err.contains(want) && err.lines().count() == 1,
            "{args:?}: {err}"
        );
    };
    bad(
        &["--method", "gradcam", "--layer", "stages.7"],
        "stages.1.blocks.0.conv_dw",
    );
    bad(
        &["--method", "gradcam", "--layer", "stem", "--class", "7"],
        "class 7 is out of range",
    );
    bad(
        &["--method", "lime", "--layer", "stem"],
        "unknown method `lime` (gradcam, gradcam++, hirescam, layercam, xgradcam, scorecam, ig, occlusion or evidence)",
    );
    bad(
        &["--method", "evidence", "--layer", "stem"],
        "--layer stages.3",
    );
}

#[test]
fn erf_over_a_folder_skips_and_names_what_it_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs/sub");
    std::fs::create_dir_all(&imgs).unwrap();
    std::fs::copy(fixture("chelsea.png"), imgs.join("a.png")).unwrap();
    std::fs::copy(fixture("chelsea.png"), dir.path().join("imgs/b.png")).unwrap();
    std::fs::write(imgs.join("broken.png"), "not a png").unwrap();
    let out = dir.path().join("erf.safetensors");
    let out_s = out.to_str().unwrap();
    let folder = dir.path().join("imgs");
    let (ok, stdout, err) = cli(&[
        "erf",
        "--variant",
        "atto",
        "--layer",
        "stages.1",
        "--images",
        folder.to_str().unwrap(),
        "--size",
        "64",
        "--out",
        out_s,
        "--json",
    ]);
    assert!(ok, "{err}");
    assert!(
        err.contains("broken.png") && err.contains("1 image(s) could not be read"),
        "{err}"
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["images"], 2);
    assert_eq!(v["layer"], "stages.1");
    for t in ["0.2", "0.3", "0.5", "0.99"] {
        assert!(v["area_ratio"].get(t).is_some(), "{v}");
    }
    let got = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    assert_eq!(got["erf"].dims(), &[64, 64]);
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (ok, _, err) = cli(&[
        "erf",
        "--variant",
        "atto",
        "--layer",
        "stages.1",
        "--images",
        empty.to_str().unwrap(),
        "--out",
        out_s,
    ]);
    assert!(!ok && err.contains("holds no image"), "{err}");
}
