//! Plans by name: a ConvNeXt variant or a roadmap step. Apart from `plan.rs` so that the plan
//! does not depend on the roadmap, which is built from plans.
use super::config::Config;
use super::plan::Plan;
use super::roadmap;
use crate::base::error::Result;

impl Plan {
    /// A named architecture: a ConvNeXt variant (`convnext_tiny`, `tiny`, `T`, `v2-nano`) or a
    /// roadmap step (`roadmap:kernel_7`).
    pub fn named(name: &str, num_classes: usize) -> Result<Plan> {
        match name.trim().strip_prefix("roadmap:") {
            Some(step) => roadmap::plan(step, num_classes),
            None => Ok(Plan::convnext(&Config::variant(name, num_classes)?)),
        }
    }
}
