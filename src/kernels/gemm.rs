//! `y = x Wᵀ + b` for inference with the weight packed once, at load, into the layout the
//! AVX2 and AVX-512 tiles stream: panels of 16 output columns, `[K][16]` each, zero-padded.
//!
//! The MLP's two Linear layers are most of a ConvNeXt's work. A general GEMM repacks the
//! weight on every call and cannot know it is constant; packing at load time, fusing the bias,
//! and a register-blocked tile (AVX2: 6×16, 12 accumulators, one broadcast of x and two loads
//! of the panel per step of K; AVX-512: up to 12×16, one register per panel row and tile row),
//! with the layers after the Linear applied to each finished tile ([`Epilogue`]), serve these
//! shapes better. The model uses it where the CPU has AVX2 and
//! FMA ([`available`]); elsewhere (other CPUs, devices, dtypes) it uses candle's matmul. A
//! portable version of the same tile runs where AVX2 is missing, so the packing and the tiling
//! are tested on every machine.
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
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
pub(super) fn mr() -> usize {
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
    /// f32 panels `[K][16]`; for bf16 without the CPU's bf16 instructions, of the weight
    /// rounded to bf16 (empty when `pairs` holds the weight).
    panels: Vec<f32>,
    /// bf16 panels for `vdpbf16ps`: `[K/2][16]` words, each the pair (k even, k odd) of one
    /// column (K padded to even with a zero); empty unless the CPU has AVX-512 BF16.
    pairs: Vec<u32>,
    precision: Precision,
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

/// What a packed Linear multiplies in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    F32,
    /// The weight and each input rounded to bf16 (round to nearest even), the products summed
    /// in f32: `vdpbf16ps` where the CPU has AVX-512 BF16, else the f32 kernel on the
    /// rounded values (emulated: the same products, summed in another order).
    Bf16,
}

/// Whether this CPU multiplies bf16 natively (AVX-512 BF16; `CONVNEXT_SIMD` below avx512
/// turns it off with the rest of AVX-512).
pub fn bf16_native() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx512() && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `v` rounded to the nearest bf16 (ties to even), as f32.
fn round_bf16(v: f32) -> f32 {
    half::bf16::from_f32(v).to_f32()
}

impl PackedLinear {
    /// `w` is row-major `[n, k]`; `bias` has `n` values.
    pub fn new(w: &[f32], n: usize, k: usize, bias: &[f32]) -> Self {
        Self::with_precision(w, n, k, bias, Precision::F32)
    }

