//! Architectures and their networks: the Plan (one description of a network), ConvNeXt
//! configurations, the modernization roadmap, checkpoints, and the network built from a plan.
pub mod checkpoint;
pub mod config;
mod convnext_block;
pub mod layers;
pub mod network;
mod ops;
pub mod plan;
pub mod roadmap;

pub use checkpoint::{Checkpoint, Format};
pub use config::{Config, Version};
pub use network::Network;
pub use plan::Plan;
