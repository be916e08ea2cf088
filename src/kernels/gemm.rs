//! `y = x Wᵀ + b` for inference with the weight packed once, at load, into the layout the
//! AVX2 and AVX-512 tiles stream: panels of 16 output columns, `[K][16]` each, zero-padded.
//!
//! The MLP's two Linear layers are most of a ConvNeXt's work. A general GEMM repacks the
//! weight on every call and cannot know it is constant; packing at load time, fusing the bias,
//! and a register-blocked tile (AVX2: 6×16, 12 accumulators, one broadcast of x and two loads
//! of the panel per step of K; AVX-512: up to 12×16, one register per panel row) serve these
//! shapes better. The model uses it where the CPU has AVX2 and
//! FMA ([`available`]); elsewhere (other CPUs, devices, dtypes) it uses candle's matmul. A
//! portable version of the same tile runs where AVX2 is missing, so the packing and the tiling
//! are tested on every machine.
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

const NR: usize = 16;
const MR: usize = 6;
/// Rows per tile with AVX-512: one zmm holds a panel row, so twelve rows take 12 of 32 registers.
const MR_512: usize = 12;

fn avx512() -> bool {
    crate::kernels::simd::level() == crate::kernels::simd::Level::Avx512
}

/// Rows per tile on this CPU.
fn mr() -> usize {
    if avx512() {
        MR_512
    } else {
        MR
    }
}

/// A `[N, K]` (PyTorch `Linear.weight`) matrix packed for the kernel, with its bias.
#[derive(Debug)]
pub struct PackedLinear {
    k: usize,
    n: usize,
    panels: Vec<f32>,
    bias: Vec<f32>,
    /// `Wᵀ` packed, made on the first backward and kept: attribution, Integrated Gradients and
    /// feature visualisation ask for hundreds of backwards, and repacking every layer's weight
    /// each time cost ConvNeXt-T about a tenth of a step. Models never asked for gradients
    /// never make it.
    transposed: std::sync::OnceLock<Box<PackedLinear>>,
}