    /// [`PackedLinear::new`], multiplying in `precision` (the bias stays f32).
    pub fn with_precision(
        w: &[f32],
        n: usize,
        k: usize,
        bias: &[f32],
        precision: Precision,
    ) -> Self {
        assert_eq!(w.len(), n * k);
        assert_eq!(bias.len(), n);
        let np = n.div_ceil(NR);
        let native = precision == Precision::Bf16 && bf16_native();
        let (mut panels, mut pairs) = (Vec::new(), Vec::new());
        if native {
            pairs = pack_pairs(w, n, k);
        } else {
            let round = precision == Precision::Bf16;
            panels = vec![0f32; np * k * NR];
            for p in 0..np {
                let panel = &mut panels[p * k * NR..(p + 1) * k * NR];
                for j in 0..NR.min(n - p * NR) {
                    let row = &w[(p * NR + j) * k..(p * NR + j + 1) * k];
                    for (kk, &v) in row.iter().enumerate() {
                        panel[kk * NR + j] = if round { round_bf16(v) } else { v };
                    }
                }
            }
        }
        let mut b = bias.to_vec();
        b.resize(np * NR, 0.0);
        Self {
            k,
            n,
            panels,
            pairs,
            precision,
            bias: b,
            transposed: std::sync::OnceLock::new(),
        }
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Whether bf16 is multiplied by the CPU's bf16 instructions (false: f32, or emulated).
    pub fn is_native_bf16(&self) -> bool {
        !self.pairs.is_empty()
    }

    /// The weight's value at output `nn`, input `kk`, as this layer multiplies it.
    fn weight_at(&self, nn: usize, kk: usize) -> f32 {
        let (p, j) = (nn / NR, nn % NR);
        if self.is_native_bf16() {
            let word = self.pairs[(p * self.k.div_ceil(2) + kk / 2) * NR + j];
            let bits = if kk.is_multiple_of(2) {
                word & 0xffff
            } else {
                word >> 16
            };
            return half::bf16::from_bits(bits as u16).to_f32();
        }
        self.panels[p * self.k * NR + kk * NR + j]
    }

    pub fn in_features(&self) -> usize {
        self.k
    }

    pub fn out_features(&self) -> usize {
        self.n
    }

    /// The panels of 16 output columns (the last zero-padded).
    pub(super) fn panel_count(&self) -> usize {
        self.n.div_ceil(NR)
    }

    /// `out[m, n] = x[m, k] · Wᵀ + b` (`with_bias` false leaves the bias out).
    pub fn forward(&self, x: &[f32], with_bias: bool) -> Vec<f32> {
        self.forward_with(x, with_bias, Epilogue::None)
    }

    /// [`forward`](Self::forward), then `epilogue` on each finished tile while it is still in
    /// the cache.
    ///
    /// The work is split into tasks of (a block of rows × a group of panels), so that a few
    /// rows (the late stages at batch 1) still spread over every thread. A task runs K in
    /// passes of at most [`KC`]: within a pass the panel's block (`KC × 16` floats) stays in L1
    /// while the row tiles stream past it, and the row block (at most [`A_BLOCK`] floats per
    /// pass) stays in L2 across the panels. The tiles read x where it lies (a broadcast per row
    /// and step of K, folded into the FMA), so x is never copied: repacking it cost a pass over
    /// x per task, as much as the multiplications where N is small (stage 0's fc2, N = 96).
    pub fn forward_with(&self, x: &[f32], with_bias: bool, epilogue: Epilogue) -> Vec<f32> {
        let (k, n) = (self.k, self.n);
        let m = x.len() / k.max(1);
        if m == 0 || n == 0 || k == 0 {
            return vec![0f32; m * n];
        }
        // bf16: the input rounded once per call (not per task), as the kernel reads it.
        let rounded;
        let a = match (self.precision, self.is_native_bf16()) {
            (Precision::F32, _) => Operand::F32(x),
            (Precision::Bf16, true) => {
                rounded = BfRows::new(x, k);
                Operand::Bf16(&rounded)
            }
            (Precision::Bf16, false) => {
                let r: Vec<f32> = x.par_iter().map(|&v| round_bf16(v)).collect();
                return self.forward_operand(Operand::F32(&r), m, with_bias, epilogue);
            }
        };
        self.forward_operand(a, m, with_bias, epilogue)
    }

    /// [`forward_with`](Self::forward_with) on an input already in bf16 (as
    /// [`Epilogue::GeluBf16`] writes it); for a layer with native bf16 pairs and an even K.
    pub fn forward_bf16_input(
        &self,
        x: &[half::bf16],
        with_bias: bool,
        epilogue: Epilogue,
    ) -> Option<Vec<f32>> {
        use half::slice::HalfFloatSliceExt;
        if !self.is_native_bf16() || !self.k.is_multiple_of(2) || self.k == 0 {
            return None;
        }
        let rows = BfRows {
            data: x.reinterpret_cast().into(),
            stride: self.k,
        };
        let m = x.len() / self.k;
        Some(self.forward_operand(Operand::Bf16(&rows), m, with_bias, epilogue))
    }

    /// [`forward_with`](Self::forward_with) on an input as the kernel reads it.
    fn forward_operand(
        &self,
        x: Operand,
        m: usize,
        with_bias: bool,
        epilogue: Epilogue,
    ) -> Vec<f32> {
        let (k, n) = (self.k, self.n);
        // Where the f32 tiles are only a step to the bf16 output, no f32 output is made at
        // all ([`Self::staging`]).
        let no_f32 = self.staging(&x, &epilogue) == Staging::ScratchOnly;
        // Not zeroed: the first pass over K writes every element (the tiles cover the rows,
        // the panels the columns), and zeroing a big output first cost a pass over memory.
        let mut out: Vec<f32> = Vec::with_capacity(if no_f32 { 0 } else { m * n });
        let np = n.div_ceil(NR);
        let mr = mr();
        let rows_per = (mr * (A_BLOCK / (k.min(KC) * mr).max(1)).max(1)).min(m);
        let threads = rayon::current_num_threads().max(1);
        // Equal tasks, as many as a multiple of the threads: the blocks of at most `rows_per`
        // rows had been cut from the top, leaving a short last block (stage 1's fc1 at batch
        // 1: 252, 252, 252 and 28 rows, so one thread did 504 rows and the other 280).
        let mut row_blocks = m.div_ceil(rows_per);
        if row_blocks >= 2 * threads {
            row_blocks = row_blocks.div_ceil(threads) * threads;
        }
        let panel_groups = if row_blocks >= 2 * threads {
            1
        } else {
            np.div_ceil(2).min(4 * threads / row_blocks.max(1)).max(1)
        };
        let out_ptr = SendPtr(out.as_mut_ptr());
        (0..row_blocks * panel_groups)
            .into_par_iter()
            .for_each(|t| {
                let (rb, pg) = (t / panel_groups, t % panel_groups);
                let rows = even_part(m, row_blocks, rb);
                // Groups of whole pairs of panels, for the two-panel tile.
                let pairs = even_part(np.div_ceil(2), panel_groups, pg);
                let panels = 2 * pairs.start..(2 * pairs.end).min(np);
                let out = out_ptr;
                self.task(&x, rows, panels, with_bias, &epilogue, out);
            });
        if no_f32 {
            return out;
        }
        // SAFETY: the tasks have written all m × n elements (see above) and finished.
        unsafe { out.set_len(m * n) };
        out
    }

    /// Where [`Self::task`] has the kernel write a tile. A GELU epilogue with K in one pass
    /// (the tile finished before the next) takes a scratch tile per task, whose rows lie
    /// together: the GELU runs over the whole tile in one call rather than one per row (each
    /// call loaded its 15 constants for two vectors of work). For fc1 in native bf16 handing
    /// fc2 its GELU in bf16 ([`Epilogue::GeluBf16`]), the f32 output, written and thrown
    /// away (4.8 MB per block at ConvNeXt-T's stage 0), is then not made at all.
    fn staging(&self, x: &Operand, epilogue: &Epilogue) -> Staging {
        let one_pass = match x {
            Operand::F32(_) => self.k <= KC,
            Operand::Bf16(_) => self.k <= 2 * KC,
        };
        match epilogue {
            Epilogue::GeluBf16 { .. } if one_pass && matches!(x, Operand::Bf16(_)) => {
                Staging::ScratchOnly
            }
            Epilogue::Gelu if one_pass => Staging::Scratch,
            _ => Staging::Direct,
        }
    }

    /// One task of [`forward_with`](Self::forward_with): `rows` × the columns of `panels`.
    pub(super) fn task(
        &self,
        x: &Operand,
        rows: std::ops::Range<usize>,
        panels: std::ops::Range<usize>,
        with_bias: bool,
        epilogue: &Epilogue,
        out: SendPtr,
    ) {
        let (k, n) = (self.k, self.n);
        let r0 = rows.start;
        let tiles = tile_rows(rows.len(), mr());
        // The largest tile (MR_512 rows of two panels), where the tiles go to scratch.
        let mut scratch = [0f32; MR_512 * 2 * NR];
        let staging = self.staging(x, epilogue);
        // bf16 pairs take half the bytes: twice the K in the same L1 footprint.
        let pass = match x {
            Operand::F32(_) => KC,
            Operand::Bf16(_) => 2 * KC,
        };
        for k0 in (0..k).step_by(pass) {
            let kc = pass.min(k - k0);
            let last = k0 + kc == k;
            let mut p = panels.start;
            while p < panels.end {
                // Two full panels at once where the AVX-512 tile has the registers for them.
                let width = match avx512() && p + 1 < panels.end && (p + 2) * NR <= n {
                    true => 2,
                    false => 1,
                };
                let cols = (width * NR).min(n - p * NR);
                let init = match (k0, with_bias) {
                    (0, true) => Init::Bias(&self.bias[p * NR..(p + width) * NR]),
                    (0, false) => Init::Zero,
                    _ => Init::Load,
                };
                for &(t0, h) in &tiles {
                    let r = r0 + t0;
                    // SAFETY: tasks write disjoint (row range × panel) regions of `out`, all
                    // inside it: rows r..r+h ≤ m, columns p·16..p·16+cols ≤ n (or the task's
                    // own scratch tile: h ≤ MR_512 rows of cols ≤ 32 values); `x` holds rows
                    // r..r+h of k values, of which this pass reads columns k0..k0+kc; each
                    // panel from offset k0·16 holds (k − k0)·16 ≥ kc·16 values. In bf16, rows
                    // hold `stride` ≥ k rounded up to even values (the pad a zero), so the
                    // pass's ⌈kc/2⌉ pairs from k0 lie inside, and each pair panel from word
                    // (k0/2)·16 holds (⌈k/2⌉ − k0/2)·16 ≥ ⌈kc/2⌉·16 words.
                    unsafe {
                        let dst = out.0.add(r * n + p * NR);
                        // A scratch tile's rows are as wide as the tile, so that the GELU
                        // over the whole tile has no spare columns to transform (the AVX2
                        // tile's 16 in rows of 32 did 80 % more GELUs than needed).
                        let (c, ldc) = match staging {
                            Staging::Direct => (dst, n),
                            _ => (scratch.as_mut_ptr(), width * NR),
                        };
                        match x {
                            Operand::F32(x) => {
                                let panel = |q: usize| self.panels[q * k * NR + k0 * NR..].as_ptr();
                                let a = (x.as_ptr().add(r * k + k0), k);
                                match width {
                                    2 => kernel_pair(
                                        h,
                                        kc,
                                        a,
                                        (panel(p), panel(p + 1)),
                                        init,
                                        c,
                                        ldc,
                                    ),
                                    _ => kernel(h, kc, a, panel(p), init, c, ldc, cols),
                                }
                            }
                            // k0 and KC are even: the pass starts on a pair.
                            Operand::Bf16(x) => {
                                let kp = k.div_ceil(2);
                                let panel =
                                    |q: usize| self.pairs[(q * kp + k0 / 2) * NR..].as_ptr();
                                let a = (x.data.as_ptr().add(r * x.stride + k0), x.stride);
                                let b = (panel(p), panel(p + width - 1));
                                kernel_bf16(h, kc.div_ceil(2), a, b, width, init, c, ldc, cols);
                            }
                        }
                        if last {
                            epilogue.apply((c, ldc), r * n + p * NR, (h, cols), n);
                            if staging == Staging::Scratch {
                                copy_tile((c, ldc), (dst, n), (h, cols));
                            }
                        }
                    }
                }
                p += width;
            }
        }
    }
}

/// Copies an `h × cols` tile from `src` to `dst` (rows `lds` and `ldd` apart). A full tile's
/// rows (32 values for the AVX-512 pair tile, 16 for the single-panel AVX2 one) are copied as
/// arrays, in vector moves, not by a `memmove` call per row.
///
/// # Safety
/// Both must hold `h` rows of `cols` values, their rows that far apart, and not overlap.
unsafe fn copy_tile(
    (src, lds): (*const f32, usize),
    (dst, ldd): (*mut f32, usize),
    (h, cols): (usize, usize),
) {
    for i in 0..h {
        let (s, d) = (src.add(i * lds), dst.add(i * ldd));
        match cols {
            c if c == 2 * NR => d
                .cast::<[f32; 2 * NR]>()
                .write(s.cast::<[f32; 2 * NR]>().read()),
            c if c == NR => d.cast::<[f32; NR]>().write(s.cast::<[f32; NR]>().read()),
            _ => std::ptr::copy_nonoverlapping(s, d, cols),
        }
    }
}

/// Where the kernel writes a task's tiles ([`PackedLinear::staging`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Staging {
    /// In the output.
    Direct,
    /// In a scratch tile, copied to the output after the epilogue.
    Scratch,
    /// In a scratch tile only: the epilogue writes the only output.
    ScratchOnly,
}

