//! Non-overlapping k×k patches of a channels-last map in one gather, for the stem's and the
//! downsamples' stride-k convolutions (done as a matmul over the patches).
//!
//! candle's path is a reshape and a permute made contiguous: two strided copies at the stem
//! (its input is an NCHW tensor seen as NHWC), one per downsample, each walking the source
//! element by element. Here each output row is written once, whole channel runs copied at a time.
use candle_core::{CpuStorage, DType, Result, Storage, Tensor};
use rayon::prelude::*;

/// A LayerNorm over each pixel's channels: weight, bias and ε.
#[derive(Clone, Copy)]
pub struct PixelNorm<'a> {
    pub weight: &'a [f32],
    pub bias: &'a [f32],
    pub eps: f32,
}

/// `[N, H, W, C]` (any strides) → `[N, H/k, W/k, k·k·C]` in (kh, kw, c) order, on CPU f32
/// tensors that carry no gradient; `None` for any other tensor, and where `k` does not divide
/// the map (the caller's path then reports it).
pub fn patchify(x: &Tensor, k: usize) -> Result<Option<Tensor>> {
    patchify_normed(x, k, None)
}

/// [`patchify`] with each pixel's channels normalised on the way (`norm`, `C` values each):
/// a downsample's LayerNorm and its patches in one pass, as each output row is still in the
/// cache, rather than a normalised copy of the whole map first.
pub fn patchify_normed(x: &Tensor, k: usize, norm: Option<PixelNorm>) -> Result<Option<Tensor>> {
    let (n, h, w, c) = x.dims4()?;
    if !x.device().is_cpu() || x.dtype() != DType::F32 || x.track_op() {
        return Ok(None);
    }
    if k == 0 || h % k != 0 || w % k != 0 {
        return Ok(None);
    }
    let (oh, ow, row) = (h / k, w / k, k * k * c);
    let out = {
        let (storage, layout) = x.storage_and_layout();
        let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
            return Ok(None);
        };
        let stride: [usize; 4] = layout
            .stride()
            .try_into()
            .map_err(candle_core::Error::wrap)?;
        let src = Source {
            data,
            start: layout.start_offset(),
            stride,
            c,
        };
        if norm.is_some_and(|m| m.weight.len() != c || m.bias.len() != c) {
            return Ok(None);
        }
        let mut out = vec![0f32; n * oh * ow * row];
        // One task per output row (an image's row of patches).
        out.par_chunks_mut((ow * row).max(1))
            .enumerate()
            .for_each(|(t, dst)| {
                src.patch_row(dst, (t / oh, t % oh), k);
                if let Some(m) = norm {
                    super::layer_norm::normalise_rows(dst, m.weight, m.bias, m.eps);
                }
            });
        out
    };
    Ok(Some(Tensor::from_vec(out, (n, oh, ow, row), x.device())?))
}

/// A strided `[N, H, W, C]` view of a storage's values.
struct Source<'a> {
    data: &'a [f32],
    start: usize,
    stride: [usize; 4],
    c: usize,
}

