//! Evaluation for bitnet-onnx: lowers graphs so tract can run them (decoding the quantized
//! formats tract lacks), runs them with seeded or loaded inputs, and compares an original
//! model with its converted form output by output and layer by layer.
//!
//! This crate depends on `bitnet-model` only (not on the quantizer): the unpackers it needs
//! are written here.

pub mod error;
pub mod inputs;
mod local;
pub mod lower;
pub mod metrics;
pub mod runner;
pub mod verify;

pub use error::{EvalError, Result};
pub use inputs::{load_inputs, make_inputs, save_npz, InputDescription, Inputs};
pub use lower::{lower_for_tract, lower_for_tract_named};
pub use metrics::{compare, Metrics};
pub use runner::{HostTensor, Runner, TensorData};
pub use verify::{verify, VerifyOptions, VerifyReport};
