//! `--target qdq-int8`: ternary codes as INT8 initializers, a per-tensor, per-axis or blocked
//! float `DequantizeLinear` feeding the original `MatMul`/`Gemm` (bias and attributes
//! unchanged). Runs on every ONNX runtime, tract included; 4x smaller than float32 weights.

use bitnet_model::proto::tensor_proto::DataType;
use bitnet_model::proto::GraphProto;

use super::{dq, EmitContext, Emitted, Emitter, WeightJob};
use crate::convert::ConvertError;
use crate::pack;

pub struct QdqInt8;

impl Emitter for QdqInt8 {
    fn name(&self) -> &'static str {
        "qdq-int8"
    }

    fn dequantize_linear_weights(&self) -> bool {
        true
    }

    fn emit(
        &self,
        g: &mut GraphProto,
        job: &WeightJob,
        names: &mut EmitContext,
    ) -> Result<Emitted, ConvertError> {
        Ok(dq::emit_natural(
            g,
            job,
            names,
            DataType::Int8,
            pack::pack_int8,
        ))
    }
}
