//! A readable, deterministic text dump of a graph: inputs and outputs with their declared
//! types, initializers by name, element type and dims (never their payloads), then the nodes
//! in order with domain, op, name, inputs, outputs and attributes; subgraphs held in
//! attributes (If/Loop/Scan bodies) are dumped indented under their node. Used by the rewrite
//! snapshot tests, and meant for `inspect`.
//!
//! ```text
//! graph "main"
//!   input x: FLOAT[batch, 16]
//!   output y: FLOAT[batch, 8]
//!   initializer W: FLOAT[16, 8]
//!   node 0 MatMul "fc" (x, W) -> (y)
//! ```

use std::fmt::Write;

use crate::proto::attribute_proto::AttributeType;
use crate::proto::{
    type_proto, AttributeProto, GraphProto, NodeProto, SparseTensorProto, TensorProto, TypeProto,
    ValueInfoProto,
};

/// The text dump of `g` (see the module documentation).
pub fn to_text(g: &GraphProto) -> String {
    let mut out = String::new();
    graph(&mut out, g, 0);
    out
}

fn indent(out: &mut String, depth: usize) {
    for _ in 0..depth {
        out.push_str("  ");
    }
}

fn graph(out: &mut String, g: &GraphProto, depth: usize) {
    indent(out, depth);
    let _ = writeln!(out, "graph {:?}", g.name.as_deref().unwrap_or(""));
    let d = depth + 1;
    for v in &g.input {
        indent(out, d);
        let _ = writeln!(out, "input {}", value_info(v));
    }
    for v in &g.output {
        indent(out, d);
        let _ = writeln!(out, "output {}", value_info(v));
    }
    let mut inits: Vec<&TensorProto> = g.initializer.iter().collect();
    inits.sort_by(|a, b| a.name.cmp(&b.name));
    for t in inits {
        indent(out, d);
        let _ = writeln!(
            out,
            "initializer {}: {}",
            t.name.as_deref().unwrap_or(""),
            tensor_type(t)
        );
    }
    let mut sparse: Vec<&SparseTensorProto> = g.sparse_initializer.iter().collect();
    sparse.sort_by(|a, b| sparse_name(a).cmp(sparse_name(b)));
    for s in sparse {
        indent(out, d);
        let _ = writeln!(
            out,
            "sparse_initializer {}: {}",
            sparse_name(s),
            sparse_type(s)
        );
    }
    for (i, n) in g.node.iter().enumerate() {
        node(out, i, n, d);
    }
}

fn sparse_name(s: &SparseTensorProto) -> &str {
    s.values
        .as_ref()
        .and_then(|v| v.name.as_deref())
        .unwrap_or("")
}

fn sparse_type(s: &SparseTensorProto) -> String {
    let elem = s
        .values
        .as_ref()
        .map(|v| crate::dtype::name(v.data_type.unwrap_or(0)))
        .unwrap_or_else(|| "?".into());
    format!("sparse {elem}{}", dims(&s.dims))
}

fn dims(d: &[i64]) -> String {
    let parts: Vec<String> = d.iter().map(i64::to_string).collect();
    format!("[{}]", parts.join(", "))
}

fn tensor_type(t: &TensorProto) -> String {
    let mut s = format!(
        "{}{}",
        crate::dtype::name(t.data_type.unwrap_or(0)),
        dims(&t.dims)
    );
    if crate::tensor::is_external(t) {
        s.push_str(" (external)");
    }
    s
}

fn type_text(t: Option<&TypeProto>) -> String {
    let Some(v) = t.and_then(|t| t.value.as_ref()) else {
        return "?".into();
    };
    match v {
        type_proto::Value::TensorType(tt) => {
            let elem = crate::dtype::name(tt.elem_type.unwrap_or(0));
            match &tt.shape {
                None => elem,
                Some(shape) => {
                    use crate::proto::tensor_shape_proto::dimension::Value;
                    let parts: Vec<String> = shape
                        .dim
                        .iter()
                        .map(|d| match &d.value {
                            Some(Value::DimValue(n)) => n.to_string(),
                            Some(Value::DimParam(p)) if !p.is_empty() => p.clone(),
                            _ => "?".into(),
                        })
                        .collect();
                    format!("{elem}[{}]", parts.join(", "))
                }
            }
        }
        type_proto::Value::SequenceType(s) => {
            format!("sequence<{}>", type_text(s.elem_type.as_deref()))
        }
        type_proto::Value::OptionalType(o) => {
            format!("optional<{}>", type_text(o.elem_type.as_deref()))
        }
        type_proto::Value::MapType(m) => format!(
            "map<{}, {}>",
            crate::dtype::name(m.key_type.unwrap_or(0)),
            type_text(m.value_type.as_deref())
        ),
        type_proto::Value::SparseTensorType(st) => {
            format!("sparse {}", crate::dtype::name(st.elem_type.unwrap_or(0)))
        }
        #[allow(unreachable_patterns)]
        _ => "?".into(),
    }
}

