//! placeholder

pub mod pack;
pub mod quant;
