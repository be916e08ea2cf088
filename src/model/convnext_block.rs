//! ConvNeXt's block on its fast path: depthwise k×k → LayerNorm → Linear 4× → GELU (→ GRN) →
//! Linear → (layer scale) → + input, the MLP on the packed GEMM. When nobody looks at the
//! layers one by one and no gradient is wanted, the conv and the norm run as one op and the
//! GEMM applies the GELU, the layer scale and the residual add in its epilogues; training
//! fuses fc1's bias into the GELU and fc2's into the layer scale.
use super::layers::{BuildOptions, Grn, LayerNorm, Linear};
use super::plan::{BlockSpec, Kind};
use crate::kernels::bias_scale::bias_scale;
use crate::kernels::depthwise_conv_nhwc;
use crate::kernels::dwconv::depthwise_conv_layer_norm;
use crate::kernels::gelu::{bias_gelu, gelu};
use crate::model::layer_id::LayerId;
use crate::model::observer::{report, Observer};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Clone, Debug)]
pub struct ConvNeXtBlock {
    /// The ids of conv_dw, norm, fc1, act, grn, fc2, gamma and the add, as the plan names them.
    ids: Ids,
    dw_weight: Tensor,
    dw_bias: Tensor,
    /// `dw_weight` as `[K, K, C]` for the channels-last kernel (cached for inference).
    dw_kkc: Option<Tensor>,
    norm: LayerNorm,
    fc1: Linear,
    grn: Option<Grn>,
    fc2: Linear,
    gamma: Option<Tensor>,
    /// `gamma`'s values for fc2's fused epilogue, where fc2 is packed.
    gamma_packed: Option<std::sync::Arc<Vec<f32>>>,
    /// GRN's values for fc1's fused op (inference, f32).
    grn_packed: Option<std::sync::Arc<crate::kernels::grn::GrnValues>>,
    /// The norm's weight, bias and eps as the fused conv + norm takes them (inference, f32).
    norm_packed: Option<NormValues>,
    /// Whether unobserved runs take the fused kernels above (off for
    /// [`BuildOptions::generic_ops`]).
    fused: bool,
}

type NormValues = (std::sync::Arc<Vec<f32>>, std::sync::Arc<Vec<f32>>, f32);

#[derive(Clone, Copy, Debug)]
struct Ids {
    dw: LayerId,
    norm: LayerId,
    fc1: LayerId,
    act: LayerId,
    grn: Option<LayerId>,
    fc2: LayerId,
    gamma: Option<LayerId>,
    add: LayerId,
}

pub fn dw_kernel_kkc(w: &Tensor) -> Result<Tensor> {
    let (c, _, k, _) = w.dims4()?;
    w.reshape((c, k, k))?.permute((1, 2, 0))?.contiguous()
}

impl ConvNeXtBlock {
    /// Whether a block has ConvNeXt's shape (so this fast path computes it exactly).
    pub fn matches(spec: &BlockSpec) -> bool {
        let b = &spec.branch;
        let c = b.first().map_or(0, |l| l.channels_in);
        let dw = |k: &Kind| {
            matches!(*k, Kind::Conv { k, stride: 1, pad, groups, bias: true }
                if k % 2 == 1 && pad == k / 2 && groups == c)
        };
        let kinds: Vec<&Kind> = b.iter().map(|l| &l.kind).collect();
        let core = kinds.len() >= 5
            && dw(kinds[0])
            && matches!(kinds[1], Kind::LayerNorm { .. })
            && matches!(kinds[2], Kind::Linear { bias: true })
            && matches!(kinds[3], Kind::Gelu);
        let rest: Vec<&Kind> = kinds.iter().skip(4).copied().collect();
        let tail_ok = matches!(
            rest.as_slice(),
            [Kind::Linear { bias: true }]
                | [Kind::Grn, Kind::Linear { bias: true }]
                | [Kind::Linear { bias: true }, Kind::LayerScale]
                | [Kind::Grn, Kind::Linear { bias: true }, Kind::LayerScale]
        );
        core && tail_ok && spec.shortcut.is_empty() && spec.after.is_empty()
    }

