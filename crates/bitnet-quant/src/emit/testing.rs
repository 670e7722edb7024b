//! Tiny graphs, ternary weights and a runner shared by the emitters' unit tests, and reference
//! packers written from the format descriptions (docs/formats.md section 2), independent of
//! `crate::pack`, to check the bytes the emitters write.

use std::path::Path;

use bitnet_model::node::int_attr;
use bitnet_model::proto::attribute_proto::AttributeType;
use bitnet_model::proto::tensor_proto::DataType;
use bitnet_model::proto::{
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, TensorShapeProto,
    TypeProto, ValueInfoProto,
};
use bitnet_model::{tensor, Dim};

use super::patch::{self, Patch};
use super::{EmitContext, EmitError, Emitted, Emitter, WeightJob};
use crate::analyse::{self, LinearLayer};
use crate::bitnet::ActQuant;
use crate::quant::{Granularity, Ternary};

/// A value declared without a type.
pub(crate) fn value(name: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        ..Default::default()
    }
}

/// A tensor value of element type `elem` and shape `dims`.
pub(crate) fn typed(name: &str, elem: DataType, dims: &[Dim]) -> ValueInfoProto {
    use bitnet_model::proto::tensor_shape_proto::{dimension::Value, Dimension};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: match d {
                Dim::Fixed(n) => Some(Value::DimValue(*n)),
                Dim::Symbol(s) => Some(Value::DimParam(s.clone())),
                Dim::Unknown => None,
            },
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A default-domain node.
pub(crate) fn node(name: &str, op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        name: Some(name.into()),
        op_type: Some(op.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// A FLOAT attribute.
pub(crate) fn float_attr(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        f: Some(v),
        r#type: Some(AttributeType::Float as i32),
        ..Default::default()
    }
}

/// A `Constant` node writing `output` with `t` as its value.
pub(crate) fn constant(name: &str, output: &str, t: TensorProto) -> NodeProto {
    let mut n = node(name, "Constant", &[], &[output]);
    n.attribute.push(AttributeProto {
        name: Some("value".into()),
        t: Some(t),
        r#type: Some(AttributeType::Tensor as i32),
        ..Default::default()
    });
    n
}

/// A GRAPH attribute (an If branch, a Loop or Scan body).
pub(crate) fn graph_attr(name: &str, g: GraphProto) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        g: Some(g),
        r#type: Some(AttributeType::Graph as i32),
        ..Default::default()
    }
}

/// A model whose main graph is `g`.
pub(crate) fn model(g: GraphProto) -> ModelProto {
    ModelProto {
        graph: Some(g),
        ..Default::default()
    }
}

/// A float32 weight initializer of `dims` (values do not matter to the emitters).
pub(crate) fn weight(name: &str, dims: &[i64]) -> TensorProto {
    let count: i64 = dims.iter().product();
    let values: Vec<f32> = (0..count).map(|i| (i % 3) as f32 - 1.0).collect();
    tensor::from_f32(name, dims, &values)
}

/// A graph named `g` of these nodes and initializers, its inputs and outputs untyped.
pub(crate) fn graph(
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    inputs: &[&str],
    outputs: &[&str],
) -> GraphProto {
    GraphProto {
        name: Some("g".into()),
        node: nodes,
        initializer: inits,
        input: inputs.iter().map(|n| value(n)).collect(),
        output: outputs.iter().map(|n| value(n)).collect(),
        ..Default::default()
    }
}

/// `mm: y = MatMul(x[., K], W[K, N])`, `x` a graph input, `W` an initializer.
pub(crate) fn matmul(k: usize, n: usize) -> GraphProto {
    graph(
        vec![node("mm", "MatMul", &["x", "W"], &["y"])],
        vec![weight("W", &[k as i64, n as i64])],
        &["x"],
        &["y"],
    )
}

/// Gemm's C input.
#[derive(Clone, Debug)]
pub(crate) enum C {
    None,
    /// An initializer `C` with these dims and values (`[N]`, `[1, N]`, `[]`, `[M, N]`...).
    Const(Vec<i64>, Vec<f32>),
    /// A graph input `C`, known at run time only.
    Input,
}

/// Gemm's attributes and C.
#[derive(Clone, Debug)]
pub(crate) struct Gemm {
    pub trans_a: bool,
    pub trans_b: bool,
    pub alpha: Option<f32>,
    pub beta: Option<f32>,
    pub c: C,
}

impl Default for Gemm {
    fn default() -> Self {
        Gemm {
            trans_a: false,
            trans_b: true,
            alpha: None,
            beta: None,
            c: C::None,
        }
    }
}

