//! The network: plain structs with `new(vb, &Config)` and `forward`.
//!
//! Everything runs channels-last (`[N, H, W, C]`) inside: the depthwise conv vectorises along
//! channels, LayerNorm and the MLP work on the last axis with no permutes, and the stride-4/2
//! convs become one matmul over patches. Input and logits are as in PyTorch (`[N, 3, H, W]` in,
//! `[N, classes]` out); observers see channels-last maps (see [`crate::trace::to_nchw`]).
use super::config::{Config, Version};
use super::layers::{conv_weight_as_matrix, patchify, Grn, LayerNorm, Linear};
use crate::ops::depthwise_conv_nhwc;
use crate::ops::gelu::{bias_gelu, gelu};
use crate::trace::{LayerId, NoObserver, Observer, Part};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

/// Options that only matter when training.
#[derive(Clone, Copy, Debug, Default)]
pub struct TrainOptions {
    /// Build differentiable LayerNorms and recompute weight layouts every forward.
    pub differentiable: bool,
}

/// A stride-k k×k conv over non-overlapping patches, done as a matmul.
#[derive(Clone, Debug)]
struct PatchConv {
    weight: Tensor,
    bias: Tensor,
    k: usize,
    /// `weight` as a `[O, k·k·I]` matrix, made once for inference (training recomputes it so
    /// that updates to the weight show).
    matrix: Option<Tensor>,
}

impl PatchConv {
    fn new(vb: VarBuilder, inp: usize, out: usize, k: usize, cache: bool) -> Result<Self> {
        let weight = vb.get((out, inp, k, k), "weight")?;
        let bias = vb.get(out, "bias")?;
        let matrix = if cache {
            Some(conv_weight_as_matrix(&weight)?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            k,
            matrix,
        })
    }

    fn forward(&self, x_nhwc: &Tensor) -> Result<Tensor> {
        let m = match &self.matrix {
            Some(m) => m.clone(),
            None => conv_weight_as_matrix(&self.weight)?,
        };
        let p = patchify(x_nhwc, self.k)?;
        let (n, h, w, kc) = p.dims4()?;
        let y = p
            .reshape((n * h * w, kc))?
            .matmul(&m.t()?)?
            .broadcast_add(&self.bias)?;
        y.reshape((n, h, w, m.dim(0)?))
    }
}

#[derive(Clone, Debug)]
pub struct Block {
    stage: usize,
    index: usize,
    dw_weight: Tensor,
    dw_bias: Tensor,
    /// `dw_weight` as `[K, K, C]` for the channels-last kernel (cached for inference).
    dw_kkc: Option<Tensor>,
    norm: LayerNorm,
    fc1: Linear,
    grn: Option<Grn>,
    fc2: Linear,
    gamma: Option<Tensor>,
}

fn dw_kernel_kkc(w: &Tensor) -> Result<Tensor> {
    let (c, _, k, _) = w.dims4()?;
    w.reshape((c, k, k))?.permute((1, 2, 0))?.contiguous()
}

impl Block {
    fn new(
        vb: VarBuilder,
        cfg: &Config,
        stage: usize,
        index: usize,
        t: TrainOptions,
    ) -> Result<Self> {
        let dim = cfg.dims[stage];
        let k = cfg.kernel_size;
        // Inference packs the MLP weights once for the CPU kernel; training keeps candle's
        // differentiable matmul.
        let linear = |vb: VarBuilder, i, o| {
            if t.differentiable {
                Linear::new(vb, i, o)
            } else {
                Linear::new_packed(vb, i, o)
            }
        };
        let dw_weight = vb.get((dim, 1, k, k), "conv_dw.weight")?;
        let dw_kkc = if t.differentiable {
            None
        } else {
            Some(dw_kernel_kkc(&dw_weight)?)
        };
        Ok(Self {
            stage,
            index,
            dw_bias: vb.get(dim, "conv_dw.bias")?,
            dw_weight,
            dw_kkc,
            norm: LayerNorm::new(vb.pp("norm"), dim, cfg.ln_eps, t.differentiable)?,
            fc1: linear(vb.pp("mlp.fc1"), dim, 4 * dim)?,
            grn: match cfg.version {
                Version::V2 => Some(Grn::new(vb.pp("mlp.grn"), 4 * dim)?),
                Version::V1 => None,
            },
            fc2: linear(vb.pp("mlp.fc2"), 4 * dim, dim)?,
            gamma: if cfg.layer_scale {
                Some(vb.get(dim, "gamma")?)
            } else {
                None
            },
        })
    }