/// Whether this CPU runs the packed kernel (AVX2 + FMA; AVX-512 CPUs have both).
pub fn available() -> bool {
    crate::kernels::simd::level() != crate::kernels::simd::Level::Baseline
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
            transposed: std::sync::OnceLock::new(),
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
        let mr = mr();
        let rows_per = (mr * (131_072 / (k * mr).max(1)).max(1))
            .min(m.div_ceil(mr) * mr)
            .max(mr);
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
                let packed = pack_rows(&x[r0 * k..r1 * k], k, mr);
                for p in p0..p1 {
                    let panel = &self.panels[p * k * NR..(p + 1) * k * NR];
                    let cols = NR.min(n - p * NR);
                    let bias = with_bias.then(|| &self.bias[p * NR..(p + 1) * NR]);
                    let mut r = r0;
                    while r < r1 {
                        let rows = mr.min(r1 - r);
                        // SAFETY: tasks write disjoint (row range × panel) regions of `out`, all
                        // inside it: rows r..r+rows < m, columns p·16..p·16+cols ≤ n; `packed`
                        // holds these rows' k × rows values from offset (r − r0)·k; the panel
                        // holds k·16 values.
                        unsafe {
                            kernel(
                                rows,
                                k,
                                packed.as_ptr().add((r - r0) * k),
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

/// Rows of `x` (`[rows, k]`) regrouped tile by tile, `mr` rows at a time (fewer in the last),
/// each tile `[k][rows]`: the kernel's broadcasts of x then read consecutive memory instead of
/// one stream per row. Tile `t` starts at `t·mr·k`.
fn pack_rows(x: &[f32], k: usize, mr: usize) -> Vec<f32> {
    let m = x.len() / k.max(1);
    let mut out = vec![0f32; m * k];
    let mut r = 0;
    while r < m {
        let rows = mr.min(m - r);
        let tile = &mut out[r * k..(r + rows) * k];
        for i in 0..rows {
            for (kk, &v) in x[(r + i) * k..(r + i + 1) * k].iter().enumerate() {
                tile[kk * rows + i] = v;
            }
        }
        r += rows;
    }
    out
}

impl PackedLinear {
    /// The gradient with respect to the input: `grad_x = grad_y · W`, computed by the same
    /// fast kernel on `Wᵀ` (packed on the first call and kept).
    pub fn backward_input(&self, grad_y: &[f32]) -> Vec<f32> {
        self.transposed
            .get_or_init(|| Box::new(self.transposed()))
            .forward(grad_y, false)
    }

    /// The packed form of `Wᵀ` (`[K, N]`, as a layer from N to K), read from these panels.
    fn transposed(&self) -> PackedLinear {
        let (k, n) = (self.k, self.n);
        let np_t = k.div_ceil(NR);
        let mut panels = vec![0f32; np_t * n * NR];
        panels
            .par_chunks_mut(n * NR)
            .enumerate()
            .for_each(|(q, panel)| {
                for jj in 0..NR.min(k - q * NR) {
                    let kk = q * NR + jj;
                    for nn in 0..n {
                        let (p, j) = (nn / NR, nn % NR);
                        panel[nn * NR + jj] = self.panels[p * k * NR + kk * NR + j];
                    }
                }
            });
        PackedLinear {
            k: n,
            n: k,
            panels,
            bias: vec![0.0; np_t * NR],
            transposed: std::sync::OnceLock::new(),
        }
    }
}

/// The output buffer, shared by the tasks of one `forward`.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the pointer is only written through by `forward`'s tasks, each to its own disjoint
// region, while `forward` keeps the buffer alive and does not touch it until they all finish.
unsafe impl Send for SendPtr {}
// SAFETY: as for `Send`: no two tasks write the same element, none reads another's.
unsafe impl Sync for SendPtr {}

/// `match rows { R => tile::<R>(args), … }` over the listed heights, any other (1) taking the
/// one-row tile: the tiles are generic over their height, and each height must be a constant.
#[cfg(target_arch = "x86_64")]
macro_rules! tile_by_height {
    ($rows:expr, $module:ident::$tile:ident, $args:tt, [$($h:literal),*]) => {
        match $rows {
            $($h => $module::$tile::<$h> $args,)*
            _ => $module::$tile::<1> $args,
        }
    };
}

/// `rows` (1–6, or 1–12 with AVX-512) rows × one panel of `c = a · panel (+ bias)`, with the
/// AVX-512 or AVX2 tile where the CPU has it and the portable one elsewhere.
///
/// # Safety
/// `a` must point at `k × rows` readable f32 (a tile of [`pack_rows`]: row `r`'s value `kk` at
/// `kk·rows + r`), `b` at `k × 16`, `c` at `rows` rows of `cols ≤ 16` writable f32, `ldc` apart;
/// `bias`, if given, holds 16 values.
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
    if avx512() {
        // SAFETY: the CPU has AVX-512F (`avx512`); the pointers as the caller promised.
        tile_by_height!(
            rows,
            x86::tile512,
            (k, a, b, bias, c, ldc, cols),
            [12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2]
        );
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the CPU has AVX2 and FMA (`available`); the pointers as the caller promised.
        tile_by_height!(
            rows,
            x86::tile,
            (k, a, b, bias, c, ldc, cols),
            [6, 5, 4, 3, 2]
        );
        return;
    }
    // SAFETY: `rows × k` values of `a`, `k × 16` of `b` and the `rows × cols` block of `c` exist
    // (the caller's promise), so the slices below stay inside them.
    let a = std::slice::from_raw_parts(a, rows * k);
    let b = std::slice::from_raw_parts(b, k * NR);
    for r in 0..rows {
        let dst = std::slice::from_raw_parts_mut(c.add(r * ldc), cols);
        tile_portable(a.iter().skip(r).step_by(rows).copied(), b, bias, dst);
    }
}

/// One row (its `k` values in order) × one panel, in plain Rust: the reference the SIMD tiles
/// must match.
fn tile_portable(
    a: impl Iterator<Item = f32>,
    panel: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let mut acc = [0f32; NR];
    if let Some(b) = bias {
        acc.copy_from_slice(&b[..NR]);
    }
    for (kk, av) in a.enumerate() {
        for (j, acc) in acc.iter_mut().enumerate() {
            *acc = av.mul_add(panel[kk * NR + j], *acc);
        }
    }
    let n = out.len();
    out.copy_from_slice(&acc[..n]);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `R` rows × 16 columns of `c = a · panel (+ bias)`; `a` is packed `[k][R]`. Twelve
    /// accumulators, two panel loads and one broadcast per step: 15 of the 16 ymm registers.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; the pointers as for [`super::kernel`].
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
                let av = _mm256_set1_ps(*a.add(kk * R + r));
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

    /// `R` rows × 16 columns with AVX-512: one panel load and `R` broadcasts and FMAs per step
    /// of K, half the instructions of the AVX2 tile for the same work.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; the pointers as for [`super::kernel`].
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile512<const R: usize>(
        k: usize,
        a: *const f32,
        b: *const f32,
        bias: Option<&[f32]>,
        c: *mut f32,
        ldc: usize,
        cols: usize,
    ) {
        let init = match bias {
            Some(bv) => _mm512_loadu_ps(bv.as_ptr()),
            None => _mm512_setzero_ps(),
        };
        let mut acc = [init; R];
        for kk in 0..k {
            let bv = _mm512_loadu_ps(b.add(kk * 16));
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*a.add(kk * R + r));
                *acc = _mm512_fmadd_ps(av, bv, *acc);
            }
        }
        // The last panel of a width that is no multiple of 16 stores only its columns.
        let mask: __mmask16 = if cols >= 16 {
            0xffff
        } else {
            (1u16 << cols) - 1
        };
        for (r, acc) in acc.iter().enumerate() {
            _mm512_mask_storeu_ps(c.add(r * ldc), mask, *acc);
        }
    }
}

/// The packed Linear as a candle op on `[..., K]` f32 CPU tensors.
pub struct PackedLinearOp {
    pub linear: Arc<PackedLinear>,
    /// Add the bias (callers that fuse it into what follows leave it out).
    pub add_bias: bool,
}

impl CustomOp1 for PackedLinearOp {
    fn name(&self) -> &'static str {
        "packed-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = super::storage::contiguous_f32(s, l, "packed linear")?;
        let dims = l.shape().dims();
        let lin = &self.linear;
        let Some((_, batch)) = dims.split_last().filter(|(k, _)| **k == lin.k) else {
            candle_core::bail!("packed linear: input {dims:?}, want last dim {}", lin.k)
        };
        let out = lin.forward(x, self.add_bias);
        let od: Vec<usize> = batch.iter().copied().chain([lin.n]).collect();
        Ok((CpuStorage::F32(out), Shape::from(od)))
    }

    /// The input's gradient (the weight is a constant here: attribution, not training).
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let g: Vec<f32> = grad_res.contiguous()?.flatten_all()?.to_vec1()?;
        let grad = self.linear.backward_input(&g);
        Ok(Some(Tensor::from_vec(grad, arg.shape(), arg.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn input_gradient_equals_candles_autograd() {
        let dev = Device::Cpu;
        for &(m, k, n) in &[(7, 96, 384), (5, 17, 33), (49, 768, 3072)] {
            let x = candle_core::Var::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, n, &dev).unwrap();
            let r = Tensor::randn(0f32, 1.0, (m, n), &dev).unwrap();
            let flat = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
            let p = Arc::new(PackedLinear::new(&flat(&w), n, k, &flat(&b)));
            let op = PackedLinearOp {
                linear: p,
                add_bias: true,
            };
            let ours = x.apply_op1(op).unwrap();
            let g1 = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let theirs = x
                .matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            let g2 = (theirs * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let (a, b) = (g1.get(&x).unwrap(), g2.get(&x).unwrap());
            let d: f32 = (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(d <= 1e-4 * (n as f32).sqrt(), "{m}x{k}x{n}: {d}");
        }
    }

    /// Runs the AVX2 tile where the CPU has it and the portable tile elsewhere: both are held
    /// to candle's matmul.
    #[test]
    fn equals_candles_matmul() {
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
            // Every row count of a tile, and partial panels, at each SIMD level.
            (2, 24, 20),
            (3, 24, 20),
            (9, 24, 20),
            (10, 24, 20),
            (11, 24, 20),
            (12, 24, 20),
            (25, 24, 47),
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
                let op = PackedLinearOp {
                    linear: p.clone(),
                    add_bias: bias,
                };
                let got = x.apply_op1(op).unwrap();
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
