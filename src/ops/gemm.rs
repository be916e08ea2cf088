//! `y = x Wᵀ + b` for inference with the weight packed once, at load, into the layout an AVX2
//! micro-kernel streams: panels of 16 output columns, `[K][16]` each, zero-padded.
//!
//! The MLP's two Linear layers are most of a ConvNeXt's work. A general GEMM repacks the
//! weight on every call and cannot know it is constant; packing at load time, fusing the bias,
//! and a 6×16 register-blocked kernel (12 accumulators, one broadcast of x and two loads of the
//! panel per step of K) serve these shapes better. Elsewhere (no AVX2, other devices, other
//! dtypes) the caller uses candle's matmul.
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape};
use rayon::prelude::*;
use std::sync::Arc;

const NR: usize = 16;
const MR: usize = 6;

/// A `[N, K]` (PyTorch `Linear.weight`) matrix packed for the kernel, with its bias.
#[derive(Debug)]
pub struct PackedLinear {
    k: usize,
    n: usize,
    panels: Vec<f32>,
    bias: Vec<f32>,
}

/// Whether this CPU runs the packed kernel (AVX2 + FMA; AVX-512 CPUs have both).
pub fn available() -> bool {
    crate::ops::simd::level() != crate::ops::simd::Level::Baseline
}

impl PackedLinear {
    /// `w` is row-major `[n, k]`; `bias` has `n` values.
    pub fn new(w: &[f32], n: usize, k: usize, bias: &[f32]) -> Self {
        assert_eq!(w.len(), n * k);
        assert_eq!(bias.len(), n);
        let np = n.div_ceil(NR);
        let mut panels = vec![0f32; np * k * NR];
        for p in 0..np {
            let panel = &mut panels[p * k * NR..(p + 1) * k * NR];
            for j in 0..NR.min(n - p * NR) {
                let row = &w[(p * NR + j) * k..(p * NR + j + 1) * k];
                for (kk, &v) in row.iter().enumerate() {
                    panel[kk * NR + j] = v;
                }
            }
        }
        let mut b = bias.to_vec();
        b.resize(np * NR, 0.0);
        Self {
            k,
            n,
            panels,
            bias: b,
        }
    }

    pub fn in_features(&self) -> usize {
        self.k
    }

    pub fn out_features(&self) -> usize {
        self.n
    }