    /// Builds the block of a spec that [`ConvNeXtBlock::matches`].
    pub fn new(vb: &VarBuilder, spec: &BlockSpec, t: BuildOptions) -> Result<Self> {
        let b = &spec.branch;
        let find = |want: fn(&Kind) -> bool| b.iter().find(|l| want(&l.kind));
        let (dw, norm, fc1, act) = (&b[0], &b[1], &b[2], &b[3]);
        let fc2 = &b[b
            .iter()
            .rposition(|l| matches!(l.kind, Kind::Linear { .. }))
            .unwrap_or(4)];
        let grn = find(|k| matches!(k, Kind::Grn));
        let gamma = find(|k| matches!(k, Kind::LayerScale));
        let (c, k) = match dw.kind {
            Kind::Conv { k, .. } => (dw.channels_in, k),
            _ => candle_core::bail!("not a ConvNeXt block"),
        };
        let eps = match norm.kind {
            Kind::LayerNorm { eps } => eps,
            _ => candle_core::bail!("not a ConvNeXt block"),
        };
        // Inference packs the MLP weights once for the CPU kernel; training keeps candle's
        // differentiable matmul.
        let linear = |id: LayerId, i, o| {
            let vb = vb.pp(id.name());
            match t.packing() {
                None => Linear::new(vb, i, o),
                Some(precision) => Linear::new_packed(vb, i, o, precision),
            }
        };
        let vdw = vb.pp(dw.id.name());
        let dw_weight = vdw.get((c, 1, k, k), "weight")?;
        let dw_kkc = (!t.differentiable)
            .then(|| dw_kernel_kkc(&dw_weight))
            .transpose()?;
        let fc2_linear = linear(fc2.id, fc2.channels_in, c)?;
        let norm_layer = LayerNorm {
            composed: t.generic_ops,
            ..LayerNorm::new(vb.pp(norm.id.name()), c, eps, t.differentiable)?
        };
        let norm_packed = match !t.differentiable && norm_layer.weight.dtype() == DType::F32 {
            true => Some((
                std::sync::Arc::new(norm_layer.weight.to_vec1()?),
                std::sync::Arc::new(norm_layer.bias.to_vec1()?),
                eps as f32,
            )),
            false => None,
        };
        let gamma_t = gamma.map(|l| vb.get(c, &l.id.name())).transpose()?;
        let gamma_packed = match &gamma_t {
            Some(g) => fc2_linear.packed_scale(g)?,
            None => None,
        };
        let grn_layer = grn
            .map(|l| Grn::new(vb.pp(l.id.name()), l.channels_out))
            .transpose()?;
        let grn_packed = match (&grn_layer, t.differentiable) {
            (Some(g), false) => g.values()?,
            _ => None,
        };
        Ok(Self {
            ids: Ids {
                dw: dw.id,
                norm: norm.id,
                fc1: fc1.id,
                act: act.id,
                grn: grn.map(|l| l.id),
                fc2: fc2.id,
                gamma: gamma.map(|l| l.id),
                add: spec.add.id,
            },
            dw_bias: vdw.get(c, "bias")?,
            dw_weight,
            dw_kkc,
            norm: norm_layer,
            fused: !t.generic_ops,
            fc1: linear(fc1.id, c, fc1.channels_out)?,
            grn: grn_layer,
            fc2: fc2_linear,
            gamma: gamma_t,
            gamma_packed,
            grn_packed,
            norm_packed,
        })
    }

