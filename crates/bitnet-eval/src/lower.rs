//! Lowering a graph for tract: constant `DequantizeLinear` nodes that tract cannot run (INT2,
//! UINT2, INT4, UINT4 codes, blocked scales, float16/bfloat16 scales) are evaluated here and
//! replaced by an initializer holding the exact dequantized value. Everything else, including
//! `com.microsoft::MatMulNBits` (which tract runs natively), is left untouched.

use std::collections::HashMap;
use std::path::Path;

use bitnet_model::proto::tensor_proto::DataType;
use bitnet_model::proto::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};
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

use bitnet_model::node::attr_i;

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
        || !bitnet_model::node::in_default_domain(node)
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
/// output (initializers left unused are dropped), `MatMulNBits` nodes whose K is not a whole
/// number of blocks become a float `MatMul` on the dequantized weight, and int64 `CumSum`
/// runs through float64 (see [`lower_int64_cumsum`]). Other nodes are untouched.
pub fn lower_for_tract(model: &ModelProto) -> Result<ModelProto> {
    lower_for_tract_named(model, "<model>")
}

/// [`lower_for_tract`] with a label (usually the model path) used in error messages.
pub fn lower_for_tract_named(model: &ModelProto, label: &str) -> Result<ModelProto> {
    let mut out = lower_constant_dq(model, label)?;
    if let Some(graph) = out.graph.as_mut() {
        lower_unaligned_matmulnbits(graph, label)?;
        lower_gather_block_quantized(graph, label)?;
        lower_int64_cumsum(graph);
    }
    Ok(out)
}

/// Constant `DequantizeLinear` nodes tract cannot run become initializers holding their
/// output; initializers left unused are dropped.
fn lower_constant_dq(model: &ModelProto, label: &str) -> Result<ModelProto> {
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

/// tract's ONNX front end reads `Cast(to = INT64)` as a cast to its symbolic-dimension type,
/// for which its `CumSum` has no kernel ("TDim is not a number"); transformers' attention-mask
/// code cumsums such a cast (positions of packed sequences). An int64 `CumSum` is computed here
/// through float64 instead: `Cast(DOUBLE) -> CumSum -> Cast(INT64)`, exact while the partial
/// sums stay below 2^53 in magnitude. Returns the number of nodes rewritten.
pub(crate) fn lower_int64_cumsum(graph: &mut GraphProto) -> usize {
    let targets: Vec<usize> = {
        let idx = bitnet_model::GraphIndex::new(graph);
        graph
            .node
            .iter()
            .enumerate()
            .filter(|(_, n)| {
                n.op_type.as_deref() == Some("CumSum") && bitnet_model::node::in_default_domain(n)
            })
            .filter(|(_, n)| {
                let Some(x) = n.input.first() else {
                    return false;
                };
                let cast_to_i64 = idx.producer(x).is_some_and(|p| {
                    let p = idx.node(p);
                    p.op_type.as_deref() == Some("Cast")
                        && attr_i(p, "to") == Some(DataType::Int64 as i32 as i64)
                });
                cast_to_i64 || idx.elem_type(x) == Some(DataType::Int64 as i32)
            })
            .map(|(i, _)| i)
            .collect()
    };
    if targets.is_empty() {
        return 0;
    }
    let mut used: std::collections::HashSet<String> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().chain(&n.output).cloned())
        .chain(graph.initializer.iter().filter_map(|t| t.name.clone()))
        .chain(graph.input.iter().filter_map(|v| v.name.clone()))
        .collect();
    let mut fresh = |base: String| {
        let mut name = base.clone();
        let mut k = 2;
        while !used.insert(name.clone()) {
            name = format!("{base}_{k}");
            k += 1;
        }
        name
    };
    let cast = |input: String, output: String, to: DataType| NodeProto {
        op_type: Some("Cast".into()),
        input: vec![input],
        output: vec![output],
        attribute: vec![AttributeProto {
            name: Some("to".into()),
            r#type: Some(bitnet_model::proto::attribute_proto::AttributeType::Int as i32),
            i: Some(to as i32 as i64),
            ..Default::default()
        }],
        ..Default::default()
    };
    // Back to front, so the indices of the nodes still to rewrite stay valid.
    for &i in targets.iter().rev() {
        let x = graph.node[i].input[0].clone();
        let y = graph.node[i].output.first().cloned().unwrap_or_default();
        let xf = fresh(format!("{x}__as_f64"));
        let yf = fresh(format!("{y}__as_f64"));
        graph.node[i].input[0] = xf.clone();
        if let Some(o) = graph.node[i].output.first_mut() {
            *o = yf.clone();
        }
        graph.node.insert(i + 1, cast(yf, y, DataType::Int64));
        graph.node.insert(i, cast(x, xf, DataType::Double));
    }
    targets.len()
}

