//! Layer-local graphs: what a converted layer computes, cut out of its model so that it can
//! run alone on the original's own values.
//!
//! A value *means the same* in both models when it is a graph input, an initializer equal in
//! both, a converted layer's compared output (which the layer-local check itself judges), or
//! the output of a node that is the same in both (same op, domain, inputs, outputs and
//! attributes, or an `axes` attribute that became an equal constant input when the opset was
//! raised) and reads only values that mean the same. A converted layer's *cut* is every node
//! of the converted graph between such values and the layer's output: fed the original's
//! values at its boundary, it computes the layer exactly as the converted model does, but on
//! the original's input, so a difference upstream (a rounding flip at a tie and what it sets
//! off) cannot reach it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;

use bitnet_model::proto::tensor_proto::DataType;
use bitnet_model::proto::{
    tensor_shape_proto, type_proto, GraphProto, ModelProto, NodeProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use bitnet_model::{node, tensor};

use crate::error::{EvalError, Result};
use crate::runner::graph_inputs;

fn initializers(g: &GraphProto) -> HashMap<&str, &TensorProto> {
    g.initializer
        .iter()
        .filter_map(|t| t.name.as_deref().map(|n| (n, t)))
        .collect()
}

/// Compares initializers of the two models by name, by value (memoised).
struct Initializers<'a> {
    original: HashMap<&'a str, &'a TensorProto>,
    converted: HashMap<&'a str, &'a TensorProto>,
    opath: &'a Path,
    cpath: &'a Path,
    memo: HashMap<String, bool>,
}

impl Initializers<'_> {
    fn equal(&mut self, name: &str) -> Result<bool> {
        if let Some(&e) = self.memo.get(name) {
            return Ok(e);
        }
        let e = match (self.original.get(name), self.converted.get(name)) {
            (Some(o), Some(c)) => {
                o.data_type == c.data_type
                    && o.dims == c.dims
                    && tensor::raw_bytes(self.opath, o)? == tensor::raw_bytes(self.cpath, c)?
            }
            _ => false,
        };
        self.memo.insert(name.to_string(), e);
        Ok(e)
    }

    /// The int64 values of a converted initializer (an `axes` input the upgrade wrote).
    fn converted_ints(&self, name: &str) -> Option<Vec<i64>> {
        let t = self.converted.get(name)?;
        if t.data_type != Some(DataType::Int64 as i32) {
            return None;
        }
        tensor::to_i64(self.cpath, t).ok()
    }
}

/// Whether `c` (converted) is `o` (original) with an `axes` attribute moved to a constant
/// second input holding the same values: the rewrite that raising the opset makes.
fn axes_moved(o: &NodeProto, c: &NodeProto, inits: &Initializers) -> bool {
    let Some(axes) = node::attr_ints(o, "axes") else {
        return false;
    };
    let rest = |n: &NodeProto| {
        n.attribute
            .iter()
            .filter(|a| a.name.as_deref() != Some("axes"))
            .cloned()
            .collect::<Vec<_>>()
    };
    o.input.len() == 1
        && c.input.len() == 2
        && c.input[0] == o.input[0]
        && node::attr(c, "axes").is_none()
        && rest(o) == rest(c)
        && inits.converted_ints(&c.input[1]).as_deref() == Some(&axes[..])
}

