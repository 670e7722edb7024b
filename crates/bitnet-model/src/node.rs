//! Node attributes and domains, read and built in one place.

use crate::proto::attribute_proto::AttributeType;
use crate::proto::{AttributeProto, NodeProto};

/// The attribute `name` of `node`.
pub fn attr<'n>(node: &'n NodeProto, name: &str) -> Option<&'n AttributeProto> {
    node.attribute
        .iter()
        .find(|a| a.name.as_deref() == Some(name))
}

/// An INT attribute.
pub fn attr_i(node: &NodeProto, name: &str) -> Option<i64> {
    attr(node, name).and_then(|a| a.i)
}

/// A FLOAT attribute.
pub fn attr_f(node: &NodeProto, name: &str) -> Option<f32> {
    attr(node, name).and_then(|a| a.f)
}

/// An INTS attribute.
pub fn attr_ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| a.ints.clone())
}

/// A STRING attribute's bytes.
pub fn attr_s<'n>(node: &'n NodeProto, name: &str) -> Option<&'n [u8]> {
    attr(node, name).and_then(|a| a.s.as_deref())
}

/// A new INT attribute.
pub fn int_attr(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        i: Some(v),
        r#type: Some(AttributeType::Int as i32),
        ..Default::default()
    }
}

/// Whether `domain` names the default ONNX domain (absent, empty or `ai.onnx`).
pub fn is_default_domain(domain: Option<&str>) -> bool {
    matches!(domain, None | Some("") | Some("ai.onnx"))
}

/// Whether `node` is in the default ONNX domain.
pub fn in_default_domain(node: &NodeProto) -> bool {
    is_default_domain(node.domain.as_deref())
}
