//! Quantization and rewriting for bitnet-onnx: the ternary quantizer (pure math), packing into
//! each runtime's layout, constant folding, linear-layer analysis, the rewrite driver and one
//! emitter module per target format.

pub mod analyse;
pub mod bitnet;
pub mod blockq;
pub mod check;
pub mod convert;
pub mod emit;
pub mod fold;
pub mod opsets;
pub mod pack;
pub mod quant;
pub mod scope;
pub mod vocab;
