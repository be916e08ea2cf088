//! Opening checkpoints: file format (safetensors / PyTorch zip, read by the project's own
//! bounded readers), naming scheme (timm, facebookresearch, Hugging Face), canonical timm names
//! and shapes, strict checking, and the architecture inferred from what is there.
//!
//! Everything is decided from the files' tables of contents (names, dtypes, shapes, where the
//! bytes are) before any tensor data is read: a checkpoint that is ambiguous (two names for one
//! tensor), incomplete, over-complete (a tensor the model does not use, of any dtype) or
//! inconsistent is refused with a message naming the file and the tensor.
mod names;
mod pickle;
mod pytorch;
mod safetensors;
mod stored;
mod tensor_file;

use crate::base::error::{Error, Result};
use crate::io::labels::LabelSource;
use crate::io::preprocess::PreprocessConfig;
use crate::model::config::{ln_eps_for_dims, Config, Version};
use candle_core::Tensor;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
pub use stored::{StoredDtype, StoredTensor, TensorFile};

/// The naming scheme a checkpoint was written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Format {
    Timm,
    /// The original facebookresearch/ConvNeXt(-V2) release (`downsample_layers`, `dwconv`, …).
    Facebook,
    /// Hugging Face transformers `ConvNext(V2)ForImageClassification`.
    HuggingFace,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Timm => "timm",
            Format::Facebook => "facebookresearch",
            Format::HuggingFace => "Hugging Face transformers",
        })
    }
}

/// What a checkpoint is, from its tables and configs alone (no tensor data read).
#[derive(Debug, Clone)]
pub struct CheckpointInfo {
    /// The weights file itself.
    pub path: PathBuf,
    pub format: Format,
    pub config: Config,
    pub num_params: usize,
    pub preprocess: PreprocessConfig,
    pub labels: Vec<String>,
    pub label_source: LabelSource,
    pub card: crate::io::card::ModelCard,
}

/// A loaded, checked checkpoint: tensors under timm's names and shapes, on the CPU.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub info: CheckpointInfo,
    pub tensors: HashMap<String, Tensor>,
}

/// A tensor of the file under its timm name and shape.
struct Canonical {
    name: String,
    /// Index into the file's table.
    index: usize,
    shape: Vec<usize>,
}

impl Checkpoint {
    /// Opens a weights file, or a folder holding one (a Hugging Face or timm hub snapshot),
    /// checks it, and reads its tensors.
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint> {
        let (info, file, canon) = read_table(path.as_ref())?;
        let indices: Vec<usize> = canon.iter().map(|c| c.index).collect();
        let data = file.read(&indices)?;
        let mut tensors = HashMap::with_capacity(canon.len());
        for (c, t) in canon.into_iter().zip(data) {
            let t = t.reshape(c.shape).map_err(|e| Error::file(&info.path, e))?;
            tensors.insert(c.name, t);
        }
        Ok(Checkpoint { info, tensors })
    }
}

impl CheckpointInfo {
    /// What [`Checkpoint::open`] would load, from the tables alone: the same checks, no
    /// tensor data read (the app lists `weights/` with it).
    pub fn read(path: impl AsRef<Path>) -> Result<CheckpointInfo> {
        Ok(read_table(path.as_ref())?.0)
    }
}

