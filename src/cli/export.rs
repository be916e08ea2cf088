//! `export`: the preprocessed input, the logits and the stage (and block) outputs of one input,
//! as NCHW f32 tensors in a safetensors file.
use super::{Context, ModelArgs};
use crate::analysis::trace::{to_nchw, CaptureLevel, CaptureObserver};
use anyhow::{bail, Context as _, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[arg(long, conflicts_with = "tensor")]
    image: Option<PathBuf>,
    /// Read an NCHW f32 tensor named `input` and skip preprocessing.
    #[arg(long)]
    tensor: Option<PathBuf>,
    #[arg(long)]
    out: PathBuf,
    /// Also write every block's output.
    #[arg(long)]
    blocks: bool,
    #[command(flatten)]
    model: ModelArgs,
}

/// The network input from `--image` (preprocessed as the model takes it) or `--tensor`.
pub fn image_or_tensor(
    engine: &crate::io::engine::Engine,
    image: Option<&Path>,
    tensor: Option<&Path>,
) -> Result<Tensor> {
    match (image, tensor) {
        (Some(img), None) => Ok(engine.prepare_file(img)?.tensor),
        (None, Some(t)) => read_input_tensor(t),
        _ => bail!("give --image IMG or --tensor T.safetensors"),
    }
}

pub fn run(ctx: &Context, a: &ExportArgs) -> Result<()> {
    let engine = ctx.engine(Some(&a.model), DType::F32)?;
    let input = image_or_tensor(&engine, a.image.as_deref(), a.tensor.as_deref())?;
    let level = if a.blocks {
        CaptureLevel::Blocks
    } else {
        CaptureLevel::Stages
    };
    let mut cap = CaptureObserver::new(level);
    let logits = engine.forward_observed(&input, &mut cap)?;
    let host =
        |t: &Tensor| -> Result<Tensor> { Ok(t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?) };
    let mut map: HashMap<String, Tensor> = HashMap::new();
    map.insert("input".into(), host(&input)?);
    map.insert("logits".into(), host(&logits)?);
    // The capture level already chose the layers; the head's logits are written above.
    for (id, t) in cap.outputs.iter().filter(|(id, _)| id.is_spatial()) {
        map.insert(id.name(), host(&to_nchw(t)?)?);
    }
    candle_core::safetensors::save(&map, &a.out)
        .with_context(|| format!("{}: cannot write", a.out.display()))?;
    eprintln!("wrote {} tensors to {}", map.len(), a.out.display());
    Ok(())
}

/// Largest `--tensor` file read.
const MAX_INPUT_FILE_BYTES: u64 = 1 << 30;

/// The `input` tensor of a safetensors file, as f32 `[N, 3, H, W]`.
pub fn read_input_tensor(path: &Path) -> Result<Tensor> {
    let bytes = crate::base::files::read_capped(path, MAX_INPUT_FILE_BYTES, "an input tensor")?;
    let map = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .with_context(|| format!("{}: cannot read safetensors", path.display()))?;
    let t = map
        .get("input")
        .with_context(|| format!("{}: no tensor named `input`", path.display()))?;
    match t.dims() {
        [n, 3, h, w] if *n >= 1 && *h >= 1 && *w >= 1 => Ok(t.to_dtype(DType::F32)?),
        d => bail!(
            "{}: `input` has shape {d:?}, want [N, 3, H, W]",
            path.display()
        ),
    }
}
