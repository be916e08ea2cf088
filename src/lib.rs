//! ConvNeXt Explorer's engine: model, checkpoints, preprocessing, tracing and analysis, with no
//! GUI type in it (the `app` module, feature `gui`, is the only one that draws). The command
//! line, the tests and the app all drive the same engine.
pub mod allocator;
pub mod attribution;
pub mod card;
pub mod cka;
pub mod collapse;
pub mod colormap;
pub mod device;
pub mod diff;
pub mod engine;
pub mod error;
pub mod evaluation;
pub mod files;
pub mod flops;
pub mod folder;
pub mod folder_run;
pub mod grid;
pub mod labels;
pub mod model;
pub mod ops;
pub mod preprocess;
pub mod profile;
pub mod progress;
pub mod stats;
pub mod sync;
pub mod text;
pub mod top_images;
pub mod trace;
pub mod train;

#[cfg(feature = "gui")]
pub mod app;
pub mod cli;
#[cfg(feature = "hub")]
pub mod hub;

pub use engine::Engine;
pub use error::{Error, Result};
