//! What changed between two checkpoints: per tensor, per group (stem, each downsample, each
//! block, head) and in layer scale. Both are read through the strict loader, so any supported
//! format can stand on either side and tensors match by their canonical (timm) names; no
//! forward is run.
//!
//! Per tensor, both flattened: rel_change = ‖A − B‖ / ‖A‖ (Frobenius; `None` when ‖A‖ = 0) and
//! the cosine of A and B (`None` when either is all zeros). Per group, rel_change pools its
//! tensors (the norm of all their differences over the norm of all of A's) and, for blocks,
//! gamma_change = mean |γ_B| − mean |γ_A|. Sums are in f64.
use crate::base::error::{Error, Result};
use crate::io::checkpoint::Checkpoint;
use candle_core::{DType, Tensor};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TensorDiff {
    pub name: String,
    pub rel_change: Option<f64>,
    pub cosine: Option<f64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct GroupDiff {
    pub name: String,
    pub rel_change: Option<f64>,
    /// Blocks only (and only where both sides have a layer scale).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gamma_change: Option<f64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CheckpointDiff {
    /// In the order the network computes them.
    pub tensors: Vec<TensorDiff>,
    pub only_a: Vec<String>,
    pub only_b: Vec<String>,
    pub groups: Vec<GroupDiff>,
}

/// The sums one tensor pair contributes: ‖A‖², ‖B‖², A·B, ‖A − B‖².
#[derive(Clone, Copy, Debug, Default)]
struct Sums {
    aa: f64,
    bb: f64,
    ab: f64,
    dd: f64,
}

impl Sums {
    fn of(a: &Tensor, b: &Tensor) -> Result<Sums> {
        let a = a.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let b = b.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let mut s = Sums::default();
        for (x, y) in a.iter().zip(&b) {
            s.aa += x * x;
            s.bb += y * y;
            s.ab += x * y;
            s.dd += (x - y) * (x - y);
        }
        Ok(s)
    }

    fn add(&mut self, o: Sums) {
        self.aa += o.aa;
        self.bb += o.bb;
        self.ab += o.ab;
        self.dd += o.dd;
    }

    fn rel_change(&self) -> Option<f64> {
        (self.aa > 0.0).then(|| (self.dd / self.aa).sqrt())
    }

    fn cosine(&self) -> Option<f64> {
        (self.aa > 0.0 && self.bb > 0.0).then(|| self.ab / (self.aa * self.bb).sqrt())
    }
}

/// The group a canonical name belongs to: `stem`, `stages.S.downsample`, `stages.S.blocks.B`
/// or `head`.
pub fn group_of(name: &str) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    match parts.as_slice() {
        ["stages", s, "downsample", ..] => format!("stages.{s}.downsample"),
        ["stages", s, "blocks", b, ..] => format!("stages.{s}.blocks.{b}"),
        [first, ..] => first.to_string(),
        [] => String::new(),
    }
}

/// Where a canonical name comes in the forward pass: its group's place, then its layer's
/// place in the group (timm's order), then weight before bias.
fn forward_key(name: &str) -> (usize, usize, usize, usize, String) {
    const ORDER: [&str; 11] = [
        "stem.0",
        "stem.1",
        "downsample.0",
        "downsample.1",
        "conv_dw",
        "norm",
        "mlp.fc1",
        "mlp.grn",
        "mlp.fc2",
        "gamma",
        "fc",
    ];
    let parts: Vec<&str> = name.split('.').collect();
    let num = |i: usize| {
        parts
            .get(i)
            .and_then(|p| p.parse::<usize>().ok())
            .unwrap_or(0)
    };
    let (major, minor) = match parts.first() {
        Some(&"stem") => (0, 0),
        Some(&"stages") if parts.get(2) == Some(&"downsample") => (1 + num(1), 0),
        Some(&"stages") => (1 + num(1), 1 + num(3)),
        _ => (usize::MAX, 0),
    };
    let within = ORDER
        .iter()
        .position(|o| name.contains(o))
        .unwrap_or(ORDER.len());
    let bias = usize::from(name.ends_with(".bias") || name.ends_with(".beta"));
    (major, minor, within, bias, name.to_string())
}

/// Reads both checkpoints and compares them.
pub fn diff_files(a: &Path, b: &Path) -> Result<CheckpointDiff> {
    let ca = Checkpoint::open(a)?;
    let cb = Checkpoint::open(b)?;
    diff(&ca.tensors, &cb.tensors).map_err(|e| match e {
        Error::Input(m) => Error::Input(format!("{} vs {}: {m}", a.display(), b.display())),
        e => e,
    })
}

