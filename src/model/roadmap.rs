//! The paper's modernization roadmap (Liu et al. 2022, Sec. 2 and Table 10): sixteen networks
//! from torchvision's ResNet-50 to timm's ConvNeXt-T, each a [`Plan`] built from a small
//! recipe. Steps 0–14 name their layers as ResNet's bottleneck does (`conv1`, `norm1`, `act1`,
//! …, `shortcut.0/1`), step 15 as timm's ConvNeXt.
use super::config::Config;
use super::plan::{BlockSpec, Family, Init, Kind, LayerSpec, Plan, StageSpec};
use crate::base::error::{Error, Result};
use crate::model::layer_id::{LayerId, Part};

/// One step: its name, what it is, what it changes, and the paper's ImageNet-1k top-1 and
/// GFLOPs (multiply-adds of convolutions and linear layers).
pub struct Step {
    pub name: &'static str,
    pub title: &'static str,
    pub change: &'static str,
    pub paper_top1: f64,
    pub paper_gflops: f64,
}

const fn step(
    name: &'static str,
    title: &'static str,
    change: &'static str,
    paper_top1: f64,
    paper_gflops: f64,
) -> Step {
    Step {
        name,
        title,
        change,
        paper_top1,
        paper_gflops,
    }
}

pub const STEPS: [Step; 16] = [
    step("resnet50", "ResNet-50", "torchvision's ResNet-50 (the paper's improved training recipe)", 78.82, 4.09),
    step("stage_ratio", "Stage ratio", "depths (3, 4, 6, 3) -> (3, 3, 9, 3)", 79.36, 4.53),
    step("patchify_stem", "Patchify stem", "stem: 7x7/2 conv + max-pool -> 4x4/4 conv", 79.51, 4.42),
    step("depthwise_conv", "ResNeXt-ify", "the 3x3 conv becomes depthwise (groups = channels)", 78.28, 2.35),
    step("width", "Wider", "every width x1.5 (64 -> 96)", 80.50, 5.27),
    step("inverted_bottleneck", "Inverted bottleneck", "block = 1x1 C->4C, depthwise 3x3 4C, 1x1 4C->C", 80.64, 4.64),
    step("move_up_dwconv", "Move up the depthwise conv", "block = depthwise 3x3 C, 1x1 C->4C, 1x1 4C->C", 79.92, 4.07),
    step("kernel_5", "Kernel 5x5", "depthwise 5x5 (from step 6)", 80.35, 4.10),
    step("kernel_7", "Kernel 7x7", "depthwise 7x7 (from step 6); the roadmap goes on from here", 80.57, 4.15),
    step("kernel_9", "Kernel 9x9", "depthwise 9x9 (from step 6)", 80.57, 4.21),
    step("kernel_11", "Kernel 11x11", "depthwise 11x11 (from step 6)", 80.47, 4.29),
    step("gelu", "GELU", "every ReLU -> GELU", 80.62, 4.15),
    step("fewer_activations", "Fewer activations", "one GELU per block, between the two 1x1 convs", 81.27, 4.15),
    step("fewer_norms", "Fewer norms", "one norm per block, after the depthwise conv; the 1x1 convs gain biases", 81.41, 4.15),
    step("layer_norm", "BN -> LN", "every BatchNorm -> LayerNorm; the convs before them gain biases", 81.47, 4.46),
    step("separate_downsampling", "ConvNeXt-T", "LN + 2x2/2 conv between stages, LN after stem and pooling, layer scale: timm's convnext_tiny", 81.97, 4.49),
];

#[derive(Clone, Copy, PartialEq)]
enum BlockKind {
    /// ResNet's: 1×1 reduce, 3×3 (depthwise if set), 1×1 expand ×4.
    Bottleneck { depthwise: bool },
    /// 1×1 C→4C, depthwise k×k on 4C, 1×1 4C→C.
    Inverted,
    /// Depthwise k×k on C first, then 1×1 C→4C, 1×1 4C→C.
    DwFirst,
}

