//! `(x + b) · γ` over channels-last rows: fc2's bias and the block's layer scale in one pass,
//! with a backward pass. Composed from candle ops, training paid for two broadcasts forward and
//! two more, each with a strided sum over the rows, backward. And `x · γ` alone, the layer
//! scale of a forward observed layer by layer (the profile, Grad-CAM): candle's broadcast
//! multiply ran it at about 2 GB/s, 9–13 % of ConvNeXt-atto's profile.
use super::reduce::column_sums;
use super::storage::{contiguous_f32, with_cpu_f32};
use crate::simd_dispatch;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// `(x + b) · γ` with `b` and `γ` (`[C]`) broadcast along the last axis of `x`. CPU f32 uses the
/// fused kernel; other devices and dtypes use candle's ops.
pub fn bias_scale(x: &Tensor, b: &Tensor, gamma: &Tensor) -> Result<Tensor> {
    let c = x.dim(candle_core::D::Minus1)?;
    if b.dims1()? != c || gamma.dims1()? != c {
        candle_core::bail!(
            "bias_scale: bias {:?} and scale {:?} for input {:?}",
            b.dims(),
            gamma.dims(),
            x.dims()
        )
    }
    let fused = [x, b, gamma]
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32);
    if fused {
        x.contiguous()?
            .apply_op3(&b.contiguous()?, &gamma.contiguous()?, BiasScale)
    } else {
        x.broadcast_add(b)?.broadcast_mul(gamma)
    }
}

/// `x · γ` with `γ` (`[C]`) broadcast along the last axis of `x`: the same products as
/// candle's `broadcast_mul`, bit for bit. CPU f32 uses the kernel; other devices and dtypes
/// use candle's op.
pub fn scale(x: &Tensor, gamma: &Tensor) -> Result<Tensor> {
    let c = x.dim(candle_core::D::Minus1)?;
    if gamma.dims1()? != c {
        candle_core::bail!("scale: scale {:?} for input {:?}", gamma.dims(), x.dims())
    }
    let cpu = [x, gamma]
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32);
    match cpu {
        true => x.contiguous()?.apply_op2(&gamma.contiguous()?, Scale),
        false => x.broadcast_mul(gamma),
    }
}

struct BiasScale;

struct Scale;

#[inline(always)]
fn bias_scale_rows_generic(out: &mut [f32], x: &[f32], b: &[f32], g: &[f32]) {
    let c = b.len();
    for (o, row) in out.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
        for k in 0..c {
            o[k] = (row[k] + b[k]) * g[k];
        }
    }
}

simd_dispatch!(fn bias_scale_rows => bias_scale_rows_generic(out: &mut [f32], x: &[f32], b: &[f32], g: &[f32]));

#[inline(always)]
fn scale_rows_generic(out: &mut [f32], x: &[f32], g: &[f32]) {
    let c = g.len();
    for (o, row) in out.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
        for k in 0..c {
            o[k] = row[k] * g[k];
        }
    }
}

simd_dispatch!(fn scale_rows => scale_rows_generic(out: &mut [f32], x: &[f32], g: &[f32]));

/// `x · γ` of whole rows, in parallel.
fn apply_scale(x: &[f32], g: &[f32]) -> Vec<f32> {
    // SAFETY: `scale_rows` writes every value of its output rows.
    unsafe { super::storage::map_rows(x, g.len().max(1), |o, xi| scale_rows(o, xi, g)) }
}

/// `(x + b) · γ` of whole rows, in parallel.
fn apply(x: &[f32], b: &[f32], g: &[f32]) -> Vec<f32> {
    // SAFETY: `bias_scale_rows` writes every value of its output rows.
    unsafe { super::storage::map_rows(x, b.len().max(1), |o, xi| bias_scale_rows(o, xi, b, g)) }
}

