//! The machine's limits, measured with loops that do nothing but the one thing: fused
//! multiply-adds on registers (the compute roof) and a streaming copy (the memory roof). The
//! roofline in the Profile tab and `bench --roofline` place every layer under these.
use crate::kernels::gemm::PackedLinear;
use rayon::prelude::*;
use std::time::Instant;

/// Floating-point operations one call of [`fma_loop`] does per round (two per FMA lane).
fn flops_per_round() -> f64 {
    match crate::kernels::simd::level() {
        crate::kernels::simd::Level::Avx512 => (CHAINS * 16 * 2) as f64,
        crate::kernels::simd::Level::Avx2 => (CHAINS * 8 * 2) as f64,
        crate::kernels::simd::Level::Baseline => (PORTABLE_CHAINS * 2) as f64,
    }
}

const PORTABLE_CHAINS: usize = 16;
/// Rounds per timing of a peak loop, and timings per measure (the best is kept): about a
/// millisecond each on AVX2, 40 ms in all. Short timings, many of them: on a machine whose
/// cores are shared (a busy desktop, a cloud VM lending its vCPUs out), a timing that overlaps
/// another program's time slice measures half the peak. One thread beside two busy ones
/// (`yes > /dev/null`) on 2 vCPUs measured half the peak in 17 of 36 measures with 5 timings of
/// 4 ms, and in none of 36 with these; unloaded, both gave the same peak.
const LOOP_ROUNDS: usize = 500_000;
const LOOP_REPEATS: usize = 40;
/// Timings per measure of the copies and of the GEMM, each of one segment of the copy or one
/// short product (1–3 ms on an AVX2 core), for the same reason. They had been 5 timings of the
/// whole copy (about 15 ms) or of a 1024³ product (20 ms): one thread beside three busy
/// programs on 2 vCPUs then read 30–43 GFLOP/s for the GEMM and 8.8–9.8 GB/s for memory in 4
/// measures, with these 72–95 and 18.8–20.0 (unloaded, both ways alike).
const BLOCK_REPEATS: usize = 40;
/// Segments of the streaming copy, timed one at a time in turn: each one's data were last
/// touched a sweep over both buffers earlier (2 × 7/8 of them), out of every cache.
const COPY_SEGMENTS: usize = 8;
/// Independent vector accumulators: more than FMA latency × FMA ports on current cores (4 × 2).
const CHAINS: usize = 12;

/// Runs `rounds` rounds of independent FMA chains (enough of them to hide the FMA latency on
/// every core we know) at the widest width this CPU has; returns a value that depends on every
/// chain, so that nothing is optimised away.
fn fma_loop(rounds: usize) -> f32 {
    #[cfg(target_arch = "x86_64")]
    match crate::kernels::simd::level() {
        // SAFETY: the level was detected on this CPU.
        crate::kernels::simd::Level::Avx512 => return unsafe { x86::fma512(rounds) },
        // SAFETY: as above.
        crate::kernels::simd::Level::Avx2 => return unsafe { x86::fma256(rounds) },
        crate::kernels::simd::Level::Baseline => {}
    }
    let mut acc = std::hint::black_box([1f32; PORTABLE_CHAINS]);
    let (m, c) = std::hint::black_box((0.999_999_9f32, 1e-7f32));
    for _ in 0..rounds {
        for a in acc.iter_mut() {
            *a = a.mul_add(m, c);
        }
    }
    std::hint::black_box(acc).iter().sum()
}

