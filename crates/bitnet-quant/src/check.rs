//! `bitnet-onnx check --target tensorrt`: lints a model against TensorRT's rules for explicit
//! (Q/DQ) weight quantization as the TensorRT 10.x ONNX parser documents them (docs/formats.md 2.3):
//! default-domain opset 13..=24, no contrib or custom domains, no INT2/UINT2 tensors, symmetric
//! quantization (zero point absent or all zeros), constant scales, blocked quantization only
//! for INT4 with block size 64 or 128 (opset 21+), INT4 only blocked, and DequantizeLinear
//! applied directly to an initializer when it quantizes a weight.

use std::path::Path;

use bitnet_model::graph::GraphIndex;
use bitnet_model::proto::tensor_proto::DataType;
use bitnet_model::proto::{ModelProto, NodeProto};
use bitnet_model::{tensor, walk};
use serde::Serialize;

use crate::targets::tensorrt;

/// One broken rule.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Violation {
    pub rule: &'static str,
    /// Node or tensor the violation is about ("model" for model-wide rules).
    pub at: String,
    pub message: String,
}

use bitnet_model::node::attr_i;

fn label(n: &NodeProto, i: usize) -> String {
    crate::analyse::node_label(n, i)
}

/// Checks `model` against TensorRT's quantization rules; an empty list means it passes.
pub fn check_tensorrt(model: &ModelProto, path: &Path) -> Vec<Violation> {
    let mut v = Vec::new();
    let mut push =
        |rule: &'static str, at: String, message: String| v.push(Violation { rule, at, message });
    for o in &model.opset_import {
        let d = o.domain.as_deref().unwrap_or("");
        let ver = o.version.unwrap_or(0);
        if bitnet_model::node::is_default_domain(Some(d)) {
            if !tensorrt::OPSETS.contains(&ver) {
                push("opset", "model".into(), format!("default-domain opset {ver}: TensorRT 10.x parses opsets {} to {} for explicit quantization", tensorrt::OPSETS.start(), tensorrt::OPSETS.end()));
            }
        } else if d != "ai.onnx.ml" {
            push("domain", "model".into(), format!("imports domain '{d}': TensorRT's parser has no ops from it (contrib ops such as MatMulNBits are not supported)"));
        }
    }
    walk::for_each_graph(model, &mut |g| {
        let index = GraphIndex::new(g);
        for t in &g.initializer {
            let dt = t.data_type.unwrap_or(0);
            if dt == DataType::Int2 as i32 || dt == DataType::Uint2 as i32 {
                push(
                    "no-int2",
                    t.name.clone().unwrap_or_default(),
                    format!(
                        "{} tensor: TensorRT has no 2-bit types",
                        bitnet_model::dtype::name(dt)
                    ),
                );
            }
        }
        for (i, n) in g.node.iter().enumerate() {
            let at = label(n, i);
            let d = n.domain.as_deref().unwrap_or("");
            if !(bitnet_model::node::is_default_domain(Some(d)) || d == "ai.onnx.ml") {
                push(
                    "domain",
                    at.clone(),
                    format!(
                        "op {d}::{} is not in TensorRT's parser",
                        n.op_type.as_deref().unwrap_or("")
                    ),
                );
                continue;
            }
            let op = n.op_type.as_deref().unwrap_or("");
            if op != "DequantizeLinear" && op != "QuantizeLinear" {
                continue;
            }
            let x = n.input.first().map(String::as_str).unwrap_or("");
            let x_init = index.initializer(x);
            let x_type = x_init
                .and_then(|t| t.data_type)
                .or_else(|| index.elem_type(x))
                .unwrap_or(0);
            // Constant scales.
            if let Some(s) = n.input.get(1) {
                match index.initializer(s) {
                    None => push("constant-scale", at.clone(), format!("scale '{s}' is not an initializer: TensorRT needs build-time constant scales")),
                    Some(t) if t.data_type != Some(DataType::Float as i32) && t.data_type != Some(DataType::Float16 as i32) => {
                        push("scale-type", at.clone(), format!("scale '{s}' is {}: float32 or float16 expected", bitnet_model::dtype::name(t.data_type.unwrap_or(0))))
                    }
                    _ => {}
                }
            }
            // Symmetric: zero point absent or all zeros.
            if let Some(z) = n.input.get(2).filter(|z| !z.is_empty()) {
                match index.initializer(z) {
                    Some(t) => {
                        let nonzero = tensor::raw_bytes(path, t)
                            .map(|b| b.iter().any(|&x| x != 0))
                            .unwrap_or(true);
                        if nonzero {
                            push("symmetric", at.clone(), format!("zero point '{z}' is not all zeros: TensorRT quantization is symmetric"));
                        }
                    }
                    None => push(
                        "symmetric",
                        at.clone(),
                        format!("zero point '{z}' is not a constant"),
                    ),
                }
            }
            let block = attr_i(n, "block_size").filter(|&b| b != 0);
            let is_int4 = x_type == DataType::Int4 as i32 || x_type == DataType::Uint4 as i32;
            if let Some(b) = block {
                if !is_int4 {
                    push(
                        "block",
                        at.clone(),
                        format!(
                            "blocked quantization of {}: TensorRT blocks only INT4 weights",
                            bitnet_model::dtype::name(x_type)
                        ),
                    );
                } else if !tensorrt::INT4_BLOCK_SIZES.contains(&b) {
                    push(
                        "block",
                        at.clone(),
                        format!("block_size {b}: TensorRT supports 64 or 128"),
                    );
                }
            } else if is_int4 && op == "DequantizeLinear" {
                push(
                    "block",
                    at.clone(),
                    "INT4 weights must be block-quantized (block_size 64 or 128)".into(),
                );
            }
            if op == "DequantizeLinear"
                && x_type != 0
                && !matches!(
                    DataType::try_from(x_type),
                    Ok(DataType::Float | DataType::Float16 | DataType::Bfloat16)
                )
                && x_init.is_none()
            {
                // Integer input that is not an initializer: activations are fine only after a QuantizeLinear.
                let from_q = index
                    .producer(x)
                    .map(|p| g.node[p].op_type.as_deref() == Some("QuantizeLinear"))
                    .unwrap_or(false);
                if !from_q {
                    push("dq-on-weight", at.clone(), format!("input '{x}' is neither an initializer nor a QuantizeLinear output: weights must be dequantized directly from an initializer"));
                }
            }
        }
    });
    v
}