#[derive(Clone, Copy)]
struct Recipe {
    depths: [usize; 4],
    resnet_stem: bool,
    base: usize,
    block: BlockKind,
    kernel: usize,
    gelu: bool,
    fewer_acts: bool,
    fewer_norms: bool,
    layer_norm: bool,
}

fn recipe(step: usize) -> Recipe {
    let mut r = Recipe {
        depths: [3, 4, 6, 3],
        resnet_stem: true,
        base: 64,
        block: BlockKind::Bottleneck { depthwise: false },
        kernel: 3,
        gelu: false,
        fewer_acts: false,
        fewer_norms: false,
        layer_norm: false,
    };
    // Each step applies to the one before; 7–10 vary the kernel of step 6, 11 on is from 8.
    let chain: &[usize] = match step {
        0..=6 => &[0, 1, 2, 3, 4, 5, 6][..=step],
        7..=10 => &[0, 1, 2, 3, 4, 5, 6, step],
        _ => &[0, 1, 2, 3, 4, 5, 6, 8, 11, 12, 13, 14][..=(step - 3)],
    };
    for &s in chain {
        match s {
            1 => r.depths = [3, 3, 9, 3],
            2 => r.resnet_stem = false,
            3 => r.block = BlockKind::Bottleneck { depthwise: true },
            4 => r.base = 96,
            5 => r.block = BlockKind::Inverted,
            6 => r.block = BlockKind::DwFirst,
            7 => r.kernel = 5,
            8 => r.kernel = 7,
            9 => r.kernel = 9,
            10 => r.kernel = 11,
            11 => r.gelu = true,
            12 => r.fewer_acts = true,
            13 => r.fewer_norms = true,
            14 => r.layer_norm = true,
            _ => {}
        }
    }
    r
}

/// The plan of step `name` (or its index).
pub fn plan(name: &str, num_classes: usize) -> Result<Plan> {
    let index = STEPS
        .iter()
        .position(|s| s.name == name)
        .or_else(|| name.parse().ok().filter(|&i: &usize| i < STEPS.len()))
        .ok_or_else(|| {
            let names: Vec<&str> = STEPS.iter().map(|s| s.name).collect();
            Error::UnknownVariant(
                format!("roadmap:{name}"),
                format!("roadmap:{}", names.join(", roadmap:")),
            )
        })?;
    let mut plan = if index == 15 {
        Plan::convnext(&Config::variant("convnext_tiny", num_classes)?)
    } else {
        build(recipe(index), num_classes)
    };
    plan.name = format!("roadmap:{}", STEPS[index].name);
    plan.family = Family::Roadmap(index);
    Ok(plan)
}

impl Recipe {
    fn norm(&self, id: LayerId, c: usize) -> LayerSpec {
        let kind = if self.layer_norm {
            Kind::LayerNorm { eps: 1e-6 }
        } else {
            Kind::BatchNorm { eps: 1e-5 }
        };
        LayerSpec::same(id, kind, c)
    }

    fn act(&self, id: LayerId, c: usize) -> LayerSpec {
        LayerSpec::same(id, if self.gelu { Kind::Gelu } else { Kind::Relu }, c)
    }
}

/// A convolution, made without bias; [`bias_unless_batch_norm`] decides from what follows it.
fn conv(id: LayerId, i: usize, o: usize, k: usize, stride: usize, groups: usize) -> LayerSpec {
    let kind = Kind::Conv {
        k,
        stride,
        pad: k / 2,
        groups,
        bias: false,
    };
    LayerSpec::new(id, kind, i, o)
}

