//! The network a [`Plan`] describes: plain structs with `new(vb, &plan)` and `forward`.
//!
//! Everything runs channels-last (`[N, H, W, C]`) inside: the depthwise conv vectorises along
//! channels, norms and 1×1 convolutions work on the last axis with no permutes, and the
//! stride-k k×k convs become one matmul over patches. Input and logits are as in PyTorch
//! (`[N, 3, H, W]` in, `[N, classes]` out); observers see channels-last maps (see
//! [`crate::analysis::trace::to_nchw`]). A block that has ConvNeXt's shape runs the fused path
//! (`convnext_block.rs`); every other layer runs as an [`Op`] (`layer_ops.rs`).
use super::convnext_block::ConvNeXtBlock;
use super::layer_ops::Op;
use super::layers::{BuildOptions, LayerNorm};
use super::plan::{BlockSpec, LayerSpec, Plan};
use crate::base::pool::run_awake;
use crate::model::layer_id::LayerId;
use crate::model::observer::{report, NoObserver, Observer};
use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

/// A layer with its name.
#[derive(Clone, Debug)]
pub(crate) struct Layer {
    pub id: LayerId,
    pub op: Op,
}

impl Layer {
    fn new(vb: &VarBuilder, spec: &LayerSpec, t: BuildOptions) -> Result<Self> {
        Ok(Self {
            id: spec.id,
            op: Op::new(vb.pp(spec.id.name()), vb, spec, t)?,
        })
    }

    fn run<O: Observer>(&self, x: &Tensor, obs: &mut O) -> Result<Tensor> {
        obs.enter(self.id)?;
        report(obs, self.id, self.op.forward(x)?)
    }
}

fn build_all(vb: &VarBuilder, specs: &[LayerSpec], t: BuildOptions) -> Result<Vec<Layer>> {
    specs.iter().map(|s| Layer::new(vb, s, t)).collect()
}

fn run_all<O: Observer>(layers: &[Layer], x: Tensor, obs: &mut O) -> Result<Tensor> {
    layers.iter().try_fold(x, |x, l| l.run(&x, obs))
}

/// A stem or a downsample: where it is a patch conv and a LayerNorm (ConvNeXt's stem) or the
/// other way round (its downsamples) and nobody looks at the first one's output, the two run
/// as one (the norm in place on the matmul's output, or inside the patch gather: one pass
/// over the map fewer); else its layers one by one.
fn run_pair<O: Observer>(layers: &[Layer], x: Tensor, obs: &mut O) -> Result<Tensor> {
    if let (false, [first, last]) = (obs.sees_outputs(), layers) {
        let fused = match (&first.op, &last.op) {
            (Op::Patch(conv), Op::LayerNorm(norm)) => conv.forward_then_norm(&x, norm)?,
            (Op::LayerNorm(norm), Op::Patch(conv)) => conv.forward_normed(&x, norm)?,
            _ => None,
        };
        if let Some(y) = fused {
            obs.enter(last.id)?;
            return report(obs, last.id, y);
        }
    }
    run_all(layers, x, obs)
}

/// A residual block of any other shape: `after(branch(x) + shortcut(x))`.
#[derive(Clone, Debug)]
pub(crate) struct GenericBlock {
    branch: Vec<Layer>,
    shortcut: Vec<Layer>,
    add: LayerId,
    after: Vec<Layer>,
}

impl GenericBlock {
    fn new(vb: &VarBuilder, spec: &BlockSpec, t: BuildOptions) -> Result<Self> {
        Ok(Self {
            branch: build_all(vb, &spec.branch, t)?,
            shortcut: build_all(vb, &spec.shortcut, t)?,
            add: spec.add.id,
            after: build_all(vb, &spec.after, t)?,
        })
    }

