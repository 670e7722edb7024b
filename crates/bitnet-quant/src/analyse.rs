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

#[cfg(test)]
mod tests {
    use bitnet_model::node::int_attr;
    use bitnet_model::proto::AttributeProto;
    use bitnet_model::{tensor, Dim};

    use super::*;
    use crate::emit::testing::{
        constant, gemm, graph, layer, layers, matmul, node, shared, typed, value, weight, Gemm,
    };

    const FLOAT: i32 = DataType::Float as i32;

    fn find(g: &GraphProto) -> (Vec<LinearLayer>, Vec<(String, WeightValue)>, Vec<usize>) {
        let (layers, weights, folded) = find_linear_layers(g, Path::new("test.onnx"), None);
        (layers, weights.into_iter().collect(), folded)
    }

    /// `mm: y = MatMul(x, W)` with `W` computed by `producers` from these initializers.
    fn computed(
        producers: Vec<NodeProto>,
        inits: Vec<bitnet_model::proto::TensorProto>,
    ) -> GraphProto {
        let mut nodes = producers;
        nodes.push(node("mm", "MatMul", &["x", "W"], &["y"]));
        graph(nodes, inits, &["x"], &["y"])
    }

    fn ints_attr(name: &str, v: &[i64]) -> AttributeProto {
        AttributeProto {
            name: Some(name.into()),
            ints: v.to_vec(),
            r#type: Some(bitnet_model::proto::attribute_proto::AttributeType::Ints as i32),
            ..Default::default()
        }
    }

    fn reason(l: &LinearLayer) -> &str {
        assert!(!l.candidate, "{} is a candidate", l.node);
        l.reason
            .as_deref()
            .expect("a layer that is no candidate says why")
    }

    #[test]
    fn matmul_on_an_initializer_is_a_kn_candidate() {
        let (ls, weights, folded) = find(&matmul(4, 8));
        assert_eq!(ls.len(), 1);
        let l = &ls[0];
        assert_eq!(
            (l.node_index, l.node.as_str(), l.op.as_str()),
            (0, "mm", "MatMul")
        );
        assert_eq!((l.weight.as_str(), l.output.as_str()), ("W", "y"));
        assert_eq!(l.shape, [4, 8]);
        assert_eq!(l.dtype, FLOAT);
        assert_eq!(l.layout, Layout::KN);
        assert!(l.candidate);
        assert_eq!(l.reason, None);
        assert!(!l.folded);
        assert_eq!(weights.len(), 1);
        assert_eq!(weights[0].0, "W");
        assert!(matches!(
            &weights[0].1,
            WeightValue::Initializer { dims, dtype } if dims == &[4, 8] && *dtype == FLOAT
        ));
        assert_eq!(weights[0].1.len(), 32);
        assert!(folded.is_empty());
    }

    #[test]
    fn gemm_layout_follows_trans_b() {
        let nk = layer(&gemm(4, 8, &Gemm::default()), "gemm");
        assert_eq!((nk.layout, nk.shape.clone()), (Layout::NK, vec![8, 4]));
        assert!(nk.candidate);
        let kn = layer(
            &gemm(
                4,
                8,
                &Gemm {
                    trans_b: false,
                    ..Gemm::default()
                },
            ),
            "gemm",
        );
        assert_eq!((kn.layout, kn.shape.clone()), (Layout::KN, vec![4, 8]));
        assert!(kn.candidate);
        // An explicit transB = 0 is KN too.
        let mut g = gemm(
            4,
            8,
            &Gemm {
                trans_b: false,
                ..Gemm::default()
            },
        );
        g.node[0].attribute.push(int_attr("transB", 0));
        assert_eq!(layer(&g, "gemm").layout, Layout::KN);
        // Only Gemm has transB: a MatMul carrying one is still KN.
        let mut g = matmul(4, 8);
        g.node[0].attribute.push(int_attr("transB", 1));
        assert_eq!(layer(&g, "mm").layout, Layout::KN);
    }

