//! Model numerics against PyTorch (timm / transformers) reference outputs, in every checkpoint
//! format, for V1, V1 with 1×1-conv MLP, and V2: logits and every stage, batch 2, 64×96 input.
mod common;
use candle_core::{DType, Device};
use common::{fixture, load_ref, rel_err};
use convnext_explorer::analysis::trace::{to_nchw, CaptureLevel, CaptureObserver};
use convnext_explorer::io::checkpoint::Format;
use convnext_explorer::model::layer_id::LayerId;
use convnext_explorer::model::Version;
use convnext_explorer::Engine;

const TOL: f32 = 1e-4;

fn check(checkpoint: &str, reference: &str, format: Format, version: Version) {
    let engine = Engine::load(&fixture(checkpoint), &Device::Cpu, DType::F32)
        .unwrap_or_else(|e| panic!("{checkpoint}: {e}"));
    match &engine.source {
        convnext_explorer::io::engine::Source::Weights { format: f, .. } => assert_eq!(*f, format),
        s => panic!("unexpected source {s}"),
    }
    assert_eq!(engine.config().unwrap().version, version);
    let r = load_ref(reference);
    let mut cap = CaptureObserver::new(CaptureLevel::Stages);
    let logits = engine.forward_observed(&r["input"], &mut cap).unwrap();
    let e = rel_err(&logits, &r["logits"]);
    assert!(e < TOL, "{checkpoint}: logits rel err {e}");
    let stem = to_nchw(cap.get(LayerId::Stem).unwrap()).unwrap();
    assert!(rel_err(&stem, &r["stem"]) < TOL, "{checkpoint}: stem");
    for s in 0..4 {
        let got = to_nchw(cap.get(LayerId::Stage(s)).unwrap()).unwrap();
        let e = rel_err(&got, &r[&format!("stages.{s}")]);
        assert!(e < TOL, "{checkpoint}: stage {s} rel err {e}");
    }
    // The plain forward gives the same logits as the observed one.
    let plain = engine.forward(&r["input"]).unwrap();
    assert_eq!(rel_err(&plain, &logits), 0.0);
}

#[test]
fn timm_v1_safetensors() {
    check(
        "checkpoints/timm_v1.safetensors",
        "v1",
        Format::Timm,
        Version::V1,
    );
}

#[test]
fn timm_v1_pth() {
    check("checkpoints/timm_v1.pth", "v1", Format::Timm, Version::V1);
}

#[test]
fn timm_v1_conv_mlp() {
    check(
        "checkpoints/timm_v1convmlp.safetensors",
        "v1convmlp",
        Format::Timm,
        Version::V1,
    );
}

#[test]
fn facebook_v1_pth() {
    check("checkpoints/fb_v1.pth", "v1", Format::Facebook, Version::V1);
}

#[test]
fn timm_v2_safetensors() {
    check(
        "checkpoints/timm_v2.safetensors",
        "v2",
        Format::Timm,
        Version::V2,
    );
}

#[test]
fn timm_v2_pth() {
    check("checkpoints/timm_v2.pth", "v2", Format::Timm, Version::V2);
}

#[test]
fn facebook_v2_pth() {
    check("checkpoints/fb_v2.pth", "v2", Format::Facebook, Version::V2);
}

#[test]
fn huggingface_v1_folder() {
    check(
        "checkpoints/hf_v1",
        "hf_v1",
        Format::HuggingFace,
        Version::V1,
    );
}

#[test]
fn huggingface_v1_pytorch_model_bin() {
    check(
        "checkpoints/hf_v1_bin",
        "hf_v1",
        Format::HuggingFace,
        Version::V1,
    );
}

#[test]
fn huggingface_v2_folder() {
    check(
        "checkpoints/hf_v2",
        "hf_v2",
        Format::HuggingFace,
        Version::V2,
    );
}

#[test]
fn huggingface_v2_pytorch_model_bin() {
    check(
        "checkpoints/hf_v2_bin",
        "hf_v2",
        Format::HuggingFace,
        Version::V2,
    );
}

