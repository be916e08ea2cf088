//! Roadmap: the paper's 16 steps from ResNet-50 to ConvNeXt-T as a table and charts (the
//! paper's top-1, MACs, parameters, and latency measured here on demand), what each step
//! changed from the one it was made from, and a click to load any step as the model.
use super::plots::stage_colour;
use super::tab::{Tab, TabCtx};
use super::widgets::job_progress;
use super::worker::{Pending, WorkerCtx};
use super::{Request, Shared};
use crate::analysis::attribution::ErfSummary;
use crate::base::progress::Progress;
use crate::base::text::human;
use crate::io::engine::{Engine, ModelSpec};
use crate::model::flops::{layers, totals, Totals};
use crate::model::layer_id::LayerId;
use crate::model::roadmap::{diff, parent, PlanDiff, STEPS};
use crate::model::Plan;
use egui::{Color32, RichText};
use egui_extras::{Column, TableBuilder};
use egui_plot::{Bar, BarChart, Legend, Line, Plot, PlotPoints};

/// Counts are made at this size (the paper's).
const SIZE: (usize, usize) = (224, 224);

/// The roadmap's jobs: random weights of the project's own plans, so no model change resets
/// their results.
const JOB: &str = "The roadmap job";

/// `(step name, ERF of the last stage)` for steps 6–10.
type KernelErfs = Vec<(String, ErfSummary)>;

#[derive(Default)]
pub struct RoadmapTab {
    /// Median ms of each step on the chosen device, once measured.
    times: Option<Vec<f64>>,
    timing: Option<Pending<Vec<f64>>>,
    /// The last stage's ERF of steps 6–10, once computed.
    erfs: Option<KernelErfs>,
    erfs_pending: Option<Pending<KernelErfs>>,
    /// Each step's plan and counts at 224×224, made on first view.
    steps: Vec<(Plan, Totals)>,
    /// The step whose changes are shown.
    selected: usize,
    /// The selected step's changes from its parent, made when the selection changes.
    diff: Option<(usize, PlanDiff)>,
}

fn step_name(i: usize) -> String {
    format!("roadmap:{}", STEPS[i].name)
}

impl Tab for RoadmapTab {
    fn name(&self) -> &'static str {
        "Roadmap"
    }

    fn poll(&mut self, ctx: &mut TabCtx) {
        if let Some(t) = ctx.take(&mut self.timing) {
            self.times = Some(t);
        }
        if let Some(e) = ctx.take(&mut self.erfs_pending) {
            ctx.shared.textures.clear();
            self.erfs = Some(e);
        }
    }

    fn ui(&mut self, ui: &mut egui::Ui, ctx: &mut TabCtx) {
        self.show(ui, ctx);
    }
}

impl RoadmapTab {
    /// Median ms of each step, once measured.
    pub fn times(&self) -> Option<&[f64]> {
        self.times.as_deref()
    }

    /// The last stage's ERF of steps 6–10, once computed.
    pub fn kernel_erfs(&self) -> Option<&KernelErfs> {
        self.erfs.as_ref()
    }

    /// Times every step on the chosen device.
    pub fn time_steps(&mut self, ctx: &mut TabCtx) {
        let device = ctx.shared.settings.device.clone();
        let job = move |_: &mut WorkerCtx, p: &mut dyn Progress| {
            let dev = crate::base::device::parse_device(&device)?;
            Ok(crate::analysis::profile::time_roadmap(&dev, SIZE, 3, p)?)
        };
        self.timing = Some(ctx.jobs.submit_timing(JOB, job));
    }

    /// Computes the last stage's ERF of steps 6–10.
    pub fn compute_kernel_erfs(&mut self, ctx: &mut TabCtx) {
        self.erfs_pending = Some(ctx.jobs.submit(JOB, kernel_erfs_job));
    }

    fn ensure_counts(&mut self) {
        if !self.steps.is_empty() {
            return;
        }
        for i in 0..STEPS.len() {
            // The steps are the project's own plans: they always build.
            if let Ok(plan) = Plan::named(&step_name(i), 1000) {
                let t = totals(&layers(&plan, 1, SIZE.0, SIZE.1));
                self.steps.push((plan, t));
            }
        }
    }

