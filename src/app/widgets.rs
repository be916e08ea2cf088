//! Widgets more than one tab uses.
use super::folder_jobs::{self, TopPatches};
use super::tab::TabCtx;
use super::worker::{JobSender, Pending, WorkerCtx};
use super::{textures, Shared};
use crate::base::progress::Progress;
use crate::io::engine::ModelSpec;
use crate::model::layer_id::LayerId;
use egui::{RichText, TextureOptions, Vec2};

/// Where [`busy`] reads whether timings are running (set by the app once per frame).
fn timing_id() -> egui::Id {
    egui::Id::unique("convnext-explorer timing")
}

/// Tells [`busy`] whether a job that times something is queued or running.
pub fn set_timing(ctx: &egui::Context, timing: bool) {
    ctx.data_mut(|d| d.insert_temp(timing_id(), timing));
}

/// That the app is busy: a spinner, or while timings run the word "timing", still. A spinner
/// asks for a frame every frame; where the window is drawn on the CPU (lavapipe on a VM) those
/// frames took the cores the timings ran on: on 2 vCPUs, the memory roof measured in the app
/// spread over 8.3–21.3 GB/s beside a spinner and 14.7–21.1 without (8 measures each; the
/// command line's 16–20).
pub fn busy(ui: &mut egui::Ui) {
    let timing = ui
        .ctx()
        .data(|d| d.get_temp::<bool>(timing_id()).unwrap_or(false));
    match timing {
        true => {
            ui.label(RichText::new("timing").weak())
                .on_hover_text("The window holds still while timings run, so as not to slow them");
        }
        false => {
            ui.spinner();
        }
    }
}

/// A running job: [`busy`], "k/N: what" once it reports, and a Cancel button.
pub fn job_progress<T: 'static>(ui: &mut egui::Ui, pending: &Pending<T>) {
    busy(ui);
    if let Some((done, total, what)) = pending.progress() {
        ui.label(progress_text(done, total, &what));
    }
    if ui.button("Cancel").clicked() {
        pending.cancel();
    }
}

/// A job's progress as every progress line words it: "k/N: what", k the step under way (jobs
/// report before each step, so it is the one after those done).
pub fn progress_text(done: usize, total: usize, what: &str) -> String {
    format!("{}/{total}: {what}", (done + 1).min(total))
}

/// "Another model": the checkpoints in `weights/` that open, then a roadmap step's neighbours
/// (the step it was made from and the steps made from it) when the current model is one, then
/// a few named variants (random weights, with the current model's classes so that their
/// predictions line up).
pub fn other_models(shared: &Shared) -> Vec<ModelSpec> {
    let mut v: Vec<ModelSpec> = shared
        .weights
        .iter()
        .flatten()
        .filter(|e| e.summary.is_ok())
        .map(|e| ModelSpec::Weights(e.path.clone()))
        .collect();
    let classes = shared.model.as_ref().map_or(1000, |m| m.plan.num_classes());
    let current = shared.model.as_ref().map(|m| &m.spec);
    if let Some(ModelSpec::Variant { name, seed, .. }) = current {
        for n in roadmap_neighbours(name) {
            v.push(ModelSpec::Variant {
                name: n,
                classes,
                seed: *seed,
            });
        }
    }
    for name in [
        "convnext_atto",
        "convnextv2_atto",
        "convnext_tiny",
        "convnextv2_tiny",
    ] {
        v.push(ModelSpec::Variant {
            name: name.into(),
            classes,
            seed: 0,
        });
    }
    v
}

/// A list to pick another model from, after `label` (its accessible name); `chosen` indexes
/// [`other_models`]. Returns the model chosen, if there is any.
pub fn pick_other_model(
    ui: &mut egui::Ui,
    label: &str,
    shared: &Shared,
    chosen: &mut usize,
) -> Option<ModelSpec> {
    let choices = other_models(shared);
    *chosen = (*chosen).min(choices.len().saturating_sub(1));
    let lbl = ui.label(label);
    egui::ComboBox::from_id_salt(label)
        .selected_text(
            choices
                .get(*chosen)
                .map(|c| c.to_string())
                .unwrap_or_default(),
        )
        .show_ui(ui, |ui| {
            for (i, c) in choices.iter().enumerate() {
                ui.selectable_value(chosen, i, c.to_string());
            }
        })
        .response
        .labelled_by(lbl.id);
    choices.get(*chosen).cloned()
}