/// The exact dequantized `[K, N]` weight of a `MatMulNBits` node with constant codes and
/// scales and no zero points: `W[k][n] = (code - 2^(bits - 1)) * scale[n][k / block_size]`, in
/// the scales' type. `None` when the node's inputs are not such constants.
pub fn matmulnbits_weight(
    label: &str,
    graph: &GraphProto,
    n: &NodeProto,
) -> Result<Option<Dequantized>> {
    let get = |j: usize| n.input.get(j).filter(|s| !s.is_empty()).cloned();
    let (Some(k), Some(nn), Some(bs)) = (attr_i(n, "K"), attr_i(n, "N"), attr_i(n, "block_size"))
    else {
        return Ok(None);
    };
    let bits = attr_i(n, "bits").unwrap_or(4);
    if bs <= 0 || get(3).is_some() || get(4).is_some() {
        return Ok(None);
    }
    let find = |name: &Option<String>| {
        name.as_ref().and_then(|nm| {
            graph
                .initializer
                .iter()
                .find(|t| t.name.as_ref() == Some(nm))
        })
    };
    let (Some(b), Some(scales)) = (find(&get(1)), find(&get(2))) else {
        return Ok(None);
    };
    let node_name = n.name.clone().unwrap_or_default();
    let bad = |reason: String| EvalError::Node {
        model: label.to_string(),
        node: node_name.clone(),
        reason,
    };
    if !matches!(bits, 2 | 4 | 8) {
        return Err(bad(format!("MatMulNBits bits = {bits}")));
    }
    let (k, nn, bs, bits) = (k as usize, nn as usize, bs as usize, bits as usize);
    let n_blocks = k.div_ceil(bs);
    let blob = bs * bits / 8;
    let path = Path::new(label);
    let codes = tensor::raw_bytes(path, b)?;
    let scale_values = tensor::to_f32(path, scales)?;
    if codes.len() != nn * n_blocks * blob || scale_values.len() != nn * n_blocks {
        return Err(bad(format!(
            "B holds {} bytes and scales {} values; K = {k}, N = {nn}, block_size = {bs} \
                 need {} and {}",
            codes.len(),
            scale_values.len(),
            nn * n_blocks * blob,
            nn * n_blocks
        )));
    }
    let mask = (1u16 << bits) - 1;
    let zero = 1i32 << (bits - 1);
    let mut w = vec![0f32; k * nn];
    for col in 0..nn {
        for row in 0..k {
            let (blk, within) = (row / bs, row % bs);
            let byte = codes[(col * n_blocks + blk) * blob + within * bits / 8];
            let q = ((byte as u16 >> ((within * bits) % 8)) & mask) as i32;
            w[row * nn + col] = (q - zero) as f32 * scale_values[col * n_blocks + blk];
        }
    }
    Ok(Some(Dequantized {
        values: w,
        dims: vec![k as i64, nn as i64],
        data_type: scales.data_type.unwrap_or(DataType::Float as i32),
    }))
}

/// tract's `MatMulNBits` kernel needs K to be a whole number of its blocks (ONNX Runtime
/// pads the last block with codes of zero weight) and takes 2 and 4 bits only. A `MatMulNBits`
/// with constant codes and scales, no zero points (the default, the middle code), and K not a
/// multiple of `block_size` or 8-bit codes (the LM head's `--head int8`) is computed here as
/// `MatMul(A, W)` (+ bias) on its exact dequantized `[K, N]` weight
/// `W[k][n] = (code - 2^(bits - 1)) * scale[n][k / block_size]`, in the scales' type. This is
/// the float product; ONNX Runtime's `accuracy_level` 4 quantizes A, which verify's
/// tolerance covers as it does for tract's own kernel. Returns the number of nodes rewritten.
pub(crate) fn lower_unaligned_matmulnbits(graph: &mut GraphProto, label: &str) -> Result<usize> {
    lower_matmulnbits(graph, label, false)
}

