//! The engine's front door: a model with its labels and preprocessing, built from a checkpoint
//! or a named variant, and the few things every front end asks of it.
use crate::base::device::{device_name, dtype_name};
use crate::base::error::{Error, Result};
use crate::base::text::{file_label, human};
use crate::io::checkpoint::{Checkpoint, Format};
use crate::io::labels::{self, LabelSource};
use crate::io::preprocess::{self, PreprocessConfig};
use crate::model::flops::{self, LayerInfo};
use crate::model::observer::Observer;
use crate::model::{Network, Plan};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where the weights came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Weights { path: PathBuf, format: Format },
    Random { variant: String, seed: u64 },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Weights { path, format } => write!(f, "{} ({format})", path.display()),
            Source::Random { variant, seed } => {
                write!(f, "{variant} (random weights, seed {seed})")
            }
        }
    }
}

pub struct Engine {
    pub model: Network,
    /// The architecture (one description: the network, its counts and its tensors).
    pub plan: Plan,
    pub labels: Vec<String>,
    pub label_source: LabelSource,
    pub preprocess: PreprocessConfig,
    pub source: Source,
    pub device: Device,
    pub dtype: DType,
    pub num_params: usize,
    /// What the model is, for people.
    pub card: crate::io::card::ModelCard,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Prediction {
    pub index: usize,
    pub label: String,
    pub prob: f32,
}

/// A folder the project ships (`weights`, `assets/samples`): relative to the working directory
/// when it is there (an installed or moved binary run from a checkout), else in the source tree.
pub fn project_dir(rel: &str) -> PathBuf {
    let here = PathBuf::from(rel);
    if here.is_dir() {
        return here;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The folder the shipped default model and users' own weights live in.
pub fn weights_dir() -> PathBuf {
    if let Ok(d) = std::env::var("CONVNEXT_WEIGHTS_DIR") {
        return PathBuf::from(d);
    }
    project_dir("weights")
}

/// The user's own folder of downloaded weights: `$XDG_DATA_HOME/convnext-explorer/weights`
/// (`~/.local/share/…`), or the platform's equivalent.
pub fn user_weights_dir() -> Option<PathBuf> {
    let env_dir = |k: &str| {
        std::env::var_os(k)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    let home = env_dir("HOME");
    let data = if cfg!(target_os = "macos") {
        home.map(|h| h.join("Library/Application Support"))
    } else if cfg!(windows) {
        env_dir("APPDATA")
    } else {
        env_dir("XDG_DATA_HOME").or_else(|| home.map(|h| h.join(".local/share")))
    };
    data.map(|d| d.join("convnext-explorer").join("weights"))
}

/// Where a download goes when no `--out` says: `CONVNEXT_WEIGHTS_DIR` if set, else `weights/`
/// in the current folder if there is one, else [`user_weights_dir`]. Never the build tree.
pub fn download_dir() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("CONVNEXT_WEIGHTS_DIR") {
        return Some(PathBuf::from(d));
    }
    let here = PathBuf::from("weights");
    if here.is_dir() {
        return Some(here);
    }
    user_weights_dir()
}

/// Every folder the app lists checkpoints from: [`weights_dir`], then the user's downloads.
pub fn weights_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![weights_dir()];
    if let Some(d) = user_weights_dir().filter(|d| d.is_dir()) {
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    dirs
}

/// The project's shipped model, trained on Fashion-MNIST (see `weights/README.md`).
pub const DEFAULT_MODEL_FILE: &str = "convnext_fashion.safetensors";

pub fn default_weights() -> Option<PathBuf> {
    let p = weights_dir().join(DEFAULT_MODEL_FILE);
    p.is_file().then_some(p)
}

/// Which model to build: weights from a file or folder, or a named architecture with seeded
/// random weights (for shapes, MACs and timing).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ModelSpec {
    Weights(PathBuf),
    Variant {
        name: String,
        classes: usize,
        seed: u64,
    },
}

impl std::fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelSpec::Weights(p) => write!(f, "{}", p.display()),
            ModelSpec::Variant { name, .. } => write!(f, "{name} (random weights)"),
        }
    }
}

impl ModelSpec {
    /// A short name for lists and titles: the file's name, or the variant's.
    pub fn label(&self) -> String {
        match self {
            ModelSpec::Weights(p) => file_label(p),
            ModelSpec::Variant { name, .. } => name.clone(),
        }
    }
}

