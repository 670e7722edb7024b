//! Plan: what of BitNet's layer surrounds the layers of one weight (read-only): the
//! activation quantization feeding each layer and a constant scale on its output.

use std::path::Path;

use bitnet_model::graph::GraphIndex;
use bitnet_model::proto::GraphProto;

use crate::analyse::LinearLayer;
use crate::bitnet;

/// What is BitNet's around the layers of one weight.
pub(super) struct BitnetPlan {
    /// The activation quantization feeding each layer, when it is BitNet's (for the emitters
    /// with an integer path).
    pub(super) activations: Vec<Option<bitnet::ActQuant>>,
    /// The constant output scale of each layer (all equal), when every layer has one.
    pub(super) output_scales: Option<Vec<bitnet::OutputScale>>,
    /// A near miss of the activation quantization, for the report.
    pub(super) not_absorbed: Option<String>,
}

/// Looks at the graph around the layers reading `w` (read-only). The activation is the node's
/// first input (not for a Gemm with `transA`); output scales are taken for MatMul layers only,
/// since a Gemm's bias would need the factor too.
/// With `keep_before_clip` (the emitter's [`Emitter::keep_scale_before_clip`]), a scale whose
/// only consumer is a Relu or Clip is left where it is.
pub(super) fn bitnet_plan(
    g: &GraphProto,
    w: &str,
    ls: &[&LinearLayer],
    path: &Path,
    keep_before_clip: bool,
) -> BitnetPlan {
    let index = GraphIndex::new(g);
    let mut activations = Vec::with_capacity(ls.len());
    let mut scales = Vec::new();
    let mut not_absorbed = None;
    let mut all = true;
    for l in ls {
        let node = g.node.iter().find(|n| {
            n.output.first() == Some(&l.output) && n.input.get(1).map(String::as_str) == Some(w)
        });
        let trans_a = node.is_some_and(|n| bitnet_model::node::attr_i(n, "transA") == Some(1));
        let act = match node.and_then(|n| n.input.first()).filter(|_| !trans_a) {
            Some(a) => bitnet::act_quant(&index, path, a).unwrap_or_else(|reason| {
                not_absorbed.get_or_insert(reason);
                None
            }),
            None => None,
        };
        let act_scale = act.as_ref().map(|m| m.scale.as_str());
        let os = (l.op == "MatMul" && node.is_some())
            .then(|| bitnet::output_scale(&index, path, &l.output, act_scale))
            .flatten();
        let before_clip = |os: &bitnet::OutputScale| {
            let c = index.consumers(&os.node_output);
            c.len() == 1
                && matches!(index.node(c[0]).op_type.as_deref(), Some("Relu" | "Clip"))
                && !index.is_graph_output(&os.node_output)
        };
        let os = match os {
            Some(os) if keep_before_clip && os.keep_divisor.is_none() && before_clip(&os) => {
                not_absorbed.get_or_insert_with(|| {
                    "output scale kept before its Relu/Clip: ONNX Runtime does not fuse \
                     DequantizeLinear -> MatMul feeding a lone Relu or Clip"
                        .to_string()
                });
                None
            }
            os => os,
        };
        match os {
            Some(os) => scales.push(os),
            None => all = false,
        }
        activations.push(act);
    }
    let same = scales
        .iter()
        .all(|s| s.factor.to_bits() == scales[0].factor.to_bits());
    BitnetPlan {
        activations,
        output_scales: (all && same && !scales.is_empty()).then_some(scales),
        not_absorbed,
    }
}
