//! The math of bitnet-onnx, with no ONNX types: the ternary quantizer (absmean and TWN, lossless
//! detection, SIMD lanes, the band-wise `[K, N]` kernel in `quant::kn`, buffer reuse in
//! `quant::Spare`), packing of codes into each runtime's byte layout (`pack`), and the blocked
//! 4/8-bit quantizer of the embedding and head tables (`blockq`), and transformers' BitNet weight
//! forms with the 2-bit layout `build` writes for them (`hf`). Deterministic for any thread
//! count.

pub mod blockq;
pub mod hf;
pub mod pack;
pub mod quant;