/// Part `i` of `0..n` cut into `parts` parts whose sizes differ by at most one.
fn even_part(n: usize, parts: usize, i: usize) -> std::ops::Range<usize> {
    let parts = parts.max(1);
    i * n / parts..(i + 1) * n / parts
}

/// K per pass of a task: a panel's `KC × 16` block (24 KB) stays in L1 across the row tiles.
const KC: usize = 384;
/// Floats of x per pass of a task's row block (192 KB): it stays in L2 across the panels.
const A_BLOCK: usize = 48 * 1024;

/// What a tile's accumulators start from.
#[derive(Clone, Copy)]
enum Init<'a> {
    Zero,
    /// The panel's 16 bias values.
    Bias(&'a [f32]),
    /// What the output already holds (a later pass over K).
    Load,
}

/// What happens to each finished output tile before the next: the layers that follow a Linear
/// in a ConvNeXt block, applied while the tile is in L1 instead of in a pass over memory.
pub enum Epilogue<'a> {
    None,
    /// The exact (erf) GELU: fc1 and the activation.
    Gelu,
    /// `residual + γ ⊙ out` (`γ` absent: `residual + out`): fc2, the layer scale and the
    /// block's add. `residual` is `[m, n]` and `gamma` `[n]`.
    ScaleAdd {
        gamma: Option<&'a [f32]>,
        residual: &'a [f32],
    },
    /// The GELU, then each finished tile written rounded to bf16 into `out` (`[m, n]`): fc1's
    /// output as fc2 reads it in bf16, with no pass over memory to convert it. On a bf16 input
    /// with K in one pass, only `out` is written and the f32 result is empty.
    GeluBf16 {
        out: SendPtr16,
    },
}

/// A bf16 output (bits), shared by the tasks of one `forward` as [`SendPtr`].
#[derive(Clone, Copy)]
pub struct SendPtr16(pub *mut u16);
// SAFETY: as for `SendPtr`: each task writes only its own tiles of the output.
unsafe impl Send for SendPtr16 {}
// SAFETY: as for `Send`.
unsafe impl Sync for SendPtr16 {}

impl SendPtr16 {
    /// The pointer `i` values on (a method, so that a closure captures the whole `Sync`
    /// struct, not its raw pointer field).
    ///
    /// # Safety
    /// As for `pointer::add`: `i` must stay inside the allocation.
    pub unsafe fn at(&self, i: usize) -> *mut u16 {
        self.0.add(i)
    }
}

