//! Errors of model I/O. Every variant names the file and, where there is one, the tensor or node.

use std::path::PathBuf;

/// Everything that can go wrong while reading, decoding or writing a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    // The underlying error is part of the message, not `source()`: a caller that prints the
    // whole chain (anyhow's `{:#}`) then shows it once, not twice.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: not a valid ONNX protobuf file: {error}")]
    Decode {
        path: PathBuf,
        error: prost::DecodeError,
    },
    #[error("{path}: the file is empty")]
    Empty { path: PathBuf },
    #[error("{path}: model has no graph")]
    NoGraph { path: PathBuf },
    #[error("{path}: tensor '{tensor}': {reason}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        reason: String,
    },
    #[error("{path}: tensor '{tensor}': external data: {reason}")]
    ExternalData {
        path: PathBuf,
        tensor: String,
        reason: String,
    },
    #[error("refusing to write {output}: it is {what} of the input model {input}")]
    WouldOverwriteInput {
        output: PathBuf,
        input: PathBuf,
        what: &'static str,
    },
    #[error("{path}: the model is {size} bytes once encoded, over protobuf's 2 GiB limit; save it with external data")]
    TooLargeForProtobuf { path: PathBuf, size: u64 },
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            error,
        }
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
