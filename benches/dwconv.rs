//! `cargo bench --bench dwconv`: the 7×7 depthwise conv on every stage's shape of ConvNeXt-T
//! and -atto (batch 1), as GFLOP/s beside the FMA loop measured in the same run. Each shape's
//! share of the peak is the median over rounds (`BENCH_ROUNDS`, default 5) of its rate over
//! the FMA loop run just before it; `BENCH_ITERS` (default 40) runs per round.
mod common;
use convnext_explorer::kernels::dwconv::dwconv_f32;
use convnext_explorer::kernels::peak;
use std::time::Instant;

fn main() {
    convnext_explorer::base::allocator::keep_freed_memory();
    let (rounds, iters) = common::rounds_and_iters(5, 40);
    println!(
        "{} threads, SIMD {:?} ({rounds} rounds × {iters} runs per shape)",
        rayon::current_num_threads(),
        convnext_explorer::kernels::simd::level()
    );
    println!(
        "| model, stage | H × W × C | GFLOP/s (median) | % of FMA peak (median of rounds, range) |"
    );
    println!("| --- | --- | --- | --- |");
    let shapes = [
        ("T, 0", 56, 96),
        ("T, 1", 28, 192),
        ("T, 2", 14, 384),
        ("T, 3", 7, 768),
        ("atto, 0", 56, 40),
        ("atto, 1", 28, 80),
    ];
    for (name, side, c) in shapes {
        let (mut rates, mut shares) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let p = peak::fma_gflops();
            let t = times(side, c, iters);
            let rate = 2.0 * (side * side * c * 49) as f64 / t / 1e9;
            rates.push(rate);
            shares.push(100.0 * rate / p);
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (lo, hi) = (
            shares.iter().copied().fold(f64::INFINITY, f64::min),
            shares.iter().copied().fold(0.0, f64::max),
        );
        println!(
            "| {name} | {side} × {side} × {c} | {:.1} | {:.0} ({lo:.0}–{hi:.0}) |",
            median(&mut rates),
            median(&mut shares)
        );
    }
}

/// The median seconds of `iters` convs of a `side × side × c` map, on the pool with its other
/// worker kept awake (`run_awake`), as a forward runs the kernel.
fn times(side: usize, c: usize, iters: usize) -> f64 {
    let value = |i: usize| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5;
    let x: Vec<f32> = (0..side * side * c).map(value).collect();
    let wt: Vec<f32> = (0..49 * c).map(|i| value(i + 3)).collect();
    let b = vec![0.1f32; c];
    let mut out = vec![0f32; x.len()];
    let mut t = convnext_explorer::base::pool::run_awake(|| {
        let mut run = || dwconv_f32(&x, &wt, Some(&b), &mut out, 1, side, side, c, 7);
        (0..3).for_each(|_| run());
        (0..iters)
            .map(|_| {
                let s = Instant::now();
                run();
                s.elapsed().as_secs_f64()
            })
            .collect::<Vec<_>>()
    });
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}
