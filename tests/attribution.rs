//! Grad-CAM, Grad-CAM++ and effective receptive fields against PyTorch (float64, the same
//! definitions: tests/fixtures/attribution_fixtures.py), the gradient path against finite
//! differences, and occlusion against running the occluded inputs.
mod common;
use candle_core::{DType, Device, Tensor, Var};
use common::{fixture, load_ref, rel_l2};
use convnext_explorer::analysis::attribution::{self, area_ratios, layer_by_name, Method};
use convnext_explorer::base::progress::Silent;
use convnext_explorer::Engine;

const MODELS: [(&str, &str); 3] = [
    ("v1", "checkpoints/timm_v1.safetensors"),
    ("v1convmlp", "checkpoints/timm_v1convmlp.safetensors"),
    ("v2", "checkpoints/timm_v2.safetensors"),
];

#[test]
fn grad_cam_and_grad_cam_pp_match_pytorch() {
    let refs = candle_core::safetensors::load(fixture("attribution.ref.safetensors"), &Device::Cpu)
        .unwrap();
    for (name, ck) in MODELS {
        let e = Engine::load(&fixture(ck), &Device::Cpu, DType::F32).unwrap();
        let x = load_ref(name)["input"].clone();
        let want_classes: Vec<f32> = refs[&format!("{name}/classes")].to_vec1().unwrap();
        for layer in [
            "stem",
            "stages.1.blocks.0.conv_dw",
            "stages.2.blocks.0",
            "stages.3",
        ] {
            let id = layer_by_name(&e, layer).unwrap();
            for (method, pp) in [("gradcam", false), ("gradcam++", true)] {
                let a = attribution::grad_cam(&e, &x, id, None, pp).unwrap();
                let got: Vec<f32> = a.classes.iter().map(|&k| k as f32).collect();
                assert_eq!(got, want_classes, "{name}: top-1 classes");
                let want = &refs[&format!("{name}/{method}/{layer}/raw")];
                let err = rel_l2(a.raw.as_ref().unwrap(), want);
                assert!(
                    err < 1e-3,
                    "{name} {method} at {layer}: relative L2 error {err}"
                );
                // After the ReLU (all zeros where every position's sum is negative).
                let want = &refs[&format!("{name}/{method}/{layer}")];
                let d = (&a.map - want).unwrap().abs().unwrap().max_all().unwrap();
                let d: f32 = d.to_scalar().unwrap();
                let scale: f32 = want.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
                assert!(
                    d <= 1e-3 * scale.max(1e-6),
                    "{name} {method} at {layer}: max diff {d}"
                );
            }
        }
    }
}

#[test]
fn effective_receptive_fields_match_pytorch() {
    let refs = candle_core::safetensors::load(fixture("attribution.ref.safetensors"), &Device::Cpu)
        .unwrap();
    for (name, ck) in MODELS {
        let e = Engine::load(&fixture(ck), &Device::Cpu, DType::F32).unwrap();
        let x = load_ref(name)["input"].clone();
        for layer in ["stages.1", "stages.2"] {
            let id = layer_by_name(&e, layer).unwrap();
            let maps = attribution::erf_maps(&e, &x, id).unwrap();
            let mean = maps.mean(0).unwrap();
            let err = rel_l2(&mean, &refs[&format!("{name}/erf/{layer}")]);
            assert!(err < 1e-3, "{name} ERF at {layer}: relative L2 error {err}");
        }
    }
}

/// The gradient path on a tiny ConvNeXt against central finite differences of the logit,
/// along random directions.
#[test]
fn gradients_agree_with_finite_differences() {
    let e = Engine::random("convnextv2_atto", 5, 11, &Device::Cpu, DType::F32).unwrap();
    // A seeded input: the same point every run.
    let x = {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let v = convnext_explorer::model::plan::normal(&mut rng, 3 * 32 * 64, 1.0);
        Tensor::from_vec(v, (1, 3, 32, 64), &Device::Cpu).unwrap()
    };
    let class = 3usize;
    let score = |x: &Tensor| -> f64 {
        let l: Vec<Vec<f32>> = e.forward(x).unwrap().to_vec2().unwrap();
        l[0][class] as f64
    };
    let v = Var::from_tensor(&x).unwrap();
    let logits = e.forward(v.as_tensor()).unwrap();
    let grads = logits
        .narrow(1, class, 1)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g = grads.get(v.as_tensor()).unwrap().clone();
    for seed in 0..3 {
        // Seeded directions: the same three every run (unseeded ones made the f32 difference
        // quotient miss its bound now and then).
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n = x.elem_count();
        let dir = convnext_explorer::model::plan::normal(&mut rng, n, 1.0);
        let dir = Tensor::from_vec(dir, x.shape(), &Device::Cpu).unwrap();
        let eps = 1e-2;
        let plus = score(&(&x + (&dir * eps).unwrap()).unwrap());
        let minus = score(&(&x - (&dir * eps).unwrap()).unwrap());
        let fd = (plus - minus) / (2.0 * eps);
        let analytic: f32 = (&g * &dir).unwrap().sum_all().unwrap().to_scalar().unwrap();
        let rel = (fd - analytic as f64).abs() / fd.abs().max(1e-3);
        assert!(
            rel < 2e-2,
            "direction {seed}: finite difference {fd}, gradient {analytic}"
        );
    }
}