    pub fn forward<O: Observer>(
        &self,
        x: &Tensor,
        obs: &mut O,
        keep: Option<&Tensor>,
    ) -> Result<Tensor> {
        let step = |obs: &mut O, id: LayerId, f: &dyn Fn() -> Result<Tensor>| -> Result<Tensor> {
            obs.enter(id)?;
            report(obs, id, f()?)
        };
        let ids = self.ids;
        let kkc = match &self.dw_kkc {
            Some(k) => k.clone(),
            None => dw_kernel_kkc(&self.dw_weight)?,
        };
        // Nobody looks at the layers one by one and no gradient is wanted: the fused kernels.
        let fast = self.fused && !obs.sees_outputs() && keep.is_none() && !x.track_op();
        // In bf16 the norm's output goes to fc1 in bf16, where the fused MLP will take it.
        let bf16 = self.mlp_fusable() && self.fc1.takes_bf16();
        let conv_norm = match (&self.norm_packed, fast) {
            (Some((w, b, eps)), true) => {
                depthwise_conv_layer_norm(x, &kkc, &self.dw_bias, (w, b, *eps), bf16)?
            }
            _ => None,
        };
        let y = match conv_norm {
            Some(y) => y,
            None => {
                let y = step(obs, ids.dw, &|| depthwise_conv_nhwc(x, &kkc, &self.dw_bias))?;
                step(obs, ids.norm, &|| self.norm.forward(&y))?
            }
        };
        if fast {
            if let Some(out) = self.mlp_fused(&y, x)? {
                obs.enter(ids.add)?;
                return report(obs, ids.add, out);
            }
        }
        let y = if self.fused && !obs.sees_outputs() && !self.fc1.is_packed() {
            // Nobody looks at fc1's output on its own: add its bias inside the GELU pass (the
            // packed kernel adds it inside the matmul already). Training takes this path too:
            // the fused op's backward gives the bias its gradient.
            bias_gelu(&self.fc1.matmul(&y)?, &self.fc1.bias)?
        } else {
            let y = step(obs, ids.fc1, &|| self.fc1.forward(&y))?;
            step(obs, ids.act, &|| match self.fused {
                true => gelu(&y),
                false => y.gelu_erf(),
            })?
        };
        let y = match (&self.grn, ids.grn) {
            (Some(grn), Some(id)) => step(obs, id, &|| grn.forward(&y))?,
            _ => y,
        };
        let y = match (&self.gamma, ids.gamma) {
            // Unobserved and unpacked (training): fc2's bias and the layer scale in one pass.
            (Some(g), Some(_)) if self.fused && !obs.sees_outputs() && !self.fc2.is_packed() => {
                bias_scale(&self.fc2.matmul(&y)?, &self.fc2.bias, g)?
            }
            (Some(g), Some(id)) => {
                let y = step(obs, ids.fc2, &|| self.fc2.forward(&y))?;
                step(obs, id, &|| crate::kernels::bias_scale::scale(&y, g))?
            }
            _ => step(obs, ids.fc2, &|| self.fc2.forward(&y))?,
        };
        // Stochastic depth: a per-sample keep mask, already scaled by 1/keep_prob.
        let y = match keep {
            Some(mask) => y.broadcast_mul(mask)?,
            None => y,
        };
        step(obs, ids.add, &|| x + &y)
    }

    /// fc1 + GELU (+ GRN) + fc2 + layer scale + the residual add with the GEMM's epilogues
    /// (two passes over memory fewer than one op per layer), where both Linears are packed and
    /// no gradient flows; `None` elsewhere.
    fn mlp_fused(&self, y: &Tensor, x: &Tensor) -> Result<Option<Tensor>> {
        if !self.mlp_fusable() {
            return Ok(None);
        }
        // GRN fused only where its values are ready (f32 inference).
        let grn_ready = self.grn.is_none() || self.grn_packed.is_some();
        if grn_ready {
            let fc2 = &self.fc2;
            let (gamma, grn) = (self.gamma_packed.as_ref(), self.grn_packed.as_ref());
            let fused = self.fc1.forward_mlp_fused(fc2, y, gamma, grn, x)?;
            if fused.is_some() {
                return Ok(fused);
            }
        }
        // In bf16 with no GRN between them, fc1 hands fc2 its output in bf16 (half the bytes,
        // and no conversion pass): fc2 rounds its input to bf16 anyway.
        let bf16 = self.grn.is_none() && self.fc2.takes_bf16();
        let Some(h) = self
            .fc1
            .forward_gelu_fused(y, bf16, self.grn_packed.as_ref())?
        else {
            return Ok(None);
        };
        // GRN applied in fc1's op where its values are ready, else as its own op.
        let h = match (&self.grn, &self.grn_packed) {
            (Some(grn), None) => grn.forward(&h)?,
            _ => h,
        };
        self.fc2
            .forward_scale_add_fused(&h, self.gamma_packed.as_ref(), x)
    }

    /// Whether [`Self::mlp_fused`] runs (on a CPU input): both Linears packed, and the layer
    /// scale's values ready for fc2's epilogue.
    fn mlp_fusable(&self) -> bool {
        self.fc1.is_packed()
            && self.fc2.is_packed()
            && (self.gamma.is_none() || self.gamma_packed.is_some())
    }

    pub fn gamma(&self) -> Option<&Tensor> {
        self.gamma.as_ref()
    }

    pub fn grn(&self) -> Option<&Grn> {
        self.grn.as_ref()
    }
}
