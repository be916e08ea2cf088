//! Issue 22's methods and metrics against PyTorch (float64, the definitions as the issue
//! states them: tests/fixtures/faithfulness_fixtures.py): HiResCAM, LayerCAM, XGradCAM and
//! ScoreCAM at three layers of three models, Integrated Gradients at the input (against the
//! exact trapezoid rule and against Captum's own) and its completeness, deletion and insertion
//! curves of given maps through the command line, SmoothGrad with PyTorch's noise and its
//! seeding, the randomisation sanity check, and its Spearman and SSIM against scipy's and
//! scikit-image's.
mod common;
use candle_core::{DType, Device, Tensor};
use common::{cli, fixture, load_ref, rel_l2};
use convnext_explorer::analysis::attribution::{self, layer_by_name, Method, Smoothing};
use convnext_explorer::analysis::sanity;
use convnext_explorer::base::progress::Silent;
use convnext_explorer::model::layer_id::LayerId;
use convnext_explorer::Engine;
use std::collections::HashMap;

const MODELS: [(&str, &str); 3] = [
    ("v1", "checkpoints/timm_v1.safetensors"),
    ("v1convmlp", "checkpoints/timm_v1convmlp.safetensors"),
    ("v2", "checkpoints/timm_v2.safetensors"),
];

fn refs() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("faithfulness.ref.safetensors"), &Device::Cpu)
        .expect("tests/fixtures/faithfulness.ref.safetensors (make_fixtures.py faithfulness)")
}

/// A reference by its key; a missing one fails and says how to make it.
fn key<'a>(r: &'a HashMap<String, Tensor>, k: &str) -> &'a Tensor {
    r.get(k).unwrap_or_else(|| {
        panic!("`{k}` is not in faithfulness.ref.safetensors: make_fixtures.py faithfulness")
    })
}

fn engine(ck: &str) -> Engine {
    Engine::load(&fixture(ck), &Device::Cpu, DType::F32).unwrap()
}

#[test]
fn hirescam_layercam_xgradcam_and_scorecam_match_pytorch() {
    let r = refs();
    for (name, ck) in MODELS {
        let e = engine(ck);
        let x = load_ref(name)["input"].clone();
        for layer in ["stem", "stages.2.blocks.0", "stages.3"] {
            let id = layer_by_name(&e, layer).unwrap();
            for m in ["hirescam", "layercam", "xgradcam", "scorecam"] {
                let method = Method::parse(m).unwrap();
                let a = attribution::attribute(&e, &x, method, id, None, &mut Silent).unwrap();
                let want = &r[&format!("{name}/{m}/{layer}/raw")];
                let got = a.raw.as_ref().unwrap();
                if m == "hirescam" && vanishes(want, &r[&format!("{name}/hirescam/{layer}/terms")])
                {
                    // Exactly 0 in exact arithmetic (see the fixture script): ~0 here too.
                    assert!(
                        vanishes(got, &r[&format!("{name}/hirescam/{layer}/terms")]),
                        "{name} {m} at {layer}"
                    );
                    continue;
                }
                let err = rel_l2(got, want);
                assert!(err < 1e-3, "{name} {m} at {layer}: relative L2 {err}");
                // After the ReLU (all zeros where every position's sum is negative).
                let want = &r[&format!("{name}/{m}/{layer}")];
                let d: f32 = (&a.map - want)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar()
                    .unwrap();
                let scale: f32 = want.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
                assert!(
                    d <= 1e-3 * scale.max(1e-6),
                    "{name} {m} at {layer}: max diff {d}"
                );
            }
        }
    }
}

/// Whether a map's norm is under 1e-4 of the norm of the terms it sums (`terms`, `[1]`).
fn vanishes(map: &Tensor, terms: &Tensor) -> bool {
    let n: f32 = map
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .sqrt()
        .unwrap()
        .to_scalar()
        .unwrap();
    let t: f32 = terms.to_vec1::<f32>().unwrap()[0];
    n < 1e-4 * t
}

