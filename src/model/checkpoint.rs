//! Opening checkpoints: file format (safetensors / PyTorch zip), naming scheme (timm,
//! facebookresearch, Hugging Face), canonical timm names and shapes, strict checking, and the
//! architecture inferred from what is there.
use super::config::{Config, Version};
use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

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

/// A loaded, checked checkpoint: tensors under timm's names and shapes, on the CPU.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The weights file itself.
    pub path: PathBuf,
    pub format: Format,
    pub config: Config,
    pub tensors: HashMap<String, Tensor>,
    /// The `config.json` found beside the weights, if any.
    pub json: Option<serde_json::Value>,
    /// Hugging Face `preprocessor_config.json`, if any.
    pub preprocessor_json: Option<serde_json::Value>,
}

/// Largest header a safetensors file may declare; real ones are a few hundred kB.
const MAX_SAFETENSORS_HEADER: u64 = 100 << 20;

impl Checkpoint {
    /// Opens a weights file, or a folder holding one (a Hugging Face or timm hub snapshot).
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint> {
        let path = path.as_ref();
        let file = resolve_weights_file(path)?;
        let raw = read_tensors(&file)?;
        let (json, preprocessor_json) = read_side_configs(&file);
        Self::from_tensors(&file, raw, json, preprocessor_json)
    }

    /// Canonicalises, infers and checks a set of named tensors (from any source).
    pub fn from_tensors(
        file: &Path,
        raw: Vec<(String, Tensor)>,
        json: Option<serde_json::Value>,
        preprocessor_json: Option<serde_json::Value>,
    ) -> Result<Checkpoint> {
        let format = detect_format(file, &raw)?;
        let mut tensors = HashMap::with_capacity(raw.len());
        let mut origin = HashMap::with_capacity(raw.len());
        for (name, t) in raw {
            let canon = match canonical_name(format, &name) {
                Some(c) => c,
                None => {
                    return Err(Error::ExtraTensor {
                        path: file.into(),
                        name,
                        shape: t.dims().to_vec(),
                        arch: format!("{format} ConvNeXt"),
                    })
                }
            };
            let t = canonical_shape(&canon, t).map_err(|e| Error::file(file, e))?;
            origin.insert(canon.clone(), name);
            tensors.insert(canon, t);
        }
        let mut config = infer_config(file, &tensors)?;
        apply_json_overrides(&mut config, json.as_ref());
        check_strict(file, format, &config, &tensors, &origin)?;
        Ok(Checkpoint {
            path: file.to_path_buf(),
            format,
            config,
            tensors,
            json,
            preprocessor_json,
        })
    }

    pub fn num_params(&self) -> usize {
        self.tensors.values().map(|t| t.elem_count()).sum()
    }

    /// The class names the checkpoint's config gives, else the standard ones for its head size.
    pub fn labels(&self) -> (Vec<String>, crate::labels::LabelSource) {
        crate::labels::labels_for(self.config.num_classes, self.json.as_ref())
    }