/// Gives each convolution of a sequence a bias unless a BatchNorm follows it.
///
/// A BatchNorm subtracts each channel's mean, so a bias before it has no effect and its shift
/// is the bias: ResNet's convolutions have none. Where a step removes that BatchNorm (step 13,
/// fewer norms: the two 1×1 convs) the shift is gone and the convolution takes it as its bias.
/// Where a step makes it a LayerNorm (step 14: the stem conv, the depthwise convs and the
/// shortcut convs) a bias is no longer redundant (LayerNorm normalises across channels at each
/// position, so a per-channel bias survives it but for its mean), and ConvNeXt, the network the
/// roadmap arrives at, has one on every convolution and Linear, the depthwise conv before its
/// LayerNorm and the stem and downsampling convs included, next to the LayerNorms' own shifts.
/// So a convolution gains its bias at the step that changes the norm after it, not at step 15
/// (whose new biases are only those of its new layers: the downsampling convs).
fn bias_unless_batch_norm(layers: &mut [LayerSpec]) {
    for i in 0..layers.len() {
        let batch_norm_next = matches!(
            layers.get(i + 1).map(|l| l.kind),
            Some(Kind::BatchNorm { .. })
        );
        if let Kind::Conv { bias, .. } = &mut layers[i].kind {
            *bias = !batch_norm_next;
        }
    }
}

fn build(r: Recipe, num_classes: usize) -> Plan {
    let stem_width = r.base;
    let mut stem = vec![if r.resnet_stem {
        conv(LayerId::StemPart(0), 3, stem_width, 7, 2, 1)
    } else {
        let patch = Kind::Conv {
            k: 4,
            stride: 4,
            pad: 0,
            groups: 1,
            bias: false,
        };
        LayerSpec::new(LayerId::StemPart(0), patch, 3, stem_width)
    }];
    stem.push(r.norm(LayerId::StemPart(1), stem_width));
    stem.push(r.act(LayerId::StemPart(2), stem_width));
    if r.resnet_stem {
        let pool = Kind::MaxPool {
            k: 3,
            stride: 2,
            pad: 1,
        };
        stem.push(LayerSpec::same(LayerId::StemPart(3), pool, stem_width));
    }
    bias_unless_batch_norm(&mut stem);
    let mut channels = stem_width;
    let mut stages = Vec::new();
    for (s, &depth) in r.depths.iter().enumerate() {
        let width = r.base << s;
        let blocks = (0..depth)
            .map(|b| {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                let block = block(&r, (s, b), channels, width, stride);
                channels = block.add.channels_out;
                block
            })
            .collect();
        stages.push(StageSpec {
            downsample: vec![],
            blocks,
        });
    }
    let head = vec![
        LayerSpec::same(LayerId::HeadPool, Kind::GlobalAvgPool, channels),
        LayerSpec::new(
            LayerId::HeadFc,
            Kind::Linear { bias: true },
            channels,
            num_classes,
        ),
    ];
    Plan {
        name: String::new(),
        family: Family::Roadmap(0),
        stem,
        stages,
        head,
        init: Init::Torchvision,
    }
}

