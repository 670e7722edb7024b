//! `bitnet-ortops`: an ONNX Runtime custom-op library with three ops. `bitnet.onnx::BitLinear`,
//! BitNet b1.58's linear layer: per-token int8 activation quantization, ternary weights stored
//! 2 bits each, exact integer dot products over all of `K`, and one rescale per output in the
//! order of the model's own class (see [`op`] for the contract and [`layout`] for the weights).
//! `bitnet.onnx::Q8Linear`, the 8-bit LM head: the block-quantized table `MatMulNBits` reads,
//! per-block int8 activations and integer block products, as `MatMulNBits` computes them at
//! `accuracy_level` 4 but for the order of the float sums (see [`q8`]).
//! `bitnet.onnx::GroupQueryAttention`: ONNX Runtime's grouped-query attention with rotary over
//! the key/value cache, each cached row read once for the query heads that share it (see
//! [`attention`]).
//!
//! Built as a `cdylib` that ONNX Runtime loads (`RegisterCustomOps`, in [`ffi`]) and as an
//! `rlib` that `bitnet-build` uses to write weights in [`layout`] and the tests use to compare
//! the kernels.
//!
//! Kernels ([`kernel`]): a portable reference and an AVX2 path chosen at run time. No AVX-512
//! or VNNI path: none was written, as the machine this was developed on has neither and an
//! untested path is not shipped.

pub mod attention;
pub mod ffi;
pub mod kernel;
pub mod layout;
pub mod op;
pub mod q8;
#[cfg(target_arch = "x86_64")]
mod q8_avx2;
pub mod quant;