    /// The preprocessing its configs ask for (timm's ConvNeXt eval transform where silent).
    pub fn preprocess(&self) -> crate::preprocess::PreprocessConfig {
        crate::preprocess::PreprocessConfig::from_json(
            self.json.as_ref(),
            self.preprocessor_json.as_ref(),
        )
    }
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
    let mut found: Vec<PathBuf> = std::fs::read_dir(path)?
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

/// `X.json` beside `X.safetensors`, else `config.json` in the same folder; and HF's
/// `preprocessor_config.json`.
fn read_side_configs(file: &Path) -> (Option<serde_json::Value>, Option<serde_json::Value>) {
    let read = |p: PathBuf| -> Option<serde_json::Value> {
        let s = std::fs::read_to_string(p).ok()?;
        serde_json::from_str(&s).ok()
    };
    let dir = file.parent().unwrap_or(Path::new("."));
    let own = read(file.with_extension("json"));
    let json = own.or_else(|| read(dir.join("config.json")));
    let pre = read(dir.join("preprocessor_config.json"));
    (json, pre)
}

/// Reads every tensor of a safetensors or PyTorch file, by content (not by extension).
pub fn read_tensors(file: &Path) -> Result<Vec<(String, Tensor)>> {
    let mut head = [0u8; 8];
    let len = std::fs::metadata(file)
        .map_err(|e| Error::file(file, e))?
        .len();
    if len == 0 {
        return Err(Error::file(file, "file is empty"));
    }
    let mut f = std::fs::File::open(file).map_err(|e| Error::file(file, e))?;
    let n = f.read(&mut head).map_err(|e| Error::file(file, e))?;
    if n >= 4 && &head[..4] == b"PK\x03\x04" {
        return read_pytorch(file);
    }
    if n < 8 {
        return Err(Error::file(file, "file too short to be a checkpoint"));
    }
    let header_len = u64::from_le_bytes(head);
    if header_len > 0 && header_len <= MAX_SAFETENSORS_HEADER && header_len + 8 <= len {
        let mut first = [0u8; 1];
        f.read_exact(&mut first).map_err(|e| Error::file(file, e))?;
        if first[0] == b'{' {
            return read_safetensors(file);
        }
    }
    if head[0] == 0x80 {
        return Err(Error::file(
            file,
            "legacy (pre-1.6, non-zip) PyTorch pickle: re-save it with torch.save(..., _use_new_zipfile_serialization=True) or as safetensors",
        ));
    }
    Err(Error::file(
        file,
        "neither a safetensors file nor a PyTorch (zip) checkpoint (truncated or corrupt?)",
    ))
}

fn read_safetensors(file: &Path) -> Result<Vec<(String, Tensor)>> {
    let data = std::fs::read(file).map_err(|e| Error::file(file, e))?;
    let map = candle_core::safetensors::load_buffer(&data, &Device::Cpu)
        .map_err(|e| Error::file(file, format!("invalid safetensors: {e}")))?;
    Ok(map.into_iter().collect())
}

/// PyTorch zip checkpoints, through candle's pickle reader (which never runs code). The state
/// dict may be the top-level object or sit under `model` / `state_dict` / `model_ema`.
fn read_pytorch(file: &Path) -> Result<Vec<(String, Tensor)>> {
    let file_owned = file.to_path_buf();
    // candle's unpickler is not hardened against hostile input: keep a panic an error.
    let res = std::panic::catch_unwind(move || -> Result<Vec<(String, Tensor)>> {
        let key = state_dict_key(&file_owned)?;
        let pth =
            candle_core::pickle::PthTensors::new(&file_owned, key.as_deref()).map_err(|e| {
                Error::file(&file_owned, format!("cannot read PyTorch checkpoint: {e}"))
            })?;
        let mut names: Vec<String> = pth.tensor_infos().keys().cloned().collect();
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            match pth.get(&name) {
                Ok(Some(t)) => out.push((name, t)),
                Ok(None) => {}
                Err(e) => {
                    return Err(Error::file(&file_owned, format!("tensor `{name}`: {e}")));
                }
            }
        }
        Ok(out)
    });
    match res {
        Ok(r) => r,
        Err(_) => Err(Error::file(
            file,
            "corrupt PyTorch checkpoint (unpickling failed)",
        )),
    }
}

/// Looks at the top-level pickled object: a dict of dicts means the tensors sit under a key.
fn state_dict_key(file: &Path) -> Result<Option<String>> {
    use candle_core::pickle::{Object, Stack};
    let zf = std::fs::File::open(file).map_err(|e| Error::file(file, e))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(zf))
        .map_err(|e| Error::file(file, format!("corrupt zip archive: {e}")))?;
    let pkl = (0..zip.len())
        .filter_map(|i| {
            zip.by_index(i)
                .ok()
                .and_then(|f| f.name().ok().map(|n| n.to_string()))
        })
        .find(|n| n.ends_with("data.pkl"))
        .ok_or_else(|| {
            Error::file(
                file,
                "zip archive holds no data.pkl: not a PyTorch checkpoint",
            )
        })?;
    let reader = zip
        .by_name(&pkl)
        .map_err(|e| Error::file(file, format!("corrupt zip archive: {e}")))?;
    let mut reader = std::io::BufReader::new(reader);
    let mut stack = Stack::empty();
    stack
        .read_loop(&mut reader)
        .map_err(|e| Error::file(file, format!("corrupt pickle: {e}")))?;
    let obj = stack
        .finalize()
        .map_err(|e| Error::file(file, format!("corrupt pickle: {e}")))?;
    let Object::Dict(entries) = obj else {
        return Ok(None);
    };
    let keys: Vec<String> = entries
        .iter()
        .filter_map(|(k, v)| match (k, v) {
            (Object::Unicode(k), Object::Dict(_)) => Some(k.clone()),
            _ => None,
        })
        .collect();
    for want in [
        "model",
        "state_dict",
        "model_ema",
        "state_dict_ema",
        "module",
    ] {
        if keys.iter().any(|k| k == want) {
            return Ok(Some(want.to_string()));
        }
    }
    Ok(None)
}

