//! The rewrite driver: for every graph of the model (subgraphs of If/Loop/Scan included),
//! find linear layers, select them, quantize each distinct weight once (in parallel), let the
//! target's emitter rewrite the graph, remove what became dead, raise the opset when the new
//! nodes need it and it is safe, and record what was done in `metadata_props` and a report.

use std::collections::HashSet;
use std::path::Path;

use bitnet_model::graph::GraphIndex;
use bitnet_model::proto::{GraphProto, ModelProto};
use bitnet_model::walk;
use rayon::prelude::*;

use crate::analyse::{self, LinearLayer};
use crate::emit::EmitContext;
use crate::quant;

pub use bitnet_model::metadata::PREFIX as METADATA_PREFIX;

mod emission;
mod imports;
mod options;
mod plan;
mod quantize;
mod record;
mod schedule;
mod select;
mod source;

use crate::cleanup::remove_dead;
pub use crate::error::ConvertError;
pub use crate::report::{Codes, LayerReport, Report, Skipped, Totals};
use emission::Emission;
use quantize::{job_cost, parallel_inside, quantize_job, Quantized};
use select::select;

pub use options::{ConvertOptions, Progress, Selection};

/// Converts `model` in place. `path` names the input in errors.
pub fn convert(
    model: &mut ModelProto,
    path: &Path,
    opts: &ConvertOptions,
) -> Result<Report, ConvertError> {
    let p = path.display().to_string();
    let already = bitnet_model::metadata::converted(model);
    let opset_before = bitnet_model::load::opset_version(model, "");
    let mut layers_out = Vec::new();
    let mut skipped = Vec::new();
    let mut meta_layers = Vec::new();
    let mut min_opset = 0i64;
    let mut removed = 0usize;
    let mut main_graph = true;
    let mut last_position = Vec::new();
    if opts.last_logits {
        let g = model.graph.as_mut().ok_or_else(|| ConvertError::Other {
            path: p.clone(),
            reason: "the model has no graph".into(),
        })?;
        last_position =
            crate::vocab::last_position_logits(g, opset_before.unwrap_or(0)).map_err(|reason| {
                ConvertError::Other {
                    path: p.clone(),
                    reason,
                }
            })?;
    }
    // Weights that If/Loop/Scan bodies capture from an enclosing graph are converted inside
    // the subgraph that reads them: copy them in first, drop what is left over afterwards.
    let copies = crate::scope::localize(model);
    let mut graph_number = 0;
    walk::for_each_graph_mut(
        model,
        &mut |g: &mut GraphProto| -> Result<(), ConvertError> {
            let main = std::mem::replace(&mut main_graph, false);
            let k = graph_number;
            graph_number += 1;
            if !copies.present(k, g) {
                return Err(ConvertError::Other {
                    path: p.clone(),
                    reason: format!(
                        "internal: graph {k} lost the outer-scope weights copied into it before its conversion"
                    ),
                });
            }
            let r = convert_graph(g, path, opts, opset_before.unwrap_or(0), main)?;
            copies.drop_unconverted(k, g);
            layers_out.extend(r.layers);
            skipped.extend(r.skipped);
            meta_layers.extend(r.meta);
            min_opset = min_opset.max(r.min_opset);
            removed += r.removed;
            Ok(())
        },
    )?;
    crate::scope::release(model, &copies);
    let mut tables = Vec::new();
    if opts.vocab.any() {
        if !opts.emitter.onnx_runtime() {
            return Err(ConvertError::Other {
                path: p,
                reason: format!(
                    "4- and 8-bit embedding and head tables use ONNX Runtime's com.microsoft \
                     ops, which target {} does not emit (targets ort, ort-int8)",
                    opts.emitter.name()
                ),
            });
        }
        if let Some(g) = model.graph.as_mut() {
            let (t, s) =
                crate::vocab::quantize_tables(g, path, &opts.vocab, opts.source, opts.sink)?;
            tables = t;
            skipped.extend(s);
        }
    }
    let opset_after = imports::raise(
        model,
        opts.emitter,
        &p,
        opset_before,
        min_opset,
        &layers_out,
    )?;
    imports::add_domains(
        model,
        opts.emitter,
        !layers_out.is_empty(),
        !tables.is_empty(),
    );
    let totals = Totals::of(&layers_out, skipped, removed, opset_before, opset_after);
    let report = Report {
        tool: format!("bitnet-onnx {}", env!("CARGO_PKG_VERSION")),
        target: opts.emitter.name().to_string(),
        activations: opts.emitter.activations(),
        already_converted: already
            && layers_out.is_empty()
            && tables.is_empty()
            && last_position.is_empty(),
        layers: layers_out,
        tables,
        last_position_heads: last_position,
        totals,
    };
    record::metadata(model, &report, opts, &meta_layers);
    Ok(report)
}

