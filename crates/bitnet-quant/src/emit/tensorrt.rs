//! `--target tensorrt`: what TensorRT's ONNX parser accepts for weight-only quantization
//! (docs/formats.md 2.3): symmetric INT4 codes blocked along K (block 64 or 128, opset 21), or with
//! `--tensorrt-int8` per-channel INT8 (opset 13). No INT2, no contrib ops, constant scales,
//! DequantizeLinear directly on the weight initializer.

use bitnet_model::proto::tensor_proto::DataType;
use bitnet_model::proto::GraphProto;

use super::{dq, EmitContext, EmitError, Emitted, Emitter, WeightJob};
use crate::pack;
use crate::quant::Granularity;

pub struct TensorRt {
    /// INT4 block size along K: 64 or 128.
    pub block_size: usize,
    /// Per-channel INT8 instead of blocked INT4.
    pub int8: bool,
}

impl Emitter for TensorRt {
    fn target(&self) -> &'static crate::targets::Target {
        crate::targets::get(crate::targets::Id::Tensorrt)
    }

    fn dequantize_linear_weights(&self) -> bool {
        true
    }

    /// INT4 tensors exist from IR version 10 on.
    fn min_ir_version(&self) -> i64 {
        if self.int8 {
            0
        } else {
            10
        }
    }

    fn emit(
        &self,
        _: &GraphProto,
        job: &WeightJob,
        names: &mut EmitContext,
    ) -> Result<Emitted, EmitError> {
        if job.dtype == DataType::Bfloat16 as i32 {
            // The scale type is the DequantizeLinear output type, and TensorRT takes float32
            // or float16 scales only (the `check --target tensorrt` rule scale-type).
            return Err(EmitError::ElementType {
                dtype: "bfloat16",
                why: "TensorRT DequantizeLinear scales (and so the dequantized weight) must be float32 or float16; cast the model to float16 or use --target qdq-int8 or onnx",
            });
        }
        let (_, transposed) = dq::weight_dims(job);
        let codes = pack::codes_in_onnx_order(job.ternary, transposed);
        let (code_type, packed, scales) = if self.int8 {
            if matches!(job.ternary.granularity, Granularity::Group(_)) {
                return Err(EmitError::Layout(
                    "TensorRT INT8 weights take per-channel scales only; use --scale channel or tensor, or INT4 blocks".to_string(),
                ));
            }
            let mut s = dq::natural_scales(job);
            if s.axis.is_none() {
                // TensorRT wants a 1-D scale along the output channel axis: repeat the scalar.
                let n = job.ternary.n;
                s = dq::DqScales {
                    values: vec![s.values[0]; n],
                    dims: vec![n as i64],
                    axis: Some(if transposed { 0 } else { 1 }),
                    block_size: None,
                };
            }
            (DataType::Int8, pack::pack_int8(&codes), s)
        } else {
            if !crate::targets::tensorrt::INT4_BLOCK_SIZES.contains(&(self.block_size as i64)) {
                return Err(EmitError::Layout(format!(
                    "TensorRT INT4 block size must be 64 or 128, not {}",
                    self.block_size
                )));
            }
            let s = dq::blocked_scales(job, self.block_size)?;
            (DataType::Int4, pack::pack_int4(&codes), s)
        };
        Ok(Emitted {
            patch: dq::emit(job, names, code_type, packed, &scales),
            min_opset: dq::min_opset(job, &scales, code_type),
            ..Default::default()
        })
    }
}