fn detect_format(file: &Path, raw: &[(String, Tensor)]) -> Result<Format> {
    let has = |n: &str| raw.iter().any(|(k, _)| k == n);
    let has_suffix = |n: &str| raw.iter().any(|(k, _)| k.ends_with(n));
    if has("stem.0.weight") {
        Ok(Format::Timm)
    } else if has("downsample_layers.0.0.weight") {
        Ok(Format::Facebook)
    } else if has_suffix("embeddings.patch_embeddings.weight") {
        Ok(Format::HuggingFace)
    } else {
        let mut names: Vec<&str> = raw.iter().map(|(k, _)| k.as_str()).collect();
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
fn canonical_name(format: Format, name: &str) -> Option<String> {
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

/// Shapes that differ only by layout become timm's: 1×1-conv MLP weights (atto–nano) become
/// matrices; GRN parameters `[1,1,1,C]` become `[C]`.
fn canonical_shape(name: &str, t: Tensor) -> std::result::Result<Tensor, String> {
    let dims = t.dims().to_vec();
    let squeeze = |t: Tensor, to: Vec<usize>| t.reshape(to).map_err(|e| e.to_string());
    if (name.ends_with("mlp.fc1.weight")
        || name.ends_with("mlp.fc2.weight")
        || name == "head.fc.weight")
        && dims.len() == 4
        && dims[2] == 1
        && dims[3] == 1
    {
        return squeeze(t, vec![dims[0], dims[1]]);
    }
    if name.contains(".mlp.grn.") && dims.len() == 4 && dims[..3] == [1, 1, 1] {
        return squeeze(t, vec![dims[3]]);
    }
    Ok(t)
}

fn dims_of<'a>(tensors: &'a HashMap<String, Tensor>, name: &str) -> Option<&'a [usize]> {
    tensors.get(name).map(|t| t.dims())
}

/// The architecture, read from names and shapes only.
fn infer_config(file: &Path, tensors: &HashMap<String, Tensor>) -> Result<Config> {
    let not = |msg: String| Error::NotConvNext {
        path: file.into(),
        msg,
    };
    let stem =
        dims_of(tensors, "stem.0.weight").ok_or_else(|| not("no stem convolution".into()))?;
    if stem.len() != 4 || stem[1] != 3 || stem[2] != 4 || stem[3] != 4 {
        return Err(Error::ShapeMismatch {
            path: file.into(),
            name: "stem.0.weight".into(),
            got: stem.to_vec(),
            expected: vec![stem.first().copied().unwrap_or(0), 3, 4, 4],
        });
    }
    // Stage and block indices present.
    let mut blocks: BTreeMap<usize, usize> = BTreeMap::new();
    for name in tensors.keys() {
        let p: Vec<&str> = name.split('.').collect();
        if p.len() > 1 && p[0] == "stages" {
            let s: usize = p[1]
                .parse()
                .map_err(|_| not(format!("tensor `{name}` has no stage index")))?;
            let e = blocks.entry(s).or_insert(0);
            if p.len() > 3 && p[2] == "blocks" {
                let b: usize = p[3]
                    .parse()
                    .map_err(|_| not(format!("tensor `{name}` has no block index")))?;
                *e = (*e).max(b + 1);
            }
        }
    }
    let num_stages = blocks.keys().next_back().map(|s| s + 1).unwrap_or(0);
    if num_stages == 0 {
        return Err(not("no stages".into()));
    }
    let mut depths = Vec::with_capacity(num_stages);
    let mut dims = Vec::with_capacity(num_stages);
    for s in 0..num_stages {
        depths.push(blocks.get(&s).copied().unwrap_or(0));
        let dim = if s == 0 {
            stem[0]
        } else {
            dims_of(tensors, &format!("stages.{s}.downsample.1.weight"))
                .or_else(|| dims_of(tensors, &format!("stages.{s}.blocks.0.conv_dw.weight")))
                .map(|d| d[0])
                .ok_or_else(|| Error::MissingTensor {
                    path: file.into(),
                    name: format!("stages.{s}.downsample.1.weight"),
                })?
        };
        dims.push(dim);
    }
    let version = if tensors.keys().any(|k| k.contains(".mlp.grn.")) {
        Version::V2
    } else {
        Version::V1
    };
    let layer_scale = tensors.keys().any(|k| k.ends_with(".gamma"));
    let num_classes = dims_of(tensors, "head.fc.weight")
        .map(|d| d[0])
        .ok_or_else(|| Error::MissingTensor {
            path: file.into(),
            name: "head.fc.weight (the classifier)".into(),
        })?;
    let kernel_size = dims_of(tensors, "stages.0.blocks.0.conv_dw.weight")
        .and_then(|d| d.get(2).copied())
        .unwrap_or(7);
    // timm builds convnext_xxlarge with LayerNorm eps 1e-5; everything else uses 1e-6.
    let ln_eps = if dims == [384, 768, 1536, 3072] {
        1e-5
    } else {
        1e-6
    };
    Ok(Config {
        version,
        depths,
        dims,
        num_classes,
        ln_eps,
        head_ln_eps: ln_eps,
        layer_scale,
        kernel_size,
    })
}

/// Hugging Face keeps the final LayerNorm's eps in `layer_norm_eps`; timm configs may carry
/// `model_args.norm_eps`.
fn apply_json_overrides(cfg: &mut Config, json: Option<&serde_json::Value>) {
    let Some(j) = json else { return };
    if let Some(eps) = j.get("layer_norm_eps").and_then(|v| v.as_f64()) {
        cfg.head_ln_eps = eps;
    }
    if let Some(eps) = j.pointer("/model_args/norm_eps").and_then(|v| v.as_f64()) {
        cfg.ln_eps = eps;
        cfg.head_ln_eps = eps;
    }
}

/// Every tensor a ConvNeXt of this config has, with its canonical shape, in forward order.
pub fn expected_tensors(cfg: &Config) -> Vec<(String, Vec<usize>)> {
    let mut v: Vec<(String, Vec<usize>)> = Vec::new();
    let k = cfg.kernel_size;
    let d0 = cfg.dims[0];
    v.push(("stem.0.weight".into(), vec![d0, 3, 4, 4]));
    v.push(("stem.0.bias".into(), vec![d0]));
    v.push(("stem.1.weight".into(), vec![d0]));
    v.push(("stem.1.bias".into(), vec![d0]));
    for (s, &depth) in cfg.depths.iter().enumerate() {
        let d = cfg.dims[s];
        if s > 0 {
            let p = cfg.dims[s - 1];
            let pre = format!("stages.{s}.downsample");
            v.push((format!("{pre}.0.weight"), vec![p]));
            v.push((format!("{pre}.0.bias"), vec![p]));
            v.push((format!("{pre}.1.weight"), vec![d, p, 2, 2]));
            v.push((format!("{pre}.1.bias"), vec![d]));
        }
        for b in 0..depth {
            let pre = format!("stages.{s}.blocks.{b}");
            v.push((format!("{pre}.conv_dw.weight"), vec![d, 1, k, k]));
            v.push((format!("{pre}.conv_dw.bias"), vec![d]));
            v.push((format!("{pre}.norm.weight"), vec![d]));
            v.push((format!("{pre}.norm.bias"), vec![d]));
            v.push((format!("{pre}.mlp.fc1.weight"), vec![4 * d, d]));
            v.push((format!("{pre}.mlp.fc1.bias"), vec![4 * d]));
            if cfg.version == Version::V2 {
                v.push((format!("{pre}.mlp.grn.weight"), vec![4 * d]));
                v.push((format!("{pre}.mlp.grn.bias"), vec![4 * d]));
            }
            v.push((format!("{pre}.mlp.fc2.weight"), vec![d, 4 * d]));
            v.push((format!("{pre}.mlp.fc2.bias"), vec![d]));
            if cfg.layer_scale {
                v.push((format!("{pre}.gamma"), vec![d]));
            }
        }
    }
    let last = *cfg.dims.last().unwrap_or(&0);
    v.push(("head.norm.weight".into(), vec![last]));
    v.push(("head.norm.bias".into(), vec![last]));
    v.push(("head.fc.weight".into(), vec![cfg.num_classes, last]));
    v.push(("head.fc.bias".into(), vec![cfg.num_classes]));
    v
}

fn check_strict(
    file: &Path,
    format: Format,
    cfg: &Config,
    tensors: &HashMap<String, Tensor>,
    origin: &HashMap<String, String>,
) -> Result<()> {
    let expected = expected_tensors(cfg);
    let shown = |canon: &str| -> String {
        match origin.get(canon) {
            Some(o) if o != canon => format!("{o}` (timm `{canon}`"),
            _ => canon.to_string(),
        }
    };
    for (name, shape) in &expected {
        match tensors.get(name) {
            None => {
                return Err(Error::MissingTensor {
                    path: file.into(),
                    name: if format == Format::Timm {
                        name.clone()
                    } else {
                        format!("{name}` (timm name; {format} checkpoint")
                    },
                })
            }
            Some(t) if t.dims() != shape.as_slice() => {
                return Err(Error::ShapeMismatch {
                    path: file.into(),
                    name: shown(name),
                    got: t.dims().to_vec(),
                    expected: shape.clone(),
                })
            }
            _ => {}
        }
    }
    if tensors.len() > expected.len() {
        let known: std::collections::HashSet<&str> =
            expected.iter().map(|(n, _)| n.as_str()).collect();
        let mut extra: Vec<&String> = tensors
            .keys()
            .filter(|k| !known.contains(k.as_str()))
            .collect();
        extra.sort();
        if let Some(name) = extra.first() {
            return Err(Error::ExtraTensor {
                path: file.into(),
                name: shown(name),
                shape: tensors[*name].dims().to_vec(),
                arch: cfg.describe(),
            });
        }
    }
    Ok(())
}
