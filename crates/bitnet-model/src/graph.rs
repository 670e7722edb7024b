//! A read-only index over one graph: who produces and who consumes each value, which values
//! are initializers or graph inputs, and the declared types of values.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::proto::type_proto;
use crate::proto::{GraphProto, NodeProto, TensorProto, ValueInfoProto};

/// Index over the nodes and values of one graph (not its subgraphs).
pub struct GraphIndex<'g> {
    pub graph: &'g GraphProto,
    producer: HashMap<&'g str, usize>,
    consumers: HashMap<&'g str, Vec<usize>>,
    initializers: HashMap<&'g str, &'g TensorProto>,
    inputs: HashSet<&'g str>,
    outputs: HashSet<&'g str>,
    value_info: HashMap<&'g str, &'g ValueInfoProto>,
    /// Values read by subgraphs of this graph's nodes (implicit inputs of If/Loop/Scan).
    captured: HashSet<String>,
}

impl<'g> GraphIndex<'g> {
    pub fn new(graph: &'g GraphProto) -> Self {
        let mut producer = HashMap::new();
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, node) in graph.node.iter().enumerate() {
            for o in &node.output {
                if !o.is_empty() {
                    producer.insert(o.as_str(), i);
                }
            }
            for inp in &node.input {
                if !inp.is_empty() {
                    consumers.entry(inp.as_str()).or_default().push(i);
                }
            }
        }
        let initializers = graph
            .initializer
            .iter()
            .filter_map(|t| t.name.as_deref().map(|n| (n, t)))
            .collect();
        let inputs = graph
            .input
            .iter()
            .filter_map(|v| v.name.as_deref())
            .collect();
        let outputs = graph
            .output
            .iter()
            .filter_map(|v| v.name.as_deref())
            .collect();
        let value_info = graph
            .input
            .iter()
            .chain(&graph.output)
            .chain(&graph.value_info)
            .filter_map(|v| v.name.as_deref().map(|n| (n, v)))
            .collect();
        let mut captured = HashSet::new();
        for node in &graph.node {
            for a in &node.attribute {
                for g in a.g.iter().chain(&a.graphs) {
                    collect_outer_reads(g, &mut captured);
                }
            }
        }
        GraphIndex {
            graph,
            producer,
            consumers,
            initializers,
            inputs,
            outputs,
            value_info,
            captured,
        }
    }

    pub fn node(&self, i: usize) -> &'g NodeProto {
        &self.graph.node[i]
    }

    /// Index of the node producing `value`.
    pub fn producer(&self, value: &str) -> Option<usize> {
        self.producer.get(value).copied()
    }

    /// Nodes reading `value` (a node reading it twice appears twice).
    pub fn consumers(&self, value: &str) -> &[usize] {
        self.consumers.get(value).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The initializer named `value`, unless a graph input of the same name overrides it.
    pub fn initializer(&self, value: &str) -> Option<&'g TensorProto> {
        if self.inputs.contains(value) {
            return None;
        }
        self.initializers.get(value).copied()
    }

    /// True when the value is an initializer that a graph input of the same name can override.
    pub fn is_overridable_initializer(&self, value: &str) -> bool {
        self.inputs.contains(value) && self.initializers.contains_key(value)
    }

    pub fn is_graph_input(&self, value: &str) -> bool {
        self.inputs.contains(value)
    }

    pub fn is_graph_output(&self, value: &str) -> bool {
        self.outputs.contains(value)
    }

    /// True when a subgraph of some node of this graph reads `value` from this scope.
    pub fn is_captured(&self, value: &str) -> bool {
        self.captured.contains(value)
    }

    pub fn value_info(&self, value: &str) -> Option<&'g ValueInfoProto> {
        self.value_info.get(value).copied()
    }

    /// Element type declared for a value, if any.
    pub fn elem_type(&self, value: &str) -> Option<i32> {
        if let Some(t) = self.initializer(value) {
            return t.data_type;
        }
        match self.value_info(value)?.r#type.as_ref()?.value.as_ref()? {
            type_proto::Value::TensorType(t) => t.elem_type,
            _ => None,
        }
    }

    /// Declared shape of a value: each dim a number, a symbol name, or unknown.
    pub fn shape(&self, value: &str) -> Option<Vec<Dim>> {
        if let Some(t) = self.initializer(value) {
            return Some(t.dims.iter().map(|&d| Dim::Fixed(d)).collect());
        }
        value_shape(self.value_info(value)?)
    }
}