/// One block of stage `s`: `inp` channels in, `width` the stage's width.
fn block(r: &Recipe, (s, b): (usize, usize), inp: usize, width: usize, stride: usize) -> BlockSpec {
    let id = |p| LayerId::BlockPart(s, b, p);
    let k = r.kernel;
    let (mut branch, out) = match r.block {
        BlockKind::Bottleneck { depthwise } => {
            let groups = if depthwise { width } else { 1 };
            let out = 4 * width;
            let v = vec![
                conv(id(Part::Conv(1)), inp, width, 1, 1, 1),
                r.norm(id(Part::NormN(1)), width),
                r.act(id(Part::ActN(1)), width),
                conv(id(Part::Conv(2)), width, width, 3, stride, groups),
                r.norm(id(Part::NormN(2)), width),
                r.act(id(Part::ActN(2)), width),
                conv(id(Part::Conv(3)), width, out, 1, 1, 1),
                r.norm(id(Part::NormN(3)), out),
            ];
            (v, out)
        }
        BlockKind::Inverted => {
            let wide = 4 * width;
            let v = vec![
                conv(id(Part::Conv(1)), inp, wide, 1, 1, 1),
                r.norm(id(Part::NormN(1)), wide),
                r.act(id(Part::ActN(1)), wide),
                conv(id(Part::Conv(2)), wide, wide, k, stride, wide),
                r.norm(id(Part::NormN(2)), wide),
                r.act(id(Part::ActN(2)), wide),
                conv(id(Part::Conv(3)), wide, width, 1, 1, 1),
                r.norm(id(Part::NormN(3)), width),
            ];
            (v, width)
        }
        BlockKind::DwFirst => (dw_first_branch(r, id, inp, width, stride), width),
    };
    let mut shortcut = if stride != 1 || inp != out {
        vec![
            conv(id(Part::ShortcutConv), inp, out, 1, stride, 1),
            r.norm(id(Part::ShortcutNorm), out),
        ]
    } else {
        vec![]
    };
    bias_unless_batch_norm(&mut branch);
    bias_unless_batch_norm(&mut shortcut);
    let after = if r.fewer_acts {
        vec![]
    } else {
        vec![r.act(id(Part::ActN(3)), out)]
    };
    BlockSpec {
        id: LayerId::Block(s, b),
        branch,
        shortcut,
        add: LayerSpec::same(id(Part::Add), Kind::Add, out),
        after,
    }
}

/// Depthwise k×k on the input (carrying the stride), then 1×1 up to 4× the width and back,
/// with norms and activations as the recipe has reached them.
fn dw_first_branch(
    r: &Recipe,
    id: impl Fn(Part) -> LayerId,
    inp: usize,
    width: usize,
    stride: usize,
) -> Vec<LayerSpec> {
    let wide = 4 * width;
    let mut v = vec![
        conv(id(Part::Conv(1)), inp, inp, r.kernel, stride, inp),
        r.norm(id(Part::NormN(1)), inp),
    ];
    if !r.fewer_acts {
        v.push(r.act(id(Part::ActN(1)), inp));
    }
    v.push(conv(id(Part::Conv(2)), inp, wide, 1, 1, 1));
    if !r.fewer_norms {
        v.push(r.norm(id(Part::NormN(2)), wide));
    }
    v.push(r.act(id(Part::ActN(2)), wide));
    v.push(conv(id(Part::Conv(3)), wide, width, 1, 1, 1));
    if !r.fewer_norms {
        v.push(r.norm(id(Part::NormN(3)), width));
    }
    v
}

/// The step a step was made from: the one before, except that the kernel sizes 5–11 each vary
/// step 6 and GELU (step 11) continues from the 7×7 kernel (step 8).
pub fn parent(step: usize) -> Option<usize> {
    match step {
        0 => None,
        7..=10 => Some(6),
        11 => Some(8),
        s => Some(s - 1),
    }
}

/// What changed between two networks, layer by layer (by name; containers aside).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PlanDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// `(name, before, after)`: same name, another kind or shape.
    pub changed: Vec<(String, String, String)>,
    pub delta_macs: i64,
    pub delta_params: i64,
}