fn value_info(v: &ValueInfoProto) -> String {
    format!(
        "{}: {}",
        v.name.as_deref().unwrap_or(""),
        type_text(v.r#type.as_ref())
    )
}

fn names(list: &[String]) -> String {
    let parts: Vec<String> = list
        .iter()
        .map(|s| {
            if s.is_empty() {
                "\"\"".to_string()
            } else {
                s.clone()
            }
        })
        .collect();
    parts.join(", ")
}

fn node(out: &mut String, i: usize, n: &NodeProto, depth: usize) {
    indent(out, depth);
    let op = crate::graph::op_key(n);
    let _ = write!(out, "node {i} {op}");
    if let Some(name) = n.name.as_deref().filter(|s| !s.is_empty()) {
        let _ = write!(out, " {name:?}");
    }
    let _ = writeln!(out, " ({}) -> ({})", names(&n.input), names(&n.output));
    for a in &n.attribute {
        attribute(out, a, depth + 2);
    }
}

/// The attribute's type: the declared one, else inferred from the populated field (old
/// models leave `type` unset).
fn attr_type(a: &AttributeProto) -> AttributeType {
    if let Some(t) = a.r#type.and_then(|t| AttributeType::try_from(t).ok()) {
        if t != AttributeType::Undefined {
            return t;
        }
    }
    if a.g.is_some() {
        AttributeType::Graph
    } else if a.t.is_some() {
        AttributeType::Tensor
    } else if a.sparse_tensor.is_some() {
        AttributeType::SparseTensor
    } else if a.tp.is_some() {
        AttributeType::TypeProto
    } else if a.s.is_some() {
        AttributeType::String
    } else if a.f.is_some() {
        AttributeType::Float
    } else if a.i.is_some() {
        AttributeType::Int
    } else if !a.graphs.is_empty() {
        AttributeType::Graphs
    } else if !a.tensors.is_empty() {
        AttributeType::Tensors
    } else if !a.sparse_tensors.is_empty() {
        AttributeType::SparseTensors
    } else if !a.type_protos.is_empty() {
        AttributeType::TypeProtos
    } else if !a.strings.is_empty() {
        AttributeType::Strings
    } else if !a.floats.is_empty() {
        AttributeType::Floats
    } else if !a.ints.is_empty() {
        AttributeType::Ints
    } else {
        AttributeType::Undefined
    }
}

fn string(b: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(b))
}

fn list<T>(items: &[T], f: impl Fn(&T) -> String) -> String {
    let parts: Vec<String> = items.iter().map(f).collect();
    format!("[{}]", parts.join(", "))
}

