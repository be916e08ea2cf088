//! The command line: the same engine as the app, scriptable. One module per subcommand; the
//! options several share are the structs below.
mod attribute;
mod bench;
mod cka;
mod classify;
mod collapse;
#[cfg(feature = "hub")]
mod download;
mod erf;
mod eval;
mod export;
mod faithfulness;
mod inspect;
mod roadmap;
mod top_images;
mod train;
mod visualize;

use crate::base::device::{parse_device, parse_dtype, set_threads};
use crate::io::engine::{default_weights, Engine, ModelSpec};
use anyhow::{Context as _, Result};
use candle_core::{DType, Device};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "convnext-explorer",
    version,
    about = "Look inside ConvNeXt image classifiers. With no subcommand, opens the app."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Weights (file or folder); default: the shipped model.
    #[arg(long, global = true)]
    pub weights: Option<PathBuf>,
    /// Device: cpu, cuda[:N], metal[:N] or auto (default: cpu; the app remembers its last).
    #[arg(long, global = true)]
    pub device: Option<String>,
    /// CPU threads (default: all cores).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// Image for the app to open.
    pub image: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Top-k predictions for images (files or folders).
    Classify(classify::ClassifyArgs),
    /// The layer table: shapes, parameters and MACs (fvcore convention).
    Inspect(inspect::InspectArgs),
    /// Write the input, logits and stage (optionally block) outputs to a safetensors file.
    Export(export::ExportArgs),
    /// Train the small Fashion-MNIST ConvNeXt (the shipped default model).
    Train(train::TrainArgs),
    /// Download a Hugging Face repo (timm or transformers ConvNeXt), verified, into `weights/`.
    #[cfg(feature = "hub")]
    Download(download::DownloadArgs),
    /// Accuracy, per-class precision/recall and confusion: on the Fashion-MNIST test set, or on
    /// a folder labelled by its layout (`--images DIR`).
    Eval(eval::EvalArgs),
    /// Time the forward pass.
    Bench(bench::BenchArgs),
    /// The paper's 16 steps from ResNet-50 to ConvNeXt-T: MACs, parameters (and times).
    Roadmap(roadmap::RoadmapArgs),
    /// Grad-CAM, Grad-CAM++, occlusion or the evidence map at any layer.
    Attribute(attribute::AttributeArgs),
    /// The effective receptive field of a layer, over a folder or a tensor.
    Erf(erf::ErfArgs),
    /// Feature collapse (ConvNeXt V2) at every block's mlp.act and every stage output.
    Collapse(collapse::CollapseArgs),
    /// The images of a folder that excite one channel most, with the patches around the peaks.
    TopImages(top_images::TopImagesArgs),
    /// Centred kernel alignment (CKA) between every layer of two models over the same images.
    Cka(cka::CkaArgs),
    /// What changed between two checkpoints: per tensor, per block, in layer scale.
    Diff(cka::DiffArgs),
    /// Deletion and insertion curves of a method's maps (or given maps); a folder ranks the
    /// methods.
    Faithfulness(faithfulness::FaithfulnessArgs),
    /// The cascading model-randomisation sanity check of a method at a layer.
    Sanity(faithfulness::SanityArgs),
    /// The image a channel, a neuron or a class would most like to see, optimised from noise
    /// (Lucid's recipe).
    Visualize(visualize::VisualizeArgs),
}

/// Which model: `--weights` (global) or a named variant with seeded random weights.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A named variant with seeded random weights (instead of --weights).
    #[arg(long, conflicts_with = "weights")]
    pub variant: Option<String>,
    /// Classes of the random head (with --variant).
    #[arg(long, default_value_t = 1000)]
    pub classes: usize,
    /// Seed of the random weights (with --variant).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// What every subcommand is given: the global options, checked once.
pub struct Context {
    pub weights: Option<PathBuf>,
    pub device: Device,
}

