//! Training works: the loss falls, every parameter (gamma included) gets a gradient, and the
//! saved checkpoint loads back through the normal loader.
mod common;
use candle_core::{DType, Device, Tensor};
use convnext_explorer::model::layers::BuildOptions;
use convnext_explorer::model::{Config, Network, Plan};
use convnext_explorer::train::*;
use convnext_explorer::Engine;

/// The shipped architecture, shrunk: one block a stage, narrower.
fn tiny() -> Config {
    Config {
        depths: vec![1, 1, 1, 1],
        dims: vec![8, 16, 24, 32],
        ..fashion_config()
    }
}

fn subset() -> (Prepared, Vec<u8>) {
    let ds = fashion_mnist(&common::fixture("fashion"), "t10k").unwrap();
    assert_eq!(ds.len(), 1000);
    (
        prepare_dataset(&ds, &preprocess_config(32)).unwrap(),
        ds.labels,
    )
}

#[test]
fn loss_goes_down_and_checkpoint_loads_back() {
    let (x, y) = subset();
    let mut cfg = TrainConfig::fashion_default();
    cfg.config = tiny();
    cfg.input = 32;
    (
        cfg.epochs,
        cfg.batch,
        cfg.max_steps,
        cfg.lr,
        cfg.warmup_epochs,
    ) = (8, 64, Some(60), 4e-3, 0.2);
    let trained = train(&cfg, &x, &y, |_, _, _, _| {}).unwrap();
    let l = &trained.losses;
    assert_eq!(l.len(), 60);
    let first: f32 = l[..8].iter().sum::<f32>() / 8.0;
    let last: f32 = l[l.len() - 8..].iter().sum::<f32>() / 8.0;
    assert!(last < 0.8 * first, "loss {first} -> {last}");

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny.safetensors");
    let pre = preprocess_config(32);
    save(&trained.ema, &cfg.config, &pre, &out, serde_json::json!({})).unwrap();
    let e = Engine::load(&out, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(e.config(), Some(&cfg.config));
    assert_eq!(e.labels[7], "Sneaker");
    assert_eq!(e.preprocess, pre);
    // What was saved is what gets loaded: the same logits as the in-memory EMA model.
    let m = model_from(&trained.ema, &cfg.config).unwrap();
    let xb = Tensor::randn(0f32, 1., (2, 3, 32, 32), &Device::Cpu).unwrap();
    let d = (m.forward(&xb).unwrap() - e.forward(&xb).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
}

#[test]
fn gradients_reach_every_parameter() {
    let cfg = tiny();
    let varmap = candle_nn::VarMap::new();
    {
        let mut vars = varmap.data().lock().unwrap();
        for (k, t) in Plan::convnext(&cfg).random_weights(5).unwrap() {
            // Perturbed so that no parameter is zero (a zero GRN or bias would block nothing,
            // but zero weights downstream would hide upstream gradients).
            let t =
                (t.clone() + Tensor::randn(0f32, 0.1, t.shape(), &Device::Cpu).unwrap()).unwrap();
            vars.insert(k, candle_core::Var::from_tensor(&t).unwrap());
        }
    }
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = Network::new_with(
        vb,
        &Plan::convnext(&cfg),
        BuildOptions {
            differentiable: true,
            ..Default::default()
        },
    )
    .unwrap();
    let x = Tensor::randn(0f32, 1., (3, 3, 32, 32), &Device::Cpu).unwrap();
    let loss = model.forward(&x).unwrap().sqr().unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let vars = varmap.data().lock().unwrap();
    assert_eq!(vars.len(), Plan::convnext(&cfg).tensors().len());
    for (name, v) in vars.iter() {
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let s: f32 = g.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!(s > 0.0 && s.is_finite(), "zero gradient for {name}");
    }
    assert!(vars.keys().any(|k| k.ends_with(".gamma")));
}

#[test]
fn idx_reader_rejects_foreign_files() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    std::fs::write(&a, b"\0\0\x08\x01junk").unwrap();
    let e = read_idx(&a, &a).err().unwrap().to_string();
    assert!(
        e.contains(a.to_str().unwrap()) && e.contains("not an IDX"),
        "{e}"
    );
}

/// The fused training path (GELU, bias + layer scale, LayerNorm kernel) against candle's generic
/// ops: the same loss and the same gradient for every parameter.
#[test]
fn fused_training_ops_give_candles_gradients() {
    let cfg = tiny();
    let weights: Vec<(String, Tensor)> = Plan::convnext(&cfg)
        .random_weights(7)
        .unwrap()
        .into_iter()
        .map(|(k, t)| {
            let noise = Tensor::randn(0f32, 0.1, t.shape(), &Device::Cpu).unwrap();
            (k, (t + noise).unwrap())
        })
        .collect();
    let x = Tensor::randn(0f32, 1., (4, 3, 32, 32), &Device::Cpu).unwrap();
    let run = |generic_ops: bool| {
        let varmap = candle_nn::VarMap::new();
        {
            let mut vars = varmap.data().lock().unwrap();
            for (k, t) in &weights {
                vars.insert(k.clone(), candle_core::Var::from_tensor(t).unwrap());
            }
        }
        let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let opts = BuildOptions {
            differentiable: true,
            generic_ops,
            ..Default::default()
        };
        let model = Network::new_with(vb, &Plan::convnext(&cfg), opts).unwrap();
        let masks: Vec<Vec<Tensor>> = cfg
            .depths
            .iter()
            .map(|&d| {
                let m = Tensor::new(&[1.25f32, 0.0, 1.25, 1.25], &Device::Cpu).unwrap();
                vec![m.reshape((4, 1, 1, 1)).unwrap(); d]
            })
            .collect();
        let loss = model
            .forward_train(&x, &masks)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let vars = varmap.data().lock().unwrap();
        let mut out: Vec<(String, Tensor)> = vars
            .iter()
            .map(|(k, v)| (k.clone(), grads.get(v.as_tensor()).unwrap().clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        (loss.to_scalar::<f32>().unwrap(), out)
    };
    let (l_fused, g_fused) = run(false);
    let (l_generic, g_generic) = run(true);
    assert!(
        (l_fused - l_generic).abs() <= 1e-4 * l_generic.abs(),
        "{l_fused} vs {l_generic}"
    );
    assert_eq!(g_fused.len(), g_generic.len());
    for ((name, a), (_, b)) in g_fused.iter().zip(&g_generic) {
        let diff: f32 = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        let scale: f32 = b.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        assert!(
            diff <= 1e-4 * scale.max(1e-6),
            "{name}: {diff} (scale {scale})"
        );
    }
}
