//! `cka`: centred kernel alignment between every layer of one model and every layer of
//! another (or the same), over a folder of images or a ready input tensor; and `diff`: what
//! changed between two checkpoints.
use super::export::read_input_tensor;
use super::{batch_arg, Context, ModelArgs};
use crate::analysis::cka::{cka_folder, cka_tensor, CkaResult, BATCH};
use crate::io::engine::{Engine, ModelSpec};
use anyhow::{bail, Result};
use candle_core::DType;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct CkaArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The other model's weights (file or folder).
    #[arg(long, conflicts_with = "other_variant")]
    other: Option<PathBuf>,
    /// The other model as a named variant with seeded random weights (`--seed` applies to both).
    #[arg(long)]
    other_variant: Option<String>,
    /// A folder of images (searched recursively; full paths sorted byte-wise).
    #[arg(long, conflicts_with = "tensor")]
    images: Option<PathBuf>,
    /// An NCHW f32 tensor named `input` instead of a folder (taken in its own order).
    #[arg(long)]
    tensor: Option<PathBuf>,
    #[arg(long)]
    limit: Option<usize>,
    /// Mini-batch size m (a last batch under 4 images is dropped).
    #[arg(long, default_value_t = BATCH, value_parser = batch_arg)]
    batch: usize,
    /// `{"images", "batch", "layers_a", "layers_b", "cka": [[…]]}`.
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Context, a: &CkaArgs) -> Result<()> {
    let first = ctx.engine(Some(&a.model), DType::F32)?;
    let other_spec = match (&a.other, &a.other_variant) {
        (Some(p), None) => ModelSpec::Weights(p.clone()),
        (None, Some(v)) => ModelSpec::Variant {
            name: v.clone(),
            classes: a.model.classes,
            seed: a.model.seed,
        },
        _ => bail!("give --other WEIGHTS or --other-variant NAME"),
    };
    let second = Engine::build(&other_spec, &ctx.device, DType::F32)?;
    let mut progress = super::eval::Terminal;
    let r = match (&a.images, &a.tensor) {
        (Some(dir), None) => cka_folder(&first, &second, dir, a.limit, a.batch, &mut progress)?,
        (None, Some(t)) => cka_tensor(
            &first,
            &second,
            &read_input_tensor(t)?,
            a.batch,
            &mut progress,
        )?,
        _ => bail!("give --images DIR or --tensor T.safetensors"),
    };
    for (p, e) in &r.skipped {
        eprintln!("skipped {}: {e}", p.display());
    }
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        print_table(&r);
    }
    Ok(())
}

/// The diagonal-ish view a terminal can show: for each of A's layers, B's most similar layer.
fn print_table(r: &CkaResult) {
    println!("CKA over {} images (mini-batches of {})", r.images, r.batch);
    println!(
        "{:<24} {:<24} {:>6}",
        "layer of A", "most similar in B", "CKA"
    );
    for (name, row) in r.layers_a.iter().zip(&r.cka) {
        let best = row
            .iter()
            .enumerate()
            .filter_map(|(j, v)| v.map(|v| (j, v)))
            .max_by(|x, y| x.1.total_cmp(&y.1));
        match best {
            Some((j, v)) => println!("{name:<24} {:<24} {v:>6.3}", r.layers_b[j]),
            None => println!("{name:<24} {:<24} {:>6}", "(constant)", "-"),
        }
    }
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The first checkpoint (file or folder, any supported format).
    a: PathBuf,
    /// The second checkpoint.
    b: PathBuf,
    /// `{"tensors": [{"name", "rel_change", "cosine"}], "only_a", "only_b", "groups": [{"name",
    /// "rel_change", "gamma_change"}]}`.
    #[arg(long)]
    json: bool,
}

pub fn diff(a: &DiffArgs) -> Result<()> {
    let d = crate::analysis::diff::diff_files(&a.a, &a.b)?;
    if a.json {
        println!("{}", serde_json::to_string(&d)?);
        return Ok(());
    }
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
    println!(
        "{:<28} {:>10} {:>12}",
        "group", "rel_change", "gamma_change"
    );
    for g in &d.groups {
        println!(
            "{:<28} {:>10} {:>12}",
            g.name,
            f(g.rel_change),
            f(g.gamma_change)
        );
    }
    for (side, names) in [("first", &d.only_a), ("second", &d.only_b)] {
        if !names.is_empty() {
            println!("only in the {side}: {}", names.join(", "));
        }
    }
    Ok(())
}
