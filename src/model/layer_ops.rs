//! Every layer kind of a [`Plan`](super::plan::Plan) as something that runs on a channels-last
//! tensor. Each kind takes the fastest path this project has for it: stride-k k×k convolutions
//! as one matmul over patches, 1×1 convolutions and linear layers on the packed GEMM, depthwise
//! convolutions on the depthwise kernel; the rest (dense k×k convolutions, max-pooling) through
//! candle's NCHW ops.
use super::convnext_block::dw_kernel_kkc;
use super::layers::{conv_weight_as_matrix, patchify, BuildOptions, Grn, LayerNorm, Linear};
use super::plan::{Kind, LayerSpec};
use crate::kernels::depthwise_conv_nhwc;
use crate::kernels::gelu::gelu;
use crate::kernels::patches::{patchify_normed, PixelNorm};
use crate::kernels::storage::with_cpu_f32;
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

/// A stride-k k×k conv over non-overlapping patches, done as a matmul.
#[derive(Clone, Debug)]
pub struct PatchConv {
    weight: Tensor,
    bias: Option<Tensor>,
    k: usize,
    /// `weight` as a `[O, k·k·I]` Linear (on the packed GEMM where it runs), made once for
    /// inference (training recomputes the matrix so that updates to the weight show).
    linear: Option<Linear>,
}

impl PatchConv {
    /// `norm` then this conv, the norm applied inside the patch gather
    /// ([`crate::kernels::patches::patchify_normed`]): a downsample where nobody looks at the
    /// norm's output. `None` where the fused path does not apply (then run the two layers).
    pub fn forward_normed(&self, x_nhwc: &Tensor, norm: &LayerNorm) -> Result<Option<Tensor>> {
        let Some(linear) = &self.linear else {
            return Ok(None);
        };
        if norm.differentiable {
            return Ok(None);
        }
        // Off the CPU, or not f32, `with_cpu_f32` gives `None`: the two layers run apart.
        let (w, b) = (norm.weight.contiguous()?, norm.bias.contiguous()?);
        let patches = with_cpu_f32(&w, |w| {
            with_cpu_f32(&b, |b| {
                let norm = PixelNorm {
                    weight: w,
                    bias: b,
                    eps: norm.eps as f32,
                };
                patchify_normed(x_nhwc, self.k, Some(norm))
            })
        });
        match patches.flatten().transpose()?.flatten() {
            Some(p) => linear.forward(&p).map(Some),
            None => Ok(None),
        }
    }

    /// This conv then `norm`, the norm applied to the matmul's output rows in place
    /// ([`Linear::forward_norm_fused`]): the stem where nobody looks at the conv's output.
    pub fn forward_then_norm(&self, x_nhwc: &Tensor, norm: &LayerNorm) -> Result<Option<Tensor>> {
        let Some(linear) = &self.linear else {
            return Ok(None);
        };
        // Checked before the patches are made, so that they are not made twice.
        let cpu_f32 = x_nhwc.device().is_cpu() && x_nhwc.dtype() == DType::F32;
        if !linear.is_packed() || !cpu_f32 || norm.differentiable || x_nhwc.track_op() {
            return Ok(None);
        }
        linear.forward_norm_fused(&patchify(x_nhwc, self.k)?, norm)
    }