    fn forward<O: Observer>(
        &self,
        x: &Tensor,
        obs: &mut O,
        keep: Option<&Tensor>,
    ) -> Result<Tensor> {
        let y = run_all(&self.branch, x.clone(), obs)?;
        // Stochastic depth: a per-sample keep mask, already scaled by 1/keep_prob.
        let y = match keep {
            Some(mask) => y.broadcast_mul(mask)?,
            None => y,
        };
        let s = run_all(&self.shortcut, x.clone(), obs)?;
        obs.enter(self.add)?;
        let sum = report(obs, self.add, (s + y)?)?;
        run_all(&self.after, sum, obs)
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Block {
    ConvNeXt(Box<ConvNeXtBlock>),
    Generic(GenericBlock),
}

#[derive(Clone, Debug)]
pub struct Stage {
    downsample: Vec<Layer>,
    blocks: Vec<(LayerId, Block)>,
}

#[derive(Clone, Debug)]
pub struct Network {
    pub plan: Plan,
    stem: Vec<Layer>,
    stages: Vec<Stage>,
    head: Vec<Layer>,
}

impl Network {
    /// Builds the network for inference from tensors named as the plan names them.
    pub fn new(vb: VarBuilder, plan: &Plan) -> Result<Self> {
        Self::new_with(vb, plan, BuildOptions::default())
    }

    pub fn new_with(vb: VarBuilder, plan: &Plan, t: BuildOptions) -> Result<Self> {
        if let Some(cfg) = plan.convnext_config() {
            cfg.validate()
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        }
        let stages = plan
            .stages
            .iter()
            .map(|s| {
                let blocks = s
                    .blocks
                    .iter()
                    .map(|b| {
                        let block = match ConvNeXtBlock::matches(b) {
                            true => Block::ConvNeXt(Box::new(ConvNeXtBlock::new(&vb, b, t)?)),
                            false => Block::Generic(GenericBlock::new(&vb, b, t)?),
                        };
                        Ok((b.id, block))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Stage {
                    downsample: build_all(&vb, &s.downsample, t)?,
                    blocks,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            plan: plan.clone(),
            stem: build_all(&vb, &plan.stem, t)?,
            stages,
            head: build_all(&vb, &plan.head, t)?,
        })
    }

    /// The dtype the weights are in.
    pub fn dtype(&self) -> DType {
        self.head
            .iter()
            .find_map(|l| l.op.dtype())
            .unwrap_or(DType::F32)
    }

    pub fn device(&self) -> candle_core::Device {
        self.head
            .iter()
            .find_map(|l| l.op.device())
            .unwrap_or(candle_core::Device::Cpu)
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

    /// The forward on rayon's pool with its workers awake ([`run_awake`]).
    fn run<O: Observer>(
        &self,
        x: &Tensor,
        obs: &mut O,
        keep: Option<&[Vec<Tensor>]>,
    ) -> Result<Tensor> {
        run_awake(|| self.run_layers(x, obs, keep))
    }

    fn run_layers<O: Observer>(
        &self,
        x: &Tensor,
        obs: &mut O,
        keep: Option<&[Vec<Tensor>]>,
    ) -> Result<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        let stride = self.plan.stride();
        if c != 3 || h == 0 || w == 0 || h % stride != 0 || w % stride != 0 {
            candle_core::bail!(
                "input must be [N, 3, H, W] with H and W positive multiples of {stride}, got {:?}",
                x.dims()
            )
        }
        let x = x.to_dtype(self.dtype())?.permute((0, 2, 3, 1))?;
        obs.enter(LayerId::Stem)?;
        let y = run_pair(&self.stem, x, obs)?;
        let mut y = report(obs, LayerId::Stem, y)?;
        for (s, stage) in self.stages.iter().enumerate() {
            obs.enter(LayerId::Stage(s))?;
            if !stage.downsample.is_empty() {
                obs.enter(LayerId::Downsample(s))?;
                y = run_pair(&stage.downsample, y, obs)?;
                y = report(obs, LayerId::Downsample(s), y)?;
            }
            for (b, (id, block)) in stage.blocks.iter().enumerate() {
                obs.enter(*id)?;
                let mask = keep.and_then(|k| k.get(s)).and_then(|k| k.get(b));
                y = match block {
                    Block::ConvNeXt(blk) => blk.forward(&y, obs, mask)?,
                    Block::Generic(blk) => blk.forward(&y, obs, mask)?,
                };
                y = report(obs, *id, y)?;
            }
            y = report(obs, LayerId::Stage(s), y)?;
        }
        obs.enter(LayerId::Head)?;
        let logits = run_all(&self.head, y, obs)?;
        report(obs, LayerId::Head, logits)
    }

    /// Class evidence map: for each position of the last stage's output (channels-last
    /// `[N, H, W, C]`), what that position contributes to the logit of `class`. The head pools
    /// first, then is affine in the pooled features once a LayerNorm's statistics are fixed
    /// (ConvNeXt) or plainly linear (ResNet): so the map's spatial mean equals the logit
    /// exactly (class activation mapping without approximation). Returns `[N, H, W]` f32.
    pub fn class_evidence(&self, last: &Tensor, class: usize) -> Result<Tensor> {
        let classes = self.plan.num_classes();
        if class >= classes {
            candle_core::bail!("class {class} out of range ({classes} classes)")
        }
        let norm = self.head.iter().find_map(|l| match &l.op {
            Op::LayerNorm(n) => Some(n),
            _ => None,
        });
        let fc = self
            .head
            .iter()
            .find_map(|l| match &l.op {
                Op::Linear(f) => Some(f),
                _ => None,
            })
            .ok_or_else(|| candle_core::Error::Msg("the head has no linear layer".into()))?;
        let f32t = |t: &Tensor| t.to_dtype(DType::F32);
        let weights = fc
            .weight()
            .ok_or_else(|| candle_core::Error::Msg("head weight not kept".into()))?;
        let w = f32t(&weights.get(class)?)?; // [C]
        let fc_bias = f32t(&fc.bias.get(class)?)?;
        let f = f32t(last)?;
        let n = f.dim(0)?;
        match norm {
            Some(norm) => evidence_through_norm(&f, norm, &w, &fc_bias, n),
            None => f.broadcast_mul(&w)?.sum(3)?.broadcast_add(&fc_bias),
        }
    }

    /// Blocks with ConvNeXt's shape, in forward order.
    pub(crate) fn convnext_blocks(&self) -> impl Iterator<Item = (LayerId, &ConvNeXtBlock)> {
        self.stages.iter().flat_map(|s| {
            s.blocks.iter().filter_map(|(id, b)| match b {
                Block::ConvNeXt(c) => Some((*id, &**c)),
                Block::Generic(_) => None,
            })
        })
    }

    /// Per-block layer-scale gamma (V1) as `(stage, block, values)`.
    pub fn gammas(&self) -> Result<Vec<(usize, usize, Vec<f32>)>> {
        self.convnext_blocks()
            .filter_map(|(id, b)| b.gamma().map(|g| (id, g)))
            .map(|(id, g)| {
                let (s, i) = block_index(id);
                Ok((s, i, g.to_dtype(DType::F32)?.to_vec1()?))
            })
            .collect()
    }

    /// Per-block GRN gamma (weight) and beta (bias) for V2, as `(stage, block, weight, bias)`.
    #[allow(clippy::type_complexity)]
    pub fn grn_params(&self) -> Result<Vec<(usize, usize, Vec<f32>, Vec<f32>)>> {
        self.convnext_blocks()
            .filter_map(|(id, b)| b.grn().map(|g| (id, g)))
            .map(|(id, g)| {
                let (s, i) = block_index(id);
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

fn block_index(id: LayerId) -> (usize, usize) {
    match id {
        LayerId::Block(s, b) => (s, b),
        _ => (0, 0),
    }
}

/// The per-position evidence through `pool → LayerNorm → fc`: with the pooled statistics
/// fixed, the LayerNorm is affine per position.
fn evidence_through_norm(
    f: &Tensor,
    norm: &LayerNorm,
    w: &Tensor,
    fc_bias: &Tensor,
    n: usize,
) -> Result<Tensor> {
    let f32t = |t: &Tensor| t.to_dtype(DType::F32);
    let pooled = f.mean((1, 2))?; // [N, C]
    let mu = pooled.mean_keepdim(1)?; // [N, 1]
    let var = pooled.broadcast_sub(&mu)?.sqr()?.mean_keepdim(1)?;
    let sigma = (var + norm.eps)?.sqrt()?;
    let g = f32t(&norm.weight)?;
    let wg = (w * &g)?;
    let bias = ((f32t(&norm.bias)? * w)?.sum_all()? + fc_bias)?;
    let centred = f.broadcast_sub(&mu.reshape((n, 1, 1, 1))?)?;
    let dot = centred.broadcast_mul(&wg)?.sum(3)?; // [N, H, W]
    dot.broadcast_div(&sigma.reshape((n, 1, 1))?)?
        .broadcast_add(&bias)
}