    fn forward<O: Observer>(
        &self,
        x: &Tensor,
        obs: &mut O,
        keep: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (s, b) = (self.stage, self.index);
        let id = |p| LayerId::BlockPart(s, b, p);
        let step = |obs: &mut O, p: Part, f: &dyn Fn() -> Result<Tensor>| -> Result<Tensor> {
            obs.enter(id(p))?;
            let y = f()?;
            obs.layer(id(p), &y)?;
            Ok(y)
        };
        let kkc = match &self.dw_kkc {
            Some(k) => k.clone(),
            None => dw_kernel_kkc(&self.dw_weight)?,
        };
        let y = step(obs, Part::ConvDw, &|| {
            depthwise_conv_nhwc(x, &kkc, &self.dw_bias)
        })?;
        let y = step(obs, Part::Norm, &|| self.norm.forward(&y))?;
        let inference = self.dw_kkc.is_some();
        let y = if inference && !obs.sees_outputs() && !self.fc1.is_packed() {
            // Nobody looks at fc1's output on its own: add its bias inside the GELU pass (the
            // packed kernel adds it inside the matmul already).
            bias_gelu(&self.fc1.matmul(&y)?, &self.fc1.bias)?
        } else {
            let y = step(obs, Part::Fc1, &|| self.fc1.forward(&y))?;
            step(obs, Part::Act, &|| {
                if inference {
                    gelu(&y)
                } else {
                    y.gelu_erf()
                }
            })?
        };
        let y = match &self.grn {
            Some(grn) => step(obs, Part::Grn, &|| grn.forward(&y))?,
            None => y,
        };
        let y = step(obs, Part::Fc2, &|| self.fc2.forward(&y))?;
        let y = match &self.gamma {
            Some(g) => step(obs, Part::Gamma, &|| y.broadcast_mul(g))?,
            None => y,
        };
        // Stochastic depth: a per-sample keep mask, already scaled by 1/keep_prob.
        let y = match keep {
            Some(mask) => y.broadcast_mul(mask)?,
            None => y,
        };
        step(obs, Part::Add, &|| x + &y)
    }

    pub fn gamma(&self) -> Option<&Tensor> {
        self.gamma.as_ref()
    }

    pub fn grn(&self) -> Option<&Grn> {
        self.grn.as_ref()
    }
}

#[derive(Clone, Debug)]
pub struct Stage {
    downsample: Option<(LayerNorm, PatchConv)>,
    pub blocks: Vec<Block>,
}

#[derive(Clone, Debug)]
pub struct ConvNeXt {
    pub config: Config,
    stem_conv: PatchConv,
    stem_norm: LayerNorm,
    pub stages: Vec<Stage>,
    head_norm: LayerNorm,
    head_fc: Linear,
}