/// Compares two tables of canonical tensors. A name on both sides with two shapes is an error
/// naming the first such tensor in forward order.
pub fn diff(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) -> Result<CheckpointDiff> {
    let mut names: Vec<&String> = a.keys().filter(|n| b.contains_key(*n)).collect();
    names.sort_by_key(|n| forward_key(n));
    if let Some(n) = names.iter().find(|n| a[**n].dims() != b[**n].dims()) {
        return Err(Error::Input(format!(
            "{n} has shape {:?} in the first checkpoint and {:?} in the second",
            a[*n].dims(),
            b[*n].dims()
        )));
    }
    let only = |x: &HashMap<String, Tensor>, y: &HashMap<String, Tensor>| {
        let mut v: Vec<String> = x.keys().filter(|n| !y.contains_key(*n)).cloned().collect();
        v.sort_by_key(|n| forward_key(n));
        v
    };
    let mut tensors = Vec::with_capacity(names.len());
    let mut groups: Vec<(String, Sums)> = Vec::new();
    for n in &names {
        let s = Sums::of(&a[*n], &b[*n])?;
        tensors.push(TensorDiff {
            name: n.to_string(),
            rel_change: s.rel_change(),
            cosine: s.cosine(),
        });
        let g = group_of(n);
        match groups.last_mut() {
            Some((name, sums)) if *name == g => sums.add(s),
            _ => groups.push((g, s)),
        }
    }
    let groups = groups
        .into_iter()
        .map(|(name, s)| {
            let gamma = format!("{name}.gamma");
            let gamma_change = match (a.get(&gamma), b.get(&gamma)) {
                (Some(ga), Some(gb)) if name.contains(".blocks.") => {
                    Some(mean_abs(gb)? - mean_abs(ga)?)
                }
                _ => None,
            };
            Ok(GroupDiff {
                rel_change: s.rel_change(),
                name,
                gamma_change,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(CheckpointDiff {
        tensors,
        only_a: only(a, b),
        only_b: only(b, a),
        groups,
    })
}

fn mean_abs(t: &Tensor) -> Result<f64> {
    let v = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    Ok(v.iter().map(|x| x.abs()).sum::<f64>() / v.len().max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    #[test]
    fn names_group_and_order_as_the_network_computes_them() {
        assert_eq!(
            group_of("stages.2.blocks.11.mlp.fc1.weight"),
            "stages.2.blocks.11"
        );
        assert_eq!(
            group_of("stages.1.downsample.1.bias"),
            "stages.1.downsample"
        );
        assert_eq!(group_of("head.fc.weight"), "head");
        let mut v = vec![
            "head.fc.weight",
            "stages.1.blocks.0.gamma",
            "stages.1.downsample.1.weight",
            "stages.0.blocks.10.conv_dw.weight",
            "stages.0.blocks.2.mlp.fc2.bias",
            "stages.0.blocks.2.mlp.fc2.weight",
            "stem.1.weight",
            "stem.0.weight",
        ];
        v.sort_by_key(|n| forward_key(n));
        assert_eq!(
            v,
            [
                "stem.0.weight",
                "stem.1.weight",
                "stages.0.blocks.2.mlp.fc2.weight",
                "stages.0.blocks.2.mlp.fc2.bias",
                "stages.0.blocks.10.conv_dw.weight",
                "stages.1.downsample.1.weight",
                "stages.1.blocks.0.gamma",
                "head.fc.weight",
            ]
        );
    }

    #[test]
    fn changes_pool_by_group_and_shapes_must_agree() {
        let a = HashMap::from([
            ("stages.0.blocks.0.gamma".to_string(), t(&[1.0, -1.0])),
            ("stages.0.blocks.0.norm.weight".to_string(), t(&[0.0, 0.0])),
            ("stem.0.weight".to_string(), t(&[3.0, 4.0])),
            ("head.fc.bias".to_string(), t(&[1.0])),
        ]);
        let b = HashMap::from([
            ("stages.0.blocks.0.gamma".to_string(), t(&[2.0, -2.0])),
            ("stages.0.blocks.0.norm.weight".to_string(), t(&[1.0, 0.0])),
            ("stem.0.weight".to_string(), t(&[3.0, 4.0])),
            ("head.fc.weight".to_string(), t(&[1.0])),
        ]);
        let d = diff(&a, &b).unwrap();
        assert_eq!(d.only_a, ["head.fc.bias"]);
        assert_eq!(d.only_b, ["head.fc.weight"]);
        let stem = &d.tensors[0];
        assert_eq!((stem.rel_change, stem.cosine), (Some(0.0), Some(1.0)));
        let norm = d
            .tensors
            .iter()
            .find(|x| x.name.ends_with("norm.weight"))
            .unwrap();
        assert_eq!((norm.rel_change, norm.cosine), (None, None));
        let block = d
            .groups
            .iter()
            .find(|g| g.name == "stages.0.blocks.0")
            .unwrap();
        // ‖(1,1,1,0)‖ / ‖(1,-1,0,0)‖ pooled over gamma and the norm.
        assert!((block.rel_change.unwrap() - (3f64 / 2.0).sqrt()).abs() < 1e-12);
        assert_eq!(block.gamma_change, Some(1.0));
        let mut c = b.clone();
        c.insert("stem.0.weight".into(), t(&[1.0, 2.0, 3.0]));
        let e = diff(&a, &c).unwrap_err().to_string();
        assert!(
            e.contains("stem.0.weight") && e.contains("[2]") && e.contains("[3]"),
            "{e}"
        );
    }
}