impl Epilogue<'_> {
    /// Applies to the `h × cols` tile at `c` (rows `ldt` apart): element `offset` of the
    /// `[m, ldc]` output, in it or in a scratch tile.
    ///
    /// # Safety
    /// `c` must point at `h` rows of `cols` writable floats, `ldt` apart; `offset` and the
    /// tile must lie inside the `[m, ldc]` output; a `ScaleAdd` residual and a `GeluBf16`
    /// output have the output's shape.
    unsafe fn apply(
        &self,
        (c, ldt): (*mut f32, usize),
        offset: usize,
        (h, cols): (usize, usize),
        ldc: usize,
    ) {
        // A scratch tile (rows closer than the output's): its rows lie together, with
        // `ldt − cols` spare values each that are harmless to transform.
        let whole = h > 0 && ldt < ldc;
        if whole && matches!(self, Epilogue::Gelu | Epilogue::GeluBf16 { .. }) {
            let tile = std::slice::from_raw_parts_mut(c, (h - 1) * ldt + cols);
            crate::kernels::gelu::gelu_in_place(tile);
        }
        for i in 0..h {
            let row = std::slice::from_raw_parts_mut(c.add(i * ldt), cols);
            match self {
                Epilogue::None => return,
                Epilogue::Gelu if whole => return,
                Epilogue::Gelu => crate::kernels::gelu::gelu_in_place(row),
                Epilogue::GeluBf16 { out } => {
                    if !whole {
                        crate::kernels::gelu::gelu_in_place(row);
                    }
                    let dst = std::slice::from_raw_parts_mut(out.0.add(offset + i * ldc), cols);
                    to_bf16(dst, row);
                }
                Epilogue::ScaleAdd { gamma, residual } => {
                    let col = offset % ldc;
                    let res = &residual[offset + i * ldc..offset + i * ldc + cols];
                    let g = gamma.map(|g| &g[col..col + cols]);
                    scale_add(row, g, res);
                }
            }
        }
    }
}

/// `out = res + g ⊙ out` (`g` absent: `res + out`), rounded after the product as the separate
/// ops round it: the plain forward and the observed one (a layer at a time) agree to the bit.
fn scale_add(out: &mut [f32], g: Option<&[f32]>, res: &[f32]) {
    match g {
        Some(g) => {
            for ((o, &g), &r) in out.iter_mut().zip(g).zip(res) {
                *o = r + *o * g;
            }
        }
        None => {
            for (o, &r) in out.iter_mut().zip(res) {
                *o += r;
            }
        }
    }
}

/// A block of `m` rows cut into tiles of at most `mr`, as even as possible (49 rows at 12:
/// 10, 10, 10, 10, 9, not 12, 12, 12, 12, 1, whose last tile would run at a twelfth of the
/// rate): `(first row, rows)` of each.
fn tile_rows(m: usize, mr: usize) -> Vec<(usize, usize)> {
    let count = m.div_ceil(mr.max(1));
    let (base, extra) = (m / count.max(1), m % count.max(1));
    let mut start = 0;
    (0..count)
        .map(|i| {
            let h = base + usize::from(i < extra);
            let t = (start, h);
            start += h;
            t
        })
        .collect()
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
                        panel[nn * NR + jj] = self.weight_at(nn, kk);
                    }
                }
            });
        PackedLinear {
            k: n,
            n: k,
            panels,
            pairs: Vec::new(),
            precision: Precision::F32,
            bias: vec![0.0; np_t * NR],
            transposed: std::sync::OnceLock::new(),
        }
    }
}

/// The input as the tiles read it.
pub(super) enum Operand<'a> {
    F32(&'a [f32]),
    Bf16(&'a BfRows<'a>),
}

/// Rows of bf16 values (bits), `stride` apart: the input rounded for `vdpbf16ps`, each row
/// padded to an even length with a zero so that every pair of K is one 32-bit word.
pub(super) struct BfRows<'a> {
    pub(super) data: std::borrow::Cow<'a, [u16]>,
    pub(super) stride: usize,
}

impl BfRows<'_> {
    pub(super) fn new(x: &[f32], k: usize) -> Self {
        let stride = k.div_ceil(2) * 2;
        let m = x.len() / k.max(1);
        let mut data = vec![0u16; m * stride];
        // Chunks of rows, not single rows: a row of stage 0 is 96 values, too little work
        // for a task of its own.
        let rows_per = (4096 / stride.max(1)).max(1);
        data.par_chunks_mut(stride * rows_per)
            .zip(x.par_chunks(k * rows_per))
            .for_each(|(dst, src)| {
                for (d, s) in dst.chunks_mut(stride).zip(src.chunks(k)) {
                    to_bf16(&mut d[..s.len()], s);
                }
            });
        Self {
            data: data.into(),
            stride,
        }
    }
}

/// `dst[i]` = the bits of `src[i]` rounded to bf16 (ties to even), with `vcvtneps2bf16`
/// where the CPU has it (bf16 pairs are packed only where it does).
pub(crate) fn to_bf16(dst: &mut [u16], src: &[f32]) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if bf16_native() {
        // SAFETY: the CPU has AVX-512F and AVX-512 BF16.
        done = unsafe { x86::to_bf16(dst, src) };
    }
    for (d, &v) in dst[done..].iter_mut().zip(&src[done..]) {
        *d = half::bf16::from_f32(v).to_bits();
    }
}

/// `w` (`[n, k]`) as bf16 pair panels: word `(p·K/2 + t)·16 + j` holds column `16p + j`'s
/// values at `2t` (low half) and `2t + 1` (high half), zero past `n` and `k`.
fn pack_pairs(w: &[f32], n: usize, k: usize) -> Vec<u32> {
    let (np, kp) = (n.div_ceil(NR), k.div_ceil(2));
    let bits = |nn: usize, kk: usize| -> u32 {
        match kk < k {
            true => u32::from(half::bf16::from_f32(w[nn * k + kk]).to_bits()),
            false => 0,
        }
    };
    let mut pairs = vec![0u32; np * kp * NR];
    for nn in 0..n {
        let (p, j) = (nn / NR, nn % NR);
        for t in 0..kp {
            pairs[(p * kp + t) * NR + j] = bits(nn, 2 * t) | (bits(nn, 2 * t + 1) << 16);
        }
    }
    pairs
}

/// The output buffer, shared by the tasks of one `forward`.
#[derive(Clone, Copy)]
pub(super) struct SendPtr(pub(super) *mut f32);
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

/// `rows` (1–6, or 1–12 with AVX-512) rows × one panel of `c = init + a · panel`, with the
/// AVX-512 or AVX2 tile where the CPU has it and the portable one elsewhere.
///
/// # Safety
/// `a` must point at `rows` rows of `k` readable f32, `lda` apart (row `r`'s value `kk` at
/// `r·lda + kk`), `b` at `k × 16`, `c` at `rows` rows of `cols ≤ 16` writable (and, for
/// `Init::Load`, initialised) f32, `ldc` apart; a bias holds 16 values.
#[allow(clippy::too_many_arguments)]
unsafe fn kernel(
    rows: usize,
    k: usize,
    (a, lda): (*const f32, usize),
    b: *const f32,
    init: Init,
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
            (k, (a, lda), b, init, c, ldc, cols),
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
            (k, (a, lda), b, init, c, ldc, cols),
            [6, 5, 4, 3, 2]
        );
        return;
    }
    // SAFETY: `rows` rows of `k` values of `a`, `k × 16` of `b` and the `rows × cols` block of
    // `c` exist (the caller's promise), so the slices below stay inside them.
    let b = std::slice::from_raw_parts(b, k * NR);
    for r in 0..rows {
        let a = std::slice::from_raw_parts(a.add(r * lda), k);
        let dst = std::slice::from_raw_parts_mut(c.add(r * ldc), cols);
        tile_portable(a.iter().copied(), b, init, dst);
    }
}