fn read_table(path: &Path) -> Result<(CheckpointInfo, TensorFile, Vec<Canonical>)> {
    let file = resolve_weights_file(path)?;
    let table = TensorFile::open(&file)?;
    let format = names::detect_format(&file, &table.tensors)?;
    let canon = canonicalise(&file, format, &table.tensors)?;
    let shapes: HashMap<&str, &[usize]> = canon
        .iter()
        .map(|c| (c.name.as_str(), c.shape.as_slice()))
        .collect();
    let mut config = infer_config(&file, &shapes)?;
    let (json, pre) = read_side_configs(&file)?;
    if let Some((p, j)) = &json {
        apply_json_overrides(&mut config, j).map_err(|e| Error::file(p, e))?;
    }
    check_strict(&file, format, &config, &canon, &table.tensors)?;
    let mut preprocess = PreprocessConfig::default();
    if let Some((p, j)) = &json {
        preprocess.apply_timm(j).map_err(|e| Error::file(p, e))?;
    }
    if let Some((p, j)) = &pre {
        preprocess.apply_hf(j).map_err(|e| Error::file(p, e))?;
    }
    let (labels, label_source) = match &json {
        Some((p, j)) => crate::io::labels::labels_for(config.num_classes, Some(j))
            .map_err(|e| Error::file(p, e))?,
        None => crate::io::labels::labels_for(config.num_classes, None).map_err(Error::Input)?,
    };
    let num_params = canon
        .iter()
        .map(|c| c.shape.iter().product::<usize>())
        .sum();
    let origin = format!("{} ({format})", file.display());
    let json_value = json.as_ref().map(|(_, j)| j);
    let card = crate::io::card::ModelCard::from_config(
        json_value,
        &labels,
        label_source,
        &preprocess,
        origin,
    );
    let info = CheckpointInfo {
        path: file,
        format,
        config,
        num_params,
        preprocess,
        labels,
        label_source,
        card,
    };
    Ok((info, table, canon))
}

/// Every tensor under its timm name and shape; a name with no place in a ConvNeXt, or two
/// names for one tensor, is refused.
fn canonicalise(file: &Path, format: Format, raw: &[StoredTensor]) -> Result<Vec<Canonical>> {
    let mut by_name: HashMap<String, usize> = HashMap::with_capacity(raw.len());
    let mut out = Vec::with_capacity(raw.len());
    for (index, t) in raw.iter().enumerate() {
        let Some(name) = names::canonical_name(format, &t.name) else {
            return Err(Error::ExtraTensor {
                path: file.into(),
                name: t.name.clone(),
                shape: t.shape.clone(),
                arch: format!("{format} ConvNeXt"),
            });
        };
        if let Some(&other) = by_name.get(&name) {
            return Err(Error::file(
                file,
                format!(
                    "`{}` and `{}` both name the tensor `{name}`: ambiguous, refused",
                    raw[other].name, t.name
                ),
            ));
        }
        by_name.insert(name.clone(), index);
        let shape = canonical_shape(&name, &t.shape);
        out.push(Canonical { name, index, shape });
    }
    Ok(out)
}

/// Largest stage and block counts a checkpoint may declare (ConvNeXts have 4 stages of at most
/// 30 blocks): names beyond them are refused before anything is sized by them.
const MAX_STAGES: usize = 8;
const MAX_BLOCKS: usize = 256;

/// `X.json` beside `X.safetensors`, else `config.json` in the same folder; and HF's
/// `preprocessor_config.json`. A config that is there but unreadable is an error.
type SideConfig = Option<(PathBuf, serde_json::Value)>;

fn read_side_configs(file: &Path) -> Result<(SideConfig, SideConfig)> {
    let read = |p: PathBuf| -> Result<SideConfig> {
        Ok(crate::base::files::read_json(&p)?.map(|v| (p, v)))
    };
    let dir = file.parent().unwrap_or(Path::new("."));
    let json = match read(file.with_extension("json"))? {
        Some(own) => Some(own),
        None => read(dir.join("config.json"))?,
    };
    let pre = read(dir.join("preprocessor_config.json"))?;
    Ok((json, pre))
}

/// Shapes that differ only by layout become timm's: 1×1-conv MLP weights (atto–nano) become
/// matrices; GRN parameters `[1,1,1,C]` become `[C]`.
fn canonical_shape(name: &str, dims: &[usize]) -> Vec<usize> {
    let fc = name.ends_with("mlp.fc1.weight")
        || name.ends_with("mlp.fc2.weight")
        || name == "head.fc.weight";
    match dims {
        [o, i, 1, 1] if fc => vec![*o, *i],
        [1, 1, 1, c] if name.contains(".mlp.grn.") => vec![*c],
        _ => dims.to_vec(),
    }
}

