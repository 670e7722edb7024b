//! Emit and apply: each quantized weight's patch from the target's emitter, applied to the
//! graph in weight order (with the output-scale patch of BitNet's plan after it), and the
//! report and metadata entries of the weight.

use std::path::Path;

use bitnet_model::proto::GraphProto;

use super::options::ConvertOptions;
use super::plan::bitnet_plan;
use super::quantize::Quantized;
use crate::analyse::LinearLayer;
use crate::bitnet;
use crate::emit::{patch, Edit, EmitContext, Patch, WeightJob};
use crate::error::ConvertError;
use crate::quant;
use crate::report::{bytes_of, Codes, LayerReport};

/// The emitting side of the driver: names, and what the report and metadata collect.
pub(super) struct Emission {
    /// The names in use and what earlier weights' emission left for later ones.
    pub(super) cx: EmitContext,
    pub(super) reports: Vec<LayerReport>,
    pub(super) meta: Vec<bitnet_model::metadata::LayerSpec>,
    pub(super) min_opset: i64,
    /// Outputs of nodes the converted layers took over, removed at the end if dead.
    pub(super) removable: Vec<String>,
}

impl Emission {
    /// Rewrites the graph for one batch of quantized weights, in order; new initializers go
    /// to the sink as they are made. The codes go back to `spare` once emitted.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn emit_batch(
        &mut self,
        g: &mut GraphProto,
        batch: &[(String, Vec<&LinearLayer>)],
        quantized: Vec<Result<Quantized, ConvertError>>,
        opts: &ConvertOptions,
        p: &str,
        opset: i64,
        spare: &quant::Spare,
    ) -> Result<(), ConvertError> {
        for ((w, ls), q) in batch.iter().zip(quantized) {
            let mut q = q?;
            // BitNet's layer around the node: a constant scale on the output is folded into
            // the weight scales (the scale node goes after emission).
            let keep = opts.emitter.keep_scale_before_clip();
            let mut plan = bitnet_plan(g, w, ls, Path::new(p), keep);
            // An emitter taking BitNet's layer as a unit keeps the scale node: the scales are
            // then applied after the integer product, in the original's order.
            if opts.emitter.keeps_output_scale(q.dtype, &plan.activations) {
                plan.output_scales = None;
            }
            if let Some(scales) = &plan.output_scales {
                let f = scales[0].factor;
                q.ternary.scales.iter_mut().for_each(|s| *s *= f);
            }
            let t = &q.ternary;
            let dtype = q.dtype;
            let job = WeightJob {
                weight: w,
                dtype,
                layers: ls,
                ternary: t,
                opset,
                activations: &plan.activations,
            };
            let emitted =
                opts.emitter
                    .emit(g, &job, &mut self.cx)
                    .map_err(|error| ConvertError::Emit {
                        path: p.to_string(),
                        weight: w.clone(),
                        nodes: ls
                            .iter()
                            .map(|l| format!("'{}'", l.node))
                            .collect::<Vec<_>>()
                            .join(", "),
                        error,
                    })?;
            let mut absorbed = emitted.absorbed;
            self.removable.extend(emitted.removable);
            // New tensors go to the output's data file as soon as they are in the graph.
            let mut store = |t: &mut bitnet_model::proto::TensorProto| match opts.sink {
                Some(sink) => sink.store(t).map_err(|e| e.to_string()),
                None => Ok(()),
            };
            let applied = |e: patch::ApplyError| ConvertError::Other {
                path: p.to_string(),
                reason: format!("weight '{w}': {e}"),
            };
            let bytes_after = patch::apply(g, emitted.patch, &mut store).map_err(applied)?;
            if let Some(scales) = &plan.output_scales {
                for (l, os) in ls.iter().zip(scales) {
                    let scale_patch = output_scale_patch(g, w, l, os, &mut self.removable)
                        .map_err(|reason| ConvertError::Other {
                            path: p.to_string(),
                            reason,
                        })?;
                    patch::apply(g, scale_patch, &mut store).map_err(applied)?;
                    absorbed.push(os.how.clone());
                }
            }
            self.min_opset = self.min_opset.max(emitted.min_opset);
            let [neg, zero, pos] = q.counts;
            let (smin, smax) = t.scale_range();
            let total = (t.n * t.k) as u64;
            let bytes_before = bytes_of(dtype, total);
            self.reports.push(LayerReport {
                node: ls[0].node.clone(),
                shared_with: ls[1..].iter().map(|l| l.node.clone()).collect(),
                op: ls[0].op.clone(),
                weight: w.clone(),
                shape: q.dims.iter().map(|&d| d as i64).collect(),
                dtype: bitnet_model::dtype::short_name(dtype),
                granularity: t.granularity.to_string(),
                codes: Codes { neg, zero, pos },
                sparsity: zero as f64 / total.max(1) as f64,
                scale_min: smin,
                scale_max: smax,
                rel_error: q.rel_error,
                lossless: t.lossless,
                folded: ls[0].folded,
                bytes_before,
                bytes_after,
                absorbed,
                not_absorbed: plan.not_absorbed,
            });
            for (i, l) in ls.iter().enumerate() {
                let os = plan.output_scales.as_ref().and_then(|s| s.get(i));
                self.meta.push(bitnet_model::metadata::LayerSpec {
                    lossless: Some(t.lossless && !opts.emitter.quantizes_activations(&job, i)),
                    node: l.node.clone(),
                    op: l.op.clone(),
                    output: l.output.clone(),
                    output_scale: os.map(|os| os.factor as f64),
                    scaled_output: os.map(|os| os.node_output.clone()),
                    weight: l.weight.clone(),
                });
            }
            if let Some(pr) = opts.progress {
                pr.converted(w, bytes_before);
            }
            // For a later weight's codes.
            spare.give(q.ternary.codes);
        }
        Ok(())
    }
}

/// After `l` was emitted with its scales multiplied by `os.factor` (and that patch applied):
/// the patch by which the node that applied the factor goes (the layer's new last node writes
/// its output instead), or, for `y / (s * c)`, divides by `s` alone.
fn output_scale_patch(
    g: &GraphProto,
    w: &str,
    l: &LinearLayer,
    os: &bitnet::OutputScale,
    removable: &mut Vec<String>,
) -> Result<Patch, String> {
    if crate::emit::patch::layer_position(g, &l.output, w).is_some() {
        return Err(format!(
            "node '{}' was not rewritten, but its output scale was folded into its weight scales",
            l.node
        ));
    }
    let Some(node) = g
        .node
        .iter()
        .find(|n| n.output.first() == Some(&os.node_output))
    else {
        return Err(format!("the output scale node of '{}' is gone", l.node));
    };
    let mut patch = Patch::default();
    match &os.keep_divisor {
        Some((s, product)) => {
            let Some(from) = node.input.get(1) else {
                return Err(format!(
                    "the output scale node of '{}' has one input",
                    l.node
                ));
            };
            patch.edit(Edit::Rewire {
                output: os.node_output.clone(),
                input: 1,
                from: from.clone(),
                to: s.clone(),
            });
            removable.push(product.clone());
        }
        None => patch.edit(Edit::Bypass {
            node_output: os.node_output.clone(),
            value: l.output.clone(),
        }),
    }
    Ok(patch)
}