fn attribute(out: &mut String, a: &AttributeProto, depth: usize) {
    indent(out, depth);
    let name = a.name.as_deref().unwrap_or("");
    if let Some(r) = a.ref_attr_name.as_deref() {
        let _ = writeln!(out, "{name} = @{r}");
        return;
    }
    let value = match attr_type(a) {
        AttributeType::Float => format!("{:?}", a.f.unwrap_or(0.0)),
        AttributeType::Int => a.i.unwrap_or(0).to_string(),
        AttributeType::String => string(a.s.as_deref().unwrap_or(&[])),
        AttributeType::Tensor => match &a.t {
            Some(t) => format!("tensor {}", tensor_type(t)),
            None => "tensor ?".into(),
        },
        AttributeType::SparseTensor => match &a.sparse_tensor {
            Some(s) => sparse_type(s),
            None => "sparse ?".into(),
        },
        AttributeType::TypeProto => type_text(a.tp.as_ref()),
        AttributeType::Floats => list(&a.floats, |f| format!("{f:?}")),
        AttributeType::Ints => list(&a.ints, i64::to_string),
        AttributeType::Strings => list(&a.strings, |s| string(s)),
        AttributeType::Tensors => list(&a.tensors, |t| format!("tensor {}", tensor_type(t))),
        AttributeType::SparseTensors => list(&a.sparse_tensors, sparse_type),
        AttributeType::TypeProtos => list(&a.type_protos, |t| type_text(Some(t))),
        AttributeType::Graph => {
            let _ = writeln!(out, "{name} =");
            if let Some(g) = &a.g {
                graph(out, g, depth + 1);
            }
            return;
        }
        AttributeType::Graphs => {
            let _ = writeln!(out, "{name} = {} graphs", a.graphs.len());
            for g in &a.graphs {
                graph(out, g, depth + 1);
            }
            return;
        }
        AttributeType::Undefined => "(undefined)".into(),
    };
    let _ = writeln!(out, "{name} = {value}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::attribute_proto::AttributeType;

    fn vi(name: &str, elem: i32, shape: &[i64]) -> ValueInfoProto {
        use crate::proto::tensor_shape_proto::{dimension, Dimension};
        use crate::proto::{type_proto::Tensor, TensorShapeProto};
        ValueInfoProto {
            name: Some(name.into()),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(Tensor {
                    elem_type: Some(elem),
                    shape: Some(TensorShapeProto {
                        dim: shape
                            .iter()
                            .map(|&d| Dimension {
                                value: Some(if d < 0 {
                                    dimension::Value::DimParam("batch".into())
                                } else {
                                    dimension::Value::DimValue(d)
                                }),
                                ..Default::default()
                            })
                            .collect(),
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn dumps_nodes_attributes_initializers_and_subgraphs() {
        let body = GraphProto {
            name: Some("then".into()),
            output: vec![vi("z", 1, &[-1, 2])],
            initializer: vec![crate::tensor::from_f32("Wb", &[2, 2], &[0.0; 4])],
            node: vec![NodeProto {
                op_type: Some("MatMul".into()),
                input: vec!["x".into(), "Wb".into()],
                output: vec!["z".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let g = GraphProto {
            name: Some("main".into()),
            input: vec![vi("x", 1, &[-1, 2]), vi("c", 9, &[])],
            output: vec![vi("y", 1, &[-1, 2])],
            initializer: vec![
                crate::tensor::from_f32("b_second", &[2], &[1.0, 2.0]),
                crate::tensor::from_f32("a_first", &[2, 2], &[0.0; 4]),
            ],
            node: vec![
                NodeProto {
                    name: Some("gemm".into()),
                    op_type: Some("Gemm".into()),
                    input: vec!["x".into(), "a_first".into(), String::new()],
                    output: vec!["g".into()],
                    attribute: vec![
                        AttributeProto {
                            name: Some("alpha".into()),
                            f: Some(0.5),
                            r#type: Some(AttributeType::Float as i32),
                            ..Default::default()
                        },
                        AttributeProto {
                            name: Some("transB".into()),
                            i: Some(1),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                },
                NodeProto {
                    name: Some("if".into()),
                    op_type: Some("If".into()),
                    input: vec!["c".into()],
                    output: vec!["y".into()],
                    attribute: vec![AttributeProto {
                        name: Some("then_branch".into()),
                        g: Some(body),
                        r#type: Some(AttributeType::Graph as i32),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                NodeProto {
                    op_type: Some("MatMulNBits".into()),
                    domain: Some("com.microsoft".into()),
                    input: vec!["x".into(), "B".into()],
                    output: vec!["q".into()],
                    attribute: vec![AttributeProto {
                        name: Some("perm".into()),
                        ints: vec![1, 0],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let expected = r#"graph "main"
  input x: FLOAT[batch, 2]
  input c: BOOL[]
  output y: FLOAT[batch, 2]
  initializer a_first: FLOAT[2, 2]
  initializer b_second: FLOAT[2]
  node 0 Gemm "gemm" (x, a_first, "") -> (g)
      alpha = 0.5
      transB = 1
  node 1 If "if" (c) -> (y)
      then_branch =
        graph "then"
          output z: FLOAT[batch, 2]
          initializer Wb: FLOAT[2, 2]
          node 0 MatMul (x, Wb) -> (z)
  node 2 com.microsoft::MatMulNBits (x, B) -> (q)
      perm = [1, 0]
"#;
        assert_eq!(to_text(&g), expected);
    }
}
