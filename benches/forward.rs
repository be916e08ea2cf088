//! `cargo bench`: ConvNeXt forwards on the CPU, plain and traced, as medians and ratios measured
//! in the same run (absolute times move from machine to machine; ratios much less).
//! `BENCH_VARIANTS=atto,tiny BENCH_ITERS=20 cargo bench` to choose.
use candle_core::{DType, Device, Tensor};
use convnext_explorer::analysis::trace::{CaptureLevel, CaptureObserver, TimingObserver};
use convnext_explorer::Engine;
use std::time::Instant;

fn median_ms(iters: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let v: Vec<f64> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    convnext_explorer::analysis::stats::median(&v)
}

fn main() {
    // As `main` runs the program: candle's elementwise ops on the calling thread.
    convnext_explorer::base::pool::candle_ops_inline();
    // `cargo bench` passes `--bench`; a filter argument is accepted and ignored.
    let variants = std::env::var("BENCH_VARIANTS").unwrap_or_else(|_| "atto,tiny".into());
    let iters: usize = std::env::var("BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let dev = Device::Cpu;
    println!("| model | batch | plain (ms) | timing observer | capture stages | capture blocks |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for v in variants.split(',') {
        let engine = Engine::random(v.trim(), 1000, 0, &dev, DType::F32).expect("variant");
        for batch in [1usize, 8] {
            let x = Tensor::randn(0f32, 1.0, (batch, 3, 224, 224), &dev).unwrap();
            let plain = median_ms(iters, || {
                engine.forward(&x).unwrap();
            });
            let timed = median_ms(iters, || {
                let mut o = TimingObserver::new(&dev);
                engine.forward_observed(&x, &mut o).unwrap();
            });
            let stages = median_ms(iters, || {
                let mut o = CaptureObserver::new(CaptureLevel::Stages);
                engine.forward_observed(&x, &mut o).unwrap();
            });
            let blocks = median_ms(iters, || {
                let mut o = CaptureObserver::new(CaptureLevel::Blocks);
                engine.forward_observed(&x, &mut o).unwrap();
            });
            println!(
                "| {v} | {batch} | {plain:.1} | ×{:.3} | ×{:.3} | ×{:.3} |",
                timed / plain,
                stages / plain,
                blocks / plain
            );
        }
    }
}
