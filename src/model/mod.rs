//! ConvNeXt: configuration, checkpoints and the network itself.
pub mod checkpoint;
pub mod config;
pub mod convnext;
pub mod layers;

pub use checkpoint::{Checkpoint, Format};
pub use config::{Config, Version};
pub use convnext::ConvNeXt;
