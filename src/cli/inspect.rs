//! `inspect`: the analytic layer table of a checkpoint or a named variant, at any input size.
use super::{batch_arg, parse_size, Context, ModelArgs};
use crate::base::text::human;
use crate::io::checkpoint::CheckpointInfo;
use crate::io::engine::ModelSpec;
use crate::model::flops::{self, LayerInfo, Totals};
use crate::model::Plan;
use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct InspectArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Input size, `H` or `HxW` (default: the model's).
    #[arg(long, value_parser = parse_size)]
    size: Option<(usize, usize)>,
    #[arg(long, default_value_t = 1, value_parser = batch_arg)]
    batch: usize,
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Context, a: &InspectArgs) -> Result<()> {
    // Only the architecture is needed: no weights are loaded into a model.
    let (plan, default_size, source) = match ctx.model_spec(Some(&a.model))? {
        ModelSpec::Variant { name, classes, .. } => {
            (Plan::named(&name, classes)?, (224, 224), name)
        }
        ModelSpec::Weights(path) => {
            let info = CheckpointInfo::read(&path)?;
            let size = info.preprocess.input_size;
            (
                Plan::convnext(&info.config),
                size,
                path.display().to_string(),
            )
        }
    };
    let (h, w) = a.size.unwrap_or(default_size);
    plan.check_input(h, w)?;
    let layers = flops::layers(&plan, a.batch, h, w);
    let totals = flops::totals(&layers);
    if a.json {
        let v = serde_json::json!({
            "model": plan.name,
            "source": source,
            "config": plan.convnext_config(),
            "input": [a.batch, 3, h, w],
            "layers": layers,
            "total_macs": totals.total_macs,
            "total_params": totals.total_params,
            "conv_linear_macs": totals.conv_linear_macs,
            "elementwise_ops": totals.elementwise,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let input = format!("{}×3×{h}×{w}", a.batch);
        print_table(
            &format!("{} ({source})", plan.name),
            &input,
            &layers,
            &totals,
        );
    }
    Ok(())
}

fn print_table(title: &str, input: &str, layers: &[LayerInfo], totals: &Totals) {
    println!("{title}, input {input}");
    println!(
        "{:<36} {:<15} {:>22} {:>22} {:>10} {:>10}",
        "layer", "kind", "in", "out", "params", "MACs"
    );
    for l in layers {
        let name = format!("{}{}", "  ".repeat(l.depth), l.name);
        println!(
            "{:<36} {:<15} {:>22} {:>22} {:>10} {:>10}",
            name,
            l.kind,
            format!("{:?}", l.in_shape),
            format!("{:?}", l.out_shape),
            human(l.params as f64),
            human(l.macs as f64)
        );
    }
    println!(
        "total: {} MACs ({} FLOPs = 2×MACs), {} params ({} exactly); MACs follow fvcore: conv+linear {}, LayerNorm ×5 and pooling ×1 per element; {} other elementwise ops not counted",
        human(totals.total_macs as f64),
        human(2.0 * totals.total_macs as f64),
        human(totals.total_params as f64),
        totals.total_params,
        human(totals.conv_linear_macs as f64),
        human(totals.elementwise as f64),
    );
}
