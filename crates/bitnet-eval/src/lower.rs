//! Lowering a graph for tract: constant `DequantizeLinear` nodes that tract cannot run (INT2,
//! UINT2, INT4, UINT4 codes, blocked scales, float16/bfloat16 scales) are evaluated here and
//! replaced by an initializer holding the exact dequantized value. Everything else, including
//! `com.microsoft::MatMulNBits` (which tract runs natively), is left untouched.

use std::collections::HashMap;
use std::path::Path;

use bitnet_model::proto::tensor_proto::DataType;
use bitnet_model::proto::{ModelProto, NodeProto, TensorProto};
use bitnet_model::tensor;

use crate::error::{EvalError, Result};

/// Unpacks `count` INT2 values stored four per byte, least significant bits first, two's
/// complement (0b11 = -1).
pub fn unpack_int2(bytes: &[u8], count: usize) -> Vec<i8> {
    (0..count)
        .map(|i| {
            let q = (bytes[i / 4] >> (2 * (i % 4))) & 0b11;
            ((q << 6) as i8) >> 6
        })
        .collect()
}

/// Unpacks `count` UINT2 values stored four per byte, least significant bits first.
pub fn unpack_uint2(bytes: &[u8], count: usize) -> Vec<u8> {
    (0..count)
        .map(|i| (bytes[i / 4] >> (2 * (i % 4))) & 0b11)
        .collect()
}

/// Unpacks `count` INT4 values stored two per byte, low nibble first, two's complement.
pub fn unpack_int4(bytes: &[u8], count: usize) -> Vec<i8> {
    (0..count)
        .map(|i| {
            let q = (bytes[i / 2] >> (4 * (i % 2))) & 0x0f;
            ((q << 4) as i8) >> 4
        })
        .collect()
}

/// Unpacks `count` UINT4 values stored two per byte, low nibble first.
pub fn unpack_uint4(bytes: &[u8], count: usize) -> Vec<u8> {
    (0..count)
        .map(|i| (bytes[i / 2] >> (4 * (i % 2))) & 0x0f)
        .collect()
}

/// Integer codes of a quantized tensor (int2/uint2/int4/uint4/int8/uint8/int16/uint16/int32)
/// as `i32`.
pub fn decode_codes(path: &Path, t: &TensorProto) -> Result<Vec<i32>> {
    let code = tensor::data_type(path, t)?;
    let count = tensor::element_count(path, t)? as usize;
    let raw = tensor::raw_bytes(path, t)?;
    let name = t.name.clone().unwrap_or_default();
    let dt = DataType::try_from(code).map_err(|_| EvalError::Node {
        model: path.display().to_string(),
        node: name.clone(),
        reason: format!("unknown data type {code}"),
    })?;
    Ok(match dt {
        DataType::Int2 => unpack_int2(&raw, count)
            .into_iter()
            .map(i32::from)
            .collect(),
        DataType::Uint2 => unpack_uint2(&raw, count)
            .into_iter()
            .map(i32::from)
            .collect(),
        DataType::Int4 => unpack_int4(&raw, count)
            .into_iter()
            .map(i32::from)
            .collect(),
        DataType::Uint4 => unpack_uint4(&raw, count)
            .into_iter()
            .map(i32::from)
            .collect(),
        DataType::Int8 => raw.iter().map(|&b| b as i8 as i32).collect(),
        DataType::Uint8 => raw.iter().map(|&b| b as i32).collect(),
        DataType::Int16 => raw
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]) as i32)
            .collect(),
        DataType::Uint16 => raw
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]) as i32)
            .collect(),
        DataType::Int32 => raw
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        _ => {
            return Err(EvalError::Node {
                model: path.display().to_string(),
                node: name,
                reason: format!(
                    "DequantizeLinear codes of type {} are not supported",
                    bitnet_model::dtype::name(code)
                ),
            })
        }
    })
}

fn attr_i(node: &NodeProto, name: &str) -> Option<i64> {
    node.attribute
        .iter()
        .find(|a| a.name.as_deref() == Some(name))
        .and_then(|a| a.i)
}

/// A dequantized constant: values as `f32`, dims, and the ONNX type of the result (the
/// scale's type).
#[derive(Debug, Clone)]
pub struct Dequantized {
    pub values: Vec<f32>,
    pub dims: Vec<i64>,
    pub data_type: i32,
}

