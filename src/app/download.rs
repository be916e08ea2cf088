//! Download a checkpoint from the Hugging Face hub into `weights/`, with progress and cancel,
//! on its own thread.
use super::worker::ModelSpec;
use super::ExplorerApp;
use crate::engine::weights_dir;
use crate::hub::{download_with_progress, COMMON_REPOS};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct Progress {
    pub repo: String,
    pub file: String,
    pub done: usize,
    pub total: usize,
    pub result: Option<Result<PathBuf, String>>,
}

#[derive(Default)]
pub struct DownloadPanel {
    pub open: bool,
    pub repo: String,
    pub progress: Option<Arc<Mutex<Progress>>>,
    cancel: Arc<AtomicBool>,
}

impl DownloadPanel {
    pub fn running(&self) -> bool {
        self.progress
            .as_ref()
            .is_some_and(|p| p.lock().expect("progress").result.is_none())
    }

    fn start(&mut self, repo: String, ctx: egui::Context) {
        let progress = Arc::new(Mutex::new(Progress {
            repo: repo.clone(),
            ..Default::default()
        }));
        self.cancel = Arc::new(AtomicBool::new(false));
        self.progress = Some(progress.clone());
        let cancel = self.cancel.clone();
        std::thread::spawn(move || {
            let mut on = |file: &str, done: usize, total: usize| {
                let mut p = progress.lock().expect("progress");
                p.file = file.to_string();
                p.done = done;
                p.total = total;
                ctx.request_repaint();
            };
            let r = download_with_progress(&repo, &weights_dir(), &mut on, &cancel);
            progress.lock().expect("progress").result = Some(r.map_err(|e| e.to_string()));
            ctx.request_repaint();
        });
    }
}

pub fn window(app: &mut ExplorerApp, ctx: &egui::Context) {
    // A finished download loads itself and shows up in the list.
    let finished = app.download.progress.as_ref().and_then(|p| {
        let mut p = p.lock().expect("progress");
        p.result.take()
    });
    if let Some(r) = finished {
        app.download.progress = None;
        match r {
            Ok(folder) => {
                app.notice = Some(format!("Downloaded into {}", folder.display()));
                app.rescan_weights();
                app.load_model(ModelSpec::Weights(folder));
            }
            Err(e) => app.error = Some(e),
        }
    }
    let mut open = app.download.open;
    egui::Window::new("Download from Hugging Face")
        .open(&mut open)
        .resizable(false)
        .show(ctx, |ui| {
            ui.label(format!(
                "Files go to {} (config.json, weights, preprocessor config).",
                weights_dir().display()
            ));
            let running = app.download.running();
            ui.add_enabled_ui(!running, |ui| {
                for r in COMMON_REPOS {
                    if ui.selectable_label(app.download.repo == *r, *r).clicked() {
                        app.download.repo = r.to_string();
                    }
                }
                ui.horizontal(|ui| {
                    ui.label("Repo id");
                    ui.text_edit_singleline(&mut app.download.repo);
                });
            });
            ui.horizontal(|ui| {
                if running {
                    if ui.button("Cancel").clicked() {
                        app.download.cancel.store(true, Ordering::Relaxed);
                    }
                } else if ui
                    .add_enabled(
                        !app.download.repo.trim().is_empty(),
                        egui::Button::new("Download"),
                    )
                    .clicked()
                {
                    let repo = app.download.repo.trim().to_string();
                    app.download.start(repo, ctx.clone());
                }
            });
            if let Some(p) = &app.download.progress {
                let p = p.lock().expect("progress");
                let frac = if p.total > 0 {
                    p.done as f32 / p.total as f32
                } else {
                    0.0
                };
                ui.label(format!("{} · {}", p.repo, p.file));
                ui.add(egui::ProgressBar::new(frac).show_percentage().text(format!(
                    "{:.1} / {:.1} MB",
                    p.done as f64 / 1e6,
                    p.total as f64 / 1e6
                )));
            }
        });
    app.download.open = open;
}
