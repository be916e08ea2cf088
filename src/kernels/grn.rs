//! Global response normalisation (ConvNeXt V2) over channels-last maps, fused: one pass for
//! each image's per-channel L2 norms, one for the scale. Composed from candle ops, GRN took
//! about as long as the rest of a V2 block (a square, a strided sum, a square root, a mean,
//! two divisions, three broadcasts, each a pass over the map or an allocation).
//!
//! `Gx = ‖x_c‖₂` over H·W, `Nx = Gx / (mean_c Gx + ε)`, `y = γ·(x·Nx) + β + x`, computed as
//! `y = x·(1 + γ·Nx) + β`. Inference only: a tracked input (a gradient asked of the network)
//! takes the composed path, which has candle's backward.
use super::storage::{contiguous_f32, task_len};
use crate::simd_dispatch;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Whether [`grn`] runs the fused kernel for these tensors (CPU, f32, untracked).
pub fn has_kernel(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && !x.track_op()
}

/// GRN of a channels-last `[N, H, W, C]` map with `γ`, `β` of `[C]`.
pub fn grn(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    let (_, _, _, c) = x.dims4()?;
    if gamma.dims1()? != c || beta.dims1()? != c {
        candle_core::bail!(
            "grn: γ {:?} and β {:?} for input {:?}",
            gamma.dims(),
            beta.dims(),
            x.dims()
        )
    }
    x.contiguous()?.apply_op3(
        &gamma.to_dtype(DType::F32)?.contiguous()?,
        &beta.to_dtype(DType::F32)?.contiguous()?,
        Grn { eps: eps as f32 },
    )
}

struct Grn {
    eps: f32,
}

#[inline(always)]
fn sum_squares_generic(acc: &mut [f32], x: &[f32]) {
    let c = acc.len();
    for row in x.chunks_exact(c) {
        for k in 0..c {
            acc[k] += row[k] * row[k];
        }
    }
}

simd_dispatch!(pub(super) fn sum_squares => sum_squares_generic(acc: &mut [f32], x: &[f32]));

#[inline(always)]
fn scale_shift_in_place_generic(v: &mut [f32], s: &[f32], b: &[f32]) {
    let c = s.len();
    for row in v.chunks_exact_mut(c) {
        for k in 0..c {
            row[k] = row[k] * s[k] + b[k];
        }
    }
}

simd_dispatch!(pub(super) fn scale_shift_in_place => scale_shift_in_place_generic(v: &mut [f32], s: &[f32], b: &[f32]));

/// GRN's parameters as plain values, for the fused ops (fc1's, and the MLP's in blocks).
#[derive(Debug)]
pub struct GrnValues {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub eps: f32,
}

/// GRN in place on a channels-last map of images of `hw` positions of `gamma.len()` channels
/// (`v` a buffer nobody else holds: fc1's fresh output). No output to allocate and fill, and
/// the scale pass reads and writes the same cache lines.
pub fn grn_in_place(v: &mut [f32], hw: usize, g: &GrnValues) {
    normalise_in_place(v, hw, &g.gamma, &g.beta, g.eps);
}

fn normalise_in_place(v: &mut [f32], hw: usize, gamma: &[f32], beta: &[f32], eps: f32) {
    let c = gamma.len();
    for img in v.chunks_mut((hw * c).max(1)) {
        let s = scale_of(img, gamma, eps);
        img.par_chunks_mut(task_len(c))
            .for_each(|part| scale_shift_in_place(part, &s, beta));
    }
}

/// One image (`[H·W, C]`): its per-channel scale `1 + γ·Nx`.
fn scale_of(img: &[f32], gamma: &[f32], eps: f32) -> Vec<f32> {
    let c = gamma.len();
    // Each part's sums, then added in order: the same bits whatever the threads did (a
    // parallel reduce adds in the order its splits happened to take).
    let parts: Vec<Vec<f32>> = img
        .par_chunks(task_len(c))
        .map(|part| {
            let mut acc = vec![0f32; c];
            sum_squares(&mut acc, part);
            acc
        })
        .collect();
    scale_from_sums(&parts, gamma, eps)
}

/// The rows of each part whose squares [`scale_of`] sums on its own, from an image's first
/// row on: a fused caller that sums the same parts gets the same bits.
pub(super) fn part_rows(c: usize) -> usize {
    task_len(c) / c.max(1)
}

