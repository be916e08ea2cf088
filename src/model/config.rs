//! Architecture description: what a ConvNeXt is, independent of where its weights come from.
use crate::base::error::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Version {
    V1,
    /// ConvNeXt V2: Global Response Normalisation in the MLP, no layer scale.
    V2,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub version: Version,
    pub depths: Vec<usize>,
    pub dims: Vec<usize>,
    pub num_classes: usize,
    /// eps of every LayerNorm but the head's.
    pub ln_eps: f64,
    /// Hugging Face configs give the final LayerNorm its own eps (`layer_norm_eps`).
    pub head_ln_eps: f64,
    /// V1 blocks scale their residual branch by a learned per-channel `gamma`.
    pub layer_scale: bool,
    pub kernel_size: usize,
}

/// Most classes a head may have (ImageNet-22k has 21,841).
pub const MAX_CLASSES: usize = 1_000_000;

pub struct Variant {
    pub name: &'static str,
    pub version: Version,
    pub depths: &'static [usize],
    pub dims: &'static [usize],
    pub ln_eps: f64,
}

const fn v(
    name: &'static str,
    version: Version,
    depths: &'static [usize],
    dims: &'static [usize],
    ln_eps: f64,
) -> Variant {
    Variant {
        name,
        version,
        depths,
        dims,
        ln_eps,
    }
}

const D2262: &[usize] = &[2, 2, 6, 2];
const D3393: &[usize] = &[3, 3, 9, 3];
const D33273: &[usize] = &[3, 3, 27, 3];

/// The configurations of the paper (T/S/B/L/XL) and timm (atto…nano, xxlarge; V2 atto…huge).
pub const VARIANTS: &[Variant] = &[
    v(
        "convnext_atto",
        Version::V1,
        D2262,
        &[40, 80, 160, 320],
        1e-6,
    ),
    v(
        "convnext_femto",
        Version::V1,
        D2262,
        &[48, 96, 192, 384],
        1e-6,
    ),
    v(
        "convnext_pico",
        Version::V1,
        D2262,
        &[64, 128, 256, 512],
        1e-6,
    ),
    v(
        "convnext_nano",
        Version::V1,
        &[2, 2, 8, 2],
        &[80, 160, 320, 640],
        1e-6,
    ),
    v(
        "convnext_tiny",
        Version::V1,
        D3393,
        &[96, 192, 384, 768],
        1e-6,
    ),
    v(
        "convnext_small",
        Version::V1,
        D33273,
        &[96, 192, 384, 768],
        1e-6,
    ),
    v(
        "convnext_base",
        Version::V1,
        D33273,
        &[128, 256, 512, 1024],
        1e-6,
    ),
    v(
        "convnext_large",
        Version::V1,
        D33273,
        &[192, 384, 768, 1536],
        1e-6,
    ),
    v(
        "convnext_xlarge",
        Version::V1,
        D33273,
        &[256, 512, 1024, 2048],
        1e-6,
    ),
    v(
        "convnext_xxlarge",
        Version::V1,
        &[3, 4, 30, 3],
        &[384, 768, 1536, 3072],
        1e-5,
    ),
    v(
        "convnextv2_atto",
        Version::V2,
        D2262,
        &[40, 80, 160, 320],
        1e-6,
    ),
    v(
        "convnextv2_femto",
        Version::V2,
        D2262,
        &[48, 96, 192, 384],
        1e-6,
    ),
    v(
        "convnextv2_pico",
        Version::V2,
        D2262,
        &[64, 128, 256, 512],
        1e-6,
    ),
    v(
        "convnextv2_nano",
        Version::V2,
        &[2, 2, 8, 2],
        &[80, 160, 320, 640],
        1e-6,
    ),
    v(
        "convnextv2_tiny",
        Version::V2,
        D3393,
        &[96, 192, 384, 768],
        1e-6,
    ),
    v(
        "convnextv2_small",
        Version::V2,
        D33273,
        &[96, 192, 384, 768],
        1e-6,
    ),
    v(
        "convnextv2_base",
        Version::V2,
        D33273,
        &[128, 256, 512, 1024],
        1e-6,
    ),
    v(
        "convnextv2_large",
        Version::V2,
        D33273,
        &[192, 384, 768, 1536],
        1e-6,
    ),
    v(
        "convnextv2_huge",
        Version::V2,
        D33273,
        &[352, 704, 1408, 2816],
        1e-6,
    ),
];