impl Source<'_> {
    /// Row `i` of image `b`'s patches into `dst` (`W/k` patches of `k·k·C` values).
    fn patch_row(&self, dst: &mut [f32], (b, i): (usize, usize), k: usize) {
        let [sn, sh, sw, sc] = self.stride;
        let (c, row) = (self.c, k * k * self.c);
        for kh in 0..k {
            let line = self.start + b * sn + (i * k + kh) * sh;
            // Contiguous channels: a run of C values per pixel. Otherwise (the stem's NCHW
            // input) each channel's line is read in order and its values spread C apart.
            if sc == 1 {
                for (j, patch) in dst.chunks_exact_mut(row.max(1)).enumerate() {
                    for kw in 0..k {
                        let at = line + (j * k + kw) * sw;
                        let to = (kh * k + kw) * c;
                        patch[to..to + c].copy_from_slice(&self.data[at..at + c]);
                    }
                }
                continue;
            }
            for ch in 0..c {
                for (j, patch) in dst.chunks_exact_mut(row.max(1)).enumerate() {
                    for kw in 0..k {
                        patch[(kh * k + kw) * c + ch] =
                            self.data[line + ch * sc + (j * k + kw) * sw];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// candle's reshape, permute and copy: the reference.
    fn by_ops(x: &Tensor, k: usize) -> Tensor {
        let (n, h, w, c) = x.dims4().unwrap();
        x.reshape((n, h / k, k, w / k, k, c))
            .unwrap()
            .permute((0, 1, 3, 2, 4, 5))
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((n, h / k, w / k, k * k * c))
            .unwrap()
    }

    #[test]
    fn equals_candles_ops_on_contiguous_and_strided_maps() {
        let dev = Device::Cpu;
        // Channels-last as the downsamples see it, and an NCHW tensor seen as NHWC (the stem).
        let nhwc = Tensor::randn(0f32, 1.0, (2, 8, 12, 5), &dev).unwrap();
        let nchw = Tensor::randn(0f32, 1.0, (2, 3, 8, 12), &dev).unwrap();
        let seen = nchw.permute((0, 2, 3, 1)).unwrap();
        // A view that starts inside its storage.
        let offset = Tensor::randn(0f32, 1.0, (3, 8, 12, 5), &dev)
            .unwrap()
            .narrow(0, 1, 2)
            .unwrap();
        for (x, k) in [(&nhwc, 2), (&nhwc, 4), (&seen, 4), (&seen, 2), (&offset, 2)] {
            let ours = patchify(x, k).unwrap().expect("a CPU f32 map");
            let theirs = by_ops(x, k);
            assert_eq!(ours.dims(), theirs.dims());
            let (a, b): (Vec<f32>, Vec<f32>) = (
                ours.flatten_all().unwrap().to_vec1().unwrap(),
                theirs.flatten_all().unwrap().to_vec1().unwrap(),
            );
            assert_eq!(a, b, "k = {k}, dims {:?}", x.dims());
        }
    }

    #[test]
    fn the_normed_patches_are_the_patches_of_the_normed_map() {
        let dev = Device::Cpu;
        let c = 40;
        let x = Tensor::randn(0f32, 1.0, (2, 8, 6, c), &dev).unwrap();
        let w: Vec<f32> = (0..c).map(|i| 0.5 + i as f32 / 40.0).collect();
        let b: Vec<f32> = (0..c).map(|i| i as f32 / 80.0 - 0.2).collect();
        let norm = PixelNorm {
            weight: &w,
            bias: &b,
            eps: 1e-6,
        };
        let ours = patchify_normed(&x, 2, Some(norm)).unwrap().unwrap();
        let (wt, bt) = (
            Tensor::new(&w[..], &dev).unwrap(),
            Tensor::new(&b[..], &dev).unwrap(),
        );
        let normed = crate::kernels::layer_norm::layer_norm(&x, &wt, &bt, 1e-6).unwrap();
        let theirs = by_ops(&normed, 2);
        let (a, b): (Vec<f32>, Vec<f32>) = (
            ours.flatten_all().unwrap().to_vec1().unwrap(),
            theirs.flatten_all().unwrap().to_vec1().unwrap(),
        );
        assert_eq!(a, b);
    }

    #[test]
    fn leaves_what_it_does_not_take_to_the_caller() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 6, 6, 2), DType::F32, &dev).unwrap();
        assert!(patchify(&x, 4).unwrap().is_none(), "4 does not divide 6");
        let half = x.to_dtype(DType::F16).unwrap();
        assert!(patchify(&half, 2).unwrap().is_none());
        let var = candle_core::Var::zeros((1, 4, 4, 2), DType::F32, &dev).unwrap();
        assert!(
            patchify(var.as_tensor(), 2).unwrap().is_none(),
            "a gradient"
        );
    }
}
