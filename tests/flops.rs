//! MACs and parameters against fvcore / timm for every named variant, and the layer list
//! against what a real forward pass reports.
mod common;
use candle_core::{DType, Device, Tensor};
use convnext_explorer::analysis::trace::{to_nchw, CaptureLevel, CaptureObserver};
use convnext_explorer::model::flops::{layers, totals};
use convnext_explorer::model::layer_id::LayerId;
use convnext_explorer::model::observer::Observer;
use convnext_explorer::model::{Config, Plan};
use convnext_explorer::Engine;

fn fvcore() -> serde_json::Value {
    let s = std::fs::read_to_string(common::fixture("fvcore.json")).unwrap();
    serde_json::from_str(&s).unwrap()
}

#[test]
fn every_named_variant_matches_fvcore_and_timm() {
    let f = fvcore();
    let counts = f["counts"].as_object().unwrap();
    let mut checked = 0;
    for name in convnext_explorer::model::config::variant_names() {
        let c = &counts[name];
        let cfg = Config::variant(name, 1000).unwrap();
        let t = totals(&layers(&Plan::convnext(&cfg), 1, 224, 224));
        assert_eq!(t.total_macs, c["macs"].as_u64().unwrap(), "{name} MACs");
        assert_eq!(
            t.total_params as u64,
            c["params"].as_u64().unwrap(),
            "{name} params"
        );
        let by_op = c["by_operator"].as_object().unwrap();
        let conv_linear = by_op["conv"].as_u64().unwrap() + by_op["linear"].as_u64().unwrap();
        assert_eq!(t.conv_linear_macs, conv_linear, "{name} conv+linear MACs");
        checked += 1;
    }
    assert_eq!(checked, 19);
    // The headline figure of the paper.
    let t = totals(&layers(&Plan::named("tiny", 1000).unwrap(), 1, 224, 224));
    assert_eq!(format!("{:.2}", t.total_macs as f64 / 1e9), "4.47");
    assert_eq!(format!("{:.2}", t.total_params as f64 / 1e6), "28.59");
}

#[test]
fn batch_size_and_head_size_scale_correctly() {
    let f = fvcore();
    let c = &f["counts"]["convnext_tiny@2x256x320/21841"];
    let cfg = Config::variant("convnext_tiny", 21841).unwrap();
    let t = totals(&layers(&Plan::convnext(&cfg), 2, 256, 320));
    assert_eq!(t.total_macs, c["macs"].as_u64().unwrap());
    assert_eq!(t.total_params as u64, c["params"].as_u64().unwrap());
}

#[test]
fn variant_names_short_and_long() {
    assert_eq!(
        Config::variant("tiny", 1000).unwrap(),
        Config::variant("convnext_tiny", 1000).unwrap()
    );
    assert_eq!(
        Config::variant("T", 1000).unwrap().dims,
        vec![96, 192, 384, 768]
    );
    assert_eq!(Config::variant("XL", 1000).unwrap().dims[0], 256);
    assert_eq!(
        Config::variant("v2-nano", 10).unwrap().version,
        convnext_explorer::model::Version::V2
    );
    assert_eq!(
        Config::variant("convnext_xxlarge", 1000).unwrap().ln_eps,
        1e-5
    );
    assert_eq!(
        Config::variant("convnextv2_huge", 1000).unwrap().dims[0],
        352
    );
}

/// Records ids, output shapes (NCHW) and enter/leave balance.
struct Recorder {
    ids: Vec<(LayerId, Vec<usize>)>,
    open: Vec<LayerId>,
}

impl Observer for Recorder {
    fn enter(&mut self, id: LayerId) -> candle_core::Result<()> {
        self.open.push(id);
        Ok(())
    }
    fn layer(&mut self, id: LayerId, out: &Tensor) -> candle_core::Result<()> {
        assert_eq!(self.open.pop(), Some(id), "enter/layer calls must nest");
        self.ids.push((id, to_nchw(out)?.dims().to_vec()));
        Ok(())
    }
}

#[test]
fn layer_list_matches_the_forward_pass() {
    for variant in ["convnext_atto", "convnextv2_atto"] {
        let e = Engine::random(variant, 10, 3, &Device::Cpu, DType::F32).unwrap();
        let x = Tensor::zeros((2, 3, 64, 96), DType::F32, &Device::Cpu).unwrap();
        let mut rec = Recorder {
            ids: vec![],
            open: vec![],
        };
        e.forward_observed(&x, &mut rec).unwrap();
        assert!(rec.open.is_empty());
        let list = layers(&e.plan, 2, 64, 96);
        let mut from_trace: Vec<_> = rec.ids.clone();
        from_trace.sort_by_key(|(id, _)| *id);
        let mut from_list: Vec<_> = list.iter().map(|l| (l.id, l.out_shape.clone())).collect();
        from_list.sort_by_key(|(id, _)| *id);
        assert_eq!(from_trace, from_list, "{variant}");
        // Names follow timm.
        assert!(list.iter().any(|l| l.name == "stages.2.blocks.5.conv_dw"));
        assert!(list.iter().any(|l| l.name == "stages.3.downsample.1"));
    }
}

#[test]
fn capture_levels_keep_what_they_say() {
    let e = Engine::random("atto", 10, 1, &Device::Cpu, DType::F32).unwrap();
    let x = Tensor::ones((1, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
    let mut n = vec![];
    for level in [
        CaptureLevel::Stages,
        CaptureLevel::Blocks,
        CaptureLevel::All,
    ] {
        let mut c = CaptureObserver::new(level);
        e.forward_observed(&x, &mut c).unwrap();
        n.push(c.outputs.len());
    }
    assert_eq!(n[0], 1 + 4 + 1);
    assert_eq!(n[1], 1 + 4 + 12 + 1);
    assert_eq!(n[2], layers(&e.plan, 1, 32, 32).len());
}
