//! What comes from and goes to files: checkpoints (readers, names, strict loading), images and
//! their preprocessing, class labels, model cards, image folders, the Hugging Face Hub, and the
//! [`Engine`](engine::Engine) (a loaded model with its labels, preprocessing and card).
pub mod cache;
pub mod card;
pub mod checkpoint;
pub mod engine;
#[cfg(feature = "hub")]
pub mod hub;
pub mod labels;
pub mod listing;
pub mod preprocess;
