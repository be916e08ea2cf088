//! The one description of an architecture: a Plan of typed layers. The network is built from it
//! (`Network::new`), its MACs and parameters are counted from it (`flops::layers`), the tensors
//! a checkpoint must hold are named by it (`Plan::tensors`), and random weights are made from
//! it (`Plan::random_weights`). ConvNeXt V1/V2 of any shape and the sixteen steps of the
//! paper's modernization roadmap (`roadmap.rs`) are functions that return a Plan.
use super::config::{Config, Version};
use crate::base::error::{Error, Result};
use crate::model::layer_id::{LayerId, Part};
use candle_core::{Device, Tensor};
use std::collections::HashMap;

/// What a layer computes. Shapes are NCHW as in PyTorch; channels live in [`LayerSpec`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// A k×k convolution; `groups == channels` makes it depthwise.
    Conv {
        k: usize,
        stride: usize,
        pad: usize,
        groups: usize,
        bias: bool,
    },
    /// A linear map over channels: a 1×1 convolution in the trunk, the classifier in the head.
    Linear {
        bias: bool,
    },
    /// BatchNorm in eval mode: running statistics and a learned scale and shift.
    BatchNorm {
        eps: f64,
    },
    /// LayerNorm over channels.
    LayerNorm {
        eps: f64,
    },
    Relu,
    Gelu,
    /// ConvNeXt V2's Global Response Normalisation.
    Grn,
    /// A learned per-channel scale (timm's `gamma`).
    LayerScale,
    MaxPool {
        k: usize,
        stride: usize,
        pad: usize,
    },
    /// Mean over height and width, to `[N, C]`.
    GlobalAvgPool,
    /// The residual add that ends a block.
    Add,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LayerSpec {
    pub id: LayerId,
    pub kind: Kind,
    pub channels_in: usize,
    pub channels_out: usize,
}

/// A residual block: `after(branch(x) + shortcut(x))`.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockSpec {
    pub id: LayerId,
    pub branch: Vec<LayerSpec>,
    /// Empty for the identity.
    pub shortcut: Vec<LayerSpec>,
    /// The add's id (a layer of kind [`Kind::Add`]).
    pub add: LayerSpec,
    /// What follows the add (ResNet's ReLU); usually nothing.
    pub after: Vec<LayerSpec>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StageSpec {
    /// Layers between the previous stage and this one's blocks (may be empty).
    pub downsample: Vec<LayerSpec>,
    pub blocks: Vec<BlockSpec>,
}

/// How random weights are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// timm's ConvNeXt: truncated normal σ = 0.02 for convolution and linear weights.
    Timm,
    /// torchvision's ResNet: Kaiming normal (fan-out, ReLU gain) for convolutions.
    Torchvision,
}

/// Which family a plan belongs to, for what only that family has.
#[derive(Clone, Debug, PartialEq)]
pub enum Family {
    ConvNeXt(Config),
    /// Step `index` of the modernization roadmap (`roadmap::STEPS`).
    Roadmap(usize),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub name: String,
    pub family: Family,
    pub stem: Vec<LayerSpec>,
    pub stages: Vec<StageSpec>,
    pub head: Vec<LayerSpec>,
    pub init: Init,
}

/// What a tensor is for: decides its initial values and whether it counts as a parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A convolution or linear weight.
    Weight,
    Bias,
    /// A norm's scale (1 at init).
    Scale,
    /// A norm's shift (0 at init).
    Shift,
    RunningMean,
    RunningVar,
    LayerScale,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub role: Role,
}

impl TensorSpec {
    /// Running statistics are buffers, not parameters (as in PyTorch).
    pub fn is_parameter(&self) -> bool {
        !matches!(self.role, Role::RunningMean | Role::RunningVar)
    }
}

impl LayerSpec {
    pub fn new(id: LayerId, kind: Kind, channels_in: usize, channels_out: usize) -> Self {
        Self {
            id,
            kind,
            channels_in,
            channels_out,
        }
    }

    /// A layer that keeps its channel count.
    pub fn same(id: LayerId, kind: Kind, channels: usize) -> Self {
        Self::new(id, kind, channels, channels)
    }

