//! The small building blocks, all working channels-last (`[..., C]`).
use crate::kernels::gemm::{PackedLinear, PackedLinearOp, Precision};
use crate::kernels::grn::GrnValues;
use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use std::sync::Arc;

/// How the layers are built: for training, or for inference in f32 or with bf16 matmuls.
#[derive(Clone, Copy, Debug, Default)]
pub struct BuildOptions {
    /// Build differentiable layers and recompute weight layouts every forward.
    pub differentiable: bool,
    /// In ConvNeXt blocks, use candle's generic ops for GELU, LayerNorm, the biases and the
    /// layer scale instead of the fused kernels with their own backward passes: the reference
    /// `train --bench` times. (Layers outside blocks, as in the roadmap's plans, keep theirs.)
    pub generic_ops: bool,
    /// Inference with the packed Linear layers in bf16 (weights and their inputs rounded to
    /// bf16, f32 sums; [`Precision::Bf16`]) and every other layer in f32: `--dtype bf16` on a
    /// CPU with the packed kernel.
    pub bf16_matmuls: bool,
}

impl BuildOptions {
    /// How the Linear layers that may be packed are packed (`None`: training, not packed).
    pub fn packing(&self) -> Option<Precision> {
        match (self.differentiable, self.bf16_matmuls) {
            (true, _) => None,
            (false, true) => Some(Precision::Bf16),
            (false, false) => Some(Precision::F32),
        }
    }
}

/// LayerNorm over the last (channel) axis.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
    /// Training needs a differentiable path; candle's fused kernel has no backward.
    pub differentiable: bool,
    /// Differentiable through candle's ops even where the kernel with a backward applies.
    pub composed: bool,
}

impl LayerNorm {
    pub fn new(vb: VarBuilder, dim: usize, eps: f64, differentiable: bool) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            bias: vb.get(dim, "bias")?,
            eps,
            differentiable,
            composed: false,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // candle's fused kernel has no backward pass: a tracked input (training, or a
        // gradient asked of the network) takes the kernel that has one, or the composed path.
        let kernel = crate::kernels::layer_norm::has_kernel(x) && !self.composed;
        if (self.differentiable || x.track_op()) && kernel {
            crate::kernels::layer_norm::layer_norm(x, &self.weight, &self.bias, self.eps)
        } else if self.differentiable || x.track_op() {
            let mean = x.mean_keepdim(D::Minus1)?;
            let xc = x.broadcast_sub(&mean)?;
            let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
            let xn = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
            xn.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)
        } else if kernel {
            // Ours rather than candle's: the block's fused conv + norm computes the same
            // numbers, so a forward gives the same bits observed or not.
            crate::kernels::layer_norm::layer_norm(x, &self.weight, &self.bias, self.eps)
        } else if x.dtype() == DType::F32 {
            candle_nn::ops::layer_norm(&x.contiguous()?, &self.weight, &self.bias, self.eps as f32)
        } else {
            // Half-precision statistics lose too much: normalise in f32, hand back the dtype.
            let dt = x.dtype();
            let w = self.weight.to_dtype(DType::F32)?;
            let b = self.bias.to_dtype(DType::F32)?;
            candle_nn::ops::layer_norm(&x.to_dtype(DType::F32)?, &w, &b, self.eps as f32)?
                .to_dtype(dt)
        }
    }
}

/// `y = x Wᵀ + b` on the last axis of any-rank input.
#[derive(Clone, Debug)]
pub struct Linear {
    /// `[out, in]`; dropped once packed (the packed copy is the only one kept).
    weight: Option<Tensor>,
    pub bias: Tensor,
    /// The weight packed for the CPU kernel (inference, f32, a CPU with AVX2 and FMA).
    packed: Option<Arc<PackedLinear>>,
}

impl Linear {
    /// Unpacked, on candle's matmul.
    pub fn new(vb: VarBuilder, inp: usize, out: usize) -> Result<Self> {
        Self::from_tensors(vb.get((out, inp), "weight")?, vb.get(out, "bias")?, None)
    }

