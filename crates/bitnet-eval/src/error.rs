//! Errors of evaluation. Every variant names the model file (or the input file) and, where
//! there is one, the node, value or input concerned. Tract errors keep their whole chain.

use std::path::PathBuf;

/// Everything that can go wrong while lowering, running or comparing models.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Loading a model file failed.
    #[error(transparent)]
    Model(#[from] bitnet_model::ModelError),
    /// tract refused the model or failed while building or running it.
    #[error("{model}: tract failed while {stage}: {message} (verify runs both models in tract; this is the node and op tract could not handle: binding symbolic dims with --dim NAME=VALUE or giving real inputs with --inputs may get it past shape analysis, else the model cannot be verified here)")]
    Tract {
        model: String,
        stage: String,
        message: String,
    },
    /// A node could not be lowered (constant-evaluated) for tract.
    #[error("{model}: node '{node}': {reason}")]
    Node {
        model: String,
        node: String,
        reason: String,
    },
    /// A graph input could not be produced or did not match the graph.
    #[error("{model}: input '{input}': {reason}")]
    Input {
        model: String,
        input: String,
        reason: String,
    },
    /// A file of inputs (.npz or ONNX test-data directory) could not be read or written.
    #[error("{path}: {reason}")]
    InputFile { path: PathBuf, reason: String },
    /// The two models do not have comparable interfaces.
    #[error("{model}: {reason}")]
    Mismatch { model: String, reason: String },
}

impl EvalError {
    pub(crate) fn tract(model: &str, stage: impl Into<String>, e: impl std::fmt::Display) -> Self {
        // The whole cause chain on one line, without the backtrace Debug would add.
        EvalError::Tract {
            model: model.to_string(),
            stage: stage.into(),
            message: format!("{e:#}"),
        }
    }
    pub(crate) fn file(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        EvalError::InputFile {
            path: path.into(),
            reason: reason.to_string(),
        }
    }
}

pub type Result<T, E = EvalError> = std::result::Result<T, E>;