    /// The tensors this layer reads, named as the checkpoint names them.
    pub fn tensors(&self) -> Vec<TensorSpec> {
        let n = self.id.name();
        let t = |suffix: &str, shape: Vec<usize>, role| TensorSpec {
            name: format!("{n}.{suffix}"),
            shape,
            role,
        };
        let (i, o) = (self.channels_in, self.channels_out);
        match self.kind {
            Kind::Conv {
                k, groups, bias, ..
            } => {
                let mut v = vec![t("weight", vec![o, i / groups.max(1), k, k], Role::Weight)];
                if bias {
                    v.push(t("bias", vec![o], Role::Bias));
                }
                v
            }
            Kind::Linear { bias } => {
                let mut v = vec![t("weight", vec![o, i], Role::Weight)];
                if bias {
                    v.push(t("bias", vec![o], Role::Bias));
                }
                v
            }
            Kind::BatchNorm { .. } => vec![
                t("weight", vec![o], Role::Scale),
                t("bias", vec![o], Role::Shift),
                t("running_mean", vec![o], Role::RunningMean),
                t("running_var", vec![o], Role::RunningVar),
            ],
            Kind::LayerNorm { .. } => vec![
                t("weight", vec![o], Role::Scale),
                t("bias", vec![o], Role::Shift),
            ],
            // GRN's γ and β start at zero: the block starts as the identity on that path.
            Kind::Grn => vec![
                t("weight", vec![o], Role::Shift),
                t("bias", vec![o], Role::Shift),
            ],
            Kind::LayerScale => vec![TensorSpec {
                name: n,
                shape: vec![o],
                role: Role::LayerScale,
            }],
            _ => vec![],
        }
    }

    /// The output shape (NCHW, or `[N, C]` after pooling) for an input shape.
    pub fn out_shape(&self, x: &[usize]) -> Vec<usize> {
        let o = self.channels_out;
        let spatial = |k: usize, stride: usize, pad: usize, d: usize| {
            (d + 2 * pad).saturating_sub(k) / stride.max(1) + 1
        };
        match (self.kind, x) {
            (Kind::Conv { k, stride, pad, .. }, [n, _, h, w]) => {
                vec![
                    *n,
                    o,
                    spatial(k, stride, pad, *h),
                    spatial(k, stride, pad, *w),
                ]
            }
            (Kind::MaxPool { k, stride, pad }, [n, c, h, w]) => {
                vec![
                    *n,
                    *c,
                    spatial(k, stride, pad, *h),
                    spatial(k, stride, pad, *w),
                ]
            }
            (Kind::GlobalAvgPool, [n, c, ..]) => vec![*n, *c],
            (Kind::Linear { .. }, [n, _, rest @ ..]) => [&[*n, o][..], rest].concat(),
            _ => x.to_vec(),
        }
    }

    /// Whether the paper's convention counts this layer (convolutions and linear layers).
    pub fn is_conv_or_linear(&self) -> bool {
        matches!(self.kind, Kind::Conv { .. } | Kind::Linear { .. })
    }

    /// Elements the layer must at least read and write: its input (both operands of an add),
    /// its output and its `params` (the roofline's bytes moved, per element of the dtype).
    pub fn traffic(&self, input: &[usize], output: &[usize], params: usize) -> u64 {
        let numel = |s: &[usize]| s.iter().map(|&d| d as u64).product::<u64>();
        let operands = if matches!(self.kind, Kind::Add) { 2 } else { 1 };
        operands * numel(input) + numel(output) + params as u64
    }

    /// Multiply-adds as fvcore counts them, and elementwise operations it leaves out.
    pub fn macs(&self, input: &[usize], output: &[usize]) -> (u64, u64) {
        let numel = |s: &[usize]| s.iter().map(|&d| d as u64).product::<u64>();
        let (ni, no) = (numel(input), numel(output));
        let ci = self.channels_in as u64;
        match self.kind {
            Kind::Conv { k, groups, .. } => (no * ci / groups.max(1) as u64 * (k * k) as u64, 0),
            Kind::Linear { .. } => (no * ci, 0),
            // fvcore: LayerNorm 5 per element; BatchNorm in eval 2 (scale and shift).
            Kind::LayerNorm { .. } => (5 * ni, 0),
            Kind::BatchNorm { .. } => (2 * ni, 0),
            Kind::GlobalAvgPool => (ni, 0),
            Kind::Gelu | Kind::Relu | Kind::LayerScale | Kind::Add => (0, ni),
            Kind::Grn => (0, 4 * ni),
            Kind::MaxPool { k, .. } => (0, no * (k * k) as u64),
        }
    }

