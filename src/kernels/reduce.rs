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

/// The mean over H and W of a channels-last `[N, H, W, C]` map, `[N, C]`: the head's global
/// average pool. candle's mean over the middle axes walked the map with a stride per element
/// (1.4 % of ConvNeXt-atto's forward). CPU f32 maps that carry no gradient; `None` else.
pub fn spatial_mean(x: &Tensor) -> Result<Option<Tensor>> {
    let (n, h, w, c) = x.dims4()?;
    if !x.device().is_cpu() || x.dtype() != candle_core::DType::F32 || x.track_op() {
        return Ok(None);
    }
    let x = x.contiguous()?;
    let count = (h * w) as f32;
    let means = with_cpu_f32(&x, |v| {
        v.par_chunks((h * w * c).max(1))
            .flat_map_iter(|img| {
                let mut acc = vec![0f32; c];
                add_rows(&mut acc, img);
                acc.into_iter().map(move |s| s / count)
            })
            .collect::<Vec<f32>>()
    });
    means
        .map(|m| Tensor::from_vec(m, (n, c), x.device()))
        .transpose()
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
    fn spatial_mean_equals_candles_mean() {
        for &(n, h, w, c) in &[(1, 7, 7, 320), (3, 2, 5, 17), (2, 1, 1, 8)] {
            let t = Tensor::randn(0f32, 1.0, (n, h, w, c), &Device::Cpu).unwrap();
            let ours: Vec<f32> = spatial_mean(&t)
                .unwrap()
                .expect("a CPU f32 map")
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let theirs: Vec<f32> = t
                .mean((1, 2))
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for (a, b) in ours.iter().zip(&theirs) {
                assert!((a - b).abs() <= 1e-6, "{n}x{h}x{w}x{c}: {a} against {b}");
            }
            assert_eq!(ours.len(), theirs.len());
        }
        let var = candle_core::Var::zeros((1, 2, 2, 3), candle_core::DType::F32, &Device::Cpu);
        assert!(
            spatial_mean(var.unwrap().as_tensor()).unwrap().is_none(),
            "a gradient"
        );
    }

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
