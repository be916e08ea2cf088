//! A ConvNeXt block's MLP (fc1, GELU, GRN for V2, fc2, layer scale, residual add) one block of
//! rows at a time: fc1's output, four times as wide as the block's input, stays in the core's
//! cache for fc2 to read, instead of going out to memory and coming back.
//!
//! Layer by layer, fc1 wrote its whole output (4.8 MB at ConvNeXt-T's stage 0, 38 MB at batch
//! 8: more than a core's L2, and at batch 8 more than the L3) and fc2 read it back. Here each
//! task runs fc1 and then fc2 on its own rows, with [`PackedLinear::task`] and the same
//! epilogues as the layer-by-layer ops, so the two agree to the bit. V2's GRN needs the norms
//! of a whole image before it can scale a row, so there fc1's output goes to memory once (its
//! sums taken while each block is in the cache) and comes back once, block by block, for the
//! scale and fc2, where layer by layer it made three more passes. `cargo bench --bench gemm`
//! times both ways on the stages where the forward takes the blocks.
use super::gemm::{mr, BfRows, Epilogue, Operand, PackedLinear, SendPtr, SendPtr16};
use super::grn::{part_rows, scale_from_sums, scale_shift_in_place, sum_squares, GrnValues};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape};
use rayon::prelude::*;
use std::cell::RefCell;
use std::ops::Range;
use std::sync::Arc;

/// fc1's output per row block, in floats (256 KB): it stays in L2 while fc2's panels stream
/// past it, with room for the block's input and the panels.
const HIDDEN_BLOCK: usize = 64 * 1024;

/// The most weights of fc1 and fc2 together for which blocks pay: every block reads both
/// weights again, from L2 where they fit beside the block's rows, else from L3. In f32, at
/// ConvNeXt-T's stage 2 (1.2 M weights, 4.7 MB) the fused forward of V2-T measured 9 % slower
/// than layer by layer; at stages 0 and 1 (0.07 and 0.3 M) and all of ConvNeXt-atto's it was
/// as fast or faster (atto 3–8 %, T at batch 8 4 %). Counted in weights, not bytes: in bf16 a
/// weight takes half the bytes, but the products run twice as fast, and ConvNeXt-B's stage 1
/// in bf16 (0.5 M weights, 1 MB) ran 5 % slower in blocks.
const WEIGHT_BUDGET: usize = 5 << 16;