    fn show(&mut self, ui: &mut egui::Ui, ctx: &mut TabCtx) {
        self.ensure_counts();
        if self.steps.len() != STEPS.len() {
            ui.label("The roadmap's plans could not be built.");
            return;
        }
        ui.label(
            "The paper's modernization roadmap (Liu et al. 2022, Sec. 2): sixteen networks from \
             torchvision's ResNet-50 to ConvNeXt-T. Counts are at 224×224; top-1 is the paper's \
             ImageNet-1k result. Load a step to look inside it (random weights).",
        );
        self.controls(ui, ctx);
        let h = 170.0;
        ui.horizontal(|ui| {
            let w = ui.available_width() / 2.0 - 8.0;
            ui.vertical(|ui| self.accuracy_chart(ui, (w, h)));
            ui.vertical(|ui| self.cost_chart(ui, (w, h)));
        });
        ui.separator();
        // All sixteen rows, with no box of its own: the tab scrolls.
        ui.push_id("roadmap_table", |ui| self.table(ui, ctx.shared));
        ui.separator();
        egui::CollapsingHeader::new("Receptive fields of kernels 3×3 to 11×11 (steps 6–10)")
            .default_open(self.erfs.is_some())
            .show(ui, |ui| self.kernel_erfs_ui(ui, ctx));
        self.changes(ui);
    }

    fn accuracy_chart(&self, ui: &mut egui::Ui, (w, h): (f32, f32)) {
        ui.label("The paper's ImageNet-1k top-1 (%)");
        let points: PlotPoints = STEPS
            .iter()
            .enumerate()
            .map(|(i, s)| [i as f64, s.paper_top1])
            .collect();
        Plot::new("roadmap_top1")
            .width(w)
            .height(h)
            .allow_scroll(false)
            .x_axis_label("step")
            .show(ui, |p| p.line(Line::new("top-1", points)));
    }

    fn cost_chart(&self, ui: &mut egui::Ui, (w, h): (f32, f32)) {
        ui.label(
            "GMACs (conv + linear, ours and the paper's), params (M) and latency here (×10 ms)",
        );
        let mut ours = Vec::new();
        let mut paper = Vec::new();
        let mut params = Vec::new();
        let mut latency = Vec::new();
        for (i, (_, t)) in self.steps.iter().enumerate() {
            let x = i as f64;
            ours.push(Bar::new(x - 0.3, t.conv_linear_macs as f64 / 1e9).width(0.2));
            paper.push(Bar::new(x - 0.1, STEPS[i].paper_gflops).width(0.2));
            params.push(Bar::new(x + 0.1, t.total_params as f64 / 1e7).width(0.2));
            if let Some(ms) = self.times.as_ref().and_then(|v| v.get(i)) {
                latency.push(Bar::new(x + 0.3, ms / 10.0).width(0.2));
            }
        }
        let top = [&ours, &paper, &params, &latency]
            .iter()
            .flat_map(|v| v.iter().map(|b| b.value))
            .fold(0.0, f64::max);
        Plot::new("roadmap_cost")
            .width(w)
            .height(h)
            .allow_scroll(false)
            // Headroom above the bars for the legend, so that it covers no step.
            .include_y(top * 2.2)
            .legend(Legend::default().position(egui_plot::Corner::LeftTop))
            .x_axis_label("step")
            .show(ui, |p| {
                p.bar_chart(BarChart::new("GMACs (ours)", ours).color(stage_colour(Some(0))));
                p.bar_chart(BarChart::new("GMACs (paper)", paper).color(stage_colour(Some(1))));
                p.bar_chart(BarChart::new("params (10 M)", params).color(stage_colour(Some(2))));
                p.bar_chart(BarChart::new("latency (10 ms)", latency).color(stage_colour(Some(3))));
            });
    }