/// Every `MatMulNBits` with constant codes and scales computed as the exact float product
/// (see [`lower_unaligned_matmulnbits`]), whatever its K, bits and `accuracy_level`: what
/// its weights compute, without the int8 activations tract's kernel and ONNX Runtime's
/// `accuracy_level` 4 use. verify judges converted layers this way.
pub(crate) fn lower_every_matmulnbits(graph: &mut GraphProto, label: &str) -> Result<usize> {
    lower_matmulnbits(graph, label, true)
}

fn lower_matmulnbits(graph: &mut GraphProto, label: &str, all: bool) -> Result<usize> {
    let mut count = 0;
    let mut i = 0;
    while i < graph.node.len() {
        let n = &graph.node[i];
        let is_nbits = n.op_type.as_deref() == Some("MatMulNBits")
            && n.domain.as_deref() == Some("com.microsoft");
        let (Some(k), Some(bs)) = (attr_i(n, "K"), attr_i(n, "block_size")) else {
            i += 1;
            continue;
        };
        let bits = attr_i(n, "bits").unwrap_or(4);
        let tract_runs = !all && bs > 0 && k % bs == 0 && bits != 8;
        let weight = if is_nbits && !tract_runs {
            matmulnbits_weight(label, graph, n)?
        } else {
            None
        };
        let Some(weight) = weight else {
            i += 1;
            continue;
        };
        let get = |j: usize| n.input.get(j).filter(|s| !s.is_empty()).cloned();
        let node_name = n.name.clone().unwrap_or_default();
        let y = n.output.first().cloned().unwrap_or_default();
        let w_name = format!("{y}__dequantized_b");
        let w_tensor = weight.to_tensor(&w_name);
        let a = n.input[0].clone();
        let bias = get(5);
        let product = if bias.is_some() {
            format!("{y}__product")
        } else {
            y.clone()
        };
        let mut nodes = vec![NodeProto {
            op_type: Some("MatMul".into()),
            name: Some(node_name.clone()),
            input: vec![a, w_name],
            output: vec![product.clone()],
            ..Default::default()
        }];
        if let Some(bias) = bias {
            nodes.push(NodeProto {
                op_type: Some("Add".into()),
                name: Some(format!("{node_name}__bias")),
                input: vec![product, bias],
                output: vec![y],
                ..Default::default()
            });
        }
        graph.initializer.push(w_tensor);
        let added = nodes.len();
        graph.node.splice(i..=i, nodes);
        i += added;
        count += 1;
    }
    Ok(count)
}