/// The block's input to fc1, as the layer norm before it hands it over.
pub enum MlpInput<'a> {
    F32(&'a [f32]),
    /// For fc1 and fc2 in native bf16 (their pairs packed, K even).
    Bf16(&'a [half::bf16]),
}

/// fc1's output of a task, kept by each thread from task to task (warm in its L2).
#[derive(Default)]
struct Hidden {
    f32: Vec<f32>,
    bf16: Vec<u16>,
}

thread_local! {
    static HIDDEN: RefCell<Hidden> = const { RefCell::new(Hidden { f32: Vec::new(), bf16: Vec::new() }) };
}

/// How many blocks `m` rows of a hidden width `hidden` are cut into, or `None` where the
/// rows are too few to give every thread two blocks: there the layer-by-layer GEMMs, which
/// also split the columns among the threads, keep both cores busy (stage 3 at batch 1).
fn blocks(m: usize, hidden: usize) -> Option<usize> {
    let threads = rayon::current_num_threads().max(1);
    let rows = HIDDEN_BLOCK / hidden.max(1) / mr() * mr();
    if rows < 2 * mr() {
        return None;
    }
    let count = m.div_ceil(rows).div_ceil(threads) * threads;
    (count >= 2 * threads).then_some(count)
}

/// Whether [`forward`] (`grn_hw` absent) or [`forward_grn`] (GRN over images of `grn_hw`
/// positions) runs fc1 then fc2 on `m` rows of `x` (bf16 or f32): the layers fit
/// ([`layers_fit`]) and the rows make blocks enough.
pub fn applies(
    (fc1, fc2): (&PackedLinear, &PackedLinear),
    m: usize,
    bf16_input: bool,
    grn_hw: Option<usize>,
) -> bool {
    let h = fc1.out_features();
    let rows = match grn_hw {
        None => blocks(m, h).is_some(),
        Some(hw) => !bf16_input && grn_blocks(m, h, hw).is_some(),
    };
    layers_fit((fc1, fc2), bf16_input) && rows
}

/// The layers and the input all f32, or all native bf16 with even widths; fc2 taking fc1's
/// output; as many weights as [`WEIGHT_BUDGET`] at most.
fn layers_fit((fc1, fc2): (&PackedLinear, &PackedLinear), bf16_input: bool) -> bool {
    use super::gemm::Precision;
    let (c, h) = (fc1.in_features(), fc1.out_features());
    let kinds = match bf16_input {
        true => fc1.is_native_bf16() && fc2.is_native_bf16() && c % 2 == 0 && h % 2 == 0,
        false => fc1.precision() == Precision::F32 && fc2.precision() == Precision::F32,
    };
    let shapes = fc2.in_features() == h && c > 0 && fc2.out_features() > 0;
    kinds && shapes && 2 * c * h <= WEIGHT_BUDGET
}

/// `residual + γ ⊙ (gelu(x W₁ᵀ + b₁) W₂ᵀ + b₂)` (`γ` absent: without the scale), or `None`
/// where [`applies`] says no. `x` holds `m × fc1.in_features()` values; `residual` must hold
/// `m × fc2.out_features()`, and `gamma` (present) `fc2.out_features()`.
pub fn forward(
    fc1: &PackedLinear,
    fc2: &PackedLinear,
    x: MlpInput,
    gamma: Option<&[f32]>,
    residual: &[f32],
) -> Option<Vec<f32>> {
    let (c, h, n) = (fc1.in_features(), fc1.out_features(), fc2.out_features());
    let (len, bf16) = match x {
        MlpInput::F32(x) => (x.len(), false),
        MlpInput::Bf16(x) => (x.len(), true),
    };
    let m = len / c.max(1);
    let gamma_len = gamma.is_some_and(|g| g.len() != n);
    if !layers_fit((fc1, fc2), bf16) || residual.len() != m * n || len != m * c || gamma_len {
        return None;
    }
    let count = blocks(m, h)?;
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    let out_ptr = SendPtr(out.as_mut_ptr());
    (0..count).into_par_iter().for_each(|b| {
        let rows = b * m / count..(b + 1) * m / count;
        let residual = &residual[rows.start * n..rows.end * n];
        let base = out_ptr;
        // SAFETY: the blocks' rows are disjoint and inside the m × n output.
        let out = SendPtr(unsafe { base.0.add(rows.start * n) });
        let x = match x {
            MlpInput::F32(x) => MlpInput::F32(&x[rows.start * c..rows.end * c]),
            MlpInput::Bf16(x) => MlpInput::Bf16(&x[rows.start * c..rows.end * c]),
        };
        let args = (gamma, residual);
        HIDDEN.with(|cell| match cell.try_borrow_mut() {
            Ok(mut hidden) => block(fc1, fc2, x, rows.len(), args, &mut hidden, out),
            // Only if a task ever ran inside another on this thread: a buffer of its own.
            Err(_) => block(fc1, fc2, x, rows.len(), args, &mut Hidden::default(), out),
        });
    });
    // SAFETY: the blocks cover the m rows, and fc2's tasks write every column of their rows.
    unsafe { out.set_len(m * n) };
    Some(out)
}

/// One block of `rows` rows: fc1 and its GELU into `hidden`, then fc2 and the scale and add
/// into `out` (the block's first output row).
fn block(
    fc1: &PackedLinear,
    fc2: &PackedLinear,
    x: MlpInput,
    rows: usize,
    (gamma, residual): (Option<&[f32]>, &[f32]),
    hidden: &mut Hidden,
    out: SendPtr,
) {
    let (c, h) = (fc1.in_features(), fc1.out_features());
    let len = rows * h;
    hidden.f32.clear();
    hidden.f32.reserve(len);
    let f32_ptr = SendPtr(hidden.f32.as_mut_ptr());
    let add = Epilogue::ScaleAdd { gamma, residual };
    match x {
        MlpInput::F32(x) => {
            let a = Operand::F32(x);
            fc1.task(
                &a,
                0..rows,
                0..fc1.panel_count(),
                true,
                &Epilogue::Gelu,
                f32_ptr,
            );
            // SAFETY: fc1's task wrote every value of its `rows` × `h` output.
            unsafe { hidden.f32.set_len(len) };
            let a = Operand::F32(&hidden.f32);
            fc2.task(&a, 0..rows, 0..fc2.panel_count(), true, &add, out);
        }
        MlpInput::Bf16(x) => {
            use half::slice::HalfFloatSliceExt;
            hidden.bf16.clear();
            hidden.bf16.reserve(len);
            let gelu = Epilogue::GeluBf16 {
                out: SendPtr16(hidden.bf16.as_mut_ptr()),
            };
            let rows_in = BfRows {
                data: HalfFloatSliceExt::reinterpret_cast(x).into(),
                stride: c,
            };
            // fc1 writes its f32 output to `hidden.f32` only where K takes more than one
            // pass; the GELU's bf16 values always go to `hidden.bf16`.
            fc1.task(
                &Operand::Bf16(&rows_in),
                0..rows,
                0..fc1.panel_count(),
                true,
                &gelu,
                f32_ptr,
            );
            // SAFETY: the epilogue wrote every value of fc1's `rows` × `h` output in bf16.
            unsafe { hidden.bf16.set_len(len) };
            let rows_h = BfRows {
                data: hidden.bf16.as_slice().into(),
                stride: h,
            };
            fc2.task(
                &Operand::Bf16(&rows_h),
                0..rows,
                0..fc2.panel_count(),
                true,
                &add,
                out,
            );
        }
    }
}

/// ConvNeXt V2's GRN between the GELU and fc2, for [`forward_grn`]: its values, and the
/// positions per image (`H·W`) over which it takes its norms.
pub struct GrnStep<'a> {
    pub values: &'a GrnValues,
    pub hw: usize,
}

