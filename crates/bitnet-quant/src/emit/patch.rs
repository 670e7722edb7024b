//! A rewrite as a value. An emitter reads the graph and returns a [`Patch`]: the tensors it
//! adds, each with its role, and the edits to the node list in the order they are to happen.
//! [`apply`] is the only code that changes the graph for it: it places the nodes, hands every
//! new tensor to the output's sink, and counts the bytes of the converted weight.
//!
//! Nodes are found by what they write (their first output; for a linear layer also the weight
//! it reads at input 1; for `After`, any output), never by position: positions shift as earlier edits insert nodes. An edit whose
//! node is not in the graph is an error, not a silent no-op: the emitter built it from the
//! same graph, so a miss is a bug worth hearing about. A failed edit leaves the graph partly
//! changed: the driver then abandons the whole conversion, and nothing is written.

use bitnet_model::proto::{GraphProto, NodeProto, TensorProto};
use bitnet_model::tensor;

/// What a new tensor is, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Codes or scales of the converted weight: counted in its bytes after conversion.
    Weight,
    /// Anything else (a bias, zero point, constant of an activation chain): not counted.
    Constant,
}

/// One new initializer.
#[derive(Debug, Clone)]
pub struct NewTensor {
    pub tensor: TensorProto,
    pub role: Role,
}

/// One change to the node list.
#[derive(Debug, Clone, PartialEq)]
pub enum Edit {
    /// `nodes` go at the start of the graph (they read initializers only).
    Front(Vec<NodeProto>),
    /// The linear node writing `output` from `weight` (its input 1) is replaced, where it
    /// stands, by `nodes`.
    Replace {
        output: String,
        weight: String,
        nodes: Vec<NodeProto>,
    },
    /// The node whose first output is `output` is replaced, where it stands, by `nodes`.
    ReplaceNode {
        output: String,
        nodes: Vec<NodeProto>,
    },
    /// `nodes` go right before the node whose first output is `output`.
    Before {
        output: String,
        nodes: Vec<NodeProto>,
    },
    /// `nodes` go right after the node that writes `value`, or at the start when no node of
    /// this graph writes it (a graph input, an initializer, an outer-scope value).
    After {
        value: String,
        nodes: Vec<NodeProto>,
    },
    /// The node whose first output is `output` reads `to` instead of `from` at input `input`.
    Rewire {
        output: String,
        input: usize,
        from: String,
        to: String,
    },
    /// The node writing `node_output` (a scale applied to `value`) goes, and the node writing
    /// `value` writes `node_output` instead; `value`'s declared type goes with it.
    Bypass { node_output: String, value: String },
}

/// What one emission asks of the graph.
#[derive(Debug, Clone, Default)]
pub struct Patch {
    /// New initializers, in the order they are added to the graph.
    pub tensors: Vec<NewTensor>,
    /// Edits, applied in this order.
    pub edits: Vec<Edit>,
}

impl Patch {
    /// Adds codes or scales of the converted weight; returns its name.
    pub fn weight(&mut self, t: TensorProto) -> String {
        self.add(t, Role::Weight)
    }

    /// Adds any other initializer; returns its name.
    pub fn constant(&mut self, t: TensorProto) -> String {
        self.add(t, Role::Constant)
    }

    fn add(&mut self, tensor: TensorProto, role: Role) -> String {
        let name = tensor.name.clone().unwrap_or_default();
        self.tensors.push(NewTensor { tensor, role });
        name
    }

    pub fn edit(&mut self, e: Edit) {
        self.edits.push(e);
    }

    /// Appends `other`'s tensors and edits after this patch's own.
    pub fn extend(&mut self, other: Patch) {
        self.tensors.extend(other.tensors);
        self.edits.extend(other.edits);
    }

    /// The new initializer named `name`, if this patch adds it.
    pub fn tensor(&self, name: &str) -> Option<&NewTensor> {
        self.tensors
            .iter()
            .find(|t| t.tensor.name.as_deref() == Some(name))
    }
}

/// An edit that does not fit the graph it is applied to.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApplyError {
    #[error("no node writes '{output}' from weight '{weight}' any more")]
    NoLayer { output: String, weight: String },
    #[error("no node writes '{0}'")]
    NoNode(String),
    #[error("node writing '{output}' does not read '{from}' at input {input}")]
    NotRead {
        output: String,
        input: usize,
        from: String,
    },
    #[error("node writing '{node_output}' does not read '{value}'")]
    DoesNotRead { node_output: String, value: String },
    #[error("storing '{name}': {reason}")]
    Store { name: String, reason: String },
}