/// `gemm: y = Gemm(x, W, [C])` with `spec`'s attributes; `W` is `[N, K]` with transB, else
/// `[K, N]`.
pub(crate) fn gemm(k: usize, n: usize, spec: &Gemm) -> GraphProto {
    let (k, n) = (k as i64, n as i64);
    let w_dims = if spec.trans_b { [n, k] } else { [k, n] };
    let mut inits = vec![weight("W", &w_dims)];
    let mut inputs = vec!["x"];
    let mut node_inputs = vec!["x", "W"];
    match &spec.c {
        C::None => {}
        C::Const(dims, values) => {
            inits.push(tensor::from_f32("C", dims, values));
            node_inputs.push("C");
        }
        C::Input => {
            inputs.push("C");
            node_inputs.push("C");
        }
    }
    let mut gemm = node("gemm", "Gemm", &node_inputs, &["y"]);
    if spec.trans_a {
        gemm.attribute.push(int_attr("transA", 1));
    }
    if spec.trans_b {
        gemm.attribute.push(int_attr("transB", 1));
    }
    if let Some(a) = spec.alpha {
        gemm.attribute.push(float_attr("alpha", a));
    }
    if let Some(b) = spec.beta {
        gemm.attribute.push(float_attr("beta", b));
    }
    graph(vec![gemm], inits, &inputs, &["y"])
}

/// Two layers sharing one weight: `mm0: y0 = MatMul(x, W)`, `mm1: y1 = MatMul(x, W)`.
pub(crate) fn shared(k: usize, n: usize) -> GraphProto {
    graph(
        vec![
            node("mm0", "MatMul", &["x", "W"], &["y0"]),
            node("mm1", "MatMul", &["x", "W"], &["y1"]),
        ],
        vec![weight("W", &[k as i64, n as i64])],
        &["x"],
        &["y0", "y1"],
    )
}

/// Two layers reading one activation with their own weights (attention's projections):
/// `relu: x = Relu(x0)`, `mm_q: q = MatMul(x, Wq)`, `mm_k: k = MatMul(x, Wk)`.
pub(crate) fn two_weights(k: usize, n: usize) -> GraphProto {
    let dims = [k as i64, n as i64];
    graph(
        vec![
            node("relu", "Relu", &["x0"], &["x"]),
            node("mm_q", "MatMul", &["x", "Wq"], &["q"]),
            node("mm_k", "MatMul", &["x", "Wk"], &["k"]),
        ],
        vec![weight("Wq", &dims), weight("Wk", &dims)],
        &["x0"],
        &["q", "k"],
    )
}

/// An `[n][k]` ternary weight with codes `-1, 0, 1, -1, ...` in row-major order and scales
/// `0.5` (per tensor), `1, 2, .., n` (per channel) or `0.25, 0.5, ..` (per group, row-major).
pub(crate) fn ternary(n: usize, k: usize, granularity: Granularity) -> Ternary {
    let codes = (0..n * k).map(|i| (i % 3) as i8 - 1).collect();
    let scales = match granularity {
        Granularity::Tensor => vec![0.5],
        Granularity::Channel => (1..=n).map(|i| i as f32).collect(),
        Granularity::Group(g) => (1..=n * k.div_ceil(g)).map(|i| i as f32 * 0.25).collect(),
    };
    Ternary {
        n,
        k,
        codes,
        granularity,
        scales,
        lossless: false,
    }
}

/// Every linear layer of `g`, as the analysis describes them.
pub(crate) fn layers(g: &GraphProto) -> Vec<LinearLayer> {
    analyse::find_linear_layers(g, Path::new("test.onnx"), None).0
}

/// The linear layer of node `name`.
pub(crate) fn layer(g: &GraphProto, name: &str) -> LinearLayer {
    layers(g)
        .into_iter()
        .find(|l| l.node == name)
        .unwrap_or_else(|| panic!("no linear node '{name}'"))
}

/// What an emitter is given for one weight, owned (a [`WeightJob`] borrows it).
pub(crate) struct Job {
    pub weight: String,
    pub dtype: i32,
    pub layers: Vec<LinearLayer>,
    pub ternary: Ternary,
    pub opset: i64,
    pub activations: Vec<Option<ActQuant>>,
}

