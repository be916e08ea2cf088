//! Engine errors. Every variant says which file or which tensor is at fault, because the user
//! of an explorer mostly fights with other people's checkpoints.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },

    #[error("{path}: not a ConvNeXt checkpoint: {msg}")]
    NotConvNext { path: PathBuf, msg: String },

    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor { path: PathBuf, name: String },

    #[error("{path}: unexpected tensor `{name}` {shape:?} (not part of the inferred {arch})")]
    ExtraTensor {
        path: PathBuf,
        name: String,
        shape: Vec<usize>,
        arch: String,
    },

    #[error("{path}: tensor `{name}` has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        got: Vec<usize>,
        expected: Vec<usize>,
    },

    #[error("unknown variant `{0}` (try `convnext-explorer inspect --variant tiny`; known: {1})")]
    UnknownVariant(String, String),

    #[error("image {path}: {msg}")]
    Image { path: String, msg: String },

    #[error("device `{0}` is not available: {1}")]
    Device(String, String),

    #[error("invalid input: {0}")]
    Input(String),

    #[error("the network's output is not finite: the first NaN or infinite values come from {0} (broken weights, or values beyond the dtype's range?)")]
    NonFinite(String),

    #[error("download of `{repo}` failed: {msg}")]
    Download { repo: String, msg: String },

    #[error("{0} cancelled")]
    Cancelled(String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An input error about an image, named after the image.
    pub fn about_image(self, name: &str) -> Error {
        match self {
            Error::Input(msg) => Error::Image {
                path: name.to_string(),
                msg,
            },
            e => e,
        }
    }

    pub fn file(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        Error::File {
            path: path.into(),
            msg: msg.to_string(),
        }
    }
}