/// Carries out `patch` on `g`: the tensors are added in order and each is given to `store`
/// (which may move its payload to the output's data file), then the edits run in order.
/// Returns the payload bytes of the tensors with [`Role::Weight`], counted before `store`.
pub fn apply(
    g: &mut GraphProto,
    patch: Patch,
    store: &mut dyn FnMut(&mut TensorProto) -> Result<(), String>,
) -> Result<u64, ApplyError> {
    let mut bytes = 0;
    let first = g.initializer.len();
    for NewTensor { tensor, role } in patch.tensors {
        if role == Role::Weight {
            bytes += tensor::payload_len(&tensor);
        }
        g.initializer.push(tensor);
    }
    for e in patch.edits {
        edit(g, e)?;
    }
    for t in g.initializer.iter_mut().skip(first) {
        store(t).map_err(|reason| ApplyError::Store {
            name: t.name.clone().unwrap_or_default(),
            reason,
        })?;
    }
    Ok(bytes)
}

/// The position of the linear node writing `output` from `weight`.
pub fn layer_position(g: &GraphProto, output: &str, weight: &str) -> Option<usize> {
    g.node.iter().position(|n| {
        n.output.first().map(String::as_str) == Some(output)
            && n.input.get(1).map(String::as_str) == Some(weight)
    })
}

fn writer(g: &GraphProto, value: &str) -> Option<usize> {
    g.node
        .iter()
        .position(|n| n.output.first().map(String::as_str) == Some(value))
}