/// The stage and block counts the names declare.
fn stage_blocks(file: &Path, shapes: &HashMap<&str, &[usize]>) -> Result<BTreeMap<usize, usize>> {
    let not = |msg: String| Error::NotConvNext {
        path: file.into(),
        msg,
    };
    let mut blocks: BTreeMap<usize, usize> = BTreeMap::new();
    for name in shapes.keys() {
        let p: Vec<&str> = name.split('.').collect();
        if p.len() > 1 && p[0] == "stages" {
            let s: usize = p[1]
                .parse()
                .ok()
                .filter(|&s| s < MAX_STAGES)
                .ok_or_else(|| {
                    not(format!(
                        "tensor `{name}` has no stage index below {MAX_STAGES}"
                    ))
                })?;
            let e = blocks.entry(s).or_insert(0);
            if p.len() > 3 && p[2] == "blocks" {
                let b: usize = p[3]
                    .parse()
                    .ok()
                    .filter(|&b| b < MAX_BLOCKS)
                    .ok_or_else(|| {
                        not(format!(
                            "tensor `{name}` has no block index below {MAX_BLOCKS}"
                        ))
                    })?;
                *e = (*e).max(b + 1);
            }
        }
    }
    Ok(blocks)
}

/// The architecture, read from names and shapes only.
fn infer_config(file: &Path, shapes: &HashMap<&str, &[usize]>) -> Result<Config> {
    let not = |msg: String| Error::NotConvNext {
        path: file.into(),
        msg,
    };
    let missing = |name: &str| Error::MissingTensor {
        path: file.into(),
        name: name.into(),
    };
    let first = |name: &str| shapes.get(name).and_then(|d| d.first().copied());
    let stem = shapes
        .get("stem.0.weight")
        .ok_or_else(|| not("no stem convolution".into()))?;
    let d0 = match stem {
        [d0, 3, 4, 4] if *d0 > 0 => *d0,
        _ => {
            return Err(Error::ShapeMismatch {
                path: file.into(),
                name: "stem.0.weight".into(),
                got: stem.to_vec(),
                expected: vec![stem.first().copied().unwrap_or(0).max(1), 3, 4, 4],
            })
        }
    };
    let blocks = stage_blocks(file, shapes)?;
    let num_stages = blocks.keys().next_back().map(|s| s + 1).unwrap_or(0);
    if num_stages == 0 {
        return Err(not("no stages".into()));
    }
    let mut depths = Vec::with_capacity(num_stages);
    let mut dims = vec![d0];
    for s in 0..num_stages {
        depths.push(blocks.get(&s).copied().unwrap_or(0));
        if s > 0 {
            let down = format!("stages.{s}.downsample.1.weight");
            let dim = first(&down)
                .or_else(|| first(&format!("stages.{s}.blocks.0.conv_dw.weight")))
                .ok_or_else(|| missing(&down))?;
            dims.push(dim);
        }
    }
    let version = if shapes.keys().any(|k| k.contains(".mlp.grn.")) {
        Version::V2
    } else {
        Version::V1
    };
    let num_classes =
        first("head.fc.weight").ok_or_else(|| missing("head.fc.weight (the classifier)"))?;
    let kernel_size = shapes
        .get("stages.0.blocks.0.conv_dw.weight")
        .and_then(|d| d.get(2).copied())
        .unwrap_or(7);
    let ln_eps = ln_eps_for_dims(&dims);
    let config = Config {
        version,
        depths,
        dims,
        num_classes,
        ln_eps,
        head_ln_eps: ln_eps,
        layer_scale: shapes.keys().any(|k| k.ends_with(".gamma")),
        kernel_size,
    };
    config.validate().map_err(|e| Error::file(file, e))?;
    Ok(config)
}

/// A LayerNorm eps from a config: a number in (0, 0.1].
fn eps_field(j: &serde_json::Value, pointer: &str) -> std::result::Result<Option<f64>, String> {
    let Some(v) = j.pointer(pointer) else {
        return Ok(None);
    };
    match v.as_f64() {
        Some(e) if e.is_finite() && e > 0.0 && e <= 0.1 => Ok(Some(e)),
        _ => Err(format!(
            "`{}` is {v}: want a number in (0, 0.1]",
            &pointer[1..]
        )),
    }
}

