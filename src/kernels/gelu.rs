//! GELU (the exact, erf form PyTorch's `nn.GELU()` uses) with the preceding bias add fused in:
//! `y = gelu(x + b)` over channels-last rows, one pass over memory instead of two.
//!
//! candle evaluates erf with a scalar libm-style routine per element (about a sixth of a
//! ConvNeXt forward). Here erf is a rational function of x² (odd numerator, even denominator,
//! degrees 13/8 on [-4, 4], clamped outside where erf(x) is ±1 in f32), which compiles to
//! multiply-adds and one division and vectorises at full width. Its error is below 2e-7 absolute;
//! a test checks that against candle's `gelu_erf` over the whole useful range.
use crate::simd_dispatch;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `gelu(x + b)` with `b` broadcast along the last axis. CPU f32 uses the fused kernel; other
/// devices and dtypes use candle's ops.
pub fn bias_gelu(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    let c = x.dim(candle_core::D::Minus1)?;
    if b.dims1()? != c {
        candle_core::bail!("bias_gelu: bias {:?} for input {:?}", b.dims(), x.dims())
    }
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 && b.dtype() == x.dtype() {
        x.contiguous()?.apply_op2(&b.contiguous()?, BiasGelu)
    } else {
        x.broadcast_add(b)?.gelu_erf()
    }
}

/// `gelu(x)` (exact, erf form); the fast kernel on CPU f32.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        let c = x.dim(candle_core::D::Minus1)?;
        bias_gelu(x, &Tensor::zeros(c, x.dtype(), x.device())?)
    } else {
        x.gelu_erf()
    }
}

struct BiasGelu;

const ALPHA: [f32; 7] = [
    -2.726_142_3e-10,
    2.770_681_4e-8,
    -2.101_024e-6,
    -5.692_506_4e-5,
    -7.349_906e-4,
    -2.9546e-3,
    -1.609_603_3e-2,
];
const BETA: [f32; 5] = [
    -1.456_607_2e-5,
    -2.133_740_6e-4,
    -1.682_827e-3,
    -7.373_329e-3,
    -1.426_474e-2,
];

#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    x * horner(&ALPHA, x2) / horner(&BETA, x2)
}

/// [`ALPHA`] as a polynomial in `u²` (`z = u/√2`, so `z²ᵏ = u²ᵏ / 2ᵏ`), times `1/(2√2)`:
/// the constants of [`gelu1`] folded into its coefficients.
const GELU_P: [f32; 7] = {
    let mut p = [0f32; 7];
    let mut j = 0;
    while j < 7 {
        let power = (6 - j) as i32;
        p[j] = ALPHA[j] / (1u32 << power) as f32 * (0.5 * std::f32::consts::FRAC_1_SQRT_2);
        j += 1;
    }
    p
};
/// [`BETA`] as a polynomial in `u²`.
const GELU_Q: [f32; 5] = {
    let mut q = [0f32; 5];
    let mut j = 0;
    while j < 5 {
        q[j] = BETA[j] / (1u32 << (4 - j)) as f32;
        j += 1;
    }
    q
};

/// `gelu(u) = u·Φ(u) = u/2 + (u/2)·erf(u/√2)` with [`erf`]'s rational function written in `u`
/// directly: `u/2 + u·c·P(c²)/Q(c²)`, `c` = `u` clamped to ±4√2 (where erf is ±1 in f32).
/// Three operations fewer per value than composing [`erf`]: the scaling by 1/√2, the `1 +`
/// and a product are in the coefficients.
#[inline(always)]
fn gelu1(u: f32) -> f32 {
    let limit = 4.0 * std::f32::consts::SQRT_2;
    let c = u.clamp(-limit, limit);
    let t = c * c;
    (u * c).mul_add(horner(&GELU_P, t) / horner(&GELU_Q, t), 0.5 * u)
}

/// The polynomial with coefficients `c` (highest power first) at `t`.
#[inline(always)]
fn horner(c: &[f32], t: f32) -> f32 {
    c[1..].iter().fold(c[0], |acc, &a| acc.mul_add(t, a))
}

#[inline(always)]
fn bias_gelu_rows_generic(out: &mut [f32], x: &[f32], b: &[f32]) {
    let c = b.len();
    for (o_row, x_row) in out.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
        for k in 0..c {
            o_row[k] = gelu1(x_row[k] + b[k]);
        }
    }
}

simd_dispatch!(fn bias_gelu_rows => bias_gelu_rows_generic(out: &mut [f32], x: &[f32], b: &[f32]));

#[inline(always)]
fn gelu_in_place_generic(v: &mut [f32]) {
    for x in v.iter_mut() {
        *x = gelu1(*x);
    }
}

simd_dispatch!(pub fn gelu_in_place => gelu_in_place_generic(v: &mut [f32]));

/// `e^x` for `x ≤ 0` (clamped below at -87): `2^(x·log2 e)` split into an integer power (set
/// in the exponent bits) and a fraction (a degree-8 polynomial), branch-free so that it
/// vectorises. Relative error below 3e-6 (the f32 rounding of `x·log2 e` dominates; where
/// it is largest, `e^x` is below 1e-9).
#[inline(always)]
fn exp_neg(x: f32) -> f32 {
    let t = (x.max(-87.0) * std::f32::consts::LOG2_E).min(0.0);
    let n = t.floor();
    let f = t - n;
    // 2^f on [0, 1): its Taylor series to degree 8, (ln 2)^k / k!.
    let mut p = 1.3215487e-6f32;
    for c in [
        1.5252734e-5,
        1.540353e-4,
        1.3333558e-3,
        9.618129e-3,
        5.550411e-2,
        2.402265e-1,
        6.931472e-1,
        1.0,
    ] {
        p = p.mul_add(f, c);
    }
    f32::from_bits((((n as i32) + 127) as u32) << 23) * p
}

