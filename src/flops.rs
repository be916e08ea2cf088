//! The analytic layer list: every named layer with its shapes, parameters and multiply-adds,
//! for any config, batch and input size. The trace reports the same ids, so the profile table
//! joins them.
//!
//! MAC convention: fvcore's (as the ConvNeXt paper and timm report, "4.47G" for ConvNeXt-T):
//! convolutions and linear layers count one per multiply-add (bias excluded), LayerNorm 5 per
//! element, average pooling 1 per input element. Operations fvcore does not count (GELU, GRN,
//! layer scale, residual add) are listed under `elementwise` and kept out of `macs`.
use crate::model::config::{Config, Version};
use crate::trace::{LayerId, Part};
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
    pub params: usize,
    pub macs: u64,
    pub elementwise: u64,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Totals {
    pub total_macs: u64,
    pub total_params: usize,
    /// Convolution and linear MACs only.
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
            elementwise: 0,
        });
        self.open.push(self.layers.len() - 1);
    }

    fn close(&mut self, out_shape: Vec<usize>) {
        // Every close follows an open in this file.
        let Some(i) = self.open.pop() else { return };
        let (p, m, e) = self.layers[i + 1..]
            .iter()
            .filter(|l| !l.container)
            .fold((0, 0, 0), |a, l| {
                (a.0 + l.params, a.1 + l.macs, a.2 + l.elementwise)
            });
        let l = &mut self.layers[i];
        l.out_shape = out_shape;
        (l.params, l.macs, l.elementwise) = (p, m, e);
    }

    #[allow(clippy::too_many_arguments)]
    fn leaf(
        &mut self,
        id: LayerId,
        kind: &str,
        in_shape: Vec<usize>,
        out_shape: Vec<usize>,
        params: usize,
        macs: u64,
        elementwise: u64,
    ) {
        self.layers.push(LayerInfo {
            id,
            name: id.name(),
            kind: kind.to_string(),
            depth: self.open.len(),
            container: false,
            in_shape,
            out_shape,
            params,
            macs,
            elementwise,
        });
    }
}

fn numel(s: &[usize]) -> u64 {
    s.iter().map(|&d| d as u64).product()
}

/// The layer list for a batch of `n` images of `h`×`w` (multiples of the stride).
pub fn layers(cfg: &Config, n: usize, h: usize, w: usize) -> Vec<LayerInfo> {
    let mut b = Builder {
        layers: Vec::new(),
        open: Vec::new(),
    };
    let mut x = b.stem(cfg, n, h, w);
    for s in 0..cfg.depths.len() {
        x = b.stage(cfg, s, x);
    }
    b.head(cfg, x);
    b.layers
}

impl Builder {
    fn stem(&mut self, cfg: &Config, n: usize, h: usize, w: usize) -> Vec<usize> {
        let d0 = cfg.dims[0];
        let input = vec![n, 3, h, w];
        let x = vec![n, d0, h / 4, w / 4];
        self.open(LayerId::Stem, "Stem", input.clone());
        let conv_macs = numel(&x) * 48;
        let conv_params = d0 * 3 * 16 + d0;
        self.leaf(
            LayerId::StemConv,
            "Conv2d 4×4 /4",
            input,
            x.clone(),
            conv_params,
            conv_macs,
            0,
        );
        self.layer_norm(LayerId::StemNorm, &x);
        self.close(x.clone());
        x
    }

    fn layer_norm(&mut self, id: LayerId, x: &[usize]) {
        let c = x[1];
        self.leaf(
            id,
            "LayerNorm",
            x.to_vec(),
            x.to_vec(),
            2 * c,
            5 * numel(x),
            0,
        );
    }