    fn table(&mut self, ui: &mut egui::Ui, shared: &mut Shared) {
        let current = shared.model.as_ref().map(|m| m.plan.name.clone());
        let times = self.times.clone();
        let mut load = None;
        TableBuilder::new(ui)
            .striped(true)
            .vscroll(false)
            .column(Column::initial(30.0))
            .column(Column::initial(240.0))
            .columns(Column::initial(70.0), 6)
            .column(Column::remainder())
            .header(20.0, |mut h| {
                for t in [
                    "#", "step", "GMACs", "conv+lin", "paper", "params", "top-1", "ms", "change",
                ] {
                    h.col(|ui| {
                        ui.strong(t);
                    });
                }
            })
            .body(|body| {
                body.rows(20.0, STEPS.len(), |mut row| {
                    let i = row.index();
                    let (plan, t) = &self.steps[i];
                    let step = &STEPS[i];
                    row.col(|ui| {
                        ui.label(i.to_string());
                    });
                    row.col(|ui| {
                        ui.horizontal(|ui| {
                            let loaded = current.as_deref() == Some(plan.name.as_str());
                            let load_text = if loaded { "loaded" } else { "load" };
                            let hint = "Load this step as the model (random weights)";
                            if ui.small_button(load_text).on_hover_text(hint).clicked() {
                                load = Some(i);
                            }
                            let r = ui.selectable_label(self.selected == i, step.name);
                            if r.on_hover_text("Show what this step changed").clicked() {
                                self.selected = i;
                            }
                        });
                    });
                    let cells = [
                        format!("{:.2}", t.total_macs as f64 / 1e9),
                        format!("{:.2}", t.conv_linear_macs as f64 / 1e9),
                        format!("{:.2}", step.paper_gflops),
                        human(t.total_params as f64),
                        format!("{:.2}", step.paper_top1),
                        times
                            .as_ref()
                            .and_then(|v| v.get(i))
                            .map(|m| format!("{m:.1}"))
                            .unwrap_or_default(),
                    ];
                    for c in cells {
                        row.col(|ui| {
                            ui.label(c);
                        });
                    }
                    row.col(|ui| {
                        ui.add(egui::Label::new(step.change).truncate())
                            .on_hover_text(step.change);
                    });
                });
            });
        if let Some(i) = load {
            self.selected = i;
            shared.request(Request::Load(ModelSpec::Variant {
                name: step_name(i),
                classes: 1000,
                seed: 0,
            }));
        }
    }

    fn changes(&mut self, ui: &mut egui::Ui) {
        let i = self.selected;
        let Some(p) = parent(i) else {
            ui.label("Step 0 is where the roadmap starts: torchvision's ResNet-50.");
            return;
        };
        if self.diff.as_ref().map(|(s, _)| *s) != Some(i) {
            self.diff = Some((i, diff(&self.steps[p].0, &self.steps[i].0, SIZE)));
        }
        let Some((_, d)) = &self.diff else { return };
        ui.label(
            RichText::new(format!(
                "Step {i} ({}) from step {p} ({}): {} layers added, {} removed, {} changed · {} MACs · {} params",
                STEPS[i].name,
                STEPS[p].name,
                d.added.len(),
                d.removed.len(),
                d.changed.len(),
                signed(d.delta_macs),
                signed(d.delta_params)
            ))
            .strong(),
        );
        egui::ScrollArea::vertical()
            .max_height(ui.available_height())
            .show(ui, |ui| {
                let line = |ui: &mut egui::Ui, colour: Color32, text: String| {
                    ui.label(RichText::new(text).monospace().color(colour));
                };
                for n in d.added.iter().take(200) {
                    line(ui, Color32::from_rgb(90, 190, 90), format!("+ {n}"));
                }
                for n in d.removed.iter().take(200) {
                    line(ui, Color32::from_rgb(220, 90, 90), format!("- {n}"));
                }
                for (n, a, b) in d.changed.iter().take(200) {
                    line(
                        ui,
                        Color32::from_rgb(220, 180, 60),
                        format!("~ {n}: {a}  =>  {b}"),
                    );
                }
            });
    }
}

fn signed(v: i64) -> String {
    let sign = if v < 0 { "-" } else { "+" };
    format!("{sign}{}", human(v.unsigned_abs() as f64))
}