    #[test]
    fn half_precision_weights_are_candidates() {
        for (t, dt) in [
            (
                tensor::from_f32_as_f16("W", &[4, 8], &[0.5; 32]),
                DataType::Float16,
            ),
            (
                tensor::from_f32_as_bf16("W", &[4, 8], &[0.5; 32]),
                DataType::Bfloat16,
            ),
        ] {
            let mut g = matmul(4, 8);
            g.initializer = vec![t];
            let l = layer(&g, "mm");
            assert!(l.candidate, "{dt:?}: {:?}", l.reason);
            assert_eq!(l.dtype, dt as i32);
        }
    }

    #[test]
    fn shared_weight_is_one_entry_for_two_layers() {
        let (ls, weights, _) = find(&shared(4, 8));
        let names: Vec<_> = ls.iter().map(|l| (l.node.as_str(), l.candidate)).collect();
        assert_eq!(names, [("mm0", true), ("mm1", true)]);
        assert_eq!(weights.len(), 1);
        assert_eq!(weights[0].0, "W");
    }

    #[test]
    fn weight_from_a_graph_input_is_not_a_candidate() {
        // Both operands are graph inputs; W's declared shape is what the layer reports.
        let mut g = graph(
            vec![node("mm", "MatMul", &["x", "W"], &["y"])],
            vec![],
            &["x"],
            &["y"],
        );
        g.input.push(typed(
            "W",
            DataType::Float,
            &[Dim::Symbol("K".into()), Dim::Fixed(8)],
        ));
        let (ls, weights, folded) = find(&g);
        assert_eq!(reason(&ls[0]), "both operands computed at run time");
        assert_eq!(ls[0].shape, [-1, 8]);
        assert_eq!(ls[0].dtype, FLOAT);
        assert!(!ls[0].folded);
        assert!(weights.is_empty());
        assert!(folded.is_empty());

        // The first operand constant, the weight a graph input.
        let mut g = graph(
            vec![node("mm", "MatMul", &["A", "W"], &["y"])],
            vec![weight("A", &[2, 4])],
            &["W"],
            &["y"],
        );
        g.input[0] = value("W");
        let l = layer(&g, "mm");
        assert!(
            reason(&l).contains("computed at run time")
                && reason(&l).contains("only the first operand is constant"),
            "{:?}",
            l.reason
        );
        assert_eq!((l.shape.clone(), l.dtype), (vec![], 0));
    }

    #[test]
    fn weight_computed_from_a_graph_input_is_not_a_candidate() {
        // W = Add(W0, x): folding stops at x.
        let g = computed(
            vec![node("add", "Add", &["W0", "x"], &["W"])],
            vec![weight("W0", &[4, 8])],
        );
        let (ls, weights, _) = find(&g);
        assert_eq!(reason(&ls[0]), "both operands computed at run time");
        assert!(weights.is_empty());
    }

    #[test]
    fn overridable_initializer_is_not_a_candidate() {
        let mut g = matmul(4, 8);
        g.input.push(value("W"));
        let l = layer(&g, "mm");
        assert!(
            reason(&l).contains("graph input with a default initializer"),
            "{:?}",
            l.reason
        );
        assert!(reason(&l).contains("overridden at run time"));
    }

    #[test]
    fn weight_from_dequantize_linear_is_already_quantized() {
        let g = computed(
            vec![node("dq", "DequantizeLinear", &["Wq", "s"], &["W"])],
            vec![
                tensor::from_i8("Wq", &[4, 8], &[1; 32]),
                tensor::from_f32("s", &[], &[0.5]),
            ],
        );
        let (ls, weights, folded) = find(&g);
        assert_eq!(ls.len(), 1);
        assert!(
            reason(&ls[0]).contains("already quantized"),
            "{:?}",
            ls[0].reason
        );
        assert!(reason(&ls[0]).contains("DequantizeLinear"));
        assert!(weights.is_empty());
        assert!(folded.is_empty());
    }

    #[test]
    fn transpose_of_an_initializer_is_folded() {
        // Without perm (reversed dims) and with an explicit one.
        for perm in [None, Some([1, 0])] {
            let mut t = node("t", "Transpose", &["E"], &["W"]);
            if let Some(p) = perm {
                t.attribute.push(ints_attr("perm", &p));
            }
            let g = computed(vec![t], vec![weight("E", &[8, 4])]);
            let (ls, weights, folded) = find(&g);
            let l = &ls[0];
            assert!(l.candidate, "{perm:?}: {:?}", l.reason);
            assert!(l.folded);
            assert_eq!((l.node_index, l.shape.clone()), (1, vec![4, 8]));
            assert_eq!(l.dtype, FLOAT);
            assert_eq!(weights.len(), 1);
            assert!(matches!(
                &weights[0].1,
                WeightValue::Folded { dims, dtype } if dims == &[4, 8] && *dtype == FLOAT
            ));
            assert_eq!(folded, [0], "the Transpose is reported folded");
        }
    }