/// Evaluates `DequantizeLinear(x, scale, zero_point)` on constant tensors following the ONNX
/// rules: per-tensor (scalar scale), per-axis (1-D scale along `axis`, default 1) or blocked
/// (`block_size` > 0: scale of x's rank with `ceil(d / block_size)` along `axis`).
/// `y = (x - zero_point) * scale`, computed in `f32` and rounded once to the scale's type.
pub fn dequantize(
    model: &str,
    node: &NodeProto,
    x: &TensorProto,
    scale: &TensorProto,
    zero_point: Option<&TensorProto>,
) -> Result<Dequantized> {
    let path = Path::new(model);
    let node_name = node.name.clone().unwrap_or_default();
    let fail = |reason: String| EvalError::Node {
        model: model.to_string(),
        node: node_name.clone(),
        reason,
    };
    let codes = decode_codes(path, x)?;
    let scales = tensor::to_f32(path, scale)?;
    let zps = match zero_point {
        Some(z) => decode_codes(path, z)?,
        None => vec![0; scales.len()],
    };
    if zps.len() != scales.len() {
        return Err(fail(format!(
            "zero point has {} elements, scale has {}",
            zps.len(),
            scales.len()
        )));
    }
    let shape: Vec<usize> = x.dims.iter().map(|&d| d as usize).collect();
    let rank = shape.len() as i64;
    let block_size = attr_i(node, "block_size").unwrap_or(0);
    let mut axis = attr_i(node, "axis").unwrap_or(1);
    if axis < 0 {
        axis += rank;
    }
    let per_tensor = scale.dims.iter().product::<i64>() == 1 && block_size <= 0;
    let index: Box<dyn Fn(usize) -> usize> = if per_tensor {
        Box::new(|_| 0)
    } else {
        if axis < 0 || axis >= rank {
            return Err(fail(format!("axis {axis} out of range for rank {rank}")));
        }
        let ax = axis as usize;
        let len = shape[ax];
        let inner: usize = shape[ax + 1..].iter().product();
        if block_size > 0 {
            let bs = block_size as usize;
            let nb = len.div_ceil(bs);
            let mut want = x.dims.clone();
            want[ax] = nb as i64;
            if scale.dims != want {
                return Err(fail(format!(
                    "blocked scale has dims {:?}, expected {want:?} (block_size {bs}, axis {ax})",
                    scale.dims
                )));
            }
            Box::new(move |i| {
                let o = i / (len * inner);
                let a = (i / inner) % len;
                let r = i % inner;
                (o * nb + a / bs) * inner + r
            })
        } else {
            if scale.dims.len() != 1 || scale.dims[0] as usize != len {
                return Err(fail(format!(
                    "per-axis scale has dims {:?}, expected [{len}] (axis {ax})",
                    scale.dims
                )));
            }
            Box::new(move |i| (i / inner) % len)
        }
    };
    let values: Vec<f32> = codes
        .iter()
        .enumerate()
        .map(|(i, &q)| {
            let s = index(i);
            (q - zps[s]) as f32 * scales[s]
        })
        .collect();
    let data_type = scale.data_type.unwrap_or(DataType::Float as i32);
    Ok(Dequantized {
        values,
        dims: x.dims.clone(),
        data_type,
    })
}

impl Dequantized {
    /// The value as an initializer of the scale's type (float32, float16 or bfloat16).
    pub fn to_tensor(&self, name: &str) -> TensorProto {
        tensor::from_f32_as(name, self.data_type, &self.dims, &self.values)
    }
}

/// True when tract cannot run this `DequantizeLinear` itself.
fn tract_lacks(node: &NodeProto, x: &TensorProto, scale: &TensorProto) -> bool {
    let narrow = [
        DataType::Int2 as i32,
        DataType::Uint2 as i32,
        DataType::Int4 as i32,
        DataType::Uint4 as i32,
    ];
    let half = [DataType::Float16 as i32, DataType::Bfloat16 as i32];
    narrow.contains(&x.data_type.unwrap_or(0))
        || attr_i(node, "block_size").unwrap_or(0) > 0
        || half.contains(&scale.data_type.unwrap_or(0))
}

