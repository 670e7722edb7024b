//! Weights that subgraphs (If branches, Loop and Scan bodies) read from an enclosing graph.
//!
//! Conversion works graph by graph, and a subgraph's layer whose weight is an initializer of
//! an outer graph would look computed at run time. Before conversion, [`localize`] copies such
//! weights into the subgraph that reads them (a cheap copy: payloads are shared `Bytes`), so the
//! subgraph's own analysis converts them like local initializers. Right after each graph is
//! converted, [`Copies::drop_unconverted`] drops its copies that were not converted (their
//! layers read the outer tensor again, as before); after all graphs, [`release`] removes the
//! outer initializers that nothing reads any more.
//!
//! Which tensors are copies is known to the driver alone ([`Copies`]), never marked in the
//! model. Graphs are numbered in the order `walk::for_each_graph_mut` visits the main graph's
//! tree (a graph before the subgraphs its nodes hold, nodes in order); conversion never adds,
//! removes or reorders a node that holds a subgraph, so the numbers stay valid throughout.

use std::collections::{HashMap, HashSet};

use bitnet_model::graph::GraphIndex;
use bitnet_model::proto::{GraphProto, ModelProto, TensorProto};

/// The copies [`localize`] made, by graph.
#[derive(Debug, Default)]
pub struct Copies {
    /// For each graph of the main graph's tree, in visiting order, the names copied into it.
    by_graph: Vec<Vec<String>>,
    /// Every name copied anywhere.
    names: HashSet<String>,
}

impl Copies {
    /// True when nothing was copied.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// After graph number `k` was converted: its copies that are still there (their layers
    /// were not converted, or another reader keeps them) are dropped, so those layers read the
    /// outer tensor again.
    pub fn drop_unconverted(&self, k: usize, g: &mut GraphProto) {
        if let Some(names) = self.by_graph.get(k).filter(|n| !n.is_empty()) {
            g.initializer
                .retain(|t| !t.name.as_ref().is_some_and(|n| names.contains(n)));
        }
    }

    /// Whether graph number `k` holds every copy made into it (true before its conversion).
    pub fn present(&self, k: usize, g: &GraphProto) -> bool {
        self.by_graph.get(k).is_none_or(|names| {
            names
                .iter()
                .all(|n| g.initializer.iter().any(|t| t.name.as_ref() == Some(n)))
        })
    }
}

/// Copies every float 2-D initializer that a `MatMul`/`Gemm` of a subgraph reads as its weight
/// (input 1) from an enclosing graph into that subgraph.
pub fn localize(model: &mut ModelProto) -> Copies {
    let mut copies = Copies::default();
    if let Some(g) = model.graph.as_mut() {
        localize_graph(g, &HashMap::new(), &mut copies);
    }
    copies
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

fn localize_graph(g: &mut GraphProto, outer: &HashMap<String, TensorProto>, copies: &mut Copies) {
    let local = defined(g);
    let mut here = Vec::new();
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
            g.initializer.push(outer[&w].clone());
            copies.names.insert(w.clone());
            here.push(w);
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
        if let Some(name) = t.name.as_deref() {
            if !inputs.contains(name) && !here.iter().any(|h| h == name) && is_weight_candidate(t) {
                scope.insert(name.to_string(), t.clone());
            }
        }
    }
    copies.by_graph.push(here);
    // Every subgraph is numbered, with or without a scope to copy from.
    for n in &mut g.node {
        for a in &mut n.attribute {
            if let Some(sub) = a.g.as_mut() {
                localize_graph(sub, &scope, copies);
            }
            for sub in &mut a.graphs {
                localize_graph(sub, &scope, copies);
            }
        }
    }
}

/// After every graph was converted (and each dropped its unconverted copies): the outer
/// initializers that were copied and that no node, subgraph or graph output reads any more
/// are removed.
pub fn release(model: &mut ModelProto, copies: &Copies) {
    if copies.is_empty() {
        return;
    }
    if let Some(g) = model.graph.as_mut() {
        drop_unread(g, &copies.names);
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