    fn forward(&self, x_nhwc: &Tensor) -> Result<Tensor> {
        let p = patchify(x_nhwc, self.k)?;
        if let Some(linear) = &self.linear {
            return linear.forward(&p);
        }
        let m = conv_weight_as_matrix(&self.weight)?;
        let (n, h, w, kc) = p.dims4()?;
        let y = p.reshape((n * h * w, kc))?.matmul(&m.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        y.reshape((n, h, w, m.dim(0)?))
    }
}

#[derive(Clone, Debug)]
pub enum Op {
    Patch(PatchConv),
    /// A k×k convolution through candle's `conv2d` (NCHW).
    Dense {
        weight: Tensor,
        bias: Option<Tensor>,
        stride: usize,
        pad: usize,
    },
    /// Depthwise k×k, "same" padding, on the channels-last kernel; stride 2 keeps every
    /// other output (the same numbers a strided convolution computes).
    Depthwise {
        weight: Tensor,
        kkc: Option<Tensor>,
        bias: Tensor,
        stride: usize,
    },
    /// A 1×1 convolution (stride 2 samples every other position first).
    Pointwise {
        linear: Linear,
        stride: usize,
    },
    Linear(Linear),
    LayerNorm(LayerNorm),
    /// BatchNorm in eval mode folded into a per-channel scale and shift.
    BatchNorm {
        scale: Tensor,
        shift: Tensor,
    },
    Relu,
    /// Exact (erf) GELU; the fast kernel, with its backward, on CPU f32.
    Gelu,
    Grn(Grn),
    LayerScale(Tensor),
    MaxPool {
        k: usize,
        stride: usize,
        pad: usize,
    },
    GlobalAvgPool,
}

fn unsupported(spec: &LayerSpec) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "layer `{}`: {:?} is not supported",
        spec.id, spec.kind
    ))
}

impl Op {
    /// The layer `spec` describes, its tensors read from `vb` (prefixed with the layer's name;
    /// `root` for a layer scale, whose tensor is named as the layer).
    pub fn new(
        vb: VarBuilder,
        root: &VarBuilder,
        spec: &LayerSpec,
        t: BuildOptions,
    ) -> Result<Self> {
        let (i, o) = (spec.channels_in, spec.channels_out);
        let optional_bias = |has: bool| has.then(|| vb.get(o, "bias")).transpose();
        Ok(match spec.kind {
            Kind::Conv {
                k,
                stride,
                pad,
                groups,
                bias,
            } => {
                let weight = vb.get((o, i / groups.max(1), k, k), "weight")?;
                let bias = optional_bias(bias)?;
                conv_op(spec, weight, bias, (k, stride, pad, groups), t)?
            }
            Kind::Linear { bias } => {
                let w = vb.get((o, i), "weight")?;
                let b = match optional_bias(bias)? {
                    Some(b) => b,
                    None => Tensor::zeros(o, w.dtype(), w.device())?,
                };
                // The head's classifier stays unpacked: it sees one row per image, and the
                // class-evidence map reads its weight.
                let pack = t.packing().filter(|_| spec.id.is_spatial());
                Op::Linear(Linear::from_tensors(w, b, pack)?)
            }
            Kind::BatchNorm { eps } => {
                let f = |n: &str| vb.get(o, n)?.to_dtype(DType::F32);
                let (w, b, mean, var) = (
                    f("weight")?,
                    f("bias")?,
                    f("running_mean")?,
                    f("running_var")?,
                );
                let scale = (w / (var + eps)?.sqrt()?)?;
                let shift = (b - (mean * &scale)?)?;
                let dt = vb.dtype();
                Op::BatchNorm {
                    scale: scale.to_dtype(dt)?,
                    shift: shift.to_dtype(dt)?,
                }
            }
            Kind::LayerNorm { eps } => Op::LayerNorm(LayerNorm::new(vb, o, eps, t.differentiable)?),
            Kind::Relu => Op::Relu,
            Kind::Gelu => Op::Gelu,
            Kind::Grn => Op::Grn(Grn::new(vb, o)?),
            Kind::LayerScale => Op::LayerScale(root.get(o, &spec.id.name())?),
            Kind::MaxPool { k, stride, pad } => Op::MaxPool { k, stride, pad },
            Kind::GlobalAvgPool => Op::GlobalAvgPool,
            Kind::Add => return Err(unsupported(spec)),
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Op::Patch(p) => p.forward(x),
            Op::Dense {
                weight,
                bias,
                stride,
                pad,
            } => {
                let y = x
                    .permute((0, 3, 1, 2))?
                    .contiguous()?
                    .conv2d(weight, *pad, *stride, 1, 1)?;
                let y = match bias {
                    Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?)?,
                    None => y,
                };
                y.permute((0, 2, 3, 1))?.contiguous()
            }
            Op::Depthwise {
                weight,
                kkc,
                bias,
                stride,
            } => {
                let kkc = match kkc {
                    Some(k) => k.clone(),
                    None => dw_kernel_kkc(weight)?,
                };
                subsample(&depthwise_conv_nhwc(x, &kkc, bias)?, *stride)
            }
            Op::Pointwise { linear, stride } => linear.forward(&subsample(x, *stride)?),
            Op::Linear(l) => l.forward(x),
            Op::LayerNorm(n) => n.forward(x),
            Op::BatchNorm { scale, shift } => x.broadcast_mul(scale)?.broadcast_add(shift),
            Op::Relu => x.relu(),
            Op::Gelu => gelu(x),
            Op::Grn(g) => g.forward(x),
            Op::LayerScale(g) => crate::kernels::bias_scale::scale(x, g),
            Op::MaxPool { k, stride, pad } => max_pool(x, *k, *stride, *pad),
            Op::GlobalAvgPool => match crate::kernels::reduce::spatial_mean(x)? {
                Some(m) => Ok(m),
                None => x.mean((1, 2)),
            },
        }
    }