/// Peak GFLOP/s of `vdpbf16ps` (a bf16 pair's two multiply-adds per f32 lane) on every thread
/// of the pool at once, the roof of the bf16 matmuls; `None` where the CPU lacks AVX-512 BF16.
pub fn bf16_dot_gflops() -> Option<f64> {
    if !crate::kernels::gemm::bf16_native() {
        return None;
    }
    let threads = rayon::current_num_threads().max(1);
    let rounds = LOOP_ROUNDS;
    let flops = (CHAINS * 16 * 4) as f64 * rounds as f64 * threads as f64;
    #[cfg(target_arch = "x86_64")]
    return Some(
        best_rate(LOOP_REPEATS, flops, || {
            let s: f32 = (0..threads)
                .into_par_iter()
                // SAFETY: the CPU has AVX-512F and AVX-512 BF16 (checked above).
                .map(|_| unsafe { x86::dot_bf16(rounds) })
                .sum();
            std::hint::black_box(s);
        }) / 1e9,
    );
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = flops;
        None
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::CHAINS;
    use std::arch::x86_64::*;

    /// `rounds` rounds of `CHAINS` independent `vdpbf16ps` chains.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX-512 BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn dot_bf16(rounds: usize) -> f32 {
        // 1.0 and 1e-3 in bf16: the sums grow slowly and stay finite.
        let pair = |bits: u32| -> __m512bh {
            std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32((bits << 16 | bits) as i32))
        };
        let (a, b) = std::hint::black_box((pair(0x3f80), pair(0x3a83)));
        let mut acc = std::hint::black_box([_mm512_setzero_ps(); CHAINS]);
        for _ in 0..rounds {
            for v in acc.iter_mut() {
                *v = _mm512_dpbf16_ps(*v, a, b);
            }
        }
        let acc = std::hint::black_box(acc);
        acc.iter().map(|v| _mm512_reduce_add_ps(*v)).sum()
    }

    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma512(rounds: usize) -> f32 {
        // Opaque inputs: with constants the compiler folds the whole loop away.
        let (a, b) = std::hint::black_box((_mm512_set1_ps(0.999_999_9), _mm512_set1_ps(1e-7)));
        let mut acc = std::hint::black_box([_mm512_set1_ps(1.0); CHAINS]);
        for _ in 0..rounds {
            for v in acc.iter_mut() {
                *v = _mm512_fmadd_ps(*v, a, b);
            }
        }
        let acc = std::hint::black_box(acc);
        acc.iter().map(|v| _mm512_reduce_add_ps(*v)).sum()
    }

    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma256(rounds: usize) -> f32 {
        let (a, b) = std::hint::black_box((_mm256_set1_ps(0.999_999_9), _mm256_set1_ps(1e-7)));
        let mut acc = std::hint::black_box([_mm256_set1_ps(1.0); CHAINS]);
        for _ in 0..rounds {
            for v in acc.iter_mut() {
                *v = _mm256_fmadd_ps(*v, a, b);
            }
        }
        let acc = std::hint::black_box(acc);
        let mut lanes = [0f32; 8];
        let mut sum = 0.0;
        for v in acc {
            _mm256_storeu_ps(lanes.as_mut_ptr(), v);
            sum += lanes.iter().sum::<f32>();
        }
        sum
    }
}

/// The best of `repeats` timings of `f`, which does `work` units; returns units per second.
fn best_rate(repeats: usize, work: f64, mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::INFINITY;
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    work / best.max(1e-12)
}

/// Peak GFLOP/s of the FMA loop on every thread of the current rayon pool at once.
pub fn fma_gflops() -> f64 {
    let threads = rayon::current_num_threads().max(1);
    let flops = flops_per_round() * LOOP_ROUNDS as f64 * threads as f64;
    best_rate(LOOP_REPEATS, flops, || {
        let s: f32 = (0..threads)
            .into_par_iter()
            .map(|_| fma_loop(LOOP_ROUNDS))
            .sum();
        std::hint::black_box(s);
    }) / 1e9
}

/// GB/s of a streaming copy between two buffers of `bytes` each, split over the pool's threads,
/// counting what is read and what is written (STREAM's convention for its Copy); timed one
/// of [`COPY_SEGMENTS`] segments at a time.
pub fn copy_gbs(bytes: usize) -> f64 {
    let seg = (bytes / 4).max(1024).div_ceil(COPY_SEGMENTS);
    let mut pair = CopyPair::new(seg * COPY_SEGMENTS);
    let (src, dst) = pair.halves();
    let chunk = seg.div_ceil(rayon::current_num_threads().max(1) * 4);
    let mut next = 0;
    best_rate(BLOCK_REPEATS, (2 * seg * 4) as f64, || {
        let part = next % COPY_SEGMENTS * seg..(next % COPY_SEGMENTS + 1) * seg;
        next += 1;
        dst[part.clone()]
            .par_chunks_mut(chunk)
            .zip(src[part].par_chunks(chunk))
            .for_each(|(d, s)| d.copy_from_slice(s));
        std::hint::black_box(&mut *dst);
    }) / 1e9
}

