//! Naming schemes: which one a checkpoint uses, and each tensor's timm name.
use super::stored::StoredTensor;
use super::Format;
use crate::base::error::{Error, Result};
use std::path::Path;

pub fn detect_format(file: &Path, raw: &[StoredTensor]) -> Result<Format> {
    let has = |n: &str| raw.iter().any(|t| t.name == n);
    let has_suffix = |n: &str| raw.iter().any(|t| t.name.ends_with(n));
    if has("stem.0.weight") {
        Ok(Format::Timm)
    } else if has("downsample_layers.0.0.weight") {
        Ok(Format::Facebook)
    } else if has_suffix("embeddings.patch_embeddings.weight") {
        Ok(Format::HuggingFace)
    } else {
        let mut names: Vec<&str> = raw.iter().map(|t| t.name.as_str()).collect();
        names.sort();
        let sample = names.iter().take(4).copied().collect::<Vec<_>>().join(", ");
        Err(Error::NotConvNext {
            path: file.into(),
            msg: if names.is_empty() {
                "it holds no tensors".into()
            } else {
                format!(
                    "no ConvNeXt stem tensor (timm `stem.0.weight`, facebookresearch `downsample_layers.0.0.weight` or Hugging Face `convnext.embeddings.patch_embeddings.weight`) among its {} tensors ({sample}, …)",
                    names.len()
                )
            },
        })
    }
}

/// Renames one tensor to timm's scheme; `None` for a name that has no place in a ConvNeXt.
pub fn canonical_name(format: Format, name: &str) -> Option<String> {
    let parts: Vec<&str> = name.split('.').collect();
    let block_part = |p: &str| -> Option<&'static str> {
        Some(match p {
            "conv_dw" | "dwconv" => "conv_dw",
            "norm" | "layernorm" => "norm",
            "fc1" | "pwconv1" => "mlp.fc1",
            "fc2" | "pwconv2" => "mlp.fc2",
            "gamma" | "layer_scale_parameter" => "gamma",
            "grn" => "mlp.grn",
            _ => return None,
        })
    };
    let grn_param = |p: &str| -> Option<&'static str> {
        Some(match p {
            "weight" | "gamma" => "weight",
            "bias" | "beta" => "bias",
            _ => return None,
        })
    };
    let out = match format {
        Format::Timm => {
            // Older timm V2 weights call the GRN parameters gamma/beta.
            if name.contains(".mlp.grn.") {
                let p = grn_param(parts.last()?)?;
                format!("{}.{p}", parts[..parts.len() - 1].join("."))
            } else {
                name.to_string()
            }
        }
        Format::Facebook => match parts.as_slice() {
            ["downsample_layers", "0", "0", p] => format!("stem.0.{p}"),
            ["downsample_layers", "0", "1", p] => format!("stem.1.{p}"),
            ["downsample_layers", s, l, p] => format!("stages.{s}.downsample.{l}.{p}"),
            ["stages", s, b, "grn", p] => {
                format!("stages.{s}.blocks.{b}.mlp.grn.{}", grn_param(p)?)
            }
            ["stages", s, b, "gamma"] => format!("stages.{s}.blocks.{b}.gamma"),
            ["stages", s, b, m, p] => format!("stages.{s}.blocks.{b}.{}.{p}", block_part(m)?),
            ["norm", p] => format!("head.norm.{p}"),
            ["head", p] => format!("head.fc.{p}"),
            _ => return None,
        },
        Format::HuggingFace => {
            let body = match parts.first() {
                Some(&"convnext") | Some(&"convnextv2") => &parts[1..],
                Some(&"classifier") => &parts[..],
                _ => return None,
            };
            match body {
                ["embeddings", "patch_embeddings", p] => format!("stem.0.{p}"),
                ["embeddings", "layernorm", p] => format!("stem.1.{p}"),
                ["encoder", "stages", s, "downsampling_layer", l, p] => {
                    format!("stages.{s}.downsample.{l}.{p}")
                }
                ["encoder", "stages", s, "layers", b, "layer_scale_parameter"] => {
                    format!("stages.{s}.blocks.{b}.gamma")
                }
                ["encoder", "stages", s, "layers", b, "grn", p] => {
                    format!("stages.{s}.blocks.{b}.mlp.grn.{}", grn_param(p)?)
                }
                ["encoder", "stages", s, "layers", b, m, p] => {
                    format!("stages.{s}.blocks.{b}.{}.{p}", block_part(m)?)
                }
                ["layernorm", p] => format!("head.norm.{p}"),
                ["classifier", p] => format!("head.fc.{p}"),
                _ => return None,
            }
        }
    };
    Some(out)
}