/// The values of the converted model's main graph that mean the same in both models (see the
/// module docs). `claimed`: the converted layers' compared outputs.
pub(crate) fn same_values(
    opath: &Path,
    original: &ModelProto,
    cpath: &Path,
    converted: &ModelProto,
    claimed: &HashSet<String>,
) -> Result<HashSet<String>> {
    let (og, cg) = match (original.graph.as_ref(), converted.graph.as_ref()) {
        (Some(o), Some(c)) => (o, c),
        _ => return Ok(HashSet::new()),
    };
    let mut inits = Initializers {
        original: initializers(og),
        converted: initializers(cg),
        opath,
        cpath,
        memo: HashMap::new(),
    };
    let onames: HashSet<String> = graph_inputs(original).into_iter().map(|s| s.name).collect();
    let mut same: HashSet<String> = graph_inputs(converted)
        .into_iter()
        .map(|s| s.name)
        .filter(|n| onames.contains(n))
        .collect();
    same.extend(claimed.iter().cloned());
    let by_output: HashMap<&str, &NodeProto> = og
        .node
        .iter()
        .filter_map(|n| n.output.first().map(|o| (o.as_str(), n)))
        .collect();
    for c in &cg.node {
        let Some(o) = c.output.first().and_then(|v| by_output.get(v.as_str())) else {
            continue;
        };
        let shape_same = o.op_type == c.op_type
            && (o.domain == c.domain || node::in_default_domain(o) && node::in_default_domain(c))
            && o.output == c.output;
        if !shape_same {
            continue;
        }
        let reads: &[String] = if o.input == c.input && o.attribute == c.attribute {
            &c.input
        } else if axes_moved(o, c, &inits) {
            &c.input[..1]
        } else {
            continue;
        };
        let mut all = true;
        for i in reads.iter().filter(|i| !i.is_empty()) {
            let ok = if inits.original.contains_key(i.as_str())
                || inits.converted.contains_key(i.as_str())
            {
                inits.equal(i)?
            } else {
                same.contains(i)
            };
            if !ok {
                all = false;
                break;
            }
        }
        if all {
            same.extend(c.output.iter().filter(|v| !v.is_empty()).cloned());
        }
    }
    Ok(same)
}

/// Nodes of a graph between some boundary values and some outputs.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cut {
    /// Node indices, in graph order.
    pub nodes: BTreeSet<usize>,
    /// The values read at the boundary (fed from the original's run).
    pub boundary: BTreeSet<String>,
    /// The initializers the nodes read.
    pub initializers: BTreeSet<String>,
}