/// Finds the constant inputs (initializers) of a `DequantizeLinear`, if all of them are.
pub(crate) fn constant_dq_inputs<'a>(
    node: &NodeProto,
    inits: &HashMap<&str, &'a TensorProto>,
) -> Option<(&'a TensorProto, &'a TensorProto, Option<&'a TensorProto>)> {
    if node.op_type.as_deref() != Some("DequantizeLinear")
        || !matches!(node.domain.as_deref(), None | Some("") | Some("ai.onnx"))
    {
        return None;
    }
    let get = |i: usize| node.input.get(i).filter(|s| !s.is_empty());
    let x = inits.get(get(0)?.as_str())?;
    let s = inits.get(get(1)?.as_str())?;
    let z = match get(2) {
        Some(n) => Some(*inits.get(n.as_str())?),
        None => None,
    };
    Some((x, s, z))
}

/// Returns a copy of `model` that tract can run and that computes the same values: constant
/// `DequantizeLinear` nodes tract cannot run are replaced by initializers holding their exact
/// output. Other nodes are untouched. Initializers left unused are dropped.
pub fn lower_for_tract(model: &ModelProto) -> Result<ModelProto> {
    lower_for_tract_named(model, "<model>")
}

/// [`lower_for_tract`] with a label (usually the model path) used in error messages.
pub fn lower_for_tract_named(model: &ModelProto, label: &str) -> Result<ModelProto> {
    let mut out = model.clone();
    let Some(graph) = out.graph.as_mut() else {
        return Err(EvalError::Mismatch {
            model: label.to_string(),
            reason: "model has no graph".into(),
        });
    };
    let mut new_inits = Vec::new();
    let mut keep = Vec::with_capacity(graph.node.len());
    {
        let inits: HashMap<&str, &TensorProto> = graph
            .initializer
            .iter()
            .filter_map(|t| t.name.as_deref().map(|n| (n, t)))
            .collect();
        for node in &graph.node {
            if let Some((x, s, z)) = constant_dq_inputs(node, &inits) {
                if tract_lacks(node, x, s) {
                    let dq = dequantize(label, node, x, s, z)?;
                    let name = node.output.first().cloned().unwrap_or_default();
                    new_inits.push(dq.to_tensor(&name));
                    keep.push(false);
                    continue;
                }
            }
            keep.push(true);
        }
    }
    if new_inits.is_empty() {
        return Ok(out);
    }
    let mut it = keep.iter();
    graph.node.retain(|_| *it.next().unwrap());
    graph.initializer.extend(new_inits);
    // Drop initializers nobody reads any more (the packed codes and their scales).
    let mut used: std::collections::HashSet<String> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().cloned())
        .collect();
    used.extend(graph.output.iter().filter_map(|o| o.name.clone()));
    let captured = {
        let idx = bitnet_model::GraphIndex::new(graph);
        graph
            .initializer
            .iter()
            .filter_map(|t| t.name.clone())
            .filter(|n| idx.is_captured(n))
            .collect::<Vec<_>>()
    };
    used.extend(captured);
    let before: Vec<String> = graph
        .initializer
        .iter()
        .filter_map(|t| t.name.clone())
        .collect();
    graph
        .initializer
        .retain(|t| used.contains(t.name.as_deref().unwrap_or("")));
    let after: std::collections::HashSet<&str> = graph
        .initializer
        .iter()
        .filter_map(|t| t.name.as_deref())
        .collect();
    let dropped: std::collections::HashSet<&String> = before
        .iter()
        .filter(|n| !after.contains(n.as_str()))
        .collect();
    // Graph inputs that named a dropped initializer (IR < 4 style) go too.
    graph
        .input
        .retain(|v| !dropped.contains(&v.name.clone().unwrap_or_default()));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int2_unpacks_lsb_first_twos_complement() {
        // 1, -1, 0, -2 -> 0b01, 0b11, 0b00, 0b10
        let b = 0b01 | 0b11 << 2 | 0b10 << 6;
        assert_eq!(unpack_int2(&[b, 0b11], 5), vec![1, -1, 0, -2, -1]);
        assert_eq!(unpack_uint2(&[b], 4), vec![1, 3, 0, 2]);
    }

    #[test]
    fn int4_unpacks_low_nibble_first() {
        assert_eq!(unpack_int4(&[0xF7, 0x08], 3), vec![7, -1, -8]);
        assert_eq!(unpack_uint4(&[0xF7, 0x08], 4), vec![7, 15, 8, 0]);
    }
}
