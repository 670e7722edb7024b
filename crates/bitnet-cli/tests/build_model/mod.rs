//! Building small ONNX models in Rust for the end-to-end tests: value infos, nodes, attributes,
//! seeded ternary weights, and a run of `bitnet-onnx convert` returning the report.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use bitnet_model::proto::attribute_proto::AttributeType;
use bitnet_model::proto::tensor_proto::DataType;
use bitnet_model::proto::tensor_shape_proto::{dimension, Dimension};
use bitnet_model::proto::type_proto::{self, Tensor};
use bitnet_model::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

use crate::common::{bin, run_ok};

pub const FLOAT: i32 = DataType::Float as i32;
pub const FLOAT16: i32 = DataType::Float16 as i32;
pub const BFLOAT16: i32 = DataType::Bfloat16 as i32;
pub const INT64: i32 = DataType::Int64 as i32;
pub const BOOL: i32 = DataType::Bool as i32;

/// A tensor value info; `shape` is comma-separated, numbers or symbol names ("batch,64").
pub fn vi(name: &str, elem: i32, shape: &str) -> ValueInfoProto {
    let dim = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|d| Dimension {
            value: Some(match d.parse::<i64>() {
                Ok(n) => dimension::Value::DimValue(n),
                Err(_) => dimension::Value::DimParam(d.to_string()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(Tensor {
                elem_type: Some(elem),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A tensor value info with an element type and no shape (subgraph inputs of unknown rank).
pub fn vi_any(name: &str, elem: i32) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(Tensor {
                elem_type: Some(elem),
                shape: None,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(name.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

pub fn with(mut n: NodeProto, attrs: Vec<AttributeProto>) -> NodeProto {
    n.attribute.extend(attrs);
    n
}

pub fn attr_i(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        i: Some(v),
        r#type: Some(AttributeType::Int as i32),
        ..Default::default()
    }
}

pub fn attr_f(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        f: Some(v),
        r#type: Some(AttributeType::Float as i32),
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        ints: v.to_vec(),
        r#type: Some(AttributeType::Ints as i32),
        ..Default::default()
    }
}

pub fn attr_g(name: &str, g: GraphProto) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        g: Some(g),
        r#type: Some(AttributeType::Graph as i32),
        ..Default::default()
    }
}

pub fn graph(
    name: &str,
    nodes: Vec<NodeProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    inits: Vec<TensorProto>,
) -> GraphProto {
    GraphProto {
        name: Some(name.into()),
        node: nodes,
        input: inputs,
        output: outputs,
        initializer: inits,
        ..Default::default()
    }
}

pub fn model(g: GraphProto, opset: i64) -> ModelProto {
    ModelProto {
        ir_version: Some(9),
        producer_name: Some("bitnet-onnx tests".into()),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        graph: Some(g),
        ..Default::default()
    }
}

pub fn save(m: &ModelProto, path: &Path) {
    bitnet_model::save(m, path, &Default::default(), &[]).unwrap();
}

/// Deterministic pseudo-random generator (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Already-ternary weights `a_n * t` (codes -1/0/+1, one scale per output channel `n`), so
/// conversion is lossless and converted models can be compared to float rounding. `rows` x
/// `cols` row-major; the output channel is the column when `n_is_col`, else the row. Scales are
/// multiples of 1/64 (exact in float16 and bfloat16).
pub fn ternary(rows: usize, cols: usize, n_is_col: bool, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let channels = if n_is_col { cols } else { rows };
    let scales: Vec<f32> = (0..channels)
        .map(|_| (4 + (rng.next() % 12)) as f32 / 64.0)
        .collect();
    let mut w = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        for c in 0..cols {
            let t = match rng.next() % 3 {
                0 => -1.0,
                1 => 0.0,
                _ => 1.0,
            };
            w.push(t * scales[if n_is_col { c } else { r }]);
        }
    }
    w
}

/// Runs `bitnet-onnx convert IN -o OUT --report R ARGS` (must succeed) and returns the report.
pub fn convert(input: &Path, out: &Path, args: &[&str]) -> serde_json::Value {
    let report = PathBuf::from(format!("{}.report.json", out.display()));
    run_ok(
        bin()
            .arg("convert")
            .arg(input)
            .arg("-o")
            .arg(out)
            .arg("--report")
            .arg(&report)
            .arg("-q")
            .args(args),
    );
    serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap()
}

/// Flags of each target for which converted ternary weights are exact (the `ort` target with
/// float activations).
pub const TARGETS: &[(&str, &[&str])] = &[
    ("ort", &["--target", "ort", "--accuracy-level", "0"]),
    ("onnx", &["--target", "onnx"]),
    ("tensorrt", &["--target", "tensorrt"]),
    ("qdq-int8", &["--target", "qdq-int8"]),
];

/// Every graph of a model (main graph first, then subgraphs depth-first).
pub fn graphs(m: &ModelProto) -> Vec<&GraphProto> {
    let mut out = Vec::new();
    bitnet_model::walk::for_each_graph(m, &mut |g| out.push(g));
    out
}

/// Every node of every graph.
pub fn all_nodes(m: &ModelProto) -> Vec<&NodeProto> {
    graphs(m).into_iter().flat_map(|g| g.node.iter()).collect()
}

pub fn find_node<'m>(g: &'m GraphProto, name: &str) -> &'m NodeProto {
    g.node
        .iter()
        .find(|n| n.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no node '{name}' in graph {:?}", g.name))
}

/// The op of the node producing `value` in `g`, if any.
pub fn producer_op<'g>(g: &'g GraphProto, value: &str) -> Option<&'g str> {
    g.node
        .iter()
        .find(|n| n.output.iter().any(|o| o == value))
        .and_then(|n| n.op_type.as_deref())
}

/// Asserts every output of an `ort_compare` run is finite with relative L2 error below `tol`.
pub fn assert_close(cmp: &serde_json::Value, tol: f64, what: &str) {
    let outs = cmp["outputs"].as_array().unwrap();
    assert!(!outs.is_empty(), "{what}: no outputs: {cmp}");
    for o in outs {
        assert_eq!(o["finite"], true, "{what}: {cmp}");
        assert!(
            o["rel_l2"].as_f64().unwrap() < tol,
            "{what}: relative L2 above {tol}: {cmp}"
        );
    }
}
