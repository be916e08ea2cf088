//! The per-layer profile: the analytic layer list joined with measured times, as the app's
//! table shows it and as CSV/JSON for export.
use crate::analysis::stats::median_duration;
use crate::analysis::trace::TimingObserver;
use crate::base::progress::Progress;
use crate::base::text::shape_text;
use crate::io::engine::Engine;
use crate::model::flops::LayerInfo;
use crate::model::layer_id::LayerId;
use crate::model::observer::NoObserver;
use candle_core::Tensor;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Serialize)]
pub struct ProfileRow {
    pub name: String,
    pub kind: String,
    pub depth: usize,
    pub container: bool,
    pub stage: Option<usize>,
    pub in_shape: Vec<usize>,
    pub out_shape: Vec<usize>,
    pub params: usize,
    pub macs: u64,
    /// Operations fvcore's MACs leave out (GELU, layer scale, adds, GRN, max-pooling).
    pub elementwise: u64,
    /// Elements read and written at least (the roofline's bytes, per element of the dtype).
    pub traffic: u64,
    /// Median wall time in milliseconds (absent when the layer was not timed).
    pub ms: Option<f64>,
    /// Share of the whole forward's time, in percent (leaves sum to about 100).
    pub percent: Option<f64>,
    /// Achieved GFLOP/s (2 × MACs per second).
    pub gflops: Option<f64>,
    /// Achieved rate ÷ the roofline's limit at the layer's intensity, in percent (when the
    /// machine's limits are known: `roofline::annotate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent_of_limit: Option<f64>,
}

/// Joins the layer list with per-layer times; `total` is the forward's time the percentages
/// are shares of.
pub fn rows(
    layers: &[LayerInfo],
    times: &[(LayerId, Duration)],
    total: Duration,
) -> Vec<ProfileRow> {
    let by_id: HashMap<LayerId, Duration> = times.iter().copied().collect();
    let total_ms = total.as_secs_f64() * 1e3;
    layers
        .iter()
        .map(|l| {
            let ms = by_id.get(&l.id).map(|d| d.as_secs_f64() * 1e3);
            ProfileRow {
                name: l.name.clone(),
                kind: l.kind.clone(),
                depth: l.depth,
                container: l.container,
                stage: l.id.stage(),
                in_shape: l.in_shape.clone(),
                out_shape: l.out_shape.clone(),
                params: l.params,
                macs: l.macs,
                elementwise: l.elementwise,
                traffic: l.traffic,
                ms,
                percent: ms.filter(|_| total_ms > 0.0).map(|m| 100.0 * m / total_ms),
                gflops: ms
                    .filter(|&m| m > 0.0 && l.macs > 0)
                    .map(|m| 2.0 * l.macs as f64 / (m * 1e-3) / 1e9),
                percent_of_limit: None,
            }
        })
        .collect()
}

/// What [`time_layers`] measured.
pub struct LayerTimes {
    /// Median time per layer (containers included), in forward order.
    pub times: Vec<(LayerId, Duration)>,
    /// Median time of a whole forward with the timing observer on.
    pub total: Duration,
    /// Median of plain forwards (no observer), interleaved with the observed ones, when asked.
    pub plain: Option<Duration>,
}

/// Whether [`time_layers`] also times plain forwards, interleaved with the observed ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlainBaseline {
    Interleaved,
    Skip,
}

/// Times `runs` (at least one) forwards of `x` layer by layer, reporting each run to
/// `progress` (which may cancel between runs). With [`PlainBaseline::Interleaved`] a plain
/// forward precedes each observed one, so that what the observer costs shows as the gap.
pub fn time_layers(
    engine: &Engine,
    x: &Tensor,
    runs: usize,
    baseline: PlainBaseline,
    progress: &mut dyn Progress,
) -> crate::Result<LayerTimes> {
    let runs = runs.max(1);
    let mut per_layer: Vec<Vec<(LayerId, Duration)>> = Vec::with_capacity(runs);
    let (mut totals, mut plains) = (Vec::with_capacity(runs), Vec::new());
    for run in 0..runs {
        progress.check("profiling")?;
        progress.update(run, runs, "profile run");
        if baseline == PlainBaseline::Interleaved {
            let t = Instant::now();
            engine.forward_observed(x, &mut NoObserver)?;
            engine.device.synchronize()?;
            plains.push(t.elapsed());
        }
        let mut obs = TimingObserver::new(&engine.device);
        let t = Instant::now();
        engine.forward_observed(x, &mut obs)?;
        engine.device.synchronize()?;
        totals.push(t.elapsed());
        per_layer.push(obs.times);
    }
    progress.update(runs, runs, "profile run");
    let times = (0..per_layer[0].len())
        .map(|i| {
            let id = per_layer[0][i].0;
            let runs: Vec<Duration> = per_layer.iter().map(|r| r[i].1).collect();
            (id, median_duration(&runs))
        })
        .collect();
    Ok(LayerTimes {
        times,
        total: median_duration(&totals),
        plain: (baseline == PlainBaseline::Interleaved).then(|| median_duration(&plains)),
    })
}