impl RoadmapTab {
    fn controls(&mut self, ui: &mut egui::Ui, ctx: &mut TabCtx) {
        ui.horizontal(|ui| {
            let busy = ctx.shared.busy();
            if ui
                .add_enabled(!busy, egui::Button::new("Measure latency here"))
                .on_hover_text(
                    "Time every step's forward (batch 1, 224×224, median of 3) on the chosen device",
                )
                .clicked()
            {
                self.time_steps(ctx);
            }
            if let Some(p) = &self.timing {
                job_progress(ui, p);
            } else if let Some(t) = &self.times {
                let dev = &ctx.shared.settings.device;
                ui.label(format!(
                    "measured on {dev}: ResNet-50 {:.0} ms, ConvNeXt-T {:.0} ms",
                    t[0], t[15]
                ));
            }
        });
    }

    /// The last stage's ERF of steps 6–10 (random weights, the current image or a sample, at
    /// [`ERF_SIZE`]): the paper's large-kernel question, seen.
    fn kernel_erfs_ui(&mut self, ui: &mut egui::Ui, ctx: &mut TabCtx) {
        ui.horizontal(|ui| {
            if ui
                .add_enabled(!ctx.shared.busy(), egui::Button::new("Compute"))
                .on_hover_text(format!(
                    "Random weights, the current image (or a sample) at {ERF_SIZE}×{ERF_SIZE}: under a minute on one core"
                ))
                .clicked()
            {
                self.compute_kernel_erfs(ctx);
            }
            if let Some(p) = &self.erfs_pending {
                job_progress(ui, p);
            }
        });
        let Some(maps) = &self.erfs else {
            ui.label(format!("How far the last stage sees as the depthwise kernel grows from 3×3 to 11×11 (random weights, a {ERF_SIZE}×{ERF_SIZE} input, large as RepLKNet measures, so that the field is not cut off by the image's border)."));
            return;
        };
        let rows: Vec<(String, &ErfSummary)> = maps
            .iter()
            .zip([3, 5, 7, 9, 11])
            .map(|((name, s), k)| (format!("{k}×{k} ({name})"), s))
            .collect();
        super::erf::erf_row(ui, ctx.shared, "roadmap_erf", &rows);
        super::erf::erf_note(ui);
        super::erf::ratio_table(ui, "roadmap_erf_ratios", &rows);
    }
}

/// The input side the kernels' ERFs are measured at. At 224 px the last stage (7×7) sees the
/// whole image whatever the kernel, and the five pictures look alike; on a larger input
/// (RepLKNet measures at 1024 px) the field's growth with the kernel shows. 512 px shows it
/// too (a test holds it) at a quarter of the cost: about 10 s a kernel on one core.
pub const ERF_SIZE: usize = 512;

/// Steps 6–10 of the roadmap differ only in their depthwise kernel (3, 5, 7, 9, 11): the last
/// stage's ERF of each, random weights, on the current image or a sample at [`ERF_SIZE`].
fn kernel_erfs_job(w: &mut WorkerCtx, progress: &mut dyn Progress) -> anyhow::Result<KernelErfs> {
    use crate::io::preprocess;
    let img = match w.image() {
        Some((_, img)) => img.clone(),
        None => preprocess::load_image(
            &crate::io::engine::project_dir("assets/samples").join("chelsea.png"),
        )?,
    };
    let mut out = Vec::new();
    for (i, step) in STEPS[6..=10].iter().enumerate() {
        progress.check("the roadmap's receptive fields")?;
        progress.update(i, 5, step.name);
        let name = format!("roadmap:{}", step.name);
        let cpu = candle_core::Device::Cpu;
        let engine = Engine::random(&name, 1000, 0, &cpu, candle_core::DType::F32)?;
        let mut pre = engine.preprocess.clone();
        pre.input_size = (ERF_SIZE, ERF_SIZE);
        pre.crop_pct = 1.0;
        let x = preprocess::prepare(&img, &pre, &engine.device)?.tensor;
        let last = LayerId::Stage(engine.plan.stages.len() - 1);
        let mut acc = crate::analysis::attribution::ErfAccumulator::new(vec![last]);
        acc.add(&engine, &x)?;
        out.push((step.name.to_string(), acc.finish()?.remove(0)));
    }
    Ok(out)
}
