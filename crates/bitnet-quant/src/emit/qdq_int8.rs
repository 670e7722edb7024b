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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emit::testing::{
        assert_dq_patch, dequantized, f16s, f32s, gemm, init, int_attrs, matmul, onnx_codes, raw,
        run, ternary, Gemm, Job,
    };
    use crate::quant::Granularity;

    fn job(g: &GraphProto, granularity: Granularity, opset: i64) -> Job {
        let mut job = Job::new(g, "W", ternary(3, 8, granularity));
        job.opset = opset;
        job
    }

    fn int8_bytes(codes: &[i8]) -> Vec<u8> {
        codes.iter().map(|&c| c as u8).collect()
    }

    #[test]
    fn from_opset_13_a_per_tensor_scale_is_written_per_axis() {
        let g = matmul(8, 3);
        let j = job(&g, Granularity::Tensor, 13);
        let (out, bytes, em) = run(&QdqInt8, &g, &j).unwrap();
        assert_dq_patch(&em.patch, "W", "W_ternary_int8", &["y"]);
        // 24 int8 codes and N = 3 copies of the scale.
        assert_eq!(bytes, 24 + 12);
        let codes = init(&out, "W_ternary_int8");
        assert_eq!(
            (codes.data_type, codes.dims.clone()),
            (Some(DataType::Int8 as i32), vec![8, 3])
        );
        assert_eq!(raw(codes), int8_bytes(&onnx_codes(&j.ternary, false)));
        let scale = init(&out, "W_scale");
        assert_eq!(scale.dims, [3]);
        assert_eq!(f32s(scale), [0.5; 3]);
        let dq = dequantized(&out, "W", "W_ternary_int8", &["mm"]);
        assert_eq!(int_attrs(dq), [("axis", Some(1))]);
        assert_eq!(em.min_opset, 13);
    }

    #[test]
    fn the_repeated_scale_of_a_transposed_weight_is_along_axis_0() {
        let g = gemm(8, 3, &Gemm::default());
        let j = job(&g, Granularity::Tensor, 17);
        let (out, bytes, em) = run(&QdqInt8, &g, &j).unwrap();
        assert_eq!(bytes, 36);
        let codes = init(&out, "W_ternary_int8");
        assert_eq!(codes.dims, [3, 8]);
        assert_eq!(raw(codes), int8_bytes(&j.ternary.codes));
        assert_eq!(init(&out, "W_scale").dims, [3]);
        let dq = dequantized(&out, "W", "W_ternary_int8", &["gemm"]);
        assert_eq!(int_attrs(dq), [("axis", Some(0))]);
        assert_eq!(em.min_opset, 13);
    }

    #[test]
    fn below_opset_13_a_per_tensor_scale_stays_a_scalar() {
        let g = matmul(8, 3);
        let (out, bytes, em) = run(&QdqInt8, &g, &job(&g, Granularity::Tensor, 12)).unwrap();
        assert_eq!(bytes, 24 + 4);
        let scale = init(&out, "W_scale");
        assert!(scale.dims.is_empty());
        assert_eq!(f32s(scale), [0.5]);
        assert!(dequantized(&out, "W", "W_ternary_int8", &["mm"])
            .attribute
            .is_empty());
        assert_eq!(em.min_opset, 10);
    }

    #[test]
    fn per_channel_scales_need_opset_13() {
        let g = matmul(8, 3);
        let (out, bytes, em) = run(&QdqInt8, &g, &job(&g, Granularity::Channel, 10)).unwrap();
        assert_eq!(bytes, 36);
        assert_eq!(f32s(init(&out, "W_scale")), [1.0, 2.0, 3.0]);
        let dq = dequantized(&out, "W", "W_ternary_int8", &["mm"]);
        assert_eq!(int_attrs(dq), [("axis", Some(1))]);
        assert_eq!(em.min_opset, 13);
    }

    #[test]
    fn group_scales_are_blocked_from_opset_21() {
        let g = matmul(8, 3);
        let (out, bytes, em) = run(&QdqInt8, &g, &job(&g, Granularity::Group(4), 21)).unwrap();
        assert_eq!(bytes, 24 + 24);
        let scale = init(&out, "W_scale");
        assert_eq!(scale.dims, [2, 3]);
        assert_eq!(f32s(scale), [0.25, 0.75, 1.25, 0.5, 1.0, 1.5]);
        let dq = dequantized(&out, "W", "W_ternary_int8", &["mm"]);
        assert_eq!(int_attrs(dq), [("axis", Some(0)), ("block_size", Some(4))]);
        assert_eq!(em.min_opset, 21);
    }

    #[test]
    fn float16_scales_need_opset_19() {
        let g = matmul(8, 3);
        let mut j = job(&g, Granularity::Tensor, 13);
        j.dtype = DataType::Float16 as i32;
        let (out, bytes, em) = run(&QdqInt8, &g, &j).unwrap();
        assert_eq!(bytes, 24 + 6);
        assert_eq!(f16s(init(&out, "W_scale")), [0.5; 3]);
        assert_eq!(em.min_opset, 19);
    }
}
