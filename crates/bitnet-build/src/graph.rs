//! A small graph writer: nodes appended in order (the decoder is built front to back, so that
//! order is topological), constants created once by value, large initializers handed to the
//! output's writer as they are made so they never accumulate in memory.

use std::collections::BTreeMap;

use bitnet_model::proto::attribute_proto::AttributeType;
use bitnet_model::proto::tensor_proto::DataType;
use bitnet_model::proto::tensor_shape_proto::{dimension, Dimension};
use bitnet_model::proto::type_proto::{Tensor, Value};
use bitnet_model::proto::{
    AttributeProto, GraphProto, NodeProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use bitnet_model::save::Writer;
use bitnet_model::tensor;

use crate::error::Result;

pub const MS: &str = "com.microsoft";

/// An attribute value.
pub enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
}

pub struct Graph<'w> {
    pub graph: GraphProto,
    writer: &'w Writer,
    constants: BTreeMap<String, String>,
    /// Bytes of the initializers written so far.
    pub initializer_bytes: u64,
}

impl<'w> Graph<'w> {
    pub fn new(name: &str, writer: &'w Writer) -> Self {
        Graph {
            graph: GraphProto {
                name: Some(name.to_string()),
                ..Default::default()
            },
            writer,
            constants: BTreeMap::new(),
            initializer_bytes: 0,
        }
    }

    /// Appends a node; its outputs are named `{name}/output_{i}` unless given.
    pub fn node(
        &mut self,
        op: &str,
        domain: &str,
        name: &str,
        inputs: &[&str],
        outputs: usize,
        attrs: &[(&str, Attr)],
    ) -> Vec<String> {
        let out: Vec<String> = (0..outputs).map(|i| format!("{name}/output_{i}")).collect();
        self.node_to(op, domain, name, inputs, &out, attrs);
        out
    }

    /// A default-domain node with one output and no attributes; returns the output.
    pub fn op(&mut self, op: &str, name: &str, inputs: &[&str]) -> String {
        self.op_with(op, name, inputs, &[])
    }

    /// A default-domain node with one output; returns the output.
    pub fn op_with(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        attrs: &[(&str, Attr)],
    ) -> String {
        let out = format!("{name}/output_0");
        self.node_to(op, "", name, inputs, std::slice::from_ref(&out), attrs);
        out
    }

    /// Appends a node writing the given output names (empty names are unused outputs).
    pub fn node_to(
        &mut self,
        op: &str,
        domain: &str,
        name: &str,
        inputs: &[&str],
        outputs: &[String],
        attrs: &[(&str, Attr)],
    ) {
        let attribute = attrs
            .iter()
            .map(|(k, v)| {
                let mut a = AttributeProto {
                    name: Some(k.to_string()),
                    ..Default::default()
                };
                match v {
                    Attr::Int(i) => {
                        a.i = Some(*i);
                        a.r#type = Some(AttributeType::Int as i32);
                    }
                    Attr::Float(f) => {
                        a.f = Some(*f);
                        a.r#type = Some(AttributeType::Float as i32);
                    }
                    Attr::Ints(v) => {
                        a.ints = v.clone();
                        a.r#type = Some(AttributeType::Ints as i32);
                    }
                }
                a
            })
            .collect();
        self.graph.node.push(NodeProto {
            op_type: Some(op.to_string()),
            domain: (!domain.is_empty()).then(|| domain.to_string()),
            name: Some(name.to_string()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.to_vec(),
            attribute,
            ..Default::default()
        });
    }

    /// Adds an initializer, moving a large payload to the output's data file at once.
    pub fn initializer(&mut self, mut t: TensorProto) -> Result<String> {
        self.initializer_bytes += tensor::payload_len(&t);
        self.writer.store(&mut t)?;
        let name = t.name.clone().unwrap_or_default();
        self.graph.initializer.push(t);
        Ok(name)
    }

    /// A small constant, created once per distinct value and type.
    fn constant(&mut self, key: String, make: impl FnOnce(&str) -> TensorProto) -> String {
        if let Some(n) = self.constants.get(&key) {
            return n.clone();
        }
        let name = format!("/constants/{key}");
        self.graph.initializer.push(make(&name));
        self.constants.insert(key, name.clone());
        name
    }

    /// A float32 tensor of ones of shape `dims`, stored once per shape however many nodes
    /// read it (the unit block scales of the ternary `MatMulNBits`: at 2B-4T's shape one copy
    /// per layer would be 68 MB of ones).
    pub fn ones(&mut self, dims: &[i64]) -> Result<String> {
        let key = format!("ones{dims:?}");
        if let Some(n) = self.constants.get(&key) {
            return Ok(n.clone());
        }
        let shape: Vec<String> = dims.iter().map(i64::to_string).collect();
        let name = format!("/constants/ones_{}", shape.join("x"));
        let count: i64 = dims.iter().product();
        let t = tensor::from_f32(&name, dims, &vec![1.0f32; count.max(0) as usize]);
        self.initializer(t)?;
        self.constants.insert(key, name.clone());
        Ok(name)
    }

    pub fn i64s(&mut self, v: &[i64]) -> String {
        let v = v.to_vec();
        self.constant(format!("i64{v:?}"), |n| {
            tensor::from_i64(n, &[v.len() as i64], &v)
        })
    }

    pub fn i64_scalar(&mut self, v: i64) -> String {
        self.constant(format!("i64({v})"), |n| tensor::from_i64(n, &[], &[v]))
    }

    pub fn f32_scalar(&mut self, v: f32) -> String {
        self.constant(format!("f32({v:?})"), |n| tensor::from_f32(n, &[], &[v]))
    }

    pub fn input(&mut self, name: &str, elem: DataType, dims: &[DimSpec]) {
        self.graph.input.push(value_info(name, elem, dims));
    }

    pub fn output(&mut self, name: &str, elem: DataType, dims: &[DimSpec]) {
        self.graph.output.push(value_info(name, elem, dims));
    }
}

/// A graph input or output dimension.
pub enum DimSpec {
    Fixed(i64),
    Symbol(&'static str),
}

fn value_info(name: &str, elem: DataType, dims: &[DimSpec]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            denotation: None,
            value: Some(match d {
                DimSpec::Fixed(v) => dimension::Value::DimValue(*v),
                DimSpec::Symbol(s) => dimension::Value::DimParam(s.to_string()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            denotation: None,
            value: Some(Value::TensorType(Tensor {
                elem_type: Some(elem as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
        }),
        ..Default::default()
    }
}