/// A copy's source and destination of `n` floats in one buffer, the destination half a page
/// past the source modulo a page. Two buffers from malloc lay wherever it put them: one after
/// the other, 16 bytes apart modulo 4 KB, and there glibc's copy ran at a twentieth of its rate
/// on a Zen 3 (each vector store hitting the page offset of a load just ahead), so that the
/// cache roof measured 4–11 GB/s, below the memory roof, or 80, from one run to the next.
struct CopyPair {
    buf: Vec<f32>,
    n: usize,
    /// Where the destination starts: `n` rounded up to a page of floats, and half a page.
    dst: usize,
}

impl CopyPair {
    fn new(n: usize) -> Self {
        const PAGE: usize = 1024;
        let dst = n.div_ceil(PAGE) * PAGE + PAGE / 2;
        let buf = (0..dst + n).map(|i| i as f32).collect();
        CopyPair { buf, n, dst }
    }

    /// The source and the destination.
    fn halves(&mut self) -> (&[f32], &mut [f32]) {
        let (src, rest) = self.buf.split_at_mut(self.dst);
        (&src[..self.n], &mut rest[..self.n])
    }
}

/// GB/s of the same copy on buffers each thread keeps in its own cache (128 KB per thread, under
/// every current core's L2), the roof for layers whose data stays in cache.
pub fn cache_copy_gbs() -> f64 {
    let threads = rayon::current_num_threads().max(1);
    let n = 32 * 1024;
    let passes = 400;
    let moved = (2 * n * 4 * passes * threads) as f64;
    let mut pairs: Vec<CopyPair> = (0..threads).map(|_| CopyPair::new(n)).collect();
    best_rate(BLOCK_REPEATS, moved, || {
        pairs.par_iter_mut().for_each(|pair| {
            let (s, d) = pair.halves();
            for _ in 0..passes {
                d.copy_from_slice(s);
                std::hint::black_box(&mut *d);
            }
        });
    }) / 1e9
}

/// The GEMM that [`gemm_gflops`] times: 128 rows by a 1024 × 1024 weight (134 M MACs, about a
/// ConvNeXt-T stage-2 Linear's 116 M at batch 1), short enough to time many times.
pub const GEMM_SHAPE: (usize, usize, usize) = (128, 1024, 1024);

/// GFLOP/s of the project's own GEMM ([`PackedLinear`]) on a [`GEMM_SHAPE`] product, on the
/// pool's threads: what a real kernel reaches, beside the FMA loop's bound.
pub fn gemm_gflops() -> f64 {
    let (m, k, n) = GEMM_SHAPE;
    let value = |i: usize| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5;
    let w: Vec<f32> = (0..n * k).map(value).collect();
    let x: Vec<f32> = (0..m * k).map(|i| value(i + 17)).collect();
    let lin = PackedLinear::new(&w, n, k, &vec![0.0; n]);
    best_rate(BLOCK_REPEATS, 2.0 * (m * k * n) as f64, || {
        std::hint::black_box(lin.forward(&x, false));
    }) / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loops_measure_positive_finite_rates() {
        let f = fma_gflops();
        assert!(f.is_finite() && f > 0.1, "{f}");
        let c = copy_gbs(8 << 20);
        assert!(c.is_finite() && c > 0.1, "{c}");
        let l = cache_copy_gbs();
        assert!(l.is_finite() && l > 0.1, "{l}");
    }

    #[test]
    fn the_bf16_loop_measures_where_the_cpu_has_it() {
        let b = bf16_dot_gflops();
        assert_eq!(b.is_some(), crate::kernels::gemm::bf16_native());
        assert!(b.is_none_or(|b| b.is_finite() && b > 0.1), "{b:?}");
    }

    /// Wherever malloc puts the buffer, the copy's destination lies half a page past its
    /// source modulo a page, and the two do not overlap.
    #[test]
    fn the_copy_halves_are_half_a_page_apart() {
        for n in [1024, 32 * 1024, 32 * 1024 + 3] {
            let mut pair = CopyPair::new(n);
            let (s, d) = pair.halves();
            assert_eq!((s.len(), d.len()), (n, n));
            let gap = d.as_ptr() as usize - s.as_ptr() as usize;
            assert_eq!(gap % 4096, 2048, "{n}");
            assert!(gap >= 4 * n, "{n}");
        }
    }

    #[test]
    fn the_fma_loop_keeps_every_chain() {
        // 1 → 1·a + b stays near 1 for a few rounds: the sum over all lanes shows every chain ran.
        let lanes = flops_per_round() / 2.0;
        let s = fma_loop(3) as f64;
        assert!((s - lanes).abs() < 1e-3 * lanes, "{s} vs {lanes}");
    }
}