/// The exact dequantized table of a `GatherBlockQuantized` node (see
/// [`lower_gather_block_quantized`]), shaped like its data with the last axis unpacked.
pub fn gather_block_quantized_table(
    label: &str,
    graph: &GraphProto,
    n: &NodeProto,
) -> Result<Dequantized> {
    let node_name = n.name.clone().unwrap_or_default();
    let bad = |reason: String| EvalError::Node {
        model: label.to_string(),
        node: node_name.clone(),
        reason: format!("GatherBlockQuantized: {reason}"),
    };
    let get = |j: usize| n.input.get(j).filter(|s| !s.is_empty()).cloned();
    if get(3).is_some() {
        return Err(bad("zero points are not supported here".into()));
    }
    let find = |name: Option<String>| {
        name.and_then(|nm| {
            graph
                .initializer
                .iter()
                .find(|t| t.name.as_deref() == Some(nm.as_str()))
        })
    };
    let (Some(data), Some(scales)) = (find(get(0)), find(get(2))) else {
        return Err(bad("data and scales must be initializers".into()));
    };
    let bits = attr_i(n, "bits").unwrap_or(4);
    let bs = attr_i(n, "block_size").unwrap_or(128);
    let rank = data.dims.len() as i64;
    let qaxis = attr_i(n, "quantize_axis").unwrap_or(1);
    let qaxis = if qaxis < 0 { qaxis + rank } else { qaxis };
    if data.data_type != Some(DataType::Uint8 as i32)
        || !matches!(bits, 2 | 4 | 8)
        || bs <= 0
        || attr_i(n, "gather_axis").unwrap_or(0) != 0
        || qaxis != rank - 1
        || rank < 2
    {
        return Err(bad(format!(
            "only uint8 data of 2, 4 or 8 bits with gather_axis 0 and quantize_axis last \
                 is supported (bits {bits}, block_size {bs}, rank {rank}, quantize_axis {qaxis})"
        )));
    }
    let (bits, bs) = (bits as usize, bs as usize);
    let per_byte = 8 / bits;
    let path = Path::new(label);
    let codes = tensor::raw_bytes(path, data)?;
    let scale_values = tensor::to_f32(path, scales)?;
    let dims: Vec<usize> = data.dims.iter().map(|&d| d.max(0) as usize).collect();
    let last = dims[dims.len() - 1] * per_byte;
    let outer: usize = dims[..dims.len() - 1].iter().product();
    let nb = last.div_ceil(bs);
    if codes.len() != outer * dims[dims.len() - 1] || scale_values.len() != outer * nb {
        return Err(bad(format!(
            "data holds {} bytes and scales {} values; shape {dims:?} with block_size {bs} \
                 needs {} and {}",
            codes.len(),
            scale_values.len(),
            outer * dims[dims.len() - 1],
            outer * nb
        )));
    }
    let mask = (1u16 << bits) - 1;
    let zero = 1i32 << (bits - 1);
    let mut values = vec![0f32; outer * last];
    for r in 0..outer {
        for c in 0..last {
            let byte = codes[r * dims[dims.len() - 1] + c / per_byte];
            let q = ((byte as u16 >> ((c % per_byte) * bits)) & mask) as i32;
            values[r * last + c] = (q - zero) as f32 * scale_values[r * nb + c / bs];
        }
    }
    let mut out_dims: Vec<i64> = data.dims.clone();
    if let Some(d) = out_dims.last_mut() {
        *d = last as i64;
    }
    Ok(Dequantized {
        values,
        dims: out_dims,
        data_type: scales.data_type.unwrap_or(DataType::Float as i32),
    })
}

