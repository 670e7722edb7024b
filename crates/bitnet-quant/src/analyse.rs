//! Finding linear layers: every `MatMul` and `Gemm` node, whether its weight is a constant
//! 2-D float tensor (folding constant subgraphs when needed), and, when it is not a conversion
//! candidate, why not.

use std::path::Path;

use bitnet_model::graph::GraphIndex;
use bitnet_model::proto::tensor_proto::DataType;
use bitnet_model::proto::{GraphProto, NodeProto};
use serde::Serialize;

use crate::fold::Folder;

/// How the weight is laid out in the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Layout {
    /// `[K, N]`: MatMul's B, or Gemm with transB = 0.
    KN,
    /// `[N, K]`: Gemm with transB = 1.
    NK,
}

/// One `MatMul`/`Gemm` node and what can be done with it.
#[derive(Debug, Clone, Serialize)]
pub struct LinearLayer {
    pub node_index: usize,
    pub node: String,
    pub op: String,
    /// The value feeding the weight input (input 1).
    pub weight: String,
    /// Weight shape as stored in the graph, when known.
    pub shape: Vec<i64>,
    pub output: String,
    pub candidate: bool,
    pub reason: Option<String>,
    /// True when the weight is produced by constant nodes that folding evaluated.
    pub folded: bool,
    #[serde(skip)]
    pub layout: Layout,
    #[serde(skip)]
    pub dtype: i32,
}

/// Ops through which a linear layer's output may reach a graph output and still be "the head".
const HEAD_PASS_THROUGH: &[&str] = &[
    "Add",
    "Identity",
    "Reshape",
    "Transpose",
    "Cast",
    "Softmax",
    "LogSoftmax",
    "Squeeze",
    "Unsqueeze",
    "Flatten",
];

pub(crate) use bitnet_model::node::attr_i;

/// Name used for a node in reports: its name, or `op_type#index` when unnamed.
pub fn node_label(node: &NodeProto, index: usize) -> String {
    match node.name.as_deref() {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => format!("{}#{index}", node.op_type.as_deref().unwrap_or("?")),
    }
}

/// True when `value` reaches a graph output through pass-through ops only.
pub fn feeds_graph_output(index: &GraphIndex, value: &str) -> bool {
    let mut stack = vec![value.to_string()];
    let mut seen = std::collections::HashSet::new();
    while let Some(v) = stack.pop() {
        if !seen.insert(v.clone()) {
            continue;
        }
        if index.is_graph_output(&v) {
            return true;
        }
        for &c in index.consumers(&v) {
            let n = index.node(c);
            if HEAD_PASS_THROUGH.contains(&n.op_type.as_deref().unwrap_or("")) {
                stack.extend(n.output.iter().cloned());
            }
        }
    }
    false
}

/// The value of a candidate's weight.
#[derive(Debug, Clone)]
pub enum WeightValue {
    /// Computed by folding constant nodes. Only its shape and type are kept: the converter
    /// folds it again when its batch is quantized, so no more than a batch of folded weights
    /// is ever in memory.
    Folded { dims: Vec<usize>, dtype: i32 },
    /// A float initializer of the graph, not decoded yet: the converter reads it when it
    /// quantizes it, so analysis costs no memory for it.
    Initializer { dims: Vec<usize>, dtype: i32 },
}

impl WeightValue {
    pub fn dims(&self) -> &[usize] {
        match self {
            WeightValue::Folded { dims, .. } => dims,
            WeightValue::Initializer { dims, .. } => dims,
        }
    }

