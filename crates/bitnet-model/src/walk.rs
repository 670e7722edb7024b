//! Visiting every graph and every tensor of a model: the main graph, subgraphs held in node
//! attributes (If/Loop/Scan bodies), model-local functions and training-info graphs.

use crate::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, SparseTensorProto, TensorProto,
};

/// Calls `f` on every graph of the model, outer graphs before the subgraphs they hold.
pub fn for_each_graph_mut<E>(
    model: &mut ModelProto,
    f: &mut impl FnMut(&mut GraphProto) -> Result<(), E>,
) -> Result<(), E> {
    if let Some(g) = model.graph.as_mut() {
        graph_mut(g, f)?;
    }
    for func in &mut model.functions {
        for node in &mut func.node {
            node_graphs_mut(node, f)?;
        }
    }
    for ti in &mut model.training_info {
        if let Some(g) = ti.initialization.as_mut() {
            graph_mut(g, f)?;
        }
        if let Some(g) = ti.algorithm.as_mut() {
            graph_mut(g, f)?;
        }
    }
    Ok(())
}

fn graph_mut<E>(
    g: &mut GraphProto,
    f: &mut impl FnMut(&mut GraphProto) -> Result<(), E>,
) -> Result<(), E> {
    f(g)?;
    for node in &mut g.node {
        node_graphs_mut(node, f)?;
    }
    Ok(())
}

fn node_graphs_mut<E>(
    node: &mut NodeProto,
    f: &mut impl FnMut(&mut GraphProto) -> Result<(), E>,
) -> Result<(), E> {
    for attr in &mut node.attribute {
        if let Some(g) = attr.g.as_mut() {
            graph_mut(g, f)?;
        }
        for g in &mut attr.graphs {
            graph_mut(g, f)?;
        }
    }
    Ok(())
}

/// Calls `f` on every graph of the model (read-only), outer graphs first.
pub fn for_each_graph<'m>(model: &'m ModelProto, f: &mut impl FnMut(&'m GraphProto)) {
    fn graph<'m>(g: &'m GraphProto, f: &mut impl FnMut(&'m GraphProto)) {
        f(g);
        for node in &g.node {
            node_graphs(node, f);
        }
    }
    fn node_graphs<'m>(node: &'m NodeProto, f: &mut impl FnMut(&'m GraphProto)) {
        for attr in &node.attribute {
            if let Some(g) = attr.g.as_ref() {
                graph(g, f);
            }
            for g in &attr.graphs {
                graph(g, f);
            }
        }
    }
    if let Some(g) = model.graph.as_ref() {
        graph(g, f);
    }
    for func in &model.functions {
        for node in &func.node {
            node_graphs(node, f);
        }
    }
    for ti in &model.training_info {
        if let Some(g) = ti.initialization.as_ref() {
            graph(g, f);
        }
        if let Some(g) = ti.algorithm.as_ref() {
            graph(g, f);
        }
    }
}

/// Calls `f` on every tensor stored anywhere in the model: initializers, sparse initializers,
/// tensors in node attributes (Constant values, subgraph nodes, function nodes).
pub fn for_each_tensor_mut<E>(
    model: &mut ModelProto,
    f: &mut impl FnMut(&mut TensorProto) -> Result<(), E>,
) -> Result<(), E> {
    fn sparse<E>(
        s: &mut SparseTensorProto,
        f: &mut impl FnMut(&mut TensorProto) -> Result<(), E>,
    ) -> Result<(), E> {
        if let Some(t) = s.values.as_mut() {
            f(t)?;
        }
        if let Some(t) = s.indices.as_mut() {
            f(t)?;
        }
        Ok(())
    }
    fn attr<E>(
        a: &mut AttributeProto,
        f: &mut impl FnMut(&mut TensorProto) -> Result<(), E>,
    ) -> Result<(), E> {
        if let Some(t) = a.t.as_mut() {
            f(t)?;
        }
        for t in &mut a.tensors {
            f(t)?;
        }
        if let Some(s) = a.sparse_tensor.as_mut() {
            sparse(s, f)?;
        }
        for s in &mut a.sparse_tensors {
            sparse(s, f)?;
        }
        Ok(())
    }
    for_each_graph_mut(model, &mut |g: &mut GraphProto| {
        for t in &mut g.initializer {
            f(t)?;
        }
        for s in &mut g.sparse_initializer {
            sparse(s, f)?;
        }
        for node in &mut g.node {
            for a in &mut node.attribute {
                attr(a, f)?;
            }
        }
        Ok(())
    })?;
    for func in &mut model.functions {
        for node in &mut func.node {
            for a in &mut node.attribute {
                attr(a, f)?;
            }
        }
    }
    Ok(())
}
