//! Shared by the targets that replace a `MatMul`/`Gemm` node by a node of their own
//! (`ort`, `ort-int8`): the node's parts in MatMul terms. `Gemm`'s `transA` becomes a
//! Transpose before the node, `alpha` is returned for the caller to fold into the weight
//! scales, and `beta * C` becomes either a constant bias vector (C an initializer that is a
//! scalar, `[N]` or `[1, N]`) or a value to add after the node (a matrix or run-time C,
//! multiplied by `beta` first when `beta != 1`).

use bitnet_model::proto::{AttributeProto, GraphProto, NodeProto};
use bitnet_model::tensor;

use super::{NameGen, Patch, WeightJob};
use crate::analyse::LinearLayer;

/// What is added to the product.
pub enum Bias {
    None,
    /// `beta * C` as a constant vector of length N.
    Vector(Vec<f32>),
    /// A value to add after the product (already multiplied by `beta`).
    Value(String),
}

/// One linear node taken apart.
pub struct Linear {
    /// The original node (name, output and doc string are kept by the replacement).
    pub node: NodeProto,
    /// The activation, `[.., K]` (transposed when the Gemm had `transA = 1`).
    pub a: String,
    /// Nodes to insert before the replacement (Transpose of A, Mul of C by beta).
    pub before: Vec<NodeProto>,
    /// Gemm's `alpha` (1 for MatMul): the caller folds it into the weight scales.
    pub alpha: f32,
    pub bias: Bias,
}

fn attr<'n>(n: &'n NodeProto, name: &str) -> Option<&'n AttributeProto> {
    n.attribute.iter().find(|a| a.name.as_deref() == Some(name))
}

/// Finds the node of `layer` (still reading `job.weight`) and takes it apart; a constant it
/// needs (`beta`) goes into `patch`. `None` when the node is no longer in the graph.
pub fn take(
    g: &GraphProto,
    job: &WeightJob,
    layer: &LinearLayer,
    names: &mut NameGen,
    patch: &mut Patch,
) -> Option<Linear> {
    let n = job.ternary.n;
    let pos = super::patch::layer_position(g, &layer.output, job.weight)?;
    let node = g.node[pos].clone();
    let is_gemm = layer.op == "Gemm";
    let f = |name: &str| {
        if is_gemm {
            attr(&node, name).and_then(|a| a.f).unwrap_or(1.0)
        } else {
            1.0
        }
    };
    let (alpha, beta) = (f("alpha"), f("beta"));
    let trans_a = is_gemm && attr(&node, "transA").and_then(|a| a.i).unwrap_or(0) == 1;
    let mut before = Vec::new();
    let mut a = node.input[0].clone();
    if trans_a {
        let out = names.fresh(&format!("{a}_transposed"));
        before.push(NodeProto {
            name: Some(names.fresh(&format!("{}_TransposeA", layer.node))),
            op_type: Some("Transpose".into()),
            input: vec![a.clone()],
            output: vec![out.clone()],
            ..Default::default()
        });
        a = out;
    }
    let mut bias = Bias::None;
    if let Some(c) = node.input.get(2).filter(|c| !c.is_empty() && beta != 0.0) {
        let vector = g
            .initializer
            .iter()
            .find(|t| t.name.as_deref() == Some(c.as_str()))
            .filter(|t| {
                // Scalar, [N] or [1, N]: every dim but the last is 1.
                let count: i64 = t.dims.iter().product();
                count == t.dims.last().copied().unwrap_or(1).max(1)
            })
            .and_then(|t| tensor::to_f32(std::path::Path::new(""), t).ok())
            .filter(|v| v.len() == 1 || v.len() == n);
        bias = match vector {
            Some(v) if v.len() == 1 => Bias::Vector(vec![v[0] * beta; n]),
            Some(v) => Bias::Vector(v.iter().map(|x| x * beta).collect()),
            None if beta == 1.0 => Bias::Value(c.clone()),
            None => {
                let beta_name = names.fresh(&format!("{}_beta", layer.node));
                patch.constant(tensor::from_f32_as(&beta_name, job.dtype, &[], &[beta]));
                let scaled = names.fresh(&format!("{c}_scaled"));
                before.push(NodeProto {
                    name: Some(names.fresh(&format!("{}_MulBeta", layer.node))),
                    op_type: Some("Mul".into()),
                    input: vec![c.clone(), beta_name],
                    output: vec![scaled.clone()],
                    ..Default::default()
                });
                Bias::Value(scaled)
            }
        };
    }
    Some(Linear {
        node,
        a,
        before,
        alpha,
        bias,
    })
}
