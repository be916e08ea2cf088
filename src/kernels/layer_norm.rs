//! LayerNorm over the last axis as a CPU kernel with its own backward pass, for the paths that
//! carry gradients (candle's fused LayerNorm has none, and composing it from tensor ops keeps
//! five intermediates per norm alive for the backward pass; this keeps only its input).
use crate::simd_dispatch;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `(x - mean) / sqrt(var + eps) · w + b` over the last axis of a CPU f32 tensor; gradients
/// flow to `x`, and to `w` and `b` where they are tracked.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &b.contiguous()?,
        LayerNormOp { eps: eps as f32 },
    )
}

/// Whether [`layer_norm`] takes this input (else the caller composes the norm from ops).
pub fn has_kernel(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

struct LayerNormOp {
    eps: f32,
}

/// Mean and 1/σ of a row (two passes: the mean first, then the centred squares), each sum
/// over 16 interleaved partial sums: a single running sum is one chain of dependent adds the
/// compiler may not reorder, which made the norm latency-bound.
#[inline(always)]
fn stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len().max(1) as f32;
    let mean = lane_sum(row, |v| v) / n;
    let var = lane_sum(row, |v| (v - mean) * (v - mean)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// `Σ f(v)` over `row` in 16 lanes, then the lanes and the tail.
#[inline(always)]
fn lane_sum(row: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; 16];
    let chunks = row.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for ch in chunks {
        for (l, &v) in lanes.iter_mut().zip(ch) {
            *l += f(v);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[inline(always)]
fn forward_rows_generic(out: &mut [f32], x: &[f32], w: &[f32], b: &[f32], eps: f32) {
    let c = w.len();
    for (o, row) in out.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
        let (mean, rstd) = stats(row, eps);
        for k in 0..c {
            o[k] = (row[k] - mean) * rstd * w[k] + b[k];
        }
    }
}

simd_dispatch!(fn forward_rows_portable => forward_rows_generic(out: &mut [f32], x: &[f32], w: &[f32], b: &[f32], eps: f32));

/// Each row of `x` (`w.len()` values) normalised into `out`.
fn forward_rows(out: &mut [f32], x: &[f32], w: &[f32], b: &[f32], eps: f32) {
    let n = out.len().min(x.len());
    // SAFETY: both slices hold `n` values.
    if unsafe { simd_rows(x[..n].as_ptr(), out[..n].as_mut_ptr(), n, (w, b, eps)) } {
        return;
    }
    forward_rows_portable(out, x, w, b, eps)
}

/// Normalises the `len / w.len()` rows at `src` into `dst` with this CPU's SIMD rows, and
/// says whether it had them (false: nothing was written).
///
/// # Safety
/// `src` and `dst` must each hold `len` values; they may be the same (each row is read whole
/// before it is written).
unsafe fn simd_rows(
    src: *const f32,
    dst: *mut f32,
    len: usize,
    (w, b, eps): (&[f32], &[f32], f32),
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::kernels::simd::{level, Level};
        match level() {
            // SAFETY: the CPU has AVX-512F (the level was detected on it); the pointers as the
            // caller promised.
            Level::Avx512 => x86::rows(src, dst, len, w, b, eps),
            // SAFETY: the CPU has AVX2 and FMA; as above.
            Level::Avx2 => x86::rows256(src, dst, len, w, b, eps),
            Level::Baseline => return false,
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (src, dst, len, w, b, eps);
        false
    }
}

#[inline(always)]
fn normalise_rows_generic(v: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let c = w.len();
    for row in v.chunks_exact_mut(c) {
        let (mean, rstd) = stats(row, eps);
        for k in 0..c {
            row[k] = (row[k] - mean) * rstd * w[k] + b[k];
        }
    }
}

simd_dispatch!(fn normalise_rows_portable => normalise_rows_generic(v: &mut [f32], w: &[f32], b: &[f32], eps: f32));

/// [`forward_rows`] in place: each row of `v` (`w.len()` values) normalised where it lies, the
/// same arithmetic element by element.
pub fn normalise_rows(v: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let p = v.as_mut_ptr();
    // SAFETY: `v` holds its length; in place, as `simd_rows` allows.
    if unsafe { simd_rows(p, p, v.len(), (w, b, eps)) } {
        return;
    }
    normalise_rows_portable(v, w, b, eps)
}

/// `dx = (gw − mean(gw) − x̂·mean(gw·x̂)) / σ` with `gw = g·w`, per row; adds each row's
/// `g·x̂` and `g` to `dw` and `db` (the scale's and shift's gradients, summed over rows).
#[inline(always)]
fn backward_rows_generic(
    dx: &mut [f32],
    x: &[f32],
    g: &[f32],
    w: &[f32],
    eps: f32,
    dw: &mut [f32],
    db: &mut [f32],
) {
    let c = w.len();
    let n = c.max(1) as f32;
    for ((d, row), gr) in dx
        .chunks_exact_mut(c)
        .zip(x.chunks_exact(c))
        .zip(g.chunks_exact(c))
    {
        let (mean, rstd) = stats(row, eps);
        let (mut s1, mut s2) = (0f32, 0f32);
        for k in 0..c {
            let gw = gr[k] * w[k];
            s1 += gw;
            s2 += gw * (row[k] - mean) * rstd;
        }
        let (m1, m2) = (s1 / n, s2 / n);
        for k in 0..c {
            let xh = (row[k] - mean) * rstd;
            d[k] = (gr[k] * w[k] - m1 - xh * m2) * rstd;
            dw[k] += gr[k] * xh;
            db[k] += gr[k];
        }
    }
}

simd_dispatch!(fn backward_rows => backward_rows_generic(dx: &mut [f32], x: &[f32], g: &[f32], w: &[f32], eps: f32, dw: &mut [f32], db: &mut [f32]));

/// The AVX-512 and AVX2 rows: the portable code's sums are 16 lanes added one after another at
/// the end (a chain of 16 dependent adds, twice per row); here the lanes are summed as a tree,
/// the channels past the last vector come in through a masked load, and each sum has two
/// partial sums. At ConvNeXt-atto's 40 channels the portable row spent most of its time in
/// those chains (on AVX2 too: 3.8 % of atto's forward, by perf).
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Normalises the `len / w.len()` rows of `c = w.len()` values at `src` into `dst` (which
    /// may be `src`: each row is read whole before it is written).
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `src` and `dst` must each hold `len` values.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn rows(src: *const f32, dst: *mut f32, len: usize, w: &[f32], b: &[f32], eps: f32) {
        let c = w.len().min(b.len());
        if c == 0 {
            return;
        }
        let (full, tail) = (c / 16, ((1u32 << (c % 16)) - 1) as __mmask16);
        let (w, b) = (w.as_ptr(), b.as_ptr());
        // A product rather than a division per row: the division sat on each row's chain.
        let inv_c = 1.0 / c as f32;
        for r in 0..len / c {
            let (x, o) = (src.add(r * c), dst.add(r * c));
            let mean = total::<false>(x, full, tail, _mm512_setzero_ps()) * inv_c;
            let centre = _mm512_set1_ps(mean);
            let var = total::<true>(x, full, tail, centre) * inv_c;
            let rstd = _mm512_set1_ps(1.0 / (var + eps).sqrt());
            // Rounded as the portable code rounds: ((x − mean)·rstd)·w, then + b.
            for i in (0..full * 16).step_by(16) {
                let t = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x.add(i)), centre), rstd);
                let y = _mm512_mul_ps(t, _mm512_loadu_ps(w.add(i)));
                _mm512_storeu_ps(o.add(i), _mm512_add_ps(y, _mm512_loadu_ps(b.add(i))));
            }
            if tail != 0 {
                let i = full * 16;
                let v = _mm512_maskz_loadu_ps(tail, x.add(i));
                let t = _mm512_mul_ps(_mm512_sub_ps(v, centre), rstd);
                let y = _mm512_mul_ps(t, _mm512_maskz_loadu_ps(tail, w.add(i)));
                let y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(tail, b.add(i)));
                _mm512_mask_storeu_ps(o.add(i), tail, y);
            }
        }
    }

    /// `Σ x` over a row (`SQUARES` false), or `Σ (x − centre)²`: `full` vectors of 16 and the
    /// `tail` lanes of one more, in two partial sums, then a tree over the lanes.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `x` must hold `16·full` values and the tail's lanes.
    #[target_feature(enable = "avx512f")]
    unsafe fn total<const SQUARES: bool>(
        x: *const f32,
        full: usize,
        tail: __mmask16,
        centre: __m512,
    ) -> f32 {
        // Two named partial sums: an indexed array of them was kept on the stack.
        let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let term = |acc: __m512, v: __m512| match SQUARES {
            true => {
                let d = _mm512_sub_ps(v, centre);
                _mm512_fmadd_ps(d, d, acc)
            }
            false => _mm512_add_ps(acc, v),
        };
        let mut i = 0;
        while i + 2 <= full {
            a0 = term(a0, _mm512_loadu_ps(x.add(16 * i)));
            a1 = term(a1, _mm512_loadu_ps(x.add(16 * i + 16)));
            i += 2;
        }
        if i < full {
            a0 = term(a0, _mm512_loadu_ps(x.add(16 * i)));
        }
        if tail != 0 {
            // Zero in the lanes past the row, squared or not.
            let v = _mm512_maskz_loadu_ps(tail, x.add(16 * full));
            a1 = match SQUARES {
                true => {
                    let d = _mm512_maskz_sub_ps(tail, v, centre);
                    _mm512_fmadd_ps(d, d, a1)
                }
                false => _mm512_add_ps(a1, v),
            };
        }
        let s = _mm512_add_ps(a0, a1);
        _mm512_reduce_add_ps(s)
    }

    /// [`rows`] with AVX2: vectors of 8, the tail through `vmaskmovps`.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; `src` and `dst` must each hold `len` values.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn rows256(
        src: *const f32,
        dst: *mut f32,
        len: usize,
        w: &[f32],
        b: &[f32],
        eps: f32,
    ) {
        let c = w.len().min(b.len());
        if c == 0 {
            return;
        }
        let (full, tail) = (c / 8, tail_mask(c % 8));
        let (w, b) = (w.as_ptr(), b.as_ptr());
        let inv_c = 1.0 / c as f32;
        for r in 0..len / c {
            let (x, o) = (src.add(r * c), dst.add(r * c));
            let mean = total256::<false>(x, full, tail, _mm256_setzero_ps()) * inv_c;
            let centre = _mm256_set1_ps(mean);
            let var = total256::<true>(x, full, tail, centre) * inv_c;
            let rstd = _mm256_set1_ps(1.0 / (var + eps).sqrt());
            // Rounded as the portable code rounds: ((x − mean)·rstd)·w, then + b.
            let norm = |v: __m256, w: __m256, b: __m256| {
                let t = _mm256_mul_ps(_mm256_sub_ps(v, centre), rstd);
                _mm256_add_ps(_mm256_mul_ps(t, w), b)
            };
            for i in (0..full * 8).step_by(8) {
                let y = norm(
                    _mm256_loadu_ps(x.add(i)),
                    _mm256_loadu_ps(w.add(i)),
                    _mm256_loadu_ps(b.add(i)),
                );
                _mm256_storeu_ps(o.add(i), y);
            }
            if !c.is_multiple_of(8) {
                let i = full * 8;
                let load = |p: *const f32| _mm256_maskload_ps(p.add(i), tail);
                _mm256_maskstore_ps(o.add(i), tail, norm(load(x), load(w), load(b)));
            }
        }
    }

    /// The lanes of the first `n < 8` values, as `vmaskmovps` takes them (sign bit set).
    #[target_feature(enable = "avx2")]
    unsafe fn tail_mask(n: usize) -> __m256i {
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lane)
    }

    /// [`total`] with AVX2: `Σ x` or `Σ (x − centre)²` over `full` vectors of 8 and the
    /// `tail` lanes of one more.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; `x` must hold `8·full` values and the tail's lanes.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn total256<const SQUARES: bool>(
        x: *const f32,
        full: usize,
        tail: __m256i,
        centre: __m256,
    ) -> f32 {
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let term = |acc: __m256, v: __m256| match SQUARES {
            true => {
                let d = _mm256_sub_ps(v, centre);
                _mm256_fmadd_ps(d, d, acc)
            }
            false => _mm256_add_ps(acc, v),
        };
        let mut i = 0;
        while i + 2 <= full {
            a0 = term(a0, _mm256_loadu_ps(x.add(8 * i)));
            a1 = term(a1, _mm256_loadu_ps(x.add(8 * i + 8)));
            i += 2;
        }
        if i < full {
            a0 = term(a0, _mm256_loadu_ps(x.add(8 * i)));
        }
        if _mm256_movemask_ps(_mm256_castsi256_ps(tail)) != 0 {
            // Zero in the lanes past the row (the masked load's), and their difference from
            // the centre masked to zero too.
            let v = _mm256_maskload_ps(x.add(8 * full), tail);
            a1 = match SQUARES {
                true => {
                    let d = _mm256_and_ps(_mm256_sub_ps(v, centre), _mm256_castsi256_ps(tail));
                    _mm256_fmadd_ps(d, d, a1)
                }
                false => _mm256_add_ps(a1, v),
            };
        }
        // The lanes as a tree: 8 → 4 → 2 → 1.
        let s = _mm256_add_ps(a0, a1);
        let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "layer-norm-with-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let data = |s, l| super::storage::contiguous_f32(s, l, "layer norm kernel");
        let (x, w, b) = (data(s1, l1)?, data(s2, l2)?, data(s3, l3)?);
        let c = w.len();
        if c == 0 || b.len() != c || x.len() % c != 0 {
            candle_core::bail!(
                "layer norm: input {:?}, weight {c}, bias {}",
                l1.shape(),
                b.len()
            )
        }
        let eps = self.eps;
        // SAFETY: `forward_rows` writes every value of its output rows.
        let out = unsafe { super::storage::map_rows(x, c, |o, xi| forward_rows(o, xi, w, b, eps)) };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = w.elem_count();
        let xv: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let gv: Vec<f32> = grad.contiguous()?.flatten_all()?.to_vec1()?;
        let wv: Vec<f32> = w.to_vec1()?;
        let mut dx = vec![0f32; xv.len()];
        let chunk = super::storage::task_len(c);
        // Each task's partial sums of the scale's and shift's gradients, added at the end.
        let (dw, db) = dx
            .par_chunks_mut(chunk)
            .zip(xv.par_chunks(chunk))
            .zip(gv.par_chunks(chunk))
            .map(|((d, xi), gi)| {
                let (mut dw, mut db) = (vec![0f32; c], vec![0f32; c]);
                backward_rows(d, xi, gi, &wv, self.eps, &mut dw, &mut db);
                (dw, db)
            })
            .reduce(
                || (vec![0f32; c], vec![0f32; c]),
                |(mut aw, mut ab), (bw, bb)| {
                    super::reduce::add_rows(&mut aw, &bw);
                    super::reduce::add_rows(&mut ab, &bb);
                    (aw, ab)
                },
            );
        let dx = Tensor::from_vec(dx, x.shape(), x.device())?;
        // The scale's and shift's gradients only where they are learned (training).
        let dw = w
            .track_op()
            .then(|| Tensor::from_vec(dw, c, w.device()))
            .transpose()?;
        let db = b
            .track_op()
            .then(|| Tensor::from_vec(db, c, b.device()))
            .transpose()?;
        Ok((Some(dx), dw, db))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    fn composed(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Tensor {
        let mean = x.mean_keepdim(D::Minus1).unwrap();
        let xc = x.broadcast_sub(&mean).unwrap();
        let var = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let xn = xc
            .broadcast_div(&(var + eps).unwrap().sqrt().unwrap())
            .unwrap();
        xn.broadcast_mul(w).unwrap().broadcast_add(b).unwrap()
    }

    #[test]
    fn forward_and_gradients_equal_the_composed_norm() {
        // Channel counts with only a tail, whole vectors (an even and an odd count of them)
        // and both: the AVX-512 rows handle each differently.
        for c in [7, 16, 24, 40, 80, 96, 320] {
            forward_and_gradients_at(c);
        }
    }

    /// Every SIMD row this CPU can run (not only the level it picks) against the portable
    /// rows, at the channel counts above: they sum in another order, so to rounding.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn simd_rows_equal_the_portable_rows() {
        use crate::kernels::simd::{level, Level};
        for c in [7, 16, 24, 40, 80, 96, 320] {
            let x: Vec<f32> = (0..9 * c)
                .map(|i| ((i * 37 % 101) as f32) * 0.07 - 2.0)
                .collect();
            let w: Vec<f32> = (0..c).map(|i| 1.0 + (i % 5) as f32 * 0.1).collect();
            let b: Vec<f32> = (0..c).map(|i| (i % 3) as f32 * 0.2 - 0.2).collect();
            let mut plain = vec![0f32; x.len()];
            forward_rows_generic(&mut plain, &x, &w, &b, 1e-6);
            let mut runs = Vec::new();
            if level() >= Level::Avx2 {
                let mut out = vec![0f32; x.len()];
                // SAFETY: the CPU has AVX2 and FMA (its level is AVX2 or above).
                unsafe { x86::rows256(x.as_ptr(), out.as_mut_ptr(), x.len(), &w, &b, 1e-6) };
                runs.push(("AVX2", out));
            }
            if level() == Level::Avx512 {
                let mut out = vec![0f32; x.len()];
                // SAFETY: the CPU has AVX-512F.
                unsafe { x86::rows(x.as_ptr(), out.as_mut_ptr(), x.len(), &w, &b, 1e-6) };
                runs.push(("AVX-512", out));
            }
            for (name, out) in runs {
                let d = out
                    .iter()
                    .zip(&plain)
                    .map(|(a, p)| (a - p).abs())
                    .fold(0f32, f32::max);
                assert!(d < 1e-5, "{name}, {c} channels: {d}");
            }
        }
    }

    fn forward_and_gradients_at(c: usize) {
        let dev = Device::Cpu;
        let x = Var::randn(0.5f32, 2.0, (3, 5, 7, c), &dev).unwrap();
        let w = Var::randn(1f32, 0.3, c, &dev).unwrap();
        let b = Var::randn(0f32, 0.3, c, &dev).unwrap();
        let r = Tensor::randn(0f32, 1.0, (3, 5, 7, c), &dev).unwrap();
        let ours = layer_norm(&x, &w, &b, 1e-6).unwrap();
        let theirs = composed(&x, &w, &b, 1e-6);
        let max = |t: Tensor| -> f32 { t.abs().unwrap().max_all().unwrap().to_scalar().unwrap() };
        assert!(max((&ours - &theirs).unwrap()) < 1e-5, "{c} channels");
        // In place, as the fused depthwise conv normalises its rows: the same values.
        let mut v: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let (wv, bv): (Vec<f32>, Vec<f32>) = (w.to_vec1().unwrap(), b.to_vec1().unwrap());
        normalise_rows(&mut v, &wv, &bv, 1e-6);
        assert_eq!(v, ours.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let g1 = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (theirs * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [&x, &w, &b] {
            let d = max((g1.get(v).unwrap() - g2.get(v).unwrap()).unwrap());
            assert!(d < 1e-4, "{c} channels: {d}");
        }
    }
}