impl ConvNeXt {
    /// Builds the model for inference from tensors under timm's names.
    pub fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        Self::new_with(vb, cfg, TrainOptions::default())
    }

    pub fn new_with(vb: VarBuilder, cfg: &Config, t: TrainOptions) -> Result<Self> {
        cfg.validate()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let cache = !t.differentiable;
        let dims = &cfg.dims;
        let stem_conv = PatchConv::new(vb.pp("stem.0"), 3, dims[0], 4, cache)?;
        let stem_norm = LayerNorm::new(vb.pp("stem.1"), dims[0], cfg.ln_eps, t.differentiable)?;
        let mut stages = Vec::with_capacity(cfg.depths.len());
        for (s, &depth) in cfg.depths.iter().enumerate() {
            let vs = vb.pp(format!("stages.{s}"));
            let downsample = if s == 0 {
                None
            } else {
                let vd = vs.pp("downsample");
                Some((
                    LayerNorm::new(vd.pp("0"), dims[s - 1], cfg.ln_eps, t.differentiable)?,
                    PatchConv::new(vd.pp("1"), dims[s - 1], dims[s], 2, cache)?,
                ))
            };
            let blocks = (0..depth)
                .map(|b| Block::new(vs.pp(format!("blocks.{b}")), cfg, s, b, t))
                .collect::<Result<Vec<_>>>()?;
            stages.push(Stage { downsample, blocks });
        }
        let last = *dims.last().unwrap_or(&0);
        Ok(Self {
            config: cfg.clone(),
            stem_conv,
            stem_norm,
            stages,
            head_norm: LayerNorm::new(vb.pp("head.norm"), last, cfg.head_ln_eps, t.differentiable)?,
            head_fc: Linear::new(vb.pp("head.fc"), last, cfg.num_classes)?,
        })
    }

    pub fn dtype(&self) -> DType {
        self.head_fc.bias.dtype()
    }

    pub fn device(&self) -> &candle_core::Device {
        self.head_fc.bias.device()
    }

    /// Logits `[N, classes]` for an `[N, 3, H, W]` batch.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_observed(x, &mut NoObserver)
    }

    /// The forward pass, reporting every named layer to `obs`.
    pub fn forward_observed<O: Observer>(&self, x: &Tensor, obs: &mut O) -> Result<Tensor> {
        self.run(x, obs, None)
    }

    /// Training forward with stochastic depth: `keep_masks[stage][block]` is a `[N,1,1,1]` mask
    /// scaled by 1/keep-probability.
    pub fn forward_train(&self, x: &Tensor, keep_masks: &[Vec<Tensor>]) -> Result<Tensor> {
        self.run(x, &mut NoObserver, Some(keep_masks))
    }

    fn run<O: Observer>(
        &self,
        x: &Tensor,
        obs: &mut O,
        keep: Option<&[Vec<Tensor>]>,
    ) -> Result<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        let stride = self.config.stride();
        if c != 3 || h == 0 || w == 0 || h % stride != 0 || w % stride != 0 {
            candle_core::bail!(
                "input must be [N, 3, H, W] with H and W positive multiples of {stride}, got {:?}",
                x.dims()
            )
        }
        let x = x.to_dtype(self.dtype())?.permute((0, 2, 3, 1))?;

        obs.enter(LayerId::Stem)?;
        obs.enter(LayerId::StemConv)?;
        let y = self.stem_conv.forward(&x)?;
        obs.layer(LayerId::StemConv, &y)?;
        obs.enter(LayerId::StemNorm)?;
        let mut y = self.stem_norm.forward(&y)?;
        obs.layer(LayerId::StemNorm, &y)?;
        obs.layer(LayerId::Stem, &y)?;

        for (s, stage) in self.stages.iter().enumerate() {
            obs.enter(LayerId::Stage(s))?;
            if let Some((norm, conv)) = &stage.downsample {
                obs.enter(LayerId::Downsample(s))?;
                obs.enter(LayerId::DownsampleNorm(s))?;
                y = norm.forward(&y)?;
                obs.layer(LayerId::DownsampleNorm(s), &y)?;
                obs.enter(LayerId::DownsampleConv(s))?;
                y = conv.forward(&y)?;
                obs.layer(LayerId::DownsampleConv(s), &y)?;
                obs.layer(LayerId::Downsample(s), &y)?;
            }
            for (b, block) in stage.blocks.iter().enumerate() {
                obs.enter(LayerId::Block(s, b))?;
                let mask = keep.and_then(|k| k.get(s)).and_then(|k| k.get(b));
                y = block.forward(&y, obs, mask)?;
                obs.layer(LayerId::Block(s, b), &y)?;
            }
            obs.layer(LayerId::Stage(s), &y)?;
        }

        obs.enter(LayerId::Head)?;
        obs.enter(LayerId::HeadPool)?;
        let pooled = y.mean((1, 2))?;
        obs.layer(LayerId::HeadPool, &pooled)?;
        obs.enter(LayerId::HeadNorm)?;
        let normed = self.head_norm.forward(&pooled)?;
        obs.layer(LayerId::HeadNorm, &normed)?;
        obs.enter(LayerId::HeadFc)?;
        let logits = self.head_fc.forward(&normed)?;
        obs.layer(LayerId::HeadFc, &logits)?;
        obs.layer(LayerId::Head, &logits)?;
        Ok(logits)
    }

    /// Class evidence map: for each position of the last stage's output (channels-last
    /// `[N, H, W, C]`), what that position contributes to the logit of `class`. Because pooling
    /// comes before the head's LayerNorm, the head is affine in each position's features once
    /// the pooled statistics are fixed, so the map's spatial mean equals the logit exactly
    /// (class activation mapping without approximation). Returns `[N, H, W]` f32.
    pub fn class_evidence(&self, last: &Tensor, class: usize) -> Result<Tensor> {
        if class >= self.config.num_classes {
            candle_core::bail!(
                "class {class} out of range ({} classes)",
                self.config.num_classes
            )
        }
        let f = last.to_dtype(DType::F32)?;
        let pooled = f.mean((1, 2))?; // [N, C]
        let mu = pooled.mean_keepdim(1)?; // [N, 1]
        let var = pooled.broadcast_sub(&mu)?.sqr()?.mean_keepdim(1)?;
        let sigma = (var + self.head_norm.eps)?.sqrt()?;
        let f32t = |t: &Tensor| t.to_dtype(DType::F32);
        let fc = self
            .head_fc
            .weight()
            .ok_or_else(|| candle_core::Error::Msg("head weight not kept".into()))?;
        let w = f32t(&fc.get(class)?)?; // [C]
        let g = f32t(&self.head_norm.weight)?;
        let wg = (&w * &g)?;
        let bias = ((f32t(&self.head_norm.bias)? * &w)?.sum_all()?
            + f32t(&self.head_fc.bias.get(class)?)?)?;
        let n = f.dim(0)?;
        let centred = f.broadcast_sub(&mu.reshape((n, 1, 1, 1))?)?;
        let dot = centred.broadcast_mul(&wg)?.sum(3)?; // [N, H, W]
        dot.broadcast_div(&sigma.reshape((n, 1, 1))?)?
            .broadcast_add(&bias)
    }

    /// Every block, in forward order.
    pub fn blocks(&self) -> impl Iterator<Item = &Block> {
        self.stages.iter().flat_map(|s| s.blocks.iter())
    }

    /// Per-block layer-scale gamma (V1) as `(stage, block, values)`.
    pub fn gammas(&self) -> Result<Vec<(usize, usize, Vec<f32>)>> {
        self.blocks()
            .filter_map(|b| b.gamma().map(|g| (b.stage, b.index, g)))
            .map(|(s, i, g)| Ok((s, i, g.to_dtype(DType::F32)?.to_vec1()?)))
            .collect()
    }

    /// Per-block GRN gamma (weight) and beta (bias) for V2, as `(stage, block, weight, bias)`.
    #[allow(clippy::type_complexity)]
    pub fn grn_params(&self) -> Result<Vec<(usize, usize, Vec<f32>, Vec<f32>)>> {
        self.blocks()
            .filter_map(|b| b.grn().map(|g| (b.stage, b.index, g)))
            .map(|(s, i, g)| {
                Ok((
                    s,
                    i,
                    g.weight.to_dtype(DType::F32)?.to_vec1()?,
                    g.bias.to_dtype(DType::F32)?.to_vec1()?,
                ))
            })
            .collect()
    }
}