    /// The dtype of the layer's weights, if it has any.
    pub fn dtype(&self) -> Option<DType> {
        match self {
            Op::Linear(l) => Some(l.bias.dtype()),
            Op::LayerNorm(n) => Some(n.weight.dtype()),
            _ => None,
        }
    }

    pub fn device(&self) -> Option<Device> {
        match self {
            Op::Linear(l) => Some(l.bias.device().clone()),
            Op::LayerNorm(n) => Some(n.weight.device().clone()),
            _ => None,
        }
    }
}

/// The fastest path for a convolution of this shape.
fn conv_op(
    spec: &LayerSpec,
    weight: Tensor,
    bias: Option<Tensor>,
    (k, stride, pad, groups): (usize, usize, usize, usize),
    t: BuildOptions,
) -> Result<Op> {
    let (i, o) = (spec.channels_in, spec.channels_out);
    let depthwise = groups > 1 && groups == i && i == o;
    if depthwise && k % 2 == 1 && pad == k / 2 && (stride == 1 || stride == 2) {
        let bias = match bias {
            Some(b) => b,
            None => Tensor::zeros(o, weight.dtype(), weight.device())?,
        };
        let kkc = (!t.differentiable)
            .then(|| dw_kernel_kkc(&weight))
            .transpose()?;
        return Ok(Op::Depthwise {
            weight,
            kkc,
            bias,
            stride,
        });
    }
    if groups != 1 {
        return Err(unsupported(spec));
    }
    if k == 1 && pad == 0 {
        let b = match bias {
            Some(b) => b,
            None => Tensor::zeros(o, weight.dtype(), weight.device())?,
        };
        let linear = Linear::from_tensors(weight.reshape((o, i))?, b, t.packing())?;
        return Ok(Op::Pointwise { linear, stride });
    }
    if k == stride && pad == 0 {
        let linear = match t.packing() {
            None => None,
            Some(precision) => {
                let b = match &bias {
                    Some(b) => b.clone(),
                    None => Tensor::zeros(o, weight.dtype(), weight.device())?,
                };
                let w = conv_weight_as_matrix(&weight)?;
                Some(Linear::from_tensors(w, b, Some(precision))?)
            }
        };
        return Ok(Op::Patch(PatchConv {
            weight,
            bias,
            k,
            linear,
        }));
    }
    Ok(Op::Dense {
        weight,
        bias,
        stride,
        pad,
    })
}

/// Every `stride`-th position of a channels-last map (1: the map itself).
fn subsample(x: &Tensor, stride: usize) -> Result<Tensor> {
    if stride == 1 {
        return Ok(x.clone());
    }
    let (n, h, w, c) = x.dims4()?;
    let (ho, wo) = (h.div_ceil(stride), w.div_ceil(stride));
    // Pad to a multiple of the stride, view as (n, ho, stride, wo, stride, c), keep index 0.
    let x = x
        .pad_with_zeros(1, 0, ho * stride - h)?
        .pad_with_zeros(2, 0, wo * stride - w)?;
    x.reshape((n, ho, stride, wo, stride, c))?
        .narrow(2, 0, 1)?
        .narrow(4, 0, 1)?
        .reshape((n, ho, wo, c))?
        .contiguous()
}

