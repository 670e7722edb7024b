//! What can go wrong reading a checkpoint or writing the model folder. Every error names the
//! file and, where there is one, the tensor or config key.

use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BuildError {
    /// The OS error is part of the message and not the error's `source()`, so a caller that
    /// prints the whole chain (anyhow's `{:#}`) shows it once.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
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
    #[error("`{flag}` = {value} is not supported: {why}")]
    Flag {
        flag: String,
        value: String,
        why: String,
    },
    #[error(transparent)]
    Model(#[from] bitnet_model::ModelError),
}

impl BuildError {
    pub(crate) fn io(path: &Path, error: std::io::Error) -> Self {
        BuildError::Io {
            path: path.to_path_buf(),
            error,
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
            tensor: short(tensor),
            message: message.into(),
        }
    }

    /// A value read from `path` that the build cannot use: `key` and a short prefix of the
    /// value (see [`quote`]).
    pub(crate) fn unsupported(
        path: &Path,
        key: &str,
        value: &serde_json::Value,
        why: impl Into<String>,
    ) -> Self {
        BuildError::Unsupported {
            path: path.to_path_buf(),
            key: short(key),
            value: quote(value),
            why: why.into(),
        }
    }
}

/// How much of a value read from a file an error quotes: enough to recognise it, never the
/// megabytes a damaged file may hold.
pub const QUOTE_CHARS: usize = 64;

/// `s` cut to [`QUOTE_CHARS`] characters, `...` marking the cut.
pub fn short(s: &str) -> String {
    match s.char_indices().nth(QUOTE_CHARS) {
        None => s.to_string(),
        Some((at, _)) => format!("{}...", &s[..at]),
    }
}

/// A JSON value from a file as an error shows it: its JSON text, cut by [`short`].
pub fn quote(v: &serde_json::Value) -> String {
    match v {
        // Only the first characters are shown: serialise only those of a long string.
        serde_json::Value::String(s) => {
            short(&serde_json::Value::String(s.chars().take(QUOTE_CHARS + 1).collect()).to_string())
        }
        v => short(&v.to_string()),
    }
}

/// A serde_json error, with any value it quotes cut short (its message quotes the offending
/// string whole) and its line and column kept.
pub fn json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    if text.chars().count() <= 2 * QUOTE_CHARS {
        return text;
    }
    let head: String = text.chars().take(2 * QUOTE_CHARS).collect();
    format!("{head}... at line {} column {}", e.line(), e.column())
}

pub type Result<T, E = BuildError> = std::result::Result<T, E>;
