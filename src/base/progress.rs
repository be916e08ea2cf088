//! Long jobs (profiles, downloads, folders) report how far they are and learn whether the user
//! cancelled, through one small trait that the CLI, the app's worker and the tests implement.
use crate::base::error::{Error, Result};

pub trait Progress {
    /// `done` of `total` steps of `what` are finished.
    fn update(&mut self, done: usize, total: usize, what: &str);

    /// Whether the user asked to stop.
    fn cancelled(&self) -> bool {
        false
    }

    /// [`Error::Cancelled`] once the user asked to stop: call between steps.
    fn check(&self, what: &str) -> Result<()> {
        if self.cancelled() {
            Err(Error::Cancelled(what.to_string()))
        } else {
            Ok(())
        }
    }
}

/// Reports nowhere and never cancels.
pub struct Silent;

impl Progress for Silent {
    fn update(&mut self, _: usize, _: usize, _: &str) {}
}