/// `rows` (1–12) rows × two full panels (32 columns) of `c = init + a · panels`, on the
/// AVX-512 tile: 24 accumulators, two panel loads and one broadcast per row and step of K, so
/// a CPU with two 512-bit FMA units is not held up by loads. Each output is summed in the same
/// order as by [`kernel`].
///
/// # Safety
/// As for [`kernel`], with `cols` = 32, each panel pointer at `k × 16` floats and a bias of 32
/// values; the CPU must have AVX-512F.
unsafe fn kernel_pair(
    rows: usize,
    k: usize,
    (a, lda): (*const f32, usize),
    (b0, b1): (*const f32, *const f32),
    init: Init,
    c: *mut f32,
    ldc: usize,
) {
    #[cfg(target_arch = "x86_64")]
    tile_by_height!(
        rows,
        x86::tile512x2,
        (k, (a, lda), (b0, b1), init, c, ldc),
        [12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2]
    );
    #[cfg(not(target_arch = "x86_64"))]
    for (i, b) in [b0, b1].into_iter().enumerate() {
        let init = match init {
            Init::Bias(v) => Init::Bias(&v[i * NR..]),
            other => other,
        };
        kernel(rows, k, (a, lda), b, init, c.add(i * NR), ldc, NR);
    }
}

/// `rows` (1–12) rows × one or two panels of `c = init + a · panels` in bf16 pairs.
///
/// # Safety
/// The CPU must have AVX-512F and AVX-512 BF16 ([`bf16_native`]); `a` must point at `rows`
/// rows of `2·kp` readable bf16 values, `lda` apart; each panel at `kp × 16` words (the second
/// read only when `width` is 2); `c` at `rows` rows of `cols` writable (for `Init::Load`,
/// initialised) floats, `ldc` apart, with `cols` = 32 when `width` is 2; a bias of
/// `16·width` values.
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_bf16(
    rows: usize,
    kp: usize,
    a: (*const u16, usize),
    b: (*const u32, *const u32),
    width: usize,
    init: Init,
    c: *mut f32,
    ldc: usize,
    cols: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        tile_by_height!(
            rows,
            x86::tile_bf16,
            (kp, a, b, width == 2, init, c, ldc, cols),
            [12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2]
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // Pairs are packed only where the CPU has AVX-512 BF16 (`bf16_native`).
        let _ = (rows, kp, a, b, width, init, c, ldc, cols);
        unreachable!("bf16 pairs without AVX-512 BF16")
    }
}