fn edit(g: &mut GraphProto, e: Edit) -> Result<(), ApplyError> {
    match e {
        Edit::Front(nodes) => {
            g.node.splice(0..0, nodes);
        }
        Edit::Replace {
            output,
            weight,
            nodes,
        } => {
            let pos = layer_position(g, &output, &weight)
                .ok_or(ApplyError::NoLayer { output, weight })?;
            g.node.splice(pos..=pos, nodes);
        }
        Edit::ReplaceNode { output, nodes } => {
            let pos = writer(g, &output).ok_or(ApplyError::NoNode(output))?;
            g.node.splice(pos..=pos, nodes);
        }
        Edit::Before { output, nodes } => {
            let pos = writer(g, &output).ok_or(ApplyError::NoNode(output))?;
            g.node.splice(pos..pos, nodes);
        }
        Edit::After { value, nodes } => {
            let at = g
                .node
                .iter()
                .position(|n| n.output.contains(&value))
                .map_or(0, |p| p + 1);
            g.node.splice(at..at, nodes);
        }
        Edit::Rewire {
            output,
            input,
            from,
            to,
        } => {
            let pos = g
                .node
                .iter()
                .position(|n| {
                    n.output.first() == Some(&output) && n.input.get(input) == Some(&from)
                })
                .ok_or(ApplyError::NotRead {
                    output,
                    input,
                    from,
                })?;
            g.node[pos].input[input] = to;
        }
        Edit::Bypass { node_output, value } => {
            let pos = writer(g, &node_output).ok_or(ApplyError::NoNode(node_output.clone()))?;
            if !g.node[pos].input.contains(&value) {
                return Err(ApplyError::DoesNotRead { node_output, value });
            }
            if !g.node.iter().any(|n| n.output.contains(&value)) {
                return Err(ApplyError::NoNode(value));
            }
            g.node.remove(pos);
            for n in &mut g.node {
                for o in &mut n.output {
                    if *o == value {
                        *o = node_output.clone();
                    }
                }
            }
            g.value_info.retain(|v| v.name.as_ref() != Some(&value));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emit::testing::{matmul, node, ops, two_weights, value};
    use bitnet_model::proto::tensor_proto::DataType;

    fn names(g: &GraphProto) -> Vec<&str> {
        g.node
            .iter()
            .map(|n| n.name.as_deref().unwrap_or(""))
            .collect()
    }

    fn init_names(g: &GraphProto) -> Vec<&str> {
        g.initializer
            .iter()
            .map(|t| t.name.as_deref().unwrap_or(""))
            .collect()
    }

    fn no_store(_: &mut TensorProto) -> Result<(), String> {
        Ok(())
    }

    fn apply_ok(g: &mut GraphProto, patch: Patch) -> u64 {
        apply(g, patch, &mut no_store).unwrap()
    }

    fn apply_err(g: &mut GraphProto, e: Edit) -> ApplyError {
        let mut patch = Patch::default();
        patch.edit(e);
        apply(g, patch, &mut no_store).unwrap_err()
    }

    /// Four new tensors: weights `a` (float32 [2, 3]: 24 bytes), `c` (INT2 [5]: 10 bits, 2
    /// bytes) and `d` (uint8 [3, 1, 4]: 12 bytes), and the constant `b` (float32 [4]: 16 bytes).
    fn four_tensors() -> Patch {
        let mut p = Patch::default();
        assert_eq!(p.weight(tensor::from_f32("a", &[2, 3], &[1.0; 6])), "a");
        assert_eq!(p.constant(tensor::from_f32("b", &[4], &[2.0; 4])), "b");
        assert_eq!(
            p.weight(tensor::from_raw("c", DataType::Int2, &[5], vec![0u8; 2])),
            "c"
        );
        p.weight(tensor::from_raw(
            "d",
            DataType::Uint8,
            &[3, 1, 4],
            vec![0u8; 12],
        ));
        p
    }

    #[test]
    fn patch_records_roles_and_extends_in_order() {
        let mut p = four_tensors();
        let roles: Vec<Role> = p.tensors.iter().map(|t| t.role).collect();
        assert_eq!(
            roles,
            [Role::Weight, Role::Constant, Role::Weight, Role::Weight]
        );
        assert_eq!(p.tensor("b").map(|t| t.role), Some(Role::Constant));
        assert!(p.tensor("z").is_none());
        p.edit(Edit::Front(vec![]));
        let mut q = Patch::default();
        q.constant(tensor::from_f32("e", &[], &[0.0]));
        q.edit(Edit::Bypass {
            node_output: "o".into(),
            value: "v".into(),
        });
        p.extend(q);
        let names: Vec<_> = p
            .tensors
            .iter()
            .map(|t| t.tensor.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["a", "b", "c", "d", "e"]);
        assert_eq!(p.edits.len(), 2);
        assert!(matches!(p.edits[1], Edit::Bypass { .. }));
    }

    #[test]
    fn apply_adds_tensors_in_order_and_counts_weight_payloads_only() {
        let mut g = matmul(8, 3);
        let before = g.node.clone();
        let bytes = apply_ok(&mut g, four_tensors());
        // 24 + 2 + 12: the 16 bytes of the constant are not the weight's.
        assert_eq!(bytes, 38);
        assert_eq!(init_names(&g), ["W", "a", "b", "c", "d"]);
        assert_eq!(g.node, before);
    }

    #[test]
    fn an_empty_patch_changes_nothing() {
        let mut g = two_weights(4, 2);
        let before = g.clone();
        assert_eq!(apply_ok(&mut g, Patch::default()), 0);
        assert_eq!(g, before);
    }

    #[test]
    fn front_inserts_at_the_start_in_order() {
        let mut g = two_weights(4, 2);
        let mut p = Patch::default();
        p.edit(Edit::Front(vec![
            node("f1", "DequantizeLinear", &["c1", "s1"], &["d1"]),
            node("f2", "DequantizeLinear", &["c2", "s2"], &["d2"]),
        ]));
        apply_ok(&mut g, p);
        assert_eq!(names(&g), ["f1", "f2", "relu", "mm_q", "mm_k"]);
    }

    #[test]
    fn replace_swaps_the_layer_where_it_stands() {
        let mut g = two_weights(4, 2);
        let mut p = Patch::default();
        p.edit(Edit::Replace {
            output: "q".into(),
            weight: "Wq".into(),
            nodes: vec![
                node("pre", "Transpose", &["x"], &["xt"]),
                node("new", "MatMulNBits", &["xt", "B", "S"], &["q"]),
            ],
        });
        apply_ok(&mut g, p);
        assert_eq!(names(&g), ["relu", "pre", "new", "mm_k"]);
        assert_eq!(ops(&g), ["Relu", "Transpose", "MatMulNBits", "MatMul"]);
    }

    #[test]
    fn replace_node_and_before_find_the_node_by_its_first_output() {
        let mut g = two_weights(4, 2);
        let mut p = Patch::default();
        p.edit(Edit::ReplaceNode {
            output: "k".into(),
            nodes: vec![node(
                "gbq",
                "GatherBlockQuantized",
                &["d", "i", "s"],
                &["k"],
            )],
        });
        p.edit(Edit::Before {
            output: "q".into(),
            nodes: vec![node("slice", "Slice", &["x"], &["xs"])],
        });
        apply_ok(&mut g, p);
        assert_eq!(names(&g), ["relu", "slice", "mm_q", "gbq"]);
        for e in [
            Edit::ReplaceNode {
                output: "nope".into(),
                nodes: vec![],
            },
            Edit::Before {
                output: "nope".into(),
                nodes: vec![],
            },
        ] {
            let mut g = two_weights(4, 2);
            assert_eq!(apply_err(&mut g, e), ApplyError::NoNode("nope".into()));
            assert_eq!(g, two_weights(4, 2));
        }
    }

    #[test]
    fn replace_needs_both_the_output_and_the_weight_at_input_1() {
        let mut g = two_weights(4, 2);
        let before = g.clone();
        let replace = |output: &str, weight: &str| Edit::Replace {
            output: output.into(),
            weight: weight.into(),
            nodes: vec![node("new", "Identity", &["x"], &[output])],
        };
        // The node writing q reads Wq, not Wk.
        assert_eq!(
            apply_err(&mut g, replace("q", "Wk")),
            ApplyError::NoLayer {
                output: "q".into(),
                weight: "Wk".into()
            }
        );
        // relu writes x from x0, but at input 0: not a layer reading x0.
        assert_eq!(
            apply_err(&mut g, replace("x", "x0")),
            ApplyError::NoLayer {
                output: "x".into(),
                weight: "x0".into()
            }
        );
        assert_eq!(
            apply_err(&mut g, replace("gone", "Wq")),
            ApplyError::NoLayer {
                output: "gone".into(),
                weight: "Wq".into()
            }
        );
        assert_eq!(g, before);
    }

    #[test]
    fn after_goes_right_after_the_writer_of_the_value() {
        let mut g = two_weights(4, 2);
        let mut p = Patch::default();
        p.edit(Edit::After {
            value: "x".into(),
            nodes: vec![
                node("a1", "Abs", &["x"], &["ax"]),
                node("a2", "Neg", &["ax"], &["nx"]),
            ],
        });
        apply_ok(&mut g, p);
        assert_eq!(names(&g), ["relu", "a1", "a2", "mm_q", "mm_k"]);
    }

    #[test]
    fn after_a_second_output_goes_after_its_writer() {
        let mut g = two_weights(4, 2);
        g.node
            .insert(1, node("split", "Split", &["x"], &["h0", "h1"]));
        let mut p = Patch::default();
        p.edit(Edit::After {
            value: "h1".into(),
            nodes: vec![node("a", "Abs", &["h1"], &["ah"])],
        });
        apply_ok(&mut g, p);
        assert_eq!(names(&g), ["relu", "split", "a", "mm_q", "mm_k"]);
    }

    #[test]
    fn after_a_graph_input_or_an_initializer_goes_first() {
        for v in ["x0", "Wq", "outer_scope_value"] {
            let mut g = two_weights(4, 2);
            let mut p = Patch::default();
            p.edit(Edit::After {
                value: v.into(),
                nodes: vec![node("a", "Abs", &[v], &["av"])],
            });
            apply_ok(&mut g, p);
            assert_eq!(names(&g), ["a", "relu", "mm_q", "mm_k"], "after {v}");
        }
    }

    #[test]
    fn rewire_changes_one_input_of_one_node() {
        let mut g = two_weights(4, 2);
        let mut p = Patch::default();
        p.edit(Edit::Rewire {
            output: "q".into(),
            input: 1,
            from: "Wq".into(),
            to: "Wq_dequantized".into(),
        });
        apply_ok(&mut g, p);
        assert_eq!(g.node[1].input, ["x", "Wq_dequantized"]);
        assert_eq!(g.node[2].input, ["x", "Wk"]);
        assert_eq!(g.node[0].input, ["x0"]);
    }

    #[test]
    fn rewire_of_an_input_not_read_is_an_error() {
        let mut g = two_weights(4, 2);
        let before = g.clone();
        let rewire = |output: &str, input: usize, from: &str| Edit::Rewire {
            output: output.into(),
            input,
            from: from.into(),
            to: "new".into(),
        };
        for (output, input, from) in [
            ("q", 1, "Wk"),
            ("q", 0, "Wq"),
            ("q", 5, "Wq"),
            ("z", 1, "Wq"),
        ] {
            assert_eq!(
                apply_err(&mut g, rewire(output, input, from)),
                ApplyError::NotRead {
                    output: output.into(),
                    input,
                    from: from.into()
                }
            );
        }
        assert_eq!(g, before);
    }

    /// `mm: y = MatMul(x, W)`, `scale: out = Mul(y, s)`, `relu: z = Relu(out)`, with declared
    /// types for y and out.
    fn scaled() -> GraphProto {
        let mut g = matmul(4, 2);
        g.node.push(node("scale", "Mul", &["y", "s"], &["out"]));
        g.node.push(node("relu", "Relu", &["out"], &["z"]));
        g.initializer.push(tensor::from_f32("s", &[], &[0.5]));
        g.value_info = vec![value("y"), value("out")];
        g.output = vec![value("z")];
        g
    }

    #[test]
    fn bypass_drops_the_scale_node_and_renames_the_producer_output() {
        let mut g = scaled();
        let mut p = Patch::default();
        p.edit(Edit::Bypass {
            node_output: "out".into(),
            value: "y".into(),
        });
        apply_ok(&mut g, p);
        assert_eq!(names(&g), ["mm", "relu"]);
        assert_eq!(g.node[0].output, ["out"]);
        assert_eq!(g.node[0].input, ["x", "W"]);
        assert_eq!(g.node[1].input, ["out"]);
        let declared: Vec<_> = g.value_info.iter().map(|v| v.name.as_deref()).collect();
        assert_eq!(declared, [Some("out")]);
    }

    #[test]
    fn bypass_of_a_node_not_reading_the_value_is_an_error() {
        let mut g = scaled();
        let e = Edit::Bypass {
            node_output: "z".into(),
            value: "y".into(),
        };
        let want = ApplyError::DoesNotRead {
            node_output: "z".into(),
            value: "y".into(),
        };
        assert_eq!(apply_err(&mut g, e), want);
        assert_eq!(g, scaled());
    }

    #[test]
    fn bypass_with_no_writer_of_the_value_is_an_error() {
        let mut g = scaled();
        g.node.remove(0);
        let before = g.clone();
        let e = Edit::Bypass {
            node_output: "out".into(),
            value: "y".into(),
        };
        assert_eq!(apply_err(&mut g, e), ApplyError::NoNode("y".into()));
        assert_eq!(g, before);
    }

    #[test]
    fn bypass_of_a_missing_node_is_an_error() {
        let mut g = scaled();
        let e = Edit::Bypass {
            node_output: "nope".into(),
            value: "y".into(),
        };
        assert_eq!(apply_err(&mut g, e), ApplyError::NoNode("nope".into()));
        assert_eq!(g, scaled());
    }

    #[test]
    fn store_takes_each_new_tensor_once_in_order_after_the_edits() {
        let mut g = two_weights(4, 2);
        let mut p = four_tensors();
        p.edit(Edit::Rewire {
            output: "q".into(),
            input: 1,
            from: "Wq".into(),
            to: "a".into(),
        });
        let mut seen = Vec::new();
        let mut store = |t: &mut TensorProto| {
            seen.push(t.name.clone().unwrap());
            // What a sink does: the payload leaves the graph.
            t.raw_data = None;
            t.doc_string = Some("stored".into());
            Ok(())
        };
        let bytes = apply(&mut g, p, &mut store).unwrap();
        assert_eq!(seen, ["a", "b", "c", "d"]);
        // Counted before the sink took the payloads.
        assert_eq!(bytes, 38);
        // The sink works on the graph's own tensors; the old ones are not given to it.
        let stored: Vec<_> = g
            .initializer
            .iter()
            .map(|t| t.doc_string.as_deref())
            .collect();
        assert_eq!(
            stored,
            [
                None,
                None,
                Some("stored"),
                Some("stored"),
                Some("stored"),
                Some("stored")
            ]
        );
        assert_eq!(g.node[1].input, ["x", "a"]);
    }

    #[test]
    fn store_is_not_called_when_an_edit_fails() {
        let mut g = two_weights(4, 2);
        let mut p = four_tensors();
        p.edit(Edit::Front(vec![node("f", "Identity", &["a"], &["fa"])]));
        p.edit(Edit::Replace {
            output: "q".into(),
            weight: "Wk".into(),
            nodes: vec![],
        });
        let mut calls = 0;
        let mut store = |_: &mut TensorProto| {
            calls += 1;
            Ok(())
        };
        let e = apply(&mut g, p, &mut store).unwrap_err();
        assert!(matches!(e, ApplyError::NoLayer { .. }), "{e:?}");
        assert_eq!(calls, 0);
    }

    #[test]
    fn a_store_error_names_the_tensor() {
        let mut g = matmul(4, 2);
        let mut calls = Vec::new();
        let mut store = |t: &mut TensorProto| {
            let name = t.name.clone().unwrap();
            calls.push(name.clone());
            if name == "c" {
                Err("disk full".to_string())
            } else {
                Ok(())
            }
        };
        let e = apply(&mut g, four_tensors(), &mut store).unwrap_err();
        assert_eq!(
            e,
            ApplyError::Store {
                name: "c".into(),
                reason: "disk full".into()
            }
        );
        assert_eq!(e.to_string(), "storing 'c': disk full");
        assert_eq!(calls, ["a", "b", "c"]);
    }
}
