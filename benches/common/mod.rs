//! What the kernel benchmarks share.

/// `BENCH_ROUNDS` and `BENCH_ITERS` from the environment (at least 1 each), else the defaults.
pub fn rounds_and_iters(rounds: usize, iters: usize) -> (usize, usize) {
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
            .max(1)
    };
    (env("BENCH_ROUNDS", rounds), env("BENCH_ITERS", iters))
}