/// One row (its `k` values in order) × one panel, in plain Rust: the reference the SIMD tiles
/// must match.
fn tile_portable(a: impl Iterator<Item = f32>, panel: &[f32], init: Init, out: &mut [f32]) {
    let mut acc = [0f32; NR];
    match init {
        Init::Zero => {}
        Init::Bias(b) => acc.copy_from_slice(&b[..NR]),
        Init::Load => acc[..out.len()].copy_from_slice(out),
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
    use super::Init;
    use std::arch::x86_64::*;

    /// `R` rows × 16 columns of `c = init + a · panel`; `a`'s rows are `lda` apart. Twelve
    /// accumulators, two panel loads and one broadcast per step: 15 of the 16 ymm registers.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; the pointers as for [`super::kernel`].
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile<const R: usize>(
        k: usize,
        (a, lda): (*const f32, usize),
        b: *const f32,
        init: Init,
        c: *mut f32,
        ldc: usize,
        cols: usize,
    ) {
        let (lo, hi) = match init {
            Init::Bias(bv) => (
                _mm256_loadu_ps(bv.as_ptr()),
                _mm256_loadu_ps(bv.as_ptr().add(8)),
            ),
            _ => (_mm256_setzero_ps(), _mm256_setzero_ps()),
        };
        let mut acc0 = [lo; R];
        let mut acc1 = [hi; R];
        if let Init::Load = init {
            for r in 0..R {
                let src = c.add(r * ldc);
                // A full tile loads straight from the output: the round trip through `tmp`,
                // a `memcpy` call per row, is only for the last panel's partial rows.
                if cols == 16 {
                    acc0[r] = _mm256_loadu_ps(src);
                    acc1[r] = _mm256_loadu_ps(src.add(8));
                } else {
                    let mut tmp = [0f32; 16];
                    std::ptr::copy_nonoverlapping(src, tmp.as_mut_ptr(), cols);
                    acc0[r] = _mm256_loadu_ps(tmp.as_ptr());
                    acc1[r] = _mm256_loadu_ps(tmp.as_ptr().add(8));
                }
            }
        }
        for kk in 0..k {
            let b0 = _mm256_loadu_ps(b.add(kk * 16));
            let b1 = _mm256_loadu_ps(b.add(kk * 16 + 8));
            for r in 0..R {
                let av = _mm256_set1_ps(*a.add(r * lda + kk));
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

    /// The lanes of a panel's first `cols` columns: the last panel of a width that is no
    /// multiple of 16 loads and stores only its columns.
    #[inline(always)]
    fn cols_mask(cols: usize) -> __mmask16 {
        match cols {
            16.. => 0xffff,
            _ => (1u16 << cols) - 1,
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
        (a, lda): (*const f32, usize),
        b: *const f32,
        init: Init,
        c: *mut f32,
        ldc: usize,
        cols: usize,
    ) {
        let mask = cols_mask(cols);
        let start = match init {
            Init::Bias(bv) => _mm512_loadu_ps(bv.as_ptr()),
            _ => _mm512_setzero_ps(),
        };
        let mut acc = [start; R];
        if let Init::Load = init {
            for (r, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_maskz_loadu_ps(mask, c.add(r * ldc));
            }
        }
        for kk in 0..k {
            let bv = _mm512_loadu_ps(b.add(kk * 16));
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*a.add(r * lda + kk));
                *acc = _mm512_fmadd_ps(av, bv, *acc);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            _mm512_mask_storeu_ps(c.add(r * ldc), mask, *acc);
        }
    }

    /// `R` rows × 32 columns (two panels) with AVX-512: the pair tile of
    /// [`super::kernel_pair`].
    ///
    /// # Safety
    /// The CPU must have AVX-512F; the pointers as for [`super::kernel_pair`].
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile512x2<const R: usize>(
        k: usize,
        (a, lda): (*const f32, usize),
        (b0, b1): (*const f32, *const f32),
        init: Init,
        c: *mut f32,
        ldc: usize,
    ) {
        let (s0, s1) = match init {
            Init::Bias(bv) => (
                _mm512_loadu_ps(bv.as_ptr()),
                _mm512_loadu_ps(bv.as_ptr().add(16)),
            ),
            _ => (_mm512_setzero_ps(), _mm512_setzero_ps()),
        };
        let mut acc0 = [s0; R];
        let mut acc1 = [s1; R];
        if let Init::Load = init {
            for r in 0..R {
                acc0[r] = _mm512_loadu_ps(c.add(r * ldc));
                acc1[r] = _mm512_loadu_ps(c.add(r * ldc + 16));
            }
        }
        for kk in 0..k {
            let v0 = _mm512_loadu_ps(b0.add(kk * 16));
            let v1 = _mm512_loadu_ps(b1.add(kk * 16));
            for r in 0..R {
                let av = _mm512_set1_ps(*a.add(r * lda + kk));
                acc0[r] = _mm512_fmadd_ps(av, v0, acc0[r]);
                acc1[r] = _mm512_fmadd_ps(av, v1, acc1[r]);
            }
        }
        for r in 0..R {
            _mm512_storeu_ps(c.add(r * ldc), acc0[r]);
            _mm512_storeu_ps(c.add(r * ldc + 16), acc1[r]);
        }
    }

    /// Rounds the leading multiple of 16 of `src` into `dst` (as [`super::to_bf16`]) and
    /// returns how many it did.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX-512 BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn to_bf16(dst: &mut [u16], src: &[f32]) -> usize {
        let n = dst.len().min(src.len()) / 16 * 16;
        for i in (0..n).step_by(16) {
            let v = _mm512_cvtneps_pbh(_mm512_loadu_ps(src.as_ptr().add(i)));
            _mm256_storeu_si256(
                dst.as_mut_ptr().add(i).cast(),
                std::mem::transmute::<__m256bh, __m256i>(v),
            );
        }
        n
    }

    /// `R` rows × one panel (`pair` false; the last `cols` ≤ 16 columns) or two (32 columns)
    /// with `vdpbf16ps`: per pair of K, one broadcast of the row's two bf16 values and a
    /// 32-multiply dot per panel, twice the work of an f32 FMA per instruction.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX-512 BF16; the pointers as for
    /// [`super::kernel_bf16`].
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn tile_bf16<const R: usize>(
        kp: usize,
        (a, lda): (*const u16, usize),
        (b0, b1): (*const u32, *const u32),
        pair: bool,
        init: Init,
        c: *mut f32,
        ldc: usize,
        cols: usize,
    ) {
        let mask = cols_mask(cols);
        let (s0, s1) = match init {
            Init::Bias(bv) if pair => (
                _mm512_loadu_ps(bv.as_ptr()),
                _mm512_loadu_ps(bv.as_ptr().add(16)),
            ),
            Init::Bias(bv) => (_mm512_loadu_ps(bv.as_ptr()), _mm512_setzero_ps()),
            _ => (_mm512_setzero_ps(), _mm512_setzero_ps()),
        };
        let mut acc0 = [s0; R];
        let mut acc1 = [s1; R];
        if let Init::Load = init {
            for r in 0..R {
                acc0[r] = _mm512_maskz_loadu_ps(mask, c.add(r * ldc));
                if pair {
                    acc1[r] = _mm512_loadu_ps(c.add(r * ldc + 16));
                }
            }
        }
        let panel = |b: *const u32, t: usize| -> __m512bh {
            // SAFETY (of the caller's promise): the panel holds kp × 16 words.
            std::mem::transmute(_mm512_loadu_si512(b.add(t * 16).cast()))
        };
        for t in 0..kp {
            let v0 = panel(b0, t);
            if pair {
                let v1 = panel(b1, t);
                for r in 0..R {
                    let word = a.add(r * lda + 2 * t).cast::<i32>().read_unaligned();
                    let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(word));
                    acc0[r] = _mm512_dpbf16_ps(acc0[r], av, v0);
                    acc1[r] = _mm512_dpbf16_ps(acc1[r], av, v1);
                }
            } else {
                for (r, acc) in acc0.iter_mut().enumerate() {
                    let word = a.add(r * lda + 2 * t).cast::<i32>().read_unaligned();
                    let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(word));
                    *acc = _mm512_dpbf16_ps(*acc, av, v0);
                }
            }
        }
        for r in 0..R {
            _mm512_mask_storeu_ps(c.add(r * ldc), mask, acc0[r]);
            if pair {
                _mm512_storeu_ps(c.add(r * ldc + 16), acc1[r]);
            }
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
        let shape = out_shape(&self.linear, l)?;
        let out = self.linear.forward(x, self.add_bias);
        Ok((CpuStorage::F32(out), shape))
    }

    /// The input's gradient (the weight is a constant here: attribution, not training).
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let g: Vec<f32> = grad_res.contiguous()?.flatten_all()?.to_vec1()?;
        let grad = self.linear.backward_input(&g);
        Ok(Some(Tensor::from_vec(grad, arg.shape(), arg.device())?))
    }
}

/// A stride-k conv's matmul and the LayerNorm after it (ConvNeXt's stem) as one candle op:
/// each output row normalised in place, with no second output to allocate and fill.
/// Inference only, as [`PackedLinearGeluOp`].
pub struct PackedLinearNormOp {
    pub linear: Arc<PackedLinear>,
    /// The norm's weight and bias (`[N]` each) and ε.
    pub norm: (Vec<f32>, Vec<f32>, f32),
}

impl CustomOp1 for PackedLinearNormOp {
    fn name(&self) -> &'static str {
        "packed-linear-layer-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let shape = out_shape(&self.linear, l)?;
        let (w, b, eps) = (&self.norm.0, &self.norm.1, self.norm.2);
        if w.len() != self.linear.n || b.len() != self.linear.n {
            candle_core::bail!("packed linear + norm: a norm of {} for {shape:?}", w.len())
        }
        let mut out = forward_storage(&self.linear, s, l, Epilogue::None)?;
        out.par_chunks_mut(super::storage::task_len(self.linear.n))
            .for_each(|rows| super::layer_norm::normalise_rows(rows, w, b, eps));
        Ok((CpuStorage::F32(out), shape))
    }
}