    /// Like `new`, with the weight packed in `precision` for the fast CPU kernel where it
    /// applies (`CONVNEXT_GENERIC_MATMUL=1` keeps candle's matmul, for comparisons).
    pub fn new_packed(
        vb: VarBuilder,
        inp: usize,
        out: usize,
        precision: Precision,
    ) -> Result<Self> {
        let (w, b) = (vb.get((out, inp), "weight")?, vb.get(out, "bias")?);
        Self::from_tensors(w, b, Some(precision))
    }

    /// From a `[out, in]` weight and a bias; `pack` as [`Linear::new_packed`] (`None`: not).
    pub fn from_tensors(weight: Tensor, bias: Tensor, pack: Option<Precision>) -> Result<Self> {
        let (out, inp) = weight.dims2()?;
        let mut l = Self {
            weight: Some(weight),
            bias,
            packed: None,
        };
        let use_packed = std::env::var_os("CONVNEXT_GENERIC_MATMUL").is_none()
            && crate::kernels::gemm::available()
            && l.bias.device().is_cpu()
            && l.bias.dtype() == DType::F32;
        if let (Some(precision), true) = (pack, use_packed) {
            if let Some(w) = l.weight.take() {
                let w: Vec<f32> = w.flatten_all()?.to_vec1()?;
                let b: Vec<f32> = l.bias.to_vec1()?;
                let p = PackedLinear::with_precision(&w, out, inp, &b, precision);
                l.packed = Some(Arc::new(p));
            }
        }
        Ok(l)
    }
}

impl Linear {
    /// `x Wᵀ` without the bias (for callers that fuse the bias into what follows).
    pub fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(p) = self.packed(x) {
            let op = PackedLinearOp {
                linear: p,
                add_bias: false,
            };
            return x.contiguous()?.apply_op1(op);
        }
        let dims = x.dims().to_vec();
        let inp = *dims.last().unwrap_or(&0);
        let rows = x.elem_count() / inp.max(1);
        let w = self.weight.as_ref().ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "a packed Linear takes f32 CPU input, got {:?} on {:?}",
                x.dtype(),
                x.device()
            ))
        })?;
        let y = x.reshape((rows, inp))?.matmul(&w.t()?)?;
        let out: Vec<usize> = dims[..dims.len().saturating_sub(1)]
            .iter()
            .copied()
            .chain([w.dim(0)?])
            .collect();
        y.reshape(out)
    }
}

impl Linear {
    /// `gelu(x Wᵀ + b)` in one pass where the packed kernel runs (`None` elsewhere). No
    /// gradient flows through it.
    ///
    /// `bf16_out`: hand back bf16 where this layer multiplies in native bf16, for a next
    /// Linear in native bf16 to read as it is ([`Linear::takes_bf16`]).
    ///
    /// `grn`: ConvNeXt V2's GRN after the GELU, applied to the output in place (f32 out).
    pub fn forward_gelu_fused(
        &self,
        x: &Tensor,
        bf16_out: bool,
        grn: Option<&Arc<GrnValues>>,
    ) -> Result<Option<Tensor>> {
        let Some(linear) = self.packed_fused(x) else {
            return Ok(None);
        };
        let bf16_out = bf16_out && grn.is_none() && linear.is_native_bf16();
        let grn = grn.cloned();
        let op = crate::kernels::gemm::PackedLinearGeluOp {
            linear,
            bf16_out,
            grn,
        };
        Ok(Some(x.contiguous()?.apply_op1(op)?))
    }

