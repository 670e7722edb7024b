//! `--target ort`: ONNX Runtime's `com.microsoft::MatMulNBits` with bits = 2 (docs/formats.md 2.1).
//! `B` is uint8 `[N, ceil(K / block_size), block_size / 4]` (codes `t + 2`, four per byte, least
//! significant bits first, K padded with code 2), `scales` `[N, blocks]` in the activation type,
//! zero points omitted (default 2). Each MatMul/Gemm node is replaced in place by a
//! MatMulNBits node keeping its name and output. Gemm is converted whatever its attributes:
//! `transA` becomes a Transpose, `alpha` is folded into the scales, `beta * C` becomes the bias
//! input when C is a constant vector or scalar, else an Add after the node.

use bitnet_model::proto::tensor_proto::DataType;
use bitnet_model::proto::{GraphProto, NodeProto};
use bitnet_model::tensor;

use super::dq::int_attr;
use super::linear::{self, Bias};
use super::{Edit, EmitContext, EmitError, Emitted, Emitter, Patch, WeightJob};
use crate::pack;

pub struct Ort {
    /// Block size along K; `None` picks [`default_block_size`] per weight.
    pub block_size: Option<usize>,
    /// 0: float activations (exact); 4: int8 activations (fast at M = 1).
    pub accuracy_level: i64,
}

/// The default block size: 128 (the fastest in `bench/ort_targets.py` at both M=1 and M=128),
/// but no larger than K rounded up to a power of two (at least 16), so small layers are not
/// padded to twice their size.
pub fn default_block_size(k: usize) -> usize {
    k.next_power_of_two().clamp(16, 128)
}

impl Emitter for Ort {
    fn target(&self) -> &'static crate::targets::Target {
        crate::targets::get(crate::targets::Id::Ort)
    }

    fn dequantize_linear_weights(&self) -> bool {
        false
    }

    fn activations(&self) -> String {
        if self.accuracy_level == 4 {
            "int8, quantized by MatMulNBits per block of K (accuracy_level 4)".to_string()
        } else {
            format!("float (MatMulNBits accuracy_level {})", self.accuracy_level)
        }
    }

    fn emit(
        &self,
        g: &GraphProto,
        job: &WeightJob,
        names: &mut EmitContext,
    ) -> Result<Emitted, EmitError> {
        let t = job.ternary;
        if job.dtype == DataType::Bfloat16 as i32 {
            return Err(EmitError::ElementType {
                dtype: "bfloat16",
                why: "ONNX Runtime's CPU MatMulNBits has no bfloat16 kernel; use --target qdq-int8",
            });
        }
        let block = self.block_size.unwrap_or_else(|| default_block_size(t.k));
        let b = pack::pack_matmulnbits_2bit(t, block)?;
        let b_shape = pack::matmulnbits_b_shape(t.n, t.k, block, 2)?;
        let base_scales = pack::matmulnbits_scales(t, block)?;
        let s_shape = pack::matmulnbits_scales_shape(t.n, t.k, block)?;
        let mut patch = Patch::default();
        let b_name = patch.weight(tensor::from_raw(
            &names.fresh(&format!("{}_MatMulNBits_B", job.weight)),
            DataType::Uint8,
            &b_shape.map(|d| d as i64),
            b,
        ));
        let mut scale_names: Vec<(u32, String)> = Vec::new();
        for layer in job.layers {
            let Some(lin) = linear::take(g, job, layer, names, &mut patch) else {
                continue;
            };
            // Scales (alpha folded in), shared by layers with the same alpha.
            let key = lin.alpha.to_bits();
            let scales_name = match scale_names.iter().find(|(k, _)| *k == key) {
                Some((_, n)) => n.clone(),
                None => {
                    let n = names.fresh(&format!("{}_MatMulNBits_scales", job.weight));
                    let vals: Vec<f32> = base_scales.iter().map(|s| s * lin.alpha).collect();
                    patch.weight(tensor::from_f32_as(
                        &n,
                        job.dtype,
                        &s_shape.map(|d| d as i64),
                        &vals,
                    ));
                    scale_names.push((key, n.clone()));
                    n
                }
            };
            let mut inputs = vec![lin.a.clone(), b_name.clone(), scales_name];
            let mut output = layer.output.clone();
            let mut after = Vec::new();
            match &lin.bias {
                Bias::None => {}
                // The bias input (index 5), after the absent zero points and g_idx.
                Bias::Vector(v) => {
                    let bn = names.fresh(&format!("{}_bias", lin.node.input[2]));
                    patch.constant(tensor::from_f32_as(&bn, job.dtype, &[t.n as i64], v));
                    inputs.extend([String::new(), String::new(), bn]);
                }
                // Matrix or run-time C: Y = MatMulNBits(...) + beta * C.
                Bias::Value(c) => {
                    let mm_out = names.fresh(&format!("{}_matmul", layer.output));
                    after.push(NodeProto {
                        name: Some(names.fresh(&format!("{}_AddC", layer.node))),
                        op_type: Some("Add".into()),
                        input: vec![mm_out.clone(), c.clone()],
                        output: vec![layer.output.clone()],
                        ..Default::default()
                    });
                    output = mm_out;
                }
            }
            let mut attribute = vec![
                int_attr("K", t.k as i64),
                int_attr("N", t.n as i64),
                int_attr("bits", 2),
                int_attr("block_size", block as i64),
            ];
            if self.accuracy_level != 0 {
                attribute.push(int_attr("accuracy_level", self.accuracy_level));
            }
            let nbits = NodeProto {
                name: lin.node.name.clone(),
                op_type: Some("MatMulNBits".into()),
                domain: Some("com.microsoft".into()),
                input: inputs,
                output: vec![output],
                attribute,
                doc_string: lin.node.doc_string.clone(),
                ..Default::default()
            };
            let mut replacement = lin.before;
            replacement.push(nbits);
            replacement.extend(after);
            patch.edit(Edit::Replace {
                output: layer.output.clone(),
                weight: job.weight.to_string(),
                nodes: replacement,
            });
        }
        Ok(Emitted {
            patch,
            min_opset: 0,
            ..Default::default()
        })
    }

    fn domains(&self) -> &'static [(&'static str, i64)] {
        &[("com.microsoft", 1)]
    }
}