/// fc1 and the GELU after it as one candle op (`gelu(x Wᵀ + b)`, the GELU applied to each
/// tile in the cache). Inference only: it has no backward, and the block takes it only where
/// no gradient flows.
pub struct PackedLinearGeluOp {
    pub linear: Arc<PackedLinear>,
    /// Hand back bf16 (for a next Linear in bf16 that reads it as it is) rather than f32.
    pub bf16_out: bool,
    /// ConvNeXt V2's GRN after the GELU, applied to the output in place (f32 out only; the
    /// input `[N, H, W, K]`).
    pub grn: Option<Arc<super::grn::GrnValues>>,
}

impl CustomOp1 for PackedLinearGeluOp {
    fn name(&self) -> &'static str {
        "packed-linear-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let shape = out_shape(&self.linear, l)?;
        if let Some(grn) = &self.grn {
            let (_, h, w, _) = l.shape().dims4()?;
            let mut out = forward_storage(&self.linear, s, l, Epilogue::Gelu)?;
            super::grn::grn_in_place(&mut out, h * w, grn);
            return Ok((CpuStorage::F32(out), shape));
        }
        if !self.bf16_out {
            let out = forward_storage(&self.linear, s, l, Epilogue::Gelu)?;
            return Ok((CpuStorage::F32(out), shape));
        }
        let len = shape.elem_count();
        let mut half: Vec<half::bf16> = Vec::with_capacity(len);
        let out = SendPtr16(half.as_mut_ptr().cast());
        forward_storage(&self.linear, s, l, Epilogue::GeluBf16 { out })?;
        // SAFETY: the epilogue has written every tile of the output, all `len` values.
        unsafe { half.set_len(len) };
        Ok((CpuStorage::BF16(half), shape))
    }
}

/// fc2, the layer scale and the block's residual add as one candle op on `(x, residual)`:
/// `residual + γ ⊙ (x Wᵀ + b)` (`γ` absent: `residual + x Wᵀ + b`). Inference only, as
/// [`PackedLinearGeluOp`].
pub struct PackedLinearScaleAddOp {
    pub linear: Arc<PackedLinear>,
    pub gamma: Option<Arc<Vec<f32>>>,
}

impl CustomOp2 for PackedLinearScaleAddOp {
    fn name(&self) -> &'static str {
        "packed-linear-scale-add"
    }

    fn cpu_fwd(
        &self,
        s: &CpuStorage,
        l: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let residual = super::storage::contiguous_f32(rs, rl, "packed linear + scale + add")?;
        let shape = out_shape(&self.linear, l)?;
        let gamma = self.gamma.as_deref().map(|g| g.as_slice());
        if residual.len() != shape.elem_count() || gamma.is_some_and(|g| g.len() != self.linear.n) {
            candle_core::bail!(
                "packed linear + scale + add: residual {:?} or scale for output {shape:?}",
                rl.shape()
            )
        }
        let epilogue = Epilogue::ScaleAdd { gamma, residual };
        let out = forward_storage(&self.linear, s, l, epilogue)?;
        Ok((CpuStorage::F32(out), shape))
    }
}

/// `linear` (with its bias) and `epilogue` on a contiguous input: f32, or bf16 for a layer
/// that multiplies in native bf16 ([`PackedLinear::forward_bf16_input`]).
fn forward_storage(
    linear: &PackedLinear,
    s: &CpuStorage,
    l: &Layout,
    epilogue: Epilogue,
) -> Result<Vec<f32>> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::BF16(v), Some((a, b))) => linear
            .forward_bf16_input(&v[a..b], true, epilogue)
            .ok_or_else(|| {
                candle_core::Error::Msg(
                    "packed linear: bf16 input for a layer not in native bf16".into(),
                )
            }),
        _ => {
            let x = super::storage::contiguous_f32(s, l, "packed linear")?;
            Ok(linear.forward_with(x, true, epilogue))
        }
    }
}