impl Engine {
    /// Builds the model a spec names.
    pub fn build(spec: &ModelSpec, device: &Device, dtype: DType) -> Result<Engine> {
        match spec {
            ModelSpec::Weights(p) => Engine::load(p, device, dtype),
            ModelSpec::Variant {
                name,
                classes,
                seed,
            } => Engine::random(name, *classes, *seed, device, dtype),
        }
    }

    pub fn load(path: &Path, device: &Device, dtype: DType) -> Result<Engine> {
        Engine::from_checkpoint(Checkpoint::open(path)?, device, dtype)
    }

    pub fn from_checkpoint(ck: Checkpoint, device: &Device, dtype: DType) -> Result<Engine> {
        let info = ck.info;
        let plan = Plan::convnext(&info.config);
        let model = build_network(ck.tensors, &plan, device, dtype)
            .map_err(|e| Error::file(&info.path, e))?;
        Ok(Engine {
            model,
            plan,
            labels: info.labels,
            label_source: info.label_source,
            preprocess: info.preprocess,
            source: Source::Weights {
                path: info.path,
                format: info.format,
            },
            device: device.clone(),
            dtype,
            num_params: info.num_params,
            card: info.card,
        })
    }

    /// A named variant with seeded random weights, initialised as timm does (truncated normal
    /// σ = 0.02 for conv and linear weights, zero biases, unit norms, layer scale 1e-6).
    pub fn random(
        variant: &str,
        num_classes: usize,
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> Result<Engine> {
        let plan = Plan::named(variant, num_classes)?;
        let tensors = plan.random_weights(seed)?;
        let num_params = tensors.values().map(|t| t.elem_count()).sum();
        let model = build_network(tensors, &plan, device, dtype)?;
        let (labels, label_source) = labels::labels_for(num_classes, None).map_err(Error::Input)?;
        let preprocess = PreprocessConfig::default();
        let origin = format!("{} with seeded random weights (seed {seed})", plan.name);
        let card = crate::io::card::ModelCard::random(&labels, label_source, &preprocess, origin);
        Ok(Engine {
            card,
            model,
            labels,
            label_source,
            preprocess,
            source: Source::Random {
                variant: plan.name.clone(),
                seed,
            },
            plan,
            device: device.clone(),
            dtype,
            num_params,
        })
    }

    /// The dtype, for people: for bf16 on the packed GEMM also what it means on this CPU
    /// (native bf16 matmuls, or emulated ones), the rest being f32.
    pub fn precision(&self) -> String {
        let name = crate::base::device::dtype_name(self.dtype);
        if !bf16_on_the_packed_gemm(&self.device, self.dtype) {
            return name.to_string();
        }
        match self.native_bf16_matmuls() {
            true => format!("{name} (matmuls on AVX-512 BF16, the rest f32)"),
            false => format!(
                "{name} emulated (no AVX-512 BF16 on this CPU: matmuls of bf16-rounded values in f32, the rest f32)"
            ),
        }
    }

    /// Whether the matmuls run `vdpbf16ps` (bf16 on the packed GEMM, on a CPU with AVX-512
    /// BF16): they can then pass the f32 FMA loop's peak, up to twice it.
    pub fn native_bf16_matmuls(&self) -> bool {
        bf16_on_the_packed_gemm(&self.device, self.dtype) && crate::kernels::gemm::bf16_native()
    }

    /// The dtype the activations and most weights are kept in: f32 for bf16 on the packed
    /// GEMM (only the matmuls' weights and inputs are bf16 there), else the model's dtype.
    /// Memory budgets and bytes moved count in it.
    pub fn storage_dtype(&self) -> DType {
        match bf16_on_the_packed_gemm(&self.device, self.dtype) {
            true => DType::F32,
            false => self.dtype,
        }
    }

    /// What a forward of an `n × 3 × h × w` input holds at once, at least: the weights and the
    /// two largest activations, in the storage dtype (see [`flops::working_set_bytes`]).
    pub fn working_set_bytes(&self, n: usize, h: usize, w: usize) -> u64 {
        let layers = flops::layers(&self.plan, n, h, w);
        let bytes = self.storage_dtype().size_in_bytes();
        flops::working_set_bytes(&layers, self.num_params, bytes)
    }

    /// The ConvNeXt configuration, for a ConvNeXt (not a roadmap step).
    pub fn config(&self) -> Option<&crate::model::Config> {
        self.plan.convnext_config()
    }

    /// The same architecture with seeded random weights (the untrained baseline an ERF is
    /// compared with), keeping this model's preprocessing and labels.
    pub fn random_like(&self, seed: u64) -> Result<Engine> {
        let origin = format!(
            "{} with seeded random weights (seed {seed})",
            self.plan.name
        );
        let mut e = self.with_weights(self.plan.random_weights(seed)?, origin)?;
        e.source = Source::Random {
            variant: self.plan.name.clone(),
            seed,
        };
        Ok(e)
    }

    /// This model's weights by canonical name, read again from where they came from (the
    /// checkpoint, or the seed): the engine itself keeps them only inside its layers.
    pub fn weights(&self) -> Result<HashMap<String, Tensor>> {
        match &self.source {
            Source::Weights { path, .. } => Ok(Checkpoint::open(path)?.tensors),
            Source::Random { seed, .. } => self.plan.random_weights(*seed),
        }
    }

    /// The same architecture, preprocessing and labels with these weights (a model with some
    /// of its parts re-initialised, for the randomisation sanity check).
    pub fn with_weights(&self, tensors: HashMap<String, Tensor>, what: String) -> Result<Engine> {
        let model = build_network(tensors, &self.plan, &self.device, self.dtype)?;
        let card = crate::io::card::ModelCard::random(
            &self.labels,
            self.label_source,
            &self.preprocess,
            what,
        );
        Ok(Engine {
            card,
            model,
            plan: self.plan.clone(),
            labels: self.labels.clone(),
            label_source: self.label_source,
            preprocess: self.preprocess.clone(),
            source: self.source.clone(),
            device: self.device.clone(),
            dtype: self.dtype,
            num_params: self.num_params,
        })
    }

    pub fn is_random(&self) -> bool {
        matches!(self.source, Source::Random { .. })
    }

    pub fn describe(&self) -> String {
        format!(
            "{} · {} · {} params · {} classes · {} {}",
            self.plan.name,
            self.source,
            human(self.num_params as f64),
            self.plan.num_classes(),
            device_name(&self.device),
            dtype_name(self.dtype)
        )
    }

    /// Decodes and preprocesses an image file for this model.
    pub fn prepare_file(&self, path: &Path) -> Result<preprocess::Prepared> {
        let img = preprocess::load_image(path)?;
        preprocess::prepare(&img, &self.preprocess, &self.device)
            .map_err(|e| e.about_image(&path.display().to_string()))
    }

    /// Logits for an `[N, 3, H, W]` batch; an error if any is not finite.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_observed(x, &mut crate::model::observer::NoObserver)
    }

