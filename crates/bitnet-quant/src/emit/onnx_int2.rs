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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emit::testing::{
        assert_dq_patch, dequantized, f16s, f32s, gemm, init, int_attrs, matmul, onnx_codes,
        pack_signed_ref, raw, run, shared, ternary, Gemm, Job,
    };
    use crate::quant::Granularity;

    #[test]
    fn int2_codes_and_per_channel_scales_feed_the_matmul() {
        let g = matmul(8, 3);
        let t = ternary(3, 8, Granularity::Channel);
        let (out, bytes, em) = run(&OnnxInt2, &g, &Job::new(&g, "W", t.clone())).unwrap();
        assert_dq_patch(&em.patch, "W", "W_ternary_int2", &["y"]);
        // 24 INT2 codes: 6 bytes; 3 float32 scales: 12 bytes.
        assert_eq!(bytes, 6 + 12);
        let codes = init(&out, "W_ternary_int2");
        assert_eq!(
            (codes.data_type, codes.dims.clone()),
            (Some(DataType::Int2 as i32), vec![8, 3])
        );
        // [K][N] order: row k = 0 holds codes (0,0), (1,0), (2,0) = -1, 1, 0 (two's complement
        // 0b11, 0b01, 0b00) and (0,1) = 0.
        assert_eq!(raw(codes)[0], 0b00_00_01_11);
        assert_eq!(raw(codes), pack_signed_ref(&onnx_codes(&t, false), 2));
        let scale = init(&out, "W_scale");
        assert_eq!(scale.dims, [3]);
        assert_eq!(f32s(scale), [1.0, 2.0, 3.0]);
        let dq = dequantized(&out, "W", "W_ternary_int2", &["mm"]);
        assert_eq!(int_attrs(dq), [("axis", Some(1))]);
        assert_eq!(out.node.len(), 2);
        assert_eq!(out.node[1].input, ["x", "W_dequantized"]);
        assert_eq!(em.min_opset, 25);
        assert_eq!(OnnxInt2.min_ir_version(), 13);
    }

    #[test]
    fn a_per_tensor_scale_is_a_scalar_without_axis() {
        let g = matmul(8, 3);
        let (out, bytes, em) = run(
            &OnnxInt2,
            &g,
            &Job::new(&g, "W", ternary(3, 8, Granularity::Tensor)),
        )
        .unwrap();
        assert_eq!(bytes, 6 + 4);
        let scale = init(&out, "W_scale");
        assert!(scale.dims.is_empty());
        assert_eq!(f32s(scale), [0.5]);
        let dq = dequantized(&out, "W", "W_ternary_int2", &["mm"]);
        assert!(dq.attribute.is_empty());
        assert_eq!(em.min_opset, 25);
    }

    #[test]
    fn group_scales_are_blocked_along_k_of_a_transposed_weight() {
        let g = gemm(8, 3, &Gemm::default());
        let t = ternary(3, 8, Granularity::Group(4));
        let (out, bytes, em) = run(&OnnxInt2, &g, &Job::new(&g, "W", t.clone())).unwrap();
        // transB = 1: codes [N, K] as the quantizer has them, scales [N, K / 4].
        let codes = init(&out, "W_ternary_int2");
        assert_eq!(codes.dims, [3, 8]);
        assert_eq!(raw(codes), pack_signed_ref(&t.codes, 2));
        let scale = init(&out, "W_scale");
        assert_eq!(scale.dims, [3, 2]);
        assert_eq!(f32s(scale), [0.25, 0.5, 0.75, 1.0, 1.25, 1.5]);
        assert_eq!(bytes, 6 + 24);
        let dq = dequantized(&out, "W", "W_ternary_int2", &["gemm"]);
        assert_eq!(int_attrs(dq), [("axis", Some(1)), ("block_size", Some(4))]);
        assert_eq!(em.min_opset, 25);
    }

    #[test]
    fn group_scales_of_a_kn_weight_are_transposed() {
        let g = matmul(8, 3);
        let (out, _, _) = run(
            &OnnxInt2,
            &g,
            &Job::new(&g, "W", ternary(3, 8, Granularity::Group(4))),
        )
        .unwrap();
        let scale = init(&out, "W_scale");
        assert_eq!(scale.dims, [2, 3]);
        assert_eq!(f32s(scale), [0.25, 0.75, 1.25, 0.5, 1.0, 1.5]);
        let dq = dequantized(&out, "W", "W_ternary_int2", &["mm"]);
        assert_eq!(int_attrs(dq), [("axis", Some(0)), ("block_size", Some(4))]);
    }

    #[test]
    fn an_odd_code_count_pads_the_last_byte_with_zero_bits() {
        let g = matmul(5, 3);
        let t = ternary(3, 5, Granularity::Tensor);
        let (out, bytes, _) = run(&OnnxInt2, &g, &Job::new(&g, "W", t.clone())).unwrap();
        // 15 codes: 4 bytes, the last one holding 3 codes and 2 zero bits.
        assert_eq!(bytes, 4 + 4);
        let codes = raw(init(&out, "W_ternary_int2"));
        assert_eq!(codes.len(), 4);
        assert_eq!(codes[3] >> 6, 0);
        assert_eq!(codes, pack_signed_ref(&onnx_codes(&t, false), 2));
    }

    #[test]
    fn layers_sharing_the_weight_read_one_dequantizelinear() {
        let g = shared(8, 3);
        let (out, bytes, em) = run(
            &OnnxInt2,
            &g,
            &Job::new(&g, "W", ternary(3, 8, Granularity::Channel)),
        )
        .unwrap();
        assert_dq_patch(&em.patch, "W", "W_ternary_int2", &["y0", "y1"]);
        assert_eq!(bytes, 18);
        dequantized(&out, "W", "W_ternary_int2", &["mm0", "mm1"]);
        assert_eq!(out.node.len(), 3);
    }

    #[test]
    fn float16_scales_are_float16() {
        let g = matmul(8, 3);
        let mut job = Job::new(&g, "W", ternary(3, 8, Granularity::Channel));
        job.dtype = DataType::Float16 as i32;
        let (out, bytes, em) = run(&OnnxInt2, &g, &job).unwrap();
        assert_eq!(bytes, 6 + 6);
        assert_eq!(f16s(init(&out, "W_scale")), [1.0, 2.0, 3.0]);
        assert_eq!(em.min_opset, 25);
    }
}
