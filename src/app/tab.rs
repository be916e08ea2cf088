//! The tabs of the central panel. Each tab is one module with one struct that owns its state,
//! its jobs and their results; the app knows a tab only through this trait and one line in
//! [`super::tabs`].
use super::views::{ModelView, RunView};
use super::worker::{JobSender, Pending};
use super::Shared;
use std::any::Any;

/// A tab, in the manner of egui's demo app (`View` and `Demo`): a name, a body, and hooks for
/// what no longer holds when the model or the image changes. `Any` lets tests and the app reach
/// a tab by its type ([`super::ExplorerApp::tab`]).
pub trait Tab: Any {
    /// The tab's label in the tab bar and the View menu, and how the settings remember it.
    fn name(&self) -> &'static str;

    /// Takes in what the tab's jobs sent back. Called every frame for every tab, shown or not,
    /// before any is drawn.
    fn poll(&mut self, _ctx: &mut TabCtx) {}

    /// Draws the tab.
    fn ui(&mut self, ui: &mut egui::Ui, ctx: &mut TabCtx);

    /// A model loaded: drop the results and jobs that were the old model's.
    fn on_model_changed(&mut self, _model: &ModelView) {}

    /// An image ran through the model: drop the results that were the old image's.
    fn on_new_run(&mut self, _run: &RunView) {}
}

/// What a tab may use while it draws: the state every tab reads (the model, the image's run,
/// the selection, the settings, errors and notices, app-level requests) and the worker, for
/// its own jobs ([`JobSender::submit`]).
pub struct TabCtx<'a> {
    pub shared: &'a mut Shared,
    pub jobs: &'a JobSender,
}

impl TabCtx<'_> {
    /// A job's result once it has come, if it was made with the model now loaded.
    pub fn take<T: 'static>(&self, pending: &mut Option<Pending<T>>) -> Option<T> {
        Pending::take(pending, self.shared.generation)
    }
}