/// Rows of one image cut into blocks of whole GRN parts ([`part_rows`]): `(image, rows)` of
/// each, or `None` where the blocks would be too short or too few (as [`blocks`]).
fn grn_blocks(m: usize, h: usize, hw: usize) -> Option<Vec<(usize, Range<usize>)>> {
    let q = part_rows(h);
    let per_block = HIDDEN_BLOCK / h.max(1) / q;
    if hw == 0 || !m.is_multiple_of(hw) || per_block * q < 2 * mr() {
        return None;
    }
    let parts = hw.div_ceil(q);
    // A multiple of the threads, as in [`blocks`] (V2-T's stage 2 in 5 blocks left a thread
    // idle for a fifth of it). The blocks only choose which task sums a part, not the order
    // in which the parts' sums are added.
    let threads = rayon::current_num_threads().max(1);
    let count = parts.div_ceil(per_block).div_ceil(threads) * threads;
    let count = count.min(parts);
    let all: Vec<_> = (0..m / hw)
        .flat_map(|img| {
            (0..count).map(move |b| {
                let (p0, p1) = (b * parts / count, (b + 1) * parts / count);
                (img, img * hw + p0 * q..img * hw + (p1 * q).min(hw))
            })
        })
        .collect();
    (all.len() >= 2 * threads).then_some(all)
}