impl Cut {
    /// Adds the nodes computing `start` in `g`, walking back until a value in `same` (other
    /// than `start`) that is not `derivable`, an initializer or nothing more. `Err(reason)` when a value on the way
    /// is neither computed nor given, or a node carries a subgraph (which may read values of
    /// the enclosing graph that this walk does not see).
    pub fn add(
        &mut self,
        g: &GraphProto,
        producers: &HashMap<&str, usize>,
        start: &str,
        same: &HashSet<String>,
        derivable: &HashSet<String>,
    ) -> std::result::Result<(), String> {
        let inits: HashSet<&str> = g
            .initializer
            .iter()
            .filter_map(|t| t.name.as_deref())
            .collect();
        let Some(&first) = producers.get(start) else {
            return Err(format!("no node computes '{start}'"));
        };
        let mut stack = vec![first];
        while let Some(i) = stack.pop() {
            if !self.nodes.insert(i) {
                continue;
            }
            let n = &g.node[i];
            if n.attribute
                .iter()
                .any(|a| a.g.is_some() || !a.graphs.is_empty())
            {
                return Err(format!(
                    "'{start}' is computed through {} node '{}', which holds a subgraph",
                    n.op_type.as_deref().unwrap_or("?"),
                    n.name.as_deref().unwrap_or("")
                ));
            }
            for v in n.input.iter().filter(|v| !v.is_empty()) {
                if inits.contains(v.as_str()) {
                    self.initializers.insert(v.clone());
                } else if same.contains(v) && !derivable.contains(v) {
                    self.boundary.insert(v.clone());
                } else if let Some(&p) = producers.get(v.as_str()) {
                    stack.push(p);
                } else {
                    return Err(format!(
                        "'{start}' depends on '{v}', which is neither computed nor given"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The values of `g` that the cut can compute itself instead of being given: those computed
/// from initializers and constants only, and shapes (`Shape`, `Size`: the boundary values have
/// fixed shapes). tract needs some of them as constants (an `axes` or `shape` input), which a
/// graph input is not.
pub(crate) fn derivable(g: &GraphProto) -> HashSet<String> {
    let inits: HashSet<&str> = g
        .initializer
        .iter()
        .filter_map(|t| t.name.as_deref())
        .collect();
    let mut d: HashSet<String> = HashSet::new();
    for n in &g.node {
        let op = n.op_type.as_deref().unwrap_or("");
        let shape_of = node::in_default_domain(n) && matches!(op, "Shape" | "Size");
        let constant = n
            .input
            .iter()
            .filter(|i| !i.is_empty())
            .all(|i| inits.contains(i.as_str()) || d.contains(i));
        let subgraph = n
            .attribute
            .iter()
            .any(|a| a.g.is_some() || !a.graphs.is_empty());
        if (shape_of || constant) && !subgraph {
            d.extend(n.output.iter().filter(|o| !o.is_empty()).cloned());
        }
    }
    d
}

/// Producer of each value of `g`'s nodes.
pub(crate) fn producers(g: &GraphProto) -> HashMap<&str, usize> {
    let mut m = HashMap::new();
    for (i, n) in g.node.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            m.insert(o.as_str(), i);
        }
    }
    m
}

/// A tensor value-info of fixed shape.
pub(crate) fn value_info(name: &str, elem_type: i32, shape: &[usize]) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem_type),
                shape: Some(TensorShapeProto {
                    dim: shape
                        .iter()
                        .map(|&d| tensor_shape_proto::Dimension {
                            value: Some(tensor_shape_proto::dimension::Value::DimValue(d as i64)),
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

/// The model holding only `cut`'s nodes of `base`'s main graph, with graph outputs `outputs`.
/// Every boundary value becomes a graph input of the type and shape `types` gives, under a
/// name of its own (returned beside the value's name: `(input, value)`), so that a value the
/// cut also computes (another layer's output) can still be given as the original has it.
pub(crate) fn cut_model(
    base: &ModelProto,
    cut: &Cut,
    outputs: &[String],
    types: &HashMap<String, (i32, Vec<usize>)>,
) -> std::result::Result<(ModelProto, Vec<(String, String)>), String> {
    let g = base.graph.as_ref().ok_or("the model has no graph")?;
    let mut taken: HashSet<&str> = g
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(String::as_str))
        .chain(g.initializer.iter().filter_map(|t| t.name.as_deref()))
        .chain(g.input.iter().filter_map(|v| v.name.as_deref()))
        .collect();
    let mut renamed: HashMap<&str, String> = HashMap::new();
    let mut names = Vec::new();
    let mut fresh = Vec::new();
    for v in &cut.boundary {
        let mut name = format!("{v}::original");
        while taken.contains(name.as_str()) {
            name.push('_');
        }
        fresh.push(name.clone());
        renamed.insert(v.as_str(), name.clone());
        names.push((name, v.clone()));
    }
    taken.extend(fresh.iter().map(String::as_str));
    let mut nodes = Vec::new();
    for &i in &cut.nodes {
        let mut n = g.node[i].clone();
        for v in &mut n.input {
            if let Some(r) = renamed.get(v.as_str()) {
                *v = r.clone();
            }
        }
        nodes.push(n);
    }
    let mut input = Vec::new();
    for (name, v) in &names {
        let (elem, shape) = types
            .get(v)
            .ok_or_else(|| format!("the original's run did not give '{v}'"))?;
        input.push(value_info(name, *elem, shape));
    }
    let graph = GraphProto {
        name: g.name.clone(),
        node: nodes,
        initializer: g
            .initializer
            .iter()
            .filter(|t| {
                t.name
                    .as_deref()
                    .is_some_and(|n| cut.initializers.contains(n))
            })
            .cloned()
            .collect(),
        input,
        output: outputs
            .iter()
            .map(|o| ValueInfoProto {
                name: Some(o.clone()),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let model = ModelProto {
        ir_version: base.ir_version,
        opset_import: base.opset_import.clone(),
        functions: base.functions.clone(),
        graph: Some(graph),
        ..Default::default()
    };
    Ok((model, names))
}

/// `label`'s error for a graph that could not be cut.
pub(crate) fn cut_error(label: &str, reason: String) -> EvalError {
    EvalError::Mismatch {
        model: label.to_string(),
        reason: format!("layer-local check: {reason}"),
    }
}