    /// Stage `s` on input `x`; returns its output shape.
    fn stage(&mut self, cfg: &Config, s: usize, mut x: Vec<usize>) -> Vec<usize> {
        self.open(LayerId::Stage(s), "Stage", x.clone());
        if s > 0 {
            let (p, d) = (cfg.dims[s - 1], cfg.dims[s]);
            self.open(LayerId::Downsample(s), "Downsample", x.clone());
            self.layer_norm(LayerId::DownsampleNorm(s), &x);
            let y = vec![x[0], d, x[2] / 2, x[3] / 2];
            let (params, macs) = (d * p * 4 + d, numel(&y) * (p as u64) * 4);
            self.leaf(
                LayerId::DownsampleConv(s),
                "Conv2d 2×2 /2",
                x,
                y.clone(),
                params,
                macs,
                0,
            );
            self.close(y.clone());
            x = y;
        }
        for b in 0..cfg.depths[s] {
            self.block(cfg, s, b, &x);
        }
        self.close(x.clone());
        x
    }

    fn block(&mut self, cfg: &Config, s: usize, b: usize, x: &[usize]) {
        let (d, k) = (cfg.dims[s], cfg.kernel_size);
        let (x, e) = (x.to_vec(), numel(x));
        let wide = vec![x[0], 4 * d, x[2], x[3]];
        let part = |p| LayerId::BlockPart(s, b, p);
        self.open(LayerId::Block(s, b), "Block", x.clone());
        let dw = format!("DwConv {k}×{k}");
        let (params, macs) = (d * k * k + d, e * (k * k) as u64);
        self.leaf(
            part(Part::ConvDw),
            &dw,
            x.clone(),
            x.clone(),
            params,
            macs,
            0,
        );
        self.layer_norm(part(Part::Norm), &x);
        let (fc1_params, fc_macs) = (4 * d * d + 4 * d, e * 4 * d as u64);
        self.leaf(
            part(Part::Fc1),
            "Linear",
            x.clone(),
            wide.clone(),
            fc1_params,
            fc_macs,
            0,
        );
        self.leaf(
            part(Part::Act),
            "GELU",
            wide.clone(),
            wide.clone(),
            0,
            0,
            4 * e,
        );
        if cfg.version == Version::V2 {
            self.leaf(
                part(Part::Grn),
                "GRN",
                wide.clone(),
                wide.clone(),
                8 * d,
                0,
                4 * 4 * e,
            );
        }
        let fc2_params = 4 * d * d + d;
        self.leaf(
            part(Part::Fc2),
            "Linear",
            wide,
            x.clone(),
            fc2_params,
            fc_macs,
            0,
        );
        if cfg.layer_scale {
            self.leaf(
                part(Part::Gamma),
                "LayerScale",
                x.clone(),
                x.clone(),
                d,
                0,
                e,
            );
        }
        self.leaf(part(Part::Add), "Add", x.clone(), x.clone(), 0, 0, e);
        self.close(x);
    }

    fn head(&mut self, cfg: &Config, x: Vec<usize>) {
        let c = *cfg.dims.last().unwrap_or(&0);
        let pooled = vec![x[0], c];
        let logits = vec![x[0], cfg.num_classes];
        self.open(LayerId::Head, "Head", x.clone());
        let pool_macs = numel(&x);
        self.leaf(
            LayerId::HeadPool,
            "GlobalAvgPool",
            x,
            pooled.clone(),
            0,
            pool_macs,
            0,
        );
        self.layer_norm(LayerId::HeadNorm, &pooled);
        let params = c * cfg.num_classes + cfg.num_classes;
        let macs = numel(&logits) * c as u64;
        self.leaf(
            LayerId::HeadFc,
            "Linear",
            pooled,
            logits.clone(),
            params,
            macs,
            0,
        );
        self.close(logits);
    }
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
        conv_linear_macs: leaves()
            .filter(|l| {
                l.kind.starts_with("Conv") || l.kind.starts_with("DwConv") || l.kind == "Linear"
            })
            .map(|l| l.macs)
            .sum(),
        elementwise: leaves().map(|l| l.elementwise).sum(),
    }
}
