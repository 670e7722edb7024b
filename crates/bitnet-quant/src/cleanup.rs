//! Clean up: removing what the rewrite made dead.

use std::collections::HashSet;

use bitnet_model::graph::GraphIndex;
use bitnet_model::proto::GraphProto;

/// Removes the folded constant nodes that no longer feed anything, and the initializers that
/// only they or the converted layers read. Dead code the model already had is left alone.
/// Returns the number of nodes removed.
pub fn remove_dead(
    g: &mut GraphProto,
    folded: &HashSet<String>,
    read_before: &HashSet<String>,
) -> usize {
    let before = g.node.len();
    let mut released: HashSet<String> = read_before.clone();
    loop {
        let index = GraphIndex::new(g);
        let dead: HashSet<usize> = (0..g.node.len())
            .filter(|&i| {
                let n = index.node(i);
                let pure = bitnet_model::node::in_default_domain(n)
                    && n.attribute
                        .iter()
                        .all(|a| a.g.is_none() && a.graphs.is_empty());
                let was_folded = n.output.first().is_some_and(|o| folded.contains(o));
                was_folded
                    && pure
                    && n.output.iter().all(|o| {
                        o.is_empty()
                            || (index.consumers(o).is_empty()
                                && !index.is_graph_output(o)
                                && !index.is_captured(o))
                    })
            })
            .collect();
        drop(index);
        if dead.is_empty() {
            break;
        }
        for &i in &dead {
            released.extend(g.node[i].input.iter().cloned());
        }
        let mut i = 0;
        g.node.retain(|_| {
            let keep = !dead.contains(&i);
            i += 1;
            keep
        });
    }
    let index = GraphIndex::new(g);
    let unused: HashSet<String> = g
        .initializer
        .iter()
        .filter_map(|t| t.name.clone())
        .filter(|n| {
            released.contains(n.as_str())
                && index.consumers(n).is_empty()
                && !index.is_graph_output(n)
                && !index.is_captured(n)
                && !index.is_graph_input(n)
        })
        .collect();
    drop(index);
    g.initializer
        .retain(|t| !t.name.as_ref().is_some_and(|n| unused.contains(n)));
    before - g.node.len()
}

#[cfg(test)]
mod tests {
    use bitnet_model::proto::NodeProto;
    use bitnet_model::tensor;

    use super::*;
    use crate::emit::testing::{constant, graph, graph_attr, node, ops, value, weight};

    fn set(names: &[&str]) -> HashSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn inits(g: &GraphProto) -> Vec<&str> {
        g.initializer
            .iter()
            .map(|t| t.name.as_deref().unwrap_or(""))
            .collect()
    }

    /// `mm: y = MatMul(x, Wq)` (a converted layer) after `nodes`, with these initializers
    /// besides `Wq`.
    fn converted(nodes: Vec<NodeProto>, inits: Vec<&str>) -> GraphProto {
        let mut nodes = nodes;
        nodes.push(node("mm", "MatMul", &["x", "Wq"], &["y"]));
        let mut ts: Vec<_> = inits.iter().map(|n| weight(n, &[4, 8])).collect();
        ts.push(tensor::from_i8("Wq", &[4, 8], &[1; 32]));
        graph(nodes, ts, &["x"], &["y"])
    }

    /// The folded weight chain `c: s = Constant`, `mul: W = Mul(W0, s)`, which the layer read
    /// before its conversion.
    fn chain() -> Vec<NodeProto> {
        vec![
            constant("c", "s", tensor::from_f32("s", &[], &[0.5])),
            node("mul", "Mul", &["W0", "s"], &["W"]),
        ]
    }

    #[test]
    fn a_dead_folded_chain_is_removed() {
        let mut g = converted(chain(), vec!["W0"]);
        let removed = remove_dead(&mut g, &set(&["s", "W"]), &set(&["W0"]));
        assert_eq!(removed, 2, "the Mul, then the Constant it read");
        assert_eq!(ops(&g), ["MatMul"]);
        assert_eq!(inits(&g), ["Wq"]);
    }

    #[test]
    fn the_initializers_removed_nodes_read_go_with_them() {
        // W0 was not in read_before: the Mul that read it is removed, so it goes too.
        let mut g = converted(chain(), vec!["W0"]);
        assert_eq!(remove_dead(&mut g, &set(&["s", "W"]), &set(&[])), 2);
        assert_eq!(inits(&g), ["Wq"]);
    }

    #[test]
    fn a_folded_node_still_read_is_kept() {
        // The Mul's W is still read by a Relu; the Constant feeds the Mul.
        let mut nodes = chain();
        nodes.push(node("relu", "Relu", &["W"], &["r"]));
        let mut g = converted(nodes, vec!["W0"]);
        assert_eq!(remove_dead(&mut g, &set(&["s", "W"]), &set(&["W0"])), 0);
        assert_eq!(ops(&g), ["Constant", "Mul", "Relu", "MatMul"]);
        assert_eq!(inits(&g), ["W0", "Wq"]);
    }