impl Context {
    /// The model `--weights` or `--variant` names; the shipped model when neither is given.
    pub fn model_spec(&self, model: Option<&ModelArgs>) -> Result<ModelSpec> {
        if let Some(m) = model {
            if let Some(v) = &m.variant {
                return Ok(ModelSpec::Variant {
                    name: v.clone(),
                    classes: m.classes,
                    seed: m.seed,
                });
            }
        }
        let path = match &self.weights {
            Some(p) => p.clone(),
            None => default_weights().context(
                "no --weights given and the shipped default model (weights/convnext_fashion.safetensors) is missing; pass --weights or --variant",
            )?,
        };
        Ok(ModelSpec::Weights(path))
    }

    pub fn engine(&self, model: Option<&ModelArgs>, dtype: DType) -> Result<Engine> {
        Ok(Engine::build(
            &self.model_spec(model)?,
            &self.device,
            dtype,
        )?)
    }
}

/// Largest `--size` side: beyond it no ConvNeXt input makes sense and counts could overflow.
pub const MAX_SIZE: usize = 16_384;
/// Largest `--batch` (whether it fits in memory is checked where memory is spent).
pub const MAX_BATCH: usize = 65_536;

/// `H` or `HxW`, as `--size` takes it: each side 1 to [`MAX_SIZE`].
pub fn parse_size(s: &str) -> Result<(usize, usize)> {
    let parse = |p: &str| -> Result<usize> {
        p.trim()
            .parse()
            .ok()
            .filter(|v| (1..=MAX_SIZE).contains(v))
            .with_context(|| format!("bad size `{s}` (expected H or HxW, each 1 to {MAX_SIZE})"))
    };
    match s.split_once(['x', 'X']) {
        Some((h, w)) => Ok((parse(h)?, parse(w)?)),
        None => {
            let v = parse(s)?;
            Ok((v, v))
        }
    }
}

/// `--batch` as clap parses it: 1 to [`MAX_BATCH`].
fn batch_arg(s: &str) -> std::result::Result<usize, String> {
    s.parse()
        .ok()
        .filter(|b| (1..=MAX_BATCH).contains(b))
        .ok_or_else(|| format!("`{s}`: want a batch of 1 to {MAX_BATCH}"))
}

/// `--dtype` as clap parses it.
fn dtype_arg(s: &str) -> std::result::Result<DType, String> {
    parse_dtype(s).map_err(|e| e.to_string())
}

pub fn run(cli: Cli) -> Result<()> {
    if let Some(t) = cli.threads {
        set_threads(t)?;
    }
    let ctx = Context {
        weights: cli.weights.clone(),
        device: parse_device(cli.device.as_deref().unwrap_or("cpu"))?,
    };
    let Some(cmd) = &cli.command else {
        anyhow::bail!("no subcommand (the app is started by main)");
    };
    match cmd {
        Command::Classify(a) => classify::run(&ctx, a),
        Command::Inspect(a) => inspect::run(&ctx, a),
        Command::Export(a) => export::run(&ctx, a),
        Command::Train(a) => train::train(a),
        #[cfg(feature = "hub")]
        Command::Download(a) => download::run(a),
        Command::Eval(a) => eval::run(&ctx, a),
        Command::Bench(a) => bench::run(&ctx, a),
        Command::Roadmap(a) => roadmap::run(&ctx, a),
        Command::Attribute(a) => attribute::run(&ctx, a),
        Command::Erf(a) => erf::run(&ctx, a),
        Command::Collapse(a) => collapse::run(&ctx, a),
        Command::TopImages(a) => top_images::run(&ctx, a),
        Command::Cka(a) => cka::run(&ctx, a),
        Command::Diff(a) => cka::diff(a),
        Command::Faithfulness(a) => faithfulness::run(&ctx, a),
        Command::Sanity(a) => faithfulness::run_sanity(&ctx, a),
        Command::Visualize(a) => visualize::run(&ctx, a),
    }
}