/// tract has no `com.microsoft::GatherBlockQuantized` (the `--embeddings int4|int8` lookup).
/// One with constant uint8 data, constant scales, no zero points (ONNX Runtime's default, the
/// middle code), `gather_axis` 0 and `quantize_axis` the last axis becomes a `Gather` (axis 0)
/// on its exact dequantized table, `(code - 2^(bits - 1)) * scale`, in the scales' type: the
/// same values ONNX Runtime's kernel produces. The data's last axis holds `8 / bits` codes per
/// byte, low bits first. Returns the number of nodes rewritten.
pub(crate) fn lower_gather_block_quantized(graph: &mut GraphProto, label: &str) -> Result<usize> {
    let mut count = 0;
    for i in 0..graph.node.len() {
        let n = &graph.node[i];
        if n.op_type.as_deref() != Some("GatherBlockQuantized")
            || n.domain.as_deref() != Some("com.microsoft")
        {
            continue;
        }
        let node_name = n.name.clone().unwrap_or_default();
        let table = gather_block_quantized_table(label, graph, n)?;
        let y = n.output.first().cloned().unwrap_or_default();
        let name = format!("{y}__dequantized_table");
        let table = table.to_tensor(&name);
        let indices = n.input.get(1).cloned().unwrap_or_default();
        graph.node[i] = NodeProto {
            op_type: Some("Gather".into()),
            name: Some(node_name.clone()),
            input: vec![name, indices],
            output: vec![y],
            attribute: vec![AttributeProto {
                name: Some("axis".into()),
                r#type: Some(bitnet_model::proto::attribute_proto::AttributeType::Int as i32),
                i: Some(0),
                ..Default::default()
            }],
            ..Default::default()
        };
        graph.initializer.push(table);
        count += 1;
    }
    Ok(count)
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
    fn unaligned_matmulnbits_becomes_matmul_on_its_dequantized_weight() {
        use bitnet_model::proto::attribute_proto::AttributeType;
        // K = 20 in blocks of 16 (the second block padded), N = 2, 2-bit codes.
        let (k, n, bs) = (20usize, 2usize, 16usize);
        let code = |row: usize, col: usize| ((row * 3 + col) % 3) as u8 + 1; // 1..=3
        let mut b = vec![0u8; n * 2 * 4];
        for col in 0..n {
            for row in 0..k {
                let (blk, within) = (row / bs, row % bs);
                b[(col * 2 + blk) * 4 + within / 4] |= code(row, col) << (2 * (within % 4));
            }
            for row in k..2 * bs {
                let within = row % bs;
                b[(col * 2 + 1) * 4 + within / 4] |= 2 << (2 * (within % 4));
            }
        }
        let scales = [0.5f32, 2.0, -1.0, 0.25];
        let int = |name: &str, v: i64| AttributeProto {
            name: Some(name.into()),
            r#type: Some(AttributeType::Int as i32),
            i: Some(v),
            ..Default::default()
        };
        let mut g = GraphProto {
            node: vec![NodeProto {
                op_type: Some("MatMulNBits".into()),
                domain: Some("com.microsoft".into()),
                name: Some("mm".into()),
                input: vec![
                    "a".into(),
                    "b".into(),
                    "s".into(),
                    "".into(),
                    "".into(),
                    "bias".into(),
                ],
                output: vec!["y".into()],
                attribute: vec![
                    int("K", 20),
                    int("N", 2),
                    int("bits", 2),
                    int("block_size", 16),
                ],
                ..Default::default()
            }],
            initializer: vec![
                tensor::from_raw("b", DataType::Uint8, &[2, 2, 4], b),
                tensor::from_f32("s", &[2, 2], &scales),
            ],
            ..Default::default()
        };
        assert_eq!(lower_unaligned_matmulnbits(&mut g, "m").ok(), Some(1));
        let ops: Vec<_> = g.node.iter().map(|n| n.op_type.clone().unwrap()).collect();
        assert_eq!(ops, ["MatMul", "Add"]);
        assert_eq!(g.node[1].input[1], "bias");
        assert_eq!(g.node[1].output[0], "y");
        let w = g
            .initializer
            .iter()
            .find(|t| t.name.as_deref() == Some(g.node[0].input[1].as_str()))
            .unwrap();
        assert_eq!(w.dims, vec![20, 2]);
        let w = tensor::to_f32(Path::new("m"), w).unwrap();
        for row in 0..k {
            for col in 0..n {
                let want = (code(row, col) as f32 - 2.0) * scales[col * 2 + row / bs];
                assert_eq!(w[row * n + col], want, "row {row} col {col}");
            }
        }
        // Aligned K is left to tract's own kernel.
        let mut aligned = g.clone();
        aligned.node = vec![NodeProto {
            attribute: vec![
                int("K", 32),
                int("N", 2),
                int("bits", 2),
                int("block_size", 16),
            ],
            ..g.node[0].clone()
        }];
        aligned.node[0].op_type = Some("MatMulNBits".into());
        aligned.node[0].domain = Some("com.microsoft".into());
        assert_eq!(lower_unaligned_matmulnbits(&mut aligned, "m").ok(), Some(0));
    }

    #[test]
    fn int64_cumsum_runs_through_float64() {
        let mut g = GraphProto {
            node: vec![
                NodeProto {
                    op_type: Some("Cast".into()),
                    input: vec!["m".into()],
                    output: vec!["c".into()],
                    attribute: vec![AttributeProto {
                        name: Some("to".into()),
                        i: Some(DataType::Int64 as i32 as i64),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                NodeProto {
                    op_type: Some("CumSum".into()),
                    input: vec!["c".into(), "axis".into()],
                    output: vec!["y".into()],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(lower_int64_cumsum(&mut g), 1);
        let chain: Vec<_> = g.node.iter().map(|n| n.op_type.clone().unwrap()).collect();
        assert_eq!(chain, ["Cast", "Cast", "CumSum", "Cast"]);
        assert_eq!(g.node[1].input[0], "c");
        assert_eq!(g.node[2].input[0], g.node[1].output[0]);
        assert_eq!(g.node[3].input[0], g.node[2].output[0]);
        assert_eq!(g.node[3].output[0], "y");
        assert_eq!(
            attr_i(&g.node[1], "to"),
            Some(DataType::Double as i32 as i64)
        );
        assert_eq!(
            attr_i(&g.node[3], "to"),
            Some(DataType::Int64 as i32 as i64)
        );
    }

    #[test]
    fn int4_unpacks_low_nibble_first() {
        assert_eq!(unpack_int4(&[0xF7, 0x08], 3), vec![7, -1, -8]);
        assert_eq!(unpack_uint4(&[0xF7, 0x08], 4), vec![7, 15, 8, 0]);
    }
}
