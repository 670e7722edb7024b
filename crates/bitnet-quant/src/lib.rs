//! The graph work of bitnet-onnx: constant folding, linear-layer analysis, BitNet pattern
//! recognition, the rewrite driver, the embedding and head tables, and one emitter module per
//! target format. The math it calls (quantizers, packing) is `bitnet-math`'s.

pub mod analyse;
pub mod bitnet;
pub mod check;
pub mod cleanup;
pub mod convert;
pub mod emit;
pub mod error;
pub mod fold;
pub mod opsets;
pub mod report;
pub mod scope;
pub mod targets;
pub mod vocab;

/// The math (no ONNX types) lives in `bitnet-math`; re-exported under its old paths.
pub use bitnet_math::{blockq, hf, pack, quant};