    /// How a layer reads in the tables: `Conv2d 4×4 /4`, `DwConv 7×7`, `LayerNorm`.
    pub fn label(&self) -> String {
        match self.kind {
            Kind::Conv {
                k, stride, groups, ..
            } => {
                let name = if groups > 1 && groups == self.channels_in {
                    "DwConv"
                } else {
                    "Conv2d"
                };
                let s = if stride > 1 {
                    format!(" /{stride}")
                } else {
                    String::new()
                };
                format!("{name} {k}×{k}{s}")
            }
            Kind::Linear { .. } => "Linear".into(),
            Kind::BatchNorm { .. } => "BatchNorm".into(),
            Kind::LayerNorm { .. } => "LayerNorm".into(),
            Kind::Relu => "ReLU".into(),
            Kind::Gelu => "GELU".into(),
            Kind::Grn => "GRN".into(),
            Kind::LayerScale => "LayerScale".into(),
            Kind::MaxPool { k, stride, .. } => format!("MaxPool {k}×{k} /{stride}"),
            Kind::GlobalAvgPool => "GlobalAvgPool".into(),
            Kind::Add => "Add".into(),
        }
    }
}

impl BlockSpec {
    /// Every layer of the block in forward order: branch, shortcut, add, after.
    pub fn layers(&self) -> impl Iterator<Item = &LayerSpec> {
        self.branch
            .iter()
            .chain(&self.shortcut)
            .chain(std::iter::once(&self.add))
            .chain(&self.after)
    }
}

impl Plan {
    /// The ConvNeXt a config describes, with timm's names.
    pub fn convnext(cfg: &Config) -> Plan {
        let d0 = cfg.dims[0];
        let ln = |id, c| LayerSpec::same(id, Kind::LayerNorm { eps: cfg.ln_eps }, c);
        let patch = |k| Kind::Conv {
            k,
            stride: k,
            pad: 0,
            groups: 1,
            bias: true,
        };
        let stem = vec![
            LayerSpec::new(LayerId::StemPart(0), patch(4), 3, d0),
            ln(LayerId::StemPart(1), d0),
        ];
        let stages = (0..cfg.depths.len())
            .map(|s| {
                let d = cfg.dims[s];
                let downsample = if s == 0 {
                    vec![]
                } else {
                    let p = cfg.dims[s - 1];
                    vec![
                        ln(LayerId::DownsamplePart(s, 0), p),
                        LayerSpec::new(LayerId::DownsamplePart(s, 1), patch(2), p, d),
                    ]
                };
                let blocks = (0..cfg.depths[s])
                    .map(|b| convnext_block(cfg, s, b))
                    .collect();
                StageSpec { downsample, blocks }
            })
            .collect();
        let c = *cfg.dims.last().unwrap_or(&0);
        let head = vec![
            LayerSpec::same(LayerId::HeadPool, Kind::GlobalAvgPool, c),
            LayerSpec::same(
                LayerId::HeadNorm,
                Kind::LayerNorm {
                    eps: cfg.head_ln_eps,
                },
                c,
            ),
            LayerSpec::new(
                LayerId::HeadFc,
                Kind::Linear { bias: true },
                c,
                cfg.num_classes,
            ),
        ];
        Plan {
            name: cfg.describe(),
            family: Family::ConvNeXt(cfg.clone()),
            stem,
            stages,
            head,
            init: Init::Timm,
        }
    }

    /// The ConvNeXt config, for a ConvNeXt.
    pub fn convnext_config(&self) -> Option<&Config> {
        match &self.family {
            Family::ConvNeXt(c) => Some(c),
            Family::Roadmap(_) => None,
        }
    }

    pub fn num_classes(&self) -> usize {
        self.head.last().map_or(0, |l| l.channels_out)
    }

    /// Blocks per stage.
    pub fn depths(&self) -> Vec<usize> {
        self.stages.iter().map(|s| s.blocks.len()).collect()
    }

    /// Every layer in forward order, containers aside.
    pub fn layers(&self) -> impl Iterator<Item = &LayerSpec> {
        self.stem
            .iter()
            .chain(self.stages.iter().flat_map(|s| {
                s.downsample
                    .iter()
                    .chain(s.blocks.iter().flat_map(|b| b.layers()))
            }))
            .chain(&self.head)
    }

    /// Every tensor the network reads, in forward order, with its shape.
    pub fn tensors(&self) -> Vec<TensorSpec> {
        self.layers().flat_map(|l| l.tensors()).collect()
    }

    /// How much the input shrinks from input to the last stage: the size an input must be a
    /// multiple of.
    pub fn stride(&self) -> usize {
        // Along the data path: a block's shortcut strides in step with its branch.
        let path = self.stem.iter().chain(self.stages.iter().flat_map(|s| {
            s.downsample
                .iter()
                .chain(s.blocks.iter().flat_map(|b| &b.branch))
        }));
        let strides = path.map(|l| match l.kind {
            Kind::Conv { stride, .. } | Kind::MaxPool { stride, .. } => stride,
            _ => 1,
        });
        strides.product::<usize>().max(1)
    }