    #[test]
    fn transpose_to_three_dims_is_folded_but_not_2d() {
        let mut t = node("t", "Transpose", &["E"], &["W"]);
        t.attribute.push(ints_attr("perm", &[0, 2, 1]));
        let g = computed(vec![t], vec![weight("E", &[2, 3, 4])]);
        let (ls, weights, _) = find(&g);
        assert_eq!(reason(&ls[0]), "weight is not 2-D (shape [2, 4, 3])");
        assert_eq!(ls[0].shape, [2, 4, 3]);
        assert!(ls[0].folded);
        assert!(weights.is_empty());
    }

    #[test]
    fn mul_by_a_constant_is_folded() {
        let g = computed(
            vec![
                constant("c", "half", tensor::from_f32("h", &[], &[0.5])),
                node("mul", "Mul", &["W0", "half"], &["W"]),
            ],
            vec![weight("W0", &[4, 8])],
        );
        let (ls, weights, mut folded) = find(&g);
        let l = &ls[0];
        assert!(l.candidate, "{:?}", l.reason);
        assert!(l.folded);
        assert_eq!(
            (l.node_index, l.shape.clone(), l.dtype),
            (2, vec![4, 8], FLOAT)
        );
        assert_eq!(weights.len(), 1);
        assert_eq!(weights[0].0, "W");
        assert!(matches!(
            &weights[0].1,
            WeightValue::Folded { dims, dtype } if dims == &[4, 8] && *dtype == FLOAT
        ));
        folded.sort();
        assert_eq!(
            folded,
            [0, 1],
            "the Constant and the Mul are reported folded"
        );
    }

    #[test]
    fn unfoldable_producer_gives_a_reason() {
        // An op the folder does not evaluate.
        let g = computed(
            vec![node("relu", "Relu", &["W0"], &["W"])],
            vec![weight("W0", &[4, 8])],
        );
        let l = layer(&g, "mm");
        assert!(
            reason(&l).starts_with("weight cannot be folded"),
            "{:?}",
            l.reason
        );
        assert!(reason(&l).contains("Relu"));
        // A Transpose outside the default domain is not the transposed-initializer shortcut.
        let mut t = node("t", "Transpose", &["E"], &["W"]);
        t.domain = Some("com.example".into());
        let g = computed(vec![t], vec![weight("E", &[8, 4])]);
        let (ls, weights, folded) = find(&g);
        assert!(
            reason(&ls[0]).starts_with("weight cannot be folded"),
            "{:?}",
            ls[0].reason
        );
        assert!(weights.is_empty());
        assert!(folded.is_empty());
    }

    #[test]
    fn non_2d_weights_give_a_reason() {
        for dims in [vec![2, 4, 8], vec![8]] {
            let mut g = matmul(4, 8);
            g.initializer = vec![weight("W", &dims)];
            let (ls, weights, _) = find(&g);
            let want: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
            assert_eq!(
                reason(&ls[0]),
                format!("weight is not 2-D (shape {want:?})")
            );
            assert_eq!(ls[0].shape, dims);
            assert!(!ls[0].folded);
            assert!(weights.is_empty());
        }
    }

    #[test]
    fn non_float_weights_give_a_reason() {
        let mut g = matmul(4, 8);
        g.initializer = vec![tensor::from_i64("W", &[4, 8], &[1; 32])];
        let (ls, weights, _) = find(&g);
        let r = reason(&ls[0]);
        assert!(r.contains("INT64"), "{r}");
        assert!(r.contains("not float32/float16/bfloat16"), "{r}");
        assert_eq!(ls[0].dtype, DataType::Int64 as i32);
        assert_eq!(ls[0].shape, [4, 8]);
        assert!(weights.is_empty());
    }

