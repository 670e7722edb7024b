//! `--target qdq-int8`: ternary codes as INT8 initializers, a per-tensor, per-axis or blocked
//! float `DequantizeLinear` feeding the original `MatMul`/`Gemm` (bias and attributes
//! unchanged). Runs on every ONNX runtime; 4x smaller than float32 weights.

use bitnet_model::proto::{AttributeProto, GraphProto, NodeProto};
use bitnet_model::tensor;

use super::{Emitted, Emitter, NameGen, WeightJob};
use crate::analyse::Layout;
use crate::convert::ConvertError;
use crate::pack;

pub struct QdqInt8;

fn int_attr(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        i: Some(v),
        r#type: Some(bitnet_model::proto::attribute_proto::AttributeType::Int as i32),
        ..Default::default()
    }
}

impl Emitter for QdqInt8 {
    fn name(&self) -> &'static str {
        "qdq-int8"
    }

    fn dequantize_linear_weights(&self) -> bool {
        true
    }

    fn emit(
        &self,
        graph: &mut GraphProto,
        job: &WeightJob,
        names: &mut NameGen,
    ) -> Result<Emitted, ConvertError> {
        let t = job.ternary;
        let transposed = job.layers[0].layout == Layout::NK;
        let dims: Vec<i64> = if transposed {
            vec![t.n as i64, t.k as i64]
        } else {
            vec![t.k as i64, t.n as i64]
        };
        let codes = pack::codes_in_onnx_order(t, transposed);
        let (scales, scale_dims, axis, block) = pack::dq_scales(t, transposed);
        let codes_name = names.fresh(&format!("{}_ternary_int8", job.weight));
        let scale_name = names.fresh(&format!("{}_scale", job.weight));
        let out_name = names.fresh(&format!("{}_dequantized", job.weight));
        let node_name = names.fresh(&format!("{}_DequantizeLinear", job.weight));
        graph
            .initializer
            .push(tensor::from_i8(&codes_name, &dims, &codes));
        graph.initializer.push(tensor::from_f32_as(
            &scale_name,
            job.dtype,
            &scale_dims,
            &scales,
        ));
        let mut attribute = Vec::new();
        if let Some(a) = axis {
            attribute.push(int_attr("axis", a));
        }
        if let Some(b) = block {
            attribute.push(int_attr("block_size", b));
        }
        let dq = NodeProto {
            name: Some(node_name),
            op_type: Some("DequantizeLinear".into()),
            input: vec![codes_name, scale_name],
            output: vec![out_name.clone()],
            attribute,
            ..Default::default()
        };
        graph.node.insert(0, dq);
        for layer in job.layers {
            // Node indices shift by one for every node inserted at the front: find by output.
            if let Some(n) = graph.node.iter_mut().find(|n| {
                n.output.first() == Some(&layer.output)
                    && n.input.get(1) == Some(&layer.weight.to_string())
            }) {
                n.input[1] = out_name.clone();
            }
        }
        let scale_bytes =
            bitnet_model::dtype::byte_len(job.dtype, scales.len() as u64).unwrap_or(0);
        let min_opset = if block.is_some() {
            21
        } else if job.dtype != bitnet_model::proto::tensor_proto::DataType::Float as i32 {
            19
        } else if axis.is_some() {
            13
        } else {
            10
        };
        Ok(Emitted {
            bytes: codes.len() as u64 + scale_bytes,
            min_opset,
        })
    }
}