    /// Checks an input size: positive multiples of the network's stride.
    pub fn check_input(&self, h: usize, w: usize) -> Result<()> {
        let s = self.stride();
        if h == 0 || w == 0 || !h.is_multiple_of(s) || !w.is_multiple_of(s) {
            return Err(Error::Input(format!(
                "input size {h}x{w} must be a positive multiple of {s}"
            )));
        }
        Ok(())
    }

    /// Seeded weights drawn as the plan's family initialises them (deterministic across runs
    /// and machines).
    pub fn random_weights(&self, seed: u64) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (i, t) in self.tensors().into_iter().enumerate() {
            let n: usize = t.shape.iter().product();
            let rng = || {
                use rand::SeedableRng;
                rand::rngs::StdRng::seed_from_u64(
                    seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                )
            };
            let data: Vec<f32> = match (t.role, self.init) {
                (Role::Weight, Init::Timm) => truncated_normal(&mut rng(), n, 0.02),
                (Role::Weight, Init::Torchvision) => {
                    // Kaiming normal, fan-out, ReLU gain; linear layers as PyTorch's default.
                    let fan_out: usize = t.shape[0] * t.shape[2..].iter().product::<usize>();
                    let std = (2.0 / fan_out.max(1) as f32).sqrt();
                    if t.shape.len() == 2 {
                        uniform(&mut rng(), n, 1.0 / (t.shape[1].max(1) as f32).sqrt())
                    } else {
                        normal(&mut rng(), n, std)
                    }
                }
                (Role::LayerScale, _) => vec![1e-6; n],
                (Role::Scale | Role::RunningVar, _) => vec![1.0; n],
                _ => vec![0.0; n],
            };
            out.insert(t.name, Tensor::from_vec(data, t.shape, &Device::Cpu)?);
        }
        Ok(out)
    }
}

fn convnext_block(cfg: &Config, s: usize, b: usize) -> BlockSpec {
    let d = cfg.dims[s];
    let k = cfg.kernel_size;
    let id = |p| LayerId::BlockPart(s, b, p);
    let mut branch = vec![
        LayerSpec::same(
            id(Part::ConvDw),
            Kind::Conv {
                k,
                stride: 1,
                pad: k / 2,
                groups: d,
                bias: true,
            },
            d,
        ),
        LayerSpec::same(id(Part::Norm), Kind::LayerNorm { eps: cfg.ln_eps }, d),
        LayerSpec::new(id(Part::Fc1), Kind::Linear { bias: true }, d, 4 * d),
        LayerSpec::same(id(Part::Act), Kind::Gelu, 4 * d),
    ];
    if cfg.version == Version::V2 {
        branch.push(LayerSpec::same(id(Part::Grn), Kind::Grn, 4 * d));
    }
    branch.push(LayerSpec::new(
        id(Part::Fc2),
        Kind::Linear { bias: true },
        4 * d,
        d,
    ));
    if cfg.layer_scale {
        branch.push(LayerSpec::same(id(Part::Gamma), Kind::LayerScale, d));
    }
    BlockSpec {
        id: LayerId::Block(s, b),
        branch,
        shortcut: vec![],
        add: LayerSpec::same(id(Part::Add), Kind::Add, d),
        after: vec![],
    }
}

/// Box–Muller normals truncated at ±2σ, as timm's `trunc_normal_`.
fn truncated_normal(rng: &mut rand::rngs::StdRng, n: usize, std: f32) -> Vec<f32> {
    use rand::Rng;
    (0..n)
        .map(|_| loop {
            let u1: f32 = rng.random::<f32>().max(1e-12);
            let u2: f32 = rng.random();
            let z = (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos();
            if z.abs() <= 2.0 {
                break std * z;
            }
        })
        .collect()
}

/// `n` draws of N(0, std²) (Box–Muller), from `rng`.
pub fn normal(rng: &mut rand::rngs::StdRng, n: usize, std: f32) -> Vec<f32> {
    use rand::Rng;
    (0..n)
        .map(|_| {
            let u1: f32 = rng.random::<f32>().max(1e-12);
            let u2: f32 = rng.random();
            std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect()
}

fn uniform(rng: &mut rand::rngs::StdRng, n: usize, bound: f32) -> Vec<f32> {
    use rand::Rng;
    (0..n).map(|_| rng.random_range(-bound..=bound)).collect()
}