impl CustomOp3 for BiasScale {
    fn name(&self) -> &'static str {
        "bias-scale"
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
        let data = |s, l| contiguous_f32(s, l, "bias_scale");
        let (x, b, g) = (data(s1, l1)?, data(s2, l2)?, data(s3, l3)?);
        Ok((CpuStorage::F32(apply(x, b, g)), l1.shape().clone()))
    }

    /// `dx = g·γ`, `db = Σ g·γ`, `dγ = Σ g·(x + b)` (sums over rows), each only when tracked.
    fn bwd(
        &self,
        x: &Tensor,
        b: &Tensor,
        gamma: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = gamma.elem_count();
        let grad = grad.contiguous()?;
        let (bv, gv): (Vec<f32>, Vec<f32>) = (b.to_vec1()?, gamma.to_vec1()?);
        let zero = vec![0f32; c];
        // g·γ is both the input's gradient and, summed, the bias's.
        let Some(dx) = with_cpu_f32(&grad, |gr| apply(gr, &zero, &gv)) else {
            candle_core::bail!("bias_scale: gradient must be f32 on the CPU")
        };
        let db = b
            .track_op()
            .then(|| Tensor::from_vec(column_sums(&dx, c), c, b.device()))
            .transpose()?;
        let dgamma = match gamma.track_op() {
            true => {
                // Σ g·(x + b) = Σ g·x + b·Σ g: one product pass, two column sums.
                let gx = (&grad * x.contiguous()?)?;
                let sum_gx = super::reduce::sum_to_channels(&gx)?;
                let sum_g = super::reduce::sum_to_channels(&grad)?;
                Some((sum_gx + (sum_g * Tensor::new(bv.as_slice(), b.device())?)?)?)
            }
            false => None,
        };
        let dx = x
            .track_op()
            .then(|| Tensor::from_vec(dx, x.shape(), x.device()))
            .transpose()?;
        Ok((dx, db, dgamma))
    }
}

impl CustomOp2 for Scale {
    fn name(&self) -> &'static str {
        "scale"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (
            contiguous_f32(s1, l1, "scale")?,
            contiguous_f32(s2, l2, "scale")?,
        );
        Ok((CpuStorage::F32(apply_scale(x, g)), l1.shape().clone()))
    }

    /// `dx = g·γ`, `dγ = Σ g·x` (summed over rows), each only when tracked.
    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = match x.track_op() {
            true => Some(scale(grad, gamma)?),
            false => None,
        };
        let dgamma = match gamma.track_op() {
            true => Some(super::reduce::sum_to_channels(&(grad * x)?)?),
            false => None,
        };
        Ok((dx, dgamma))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_abs(t: Tensor) -> f32 {
        let t = t.abs().unwrap().flatten_all().unwrap();
        t.max(0).unwrap().to_scalar().unwrap()
    }

    /// The largest gap between the gradients of `Σ ours·r` and `Σ theirs·r`, per variable.
    fn gradient_gaps(ours: Tensor, theirs: Tensor, r: &Tensor, vars: &[&Var]) -> Vec<f32> {
        let grads = |t: Tensor| (t * r).unwrap().sum_all().unwrap().backward().unwrap();
        let (g1, g2) = (grads(ours), grads(theirs));
        let gap = |v: &&Var| max_abs((g1.get(v).unwrap() - g2.get(v).unwrap()).unwrap());
        vars.iter().map(gap).collect()
    }

    /// `scale` gives candle's products bit for bit, and its gradients.
    #[test]
    fn scale_equals_candles_broadcast_mul() {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (2, 3, 5, 40), &dev).unwrap();
        let g = Var::randn(0f32, 1.0, 40, &dev).unwrap();
        let r = Tensor::randn(0f32, 1.0, (2, 3, 5, 40), &dev).unwrap();
        let ours = scale(&x, &g).unwrap();
        let theirs = x.broadcast_mul(&g).unwrap();
        let bits = |t: &Tensor| -> Vec<u32> {
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            v.iter().map(|f| f.to_bits()).collect()
        };
        assert_eq!(bits(&ours), bits(&theirs));
        for d in gradient_gaps(ours, theirs, &r, &[&x, &g]) {
            assert!(d < 1e-4, "{d}");
        }
        assert!(scale(&x, &Tensor::ones(7, DType::F32, &dev).unwrap()).is_err());
        let empty = Tensor::zeros((2, 3, 0), DType::F32, &dev).unwrap();
        let none = Tensor::zeros(0, DType::F32, &dev).unwrap();
        assert_eq!(scale(&empty, &none).unwrap().dims(), &[2, 3, 0]);
    }

    #[test]
    fn forward_and_gradients_equal_candles_autograd() {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (2, 3, 5, 7), &dev).unwrap();
        let b = Var::randn(0f32, 1.0, 7, &dev).unwrap();
        let g = Var::randn(0f32, 1.0, 7, &dev).unwrap();
        let r = Tensor::randn(0f32, 1.0, (2, 3, 5, 7), &dev).unwrap();
        let ours = bias_scale(&x, &b, &g).unwrap();
        let theirs = x.broadcast_add(&b).unwrap().broadcast_mul(&g).unwrap();
        assert!(max_abs((&ours - &theirs).unwrap()) < 1e-6);
        for d in gradient_gaps(ours, theirs, &r, &[&x, &b, &g]) {
            assert!(d < 1e-4, "{d}");
        }
    }
}