    #[test]
    fn a_folded_node_writing_a_graph_output_or_a_capture_is_kept() {
        let mut g = converted(chain(), vec!["W0"]);
        g.output.push(value("W"));
        assert_eq!(remove_dead(&mut g, &set(&["s", "W"]), &set(&["W0"])), 0);
        assert_eq!(ops(&g), ["Constant", "Mul", "MatMul"]);

        // A subgraph reads W: the node holding it stays (it is not folded), and so does the Mul.
        let branch = graph(
            vec![node("id", "Identity", &["W"], &["b"])],
            vec![],
            &[],
            &["b"],
        );
        let mut holder = node("if", "If", &["cond"], &["o"]);
        holder.attribute.push(graph_attr("then_branch", branch));
        let mut nodes = chain();
        nodes.push(holder);
        let mut g = converted(nodes, vec!["W0"]);
        assert_eq!(remove_dead(&mut g, &set(&["s", "W"]), &set(&["W0"])), 0);
        assert_eq!(ops(&g), ["Constant", "Mul", "If", "MatMul"]);
        assert_eq!(inits(&g), ["W0", "Wq"]);
    }

    #[test]
    fn dead_code_that_was_not_folded_stays() {
        // A Relu nobody reads, and the chain: only the folded chain goes.
        let mut nodes = chain();
        nodes.push(node("relu", "Relu", &["x"], &["dead"]));
        nodes.push(node("id", "Identity", &["W1"], &["dead2"]));
        let mut g = converted(nodes, vec!["W0", "W1"]);
        let removed = remove_dead(&mut g, &set(&["s", "W"]), &set(&["W0", "W1"]));
        assert_eq!(removed, 2);
        assert_eq!(ops(&g), ["Relu", "Identity", "MatMul"]);
        assert_eq!(
            inits(&g),
            ["W1", "Wq"],
            "W1 is still read by the old dead Identity"
        );
    }

    #[test]
    fn only_the_first_output_says_a_node_was_folded() {
        let split = || node("split", "Split", &["W0"], &["a", "b"]);
        // Folded by its first output, both outputs unread: removed.
        let mut g = converted(vec![split()], vec!["W0"]);
        assert_eq!(remove_dead(&mut g, &set(&["a"]), &set(&[])), 1);
        assert_eq!(ops(&g), ["MatMul"]);
        // Its second output still read: kept.
        let mut g = converted(
            vec![split(), node("r", "Relu", &["b"], &["rb"])],
            vec!["W0"],
        );
        assert_eq!(remove_dead(&mut g, &set(&["a"]), &set(&[])), 0);
        // Only its second output named as folded: kept although dead.
        let mut g = converted(vec![split()], vec!["W0"]);
        assert_eq!(remove_dead(&mut g, &set(&["b"]), &set(&["W0"])), 0);
        assert_eq!(inits(&g), ["W0", "Wq"]);
        // An omitted output does not keep it.
        let mut g = converted(
            vec![node("split", "Split", &["W0"], &["a", ""])],
            vec!["W0"],
        );
        assert_eq!(remove_dead(&mut g, &set(&["a"]), &set(&[])), 1);
    }

    #[test]
    fn initializers_read_before_and_unread_now_are_removed() {
        // Read before: A (unread now), B (still read), D (a graph output), E (a graph
        // input), F (captured by a subgraph); C unread but not read before.
        let branch = graph(
            vec![node("id", "Identity", &["F"], &["b"])],
            vec![],
            &[],
            &["b"],
        );
        let mut holder = node("if", "If", &["cond"], &["o"]);
        holder.attribute.push(graph_attr("then_branch", branch));
        let mut g = converted(
            vec![node("relu", "Relu", &["B"], &["rb"]), holder],
            vec!["A", "B", "C", "D", "E", "F"],
        );
        g.output.push(value("D"));
        g.input.push(value("E"));
        let removed = remove_dead(&mut g, &set(&[]), &set(&["A", "B", "D", "E", "F"]));
        assert_eq!(removed, 0);
        assert_eq!(inits(&g), ["B", "C", "D", "E", "F", "Wq"]);
    }

    #[test]
    fn a_node_holding_a_subgraph_is_never_removed() {
        let branch = graph(
            vec![node("id", "Identity", &["x"], &["b"])],
            vec![],
            &[],
            &["b"],
        );
        let mut holder = node("if", "If", &["W0"], &["o"]);
        holder.attribute.push(graph_attr("then_branch", branch));
        let mut g = converted(vec![holder], vec!["W0"]);
        assert_eq!(remove_dead(&mut g, &set(&["o"]), &set(&["W0"])), 0);
        assert_eq!(ops(&g), ["If", "MatMul"]);
        assert_eq!(inits(&g), ["W0", "Wq"]);
    }

    #[test]
    fn a_node_of_another_domain_is_never_removed() {
        let mut custom = node("t", "Transpose", &["W0"], &["W"]);
        custom.domain = Some("com.example".into());
        let mut g = converted(vec![custom], vec!["W0"]);
        assert_eq!(remove_dead(&mut g, &set(&["W"]), &set(&["W0"])), 0);
        assert_eq!(ops(&g), ["Transpose", "MatMul"]);
        assert_eq!(inits(&g), ["W0", "Wq"]);
        // The default domain spelled out is removed like an absent one.
        let mut onnx = node("t", "Transpose", &["W0"], &["W"]);
        onnx.domain = Some("ai.onnx".into());
        let mut g = converted(vec![onnx], vec!["W0"]);
        assert_eq!(remove_dead(&mut g, &set(&["W"]), &set(&["W0"])), 1);
        assert_eq!(inits(&g), ["Wq"]);
    }
}
