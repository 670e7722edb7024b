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
    /// The initializers copies were made of: (number of the graph holding it, name).
    sources: HashSet<(usize, String)>,
}

impl Copies {
    /// True when nothing was copied.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
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

/// What an enclosing graph offers a subgraph: each weight, with the number of the graph that
/// holds it.
type Scope = HashMap<String, (TensorProto, usize)>;

fn localize_graph(g: &mut GraphProto, outer: &Scope, copies: &mut Copies) {
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
            let (t, owner) = &outer[&w];
            g.initializer.push(t.clone());
            copies.sources.insert((*owner, w.clone()));
            here.push(w);
        }
    }
    // The scope subgraphs of `g` see: the outer one, less what `g` redefines, plus `g`'s
    // initializers (unless a graph input of the same name can override them at run time).
    let inputs: HashSet<&str> = g.input.iter().filter_map(|v| v.name.as_deref()).collect();
    let number = copies.by_graph.len();
    let mut scope: Scope = outer
        .iter()
        .filter(|(k, _)| !local.contains(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for t in &g.initializer {
        if let Some(name) = t.name.as_deref() {
            if !inputs.contains(name) && !here.iter().any(|h| h == name) && is_weight_candidate(t) {
                scope.insert(name.to_string(), (t.clone(), number));
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
/// initializers that copies were made of and that no node, subgraph or graph output reads
/// any more are removed. Another graph's initializer of the same name is left alone.
pub fn release(model: &mut ModelProto, copies: &Copies) {
    if copies.is_empty() {
        return;
    }
    if let Some(g) = model.graph.as_mut() {
        drop_unread(g, copies, &mut 0);
    }
}

/// `number` counts the graphs in [`localize`]'s order.
fn drop_unread(g: &mut GraphProto, copies: &Copies, number: &mut usize) {
    let me = *number;
    *number += 1;
    let copied = |n: &String| copies.sources.contains(&(me, n.clone()));
    let unread: HashSet<String> = {
        let index = GraphIndex::new(g);
        g.initializer
            .iter()
            .filter_map(|t| t.name.clone())
            .filter(|n| {
                copied(n)
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
                drop_unread(sub, copies, number);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bitnet_model::proto::{AttributeProto, NodeProto};
    use bitnet_model::{tensor, walk};

    use super::*;
    use crate::emit::testing::{graph, graph_attr, model, node, value, weight};

    /// A graph named `name`.
    fn named(mut g: GraphProto, name: &str) -> GraphProto {
        g.name = Some(name.into());
        g
    }

    /// A subgraph `name` whose only node is `op: {name}_y = op(x, w)`.
    fn reads(name: &str, op: &str, w: &str) -> GraphProto {
        let y = format!("{name}_y");
        named(
            graph(
                vec![node(&format!("{name}_n"), op, &["x", w], &[&y])],
                vec![],
                &[],
                &[&y],
            ),
            name,
        )
    }

    /// A node `name` of op `op` holding these graph attributes.
    fn holder(name: &str, op: &str, attrs: Vec<AttributeProto>) -> NodeProto {
        let mut n = node(name, op, &["cond"], &[&format!("{name}_out")]);
        n.attribute = attrs;
        n
    }

    /// `if: If(cond)` with these branches.
    fn if_node(then_g: GraphProto, else_g: GraphProto) -> NodeProto {
        holder(
            "if",
            "If",
            vec![
                graph_attr("then_branch", then_g),
                graph_attr("else_branch", else_g),
            ],
        )
    }

    /// The main graph: these nodes and initializers, inputs `x` and `cond`.
    fn main_graph(nodes: Vec<NodeProto>, inits: Vec<TensorProto>) -> GraphProto {
        named(graph(nodes, inits, &["x", "cond"], &["if_out"]), "main")
    }

    /// The main graph holding W and `if`, whose then branch reads W with a MatMul and whose
    /// else branch reads nothing of the main graph but `x`.
    fn branch_model() -> ModelProto {
        model(main_graph(
            vec![if_node(
                reads("then", "MatMul", "W"),
                reads("else", "Identity", "x"),
            )],
            vec![weight("W", &[4, 8])],
        ))
    }

    /// The graph held by attribute `attr` of node `node` of `g`.
    fn sub<'g>(g: &'g GraphProto, node: &str, attr: &str) -> &'g GraphProto {
        let n = g
            .node
            .iter()
            .find(|n| n.name.as_deref() == Some(node))
            .unwrap_or_else(|| panic!("no node '{node}'"));
        bitnet_model::node::attr(n, attr)
            .and_then(|a| a.g.as_ref())
            .unwrap_or_else(|| panic!("'{node}' has no graph '{attr}'"))
    }

    fn sub_mut<'g>(g: &'g mut GraphProto, node: &str, attr: &str) -> &'g mut GraphProto {
        g.node
            .iter_mut()
            .find(|n| n.name.as_deref() == Some(node))
            .and_then(|n| {
                n.attribute
                    .iter_mut()
                    .find(|a| a.name.as_deref() == Some(attr))
            })
            .and_then(|a| a.g.as_mut())
            .unwrap_or_else(|| panic!("no graph '{attr}' on '{node}'"))
    }

    fn main(m: &ModelProto) -> &GraphProto {
        m.graph.as_ref().unwrap()
    }

    fn main_mut(m: &mut ModelProto) -> &mut GraphProto {
        m.graph.as_mut().unwrap()
    }

    fn inits(g: &GraphProto) -> Vec<&str> {
        g.initializer
            .iter()
            .map(|t| t.name.as_deref().unwrap_or(""))
            .collect()
    }

    /// Every graph of `m` in `walk::for_each_graph_mut` order: its name and initializers.
    fn walked(m: &mut ModelProto) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        walk::for_each_graph_mut(m, &mut |g: &mut GraphProto| -> Result<(), ()> {
            out.push((
                g.name.clone().unwrap_or_default(),
                inits(g).iter().map(|s| s.to_string()).collect(),
            ));
            Ok(())
        })
        .unwrap();
        out
    }

    fn by_graph(c: &Copies) -> Vec<Vec<&str>> {
        c.by_graph
            .iter()
            .map(|v| v.iter().map(String::as_str).collect())
            .collect()
    }

    #[test]
    fn localize_copies_into_the_branch_that_reads() {
        let mut m = branch_model();
        let outer = main(&m).initializer[0].clone();
        let copies = localize(&mut m);
        assert!(!copies.is_empty());
        assert_eq!(by_graph(&copies), [vec![], vec!["W"], vec![]]);
        let g = main(&m);
        assert_eq!(inits(g), ["W"], "the outer tensor stays");
        assert_eq!(g.initializer[0], outer);
        let then_g = sub(g, "if", "then_branch");
        assert_eq!(inits(then_g), ["W"]);
        assert_eq!(
            then_g.initializer[0], outer,
            "the copy is the outer tensor as it is"
        );
        assert_eq!(then_g.initializer[0].doc_string, None);
        assert_eq!(g.initializer[0].doc_string, None);
        assert!(inits(sub(g, "if", "else_branch")).is_empty());
    }

    #[test]
    fn graphs_are_numbered_in_walk_order() {
        // main: `if` (then: reads Wa and holds `loop`, whose body reads Wc; else: reads Wb),
        // then `scan`, whose body reads Wd. Depth first, attributes in order.
        let mut then_g = reads("then", "MatMul", "Wa");
        then_g.node.push(holder(
            "loop",
            "Loop",
            vec![graph_attr("body", reads("body", "MatMul", "Wc"))],
        ));
        let mut m = model(main_graph(
            vec![
                if_node(then_g, reads("else", "Gemm", "Wb")),
                holder(
                    "scan",
                    "Scan",
                    vec![graph_attr("body", reads("scan_body", "MatMul", "Wd"))],
                ),
            ],
            ["Wa", "Wb", "Wc", "Wd"]
                .iter()
                .map(|n| weight(n, &[4, 8]))
                .collect(),
        ));
        let copies = localize(&mut m);
        assert_eq!(
            by_graph(&copies),
            [vec![], vec!["Wa"], vec!["Wc"], vec!["Wb"], vec!["Wd"]]
        );
        // Graph k of the walk holds exactly graph k's copies.
        let graphs = walked(&mut m);
        let names: Vec<&str> = graphs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["main", "then", "body", "else", "scan_body"]);
        for (k, (name, held)) in graphs.iter().enumerate().skip(1) {
            assert_eq!(held, &copies.by_graph[k], "graph {k} ({name})");
        }
        // And `present` agrees with that numbering, graph by graph.
        let mut k = 0;
        walk::for_each_graph_mut(&mut m, &mut |g: &mut GraphProto| -> Result<(), ()> {
            assert!(copies.present(k, g), "graph {k}");
            copies.drop_unconverted(k, g);
            assert_eq!(g.initializer.len(), if k == 0 { 4 } else { 0 }, "graph {k}");
            k += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(k, 5);
    }

    #[test]
    fn a_graphs_attribute_numbers_each_graph() {
        // One GRAPHS attribute holding two graphs, each reading its own weight.
        let mut n = holder("multi", "Custom", vec![]);
        n.attribute.push(AttributeProto {
            name: Some("bodies".into()),
            graphs: vec![reads("g1", "MatMul", "W1"), reads("g2", "MatMul", "W2")],
            r#type: Some(bitnet_model::proto::attribute_proto::AttributeType::Graphs as i32),
            ..Default::default()
        });
        let mut m = model(main_graph(
            vec![n],
            vec![weight("W1", &[4, 8]), weight("W2", &[4, 8])],
        ));
        let copies = localize(&mut m);
        assert_eq!(by_graph(&copies), [vec![], vec!["W1"], vec!["W2"]]);
        let graphs = walked(&mut m);
        assert_eq!(graphs[1], ("g1".to_string(), vec!["W1".to_string()]));
        assert_eq!(graphs[2], ("g2".to_string(), vec!["W2".to_string()]));
    }

    #[test]
    fn only_float_2d_weights_of_linear_layers_are_copied() {
        let mut ms = node("ms", "MatMul", &["x", "D"], &["y_ms"]);
        ms.domain = Some("com.microsoft".into());
        let body = named(
            graph(
                vec![
                    node("mm_b", "MatMul", &["x", "B"], &["y_b"]),
                    node("mm_i", "MatMul", &["x", "I"], &["y_i"]),
                    node("mm_aw", "MatMul", &["A", "W"], &["y_aw"]),
                    node("add", "Add", &["x", "R"], &["y_r"]),
                    ms,
                    node("gemm", "Gemm", &["x", "G"], &["y_g"]),
                    node("mm_w", "MatMul", &["x", "W"], &["y_w"]),
                ],
                vec![],
                &[],
                &["y_w"],
            ),
            "then",
        );
        let mut m = model(main_graph(
            vec![if_node(body, reads("else", "Identity", "x"))],
            vec![
                weight("B", &[8]),
                tensor::from_i64("I", &[4, 8], &[1; 32]),
                weight("A", &[2, 4]),
                weight("W", &[4, 8]),
                weight("R", &[4, 8]),
                weight("D", &[4, 8]),
                tensor::from_f32_as_f16("G", &[8, 4], &[0.5; 32]),
            ],
        ));
        let copies = localize(&mut m);
        // W once although two layers read it; A is no weight input; R feeds an Add, D a
        // node of another domain; B is 1-D and I int64.
        assert_eq!(by_graph(&copies), [vec![], vec!["W", "G"], vec![]]);
        assert_eq!(inits(sub(main(&m), "if", "then_branch")), ["W", "G"]);
    }

    #[test]
    fn names_the_subgraph_defines_are_not_copied() {
        // As a graph input, an initializer of its own, a node output.
        let mut as_input = reads("then", "MatMul", "W");
        as_input.input.push(value("W"));
        let mut own = reads("then", "MatMul", "W");
        own.initializer
            .push(tensor::from_f32("W", &[4, 8], &[2.0; 32]));
        let mut computed = reads("then", "MatMul", "W");
        computed
            .node
            .insert(0, node("id", "Identity", &["x"], &["W"]));
        for (what, then_g) in [
            ("input", as_input),
            ("initializer", own),
            ("output", computed),
        ] {
            let before = then_g.clone();
            let mut m = model(main_graph(
                vec![if_node(then_g, reads("else", "Identity", "x"))],
                vec![weight("W", &[4, 8])],
            ));
            let copies = localize(&mut m);
            assert!(copies.is_empty(), "{what}");
            assert_eq!(
                by_graph(&copies),
                [vec![], vec![], vec![]] as [Vec<&str>; 3]
            );
            assert_eq!(sub(main(&m), "if", "then_branch"), &before, "{what}");
        }
    }

    #[test]
    fn an_overridable_outer_initializer_is_not_copied() {
        let mut m = branch_model();
        main_mut(&mut m).input.push(value("W"));
        let copies = localize(&mut m);
        assert!(copies.is_empty());
        assert!(inits(sub(main(&m), "if", "then_branch")).is_empty());
    }

    /// main (holding `main_inits`) -> `if` -> then (`mid`) -> `loop` -> body, which reads W
    /// with a MatMul; else reads W with a MatMul too.
    fn nested_model(mut mid: GraphProto, main_inits: Vec<TensorProto>) -> ModelProto {
        mid.node.push(holder(
            "loop",
            "Loop",
            vec![graph_attr("body", reads("body", "MatMul", "W"))],
        ));
        model(main_graph(
            vec![if_node(mid, reads("else", "MatMul", "W"))],
            main_inits,
        ))
    }

    fn body(m: &ModelProto) -> &GraphProto {
        sub(sub(main(m), "if", "then_branch"), "loop", "body")
    }

    #[test]
    fn a_nested_subgraph_gets_copies_from_an_intermediate_graph() {
        // The main graph has nothing to copy; then holds W, which its loop body reads.
        let mut mid = reads("then", "Identity", "x");
        mid.initializer.push(weight("W", &[4, 8]));
        let mut m = nested_model(mid, vec![]);
        let copies = localize(&mut m);
        // Numbering: main, then, body, else; else does not see then's W.
        assert_eq!(by_graph(&copies), [vec![], vec![], vec!["W"], vec![]]);
        assert_eq!(inits(body(&m)), ["W"]);
        assert_eq!(body(&m).initializer[0], weight("W", &[4, 8]));
        assert_eq!(body(&m).initializer[0].doc_string, None);
        assert!(inits(sub(main(&m), "if", "else_branch")).is_empty());
    }

    #[test]
    fn an_outer_weight_reaches_a_nested_subgraph_through_one_that_does_not_read_it() {
        let mut m = nested_model(reads("then", "Identity", "x"), vec![weight("W", &[4, 8])]);
        let copies = localize(&mut m);
        assert_eq!(by_graph(&copies), [vec![], vec![], vec!["W"], vec!["W"]]);
        assert!(inits(sub(main(&m), "if", "then_branch")).is_empty());
        assert_eq!(inits(body(&m)), ["W"]);
    }

    #[test]
    fn an_intermediate_graph_can_hide_the_outer_weight() {
        // then redefines W (node output), or holds a W its graph input can override: the
        // body reads then's W, which is no constant to copy.
        let mut computed = reads("then", "Identity", "x");
        computed.node.push(node("id", "Identity", &["x"], &["W"]));
        let mut overridable = reads("then", "Identity", "x");
        overridable.initializer.push(weight("W", &[4, 8]));
        overridable.input.push(value("W"));
        for (what, mid) in [("computed", computed), ("overridable", overridable)] {
            let mut m = nested_model(mid, vec![weight("W", &[4, 8])]);
            let copies = localize(&mut m);
            assert_eq!(
                by_graph(&copies),
                [vec![], vec![], vec![], vec!["W"]],
                "{what}"
            );
            assert!(inits(body(&m)).is_empty(), "{what}");
        }
    }

    #[test]
    fn nothing_to_copy() {
        let mut m = model(crate::emit::testing::matmul(4, 8));
        let copies = localize(&mut m);
        assert!(copies.is_empty());
        assert_eq!(by_graph(&copies), [vec![]] as [Vec<&str>; 1]);
        assert!(copies.present(0, main(&m)));
        let mut no_graph = ModelProto::default();
        let copies = localize(&mut no_graph);
        assert!(copies.is_empty());
        assert!(copies.by_graph.is_empty());
    }

    /// The model with W read by then's MatMul and W2 by else's: main graph 0, then 1, else 2;
    /// then also holds a weight of its own, B.
    fn two_branch_model() -> (ModelProto, Copies) {
        let mut then_g = reads("then", "MatMul", "W");
        then_g.initializer.push(weight("B", &[4, 8]));
        let mut m = model(main_graph(
            vec![if_node(then_g, reads("else", "MatMul", "W2"))],
            vec![weight("W", &[4, 8]), weight("W2", &[4, 8])],
        ));
        let copies = localize(&mut m);
        assert_eq!(by_graph(&copies), [vec![], vec!["W"], vec!["W2"]]);
        (m, copies)
    }

    #[test]
    fn present_until_a_copy_is_removed() {
        let (mut m, copies) = two_branch_model();
        assert!(copies.present(0, main(&m)));
        assert!(copies.present(1, sub(main(&m), "if", "then_branch")));
        assert!(copies.present(2, sub(main(&m), "if", "else_branch")));
        // Graph 1's copies are not in graph 2, and a number past the last graph has none.
        assert!(!copies.present(1, sub(main(&m), "if", "else_branch")));
        assert!(copies.present(3, &GraphProto::default()));
        // The conversion removed then's copy (its layer reads a new weight now).
        let then_g = sub_mut(main_mut(&mut m), "if", "then_branch");
        then_g
            .initializer
            .retain(|t| t.name.as_deref() != Some("W"));
        assert!(!copies.present(1, sub(main(&m), "if", "then_branch")));
        assert!(copies.present(2, sub(main(&m), "if", "else_branch")));
    }

    #[test]
    fn drop_unconverted_drops_only_that_graphs_copies() {
        let (mut m, copies) = two_branch_model();
        let g = main_mut(&mut m);
        // Graph 0 has no copies: the main graph keeps its own W and W2.
        copies.drop_unconverted(0, g);
        assert_eq!(inits(g), ["W", "W2"]);
        // Graph 1's list on else (graph 2) leaves else's W2 copy alone.
        let else_g = sub_mut(g, "if", "else_branch");
        copies.drop_unconverted(1, else_g);
        assert_eq!(inits(else_g), ["W2"]);
        copies.drop_unconverted(2, else_g);
        assert!(inits(else_g).is_empty());
        // Then loses its copy of W and keeps its own B.
        let then_g = sub_mut(g, "if", "then_branch");
        copies.drop_unconverted(2, then_g);
        assert_eq!(
            inits(then_g),
            ["B", "W"],
            "copies come after the graph's own"
        );
        copies.drop_unconverted(1, then_g);
        assert_eq!(inits(then_g), ["B"]);
        assert!(!copies.present(1, then_g));
        // A number past the last graph drops nothing.
        copies.drop_unconverted(7, then_g);
        assert_eq!(inits(then_g), ["B"]);
    }

    /// Then's MatMul converted: it reads `W_q`, and the copy of W is gone.
    fn convert_then(m: &mut ModelProto, copies: &Copies) {
        let then_g = sub_mut(main_mut(m), "if", "then_branch");
        then_g.node[0].input[1] = "W_q".into();
        then_g
            .initializer
            .push(tensor::from_i8("W_q", &[4, 8], &[1; 32]));
        copies.drop_unconverted(1, then_g);
        assert_eq!(inits(then_g), ["W_q"]);
    }

    #[test]
    fn release_removes_the_outer_weight_nothing_reads() {
        let mut m = branch_model();
        // An initializer nobody reads, never copied: not release's to remove.
        main_mut(&mut m).initializer.push(weight("U", &[4, 8]));
        let copies = localize(&mut m);
        convert_then(&mut m, &copies);
        release(&mut m, &copies);
        assert_eq!(inits(main(&m)), ["U"]);
        assert_eq!(inits(sub(main(&m), "if", "then_branch")), ["W_q"]);
    }

    /// Another graph's unread initializer that shares the copied weight's name is not
    /// release's to remove: only the graph the copy was made from is looked at.
    #[test]
    fn release_leaves_a_same_named_initializer_of_another_graph() {
        let mut m = branch_model();
        sub_mut(main_mut(&mut m), "if", "else_branch")
            .initializer
            .push(tensor::from_f32("W", &[2], &[1.0, 2.0]));
        let copies = localize(&mut m);
        convert_then(&mut m, &copies);
        release(&mut m, &copies);
        assert!(inits(main(&m)).is_empty(), "the copied outer W goes");
        assert_eq!(inits(sub(main(&m), "if", "else_branch")), ["W"]);
    }

    #[test]
    fn release_keeps_an_outer_weight_still_read() {
        // Then not converted: its copy dropped, it reads the outer W again.
        let mut m = branch_model();
        let copies = localize(&mut m);
        copies.drop_unconverted(1, sub_mut(main_mut(&mut m), "if", "then_branch"));
        release(&mut m, &copies);
        assert_eq!(inits(main(&m)), ["W"], "captured by an unconverted branch");

        // Else reads W through an Add (nothing copied there): a capture.
        let mut m = model(main_graph(
            vec![if_node(
                reads("then", "MatMul", "W"),
                reads("else", "Add", "W"),
            )],
            vec![weight("W", &[4, 8])],
        ));
        let copies = localize(&mut m);
        assert_eq!(by_graph(&copies), [vec![], vec!["W"], vec![]]);
        convert_then(&mut m, &copies);
        release(&mut m, &copies);
        assert_eq!(inits(main(&m)), ["W"], "captured by the other branch");

        // A node of the main graph reads W.
        let mut m = branch_model();
        main_mut(&mut m)
            .node
            .push(node("mm", "MatMul", &["x", "W"], &["y"]));
        let copies = localize(&mut m);
        convert_then(&mut m, &copies);
        release(&mut m, &copies);
        assert_eq!(inits(main(&m)), ["W"], "read by a node");

        // W is a graph output.
        let mut m = branch_model();
        main_mut(&mut m).output.push(value("W"));
        let copies = localize(&mut m);
        convert_then(&mut m, &copies);
        release(&mut m, &copies);
        assert_eq!(inits(main(&m)), ["W"], "a graph output");
    }

    #[test]
    fn release_does_nothing_without_copies() {
        let mut m = model(main_graph(vec![], vec![weight("W", &[4, 8])]));
        let copies = localize(&mut m);
        assert!(copies.is_empty());
        release(&mut m, &copies);
        assert_eq!(inits(main(&m)), ["W"]);
    }

    #[test]
    fn release_works_in_intermediate_graphs_and_keeps_graph_inputs() {
        // The main graph's own W is overridable (a graph input too), then holds a W its
        // loop body reads: that one is copied.
        let mut mid = reads("then", "Identity", "x");
        mid.initializer.push(weight("W", &[4, 8]));
        let mut m = nested_model(mid, vec![weight("W", &[4, 8])]);
        main_mut(&mut m).input.push(value("W"));
        let copies = localize(&mut m);
        assert_eq!(by_graph(&copies), [vec![], vec![], vec!["W"], vec![]]);
        // The body converted.
        let then_g = sub_mut(main_mut(&mut m), "if", "then_branch");
        let body = sub_mut(then_g, "loop", "body");
        body.node[0].input[1] = "W_q".into();
        body.initializer = vec![tensor::from_i8("W_q", &[4, 8], &[1; 32])];
        release(&mut m, &copies);
        assert!(inits(sub(main(&m), "if", "then_branch")).is_empty());
        assert_eq!(inits(main(&m)), ["W"], "a graph input stays");
        assert_eq!(inits(self::body(&m)), ["W_q"]);
    }
}