/// `out = g · gelu'(x + b)` with `gelu'(u) = Φ(u) + u·φ(u)`.
#[inline(always)]
fn gelu_grad_rows_generic(out: &mut [f32], x: &[f32], b: &[f32], g: &[f32]) {
    let c = b.len();
    let inv_sqrt_2pi = 0.5 * std::f32::consts::FRAC_2_SQRT_PI * std::f32::consts::FRAC_1_SQRT_2;
    for ((o_row, x_row), g_row) in out
        .chunks_exact_mut(c)
        .zip(x.chunks_exact(c))
        .zip(g.chunks_exact(c))
    {
        for k in 0..c {
            let u = x_row[k] + b[k];
            let cdf = 0.5 * (1.0 + erf(u * std::f32::consts::FRAC_1_SQRT_2));
            let pdf = inv_sqrt_2pi * exp_neg(-0.5 * u * u);
            o_row[k] = g_row[k] * (cdf + u * pdf);
        }
    }
}

simd_dispatch!(fn gelu_grad_rows => gelu_grad_rows_generic(out: &mut [f32], x: &[f32], b: &[f32], g: &[f32]));

/// `g · gelu'(x + b)` on the CPU (f32, contiguous).
fn gelu_grad(x: &Tensor, b: &Tensor, g: &Tensor) -> Result<Tensor> {
    let xv: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let bv: Vec<f32> = b.to_vec1()?;
    let gv: Vec<f32> = g.contiguous()?.flatten_all()?.to_vec1()?;
    let c = bv.len().max(1);
    let mut out = vec![0f32; xv.len()];
    let chunk = super::storage::task_len(c);
    out.par_chunks_mut(chunk)
        .zip(xv.par_chunks(chunk))
        .zip(gv.par_chunks(chunk))
        .for_each(|((o, xi), gi)| gelu_grad_rows(o, xi, &bv, gi));
    Tensor::from_vec(out, x.shape(), x.device())
}

impl CustomOp2 for BiasGelu {
    fn name(&self) -> &'static str {
        "bias-gelu-erf"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = super::storage::contiguous_f32(s1, l1, "bias_gelu")?;
        let b = super::storage::contiguous_f32(s2, l2, "bias_gelu")?;
        let c = b.len();
        // SAFETY: `bias_gelu_rows` writes every value of its output rows.
        let out = unsafe { super::storage::map_rows(x, c, |o, xi| bias_gelu_rows(o, xi, b)) };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    /// `gelu'(u) = Φ(u) + u·φ(u)` at `u = x + b`: the input's gradient, and the bias's (summed
    /// over rows) when the bias is tracked.
    fn bwd(
        &self,
        x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad_x = gelu_grad(x, b, grad_res)?;
        let grad_b = b
            .track_op()
            .then(|| super::reduce::sum_to_channels(&grad_x))
            .transpose()?;
        Ok((Some(grad_x), grad_b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_candles_exact_gelu() {
        let n = 20_001;
        let xs: Vec<f32> = (0..n)
            .map(|i| -10.0 + 20.0 * i as f32 / (n - 1) as f32)
            .collect();
        let x = Tensor::from_vec(xs, (n / 3, 3), &Device::Cpu).unwrap();
        let b = Tensor::new(&[0.0f32, 0.25, -1.5], &Device::Cpu).unwrap();
        let fast = bias_gelu(&x, &b).unwrap();
        let slow = x.broadcast_add(&b).unwrap().gelu_erf().unwrap();
        // Relative to 1 + |y|: f32 rounding of large outputs is not the approximation's error.
        let scale = (slow.abs().unwrap() + 1.0).unwrap();
        let err: f32 = ((fast - &slow).unwrap().abs().unwrap() / scale)
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(err < 2e-6, "max error {err}");
    }

    #[test]
    fn backward_equals_candles_autograd() {
        let x = candle_core::Var::randn(0f32, 2.0, (37, 5), &Device::Cpu).unwrap();
        let b = Tensor::new(&[0.0f32, 0.25, -1.5, 3.0, -0.1], &Device::Cpu).unwrap();
        let r = Tensor::randn(0f32, 1.0, (37, 5), &Device::Cpu).unwrap();
        let g1 = (bias_gelu(&x, &b).unwrap() * &r)
            .unwrap()
            .sum_all()
            .unwrap();
        let g2 = (x.broadcast_add(&b).unwrap().gelu_erf().unwrap() * &r).unwrap();
        let (g1, g2) = (
            g1.backward().unwrap(),
            g2.sum_all().unwrap().backward().unwrap(),
        );
        let d: f32 = (g1.get(&x).unwrap() - g2.get(&x).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(d < 1e-5, "{d}");
    }

    #[test]
    fn exp_is_accurate() {
        for i in 0..=1000 {
            let x = -30.0 * i as f32 / 1000.0;
            let (ours, std) = (exp_neg(x), x.exp());
            assert!(
                (ours - std).abs() <= 3e-6 * std + 1e-30,
                "exp({x}): {ours} vs {std}"
            );
        }
    }

    #[test]
    fn erf_is_accurate() {
        // Reference values of erf (Abramowitz & Stegun table 7.1).
        for (x, want) in [
            (0.1f32, 0.112_462_92f32),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (2.0, 0.995_322_3),
            (3.0, 0.999_977_9),
        ] {
            assert!((erf(x) - want).abs() < 3e-7, "erf({x}) = {}", erf(x));
            assert!((erf(-x) + want).abs() < 3e-7);
        }
        assert_eq!(erf(9.0), erf(4.0));
    }
}
