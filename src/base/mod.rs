//! The foundation any layer may use: errors, devices and threads, progress and cancellation,
//! locks, text formatting, the allocator's settings and capped file reads. Knows no model.
pub mod allocator;
pub mod device;
pub mod error;
pub mod files;
pub mod pool;
pub mod progress;
pub mod sync;
pub mod text;