#[test]
fn integrated_gradients_match_pytorch_and_are_complete() {
    let r = refs();
    for (name, ck) in MODELS {
        let e = engine(ck);
        let x = load_ref(name)["input"].clone();
        let ig = attribution::integrated_gradients(&e, &x, None, None, 16, &mut Silent).unwrap();
        let err = rel_l2(&ig.attribution.map, key(&r, &format!("{name}/ig")));
        assert!(err < 1e-3, "{name} IG: relative L2 {err}");
        // Captum's riemann_trapezoid takes the same points i/(n−1) with steps of 1/n, not
        // 1/(n−1): its attributions are (n−1)/n of the exact rule's.
        let ours = ig.attribution.map.affine(15.0 / 16.0, 0.0).unwrap();
        let err = rel_l2(&ours, key(&r, &format!("{name}/ig/captum")));
        eprintln!("{name} IG × 15/16 against Captum: relative L2 {err:.2e}");
        assert!(err < 1e-3, "{name} IG against Captum: relative L2 {err}");
        let ig = attribution::integrated_gradients(&e, &x, None, None, 64, &mut Silent).unwrap();
        completeness(&ig, name);
    }
    // The shipped model on real images.
    let e = Engine::load(
        &convnext_explorer::io::engine::default_weights().unwrap(),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    for f in ["bag_18.png", "sneaker_9.png", "coat_6.png"] {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("assets/samples")
            .join(f);
        let x = e.prepare_file(&p).unwrap().tensor;
        let ig = attribution::integrated_gradients(&e, &x, None, None, 64, &mut Silent).unwrap();
        completeness(&ig, f);
    }
}

/// At 64 steps the map sums to the logit difference within 1 % of it. A difference under 0.05
/// (a fixture model whose logit barely moves from the baseline) is f32 rounding's territory:
/// there the gap must be under 5e-4.
fn completeness(ig: &attribution::IgResult, what: &str) {
    for (g, d) in ig.gap.iter().zip(&ig.logit_difference) {
        let bound = if d.abs() >= 0.05 {
            0.01 * d.abs()
        } else {
            5e-4
        };
        assert!(
            *g < bound,
            "{what}: gap {g} against a logit difference of {d}"
        );
    }
}

#[test]
fn deletion_and_insertion_of_given_maps_match_pytorch_through_the_cli() {
    let r = refs();
    let dir = tempfile::tempdir().unwrap();
    for (name, ck) in MODELS {
        for key in ["hirescam", "random"] {
            let path = dir.path().join(format!("{name}_{key}.safetensors"));
            let map = r[&format!("{name}/curves/{key}/map")].clone();
            candle_core::safetensors::save(&HashMap::from([("map".to_string(), map)]), &path)
                .unwrap();
            let (ok, out, err) = cli(&[
                "--weights",
                fixture(ck).to_str().unwrap(),
                "faithfulness",
                "--tensor",
                fixture(&format!("{name}.ref.safetensors"))
                    .to_str()
                    .unwrap(),
                "--map",
                path.to_str().unwrap(),
                "--steps",
                "8",
                "--json",
            ]);
            assert!(ok, "{err}");
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            let images = v["images"].as_array().unwrap();
            assert_eq!(images.len(), 2);
            for curve in ["deletion", "insertion"] {
                let want: Vec<Vec<f32>> = r[&format!("{name}/curves/{key}/{curve}")]
                    .to_vec2()
                    .unwrap();
                for (img, w) in images.iter().zip(&want) {
                    let got: Vec<f64> = img[curve]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_f64().unwrap())
                        .collect();
                    assert_eq!(got.len(), 9);
                    for (g, w) in got.iter().zip(w) {
                        assert!(
                            (g - *w as f64).abs() < 1e-4,
                            "{name} {key} {curve}: {g} vs {w}"
                        );
                    }
                    let auc = img[format!("{curve}_auc")].as_f64().unwrap();
                    let want_auc = (w.iter().map(|&v| v as f64).sum::<f64>()
                        - (w[0] as f64 + w[8] as f64) / 2.0)
                        / 8.0;
                    assert!((auc - want_auc).abs() < 1e-4);
                }
            }
        }
    }
}

