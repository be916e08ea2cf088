//! ConvNeXt Explorer's engine: model, checkpoints, preprocessing, tracing and analysis, with no
//! GUI type in it (the `app` module, feature `app`, is the only one that draws). The command
//! line, the tests and the app all drive the same engine.
//!
//! The modules are layers, lowest first; a layer uses only the layers before it in this list
//! (ARCHITECTURE.md draws them, and `tests/architecture.rs` checks it).

// Errors, devices, progress, locks, text, files: what any layer may use.
pub mod base;

// Hand-written CPU/CUDA/Metal ops.
pub mod kernels;

// Plans, layer ids, layers, networks, counting, variants, the roadmap.
pub mod model;

// Checkpoints, images, labels, cards, folders, the hub, and the engine.
pub mod io;

// Traces, profiles, attribution, folder runs and what is computed from them.
pub mod analysis;

// The training loop and its data.
pub mod train;

// The command line (a front end).
pub mod cli;

// The desktop app (a front end; feature `app`).
#[cfg(feature = "app")]
pub mod app;

pub use base::error::{Error, Result};
pub use io::engine::Engine;