    #[test]
    fn empty_weight_gives_a_reason() {
        let mut g = matmul(4, 8);
        g.initializer = vec![weight("W", &[0, 8])];
        let (ls, weights, _) = find(&g);
        assert_eq!(reason(&ls[0]), "weight is empty");
        assert!(weights.is_empty());
    }

    #[test]
    fn other_domains_and_ops_are_ignored() {
        let mut ms = node("ms", "MatMul", &["x", "W"], &["y0"]);
        ms.domain = Some("com.microsoft".into());
        let mut onnx = node("", "Gemm", &["x", "W"], &["y2"]);
        onnx.domain = Some("ai.onnx".into());
        let g = graph(
            vec![
                ms,
                node("relu", "Relu", &["x"], &["y1"]),
                onnx,
                node("mm", "MatMul", &["x", "W"], &["y3"]),
            ],
            vec![weight("W", &[4, 8])],
            &["x"],
            &["y0", "y1", "y2", "y3"],
        );
        let found: Vec<_> = layers(&g)
            .into_iter()
            .map(|l| (l.node_index, l.node, l.op))
            .collect();
        assert_eq!(
            found,
            [
                (2, "Gemm#2".to_string(), "Gemm".to_string()),
                (3, "mm".to_string(), "MatMul".to_string())
            ]
        );
    }

    #[test]
    fn node_label_is_the_name_or_op_and_index() {
        let named = node("proj", "MatMul", &[], &[]);
        assert_eq!(node_label(&named, 3), "proj");
        let empty = node("", "MatMul", &[], &[]);
        assert_eq!(node_label(&empty, 3), "MatMul#3");
        assert_eq!(node_label(&NodeProto::default(), 5), "?#5");
    }

    /// `head: y = MatMul(x, W)`, then `op: out = op(y)`, `out` the graph output.
    fn after_head(op: &str) -> GraphProto {
        graph(
            vec![
                node("head", "MatMul", &["x", "W"], &["y"]),
                node("next", op, &["y"], &["out"]),
            ],
            vec![weight("W", &[4, 8])],
            &["x"],
            &["out"],
        )
    }

    #[test]
    fn feeds_graph_output_through_pass_through_ops_only() {
        for op in HEAD_PASS_THROUGH {
            let g = after_head(op);
            assert!(feeds_graph_output(&GraphIndex::new(&g), "y"), "{op}");
        }
        for op in ["Relu", "MatMul", "Mul", "Concat", "Gelu"] {
            let g = after_head(op);
            assert!(!feeds_graph_output(&GraphIndex::new(&g), "y"), "{op}");
        }
        // The graph output itself; a value read by nothing and not an output.
        let g = matmul(4, 8);
        let index = GraphIndex::new(&g);
        assert!(feeds_graph_output(&index, "y"));
        assert!(!feeds_graph_output(&index, "nowhere"));
    }

    #[test]
    fn feeds_graph_output_follows_chains_and_branches() {
        // y -> Add -> Reshape -> Softmax -> out, and y -> Relu -> r (not an output).
        let g = graph(
            vec![
                node("head", "MatMul", &["x", "W"], &["y"]),
                node("relu", "Relu", &["y"], &["r"]),
                node("add", "Add", &["y", "b"], &["y1"]),
                node("reshape", "Reshape", &["y1", "s"], &["y2"]),
                node("softmax", "Softmax", &["y2"], &["out"]),
            ],
            vec![weight("W", &[4, 8])],
            &["x", "b", "s"],
            &["out"],
        );
        let index = GraphIndex::new(&g);
        assert!(feeds_graph_output(&index, "y"));
        assert!(feeds_graph_output(&index, "y1"));
        assert!(!feeds_graph_output(&index, "r"));
        // The same chain broken by one op that is not pass-through.
        let mut g = g.clone();
        g.node[3].op_type = Some("Mul".into());
        assert!(!feeds_graph_output(&GraphIndex::new(&g), "y"));
        // A cycle of pass-through ops that never reaches an output ends.
        let g = graph(
            vec![
                node("a", "Identity", &["p"], &["q"]),
                node("b", "Identity", &["q"], &["p"]),
            ],
            vec![],
            &[],
            &["z"],
        );
        assert!(!feeds_graph_output(&GraphIndex::new(&g), "p"));
    }
}