struct GraphResult {
    layers: Vec<LayerReport>,
    skipped: Vec<Skipped>,
    meta: Vec<bitnet_model::metadata::LayerSpec>,
    min_opset: i64,
    removed: usize,
}

fn convert_graph(
    g: &mut GraphProto,
    path: &Path,
    opts: &ConvertOptions,
    opset: i64,
    main: bool,
) -> Result<GraphResult, ConvertError> {
    let p = path.display().to_string();
    let (layers, mut weights, folded_nodes) = analyse::find_linear_layers(g, path, opts.source);
    // Identify folded nodes by their outputs: indices shift once emitters insert nodes.
    let folded_outputs: HashSet<String> = folded_nodes
        .iter()
        .filter_map(|&i| g.node[i].output.first().cloned())
        .collect();
    let (chosen, skipped) = select(g, layers, opts, main);
    let jobs: Vec<(String, Vec<&LinearLayer>)> = chosen
        .iter()
        .map(|(w, ls)| (w.clone(), ls.iter().collect()))
        .collect();
    // Initializers read before the rewrite: those nobody reads afterwards became dead through it.
    let read_before: HashSet<String> = {
        let index = GraphIndex::new(g);
        g.initializer
            .iter()
            .filter_map(|t| t.name.clone())
            .filter(|n| !index.consumers(n).is_empty())
            .collect()
    };
    if let Some(pr) = opts.progress {
        let bytes = jobs
            .iter()
            .map(|(w, _)| crate::report::bytes_of(weights[w].dtype(), weights[w].len() as u64))
            .sum();
        pr.queued(jobs.len(), bytes);
    }
    // Quantize every distinct weight once, in weight-name order, in batches bounded by memory:
    // the weights of a batch are quantized in parallel (and each large one in parallel
    // inside), then emitted in order, so at most one batch of float copies and codes exists
    // at a time. The output does not depend on the batching (nor on the thread count).
    let costs: Vec<u64> = jobs
        .iter()
        .map(|(w, ls)| job_cost(weights[w].len(), ls[0].layout, &opts.quant))
        .collect();
    let inside: Vec<bool> = jobs
        .iter()
        .map(|(w, ls)| parallel_inside(weights[w].len(), ls[0].layout, &opts.quant))
        .collect();
    let budget = schedule::budget(&costs, rayon::current_num_threads(), opts.batch_bytes);
    let mut em = Emission {
        cx: EmitContext::new(g),
        reports: Vec::new(),
        meta: Vec::new(),
        min_opset: 0,
        removable: Vec::new(),
    };
    type Batch<'j, 'l> = &'j [(String, Vec<&'l LinearLayer>)];
    let mut pending: Option<(Batch, Vec<Result<Quantized, ConvertError>>)> = None;
    // Buffers kept from one weight to the next (codes, band buffers, transposes), up to the
    // batch budget: keeping none costs a page fault and a zeroed page per 4 KiB of every new
    // buffer, keeping all costs memory; the budget is between (docs/benchmarks.md, "Tuning
    // constants").
    let spare = quant::Spare::new(usize::try_from(budget).unwrap_or(usize::MAX));
    for range in schedule::batches(&costs, budget) {
        let (start, end) = (range.start, range.end);
        let batch = &jobs[range];
        // Start reading the next batch from disk while this one is quantized.
        let ahead = &jobs[end..end + schedule::read_ahead(&costs[end..], budget)];
        let inputs = source::read_batch(g, batch, ahead, &mut weights, path, opts.source)?;
        // Quantize this batch while the previous one is emitted (in order, on the graph). Its
        // weights are taken one after another when each is quantized in parallel inside.
        let one_by_one = inside[start..end].iter().all(|&p| p);
        let (quantized, emitted) = rayon::join(
            || -> Vec<Result<Quantized, ConvertError>> {
                inputs
                    .into_par_iter()
                    .with_min_len(if one_by_one { usize::MAX } else { 1 })
                    .zip(batch.par_iter())
                    .map(|((input, ls), (w, _))| quantize_job(input, w, ls, path, opts, &spare))
                    .collect()
            },
            || match pending.take() {
                Some((b, q)) => em.emit_batch(g, b, q, opts, &p, opset, &spare),
                None => Ok(()),
            },
        );
        emitted?;
        pending = Some((batch, quantized));
    }
    if let Some((b, q)) = pending.take() {
        em.emit_batch(g, b, q, opts, &p, opset, &spare)?;
    }
    let Emission {
        reports,
        meta,
        min_opset,
        removable,
        ..
    } = em;
    let removed = if reports.is_empty() {
        0
    } else {
        let mut removable_outputs = folded_outputs;
        removable_outputs.extend(removable);
        remove_dead(g, &removable_outputs, &read_before)
    };
    Ok(GraphResult {
        layers: reports,
        skipped,
        meta,
        min_opset,
        removed,
    })
}