    /// `norm(x Wᵀ + b)`, the norm applied to each output row in place, where the packed
    /// kernel runs and the norm is f32 on the CPU (`None` elsewhere). No gradient flows
    /// through it.
    pub fn forward_norm_fused(&self, x: &Tensor, norm: &LayerNorm) -> Result<Option<Tensor>> {
        let Some(linear) = self.packed(x) else {
            return Ok(None);
        };
        if norm.differentiable || x.track_op() || norm.weight.dtype() != DType::F32 {
            return Ok(None);
        }
        let values = (
            norm.weight.to_vec1()?,
            norm.bias.to_vec1()?,
            norm.eps as f32,
        );
        let op = crate::kernels::gemm::PackedLinearNormOp {
            linear,
            norm: values,
        };
        Ok(Some(x.contiguous()?.apply_op1(op)?))
    }

    /// `residual + γ ⊙ (x Wᵀ + b)` in one pass where the packed kernel runs (`None`
    /// elsewhere); `gamma` as [`Linear::packed_scale`] made it. No gradient flows through it.
    pub fn forward_scale_add_fused(
        &self,
        x: &Tensor,
        gamma: Option<&Arc<Vec<f32>>>,
        residual: &Tensor,
    ) -> Result<Option<Tensor>> {
        let Some(linear) = self.packed_fused(x) else {
            return Ok(None);
        };
        if residual.dtype() != DType::F32 || !residual.device().is_cpu() {
            return Ok(None);
        }
        let op = crate::kernels::gemm::PackedLinearScaleAddOp {
            linear,
            gamma: gamma.cloned(),
        };
        Ok(Some(
            x.contiguous()?.apply_op2(&residual.contiguous()?, op)?,
        ))
    }

    /// This layer (fc1), its GELU, GRN (present: `[N, H, W, C]` f32), `fc2`, the layer scale
    /// and the residual add one block of rows at a time ([`crate::kernels::mlp`]), where that applies: both packed, the input
    /// as both take it, rows enough; `None` elsewhere. No gradient flows through it.
    pub fn forward_mlp_fused(
        &self,
        fc2: &Linear,
        x: &Tensor,
        gamma: Option<&Arc<Vec<f32>>>,
        grn: Option<&Arc<GrnValues>>,
        residual: &Tensor,
    ) -> Result<Option<Tensor>> {
        let (Some(fc1), Some(fc2)) = (self.packed_fused(x), fc2.packed.clone()) else {
            return Ok(None);
        };
        let m = x.elem_count() / fc1.in_features().max(1);
        let bf16 = x.dtype() == DType::BF16;
        let grn_hw = match (grn, x.dims()) {
            (None, _) => None,
            (Some(_), &[_, h, w, _]) => Some(h * w),
            (Some(_), _) => return Ok(None),
        };
        let f32_residual = residual.dtype() == DType::F32 && residual.device().is_cpu();
        if !f32_residual || !crate::kernels::mlp::applies((&fc1, &fc2), m, bf16, grn_hw) {
            return Ok(None);
        }
        let op = crate::kernels::mlp::PackedMlpOp {
            fc1,
            fc2,
            gamma: gamma.cloned(),
            grn: grn.cloned(),
        };
        Ok(Some(
            x.contiguous()?.apply_op2(&residual.contiguous()?, op)?,
        ))
    }

    /// A layer scale's values for [`Linear::forward_scale_add_fused`], where this Linear is
    /// packed (f32 on the CPU).
    pub fn packed_scale(&self, gamma: &Tensor) -> Result<Option<Arc<Vec<f32>>>> {
        match self.packed.is_some() && gamma.dtype() == DType::F32 {
            true => Ok(Some(Arc::new(gamma.to_vec1()?))),
            false => Ok(None),
        }
    }

    /// The `[out, in]` weight (absent when packed).
    pub fn weight(&self) -> Option<&Tensor> {
        self.weight.as_ref()
    }

    pub fn is_packed(&self) -> bool {
        self.packed.is_some()
    }

    /// Whether the fused ops ([`Linear::forward_gelu_fused`],
    /// [`Linear::forward_scale_add_fused`]) take a bf16 input as it is (packed in native bf16,
    /// with an even K).
    pub fn takes_bf16(&self) -> bool {
        self.packed
            .as_ref()
            .is_some_and(|p| p.is_native_bf16() && p.in_features().is_multiple_of(2))
    }

