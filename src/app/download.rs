//! The Download window: a Hugging Face repo into `weights/` (or the user's data folder), run
//! by the worker with progress (bytes, total, rate) and cancel; a finished download loads
//! itself and shows up in the weights list. What is verified is said in the window.
use super::worker::JobKind;
use super::{Request, Shared};
use crate::io::engine::download_dir;
use crate::io::hub::COMMON_REPOS;
use std::time::Instant;

#[derive(Default)]
pub struct DownloadWindow {
    pub open: bool,
    repo: String,
    /// The file being fetched, when its first bytes were seen and how many there were then.
    rate_from: Option<(String, Instant, usize)>,
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
        let dest = download_dir().map_or("nowhere (no ./weights, no HOME)".into(), |d| {
            d.display().to_string()
        });
        ui.label(format!(
            "Files go to {dest} (config.json, weights, preprocessor config). Each is checked \
             against the size and hash the hub states and the model must load before it \
             replaces anything."
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
            let rate = self.rate(&j.what, j.done);
            ui.label(&j.what);
            ui.add(egui::ProgressBar::new(frac).show_percentage().text(format!(
                "{:.1} / {:.1} MB{rate}",
                j.done as f64 / 1e6,
                j.total as f64 / 1e6
            )));
        } else {
            self.rate_from = None;
        }
    }
}

impl DownloadWindow {
    /// `, 3.2 MB/s` once a file has been coming for a moment.
    fn rate(&mut self, file: &str, done: usize) -> String {
        let fresh = !matches!(&self.rate_from, Some((f, _, d)) if f == file && *d <= done);
        if fresh {
            self.rate_from = Some((file.to_string(), Instant::now(), done));
        }
        let Some((_, t0, d0)) = &self.rate_from else {
            return String::new();
        };
        let secs = t0.elapsed().as_secs_f64();
        if secs < 0.5 {
            return String::new();
        }
        format!(", {:.1} MB/s", (done - d0) as f64 / secs / 1e6)
    }
}
