//! `--target qdq-int8`: ternary codes as INT8 initializers, a per-tensor, per-axis or blocked
//! float `DequantizeLinear` feeding the original `MatMul`/`Gemm` (bias and attributes
//! unchanged). Runs on every ONNX runtime, tract included; 4x smaller than float32 weights.
//!
//! ONNX Runtime fuses `DequantizeLinear -> MatMul` into MatMulNBits (8 bits) unless the
//! DequantizeLinear's scale initializer is shared with another node, and its ConstantSharing
//! pass merges equal scalar (or `[1]`) initializers first: equal per-tensor scales (BitNet's
//! offline weights are exactly -1/0/+1, scale 1) would leave every such layer dequantized at
//! run time. So from opset 13 a per-tensor scale is written per axis, `[N]` copies of it
//! (`N` floats per layer), which ConstantSharing leaves alone.

use bitnet_model::proto::tensor_proto::DataType;
use bitnet_model::proto::GraphProto;

use super::{dq, EmitContext, EmitError, Emitted, Emitter, WeightJob};
use crate::pack;

pub struct QdqInt8;

impl Emitter for QdqInt8 {
    fn target(&self) -> &'static crate::targets::Target {
        crate::targets::get(crate::targets::Id::QdqInt8)
    }

    fn dequantize_linear_weights(&self) -> bool {
        true
    }

    fn keep_scale_before_clip(&self) -> bool {
        true
    }

    fn emit(
        &self,
        _: &GraphProto,
        job: &WeightJob,
        names: &mut EmitContext,
    ) -> Result<Emitted, EmitError> {
        let mut scales = dq::natural_scales(job);
        if scales.axis.is_none() && job.opset >= 13 {
            let (_, transposed) = dq::weight_dims(job);
            scales.values = vec![scales.values[0]; job.ternary.n];
            scales.dims = vec![job.ternary.n as i64];
            scales.axis = Some(if transposed { 0 } else { 1 });
        }
        Ok(dq::emit_with_scales(
            job,
            names,
            DataType::Int8,
            pack::pack_int8,
            scales,
        ))
    }
}
