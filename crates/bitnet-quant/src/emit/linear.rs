//! Shared by the targets that replace a `MatMul`/`Gemm` node by a node of their own
//! (`ort`, `ort-int8`): the node's parts in MatMul terms. `Gemm`'s `transA` becomes a
//! Transpose before the node, `alpha` is returned for the caller to fold into the weight
//! scales, and `beta * C` becomes either a constant bias vector (C an initializer that is a
//! scalar, `[N]` or `[1, N]`) or a value to add after the node (a matrix or run-time C,
//! multiplied by `beta` first when `beta != 1`).

use bitnet_model::node::{attr_f, attr_i};
use bitnet_model::proto::{GraphProto, NodeProto};
use bitnet_model::tensor;

use super::{EmitError, NameGen, Patch, WeightJob};
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

/// Finds the node of `layer` (still reading `job.weight`) and takes it apart; a constant it
/// needs (`beta`) goes into `patch`. [`EmitError::Missing`] when the node is no longer in the
/// graph (a bug: the driver hands each layer to one emission only).
pub fn take(
    g: &GraphProto,
    job: &WeightJob,
    layer: &LinearLayer,
    names: &mut NameGen,
    patch: &mut Patch,
) -> Result<Linear, EmitError> {
    let n = job.ternary.n;
    let pos = super::patch::layer_position(g, &layer.output, job.weight).ok_or_else(|| {
        EmitError::Missing {
            node: layer.node.clone(),
        }
    })?;
    let node = g.node[pos].clone();
    let is_gemm = layer.op == "Gemm";
    let f = |name: &str| {
        if is_gemm {
            attr_f(&node, name).unwrap_or(1.0)
        } else {
            1.0
        }
    };
    let (alpha, beta) = (f("alpha"), f("beta"));
    let trans_a = is_gemm && attr_i(&node, "transA").unwrap_or(0) == 1;
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
    Ok(Linear {
        node,
        a,
        before,
        alpha,
        bias,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyse::Layout;
    use crate::emit::testing::{float_attr, gemm, layer, matmul, ternary, Gemm, Job, C};
    use crate::emit::EmitContext;
    use crate::quant::Granularity;

    /// `take` on the only layer of `g` (weight W, N = 3): the parts and the patch.
    fn take_one(g: &GraphProto, name: &str) -> (Result<Linear, EmitError>, Patch) {
        take_in(g, g, name)
    }

    /// `take` of the layer `name` of `g` in the graph `view`.
    fn take_in(
        g: &GraphProto,
        view: &GraphProto,
        name: &str,
    ) -> (Result<Linear, EmitError>, Patch) {
        let job = Job::new(g, "W", ternary(3, 8, Granularity::Tensor));
        let l = layer(g, name);
        let layers = [&l];
        let wj = WeightJob {
            weight: "W",
            dtype: job.dtype,
            layers: &layers,
            ternary: &job.ternary,
            opset: 13,
            activations: &[None],
        };
        let mut patch = Patch::default();
        let lin = take(view, &wj, &l, &mut EmitContext::new(view), &mut patch);
        (lin, patch)
    }

    fn bias_of(spec: &Gemm) -> Bias {
        let (lin, _) = take_one(&gemm(8, 3, spec), "gemm");
        lin.unwrap().bias
    }

    #[test]
    fn the_layer_helper_describes_the_gemm() {
        let g = gemm(8, 3, &Gemm::default());
        let l = layer(&g, "gemm");
        assert_eq!(
            (l.op.as_str(), l.weight.as_str(), l.output.as_str()),
            ("Gemm", "W", "y")
        );
        assert_eq!(l.layout, Layout::NK);
        assert_eq!(l.shape, [3, 8]);
        assert!(l.candidate);
    }

    #[test]
    fn matmul_has_no_alpha_transpose_or_bias() {
        let mut g = matmul(8, 3);
        // Gemm's attributes on a MatMul mean nothing.
        g.node[0].attribute.push(float_attr("alpha", 3.0));
        let (lin, patch) = take_one(&g, "mm");
        let lin = lin.unwrap();
        assert_eq!((lin.a.as_str(), lin.alpha), ("x", 1.0));
        assert!(lin.before.is_empty());
        assert!(matches!(lin.bias, Bias::None));
        assert!(patch.tensors.is_empty());
    }

    #[test]
    fn a_layer_no_longer_in_the_graph_is_missing() {
        let g = matmul(8, 3);
        let mut gone = g.clone();
        gone.node[0].input[1] = "W_dequantized".into();
        match take_in(&g, &gone, "mm").0 {
            Err(EmitError::Missing { node }) => assert_eq!(node, "mm"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("took a layer that is gone"),
        }
    }

    /// Both emitters that take layers apart say so too, rather than leave a weight float.
    #[test]
    fn the_ort_emitters_report_a_missing_layer() {
        let g = matmul(8, 3);
        let job = Job::new(&g, "W", ternary(3, 8, Granularity::Channel));
        let mut gone = g.clone();
        gone.node[0].input[1] = "elsewhere".into();
        let ort = crate::emit::ort::Ort {
            block_size: None,
            accuracy_level: 0,
        };
        let emitters: [&dyn crate::emit::Emitter; 2] = [&ort, &crate::emit::ort_int8::OrtInt8];
        for e in emitters {
            match crate::emit::testing::emit_err(e, &gone, &job) {
                EmitError::Missing { node } => assert_eq!(node, job.layers[0].node),
                other => panic!("{}: {other}", e.name()),
            }
        }
    }

    #[test]
    fn c_is_a_vector_only_when_every_dim_but_the_last_is_1() {
        let c = |dims: Vec<i64>, values: Vec<f32>| Gemm {
            c: C::Const(dims, values),
            beta: Some(2.0),
            ..Gemm::default()
        };
        assert!(matches!(
            bias_of(&c(vec![1, 3], vec![1.0, 2.0, 3.0])),
            Bias::Vector(v) if v == [2.0, 4.0, 6.0]
        ));
        assert!(matches!(bias_of(&c(vec![1], vec![1.5])), Bias::Vector(v) if v == [3.0; 3]));
        // [3, 1] broadcasts along the rows, not along N: added after, scaled by beta first.
        let (lin, patch) = take_one(&gemm(8, 3, &c(vec![3, 1], vec![1.0; 3])), "gemm");
        let lin = lin.unwrap();
        assert!(matches!(&lin.bias, Bias::Value(v) if v == "C_scaled"));
        assert_eq!(lin.before.len(), 1);
        assert_eq!(lin.before[0].input, ["C", "gemm_beta"]);
        assert!(patch.tensor("gemm_beta").is_some());
        // A vector of another length than N is not a bias vector either.
        assert!(matches!(bias_of(&c(vec![2], vec![1.0; 2])), Bias::Value(_)));
    }

    #[test]
    fn beta_0_drops_c() {
        let spec = Gemm {
            c: C::Input,
            beta: Some(0.0),
            ..Gemm::default()
        };
        let (lin, patch) = take_one(&gemm(8, 3, &spec), "gemm");
        let lin = lin.unwrap();
        assert!(matches!(lin.bias, Bias::None));
        assert!(lin.before.is_empty() && patch.tensors.is_empty());
    }
}