/// k×k max-pooling with padding that never wins (as PyTorch pads it), channels-last.
fn max_pool(x: &Tensor, k: usize, stride: usize, pad: usize) -> Result<Tensor> {
    if x.track_op() {
        return max_pool_composed(x, k, stride, pad);
    }
    let mut x = x.permute((0, 3, 1, 2))?.contiguous()?;
    if pad > 0 {
        let (n, c, h, w) = x.dims4()?;
        let (dev, dt) = (x.device().clone(), x.dtype());
        let low =
            |shape: (usize, usize, usize, usize)| Tensor::full(f32::MIN, shape, &dev)?.to_dtype(dt);
        let rows = low((n, c, pad, w))?;
        x = Tensor::cat(&[&rows, &x, &rows], 2)?;
        let cols = low((n, c, h + 2 * pad, pad))?;
        x = Tensor::cat(&[&cols, &x, &cols], 3)?;
    }
    x.max_pool2d_with_stride(k, stride)?
        .permute((0, 2, 3, 1))?
        .contiguous()
}

/// The same max-pooling from ops that have a backward pass (candle's pooling op has none for
/// a window wider than its stride, as ResNet's 3×3 stride-2 stem pool is): the maximum of the
/// k² strided views of the padded input. Where two positions tie, both get the gradient.
fn max_pool_composed(x: &Tensor, k: usize, stride: usize, pad: usize) -> Result<Tensor> {
    let (n, h, w, c) = x.dims4()?;
    let (dev, dt) = (x.device().clone(), x.dtype());
    let low =
        |shape: (usize, usize, usize, usize)| Tensor::full(f32::MIN, shape, &dev)?.to_dtype(dt);
    let rows = low((n, pad, w, c))?;
    let x = Tensor::cat(&[&rows, x, &rows], 1)?;
    let cols = low((n, h + 2 * pad, pad, c))?;
    let x = Tensor::cat(&[&cols, &x, &cols], 2)?;
    let (ho, wo) = (
        (h + 2 * pad - k) / stride + 1,
        (w + 2 * pad - k) / stride + 1,
    );
    let ids = |start: usize, len: usize| -> Result<Tensor> {
        let v: Vec<u32> = (0..len).map(|i| (start + i * stride) as u32).collect();
        Tensor::from_vec(v, len, &dev)
    };
    let mut out: Option<Tensor> = None;
    for dy in 0..k {
        let r = x.index_select(&ids(dy, ho)?, 1)?;
        for dx in 0..k {
            let v = r.index_select(&ids(dx, wo)?, 2)?;
            out = Some(match out {
                Some(o) => o.maximum(&v)?,
                None => v,
            });
        }
    }
    out.ok_or_else(|| candle_core::Error::Msg("an empty pooling window".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The composed pooling (taken when a gradient is wanted) equals candle's, and its gradient
    /// reaches each window's maximum.
    #[test]
    fn composed_max_pool_equals_candles_and_has_a_gradient() {
        let x = Tensor::randn(0f32, 1f32, (2, 9, 10, 3), &Device::Cpu).unwrap();
        let plain = max_pool(&x, 3, 2, 1).unwrap();
        let v = Var::from_tensor(&x).unwrap();
        let tracked = max_pool(v.as_tensor(), 3, 2, 1).unwrap();
        assert_eq!(plain.dims(), &[2, 5, 5, 3]);
        let d = (&plain - &tracked)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        let g = tracked.sum_all().unwrap().backward().unwrap();
        let g = g.get(v.as_tensor()).unwrap();
        // Every output takes its gradient from one input (random values do not tie).
        let total = g.sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(total, (2 * 5 * 5 * 3) as f32);
    }
}
