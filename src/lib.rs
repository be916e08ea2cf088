//! ConvNeXt Explorer's engine: model, checkpoints, preprocessing, tracing and analysis, with no
//! GUI type in it. The command line, the tests and the app all drive it.
pub mod device;
pub mod engine;
pub mod error;
pub mod flops;
pub mod labels;
pub mod model;
pub mod ops;
pub mod preprocess;
pub mod stats;
pub mod trace;
pub mod train;

pub mod cli;
#[cfg(feature = "hub")]
pub mod hub;

pub use engine::Engine;
pub use error::{Error, Result};
