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
        let i = self.open.pop().expect("balanced layer list");
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
    let k = cfg.kernel_size;
    let (mut hh, mut ww) = (h / 4, w / 4);
    let d0 = cfg.dims[0];
    let input = vec![n, 3, h, w];
    let mut x = vec![n, d0, hh, ww];
    b.open(LayerId::Stem, "Stem", input.clone());
    b.leaf(
        LayerId::StemConv,
        "Conv2d 4×4 /4",
        input,
        x.clone(),
        d0 * 3 * 16 + d0,
        numel(&x) * 48,
        0,
    );
    b.leaf(
        LayerId::StemNorm,
        "LayerNorm",
        x.clone(),
        x.clone(),
        2 * d0,
        5 * numel(&x),
        0,
    );
    b.close(x.clone());
    for (s, &depth) in cfg.depths.iter().enumerate() {
        let d = cfg.dims[s];
        b.open(LayerId::Stage(s), "Stage", x.clone());
        if s > 0 {
            let p = cfg.dims[s - 1];
            b.open(LayerId::Downsample(s), "Downsample", x.clone());
            b.leaf(
                LayerId::DownsampleNorm(s),
                "LayerNorm",
                x.clone(),
                x.clone(),
                2 * p,
                5 * numel(&x),
                0,
            );
            (hh, ww) = (hh / 2, ww / 2);
            let y = vec![n, d, hh, ww];
            b.leaf(
                LayerId::DownsampleConv(s),
                "Conv2d 2×2 /2",
                x.clone(),
                y.clone(),
                d * p * 4 + d,
                numel(&y) * (p as u64) * 4,
                0,
            );
            b.close(y.clone());
            x = y;
        }
        let wide = vec![n, 4 * d, hh, ww];
        let e = numel(&x);
        for bi in 0..depth {
            let part = |p| LayerId::BlockPart(s, bi, p);
            b.open(LayerId::Block(s, bi), "Block", x.clone());
            b.leaf(
                part(Part::ConvDw),
                &format!("DwConv {k}×{k}"),
                x.clone(),
                x.clone(),
                d * k * k + d,
                e * (k * k) as u64,
                0,
            );
            b.leaf(
                part(Part::Norm),
                "LayerNorm",
                x.clone(),
                x.clone(),
                2 * d,
                5 * e,
                0,
            );
            b.leaf(
                part(Part::Fc1),
                "Linear",
                x.clone(),
                wide.clone(),
                4 * d * d + 4 * d,
                e * 4 * d as u64,
                0,
            );
            b.leaf(
                part(Part::Act),
                "GELU",
                wide.clone(),
                wide.clone(),
                0,
                0,
                4 * e,
            );
            if cfg.version == Version::V2 {
                b.leaf(
                    part(Part::Grn),
                    "GRN",
                    wide.clone(),
                    wide.clone(),
                    8 * d,
                    0,
                    4 * 4 * e,
                );
            }
            b.leaf(
                part(Part::Fc2),
                "Linear",
                wide.clone(),
                x.clone(),
                4 * d * d + d,
                e * 4 * d as u64,
                0,
            );
            if cfg.layer_scale {
                b.leaf(
                    part(Part::Gamma),
                    "LayerScale",
                    x.clone(),
                    x.clone(),
                    d,
                    0,
                    e,
                );
            }
            b.leaf(part(Part::Add), "Add", x.clone(), x.clone(), 0, 0, e);
            b.close(x.clone());
        }
        b.close(x.clone());
    }
    let c = *cfg.dims.last().unwrap_or(&0);
    let pooled = vec![n, c];
    let logits = vec![n, cfg.num_classes];
    b.open(LayerId::Head, "Head", x.clone());
    b.leaf(
        LayerId::HeadPool,
        "GlobalAvgPool",
        x.clone(),
        pooled.clone(),
        0,
        numel(&x),
        0,
    );
    b.leaf(
        LayerId::HeadNorm,
        "LayerNorm",
        pooled.clone(),
        pooled.clone(),
        2 * c,
        5 * numel(&pooled),
        0,
    );
    b.leaf(
        LayerId::HeadFc,
        "Linear",
        pooled.clone(),
        logits.clone(),
        c * cfg.num_classes + cfg.num_classes,
        numel(&logits) * c as u64,
        0,
    );
    b.close(logits);
    b.layers
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

/// `4.47G`, `28.6M`: three significant digits with an SI suffix.
pub fn human(x: f64) -> String {
    let (v, s) = if x >= 1e12 {
        (x / 1e12, "T")
    } else if x >= 1e9 {
        (x / 1e9, "G")
    } else if x >= 1e6 {
        (x / 1e6, "M")
    } else if x >= 1e3 {
        (x / 1e3, "k")
    } else {
        (x, "")
    };
    if v >= 100.0 {
        format!("{v:.0}{s}")
    } else if v >= 10.0 {
        format!("{v:.1}{s}")
    } else {
        format!("{v:.2}{s}")
    }
}