/// [`forward`] with GRN between the GELU and fc2, on f32 layers and input: fc1 and the GELU
/// for every block, each block's sums of squares taken while its rows are in the cache; then
/// per block GRN's scale in place and fc2 (GRN needs the norms of the whole image before it
/// can scale any row). fc1's output goes to memory once, rather than once for fc1 and twice
/// for GRN's two passes over it. The sums are GRN's parts, added in its order: the values are
/// those of the layer-by-layer ops to the bit. `None` where the blocks do not apply.
pub fn forward_grn(
    (fc1, fc2): (&PackedLinear, &PackedLinear),
    x: &[f32],
    grn: GrnStep,
    gamma: Option<&[f32]>,
    residual: &[f32],
) -> Option<Vec<f32>> {
    let (c, h, n) = (fc1.in_features(), fc1.out_features(), fc2.out_features());
    let m = x.len() / c.max(1);
    let shapes = grn.values.gamma.len() == h && grn.values.beta.len() == h;
    let gamma_len = gamma.is_some_and(|g| g.len() != n);
    if !layers_fit((fc1, fc2), false)
        || !shapes
        || residual.len() != m * n
        || x.len() != m * c
        || gamma_len
    {
        return None;
    }
    let blocks = grn_blocks(m, h, grn.hw)?;
    let mut hidden: Vec<f32> = Vec::with_capacity(m * h);
    let hp = SendPtr(hidden.as_mut_ptr());
    let q = part_rows(h);
    let sums: Vec<Vec<Vec<f32>>> = blocks
        .par_iter()
        .map(|(_, r)| {
            let base = hp;
            // SAFETY: the blocks' rows are disjoint and inside the m × h buffer.
            let dst = SendPtr(unsafe { base.0.add(r.start * h) });
            let a = Operand::F32(&x[r.start * c..r.end * c]);
            fc1.task(
                &a,
                0..r.len(),
                0..fc1.panel_count(),
                true,
                &Epilogue::Gelu,
                dst,
            );
            // SAFETY: fc1's task has written these rows, which no other task touches.
            let rows = unsafe { std::slice::from_raw_parts(dst.0, r.len() * h) };
            rows.chunks(q * h)
                .map(|part| {
                    let mut acc = vec![0f32; h];
                    sum_squares(&mut acc, part);
                    acc
                })
                .collect()
        })
        .collect();
    // SAFETY: the blocks cover the m rows, and fc1's tasks wrote every column of theirs.
    unsafe { hidden.set_len(m * h) };
    let scales: Vec<Vec<f32>> = (0..m / grn.hw)
        .map(|img| {
            let parts: Vec<Vec<f32>> = (blocks.iter().zip(&sums))
                .filter(|((i, _), _)| *i == img)
                .flat_map(|(_, s)| s.iter().cloned())
                .collect();
            scale_from_sums(&parts, &grn.values.gamma, grn.values.eps)
        })
        .collect();
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    let out_ptr = SendPtr(out.as_mut_ptr());
    blocks.par_iter().for_each(|(img, r)| {
        let (base, dst) = (hp, out_ptr);
        // SAFETY: the blocks' rows are disjoint and inside both buffers.
        let (rows, dst) = unsafe {
            let rows = std::slice::from_raw_parts_mut(base.0.add(r.start * h), r.len() * h);
            (rows, SendPtr(dst.0.add(r.start * n)))
        };
        scale_shift_in_place(rows, &scales[*img], &grn.values.beta);
        let residual = &residual[r.start * n..r.end * n];
        let add = Epilogue::ScaleAdd { gamma, residual };
        fc2.task(
            &Operand::F32(rows),
            0..r.len(),
            0..fc2.panel_count(),
            true,
            &add,
            dst,
        );
    });
    // SAFETY: as for `hidden`, by fc2's tasks.
    unsafe { out.set_len(m * n) };
    Some(out)
}

/// [`forward`] as a candle op on `(x, residual)`: x `[..., C]` f32 (or bf16 for layers in
/// native bf16), the residual f32 of the output's shape. Where [`forward`] declines, the two
/// layer-by-layer ops' kernels run instead (same values). Inference only: no backward.
pub struct PackedMlpOp {
    pub fc1: Arc<PackedLinear>,
    pub fc2: Arc<PackedLinear>,
    pub gamma: Option<Arc<Vec<f32>>>,
    /// ConvNeXt V2's GRN after the GELU (f32 only; the input then `[N, H, W, C]`).
    pub grn: Option<Arc<GrnValues>>,
}