impl Job {
    /// The job for `weight` of `g`: every layer reading it, its element type, opset 13, no
    /// BitNet activation quantization found.
    pub fn new(g: &GraphProto, weight: &str, ternary: Ternary) -> Job {
        let layers: Vec<LinearLayer> = layers(g)
            .into_iter()
            .filter(|l| l.weight == weight)
            .collect();
        assert!(!layers.is_empty(), "no layer reads '{weight}'");
        Job {
            weight: weight.into(),
            dtype: layers[0].dtype,
            activations: vec![None; layers.len()],
            layers,
            ternary,
            opset: 13,
        }
    }

    pub fn emit(
        &self,
        e: &dyn Emitter,
        g: &GraphProto,
        cx: &mut EmitContext,
    ) -> Result<Emitted, EmitError> {
        self.with(|job| e.emit(g, job, cx))
    }

    /// `f` of the borrowed [`WeightJob`].
    pub fn with<R>(&self, f: impl FnOnce(&WeightJob) -> R) -> R {
        let layers: Vec<&LinearLayer> = self.layers.iter().collect();
        let job = WeightJob {
            weight: &self.weight,
            dtype: self.dtype,
            layers: &layers,
            ternary: &self.ternary,
            opset: self.opset,
            activations: &self.activations,
        };
        f(&job)
    }
}

/// `g` with `patch` applied (the sink stores nothing), and the weight bytes `apply` counted.
pub(crate) fn applied(g: &GraphProto, patch: &Patch) -> (GraphProto, u64) {
    let mut g = g.clone();
    let bytes = patch::apply(&mut g, patch.clone(), &mut |_| Ok(()))
        .unwrap_or_else(|e| panic!("patch does not apply: {e}"));
    (g, bytes)
}

/// Runs `e` on `g` for `job` with a fresh context and applies the patch: the new graph, the
/// weight bytes and the emission (its patch kept, to inspect).
pub(crate) fn run(
    e: &dyn Emitter,
    g: &GraphProto,
    job: &Job,
) -> Result<(GraphProto, u64, Emitted), EmitError> {
    run_in(e, g, job, &mut EmitContext::new(g))
}

/// [`run`] with the driver's context carried over from earlier weights.
pub(crate) fn run_in(
    e: &dyn Emitter,
    g: &GraphProto,
    job: &Job,
    cx: &mut EmitContext,
) -> Result<(GraphProto, u64, Emitted), EmitError> {
    let emitted = job.emit(e, g, cx)?;
    let (g, bytes) = applied(g, &emitted.patch);
    Ok((g, bytes, emitted))
}

/// The error of an emission that must fail.
pub(crate) fn emit_err(e: &dyn Emitter, g: &GraphProto, job: &Job) -> EmitError {
    match job.emit(e, g, &mut EmitContext::new(g)) {
        Ok(_) => panic!("{} emitted a weight it should refuse", e.name()),
        Err(err) => err,
    }
}

/// The ops of `g`'s nodes, in order.
pub(crate) fn ops(g: &GraphProto) -> Vec<&str> {
    g.node
        .iter()
        .map(|n| n.op_type.as_deref().unwrap_or(""))
        .collect()
}

/// The node whose first output is `output`.
pub(crate) fn writer<'g>(g: &'g GraphProto, output: &str) -> &'g NodeProto {
    g.node
        .iter()
        .find(|n| n.output.first().map(String::as_str) == Some(output))
        .unwrap_or_else(|| panic!("no node writes '{output}'"))
}

/// The position of the node named `name`.
pub(crate) fn position(g: &GraphProto, name: &str) -> usize {
    g.node
        .iter()
        .position(|n| n.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no node named '{name}'"))
}

/// The initializer named `name`.
pub(crate) fn init<'g>(g: &'g GraphProto, name: &str) -> &'g TensorProto {
    g.initializer
        .iter()
        .find(|t| t.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no initializer '{name}'"))
}

/// The node's attributes as `(name, int value)` pairs, in order (floats and lists as `None`).
pub(crate) fn int_attrs(n: &NodeProto) -> Vec<(&str, Option<i64>)> {
    n.attribute
        .iter()
        .map(|a| (a.name.as_deref().unwrap_or(""), a.i))
        .collect()
}

/// The node's inputs as `&str`.
pub(crate) fn inputs(n: &NodeProto) -> Vec<&str> {
    n.input.iter().map(String::as_str).collect()
}

/// A tensor's raw bytes.
pub(crate) fn raw(t: &TensorProto) -> &[u8] {
    t.raw_data.as_deref().unwrap_or(&[])
}