#[test]
fn occlusion_is_the_drop_of_running_the_occluded_input() {
    let e = Engine::load(
        &fixture("checkpoints/timm_v1.safetensors"),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let x = load_ref("v1")["input"].clone();
    let method = Method::Occlusion {
        window: 32,
        stride: 16,
    };
    let id = layer_by_name(&e, "stem").unwrap();
    let a = attribution::attribute(&e, &x, method, id, Some(2), &mut Silent).unwrap();
    assert_eq!(a.map.dims(), &[2, 3, 5]);
    // Window (1, 2) by hand: rows 16..48, columns 32..64 set to zero.
    let mut v: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    for img in 0..2 {
        for c in 0..3 {
            for y in 16..48 {
                let row = ((img * 3 + c) * 64 + y) * 96;
                v[row + 32..row + 64].fill(0.0);
            }
        }
    }
    let occluded = Tensor::from_vec(v, (2, 3, 64, 96), &Device::Cpu).unwrap();
    let base: Vec<Vec<f32>> = e.forward(&x).unwrap().to_vec2().unwrap();
    let after: Vec<Vec<f32>> = e.forward(&occluded).unwrap().to_vec2().unwrap();
    let map: Vec<Vec<Vec<f32>>> = a.map.to_vec3().unwrap();
    for img in 0..2 {
        let want = base[img][2] - after[img][2];
        assert!(
            (map[img][1][2] - want).abs() < 1e-5,
            "{} vs {want}",
            map[img][1][2]
        );
    }
}

#[test]
fn grad_cam_at_the_last_stage_is_consistent_with_the_evidence_map_shape_and_roadmap_steps_work() {
    let e = Engine::random("roadmap:move_up_dwconv", 10, 0, &Device::Cpu, DType::F32).unwrap();
    let x = Tensor::randn(0f32, 1.0, (2, 3, 64, 64), &Device::Cpu).unwrap();
    for layer in ["stages.1.blocks.0.conv1", "stages.3"] {
        let id = layer_by_name(&e, layer).unwrap();
        let a = attribution::grad_cam(&e, &x, id, Some(4), false).unwrap();
        assert_eq!(a.classes, vec![4, 4]);
        let (n, h, _) = a.map.dims3().unwrap();
        assert_eq!(n, 2);
        assert!(h >= 1);
        let maps = attribution::erf_maps(&e, &x, id).unwrap();
        assert_eq!(maps.dims(), &[2, 64, 64]);
    }
    let err = layer_by_name(&e, "stages.9").err().unwrap().to_string();
    assert!(
        err.contains("no layer `stages.9`") && err.contains("stages.2.blocks.3.conv1"),
        "{err}"
    );
    let err = attribution::grad_cam(&e, &x, layer_by_name(&e, "stem").unwrap(), Some(10), false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("class 10 is out of range") && err.contains("0 to 9"),
        "{err}"
    );
    // A map's mean through the pooled head is what the evidence method is exact about.
    let ev = attribution::evidence(&e, &x, Some(1)).unwrap();
    let logits: Vec<Vec<f32>> = ev.logits.to_vec2().unwrap();
    let means: Vec<f32> = ev.map.mean((1, 2)).unwrap().to_vec1().unwrap();
    for n in 0..2 {
        assert!((means[n] - logits[n][1]).abs() < 1e-4 * logits[n][1].abs().max(1.0));
    }
}

#[test]
fn erf_area_ratios_follow_replknet() {
    // A single bright centre pixel on 9×9: the 3×3 square already holds everything.
    let mut m = vec![0f32; 81];
    m[4 * 9 + 4] = 100.0;
    let r = area_ratios(&m, (9, 9), &[0.2, 0.99]);
    assert_eq!(r, vec![Some(9.0 / 81.0), Some(9.0 / 81.0)]);
    // Uniform: the share grows with the square's area; 0.5 needs side 7 (49/81 > 0.5).
    let r = area_ratios(&[1f32; 81], (9, 9), &[0.5, 0.99]);
    assert_eq!(r, vec![Some(49.0 / 81.0), None]);
}

/// HiResCAM at a stage's output, before the next downsample's per-position LayerNorm, is zero
/// in exact arithmetic (the score does not change with the scale of a position's vector): the
/// map is all zeros, not normalised rounding noise; inside a stage it is not.
#[test]
fn hirescam_before_a_layer_norm_is_zero_not_noise() {
    for (name, ck) in MODELS {
        let e = Engine::load(&fixture(ck), &Device::Cpu, DType::F32).unwrap();
        let x = load_ref(name)["input"].clone();
        let max = |layer: &str| -> f32 {
            let id = layer_by_name(&e, layer).unwrap();
            let a = attribution::gradient_cam(&e, &x, id, None, Method::HiResCam).unwrap();
            let raw = a.raw.unwrap();
            raw.abs().unwrap().max_all().unwrap().to_scalar().unwrap()
        };
        assert_eq!(max("stages.1"), 0.0, "{name}: HiResCAM at stages.1");
        assert!(
            max("stages.2.blocks.0.mlp.act") > 0.0,
            "{name}: inside a block"
        );
    }
}
