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
            if let Granularity::Group(gs) = job.ternary.granularity {
                return Err(EmitError::Layout(if job.ternary.lossless {
                    format!(
                        "lossless detection found it exactly ternary with one scale per {gs} inputs, which TensorRT INT8 weights cannot carry (per-channel scales only): leave out --tensorrt-int8 (INT4 blocks) to keep it exact, or pass --lossless-group off to quantize it per channel (lossy)"
                    )
                } else {
                    "TensorRT INT8 weights take per-channel scales only; use --scale channel or tensor, or INT4 blocks".to_string()
                }));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emit::testing::{
        assert_dq_patch, dequantized, emit_err, f16s, f32s, gemm, init, int_attrs, matmul,
        onnx_codes, pack_signed_ref, raw, run, ternary, Gemm, Job,
    };
    use crate::quant::Granularity;

    const INT4_64: TensorRt = TensorRt {
        block_size: 64,
        int8: false,
    };
    const INT8: TensorRt = TensorRt {
        block_size: 128,
        int8: true,
    };

    #[test]
    fn int4_codes_blocked_along_k() {
        let g = matmul(128, 2);
        let t = ternary(2, 128, Granularity::Channel);
        let (out, bytes, em) = run(&INT4_64, &g, &Job::new(&g, "W", t.clone())).unwrap();
        assert_dq_patch(&em.patch, "W", "W_ternary_int4", &["y"]);
        // 256 INT4 codes: 128 bytes; scales [K / 64, N] = [2, 2] float32: 16 bytes.
        assert_eq!(bytes, 128 + 16);
        let codes = init(&out, "W_ternary_int4");
        assert_eq!(
            (codes.data_type, codes.dims.clone()),
            (Some(DataType::Int4 as i32), vec![128, 2])
        );
        // [K][N]: (n0, k0) = -1 (0xF) low nibble, (n1, k0) = codes[128] = 128 % 3 - 1 = 1.
        assert_eq!(raw(codes)[0], 0x1F);
        assert_eq!(raw(codes), pack_signed_ref(&onnx_codes(&t, false), 4));
        let scale = init(&out, "W_scale");
        assert_eq!(scale.dims, [2, 2]);
        assert_eq!(f32s(scale), [1.0, 2.0, 1.0, 2.0]);
        let dq = dequantized(&out, "W", "W_ternary_int4", &["mm"]);
        assert_eq!(int_attrs(dq), [("axis", Some(0)), ("block_size", Some(64))]);
        assert_eq!(em.min_opset, 21);
        assert_eq!(INT4_64.min_ir_version(), 10);
    }

    #[test]
    fn int4_of_a_transposed_weight_with_a_partial_block() {
        let g = gemm(200, 2, &Gemm::default());
        let t = ternary(2, 200, Granularity::Tensor);
        let trt = TensorRt {
            block_size: 128,
            int8: false,
        };
        let (out, bytes, em) = run(&trt, &g, &Job::new(&g, "W", t.clone())).unwrap();
        // 400 codes: 200 bytes; ceil(200 / 128) = 2 blocks per channel: [2, 2] scales.
        assert_eq!(bytes, 200 + 16);
        let codes = init(&out, "W_ternary_int4");
        assert_eq!(codes.dims, [2, 200]);
        assert_eq!(raw(codes), pack_signed_ref(&t.codes, 4));
        let scale = init(&out, "W_scale");
        assert_eq!(scale.dims, [2, 2]);
        assert_eq!(f32s(scale), [0.5; 4]);
        let dq = dequantized(&out, "W", "W_ternary_int4", &["gemm"]);
        assert_eq!(
            int_attrs(dq),
            [("axis", Some(1)), ("block_size", Some(128))]
        );
        assert_eq!(em.min_opset, 21);
    }

    #[test]
    fn a_group_scale_is_repeated_over_its_blocks() {
        let g = matmul(256, 2);
        let t = ternary(2, 256, Granularity::Group(128));
        let (out, bytes, _) = run(&INT4_64, &g, &Job::new(&g, "W", t)).unwrap();
        assert_eq!(bytes, 256 + 32);
        let scale = init(&out, "W_scale");
        assert_eq!(scale.dims, [4, 2]);
        // Channel scales (0.25, 0.5) and (0.75, 1.0) per group of 128, each over two blocks.
        assert_eq!(f32s(scale), [0.25, 0.75, 0.25, 0.75, 0.5, 1.0, 0.5, 1.0]);
    }

    #[test]
    fn a_group_smaller_than_the_block_is_refused() {
        let g = matmul(128, 2);
        let e = emit_err(
            &INT4_64,
            &g,
            &Job::new(&g, "W", ternary(2, 128, Granularity::Group(32))),
        );
        assert!(
            matches!(
                e,
                EmitError::Pack(pack::PackError::GroupNotMultipleOfBlock {
                    group: 32,
                    block_size: 64
                })
            ),
            "{e:?}"
        );
    }

    #[test]
    fn int4_block_sizes_other_than_64_and_128_are_refused() {
        let g = matmul(128, 2);
        for block_size in [16, 32, 256] {
            let trt = TensorRt {
                block_size,
                int8: false,
            };
            let e = emit_err(
                &trt,
                &g,
                &Job::new(&g, "W", ternary(2, 128, Granularity::Channel)),
            );
            assert!(
                matches!(&e, EmitError::Layout(m) if m.contains(&format!("not {block_size}"))),
                "{e:?}"
            );
        }
    }

    #[test]
    fn int8_per_channel() {
        let g = matmul(8, 3);
        let t = ternary(3, 8, Granularity::Channel);
        let (out, bytes, em) = run(&INT8, &g, &Job::new(&g, "W", t.clone())).unwrap();
        assert_dq_patch(&em.patch, "W", "W_ternary_int8", &["y"]);
        assert_eq!(bytes, 24 + 12);
        let codes = init(&out, "W_ternary_int8");
        assert_eq!(
            (codes.data_type, codes.dims.clone()),
            (Some(DataType::Int8 as i32), vec![8, 3])
        );
        let want: Vec<u8> = onnx_codes(&t, false).iter().map(|&c| c as u8).collect();
        assert_eq!(raw(codes), want);
        assert_eq!(f32s(init(&out, "W_scale")), [1.0, 2.0, 3.0]);
        let dq = dequantized(&out, "W", "W_ternary_int8", &["mm"]);
        assert_eq!(int_attrs(dq), [("axis", Some(1))]);
        assert_eq!(em.min_opset, 13);
        assert_eq!(INT8.min_ir_version(), 0);
    }

    #[test]
    fn int8_repeats_a_per_tensor_scale_along_the_channel_axis() {
        let g = gemm(8, 3, &Gemm::default());
        let (out, bytes, em) = run(
            &INT8,
            &g,
            &Job::new(&g, "W", ternary(3, 8, Granularity::Tensor)),
        )
        .unwrap();
        assert_eq!(bytes, 24 + 12);
        let scale = init(&out, "W_scale");
        assert_eq!(scale.dims, [3]);
        assert_eq!(f32s(scale), [0.5; 3]);
        let dq = dequantized(&out, "W", "W_ternary_int8", &["gemm"]);
        assert_eq!(int_attrs(dq), [("axis", Some(0))]);
        assert_eq!(em.min_opset, 13);
    }

    #[test]
    fn int8_refuses_group_scales() {
        let g = matmul(8, 3);
        let e = emit_err(
            &INT8,
            &g,
            &Job::new(&g, "W", ternary(3, 8, Granularity::Group(4))),
        );
        assert!(
            matches!(&e, EmitError::Layout(m) if m.contains("per-channel")),
            "{e:?}"
        );
        let exact = crate::quant::Ternary {
            lossless: true,
            ..ternary(3, 8, Granularity::Group(4))
        };
        let e = emit_err(&INT8, &g, &Job::new(&g, "W", exact));
        assert!(
            matches!(&e, EmitError::Layout(m) if m.contains("one scale per 4 inputs")
                && m.contains("--tensorrt-int8") && m.contains("--lossless-group off")),
            "{e:?}"
        );
    }

    #[test]
    fn float16_scales_and_bfloat16_refused() {
        let g = matmul(128, 2);
        let mut job = Job::new(&g, "W", ternary(2, 128, Granularity::Channel));
        job.dtype = DataType::Float16 as i32;
        let (out, bytes, em) = run(&INT4_64, &g, &job).unwrap();
        assert_eq!(bytes, 128 + 8);
        assert_eq!(f16s(init(&out, "W_scale")), [1.0, 2.0, 1.0, 2.0]);
        assert_eq!(em.min_opset, 21);
        job.dtype = DataType::Bfloat16 as i32;
        for trt in [INT4_64, INT8] {
            let e = emit_err(&trt, &g, &job);
            assert!(
                matches!(
                    e,
                    EmitError::ElementType {
                        dtype: "bfloat16",
                        ..
                    }
                ),
                "{e:?}"
            );
        }
    }
}