    /// [`Engine::forward`], reporting every named layer to `obs`.
    pub fn forward_observed<O: Observer>(&self, x: &Tensor, obs: &mut O) -> Result<Tensor> {
        self.check_input(x)?;
        let x = x.to_device(&self.device)?;
        let logits = self.model.forward_observed(&x, obs)?;
        if !crate::model::observer::all_finite(&logits)? {
            return Err(Error::NonFinite(self.first_non_finite(&x)));
        }
        Ok(logits)
    }

    /// Where non-finite values first appear: the input, or the first layer that makes them
    /// (a second forward, taken only when the first went wrong).
    fn first_non_finite(&self, x: &Tensor) -> String {
        if !crate::model::observer::all_finite(x).unwrap_or(false) {
            return "the input".into();
        }
        let mut finder = crate::model::observer::FirstNonFinite::default();
        // The finder stops the forward at the first bad layer: its error is expected.
        let _ = self.model.forward_observed(x, &mut finder);
        match finder.first {
            Some(id) => format!("layer `{id}`"),
            None => "the logits".into(),
        }
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        let dims = x.dims();
        let &[n, 3, h, w] = dims else {
            return Err(Error::Input(format!(
                "input tensor must be [N, 3, H, W] with N ≥ 1, got {dims:?}"
            )));
        };
        if n == 0 {
            return Err(Error::Input(format!(
                "input tensor must be [N, 3, H, W] with N ≥ 1, got {dims:?}"
            )));
        }
        self.plan.check_input(h, w)?;
        self.check_fits(n, h, w)
    }