impl CustomOp2 for PackedMlpOp {
    fn name(&self) -> &'static str {
        "packed-mlp"
    }

    fn cpu_fwd(
        &self,
        s: &CpuStorage,
        l: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let residual = super::storage::contiguous_f32(rs, rl, "packed MLP")?;
        let (c, n) = (self.fc1.in_features(), self.fc2.out_features());
        let gamma = self.gamma.as_deref().map(|g| g.as_slice());
        let rows = l.shape().elem_count() / c.max(1);
        if l.shape().dims().last() != Some(&c)
            || residual.len() != rows * n
            || gamma.is_some_and(|g| g.len() != n)
        {
            candle_core::bail!(
                "packed MLP: input {:?}, residual {:?}",
                l.shape(),
                rl.shape()
            )
        }
        let x = match (s, l.contiguous_offsets()) {
            (CpuStorage::BF16(v), Some((a, b))) => MlpInput::Bf16(&v[a..b]),
            _ => MlpInput::F32(super::storage::contiguous_f32(s, l, "packed MLP")?),
        };
        let out = match (&self.grn, x) {
            (Some(values), MlpInput::F32(x)) => {
                let (_, hh, ww, _) = l.shape().dims4()?;
                let grn = GrnStep {
                    values,
                    hw: hh * ww,
                };
                forward_grn((&self.fc1, &self.fc2), x, grn, gamma, residual)
            }
            (Some(_), MlpInput::Bf16(_)) => None,
            (None, x) => forward(&self.fc1, &self.fc2, x, gamma, residual),
        };
        let Some(out) = out else {
            candle_core::bail!("packed MLP: no fused MLP for input {:?}", l.shape())
        };
        Ok((CpuStorage::F32(out), rl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemm::Precision;

    fn values(len: usize, seed: usize, scale: f32) -> Vec<f32> {
        (0..len)
            .map(|i| (((i + seed) * 7919) % 1000) as f32 / 1000.0 - 0.45)
            .map(|v| v * scale)
            .collect()
    }

    /// fc1 (`c` → `4c`) and fc2 (`4c` → `c`) in `precision`, a layer scale and an input.
    fn mlp(
        c: usize,
        m: usize,
        precision: Precision,
    ) -> (PackedLinear, PackedLinear, Vec<f32>, Vec<f32>) {
        let h = 4 * c;
        let fc1 = PackedLinear::with_precision(
            &values(h * c, 1, 0.2),
            h,
            c,
            &values(h, 2, 1.0),
            precision,
        );
        let fc2 = PackedLinear::with_precision(
            &values(c * h, 3, 0.1),
            c,
            h,
            &values(c, 4, 1.0),
            precision,
        );
        (fc1, fc2, values(c, 5, 1.0), values(m * c, 6, 2.0))
    }

    /// Rows enough for two blocks per thread, whatever the threads.
    fn rows_for(c: usize) -> usize {
        let rows = HIDDEN_BLOCK / (4 * c) / mr() * mr();
        2 * rayon::current_num_threads().max(1) * rows + 7
    }

    #[test]
    fn f32_equals_the_layer_by_layer_ops() {
        for c in [24, 40] {
            let m = rows_for(c);
            let (fc1, fc2, g, x) = mlp(c, m, Precision::F32);
            let h = fc1.forward_with(&x, true, Epilogue::Gelu);
            let add = Epilogue::ScaleAdd {
                gamma: Some(&g),
                residual: &x,
            };
            let want = fc2.forward_with(&h, true, add);
            let got = forward(&fc1, &fc2, MlpInput::F32(&x), Some(&g), &x).expect("fused");
            assert_eq!(got, want, "c = {c}");
            let got = forward(&fc1, &fc2, MlpInput::F32(&x), None, &x).expect("fused");
            let want = fc2.forward_with(
                &h,
                true,
                Epilogue::ScaleAdd {
                    gamma: None,
                    residual: &x,
                },
            );
            assert_eq!(got, want, "c = {c}, no scale");
        }
    }

    #[test]
    fn bf16_equals_the_layer_by_layer_ops_or_declines() {
        let c = 32;
        let m = rows_for(c);
        let (fc1, fc2, g, x) = mlp(c, m, Precision::Bf16);
        let x16: Vec<half::bf16> = x.iter().map(|&v| half::bf16::from_f32(v)).collect();
        let got = forward(&fc1, &fc2, MlpInput::Bf16(&x16), Some(&g), &x);
        if !crate::kernels::gemm::bf16_native() {
            // Emulated bf16 has no bf16 input to take: the block runs layer by layer.
            assert!(got.is_none());
            return;
        }
        let mut h16 = vec![half::bf16::ZERO; m * 4 * c];
        let out = crate::kernels::gemm::SendPtr16(h16.as_mut_ptr().cast());
        fc1.forward_bf16_input(&x16, true, Epilogue::GeluBf16 { out })
            .expect("native");
        let add = Epilogue::ScaleAdd {
            gamma: Some(&g),
            residual: &x,
        };
        let want = fc2.forward_bf16_input(&h16, true, add).expect("native");
        assert_eq!(got.expect("fused"), want);
    }

    #[test]
    fn with_grn_equals_the_layer_by_layer_ops() {
        let c = 24;
        let h = 4 * c;
        // Two images whose rows are not a whole number of GRN's parts.
        let hw = 41 * 39;
        let (fc1, fc2, g, x) = mlp(c, 2 * hw, Precision::F32);
        let grn = GrnValues {
            gamma: values(h, 7, 1.0),
            beta: values(h, 8, 0.5),
            eps: 1e-6,
        };
        let mut hidden = fc1.forward_with(&x, true, Epilogue::Gelu);
        crate::kernels::grn::grn_in_place(&mut hidden, hw, &grn);
        let want = fc2.forward_with(
            &hidden,
            true,
            Epilogue::ScaleAdd {
                gamma: Some(&g),
                residual: &x,
            },
        );
        let step = GrnStep { values: &grn, hw };
        let got = forward_grn((&fc1, &fc2), &x, step, Some(&g), &x).expect("fused");
        assert_eq!(got, want);
    }

    #[test]
    fn declines_too_few_rows_and_mismatched_shapes() {
        let c = 24;
        let (fc1, fc2, g, x) = mlp(c, 49, Precision::F32);
        // Stage 3 at batch 1: the layer-by-layer GEMMs split the columns instead.
        assert!(forward(&fc1, &fc2, MlpInput::F32(&x), Some(&g), &x).is_none());
        let m = rows_for(c);
        let (fc1, fc2, g, x) = mlp(c, m, Precision::F32);
        let short = &x[..x.len() - c];
        assert!(forward(&fc1, &fc2, MlpInput::F32(&x), Some(&g), short).is_none());
        assert!(forward(&fc1, &fc2, MlpInput::F32(&x), Some(&g[1..]), &x).is_none());
        // Weights over the budget (ConvNeXt-T's stage 2), with rows enough.
        let (fc1_big, fc2_big, g_big, x_big) = mlp(384, rows_for(384), Precision::F32);
        let big = MlpInput::F32(&x_big);
        assert!(forward(&fc1_big, &fc2_big, big, Some(&g_big), &x_big).is_none());
        // fc1 in f32, fc2 in bf16: no one kind of input fits both.
        let (_, fc2_bf16, _, _) = mlp(c, 1, Precision::Bf16);
        assert!(forward(&fc1, &fc2_bf16, MlpInput::F32(&x), Some(&g), &x).is_none());
        let grn = GrnValues {
            gamma: vec![1.0; 4 * c],
            beta: vec![0.0; 4 * c],
            eps: 1e-6,
        };
        // An input one value past a whole number of rows (the residual and the images fit
        // the rows): no row is left out silently.
        let rows = m - 1;
        let (ragged, residual) = (&x[..rows * c + 1], &x[..rows * c]);
        let step = GrnStep {
            values: &grn,
            hw: rows,
        };
        assert!(forward_grn((&fc1, &fc2), &x[..rows * c], step, Some(&g), residual).is_some());
        let step = GrnStep {
            values: &grn,
            hw: rows,
        };
        assert!(forward_grn((&fc1, &fc2), ragged, step, Some(&g), residual).is_none());
        assert!(forward(&fc1, &fc2, MlpInput::F32(ragged), Some(&g), residual).is_none());
        // Rows that are not a whole number of images.
        let step = GrnStep {
            values: &grn,
            hw: m - 1,
        };
        assert!(forward_grn((&fc1, &fc2), &x, step, Some(&g), &x).is_none());
    }
}
