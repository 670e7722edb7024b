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