/// The roadmap steps next to `name` (`roadmap:<step>`): its parent and its children.
fn roadmap_neighbours(name: &str) -> Vec<String> {
    use crate::model::roadmap::{parent, STEPS};
    let Some(i) = name
        .strip_prefix("roadmap:")
        .and_then(|s| STEPS.iter().position(|st| st.name == s))
    else {
        return Vec::new();
    };
    let children = (0..STEPS.len()).filter(|&j| parent(j) == Some(i));
    parent(i)
        .into_iter()
        .chain(children)
        .map(|j| format!("roadmap:{}", STEPS[j].name))
        .collect()
}

/// The images a measurement over many runs on: the folder the Folder tab ran, else the last
/// folder opened, else the samples.
pub fn image_set(shared: &Shared) -> std::path::PathBuf {
    shared
        .folder_run
        .as_ref()
        .map(|f| f.root.clone())
        .or_else(|| shared.settings.last_folder.clone())
        .unwrap_or_else(|| crate::io::engine::project_dir("assets/samples"))
}

/// A folder run's top images of one channel, asked of the worker when the channel (or the
/// folder run) changes: the strip under a channel shown large (Feature maps, Channel).
#[derive(Default)]
pub struct TopImages {
    /// `(layer, channel, folder run)` last asked for; `patches` are its answer once it comes.
    asked: Option<(LayerId, usize, u64)>,
    pending: Option<Pending<TopPatches>>,
    patches: Option<TopPatches>,
}

impl TopImages {
    /// Takes in the worker's answer (from the owning tab's `poll`).
    pub fn poll(&mut self, ctx: &mut TabCtx) {
        if let Some(p) = ctx.take(&mut self.pending) {
            ctx.shared.textures.clear();
            self.patches = Some(p);
        }
    }

    /// The top images on show, once they have come.
    pub fn patches(&self) -> Option<&TopPatches> {
        self.patches.as_ref()
    }

    /// The strip: the channel's top images in the folder run, if there is one that kept the
    /// layer.
    pub fn ui(
        &mut self,
        ui: &mut egui::Ui,
        shared: &mut Shared,
        jobs: &JobSender,
        (layer, channel): (LayerId, usize),
    ) {
        let Some(run) = &shared.folder_run else {
            return;
        };
        if !run.top_layers.contains(&layer) {
            return;
        }
        ui.label(
            RichText::new(format!(
                "Top images of channel {channel} in {}",
                crate::base::text::file_label(&run.root)
            ))
            .strong(),
        );
        let key = (layer, channel, run.serial);
        if self.asked != Some(key) {
            if !shared.busy() {
                self.asked = Some(key);
                self.patches = None;
                let job = move |w: &mut WorkerCtx, _: &mut dyn Progress| {
                    folder_jobs::patches_job(w, layer, channel)
                };
                self.pending = Some(jobs.submit(folder_jobs::JOB, job));
            }
            busy(ui);
            return;
        }
        let Some(p) = &self.patches else {
            if self.pending.is_some() {
                busy(ui);
            }
            return;
        };
        ui.horizontal_wrapped(|ui| {
            for (i, (patch, score, path)) in p.patches.iter().enumerate() {
                let t = shared.textures.get(
                    ui.ctx(),
                    &format!("patch:{i}"),
                    TextureOptions::NEAREST,
                    || textures::rgb(patch),
                );
                ui.add(egui::Image::new((t.id(), Vec2::splat(48.0))))
                    .on_hover_text(format!("{}\nmax {score:.3}", path.display()));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use egui_kittest::kittest::Queryable;

    /// A spinner keeps asking for frames (the harness never settles); the timing mark does not.
    #[test]
    fn busy_holds_still_while_timings_run() {
        for timing in [false, true] {
            let mut h = egui_kittest::Harness::new_ui(move |ui| {
                set_timing(ui.ctx(), timing);
                busy(ui);
            });
            assert_eq!(h.try_run().is_ok(), timing, "timing {timing}");
            assert_eq!(h.query_by_label("timing").is_some(), timing);
        }
    }
}
