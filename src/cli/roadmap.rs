//! `roadmap`: the paper's 16 steps from ResNet-50 to ConvNeXt-T, counted (and timed) here.
use super::{parse_size, Context};
use crate::analysis::profile::time_roadmap;
use crate::model::flops;
use crate::model::roadmap::STEPS;
use crate::model::Plan;
use anyhow::Result;
use clap::Args;
use serde::Serialize;

#[derive(Args, Debug)]
pub struct RoadmapArgs {
    /// Input size, `H` or `HxW` (default 224).
    #[arg(long, value_parser = parse_size)]
    size: Option<(usize, usize)>,
    /// Also time each step's forward (median of --iters runs after one warm-up).
    #[arg(long)]
    time: bool,
    #[arg(long, default_value_t = 5)]
    iters: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Entry {
    name: &'static str,
    title: &'static str,
    change: &'static str,
    total_macs: u64,
    conv_linear_macs: u64,
    total_params: usize,
    paper_top1: f64,
    paper_gflops: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    median_ms: Option<f64>,
}

pub fn run(ctx: &Context, a: &RoadmapArgs) -> Result<()> {
    let (h, w) = a.size.unwrap_or((224, 224));
    let times = match a.time {
        true => Some(time_roadmap(
            &ctx.device,
            (h, w),
            a.iters,
            &mut StderrProgress,
        )?),
        false => None,
    };
    let mut entries = Vec::with_capacity(STEPS.len());
    for (i, step) in STEPS.iter().enumerate() {
        let plan = Plan::named(&format!("roadmap:{}", step.name), 1000)?;
        plan.check_input(h, w)?;
        let t = flops::totals(&flops::layers(&plan, 1, h, w));
        let median_ms = times.as_ref().map(|t| t[i]);
        entries.push(Entry {
            name: step.name,
            title: step.title,
            change: step.change,
            total_macs: t.total_macs,
            conv_linear_macs: t.conv_linear_macs,
            total_params: t.total_params,
            paper_top1: step.paper_top1,
            paper_gflops: step.paper_gflops,
            median_ms,
        });
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
    } else {
        print_table(&entries, (h, w));
    }
    Ok(())
}

/// Prints `[k/16] timing <step> …` on stderr as each step starts.
struct StderrProgress;

impl crate::base::progress::Progress for StderrProgress {
    fn update(&mut self, done: usize, total: usize, what: &str) {
        if done < total {
            eprintln!("[{}/{total}] timing {what} …", done + 1);
        }
    }
}

fn print_table(entries: &[Entry], (h, w): (usize, usize)) {
    println!(
        "The modernization roadmap at {h}×{w} (GMACs: ours fvcore / conv+linear / the paper's)"
    );
    println!(
        "{:>2} {:<22} {:>8} {:>8} {:>6} {:>8} {:>7} {:>9}  change",
        "#", "step", "fvcore", "conv+lin", "paper", "params", "top-1", "ms"
    );
    for (i, e) in entries.iter().enumerate() {
        let ms = e.median_ms.map(|m| format!("{m:.1}")).unwrap_or_default();
        println!(
            "{i:>2} {:<22} {:>8.3} {:>8.3} {:>6.2} {:>7.2}M {:>7.2} {:>9}  {}",
            e.name,
            e.total_macs as f64 / 1e9,
            e.conv_linear_macs as f64 / 1e9,
            e.paper_gflops,
            e.total_params as f64 / 1e6,
            e.paper_top1,
            ms,
            e.change
        );
    }
}
