//! Weights that subgraphs (If branches, Loop and Scan bodies) read from an enclosing graph.
//!
//! Conversion works graph by graph, and a subgraph's layer whose weight is an initializer of
//! an outer graph would look computed at run time. Before conversion, [`localize`] copies such
//! weights into the subgraph that reads them (a cheap copy: payloads are shared `Bytes`), so the
//! subgraph's own analysis converts them like local initializers. After conversion,
//! [`release`] drops the copies that were not converted (their layers read the outer tensor
//! again, as before) and then the outer initializers that nothing reads any more.

use std::collections::{HashMap, HashSet};

use bitnet_model::graph::GraphIndex;
use bitnet_model::proto::{GraphProto, ModelProto, TensorProto};

/// Marks a copy made by [`localize`] (in its `doc_string`) until [`release`] runs.
const COPY_MARK: &str = "bitnet-onnx: copy of an outer-scope weight";

/// Copies every float 2-D initializer that a `MatMul`/`Gemm` of a subgraph reads as its weight
/// (input 1) from an enclosing graph into that subgraph. Returns the names copied.
pub fn localize(model: &mut ModelProto) -> HashSet<String> {
    let mut copied = HashSet::new();
    if let Some(g) = model.graph.as_mut() {
        localize_graph(g, &HashMap::new(), &mut copied);
    }
    copied
}

/// Names defined in `g` itself: inputs, initializers and node outputs.
fn defined(g: &GraphProto) -> HashSet<String> {
    let mut d: HashSet<String> = g.input.iter().filter_map(|v| v.name.clone()).collect();
    d.extend(g.initializer.iter().filter_map(|t| t.name.clone()));
    for n in &g.node {
        d.extend(n.output.iter().filter(|o| !o.is_empty()).cloned());
    }
    d
}

fn is_weight_candidate(t: &TensorProto) -> bool {
    use bitnet_model::proto::tensor_proto::DataType;
    t.dims.len() == 2
        && matches!(
            t.data_type.map(DataType::try_from),
            Some(Ok(DataType::Float | DataType::Float16 | DataType::Bfloat16))
        )
}

fn localize_graph(
    g: &mut GraphProto,
    outer: &HashMap<String, TensorProto>,
    copied: &mut HashSet<String>,
) {
    let local = defined(g);
    if !outer.is_empty() {
        let mut wanted: Vec<String> = Vec::new();
        for n in &g.node {
            let op = n.op_type.as_deref().unwrap_or("");
            let domain = n.domain.as_deref().unwrap_or("");
            if !(op == "MatMul" || op == "Gemm")
                || !bitnet_model::node::is_default_domain(Some(domain))
            {
                continue;
            }
            if let Some(w) = n.input.get(1) {
                if !local.contains(w) && outer.contains_key(w) && !wanted.contains(w) {
                    wanted.push(w.clone());
                }
            }
        }
        for w in wanted {
            let mut t = outer[&w].clone();
            t.doc_string = Some(COPY_MARK.to_string());
            g.initializer.push(t);
            copied.insert(w);
        }
    }
    // The scope subgraphs of `g` see: the outer one, less what `g` redefines, plus `g`'s
    // initializers (unless a graph input of the same name can override them at run time).
    let inputs: HashSet<&str> = g.input.iter().filter_map(|v| v.name.as_deref()).collect();
    let mut scope: HashMap<String, TensorProto> = outer
        .iter()
        .filter(|(k, _)| !local.contains(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for t in &g.initializer {
        if t.doc_string.as_deref() == Some(COPY_MARK) {
            continue;
        }
        if let Some(name) = t.name.as_deref() {
            if !inputs.contains(name) && is_weight_candidate(t) {
                scope.insert(name.to_string(), t.clone());
            }
        }
    }
    if scope.is_empty() {
        return;
    }
    for n in &mut g.node {
        for a in &mut n.attribute {
            if let Some(sub) = a.g.as_mut() {
                localize_graph(sub, &scope, copied);
            }
            for sub in &mut a.graphs {
                localize_graph(sub, &scope, copied);
            }
        }
    }
}

/// Undoes what [`localize`] left over: copies still present (their layers were not converted)
/// are dropped, then the initializers named in `copied` that no node, subgraph or graph output
/// reads any more are removed.
pub fn release(model: &mut ModelProto, copied: &HashSet<String>) {
    if copied.is_empty() {
        return;
    }
    if let Some(g) = model.graph.as_mut() {
        drop_copies(g);
        drop_unread(g, copied);
    }
}

fn drop_copies(g: &mut GraphProto) {
    g.initializer
        .retain(|t| t.doc_string.as_deref() != Some(COPY_MARK));
    for n in &mut g.node {
        for a in &mut n.attribute {
            for sub in a.g.iter_mut().chain(a.graphs.iter_mut()) {
                drop_copies(sub);
            }
        }
    }
}

fn drop_unread(g: &mut GraphProto, copied: &HashSet<String>) {
    let unread: HashSet<String> = {
        let index = GraphIndex::new(g);
        g.initializer
            .iter()
            .filter_map(|t| t.name.clone())
            .filter(|n| {
                copied.contains(n)
                    && index.consumers(n).is_empty()
                    && !index.is_captured(n)
                    && !index.is_graph_output(n)
                    && !index.is_graph_input(n)
            })
            .collect()
    };
    g.initializer
        .retain(|t| !t.name.as_ref().is_some_and(|n| unread.contains(n)));
    for n in &mut g.node {
        for a in &mut n.attribute {
            for sub in a.g.iter_mut().chain(a.graphs.iter_mut()) {
                drop_unread(sub, copied);
            }
        }
    }
}
