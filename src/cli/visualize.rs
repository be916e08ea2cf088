//! `visualize`: the image a channel (a neuron, a class) would most like to see, optimised from
//! noise with Lucid's recipe; a PNG and the tensor the model saw per image.
use super::{Context, ModelArgs};
use crate::analysis::attribution::layer_by_name;
use crate::analysis::feature_vis::{self, Objective, Settings, Visual};
use crate::io::engine::Engine;
use anyhow::{bail, Context as _, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct VisualizeArgs {
    /// `--seed` seeds the optimisation (and, with --variant, the random weights).
    #[command(flatten)]
    model: ModelArgs,
    /// The layer whose channels are visualised (`stem`, `stages.1`, `stages.2.blocks.0.mlp.act`,
    /// …; `inspect` lists them). Not needed with --class.
    #[arg(long)]
    layer: Option<String>,
    /// Channels, one image each: `5` or `0,3,17` (the mean of the channel's map is maximised).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["neuron", "class"])]
    channel: Vec<usize>,
    /// One channel's value at the centre position.
    #[arg(long, conflicts_with = "class")]
    neuron: Option<usize>,
    /// A class logit.
    #[arg(long)]
    class: Option<usize>,
    #[arg(long, default_value_t = feature_vis::STEPS)]
    steps: usize,
    /// Side of the image in pixels (default: the model's input size).
    #[arg(long)]
    size: Option<usize>,
    /// N different images of the objective, pushed apart by Lucid's diversity term.
    #[arg(long)]
    diversity: Option<usize>,
    /// The diversity term's weight against the objectives (0: independent seeds only).
    #[arg(long, default_value_t = feature_vis::DIVERSITY_WEIGHT)]
    diversity_weight: f32,
    /// Optimise the plain image, without Lucid's robustness transforms.
    #[arg(long)]
    no_transforms: bool,
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Item {
    channel: Option<usize>,
    class: Option<usize>,
    /// The image's index among the diverse ones.
    index: Option<usize>,
    /// The objective re-measured on the saved `input` (the PNG as the model sees it).
    objective: f32,
    png: PathBuf,
    tensor: PathBuf,
}

#[derive(Serialize)]
struct Report {
    layer: String,
    items: Vec<Item>,
    /// With --diversity: the mean cosine similarity of the images' Gram matrices at the layer.
    gram_similarity: Option<f32>,
}

/// One image to make: its objective, what the report calls it and its file name's stem.
struct Wanted {
    objective: Objective,
    channel: Option<usize>,
    class: Option<usize>,
    stem: String,
}

pub fn run(ctx: &Context, a: &VisualizeArgs) -> Result<()> {
    let engine = ctx.engine(Some(&a.model), DType::F32)?;
    let (layer_name, wanted) = objectives(&engine, a)?;
    let mut settings = Settings::for_model(&engine);
    settings.steps = a.steps;
    settings.seed = a.model.seed;
    settings.transforms = !a.no_transforms;
    if let Some(s) = a.size {
        settings.size = s;
    }
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("{}: cannot create the folder", a.out.display()))?;
    let (visuals, stems, similarity) = match a.diversity {
        Some(n) => {
            let Some(w) = wanted.first().filter(|_| wanted.len() == 1) else {
                bail!("--diversity makes several images of one objective: give one channel");
            };
            let v = feature_vis::visualize_diverse(
                &engine,
                &w.objective,
                n,
                (None, a.diversity_weight),
                &settings,
                &mut Steps,
            )?;
            let input = Tensor::cat(&v.iter().map(|v| v.input.clone()).collect::<Vec<_>>(), 0)?;
            let layer = layer_by_name(&engine, &layer_name)?;
            let sim = feature_vis::gram_similarity(&engine, &input, layer)?;
            let stems: Vec<String> = (0..n).map(|j| format!("{}_{j}", w.stem)).collect();
            (v, stems, Some(sim))
        }
        None => {
            let objs: Vec<Objective> = wanted.iter().map(|w| w.objective.clone()).collect();
            let v = feature_vis::visualize(&engine, &objs, &settings, &mut Steps)?;
            (v, wanted.iter().map(|w| w.stem.clone()).collect(), None)
        }
    };
    let mut items = Vec::new();
    for (j, (v, stem)) in visuals.iter().zip(&stems).enumerate() {
        let w = &wanted[j.min(wanted.len() - 1)];
        let (png, tensor) = save(v, &a.out, stem)?;
        items.push(Item {
            channel: w.channel,
            class: w.class,
            index: a.diversity.map(|_| j),
            objective: v.objective,
            png,
            tensor,
        });
    }
    let report = Report {
        layer: layer_name,
        items,
        gram_similarity: similarity,
    };
    print(&report, a.json)
}

/// Progress on stderr, a line every 64 steps (512 lines would bury the report).
struct Steps;

impl crate::base::progress::Progress for Steps {
    fn update(&mut self, done: usize, total: usize, what: &str) {
        if done.is_multiple_of(64) {
            eprintln!("{done}/{total} {what}");
        }
    }
}

fn print(r: &Report, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    for i in &r.items {
        println!(
            "{}: objective {:.4} on the saved image",
            i.png.display(),
            i.objective
        );
    }
    if let Some(s) = r.gram_similarity {
        println!(
            "mean cosine similarity of the images' Gram matrices at {}: {s:.4}",
            r.layer
        );
    }
    Ok(())
}

/// The objectives the options ask for, and the layer's name as the files use it.
fn objectives(engine: &Engine, a: &VisualizeArgs) -> Result<(String, Vec<Wanted>)> {
    if let Some(k) = a.class {
        let wanted = Wanted {
            objective: Objective::Class(k),
            channel: None,
            class: Some(k),
            stem: format!("logits_{k}"),
        };
        return Ok(("logits".into(), vec![wanted]));
    }
    let Some(name) = &a.layer else {
        bail!("give --layer NAME with --channel or --neuron (or --class K)");
    };
    let layer = layer_by_name(engine, name)?;
    let name = layer.name();
    let make = |c: usize, neuron: bool| Wanted {
        objective: if neuron {
            Objective::Neuron { layer, channel: c }
        } else {
            Objective::Channel { layer, channel: c }
        },
        channel: Some(c),
        class: None,
        stem: format!("{name}_{c}"),
    };
    let wanted: Vec<Wanted> = match (&a.channel[..], a.neuron) {
        ([], Some(c)) => vec![make(c, true)],
        ([], None) => bail!("give --channel C[,C…], --neuron C or --class K"),
        (cs, _) => cs.iter().map(|&c| make(c, false)).collect(),
    };
    Ok((name, wanted))
}

/// Writes `DIR/<stem>.png` (grey for a grey model) and `DIR/<stem>.safetensors` (`input`).
fn save(v: &Visual, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf)> {
    let png = dir.join(format!("{stem}.png"));
    let written = if v.grey {
        // The three channels are equal: the red one is the grey.
        let (w, h) = v.rgb.dimensions();
        image::GrayImage::from_fn(w, h, |x, y| image::Luma([v.rgb.get_pixel(x, y)[0]])).save(&png)
    } else {
        v.rgb.save(&png)
    };
    written.with_context(|| format!("{}: cannot write", png.display()))?;
    let tensor = dir.join(format!("{stem}.safetensors"));
    let input = v.input.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    candle_core::safetensors::save(&HashMap::from([("input".to_string(), input)]), &tensor)
        .with_context(|| format!("{}: cannot write", tensor.display()))?;
    Ok((png, tensor))
}