/// Median forward time (ms) of each roadmap step with random weights, batch 1, on `device`:
/// one warm-up, then `iters` runs; `progress` hears of each step and may cancel between them.
pub fn time_roadmap(
    device: &candle_core::Device,
    (h, w): (usize, usize),
    iters: usize,
    progress: &mut dyn Progress,
) -> crate::Result<Vec<f64>> {
    use crate::model::roadmap::STEPS;
    let mut out = Vec::with_capacity(STEPS.len());
    for (i, step) in STEPS.iter().enumerate() {
        progress.check("timing the roadmap")?;
        progress.update(i, STEPS.len(), step.name);
        let name = format!("roadmap:{}", step.name);
        let engine = Engine::random(&name, 1000, 0, device, candle_core::DType::F32)?;
        let x = Tensor::randn(0f32, 1.0, (1, 3, h, w), device)?;
        engine.forward(&x)?;
        let mut times = Vec::with_capacity(iters.max(1));
        for _ in 0..iters.max(1) {
            let t = Instant::now();
            engine.forward(&x)?;
            device.synchronize()?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        out.push(crate::analysis::stats::median(&times));
    }
    progress.update(STEPS.len(), STEPS.len(), "done");
    Ok(out)
}

/// Time and MACs per stage (the stem and head as their own groups), from leaf rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupTotal {
    pub name: String,
    pub ms: f64,
    pub macs: u64,
    pub params: usize,
}

pub fn group_totals(rows: &[ProfileRow]) -> Vec<GroupTotal> {
    let mut out: Vec<GroupTotal> = Vec::new();
    for r in rows.iter().filter(|r| !r.container) {
        let name = match r.stage {
            Some(s) => format!("stage {s}"),
            None if r.name.starts_with("stem") => "stem".to_string(),
            None => "head".to_string(),
        };
        let g = match out.last_mut() {
            Some(g) if g.name == name => g,
            _ => {
                out.push(GroupTotal {
                    name,
                    ms: 0.0,
                    macs: 0,
                    params: 0,
                });
                let last = out.len() - 1;
                &mut out[last]
            }
        };
        g.ms += r.ms.unwrap_or(0.0);
        g.macs += r.macs;
        g.params += r.params;
    }
    out
}

/// CSV with a header row; shapes as `1x96x56x56`, empty cells for untimed layers.
pub fn to_csv(rows: &[ProfileRow]) -> String {
    let mut s = String::from(
        "name,kind,container,in_shape,out_shape,params,macs,ms,percent,gflops,percent_of_limit\n",
    );
    let opt = |v: Option<f64>| v.map(|v| format!("{v:.6}")).unwrap_or_default();
    for r in rows {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{}",
            r.name,
            r.kind,
            r.container,
            shape_text(&r.in_shape, 'x'),
            shape_text(&r.out_shape, 'x'),
            r.params,
            r.macs,
            opt(r.ms),
            opt(r.percent),
            opt(r.gflops),
            opt(r.percent_of_limit)
        );
    }
    s
}

pub fn to_json(rows: &[ProfileRow]) -> String {
    serde_json::to_string_pretty(rows).unwrap_or_else(|_| "[]".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::flops::layers;
    use crate::model::Plan;

    #[test]
    fn rows_join_times_and_stage_totals_add_up() {
        let plan = Plan::named("convnext_atto", 10).unwrap();
        let ls = layers(&plan, 1, 64, 64);
        let leaves: Vec<(LayerId, Duration)> = ls
            .iter()
            .filter(|l| !l.container)
            .map(|l| (l.id, Duration::from_micros(100)))
            .collect();
        let total = Duration::from_micros(100 * leaves.len() as u64);
        let r = rows(&ls, &leaves, total);
        let pct: f64 = r
            .iter()
            .filter(|r| !r.container)
            .filter_map(|r| r.percent)
            .sum();
        assert!((pct - 100.0).abs() < 1e-9, "{pct}");
        assert!(r.iter().filter(|r| r.container).all(|r| r.ms.is_none()));
        let g = group_totals(&r);
        let names: Vec<&str> = g.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(
            names,
            ["stem", "stage 0", "stage 1", "stage 2", "stage 3", "head"]
        );
        let macs: u64 = g.iter().map(|g| g.macs).sum();
        assert_eq!(macs, crate::model::flops::totals(&ls).total_macs);
        let fc1 = r
            .iter()
            .find(|r| r.name == "stages.0.blocks.0.mlp.fc1")
            .unwrap();
        // 2 × MACs in 0.1 ms.
        assert!((fc1.gflops.unwrap() - 2.0 * fc1.macs as f64 / 1e-4 / 1e9).abs() < 1e-6);
        let csv = to_csv(&r);
        assert_eq!(csv.lines().count(), r.len() + 1);
        assert!(csv.lines().nth(1).unwrap().starts_with("stem,"));
    }
}