    /// `out[m, n] = x[m, k] · Wᵀ + b` (`with_bias` false leaves the bias out).
    pub fn forward(&self, x: &[f32], with_bias: bool) -> Vec<f32> {
        let (k, n) = (self.k, self.n);
        let m = x.len() / k.max(1);
        let mut out = vec![0f32; m * n];
        let np = n.div_ceil(NR);
        // Tasks: blocks of rows × groups of panels, so that a few rows (the late stages at
        // batch 1) still spread over every thread. A row block's x stays in L2 across panels.
        let rows_per = (MR * (131_072 / (k * MR).max(1)).max(1))
            .min(m.div_ceil(MR) * MR)
            .max(MR);
        let row_blocks = m.div_ceil(rows_per);
        let threads = rayon::current_num_threads().max(1);
        let panel_groups = if row_blocks >= 2 * threads {
            1
        } else {
            np.min(4 * threads / row_blocks.max(1)).max(1)
        };
        let panels_per = np.div_ceil(panel_groups);
        let out_ptr = SendPtr(out.as_mut_ptr());
        (0..row_blocks * panel_groups)
            .into_par_iter()
            .for_each(|t| {
                let (rb, pg) = (t / panel_groups, t % panel_groups);
                let r0 = rb * rows_per;
                let r1 = (r0 + rows_per).min(m);
                let p0 = pg * panels_per;
                let p1 = (p0 + panels_per).min(np);
                let out = out_ptr;
                for p in p0..p1 {
                    let panel = &self.panels[p * k * NR..(p + 1) * k * NR];
                    let cols = NR.min(n - p * NR);
                    let bias = with_bias.then(|| &self.bias[p * NR..(p + 1) * NR]);
                    let mut r = r0;
                    while r < r1 {
                        let rows = MR.min(r1 - r);
                        // SAFETY: tasks write disjoint (row range × panel) regions of `out`, all
                        // inside it; `x` rows r..r+rows exist; the CPU has AVX-512 (checked by
                        // the caller through `available`).
                        unsafe {
                            kernel(
                                rows,
                                k,
                                x.as_ptr().add(r * k),
                                panel.as_ptr(),
                                bias,
                                out.0.add(r * n + p * NR),
                                n,
                                cols,
                            );
                        }
                        r += rows;
                    }
                }
            });
        out
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

#[allow(clippy::too_many_arguments)]
unsafe fn kernel(
    rows: usize,
    k: usize,
    a: *const f32,
    b: *const f32,
    bias: Option<&[f32]>,
    c: *mut f32,
    ldc: usize,
    cols: usize,
) {
    #[cfg(target_arch = "x86_64")]
    match rows {
        6 => x86::tile::<6>(k, a, b, bias, c, ldc, cols),
        5 => x86::tile::<5>(k, a, b, bias, c, ldc, cols),
        4 => x86::tile::<4>(k, a, b, bias, c, ldc, cols),
        3 => x86::tile::<3>(k, a, b, bias, c, ldc, cols),
        2 => x86::tile::<2>(k, a, b, bias, c, ldc, cols),
        _ => x86::tile::<1>(k, a, b, bias, c, ldc, cols),
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (rows, k, a, b, bias, c, ldc, cols);
        unreachable!("the packed kernel is x86-64 only (see `available`)")
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `R` rows × 16 columns of `c = a · panel (+ bias)`; `a` rows are `k` apart. Twelve
    /// accumulators, two panel loads and one broadcast per step: 15 of the 16 ymm registers.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile<const R: usize>(
        k: usize,
        a: *const f32,
        b: *const f32,
        bias: Option<&[f32]>,
        c: *mut f32,
        ldc: usize,
        cols: usize,
    ) {
        let (lo, hi) = match bias {
            Some(bv) => (
                _mm256_loadu_ps(bv.as_ptr()),
                _mm256_loadu_ps(bv.as_ptr().add(8)),
            ),
            None => (_mm256_setzero_ps(), _mm256_setzero_ps()),
        };
        let mut acc0 = [lo; R];
        let mut acc1 = [hi; R];
        for kk in 0..k {
            let b0 = _mm256_loadu_ps(b.add(kk * 16));
            let b1 = _mm256_loadu_ps(b.add(kk * 16 + 8));
            for r in 0..R {
                let av = _mm256_set1_ps(*a.add(r * k + kk));
                acc0[r] = _mm256_fmadd_ps(av, b0, acc0[r]);
                acc1[r] = _mm256_fmadd_ps(av, b1, acc1[r]);
            }
        }
        for r in 0..R {
            let dst = c.add(r * ldc);
            if cols == 16 {
                _mm256_storeu_ps(dst, acc0[r]);
                _mm256_storeu_ps(dst.add(8), acc1[r]);
            } else {
                // The last panel of a width that is no multiple of 16.
                let mut tmp = [0f32; 16];
                _mm256_storeu_ps(tmp.as_mut_ptr(), acc0[r]);
                _mm256_storeu_ps(tmp.as_mut_ptr().add(8), acc1[r]);
                std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, cols);
            }
        }
    }
}

/// The packed Linear as a candle op on `[..., K]` f32 CPU tensors.
pub struct PackedLinearOp(pub Arc<PackedLinear>, pub bool);

impl CustomOp1 for PackedLinearOp {
    fn name(&self) -> &'static str {
        "packed-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(v) = s else {
            candle_core::bail!("packed linear: f32 only")
        };
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("packed linear: input must be contiguous")
        };
        let dims = l.shape().dims();
        if dims.last() != Some(&self.0.k) {
            candle_core::bail!("packed linear: input {dims:?}, want last dim {}", self.0.k)
        }
        let out = self.0.forward(&v[start..end], self.1);
        let mut od = dims.to_vec();
        *od.last_mut().expect("rank ≥ 1") = self.0.n;
        Ok((CpuStorage::F32(out), Shape::from(od)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn equals_candles_matmul() {
        if !available() {
            return;
        }
        let dev = Device::Cpu;
        for &(m, k, n) in &[
            (1, 3, 5),
            (7, 96, 384),
            (49, 3072, 768),
            (13, 40, 160),
            (100, 160, 40),
            (3136, 96, 384),
            (5, 17, 33),
            (6, 1, 32),
            (8, 64, 16),
        ] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, n, &dev).unwrap();
            let p = Arc::new(PackedLinear::new(
                &w.flatten_all().unwrap().to_vec1().unwrap(),
                n,
                k,
                &b.to_vec1().unwrap(),
            ));
            let want = x.matmul(&w.t().unwrap()).unwrap();
            for bias in [false, true] {
                let got = x.apply_op1(PackedLinearOp(p.clone(), bias)).unwrap();
                let want = if bias {
                    want.broadcast_add(&b).unwrap()
                } else {
                    want.clone()
                };
                let d: f32 = (got - &want)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar()
                    .unwrap();
                assert!(
                    d <= 1e-4 * (k as f32).sqrt(),
                    "{m}x{k}x{n} bias {bias}: {d}"
                );
            }
        }
    }
}