/// A float32 tensor's values, from its raw bytes.
pub(crate) fn f32s(t: &TensorProto) -> Vec<f32> {
    assert_eq!(
        t.data_type,
        Some(DataType::Float as i32),
        "{:?} is not float32",
        t.name
    );
    raw(t)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// A float16 tensor's values, from its raw bytes.
pub(crate) fn f16s(t: &TensorProto) -> Vec<f32> {
    assert_eq!(
        t.data_type,
        Some(DataType::Float16 as i32),
        "{:?} is not float16",
        t.name
    );
    raw(t)
        .chunks_exact(2)
        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect()
}

/// The codes of `t` as ONNX stores the weight: `[K][N]` (MatMul's B), or `[N][K]` as they are
/// when `transposed` (Gemm with transB).
pub(crate) fn onnx_codes(t: &Ternary, transposed: bool) -> Vec<i8> {
    if transposed {
        return t.codes.clone();
    }
    let mut out = Vec::with_capacity(t.codes.len());
    for kk in 0..t.k {
        for nn in 0..t.n {
            out.push(t.codes[nn * t.k + kk]);
        }
    }
    out
}

/// Signed values of `bits` bits, `8 / bits` per byte, first element in the low bits, two's
/// complement, the last byte zero-padded (ONNX INT2 / INT4 raw data).
pub(crate) fn pack_signed_ref(codes: &[i8], bits: u32) -> Vec<u8> {
    let per = (8 / bits) as usize;
    let mask = (1u8 << bits) - 1;
    let mut out = vec![0u8; codes.len().div_ceil(per)];
    for (i, &c) in codes.iter().enumerate() {
        out[i / per] |= ((c as u8) & mask) << ((i % per) as u32 * bits);
    }
    out
}

/// MatMulNBits B with bits = 2: per row of `[N][K]`, blocks of `block` codes stored `t + 2`,
/// four per byte, low bits first, K padded with 2.
pub(crate) fn matmulnbits_2bit_ref(t: &Ternary, block: usize) -> Vec<u8> {
    let padded = t.k.div_ceil(block) * block;
    let mut out = Vec::new();
    for row in t.codes.chunks(t.k) {
        let q: Vec<u8> = (0..padded)
            .map(|i| row.get(i).map_or(2, |&c| (c + 2) as u8))
            .collect();
        out.extend(
            q.chunks(4)
                .map(|b| b[0] | b[1] << 2 | b[2] << 4 | b[3] << 6),
        );
    }
    out
}

/// Checks the DequantizeLinear rewrite of weight `w` in `out` (the graph after the patch):
/// the node `{w}_DequantizeLinear` first, reading `codes` and `{w}_scale`, writing
/// `{w}_dequantized`, which each of `layers` (node names) reads at input 1 instead of `w`.
/// Returns the node, for its attributes.
pub(crate) fn dequantized<'g>(
    out: &'g GraphProto,
    w: &str,
    codes: &str,
    layers: &[&str],
) -> &'g NodeProto {
    let dq = &out.node[0];
    assert_eq!(dq.op_type.as_deref(), Some("DequantizeLinear"));
    assert_eq!(
        dq.name.as_deref(),
        Some(format!("{w}_DequantizeLinear").as_str())
    );
    assert_eq!(inputs(dq), [codes.to_string(), format!("{w}_scale")]);
    assert_eq!(dq.output, [format!("{w}_dequantized")]);
    for l in layers {
        let n = &out.node[position(out, l)];
        assert_eq!(n.input[1], format!("{w}_dequantized"), "layer {l}");
    }
    dq
}

/// The patch of a DequantizeLinear rewrite of `w`: its codes and scale (both the weight's,
/// in that order), the node at the front and one rewiring of input 1 per layer output.
pub(crate) fn assert_dq_patch(patch: &Patch, w: &str, codes: &str, outputs: &[&str]) {
    use super::patch::{Edit, Role};
    let tensors: Vec<_> = patch
        .tensors
        .iter()
        .map(|t| (t.tensor.name.clone().unwrap_or_default(), t.role))
        .collect();
    assert_eq!(
        tensors,
        [
            (codes.to_string(), Role::Weight),
            (format!("{w}_scale"), Role::Weight)
        ]
    );
    assert_eq!(patch.edits.len(), 1 + outputs.len());
    assert!(matches!(&patch.edits[0], Edit::Front(nodes) if nodes.len() == 1));
    for (e, o) in patch.edits[1..].iter().zip(outputs) {
        assert_eq!(
            e,
            &Edit::Rewire {
                output: o.to_string(),
                input: 1,
                from: w.to_string(),
                to: format!("{w}_dequantized"),
            }
        );
    }
}