#[test]
fn inferred_architecture_and_labels() {
    let e = Engine::load(
        &fixture("checkpoints/timm_v1.safetensors"),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    assert_eq!(e.config().unwrap().depths, vec![2, 1, 2, 1]);
    assert_eq!(e.config().unwrap().dims, vec![16, 24, 32, 40]);
    assert_eq!(e.config().unwrap().num_classes, 7);
    assert!(e.config().unwrap().layer_scale);
    assert_eq!(e.labels[3], "class 3");

    let hf = Engine::load(&fixture("checkpoints/hf_v1"), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(hf.labels[4], "thing 4", "labels come from id2label");
    assert_eq!(
        hf.config().unwrap().head_ln_eps,
        1e-12,
        "HF's final LayerNorm eps comes from config.json"
    );
    assert_eq!(hf.config().unwrap().depths, vec![1, 2, 1, 1]);

    let v2 = Engine::load(&fixture("checkpoints/fb_v2.pth"), &Device::Cpu, DType::F32).unwrap();
    assert!(!v2.config().unwrap().layer_scale);
    let grn = v2.model.grn_params().unwrap();
    assert_eq!(grn.len(), 5);
    assert_eq!(grn[0].2.len(), 64);
    assert!(v2.model.gammas().unwrap().is_empty());
    assert_eq!(e.model.gammas().unwrap().len(), 6);
}

#[test]
fn half_precision_stays_close_to_f32() {
    let r = load_ref("v1");
    for dt in [DType::BF16, DType::F16] {
        let e = Engine::load(
            &fixture("checkpoints/timm_v1.safetensors"),
            &Device::Cpu,
            dt,
        )
        .unwrap();
        let logits = e.forward(&r["input"]).unwrap();
        let err = rel_err(&logits, &r["logits"]);
        assert!(err < 3e-2, "{dt:?}: rel err {err}");
    }
}

/// bf16 on the CPU (bf16 matmuls, the rest f32): the plain forward, with fc1 handing fc2 its
/// output in bf16, gives the same bits as the observed one that runs layer by layer in f32
/// between the matmuls (each matmul rounds its input to bf16 the same way).
#[test]
fn bf16_plain_forward_equals_the_observed_one() {
    let r = load_ref("v1");
    let e = Engine::load(
        &fixture("checkpoints/timm_v1.safetensors"),
        &Device::Cpu,
        DType::BF16,
    )
    .unwrap();
    let mut cap = CaptureObserver::new(CaptureLevel::All);
    let observed = e.forward_observed(&r["input"], &mut cap).unwrap();
    let plain = e.forward(&r["input"]).unwrap();
    assert_eq!(rel_err(&plain, &observed), 0.0);
    let err = rel_err(&plain, &r["logits"]);
    assert!(
        err > 0.0 && err < 3e-2,
        "rel err {err} against PyTorch's f32"
    );
    eprintln!("bf16 logits: rel err {err:.2e} against PyTorch's f32");
}

/// At 224×224 a block's MLP runs in blocks of rows (fc1's output kept in the cache for fc2;
/// with GRN between them for V2): the plain forward still gives the bits of the observed one,
/// which runs every layer on its own. The fixtures' maps are too small for those blocks.
#[test]
fn fused_mlp_blocks_equal_the_layers_one_by_one() {
    let dev = Device::Cpu;
    let x = candle_core::Tensor::randn(0f32, 1.0, (1, 3, 224, 224), &dev).unwrap();
    for (variant, dtype) in [
        ("convnext_atto", DType::F32),
        ("convnextv2_atto", DType::F32),
        ("convnext_atto", DType::BF16),
    ] {
        let e = Engine::random(variant, 10, 5, &dev, dtype).unwrap();
        let mut cap = CaptureObserver::new(CaptureLevel::All);
        let observed = e.forward_observed(&x, &mut cap).unwrap();
        let plain = e.forward(&x).unwrap();
        assert_eq!(rel_err(&plain, &observed), 0.0, "{variant} {dtype:?}");
    }
}
