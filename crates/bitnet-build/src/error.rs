//! What can go wrong reading a checkpoint or writing the model folder. Every error names the
//! file and, where there is one, the tensor or config key.

use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BuildError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: `{key}` = {value} is not supported: {why}")]
    Unsupported {
        path: PathBuf,
        key: String,
        value: String,
        why: String,
    },
    #[error("{path}: not a safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("{path}: tensor `{tensor}` is missing")]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{path}: tensor `{tensor}`: {message}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        message: String,
    },
    #[error("{path}: {message}")]
    Output { path: PathBuf, message: String },
    #[error(transparent)]
    Model(#[from] bitnet_model::ModelError),
}

impl BuildError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        BuildError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn config(path: &Path, message: impl Into<String>) -> Self {
        BuildError::Config {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    pub(crate) fn tensor(path: &Path, tensor: &str, message: impl Into<String>) -> Self {
        BuildError::Tensor {
            path: path.to_path_buf(),
            tensor: tensor.to_string(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = BuildError> = std::result::Result<T, E>;