/// Hugging Face keeps the final LayerNorm's eps in `layer_norm_eps`; timm configs may carry
/// `model_args.norm_eps`.
fn apply_json_overrides(
    cfg: &mut Config,
    j: &serde_json::Value,
) -> std::result::Result<(), String> {
    if let Some(eps) = eps_field(j, "/layer_norm_eps")? {
        cfg.head_ln_eps = eps;
    }
    if let Some(eps) = eps_field(j, "/model_args/norm_eps")? {
        cfg.ln_eps = eps;
        cfg.head_ln_eps = eps;
    }
    Ok(())
}

/// A folder becomes the weights file inside it; a file stays itself.
pub fn resolve_weights_file(path: &Path) -> Result<PathBuf> {
    if !path.exists() {
        return Err(Error::file(path, "no such file or folder"));
    }
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    for name in [
        "model.safetensors",
        "pytorch_model.bin",
        "open_clip_pytorch_model.bin",
        "model.pth",
    ] {
        let p = path.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| Error::file(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_weights_file(p))
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(Error::file(
            path,
            "folder holds no .safetensors, .pth, .pt or .bin file",
        )),
        _ => Err(Error::file(
            path,
            format!(
                "folder holds several weights files ({}); name one",
                found.len()
            ),
        )),
    }
}

/// File extensions weights come in (the loader still reads by content).
pub const WEIGHTS_EXTENSIONS: &[&str] = &["safetensors", "pth", "pt", "bin", "ckpt"];

pub fn is_weights_file(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| WEIGHTS_EXTENSIONS.contains(&e))
}

/// A folder that holds a checkpoint (a `config.json` or a weights file at its top), as a
/// downloaded repo does; any other folder is taken for a folder of images.
pub fn is_weights_dir(p: &Path) -> bool {
    let Ok(rd) = std::fs::read_dir(p) else {
        return false;
    };
    rd.filter_map(|e| e.ok())
        .take(10_000)
        .any(|e| e.file_name() == "config.json" || is_weights_file(&e.path()))
}

fn check_strict(
    file: &Path,
    format: Format,
    cfg: &Config,
    canon: &[Canonical],
    raw: &[StoredTensor],
) -> Result<()> {
    let present: HashMap<&str, &Canonical> = canon.iter().map(|c| (c.name.as_str(), c)).collect();
    let shown = |c: &Canonical| -> String {
        let o = &raw[c.index].name;
        if *o != c.name {
            format!("{o}` (timm `{}`", c.name)
        } else {
            c.name.clone()
        }
    };
    let expected: Vec<(String, Vec<usize>)> = crate::model::plan::Plan::convnext(cfg)
        .tensors()
        .into_iter()
        .map(|t| (t.name, t.shape))
        .collect();
    for (name, shape) in &expected {
        let Some(c) = present.get(name.as_str()) else {
            return Err(Error::MissingTensor {
                path: file.into(),
                name: if format == Format::Timm {
                    name.clone()
                } else {
                    format!("{name}` (timm name; {format} checkpoint")
                },
            });
        };
        if c.shape != *shape {
            return Err(Error::ShapeMismatch {
                path: file.into(),
                name: shown(c),
                got: c.shape.clone(),
                expected: shape.clone(),
            });
        }
        let dtype = raw[c.index].dtype;
        if dtype.float().is_none() {
            return Err(Error::file(
                file,
                format!(
                    "tensor `{}` has dtype {}, not a float type a weight can have",
                    shown(c),
                    dtype.name()
                ),
            ));
        }
    }
    if canon.len() > expected.len() {
        let known: std::collections::HashSet<&str> =
            expected.iter().map(|(n, _)| n.as_str()).collect();
        let mut extra: Vec<&Canonical> = canon
            .iter()
            .filter(|c| !known.contains(c.name.as_str()))
            .collect();
        extra.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(c) = extra.first() {
            return Err(Error::ExtraTensor {
                path: file.into(),
                name: shown(c),
                shape: c.shape.clone(),
                arch: cfg.describe(),
            });
        }
    }
    Ok(())
}