    /// Refuses an input whose forward would need more memory than the machine has free.
    /// Below half a megapixel per batch nothing comes near, and the check is skipped.
    fn check_fits(&self, n: usize, h: usize, w: usize) -> Result<()> {
        if n.saturating_mul(h).saturating_mul(w) <= 1 << 19 || !self.device.is_cpu() {
            return Ok(());
        }
        let need = self.working_set_bytes(n, h, w);
        match crate::base::device::host_memory_available() {
            Some(free) if need > free => Err(Error::Input(format!(
                "a {n}×3×{h}×{w} input needs about {} for its forward, more than the {} free",
                crate::base::files::mb(need),
                crate::base::files::mb(free)
            ))),
            _ => Ok(()),
        }
    }

    /// Top-k classes of each row of a logits tensor.
    pub fn top_k(&self, logits: &Tensor, k: usize) -> Result<Vec<Vec<Prediction>>> {
        let probs = candle_nn::ops::softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
        let rows: Vec<Vec<f32>> = probs.to_vec2()?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let mut idx: Vec<usize> = (0..row.len()).collect();
                idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
                idx.into_iter()
                    .take(k)
                    .map(|i| Prediction {
                        index: i,
                        label: self
                            .labels
                            .get(i)
                            .cloned()
                            .unwrap_or_else(|| format!("class {i}")),
                        prob: row[i],
                    })
                    .collect()
            })
            .collect())
    }

    pub fn layers(&self, batch: usize) -> Vec<LayerInfo> {
        let (h, w) = self.preprocess.input_size;
        flops::layers(&self.plan, batch, h, w)
    }
}

/// The network of `plan` from `tensors`, in `dtype` on `device`.
///
/// bf16 on a CPU with the packed GEMM means bf16 matmuls and f32 everywhere else (as
/// PyTorch's CPU autocast does): the Linear layers and the patch convs multiply bf16-rounded
/// weights and inputs with f32 sums, while the depthwise convs, the norms, GELU, GRN and the
/// residual stream stay f32, which keeps their fused kernels and costs little accuracy.
fn build_network(
    tensors: HashMap<String, Tensor>,
    plan: &Plan,
    device: &Device,
    dtype: DType,
) -> candle_core::Result<Network> {
    if bf16_on_the_packed_gemm(device, dtype) {
        let vb = taking_var_builder(tensors, DType::F32, device);
        let options = crate::model::layers::BuildOptions {
            bf16_matmuls: true,
            ..Default::default()
        };
        return Network::new_with(vb, plan, options);
    }
    Network::new(taking_var_builder(tensors, dtype, device), plan)
}

/// Whether a model in `dtype` on `device` runs as [`build_network`] says: f32 with bf16
/// matmuls.
pub fn bf16_on_the_packed_gemm(device: &Device, dtype: DType) -> bool {
    dtype == DType::BF16
        && device.is_cpu()
        && crate::kernels::gemm::available()
        && std::env::var_os("CONVNEXT_GENERIC_MATMUL").is_none()
}

/// A VarBuilder that hands each tensor over once and forgets it, so that a layer that repacks its
/// weight (the CPU GEMM) frees the original while the model is still being built: loading then
/// peaks near one copy of the weights, not two.
fn taking_var_builder(
    tensors: HashMap<String, Tensor>,
    dtype: DType,
    device: &Device,
) -> VarBuilder<'static> {
    VarBuilder::from_backend(
        Box::new(TakingBackend(std::sync::Mutex::new(tensors))),
        dtype,
        device.clone(),
    )
}

struct TakingBackend(std::sync::Mutex<HashMap<String, Tensor>>);

impl TakingBackend {
    fn take(&self, name: &str) -> candle_core::Result<Tensor> {
        crate::base::sync::lock(&self.0)
            .remove(name)
            .ok_or_else(|| candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            })
    }
}

impl candle_nn::var_builder::SimpleBackend for TakingBackend {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.take(name)?;
        if t.shape() != &s {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: s,
                got: t.shape().clone(),
            });
        }
        t.to_device(dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.take(name)?.to_device(dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        crate::base::sync::lock(&self.0).contains_key(name)
    }
}