    pub fn dtype(&self) -> i32 {
        match self {
            WeightValue::Folded { dtype, .. } => *dtype,
            WeightValue::Initializer { dtype, .. } => *dtype,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.dims().iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Drops the memory-mapped pages of the large initializers `folder` decoded (a packed weight
/// unpacked in the graph): they are read again from the file if needed.
pub fn release_decoded(
    index: &GraphIndex,
    folder: &mut Folder,
    source: Option<&bitnet_model::load::Mappings>,
) {
    for name in folder.decoded.drain(..) {
        if let (Some(src), Some(raw)) = (
            source,
            index.initializer(&name).and_then(|t| t.raw_data.as_ref()),
        ) {
            src.release(raw);
        }
    }
}

/// Finds every MatMul/Gemm of `graph`, folding constant weights. Returns the layers, the
/// weights of the candidates (by weight value name) and the folded nodes.
pub fn find_linear_layers(
    graph: &GraphProto,
    path: &Path,
    source: Option<&bitnet_model::load::Mappings>,
) -> (
    Vec<LinearLayer>,
    std::collections::BTreeMap<String, WeightValue>,
    Vec<usize>,
) {
    let index = GraphIndex::new(graph);
    let mut folder = Folder::new(&index, path);
    let mut layers = Vec::new();
    let mut weights = std::collections::BTreeMap::new();
    for (i, node) in graph.node.iter().enumerate() {
        let op = node.op_type.as_deref().unwrap_or("");
        let domain = node.domain.as_deref().unwrap_or("");
        if !(op == "MatMul" || op == "Gemm") || !bitnet_model::node::is_default_domain(Some(domain))
        {
            continue;
        }
        let label = node_label(node, i);
        let a = node.input.first().cloned().unwrap_or_default();
        let w = node.input.get(1).cloned().unwrap_or_default();
        let output = node.output.first().cloned().unwrap_or_default();
        let layout = if op == "Gemm" && attr_i(node, "transB").unwrap_or(0) == 1 {
            Layout::NK
        } else {
            Layout::KN
        };
        let mut layer = LinearLayer {
            node_index: i,
            node: label,
            op: op.to_string(),
            weight: w.clone(),
            shape: index
                .shape(&w)
                .map(|s| {
                    s.iter()
                        .map(|d| match d {
                            bitnet_model::Dim::Fixed(n) => *n,
                            _ => -1,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            output,
            candidate: false,
            reason: None,
            folded: false,
            layout,
            dtype: index.elem_type(&w).unwrap_or(0),
        };
        let reason = (|| -> Result<(), String> {
            if index.is_overridable_initializer(&w) {
                return Err("weight is a graph input with a default initializer (can be overridden at run time)".into());
            }
            let from_dq = index
                .producer(&w)
                .map(|p| index.node(p).op_type.as_deref() == Some("DequantizeLinear"))
                .unwrap_or(false);
            if from_dq {
                return Err("weight is already quantized (produced by DequantizeLinear)".into());
            }
            // A plain initializer is described from its header (validated at load); only
            // computed weights are folded (and so decoded) here.
            let c = match index.initializer(&w) {
                Some(t) => WeightValue::Initializer {
                    dims: t.dims.iter().map(|&d| d.max(0) as usize).collect(),
                    dtype: t.data_type.unwrap_or(0),
                },
                None => match transposed_initializer(&index, &w) {
                    Some((node, dims, dtype)) => {
                        // The converter folds it; the Transpose is then dead like any folded
                        // node.
                        folder.visited.push(node);
                        WeightValue::Folded { dims, dtype }
                    }
                    None => match folder.eval(&w) {
                        Ok(c) => {
                            let v = WeightValue::Folded {
                                dims: c.dims,
                                dtype: c.dtype,
                            };
                            folder.evict_large();
                            release_decoded(&index, &mut folder, source);
                            v
                        }
                        Err(e) => return Err(fold_reason(&mut folder, &a, e)),
                    },
                },
            };
            layer.shape = c.dims().iter().map(|&d| d as i64).collect();
            layer.dtype = c.dtype();
            layer.folded = index.initializer(&w).is_none();
            if c.dims().len() != 2 {
                return Err(format!("weight is not 2-D (shape {:?})", c.dims()));
            }
            if !matches!(
                DataType::try_from(c.dtype()),
                Ok(DataType::Float | DataType::Float16 | DataType::Bfloat16)
            ) {
                return Err(format!(
                    "weight is {}, not float32/float16/bfloat16",
                    bitnet_model::dtype::name(c.dtype())
                ));
            }
            if c.is_empty() {
                return Err("weight is empty".into());
            }
            weights.insert(w.clone(), c);
            Ok(())
        })();
        match reason {
            Ok(()) => layer.candidate = true,
            Err(r) => layer.reason = Some(r),
        }
        layers.push(layer);
    }
    let visited = std::mem::take(&mut folder.visited);
    (layers, weights, visited)
}

/// The producing node, dims and type of `value` when it is a `Transpose` of an initializer (a tied LM head
/// reading the embedding table), from the initializer's header: such a weight can always be
/// folded, and describing it costs no memory (folding it here would hold the whole table twice).
fn transposed_initializer(index: &GraphIndex, value: &str) -> Option<(usize, Vec<usize>, i32)> {
    let at = index.producer(value)?;
    let node = index.node(at);
    let domain = node.domain.as_deref().unwrap_or("");
    if node.op_type.as_deref() != Some("Transpose")
        || !bitnet_model::node::is_default_domain(Some(domain))
    {
        return None;
    }
    let t = index.initializer(node.input.first()?)?;
    let dims: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
    let rank = dims.len();
    let perm: Vec<usize> = match bitnet_model::node::attr(node, "perm") {
        Some(a) if !a.ints.is_empty() => a
            .ints
            .iter()
            .map(|&p| usize::try_from(p).ok().filter(|&p| p < rank))
            .collect::<Option<Vec<_>>>()?,
        _ => (0..rank).rev().collect(),
    };
    let mut seen = vec![false; rank];
    if perm.len() != rank || perm.iter().any(|&p| std::mem::replace(&mut seen[p], true)) {
        return None;
    }
    Some((at, perm.iter().map(|&p| dims[p]).collect(), t.data_type?))
}

/// Why a weight that is not an initializer cannot be folded.
fn fold_reason(folder: &mut Folder, a: &str, e: crate::fold::FoldError) -> String {
    match e {
        crate::fold::FoldError::RunTime(_) => {
            if folder.eval(a).is_ok() {
                "weight is computed at run time (only the first operand is constant)".into()
            } else {
                "both operands computed at run time".into()
            }
        }
        e => format!("weight cannot be folded: {e}"),
    }
}
