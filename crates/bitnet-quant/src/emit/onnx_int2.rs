//! `--target onnx`: standard ONNX only. Ternary codes as `INT2` initializers (ONNX 1.20, IR 13:
//! four per byte, first element in the least significant bits, two's complement) and a
//! per-tensor, per-axis or blocked `DequantizeLinear` (opset 25) feeding the original
//! `MatMul`/`Gemm`. About 16x smaller weights than float32 once scales are counted.

use bitnet_model::proto::tensor_proto::DataType;
use bitnet_model::proto::GraphProto;

use super::{dq, EmitContext, EmitError, Emitted, Emitter, WeightJob};
use crate::pack;

pub struct OnnxInt2;

impl Emitter for OnnxInt2 {
    fn target(&self) -> &'static crate::targets::Target {
        crate::targets::get(crate::targets::Id::Onnx)
    }

    fn dequantize_linear_weights(&self) -> bool {
        true
    }

    fn min_ir_version(&self) -> i64 {
        13
    }

    fn emit(
        &self,
        _: &GraphProto,
        job: &WeightJob,
        names: &mut EmitContext,
    ) -> Result<Emitted, EmitError> {
        Ok(dq::emit_natural(
            job,
            names,
            DataType::Int2,
            pack::pack_int2,
        ))
    }
}