#[test]
fn smoothgrad_is_seeded() {
    let e = engine("checkpoints/timm_v1.safetensors");
    let x = load_ref("v1")["input"].narrow(0, 0, 1).unwrap();
    let id = layer_by_name(&e, "stages.2").unwrap();
    let run = |seed| {
        let s = Smoothing {
            samples: 3,
            sigma: None,
            seed,
        };
        attribution::smooth_grad(&e, &x, (Method::LayerCam, id), None, s, &mut Silent)
            .unwrap()
            .map
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

/// SmoothGrad on the top-left 32×64 crop with the noise PyTorch drew (three samples, σ = 0.15 ×
/// each image's range, stored as f16): Grad-CAM at stages.1 and Integrated Gradients (16
/// points) averaged over the noisy inputs, every sample explaining the clean crop's class (V2
/// with a "noise" that mirrors the crops shows it: these models' top-1 survives Gaussian noise).
#[test]
fn smoothgrad_with_pytorchs_noise_matches_pytorch() {
    let r = refs();
    for (name, ck) in MODELS {
        let e = engine(ck);
        let x = load_ref(name)["input"]
            .narrow(2, 0, 32)
            .unwrap()
            .narrow(3, 0, 64)
            .unwrap()
            .contiguous()
            .unwrap();
        let all = key(&r, &format!("{name}/smoothgrad/noise"))
            .to_dtype(DType::F32)
            .unwrap();
        assert_eq!(all.dims(), [3, 2, 3, 32, 64]);
        let noise: Vec<Tensor> = (0..3).map(|j| all.get(j).unwrap()).collect();
        let clean = attribution::attribute(
            &e,
            &x,
            Method::GradCam,
            layer_by_name(&e, "stages.1").unwrap(),
            None,
            &mut Silent,
        )
        .unwrap();
        for (m, layer) in [
            (Method::GradCam, layer_by_name(&e, "stages.1").unwrap()),
            (Method::IntegratedGradients { steps: 16 }, LayerId::Stem),
        ] {
            let a =
                attribution::smooth_grad_with_noise(&e, &x, (m, layer), None, &noise, &mut Silent)
                    .unwrap();
            assert_eq!(
                a.classes, clean.classes,
                "{name}: the clean image's classes"
            );
            let err = rel_l2(&a.map, key(&r, &format!("{name}/smoothgrad/{}", m.name())));
            eprintln!("{name} SmoothGrad {}: relative L2 {err:.2e}", m.name());
            assert!(
                err < 1e-3,
                "{name} SmoothGrad {}: relative L2 {err}",
                m.name()
            );
        }
    }
    // Every sample explains the clean image's class: with one "noise" that mirrors the crops,
    // V2's top-1 for the first image is another class, and the map is still the clean class's.
    let e = engine("checkpoints/timm_v2.safetensors");
    let x = load_ref("v2")["input"]
        .narrow(2, 0, 32)
        .unwrap()
        .narrow(3, 0, 64)
        .unwrap()
        .contiguous()
        .unwrap();
    let mirror = key(&r, "v2/smoothgrad/mirror/noise")
        .to_dtype(DType::F32)
        .unwrap()
        .get(0)
        .unwrap();
    let id = layer_by_name(&e, "stages.1").unwrap();
    let clean = attribution::attribute(&e, &x, Method::GradCam, id, None, &mut Silent).unwrap();
    let noisy = (&x + &mirror).unwrap();
    let moved = attribution::attribute(&e, &noisy, Method::GradCam, id, None, &mut Silent).unwrap();
    assert_ne!(
        moved.classes[0], clean.classes[0],
        "the mirrored image's top-1"
    );
    let a = attribution::smooth_grad_with_noise(
        &e,
        &x,
        (Method::GradCam, id),
        None,
        &[mirror],
        &mut Silent,
    )
    .unwrap();
    let err = rel_l2(&a.map, key(&r, "v2/smoothgrad/mirror/gradcam"));
    eprintln!("v2 SmoothGrad gradcam, mirrored: relative L2 {err:.2e}");
    assert!(err < 1e-3, "v2 SmoothGrad, mirrored: relative L2 {err}");
    // Noise that does not fit the input, or none, is refused.
    let e = engine("checkpoints/timm_v1.safetensors");
    let x = load_ref("v1")["input"].clone();
    let ml = (Method::GradCam, layer_by_name(&e, "stages.1").unwrap());
    let wrong = [x.narrow(0, 0, 1).unwrap()];
    assert!(attribution::smooth_grad_with_noise(&e, &x, ml, None, &wrong, &mut Silent).is_err());
    assert!(attribution::smooth_grad_with_noise(&e, &x, ml, None, &[], &mut Silent).is_err());
}

/// The sanity check's Spearman and SSIM against scipy.stats.spearmanr and scikit-image's
/// structural_similarity (7×7 uniform window, data_range 1, sample covariance) on pairs of
/// maps: normalised CAM maps of the fixture models, maps with many ties, 7×11 and 40×12 ones.
/// Both sides work in f64 on the same f32 maps: only summation order differs.
#[test]
fn spearman_and_ssim_match_scipy_and_scikit_image() {
    let r = refs();
    for pair in ["methods", "models", "ties", "small", "tall"] {
        let map = |side: &str| {
            let t = key(&r, &format!("sanity/{pair}/{side}"));
            let (h, w) = t.dims2().unwrap();
            (t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), (h, w))
        };
        let ((a, size), (b, size_b)) = (map("a"), map("b"));
        assert_eq!(size, size_b);
        let want = |m: &str| {
            key(&r, &format!("sanity/{pair}/{m}"))
                .to_vec1::<f64>()
                .unwrap()[0]
        };
        let (rho, ssim) = (sanity::spearman(&a, &b), sanity::ssim(&a, &b, size));
        eprintln!(
            "{pair} {size:?}: spearman {rho:+.6} (error {:.1e}), ssim {ssim:+.6} (error {:.1e})",
            (rho - want("spearman")).abs(),
            (ssim - want("ssim")).abs()
        );
        assert!(
            (rho - want("spearman")).abs() < 1e-9,
            "{pair}: Spearman {rho} against scipy's {}",
            want("spearman")
        );
        assert!(
            (ssim - want("ssim")).abs() < 1e-9,
            "{pair}: SSIM {ssim} against scikit-image's {}",
            want("ssim")
        );
    }
}

#[test]
fn destroying_the_weights_changes_a_gradient_map() {
    let e = engine("checkpoints/timm_v1.safetensors");
    let x = load_ref("v1")["input"].clone();
    let id = layer_by_name(&e, "stages.2").unwrap();
    let steps = sanity::cascade(&e, &x, (Method::GradCam, id), None, 3, &mut Silent).unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s.randomised.as_str()).collect();
    assert_eq!(
        names,
        ["none", "head", "stages.3", "stages.2", "stages.1", "stages.0", "stem"]
    );
    assert_eq!((steps[0].spearman, steps[0].ssim), (1.0, 1.0));
    // Once the layer's own stage is re-initialised the map is another one.
    let late = &steps[3];
    assert!(late.spearman < 0.9, "{late:?}");
    // The command line prints the same steps.
    let (ok, out, err) = cli(&[
        "--weights",
        fixture("checkpoints/timm_v1.safetensors").to_str().unwrap(),
        "sanity",
        "--tensor",
        fixture("v1.ref.safetensors").to_str().unwrap(),
        "--method",
        "gradcam",
        "--layer",
        "stages.2",
        "--seed",
        "3",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let s = v["steps"].as_array().unwrap();
    assert_eq!(s.len(), 7);
    assert!((s[3]["spearman"].as_f64().unwrap() - late.spearman).abs() < 1e-9);
}