/// One dimension of a declared shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(i64),
    Symbol(String),
    Unknown,
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(d) => write!(f, "{d}"),
            Dim::Symbol(s) => write!(f, "{s}"),
            Dim::Unknown => write!(f, "?"),
        }
    }
}

/// The declared shape of a value-info, if it is a tensor with a shape.
pub fn value_shape(v: &ValueInfoProto) -> Option<Vec<Dim>> {
    use crate::proto::tensor_shape_proto::dimension::Value;
    let type_proto::Value::TensorType(t) = v.r#type.as_ref()?.value.as_ref()? else {
        return None;
    };
    let shape = t.shape.as_ref()?;
    Some(
        shape
            .dim
            .iter()
            .map(|d| match &d.value {
                Some(Value::DimValue(n)) => Dim::Fixed(*n),
                Some(Value::DimParam(s)) if !s.is_empty() => Dim::Symbol(s.clone()),
                _ => Dim::Unknown,
            })
            .collect(),
    )
}

/// Element type of a value-info, if it is a tensor.
pub fn value_elem_type(v: &ValueInfoProto) -> Option<i32> {
    match v.r#type.as_ref()?.value.as_ref()? {
        type_proto::Value::TensorType(t) => t.elem_type,
        _ => None,
    }
}

/// Names a subgraph reads without defining them (outer-scope values), recursively.
fn collect_outer_reads(g: &GraphProto, out: &mut HashSet<String>) {
    let mut defined: HashSet<&str> = HashSet::new();
    defined.extend(g.input.iter().filter_map(|v| v.name.as_deref()));
    defined.extend(g.initializer.iter().filter_map(|t| t.name.as_deref()));
    for n in &g.node {
        defined.extend(n.output.iter().map(String::as_str));
    }
    for n in &g.node {
        for i in &n.input {
            if !i.is_empty() && !defined.contains(i.as_str()) {
                out.insert(i.clone());
            }
        }
        for a in &n.attribute {
            for sub in a.g.iter().chain(&a.graphs) {
                let mut inner = HashSet::new();
                collect_outer_reads(sub, &mut inner);
                out.extend(inner.into_iter().filter(|i| !defined.contains(i.as_str())));
            }
        }
    }
    for o in &g.output {
        if let Some(n) = o.name.as_deref() {
            if !defined.contains(n) {
                out.insert(n.to_string());
            }
        }
    }
}

/// Count of nodes per `domain::op_type` ("" domain printed bare) over every graph of a model.
pub fn op_histogram(model: &crate::proto::ModelProto) -> BTreeMap<String, usize> {
    let mut h = BTreeMap::new();
    crate::walk::for_each_graph(model, &mut |g| {
        for n in &g.node {
            *h.entry(op_key(n)).or_insert(0) += 1;
        }
    });
    h
}

/// `op_type`, prefixed by its domain unless it is the default one.
pub fn op_key(n: &NodeProto) -> String {
    let op = n.op_type.as_deref().unwrap_or("");
    match n.domain.as_deref() {
        Some(d) if !crate::node::is_default_domain(Some(d)) => format!("{d}::{op}"),
        _ => op.to_string(),
    }
}

/// Parameter statistics of one element type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParamStats {
    pub tensors: u64,
    pub elements: u64,
    pub bytes: u64,
}

/// Initializer elements and bytes per element type (short names), over every graph.
pub fn parameter_stats(model: &crate::proto::ModelProto) -> BTreeMap<String, ParamStats> {
    let mut out: BTreeMap<String, ParamStats> = BTreeMap::new();
    crate::walk::for_each_graph(model, &mut |g| {
        for t in &g.initializer {
            let code = t.data_type.unwrap_or(0);
            let s = out.entry(crate::dtype::short_name(code)).or_default();
            s.tensors += 1;
            s.elements = s
                .elements
                .saturating_add(crate::tensor::saturating_element_count(t));
            s.bytes = s.bytes.saturating_add(crate::tensor::payload_len(t));
        }
    });
    out
}
