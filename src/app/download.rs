//! The Download window: a Hugging Face repo into `weights/`, run by the worker with progress
//! and cancel; a finished download loads itself and shows up in the weights list.
use super::worker::JobKind;
use super::{Request, Shared};
use crate::io::engine::weights_dir;
use crate::io::hub::COMMON_REPOS;

#[derive(Default)]
pub struct DownloadWindow {
    pub open: bool,
    repo: String,
}

impl DownloadWindow {
    pub fn ui(&mut self, ctx: &egui::Context, shared: &mut Shared) {
        let mut open = self.open;
        egui::Window::new("Download from Hugging Face")
            .open(&mut open)
            .resizable(false)
            .show(ctx, |ui| self.contents(ui, shared));
        self.open = open;
    }

    fn contents(&mut self, ui: &mut egui::Ui, shared: &mut Shared) {
        ui.label(format!(
            "Files go to {} (config.json, weights, preprocessor config).",
            weights_dir().display()
        ));
        let job = shared
            .status
            .job
            .clone()
            .filter(|j| j.kind == JobKind::Download);
        let running = job.is_some();
        ui.add_enabled_ui(!running, |ui| {
            for r in COMMON_REPOS {
                if ui.selectable_label(self.repo == *r, *r).clicked() {
                    self.repo = r.to_string();
                }
            }
            ui.horizontal(|ui| {
                ui.label("Repo id");
                ui.text_edit_singleline(&mut self.repo);
            });
        });
        ui.horizontal(|ui| {
            if running {
                if ui.button("Cancel").clicked() {
                    shared.request(Request::CancelJob);
                }
            } else if ui
                .add_enabled(!self.repo.trim().is_empty(), egui::Button::new("Download"))
                .clicked()
            {
                shared.request(Request::Download(self.repo.trim().to_string()));
            }
        });
        if let Some(j) = job {
            let frac = if j.total > 0 {
                j.done as f32 / j.total as f32
            } else {
                0.0
            };
            ui.label(&j.what);
            ui.add(egui::ProgressBar::new(frac).show_percentage().text(format!(
                "{:.1} / {:.1} MB",
                j.done as f64 / 1e6,
                j.total as f64 / 1e6
            )));
        }
    }
}