/// The LayerNorm eps timm builds a network of these widths with: that of the variant with
/// these dims (1e-5 for convnext_xxlarge), else 1e-6.
pub fn ln_eps_for_dims(dims: &[usize]) -> f64 {
    VARIANTS
        .iter()
        .find(|v| v.dims == dims)
        .map_or(1e-6, |v| v.ln_eps)
}

pub fn variant_names() -> Vec<&'static str> {
    VARIANTS.iter().map(|v| v.name).collect()
}

impl Config {
    /// A named variant: a timm name (`convnext_tiny`, `convnextv2_nano`), or a short one
    /// (`tiny`, `v2-tiny`, `convnext-tiny`, `T`/`S`/`B`/`L`/`XL` as in the paper).
    pub fn variant(name: &str, num_classes: usize) -> Result<Config> {
        let lower = name.trim().to_ascii_lowercase().replace('-', "_");
        let paper = match lower.as_str() {
            "t" => Some("tiny"),
            "s" => Some("small"),
            "b" => Some("base"),
            "l" => Some("large"),
            "xl" => Some("xlarge"),
            _ => None,
        };
        let key = paper.map(str::to_string).unwrap_or(lower);
        let candidates = [
            key.clone(),
            format!("convnext_{key}"),
            key.replacen("v2_", "convnextv2_", 1),
            key.replacen("convnext_v2_", "convnextv2_", 1),
        ];
        let found = VARIANTS
            .iter()
            .find(|v| candidates.iter().any(|c| c == v.name))
            .ok_or_else(|| Error::UnknownVariant(name.to_string(), variant_names().join(", ")))?;
        Ok(Config::from_variant(found, num_classes))
    }

    pub fn from_variant(v: &Variant, num_classes: usize) -> Config {
        Config {
            version: v.version,
            depths: v.depths.to_vec(),
            dims: v.dims.to_vec(),
            num_classes,
            ln_eps: v.ln_eps,
            head_ln_eps: v.ln_eps,
            layer_scale: v.version == Version::V1,
            kernel_size: 7,
        }
    }

    /// The named variant this architecture matches (classes and eps aside), if any.
    pub fn variant_name(&self) -> Option<&'static str> {
        VARIANTS
            .iter()
            .find(|v| v.version == self.version && v.depths == self.depths && v.dims == self.dims)
            .map(|v| v.name)
    }

    /// A name for humans: the variant if it is one, else the shape.
    pub fn describe(&self) -> String {
        match self.variant_name() {
            Some(n) => n.to_string(),
            None => format!(
                "ConvNeXt{} depths {:?} dims {:?}",
                if self.version == Version::V2 {
                    " V2"
                } else {
                    ""
                },
                self.depths,
                self.dims
            ),
        }
    }

    pub fn num_stages(&self) -> usize {
        self.depths.len()
    }

    pub fn total_blocks(&self) -> usize {
        self.depths.iter().sum()
    }

    pub fn validate(&self) -> Result<()> {
        if self.depths.is_empty() || self.depths.len() != self.dims.len() {
            return Err(Error::Input(format!(
                "depths {:?} and dims {:?} must be non-empty and of equal length",
                self.depths, self.dims
            )));
        }
        if self.dims.contains(&0) || self.kernel_size.is_multiple_of(2) {
            return Err(Error::Input(format!("invalid configuration {self:?}")));
        }
        if self.num_classes == 0 || self.num_classes > MAX_CLASSES {
            return Err(Error::Input(format!(
                "{} classes: a head must have 1 to {MAX_CLASSES}",
                self.num_classes
            )));
        }
        Ok(())
    }
}
