//! The analytic layer list: every named layer of a [`Plan`] with its shapes, parameters and
//! multiply-adds, for any batch and input size. The trace reports the same ids, so the profile
//! table joins them.
//!
//! MAC conventions. `total_macs` is fvcore's (as the ConvNeXt paper and timm report, "4.47G" for
//! ConvNeXt-T): convolutions and linear layers one per multiply-add (bias excluded), LayerNorm
//! 5 per element, BatchNorm in eval 2 per element, average pooling 1 per input element.
//! `conv_linear_macs` is the paper's own (convolutions and linear layers only, the convention
//! of its Table 10 and of torchvision's 4.09G for ResNet-50). Operations neither counts (GELU,
//! ReLU, GRN, layer scale, max-pooling, residual add) are listed under `elementwise`.
use crate::model::layer_id::LayerId;
use crate::model::plan::{LayerSpec, Plan};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct LayerInfo {
    #[serde(skip)]
    pub id: LayerId,
    pub name: String,
    pub kind: String,
    /// Nesting depth (0 = stem/stage/head, deeper inside).
    pub depth: usize,
    pub container: bool,
    /// NCHW as in PyTorch (`[N, C]` in the head).
    pub in_shape: Vec<usize>,
    pub out_shape: Vec<usize>,
    /// Learnable parameters (BatchNorm's running statistics are buffers, not parameters).
    pub params: usize,
    pub macs: u64,
    /// A convolution or linear layer (what the paper's convention counts).
    #[serde(skip)]
    pub conv_or_linear: bool,
    pub elementwise: u64,
    /// Elements read and written at least (input, output, parameters; summed over a
    /// container's layers): the roofline's bytes moved, per element of the dtype.
    pub traffic: u64,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Totals {
    pub total_macs: u64,
    pub total_params: usize,
    /// Convolution and linear MACs only (the paper's convention).
    pub conv_linear_macs: u64,
    pub elementwise: u64,
}

struct Builder {
    layers: Vec<LayerInfo>,
    open: Vec<usize>,
}

impl Builder {
    fn open(&mut self, id: LayerId, kind: &str, in_shape: Vec<usize>) {
        self.layers.push(LayerInfo {
            id,
            name: id.name(),
            kind: kind.to_string(),
            depth: self.open.len(),
            container: true,
            in_shape,
            out_shape: vec![],
            params: 0,
            macs: 0,
            conv_or_linear: false,
            elementwise: 0,
            traffic: 0,
        });
        self.open.push(self.layers.len() - 1);
    }

    fn close(&mut self, out_shape: Vec<usize>) {
        // Every close follows an open in this file.
        let Some(i) = self.open.pop() else { return };
        let (p, m, e, t) =
            self.layers[i + 1..]
                .iter()
                .filter(|l| !l.container)
                .fold((0, 0, 0, 0), |a, l| {
                    (
                        a.0 + l.params,
                        a.1 + l.macs,
                        a.2 + l.elementwise,
                        a.3 + l.traffic,
                    )
                });
        let l = &mut self.layers[i];
        l.out_shape = out_shape;
        (l.params, l.macs, l.elementwise, l.traffic) = (p, m, e, t);
    }

    /// A layer on input `x`; returns its output shape.
    fn leaf(&mut self, spec: &LayerSpec, x: &[usize]) -> Vec<usize> {
        let out = spec.out_shape(x);
        let (macs, elementwise) = spec.macs(x, &out);
        let params = spec
            .tensors()
            .iter()
            .filter(|t| t.is_parameter())
            .map(|t| t.shape.iter().product::<usize>())
            .sum();
        self.layers.push(LayerInfo {
            id: spec.id,
            name: spec.id.name(),
            kind: spec.label(),
            depth: self.open.len(),
            container: false,
            in_shape: x.to_vec(),
            out_shape: out.clone(),
            params,
            macs,
            conv_or_linear: spec.is_conv_or_linear(),
            elementwise,
            traffic: spec.traffic(x, &out, params),
        });
        out
    }

    fn chain(&mut self, specs: &[LayerSpec], x: Vec<usize>) -> Vec<usize> {
        specs.iter().fold(x, |x, s| self.leaf(s, &x))
    }
}

/// The layer list for a batch of `n` images of `h`×`w` (multiples of the stride).
pub fn layers(plan: &Plan, n: usize, h: usize, w: usize) -> Vec<LayerInfo> {
    let mut b = Builder {
        layers: Vec::new(),
        open: Vec::new(),
    };
    let input = vec![n, 3, h, w];
    b.open(LayerId::Stem, "Stem", input.clone());
    let mut x = b.chain(&plan.stem, input);
    b.close(x.clone());
    for (s, stage) in plan.stages.iter().enumerate() {
        b.open(LayerId::Stage(s), "Stage", x.clone());
        if !stage.downsample.is_empty() {
            b.open(LayerId::Downsample(s), "Downsample", x.clone());
            x = b.chain(&stage.downsample, x);
            b.close(x.clone());
        }
        for block in &stage.blocks {
            b.open(block.id, "Block", x.clone());
            let y = b.chain(&block.branch, x.clone());
            b.chain(&block.shortcut, x);
            let y = b.leaf(&block.add, &y);
            x = b.chain(&block.after, y);
            b.close(x.clone());
        }
        b.close(x.clone());
    }
    b.open(LayerId::Head, "Head", x.clone());
    let logits = b.chain(&plan.head, x);
    b.close(logits);
    b.layers
}

fn numel(s: &[usize]) -> u64 {
    s.iter().map(|&d| d as u64).product()
}

/// How many channels `id` outputs (NCHW's C, or the features of a head layer), if it is
/// in the list.
pub fn channels(layers: &[LayerInfo], id: crate::model::layer_id::LayerId) -> Option<usize> {
    layers
        .iter()
        .find(|l| l.id == id)
        .and_then(|l| l.out_shape.get(1).copied())
}

/// Roughly the most memory a forward holds at once: the weights and the two largest
/// activations (a layer's input and output), in bytes of `dtype_bytes` per element.
pub fn working_set_bytes(layers: &[LayerInfo], params: usize, dtype_bytes: usize) -> u64 {
    let mut acts: Vec<u64> = layers.iter().map(|l| numel(&l.out_shape)).collect();
    acts.sort_unstable_by(|a, b| b.cmp(a));
    let elements = (params as u64).saturating_add(acts.iter().take(2).sum::<u64>());
    elements.saturating_mul(dtype_bytes as u64)
}

pub fn totals(layers: &[LayerInfo]) -> Totals {
    let leaves = || layers.iter().filter(|l| !l.container);
    Totals {
        total_macs: leaves().map(|l| l.macs).sum(),
        total_params: leaves().map(|l| l.params).sum(),
        conv_linear_macs: leaves().filter(|l| l.conv_or_linear).map(|l| l.macs).sum(),
        elementwise: leaves().map(|l| l.elementwise).sum(),
    }
}
