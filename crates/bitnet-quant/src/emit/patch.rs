//! A rewrite as a value. An emitter reads the graph and returns a [`Patch`]: the tensors it
//! adds, each with its role, and the edits to the node list in the order they are to happen.
//! [`apply`] is the only code that changes the graph for it: it places the nodes, hands every
//! new tensor to the output's sink, and counts the bytes of the converted weight.
//!
//! Nodes are found by their first output (and, for a linear layer, the weight they read at
//! input 1), never by position: positions shift as earlier edits insert nodes. An edit whose
//! node is not in the graph is an error, not a silent no-op: the emitter built it from the
//! same graph, so a miss is a bug worth hearing about.

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