/// The output shape of the packed Linear on an input of layout `l` (`[..., K]` → `[..., N]`).
fn out_shape(lin: &PackedLinear, l: &Layout) -> Result<Shape> {
    let dims = l.shape().dims();
    let Some((_, batch)) = dims.split_last().filter(|(k, _)| **k == lin.k) else {
        candle_core::bail!("packed linear: input {dims:?}, want last dim {}", lin.k)
    };
    Ok(Shape::from(
        batch.iter().copied().chain([lin.n]).collect::<Vec<_>>(),
    ))
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

    /// The fused epilogues against candle's own ops: `gelu_erf(x Wᵀ + b)` and
    /// `r + γ ⊙ (x Wᵀ + b)` (and without γ), over one pass of K and several, and partial panels.
    #[test]
    fn fused_epilogues_equal_candles_ops() {
        let dev = Device::Cpu;
        // (10, 200, 40): one K pass, so GELU's tiles go through scratch, with a part panel.
        for &(m, k, n) in &[
            (7, 96, 384),
            (10, 200, 40),
            (49, 768, 40),
            (13, 1000, 33),
            (3, 5, 16),
        ] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 0.05, (n, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, n, &dev).unwrap();
            let r = Tensor::randn(0f32, 1.0, (m, n), &dev).unwrap();
            let g = Tensor::randn(0f32, 1.0, n, &dev).unwrap();
            let flat = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
            let lin = Arc::new(PackedLinear::new(&flat(&w), n, k, &flat(&b)));
            let y = x
                .matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            let max_diff = |a: &Tensor, b: &Tensor| -> f32 {
                let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
                d.max(0).unwrap().to_scalar().unwrap()
            };
            let gelu = PackedLinearGeluOp {
                linear: lin.clone(),
                bf16_out: false,
                grn: None,
            };
            let got = x.apply_op1(gelu).unwrap();
            let d = max_diff(&got, &y.gelu_erf().unwrap());
            assert!(d <= 1e-4 * (k as f32).sqrt(), "gelu {m}x{k}x{n}: {d}");
            for gamma in [Some(&g), None] {
                let op = PackedLinearScaleAddOp {
                    linear: lin.clone(),
                    gamma: gamma.map(|g| Arc::new(flat(g))),
                };
                let got = x.apply_op2(&r, op).unwrap();
                let scaled = match gamma {
                    Some(g) => y.broadcast_mul(g).unwrap(),
                    None => y.clone(),
                };
                let d = max_diff(&got, &(scaled + &r).unwrap());
                assert!(d <= 1e-4 * (k as f32).sqrt(), "scale-add {m}x{k}x{n}: {d}");
            }
        }
    }

    /// A random `[n, k]` weight and `[n]` bias, and the layer packed from them.
    fn random_linear(k: usize, n: usize) -> (Tensor, Tensor, Arc<PackedLinear>) {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.2, (n, k), &dev).unwrap();
        let b = Tensor::randn(0f32, 0.1, n, &dev).unwrap();
        let wv = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let lin = PackedLinear::new(&wv, n, k, &b.to_vec1::<f32>().unwrap());
        (w, b, Arc::new(lin))
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().abs().unwrap();
        d.max_all().unwrap().to_scalar().unwrap()
    }

    /// The stem's matmul and LayerNorm as one op: the norm kernel on candle's matmul.
    #[test]
    fn matmul_then_norm_in_place_equals_the_separate_ops() {
        let dev = Device::Cpu;
        let (m, k, n) = (301, 48, 40);
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
        let (w, b, linear) = random_linear(k, n);
        let (nw, nb) = (
            Tensor::randn(1f32, 0.2, n, &dev).unwrap(),
            Tensor::randn(0f32, 0.2, n, &dev).unwrap(),
        );
        let norm = (nw.to_vec1().unwrap(), nb.to_vec1().unwrap(), 1e-6);
        let got = x.apply_op1(PackedLinearNormOp { linear, norm }).unwrap();
        let y = x
            .matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        let want = crate::kernels::layer_norm::layer_norm(&y, &nw, &nb, 1e-6).unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(d < 1e-4, "{d}");
    }

    /// fc1, the GELU and V2's GRN as one op: the GRN op on candle's matmul and GELU.
    #[test]
    fn gelu_then_grn_in_place_equals_the_separate_ops() {
        let dev = Device::Cpu;
        let (k, n) = (40, 160);
        let x = Tensor::randn(0f32, 1.0, (2, 7, 9, k), &dev).unwrap();
        let (w, b, linear) = random_linear(k, n);
        let (gamma, beta) = (
            Tensor::randn(0f32, 0.5, n, &dev).unwrap(),
            Tensor::randn(0f32, 0.5, n, &dev).unwrap(),
        );
        let grn = crate::kernels::grn::GrnValues {
            gamma: gamma.to_vec1().unwrap(),
            beta: beta.to_vec1().unwrap(),
            eps: 1e-6,
        };
        let op = PackedLinearGeluOp {
            linear,
            bf16_out: false,
            grn: Some(Arc::new(grn)),
        };
        let got = x.apply_op1(op).unwrap();
        let y = x.broadcast_matmul(&w.t().unwrap()).unwrap();
        let h = y.broadcast_add(&b).unwrap().gelu_erf().unwrap();
        let want = crate::kernels::grn::grn(&h, &gamma, &beta, 1e-6).unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(d < 1e-4, "{d}");
    }

    /// bf16 (native where the CPU has AVX-512 BF16, else emulated) equals candle's f32 matmul
    /// of the bf16-rounded input and weight: the products are exact in f32, only the order of
    /// the sums differs. Covers one and two panels, partial panels, odd K, several passes of
    /// K, every tile height, and the GELU and scale-add epilogues.
    #[test]
    fn bf16_equals_the_matmul_of_rounded_values() {
        let dev = Device::Cpu;
        let round = |t: &Tensor| {
            t.to_dtype(candle_core::DType::BF16)
                .unwrap()
                .to_dtype(candle_core::DType::F32)
                .unwrap()
        };
        let flat = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
        let max_diff = |a: &Tensor, b: &Tensor| -> f32 {
            let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
            d.max(0).unwrap().to_scalar().unwrap()
        };
        let shapes = [
            (7, 96, 384),
            (49, 1000, 33),
            (13, 801, 20),
            (12, 24, 47),
            (11, 7, 16),
            (5, 3, 32),
            (100, 160, 40),
        ];
        for &(m, k, n) in &shapes {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 0.05, (n, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, n, &dev).unwrap();
            let r = Tensor::randn(0f32, 1.0, (m, n), &dev).unwrap();
            let lin = Arc::new(PackedLinear::with_precision(
                &flat(&w),
                n,
                k,
                &flat(&b),
                Precision::Bf16,
            ));
            assert_eq!(lin.is_native_bf16(), bf16_native());
            let y = round(&x)
                .matmul(&round(&w).t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            let tol = 1e-5 * (k as f32).sqrt() * 4.0;
            let op = PackedLinearOp {
                linear: lin.clone(),
                add_bias: true,
            };
            let d = max_diff(&x.apply_op1(op).unwrap(), &y);
            assert!(d <= tol, "{m}x{k}x{n}: {d}");
            let gelu = PackedLinearGeluOp {
                linear: lin.clone(),
                bf16_out: false,
                grn: None,
            };
            let d = max_diff(&x.apply_op1(gelu).unwrap(), &y.gelu_erf().unwrap());
            assert!(d <= tol, "gelu {m}x{k}x{n}: {d}");
            let op = PackedLinearScaleAddOp {
                linear: lin.clone(),
                gamma: None,
            };
            let d = max_diff(&x.apply_op2(&r, op).unwrap(), &(&y + &r).unwrap());
            assert!(d <= tol, "scale-add {m}x{k}x{n}: {d}");
            // And it is a bf16 result, not the f32 one: over enough terms the rounding shows.
            let exact = x
                .matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            if k >= 96 {
                assert!(
                    max_diff(&y, &exact) > tol,
                    "{m}x{k}x{n}: rounding invisible"
                );
            }
        }
    }

    #[test]
    fn tiles_cover_the_rows_evenly() {
        assert_eq!(
            tile_rows(49, 12),
            [(0, 10), (10, 10), (20, 10), (30, 10), (40, 9)]
        );
        assert_eq!(tile_rows(12, 12), [(0, 12)]);
        assert_eq!(tile_rows(1, 6), [(0, 1)]);
        for m in 1..100 {
            let t = tile_rows(m, 12);
            assert_eq!(t.iter().map(|t| t.1).sum::<usize>(), m);
            assert!(t.iter().all(|h| h.1 <= 12 && h.1 + 1 >= t[0].1));
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
            // K in several passes, the last one short; balanced tiles of 49 and 13 rows.
            (13, 800, 20),
            (49, 1000, 33),
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
