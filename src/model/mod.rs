//! Architectures and their networks: the Plan (one description of a network), layer ids and the
//! observer a forward pass reports to, ConvNeXt configurations, the modernization roadmap,
//! MAC and parameter counting, and the network built from a plan.
pub mod catalog;
pub mod config;
mod convnext_block;
pub mod flops;
pub mod layer_id;
mod layer_ops;
pub mod layers;
pub mod network;
pub mod observer;
pub mod plan;
pub mod roadmap;

pub use config::{Config, Version};
pub use network::Network;
pub use plan::Plan;
