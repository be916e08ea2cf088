//! Sums over the rows of channels-last data (one value per channel): the bias and scale
//! gradients of the backward passes. candle's `sum` over leading axes walks the data with a
//! stride per element and was a tenth of a training step.
use super::storage::with_cpu_f32;
use crate::simd_dispatch;
use candle_core::{Result, Tensor};
use rayon::prelude::*;

/// `acc += row` for each `acc.len()`-long row of `x` (one row: a vector sum).
#[inline(always)]
fn add_rows_generic(acc: &mut [f32], x: &[f32]) {
    let c = acc.len();
    for row in x.chunks_exact(c) {
        for k in 0..c {
            acc[k] += row[k];
        }
    }
}

simd_dispatch!(pub(crate) fn add_rows => add_rows_generic(acc: &mut [f32], x: &[f32]));

/// `out[k] = Σ_r x[r·c + k]`, for `x` of whole rows of `c` values.
pub fn column_sums(x: &[f32], c: usize) -> Vec<f32> {
    let c = c.max(1);
    x.par_chunks(super::storage::task_len(c))
        .map(|chunk| {
            let mut acc = vec![0f32; c];
            add_rows(&mut acc, chunk);
            acc
        })
        .reduce(
            || vec![0f32; c],
            |mut a, b| {
                add_rows(&mut a, &b);
                a
            },
        )
}

/// `t` summed over every axis but the last: `[C]`.
pub fn sum_to_channels(t: &Tensor) -> Result<Tensor> {
    let c = t.dim(candle_core::D::Minus1)?;
    let t = t.contiguous()?;
    match with_cpu_f32(&t, |v| column_sums(v, c)) {
        Some(sums) => Tensor::from_vec(sums, c, t.device()),
        None => t.reshape(((), c))?.sum(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn equals_candles_sum() {
        for &(rows, c) in &[(1, 1), (7, 3), (1000, 96), (3, 40_000)] {
            let t = Tensor::randn(0f32, 1.0, (rows, c), &Device::Cpu).unwrap();
            let ours = sum_to_channels(&t).unwrap();
            let theirs = t.sum(0).unwrap();
            let d: f32 = (ours - theirs)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(d <= 1e-5 * (rows as f32).sqrt().max(1.0), "{rows}x{c}: {d}");
        }
    }
}