    /// The packed layer for a fused op on `x`: f32, or bf16 where the layer takes it as it is.
    fn packed_fused(&self, x: &Tensor) -> Option<Arc<PackedLinear>> {
        match (&self.packed, x.dtype()) {
            (Some(p), DType::BF16) if self.takes_bf16() && x.device().is_cpu() => Some(p.clone()),
            _ => self.packed(x),
        }
    }

    fn packed(&self, x: &Tensor) -> Option<Arc<PackedLinear>> {
        let p = self.packed.as_ref()?;
        (x.device().is_cpu() && x.dtype() == DType::F32).then(|| p.clone())
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(p) = self.packed(x) {
            let op = PackedLinearOp {
                linear: p,
                add_bias: true,
            };
            return x.contiguous()?.apply_op1(op);
        }
        self.matmul(x)?.broadcast_add(&self.bias)
    }
}

/// Global Response Normalisation (ConvNeXt V2), channels-last:
/// `x + w · (x · N(x)) + b` with `N(x) = ‖x‖₂,spatial / (mean_c ‖x‖₂,spatial + 1e-6)`.
#[derive(Clone, Debug)]
pub struct Grn {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Grn {
    pub const EPS: f64 = 1e-6;
    pub fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            bias: vb.get(dim, "bias")?,
        })
    }

    /// The parameters as values for fc1's fused op ([`Linear::forward_gelu_fused`]), where
    /// they are f32.
    pub fn values(&self) -> Result<Option<Arc<GrnValues>>> {
        if self.weight.dtype() != DType::F32 || self.bias.dtype() != DType::F32 {
            return Ok(None);
        }
        Ok(Some(Arc::new(GrnValues {
            gamma: self.weight.to_vec1()?,
            beta: self.bias.to_vec1()?,
            eps: Self::EPS as f32,
        })))
    }
}

impl Grn {
    /// GRN from candle's ops (with their backward): `γ·(x·Nx) + β + x`, `Nx = Gx / (mean Gx + ε)`,
    /// `Gx` the per-channel L2 norm over H·W of a channels-last `[N, H, W, C]` map.
    pub fn composed(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let gx = x.sqr()?.sum_keepdim((1, 2))?.sqrt()?;
        let nx = gx.broadcast_div(&(gx.mean_keepdim(D::Minus1)? + Self::EPS)?)?;
        let scaled = x.broadcast_mul(&nx)?.broadcast_mul(weight)?;
        (x + scaled)?.broadcast_add(bias)
    }
}

impl Module for Grn {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if crate::kernels::grn::has_kernel(x) && self.weight.dtype() == DType::F32 {
            crate::kernels::grn::grn(x, &self.weight, &self.bias, Self::EPS)
        } else {
            Self::composed(x, &self.weight, &self.bias)
        }
    }
}

/// Non-overlapping k×k patches of a channels-last map, flattened in (kh, kw, c) order:
/// `[N, H, W, C]` → `[N, H/k, W/k, k·k·C]`. A stride-k k×k conv is then one matmul.
pub fn patchify(x: &Tensor, k: usize) -> Result<Tensor> {
    if let Some(p) = crate::kernels::patches::patchify(x, k)? {
        return Ok(p);
    }
    let (n, h, w, c) = x.dims4()?;
    x.reshape((n, h / k, k, w / k, k, c))?
        .permute((0, 1, 3, 2, 4, 5))?
        .contiguous()?
        .reshape((n, h / k, w / k, k * k * c))
}

/// A conv weight `[O, I, k, k]` as the matrix that multiplies [`patchify`]'s output: `[O, k·k·I]`.
pub fn conv_weight_as_matrix(w: &Tensor) -> Result<Tensor> {
    let (o, i, kh, kw) = w.dims4()?;
    w.permute((0, 2, 3, 1))?
        .contiguous()?
        .reshape((o, kh * kw * i))
}
