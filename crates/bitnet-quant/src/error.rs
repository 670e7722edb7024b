//! The library's conversion error: each variant names the file, and the weight or node it is
//! about.

use crate::quant;

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    // The inner error is part of the message and deliberately not a `#[source]`: anyhow's
    // `{:#}` prints every source after the message, which would say it twice.
    #[error("{path}: weight '{weight}' of node '{node}': {error}")]
    Quant {
        path: String,
        weight: String,
        node: String,
        error: quant::QuantError,
    },
    #[error("{path}: weight '{weight}' (read by {nodes}): {error}")]
    Emit {
        path: String,
        weight: String,
        /// The nodes reading the weight, quoted and comma-separated.
        nodes: String,
        error: crate::emit::EmitError,
    },
    #[error("{path}: the converted nodes need default-domain opset {needed} but the model imports opset {have}, and node '{node}' ({op}) does not keep its meaning between them: {op}-{version} {change}; re-export the model at opset {needed} or newer")]
    OpsetUpgrade {
        path: String,
        needed: i64,
        have: i64,
        node: String,
        op: String,
        version: i64,
        change: String,
    },
    #[error("{path}: {reason}")]
    Other { path: String, reason: String },
}