/// The per-channel scale `1 + γ·Nx` from each part's sums of squares, added in order.
pub(super) fn scale_from_sums(parts: &[Vec<f32>], gamma: &[f32], eps: f32) -> Vec<f32> {
    let c = gamma.len();
    let mut ss = vec![0f32; c];
    for p in parts {
        ss.iter_mut().zip(p).for_each(|(x, y)| *x += y);
    }
    let gx: Vec<f32> = ss.iter().map(|v| v.sqrt()).collect();
    let mean = gx.iter().sum::<f32>() / c.max(1) as f32;
    gx.iter()
        .zip(gamma)
        .map(|(g, w)| 1.0 + w * (g / (mean + eps)))
        .collect()
}

/// The op's output: a copy of `x`, normalised in place (the same arithmetic as the fused op's).
fn apply(x: &[f32], hw: usize, gamma: &[f32], beta: &[f32], eps: f32) -> Vec<f32> {
    let mut out = x.to_vec();
    normalise_in_place(&mut out, hw, gamma, beta, eps);
    out
}

impl CustomOp3 for Grn {
    fn name(&self) -> &'static str {
        "grn"
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
        let (_, h, w, _) = l1.shape().dims4()?;
        let data = |s, l| contiguous_f32(s, l, "grn");
        let (x, g, b) = (data(s1, l1)?, data(s2, l2)?, data(s3, l3)?);
        let out = apply(x, h * w, g, b, self.eps);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    const EPS: f64 = 1e-6;

    /// GRN from candle's ops, as ConvNeXt V2 writes it.
    fn composed(x: &Tensor, gamma: &Tensor, beta: &Tensor) -> Tensor {
        let gx = x
            .sqr()
            .unwrap()
            .sum_keepdim((1, 2))
            .unwrap()
            .sqrt()
            .unwrap();
        let mean = (gx.mean_keepdim(D::Minus1).unwrap() + EPS).unwrap();
        let nx = gx.broadcast_div(&mean).unwrap();
        let scaled = x.broadcast_mul(&nx).unwrap().broadcast_mul(gamma).unwrap();
        (x + scaled).unwrap().broadcast_add(beta).unwrap()
    }

    #[test]
    fn the_fused_kernel_equals_candles_composed_ops() {
        let dev = Device::Cpu;
        for (n, h, w, c) in [(1, 7, 7, 40), (2, 5, 3, 19), (3, 1, 1, 8), (1, 14, 14, 384)] {
            let x = (Tensor::randn(0f32, 1.0, (n, h, w, c), &dev).unwrap() + 0.3).unwrap();
            let gamma = Tensor::randn(0f32, 0.5, c, &dev).unwrap();
            let beta = Tensor::randn(0f32, 0.5, c, &dev).unwrap();
            let want = composed(&x, &gamma, &beta);
            let got = grn(&x, &gamma, &beta, EPS).unwrap();
            let scale = want
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let d = (got - &want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d <= 1e-5 * scale, "{n}x{h}x{w}x{c}: {d} of {scale}");
        }
    }

    #[test]
    fn in_place_equals_the_op() {
        let dev = Device::Cpu;
        let (n, h, w, c) = (2, 9, 7, 40);
        let x = (Tensor::randn(0f32, 1.0, (n, h, w, c), &dev).unwrap() + 0.3).unwrap();
        let gamma = Tensor::randn(0f32, 0.5, c, &dev).unwrap();
        let beta = Tensor::randn(0f32, 0.5, c, &dev).unwrap();
        let want: Vec<f32> = grn(&x, &gamma, &beta, EPS)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let mut got: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let values = GrnValues {
            gamma: gamma.to_vec1().unwrap(),
            beta: beta.to_vec1().unwrap(),
            eps: EPS as f32,
        };
        grn_in_place(&mut got, h * w, &values);
        assert_eq!(got, want);
    }

    #[test]
    fn a_shape_mismatch_is_an_error() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 2, 2, 4), DType::F32, &dev).unwrap();
        let v3 = Tensor::zeros(3, DType::F32, &dev).unwrap();
        assert!(grn(&x, &v3, &v3, 1e-6).is_err());
    }
}