/// The differences from `before` to `after` at an input size.
pub fn diff(before: &Plan, after: &Plan, (h, w): (usize, usize)) -> PlanDiff {
    use crate::model::flops::{layers, totals, LayerInfo};
    let (a, b) = (layers(before, 1, h, w), layers(after, 1, h, w));
    // A layer's label leaves its bias out; a convolution gaining one is a change.
    let biased = |p: &Plan| -> Vec<LayerId> {
        p.layers()
            .filter(|l| matches!(l.kind, Kind::Conv { bias: true, .. }))
            .map(|l| l.id)
            .collect()
    };
    let leaves = |l: &[LayerInfo], biased: &[LayerId]| -> Vec<(String, String)> {
        l.iter()
            .filter(|x| !x.container)
            .map(|x| {
                let shape = crate::base::text::shape_text(&x.out_shape, '×');
                let bias = if biased.contains(&x.id) {
                    " + bias"
                } else {
                    ""
                };
                (x.name.clone(), format!("{}{bias} -> {shape}", x.kind))
            })
            .collect()
    };
    let (la, lb) = (leaves(&a, &biased(before)), leaves(&b, &biased(after)));
    let find =
        |l: &[(String, String)], n: &str| l.iter().find(|(m, _)| m == n).map(|(_, d)| d.clone());
    let mut d = PlanDiff::default();
    for (n, desc) in &lb {
        match find(&la, n) {
            None => d.added.push(n.clone()),
            Some(old) if old != *desc => d.changed.push((n.clone(), old, desc.clone())),
            Some(_) => {}
        }
    }
    d.removed = la
        .iter()
        .filter(|(n, _)| find(&lb, n).is_none())
        .map(|(n, _)| n.clone())
        .collect();
    let (ta, tb) = (totals(&a), totals(&b));
    d.delta_macs = tb.total_macs as i64 - ta.total_macs as i64;
    d.delta_params = tb.total_params as i64 - ta.total_params as i64;
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step_plan(i: usize) -> Plan {
        plan(STEPS[i].name, 1000).unwrap()
    }

    #[test]
    fn diffs_say_what_each_step_changed() {
        let d = diff(&step_plan(6), &step_plan(8), (224, 224));
        assert!(d.added.is_empty() && d.removed.is_empty(), "{d:?}");
        // The 18 blocks' depthwise convs go from 3×3 to 7×7.
        assert_eq!(d.changed.len(), 18, "{d:?}");
        assert!(d.changed.iter().all(|(n, a, b)| n.ends_with("conv1")
            && a.starts_with("DwConv 3×3")
            && b.starts_with("DwConv 7×7")));
        assert!(d.delta_macs > 0 && d.delta_params > 0);
        // Fewer activations: act1 and act3 of every block go, nothing else changes.
        let d = diff(&step_plan(11), &step_plan(12), (224, 224));
        assert_eq!(d.removed.len(), 36, "{d:?}");
        assert!(d.added.is_empty() && d.changed.is_empty() && d.delta_macs == 0);
        // Fewer norms: norm2 and norm3 go, and the two 1×1 convs before them take their
        // shifts as biases (5C per block of width C: 33,120 for the 18 blocks).
        let d = diff(&step_plan(12), &step_plan(13), (224, 224));
        assert_eq!((d.removed.len(), d.changed.len()), (36, 36), "{d:?}");
        assert!(d
            .changed
            .iter()
            .all(|(n, a, b)| (n.ends_with("conv2") || n.ends_with("conv3"))
                && !a.contains("bias")
                && b.starts_with("Conv2d 1×1 + bias")));
        // The BatchNorms' scales and shifts (2 × 5C per block) go, half of it comes back.
        assert_eq!(d.delta_params, 33_120 - 66_240);
        // BN -> LN: every norm changes kind, and every conv before one gains a bias (the stem
        // conv, 18 depthwise convs, 3 shortcut convs), as ConvNeXt's have.
        let d = diff(&step_plan(13), &step_plan(14), (224, 224));
        assert!(d.added.is_empty() && d.removed.is_empty(), "{d:?}");
        assert_eq!(d.changed.len(), 44, "{d:?}");
        assert_eq!(d.delta_params, 96 + 5_952 + 1_344);
        let conv_biases = |i: usize| -> Vec<bool> {
            let (plan, mut biases) = (step_plan(i), vec![]);
            for l in plan.layers() {
                if let Kind::Conv { bias, .. } = l.kind {
                    biases.push(bias);
                }
            }
            biases
        };
        assert!(conv_biases(14).iter().all(|&b| b));
        assert!(conv_biases(12).iter().all(|&b| !b));
        assert_eq!(parent(11), Some(8));
        assert_eq!(parent(9), Some(6));
    }
}
