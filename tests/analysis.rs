//! Analyses the app shows, checked against what they claim.
mod common;
use candle_core::{DType, Device, Tensor};
use common::rel_err;
use convnext_explorer::analysis::trace::{CaptureLevel, CaptureObserver};
use convnext_explorer::io::engine::default_weights;
use convnext_explorer::model::layer_id::LayerId;
use convnext_explorer::Engine;

/// The evidence map's spatial mean is the class's logit, for every class, on trained and random
/// weights, at an input size where the last stage has several positions.
#[test]
fn class_evidence_averages_to_the_logit() {
    let dev = Device::Cpu;
    let shipped =
        Engine::load(&default_weights().expect("shipped model"), &dev, DType::F32).unwrap();
    let random = Engine::random("convnextv2_atto", 7, 3, &dev, DType::F32).unwrap();
    for (engine, size) in [(&shipped, 96), (&random, 64)] {
        let x = Tensor::randn(0f32, 1.0, (2, 3, size, size), &dev).unwrap();
        let mut cap = CaptureObserver::new(CaptureLevel::Stages);
        let logits = engine.forward_observed(&x, &mut cap).unwrap();
        let last = cap.get(LayerId::Stage(3)).unwrap();
        assert!(last.dim(1).unwrap() > 1, "want several positions");
        for class in 0..engine.config().unwrap().num_classes {
            let map = engine.model.class_evidence(last, class).unwrap();
            let mean = map.mean((1, 2)).unwrap();
            let logit = logits.narrow(1, class, 1).unwrap().squeeze(1).unwrap();
            let e = rel_err(&mean, &logit);
            assert!(e < 1e-4, "class {class}: relative error {e}");
        }
        let n = engine.config().unwrap().num_classes;
        let e = engine
            .model
            .class_evidence(last, n)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(&format!("class {n} out of range")), "{e}");
    }
}
