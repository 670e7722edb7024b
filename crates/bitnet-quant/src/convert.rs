//! The rewrite driver: for every graph of the model (subgraphs of If/Loop/Scan included),
//! find linear layers, select them, quantize each distinct weight once (in parallel), let the
//! target's emitter rewrite the graph, remove what became dead, raise the opset when the new
//! nodes need it and it is safe, and record what was done in `metadata_props` and a report.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use bitnet_model::graph::GraphIndex;
use bitnet_model::load::Mappings;
use bitnet_model::proto::{GraphProto, ModelProto};
use bitnet_model::save::Writer;
use bitnet_model::walk;
use rayon::prelude::*;
use regex::Regex;
use serde::Serialize;

use crate::analyse::{self, Layout, LinearLayer, WeightValue};
use crate::bitnet;
use crate::emit::{EmitContext, Emitter, WeightJob};
use crate::opsets;
use crate::quant::kn::Rows;
use crate::quant::{self, QuantConfig, Ternary};

pub use bitnet_model::metadata::PREFIX as METADATA_PREFIX;

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{path}: weight '{weight}' of node '{node}': {source}")]
    Quant {
        path: String,
        weight: String,
        node: String,
        #[source]
        source: quant::QuantError,
    },
    #[error("{path}: weight '{weight}': {source}")]
    Pack {
        path: String,
        weight: String,
        #[source]
        source: crate::pack::PackError,
    },
    #[error("{path}: the converted nodes need default-domain opset {needed} but the model imports opset {have}, and node '{node}' ({op}) does not keep its meaning between them: {op}-{version} {change}; re-export the model at opset {needed} or newer")]
    OpsetUpgrade {
        path: String,
        needed: i64,
        have: i64,
        node: String,
        op: String,
        version: i64,
        change: String,
    },
    #[error("{path}: {reason}")]
    Other { path: String, reason: String },
}

impl ConvertError {
    /// An emitter's refusal; the driver fills in the model path.
    pub(crate) fn refused(reason: String) -> Self {
        ConvertError::Other {
            path: String::new(),
            reason,
        }
    }

    /// An emitter's packing error for `weight`; the driver fills in the model path.
    pub(crate) fn pack(weight: &str, source: crate::pack::PackError) -> Self {
        ConvertError::Pack {
            path: String::new(),
            weight: weight.to_string(),
            source,
        }
    }

    /// Fills in the model path for errors raised where it is not known (the emitters).
    fn in_file(mut self, file: &str) -> Self {
        match &mut self {
            ConvertError::Quant { path, .. }
            | ConvertError::Pack { path, .. }
            | ConvertError::OpsetUpgrade { path, .. }
            | ConvertError::Other { path, .. } => {
                if path.is_empty() {
                    *path = file.to_string();
                }
            }
        }
        self
    }
}

/// Which linear layers to convert.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub include: Option<Regex>,
    pub exclude: Option<Regex>,
    pub min_params: u64,
    /// Convert the output projection feeding a graph output to ternary like the other layers.
    pub quantize_head: bool,
}

pub struct ConvertOptions<'a> {
    pub quant: QuantConfig,
    pub selection: Selection,
    pub emitter: &'a dyn Emitter,
    /// The embedding and LM head as 4- or 8-bit tables (ONNX Runtime targets); a head taken
    /// here is left out of the ternary layers.
    pub vocab: crate::vocab::VocabOptions,
    /// `--logits last`: the LM heads compute the last position only
    /// ([`crate::vocab::last_position_logits`]).
    pub last_logits: bool,
    /// The command line flags, recorded in the output's metadata.
    pub flags: String,
    /// Told what is queued and what is done (the library never prints).
    pub progress: Option<&'a dyn Progress>,
    /// The memory maps the model's payloads point into: each weight's pages are released once
    /// it is quantized, and the next batch's are read ahead.
    pub source: Option<&'a Mappings>,
    /// Takes every initializer an emitter adds, once final: `save::Writer::store` moves its
    /// payload to the output's external data file at once.
    pub sink: Option<&'a Writer>,
    /// Bytes of float copies and codes one batch of weights may hold; a batch always takes at
    /// least one weight. `None`: 4 MiB per thread, or the largest weight's need if more.
    /// Batching never changes the output.
    pub batch_bytes: Option<u64>,
}

/// Progress of a conversion, as it happens. Calls come one at a time, in weight order (not
/// necessarily from the calling thread).
pub trait Progress: Sync {
    /// `weights` more distinct weights holding `bytes` bytes will be converted (called once
    /// per graph that has any).
    fn queued(&self, weights: usize, bytes: u64);
    /// `weight` (`bytes` bytes before conversion) was converted.
    fn converted(&self, weight: &str, bytes: u64);
}

#[derive(Debug, Clone, Serialize)]
pub struct Codes {
    #[serde(rename = "-1")]
    pub neg: u64,
    #[serde(rename = "0")]
    pub zero: u64,
    #[serde(rename = "1")]
    pub pos: u64,
}

/// One converted weight (and the layers reading it).
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    pub node: String,
    /// Other nodes sharing this weight.
    pub shared_with: Vec<String>,
    pub op: String,
    pub weight: String,
    pub shape: Vec<i64>,
    pub dtype: String,
    pub granularity: String,
    pub codes: Codes,
    pub sparsity: f64,
    pub scale_min: f32,
    pub scale_max: f32,
    pub rel_error: f64,
    pub lossless: bool,
    pub folded: bool,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// What of BitNet's layer around the node was taken into the converted layer: the
    /// activation quantization (integer targets), a constant output scale (every target).
    pub absorbed: Vec<String>,
    /// Why a chain that looks like BitNet's activation quantization was left as it is.
    pub not_absorbed: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub node: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Totals {
    pub converted: usize,
    pub skipped: Vec<Skipped>,
    pub weight_bytes_before: u64,
    pub weight_bytes_after: u64,
    pub weight_compression: f64,
    /// Bits per converted weight in the output: codes, padding and scales.
    pub bits_per_weight: f64,
    pub file_bytes_before: u64,
    pub file_bytes_after: u64,
    pub file_compression: f64,
    pub removed_nodes: usize,
    pub opset_before: Option<i64>,
    pub opset_after: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tool: String,
    pub target: String,
    /// What the output does with activations.
    pub activations: String,
    pub already_converted: bool,
    pub layers: Vec<LayerReport>,
    /// The embedding and LM head tables quantized to 4 or 8 bits.
    pub tables: Vec<crate::vocab::TableReport>,
    /// The heads that compute the last position only (`--logits last`).
    pub last_position_heads: Vec<String>,
    pub totals: Totals,
}

fn bytes_of(dtype: i32, count: u64) -> u64 {
    bitnet_model::dtype::byte_len(dtype, count).unwrap_or(0)
}

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
    let copied = crate::scope::localize(model);
    walk::for_each_graph_mut(
        model,
        &mut |g: &mut GraphProto| -> Result<(), ConvertError> {
            let main = std::mem::replace(&mut main_graph, false);
            let r = convert_graph(g, path, opts, opset_before.unwrap_or(0), main)?;
            layers_out.extend(r.layers);
            skipped.extend(r.skipped);
            meta_layers.extend(r.meta);
            min_opset = min_opset.max(r.min_opset);
            removed += r.removed;
            Ok(())
        },
    )?;
    crate::scope::release(model, &copied);
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
    let mut opset_after = opset_before;
    if !layers_out.is_empty() {
        if let Some(max) = opts.emitter.max_opset() {
            let have = opset_before.unwrap_or(0);
            if have.max(min_opset) > max {
                return Err(ConvertError::Other {
                    path: p.clone(),
                    reason: format!(
                        "target {} parses default-domain opsets up to {max}, but the output needs opset {}",
                        opts.emitter.name(),
                        have.max(min_opset)
                    ),
                });
            }
        }
        let ir = opts.emitter.min_ir_version();
        if model.ir_version.unwrap_or(0) < ir {
            model.ir_version = Some(ir);
        }
        if let Some(have) = opset_before {
            if have < min_opset {
                if let Some(b) = opsets::upgrade_blocker(model, have, min_opset) {
                    return Err(ConvertError::OpsetUpgrade {
                        path: p,
                        needed: min_opset,
                        have,
                        node: b.node,
                        op: b.op,
                        version: b.version,
                        change: b.change,
                    });
                }
                opsets::rewrite_for_upgrade(model, have, min_opset);
                for o in &mut model.opset_import {
                    let d = o.domain.as_deref().unwrap_or("");
                    if bitnet_model::node::is_default_domain(Some(d)) {
                        o.version = Some(min_opset);
                    }
                }
                opset_after = Some(min_opset);
            }
        }
    }
    if !layers_out.is_empty() || !tables.is_empty() {
        let tables_domain: &[(&str, i64)] = if tables.is_empty() {
            &[]
        } else {
            &[("com.microsoft", 1)]
        };
        for &(domain, version) in opts.emitter.domains().iter().chain(tables_domain) {
            if bitnet_model::load::opset_version(model, domain).is_none() {
                model
                    .opset_import
                    .push(bitnet_model::proto::OperatorSetIdProto {
                        domain: Some(domain.to_string()),
                        version: Some(version),
                    });
            }
        }
    }
    let weight_bytes_before: u64 = layers_out.iter().map(|l| l.bytes_before).sum();
    let weight_bytes_after: u64 = layers_out.iter().map(|l| l.bytes_after).sum();
    let totals = Totals {
        converted: layers_out.len()
            + layers_out
                .iter()
                .map(|l| l.shared_with.len())
                .sum::<usize>(),
        skipped,
        weight_bytes_before,
        weight_bytes_after,
        bits_per_weight: {
            let params: u64 = layers_out
                .iter()
                .map(|l| l.shape.iter().product::<i64>().max(0) as u64)
                .sum();
            if params > 0 {
                8.0 * weight_bytes_after as f64 / params as f64
            } else {
                0.0
            }
        },
        weight_compression: if weight_bytes_after > 0 {
            weight_bytes_before as f64 / weight_bytes_after as f64
        } else {
            1.0
        },
        removed_nodes: removed,
        opset_before,
        opset_after,
        ..Default::default()
    };
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
    if !report.layers.is_empty()
        || !report.tables.is_empty()
        || !report.last_position_heads.is_empty()
    {
        use bitnet_model::metadata::{self as md, TableSpec, TotalsSpec};
        md::set(model, md::VERSION, env!("CARGO_PKG_VERSION").to_string());
        md::set(model, md::TARGET, opts.emitter.name().to_string());
        md::set(model, md::FLAGS, opts.flags.clone());
        md::set(model, md::ACTIVATIONS, report.activations.clone());
        md::set(model, md::LAYERS, md::to_json(&meta_layers));
        let totals = TotalsSpec {
            converted: report.totals.converted,
            skipped: report.totals.skipped.len(),
            weight_bytes_after: report.totals.weight_bytes_after,
            weight_bytes_before: report.totals.weight_bytes_before,
        };
        md::set(model, md::TOTALS, md::to_json(&totals));
        if !report.last_position_heads.is_empty() {
            md::set(model, md::LOGITS, "last".to_string());
        }
        if !report.tables.is_empty() {
            let specs: Vec<TableSpec> = report
                .tables
                .iter()
                .map(|t| TableSpec {
                    bits: t.bits.name().to_string(),
                    block_size: t.block_size,
                    node: t.node.clone(),
                    output: t.output.clone(),
                    rel_error: t.rel_error,
                    role: t.role.clone(),
                    weight: t.weight.clone(),
                })
                .collect();
            md::set(model, md::TABLES, md::to_json(&specs));
        }
        if opts.emitter.dequantize_linear_weights() {
            md::set(model, md::DEQUANTIZED_REFERENCE, "available".to_string());
        }
    }
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
    let index = GraphIndex::new(g);
    let sel = &opts.selection;
    let mut chosen: BTreeMap<String, Vec<LinearLayer>> = BTreeMap::new();
    let mut skipped = Vec::new();
    for l in layers {
        let params: i64 = l.shape.iter().product();
        if main && opts.vocab.head.is_some() && analyse::feeds_graph_output(&index, &l.output) {
            // The LM head: quantized as a table after the ternary layers (`vocab`, which
            // reports it when it cannot).
            continue;
        }
        let reason = if let Some(r) = &l.reason {
            Some(r.clone())
        } else if sel.include.as_ref().is_some_and(|re| !re.is_match(&l.node)) {
            Some("not matched by --include".to_string())
        } else if sel.exclude.as_ref().is_some_and(|re| re.is_match(&l.node)) {
            Some("matched by --exclude".to_string())
        } else if (params as u64) < sel.min_params {
            Some(format!(
                "{params} weights, below --min-params {}",
                sel.min_params
            ))
        } else if !sel.quantize_head && analyse::feeds_graph_output(&index, &l.output) {
            Some(if main {
                "output projection feeding a graph output stays float (use --head int4, int8 or ternary)"
                    .to_string()
            } else {
                "output projection feeding a subgraph output stays float (--head int4/int8 \
                 quantize the main graph's head only; --head ternary converts it)"
                    .to_string()
            })
        } else {
            None
        };
        match reason {
            Some(reason) => skipped.push(Skipped {
                node: l.node,
                reason,
            }),
            None => chosen.entry(l.weight.clone()).or_default().push(l),
        }
    }
    // A weight shared with a skipped layer of another layout cannot be rewritten for one only:
    // keep the float copy for those consumers (the rewrite only rewires chosen layers).
    // Mixed layouts among chosen layers of one weight: keep the first layout's group only.
    let mut jobs = Vec::new();
    for (w, ls) in &chosen {
        let layout = ls[0].layout;
        let (same, other): (Vec<&LinearLayer>, Vec<&LinearLayer>) =
            ls.iter().partition(|l| l.layout == layout);
        for l in other {
            skipped.push(Skipped {
                node: l.node.clone(),
                reason: format!("weight '{w}' is shared with a layer that reads it transposed"),
            });
        }
        jobs.push((w.clone(), same));
    }
    drop(index);
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
            .map(|(w, _)| bytes_of(weights[w].dtype(), weights[w].len() as u64))
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
    let largest = costs.iter().copied().max().unwrap_or(0);
    let budget = opts.batch_bytes.unwrap_or_else(|| {
        largest.max(rayon::current_num_threads() as u64 * BATCH_BYTES_PER_THREAD)
    });
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
    // batch budget: on the bench transformer (external data), no limit gave 0.101 s and
    // 14.4-15.1 MiB peak RSS, the budget (2 MiB) 0.117 s and 13.3-13.5 MiB, none kept 0.150 s
    // and 12.0-12.3 MiB (`perf stat -r 10`, `/usr/bin/time`).
    let spare = quant::Spare::new(usize::try_from(budget).unwrap_or(usize::MAX));
    let mut start = 0;
    while start < jobs.len() {
        let mut end = start;
        let mut used = 0;
        while end < jobs.len() && (end == start || used + costs[end] <= budget) {
            used += costs[end];
            end += 1;
        }
        let batch = &jobs[start..end];
        let by_name: std::collections::HashMap<&str, &bitnet_model::proto::TensorProto> = g
            .initializer
            .iter()
            .filter_map(|t| Some((t.name.as_deref()?, t)))
            .collect();
        // Each job owns its input (a folded value, or a cheap clone of the initializer whose
        // payload stays in the memory-mapped file), so the graph is free for the emitter.
        // Folded weights are folded again here, one batch at a time (analysis kept only their
        // shapes); the folder keeps small values (shapes, scales) for the whole batch.
        let index = GraphIndex::new(g);
        let mut folder = crate::fold::Folder::new(&index, path);
        let inputs = batch
            .iter()
            .map(|(w, ls)| {
                let input = match weights.remove(w) {
                    Some(WeightValue::Folded { .. }) => {
                        let c = folder.eval(w).map_err(|e| ConvertError::Other {
                            path: p.clone(),
                            reason: format!("weight '{w}' of node '{}': {e}", ls[0].node),
                        })?;
                        folder.evict_large();
                        analyse::release_decoded(&index, &mut folder, opts.source);
                        JobInput::Folded(c)
                    }
                    _ => match by_name.get(w.as_str()) {
                        Some(t) => JobInput::Tensor(Box::new((*t).clone())),
                        None => {
                            return Err(ConvertError::Other {
                                path: p.clone(),
                                reason: format!(
                                    "weight '{w}' of node '{}' is not an initializer of its graph",
                                    ls[0].node
                                ),
                            })
                        }
                    },
                };
                Ok((input, ls.as_slice()))
            })
            .collect::<Result<Vec<(JobInput, &[&LinearLayer])>, ConvertError>>()?;
        // Start reading the next batch from disk while this one is quantized.
        if let Some(src) = opts.source {
            let mut ahead = 0;
            for ((w, _), &c) in jobs[end..].iter().zip(&costs[end..]) {
                if ahead > 0 && ahead + c > budget {
                    break;
                }
                ahead += c;
                if let Some(raw) = by_name.get(w.as_str()).and_then(|t| t.raw_data.as_ref()) {
                    src.prefetch(raw);
                }
            }
        }
        drop(by_name);
        drop(folder);
        drop(index);
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
        start = end;
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

/// The emitting side of the driver: names, and what the report and metadata collect.
struct Emission {
    /// The names in use and what earlier weights' emission left for later ones.
    cx: EmitContext,
    reports: Vec<LayerReport>,
    meta: Vec<bitnet_model::metadata::LayerSpec>,
    min_opset: i64,
    /// Outputs of nodes the converted layers took over, removed at the end if dead.
    removable: Vec<String>,
}

/// What is BitNet's around the layers of one weight.
struct BitnetPlan {
    /// The activation quantization feeding each layer, when it is BitNet's (for the emitters
    /// with an integer path).
    activations: Vec<Option<bitnet::ActQuant>>,
    /// The constant output scale of each layer (all equal), when every layer has one.
    output_scales: Option<Vec<bitnet::OutputScale>>,
    /// A near miss of the activation quantization, for the report.
    not_absorbed: Option<String>,
}

/// Looks at the graph around the layers reading `w` (read-only). The activation is the node's
/// first input (not for a Gemm with `transA`); output scales are taken for MatMul layers only,
/// since a Gemm's bias would need the factor too.
/// With `keep_before_clip` (the emitter's [`Emitter::keep_scale_before_clip`]), a scale whose
/// only consumer is a Relu or Clip is left where it is.
fn bitnet_plan(
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
        let trans_a = node.is_some_and(|n| {
            n.attribute
                .iter()
                .any(|a| a.name.as_deref() == Some("transA") && a.i == Some(1))
        });
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

/// After `l` was emitted with its scales multiplied by `os.factor`: the node that applied the
/// factor goes (the layer's new last node writes its output instead), or, for `y / (s * c)`,
/// divides by `s` alone.
fn absorb_output_scale(
    g: &mut GraphProto,
    w: &str,
    l: &LinearLayer,
    os: &bitnet::OutputScale,
    removable: &mut Vec<String>,
) -> Result<(), String> {
    if g.node.iter().any(|n| {
        n.output.first() == Some(&l.output) && n.input.get(1).map(String::as_str) == Some(w)
    }) {
        return Err(format!(
            "node '{}' was not rewritten, but its output scale was folded into its weight scales",
            l.node
        ));
    }
    let Some(pos) = g
        .node
        .iter()
        .position(|n| n.output.first() == Some(&os.node_output))
    else {
        return Err(format!("the output scale node of '{}' is gone", l.node));
    };
    match &os.keep_divisor {
        Some((s, product)) => {
            g.node[pos].input[1] = s.clone();
            removable.push(product.clone());
        }
        None => {
            g.node.remove(pos);
            for n in &mut g.node {
                for o in &mut n.output {
                    if *o == l.output {
                        *o = os.node_output.clone();
                    }
                }
            }
            g.value_info.retain(|v| v.name.as_ref() != Some(&l.output));
        }
    }
    Ok(())
}

impl Emission {
    /// Rewrites the graph for one batch of quantized weights, in order; new initializers go
    /// to the sink as they are made. The codes go back to `spare` once emitted.
    #[allow(clippy::too_many_arguments)]
    fn emit_batch(
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
            let plan = bitnet_plan(g, w, ls, Path::new(p), keep);
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
            let first_new = g.initializer.len();
            let emitted = opts
                .emitter
                .emit(g, &job, &mut self.cx)
                .map_err(|e| e.in_file(p))?;
            let mut absorbed = emitted.absorbed;
            self.removable.extend(emitted.removable);
            if let Some(scales) = &plan.output_scales {
                for (l, os) in ls.iter().zip(scales) {
                    absorb_output_scale(g, w, l, os, &mut self.removable).map_err(|reason| {
                        ConvertError::Other {
                            path: p.to_string(),
                            reason,
                        }
                    })?;
                    absorbed.push(os.how.clone());
                }
            }
            if let Some(sink) = opts.sink {
                for init in g.initializer.iter_mut().skip(first_new) {
                    sink.store(init).map_err(|e| ConvertError::Other {
                        path: p.to_string(),
                        reason: e.to_string(),
                    })?;
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
                bytes_after: emitted.bytes,
                absorbed,
                not_absorbed: plan.not_absorbed,
            });
            for (i, l) in ls.iter().enumerate() {
                let os = plan.output_scales.as_ref().and_then(|s| s.get(i));
                self.meta.push(bitnet_model::metadata::LayerSpec {
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

/// Bytes of a `[K, N]` source transposed at a time (its pages are released after each part).
const TRANSPOSE_BAND_BYTES: usize = 8 << 20;

/// Memory a batch may hold per thread; a batch always takes at least its largest weight.
/// Small batches lose nothing (each weight is quantized in parallel inside). With `quant::kn`
/// reading a band at a time, a batch is mostly codes: 512 KiB per thread keeps two batches of
/// codes, the one quantized and the one emitted, near the size of the largest weight's codes
/// (the budget also bounds what `quant::Spare` keeps). On the bench transformer (external
/// data) 1 MiB per thread gave a heap peak of 5.8-7.3 MiB and peak RSS 14.5-15.4 MiB, 512 KiB
/// 5.4 MiB and 13.9-14.5 MiB, in the same time within noise.
const BATCH_BYTES_PER_THREAD: u64 = 512 << 10;

/// Peak bytes quantizing one weight of `elems` elements holds: one byte of code per weight, plus
/// its source in memory unless `quant::kn` reads it where it lies a band at a time (a `[K, N]`
/// weight quantized with absmean): the `f32` channel-major copy of any other weight.
fn job_cost(elems: usize, layout: Layout, cfg: &QuantConfig) -> u64 {
    match (layout, cfg.method) {
        (Layout::KN, quant::Method::AbsMean) => elems as u64,
        _ => elems as u64 * (4 + 1),
    }
}

/// Whether quantizing a weight of `elems` elements keeps every thread busy by itself: a
/// `quant::kn` job (tiles of each band run in parallel) of at least `PARALLEL_INSIDE_ELEMS`.
/// A batch of only such weights takes them one after another, so fewer bands and codes are
/// in memory at once: on the bench transformer (external data) median peak RSS 13.2-13.3 ->
/// 12.7-12.9 MiB (runs of 11-15, the binary's pages evicted first), time the same within noise
/// (best 0.077-0.089 s against 0.076-0.084 s).
fn parallel_inside(elems: usize, layout: Layout, cfg: &QuantConfig) -> bool {
    matches!((layout, cfg.method), (Layout::KN, quant::Method::AbsMean))
        && elems >= PARALLEL_INSIDE_ELEMS
}

/// See [`parallel_inside`]: 512x512 and larger.
const PARALLEL_INSIDE_ELEMS: usize = 1 << 18;

/// A weight to quantize, owned by its job.
enum JobInput {
    Folded(crate::fold::Const),
    /// The initializer (its payload shared with the loaded file, not copied).
    Tensor(Box<bitnet_model::proto::TensorProto>),
}

/// One quantized weight with the statistics the report needs (computed in the parallel step,
/// so no float copy outlives it).
struct Quantized {
    ternary: Ternary,
    rel_error: f64,
    counts: [u64; 3],
    dims: Vec<usize>,
    dtype: i32,
}

/// Reads, transposes when needed, quantizes and measures one weight, then releases the
/// memory-mapped pages it read.
fn quantize_job(
    input: JobInput,
    weight: &str,
    ls: &[&LinearLayer],
    path: &Path,
    opts: &ConvertOptions,
    spare: &quant::Spare,
) -> Result<Quantized, ConvertError> {
    let (dims, dtype) = match &input {
        JobInput::Folded(c) => (c.dims.clone(), c.dtype),
        JobInput::Tensor(t) => (
            t.dims
                .iter()
                .map(|&d| d.max(0) as usize)
                .collect::<Vec<_>>(),
            t.data_type.unwrap_or(0),
        ),
    };
    let other = |reason: String| ConvertError::Other {
        path: path.display().to_string(),
        reason: format!("weight '{weight}': {reason}"),
    };
    let [r, c] = dims[..] else {
        return Err(other(format!("shape {dims:?} is not 2-D")));
    };
    let layout = ls[0].layout;
    let (n, k) = match layout {
        Layout::KN => (c, r),
        Layout::NK => (r, c),
    };
    let source = opts.source.filter(|_| matches!(input, JobInput::Tensor(_)));
    let release_part = |part: &[u8]| {
        if let Some(src) = source {
            src.release(part);
        }
    };
    let quant_err = |source| ConvertError::Quant {
        path: path.display().to_string(),
        weight: weight.to_string(),
        node: ls[0].node.clone(),
        source,
    };
    let release = || {
        if let (Some(src), JobInput::Tensor(t)) = (opts.source, &input) {
            if let Some(raw) = &t.raw_data {
                src.release(raw);
            }
        }
    };
    // A `[K, N]` weight is quantized a band at a time (no transposed float copy) when it can be.
    let in_place = match layout {
        Layout::KN => quantize_kn(&input, r, c, &opts.quant, source, spare),
        Layout::NK => None,
    };
    let (ternary, rel_error) = match in_place {
        Some(result) => result.map_err(quant_err)?,
        None => {
            let cm =
                channel_major(&input, layout, r, c, path, &release_part, spare).map_err(other)?;
            if Some(cm.len()) != r.checked_mul(c) {
                return Err(other(format!(
                    "shape {dims:?} does not match its {} values",
                    cm.len()
                )));
            }
            if matches!(cm, Cow::Owned(_)) {
                release(); // the pages were read into the copy
            }
            let measured = quant::quantize_measured(&cm, n, k, &opts.quant).map_err(quant_err)?;
            if let Cow::Owned(v) = cm {
                spare.give(v);
            }
            measured
        }
    };
    release();
    let counts = ternary.counts();
    Ok(Quantized {
        ternary,
        rel_error,
        counts,
        dims,
        dtype,
    })
}

/// `quant::kn` on a `[rows = K, cols = N]` weight without a transposed copy: a float32,
/// float16 or bfloat16 payload, read a band at a time from its file when it lies in one of
/// `source`'s maps (so its pages never become resident), else where it lies; or a folded
/// float32 value. `None` when that path does not apply (TWN, integer or typed-field payloads,
/// a length that does not match the shape): the caller transposes instead, and reports a bad
/// length.
fn quantize_kn(
    input: &JobInput,
    rows: usize,
    cols: usize,
    cfg: &QuantConfig,
    source: Option<&Mappings>,
    spare: &quant::Spare,
) -> Option<Result<(Ternary, f64), quant::QuantError>> {
    use bitnet_model::proto::tensor_proto::DataType;
    let count = rows.checked_mul(cols)?;
    let t = match input {
        JobInput::Folded(c) => match &c.data {
            crate::fold::Data::F32(v) if v.len() == count => {
                let rows_of = Rows::InPlace(&|_| {});
                return quant::kn::quantize_measured_kn(v, rows, cols, |x| x, cfg, rows_of, spare);
            }
            _ => return None,
        },
        JobInput::Tensor(t) => t,
    };
    let raw = t.raw_data.as_ref()?;
    let source = source.filter(|s| s.contains(raw));
    match DataType::try_from(t.data_type.unwrap_or(0)) {
        Ok(DataType::Float) if raw.len() == count.checked_mul(4)? => {
            kn_from_bytes(raw, rows, cols, f32::from_le_bytes, cfg, source, spare)
        }
        Ok(DataType::Float16) if raw.len() == count.checked_mul(2)? => {
            let f = |b| half::f16::from_le_bytes(b).to_f32();
            kn_from_bytes(raw, rows, cols, f, cfg, source, spare)
        }
        Ok(DataType::Bfloat16) if raw.len() == count.checked_mul(2)? => {
            let f = |b| half::bf16::from_le_bytes(b).to_f32();
            kn_from_bytes(raw, rows, cols, f, cfg, source, spare)
        }
        _ => None,
    }
}

/// [`quantize_kn`] on a payload of `W`-byte little-endian elements.
fn kn_from_bytes<const W: usize>(
    raw: &[u8],
    rows: usize,
    cols: usize,
    f: impl Fn([u8; W]) -> f32 + Sync,
    cfg: &QuantConfig,
    source: Option<&Mappings>,
    spare: &quant::Spare,
) -> Option<Result<(Ternary, f64), quant::QuantError>>
where
    [u8; W]: Default,
{
    let elems = raw.as_chunks::<W>().0;
    let Some(src) = source else {
        let rows_of = Rows::InPlace(&|_| {});
        return quant::kn::quantize_measured_kn(elems, rows, cols, f, cfg, rows_of, spare);
    };
    let read = |at: std::ops::Range<usize>, buf: &mut [[u8; W]]| {
        src.read_at(raw, at.start * W, buf.as_flattened_mut())
            .map_err(|e| e.to_string())
    };
    let page_offset = src.file_offset(raw).unwrap_or(0) as usize % 4096;
    let rows_of = Rows::Read {
        read: &read,
        page_offset,
    };
    quant::kn::quantize_measured_kn(elems, rows, cols, f, cfg, rows_of, spare)
}

/// The weight as channel-major `[N][K]` `f32`: borrowed from the file when it is an aligned
/// float32 `[N, K]` payload, else decoded (and for `[K, N]` transposed) in one parallel pass.
/// A `[K, N]` source is transposed `TRANSPOSE_BAND_BYTES` of it at a time, and `release` is
/// called with each part of the payload once it has been read.
fn channel_major<'a>(
    input: &'a JobInput,
    layout: Layout,
    rows: usize,
    cols: usize,
    path: &Path,
    release: &dyn Fn(&[u8]),
    spare: &quant::Spare,
) -> Result<Cow<'a, [f32]>, String> {
    use bitnet_model::proto::tensor_proto::DataType;
    let band = |width: usize| (TRANSPOSE_BAND_BYTES / (cols * width).max(1)).max(1);
    let raw_part = |rs: std::ops::Range<usize>, width: usize| {
        if let JobInput::Tensor(t) = input {
            if let Some(raw) = &t.raw_data {
                if let Some(part) = raw.get(rs.start * cols * width..rs.end * cols * width) {
                    release(part);
                }
            }
        }
    };
    let finish = |v: Cow<'a, [f32]>| -> Result<Cow<'a, [f32]>, String> {
        if Some(v.len()) != rows.checked_mul(cols) {
            return Ok(v); // the caller reports the mismatch
        }
        Ok(match (layout, &v) {
            (Layout::NK, _) => v,
            // Borrowed from the mapped file: release it as the transpose goes.
            (Layout::KN, Cow::Borrowed(b)) => {
                let mut out = spare.take::<f32>(rows * cols);
                let done = |rs| raw_part(rs, 4);
                quant::transpose_map_rows_into(b, rows, cols, band(4), |x| x, done, &mut out);
                Cow::Owned(out)
            }
            (Layout::KN, Cow::Owned(o)) => Cow::Owned(quant::transpose(o, rows, cols)),
        })
    };
    let t = match input {
        JobInput::Folded(c) => {
            return finish(match &c.data {
                crate::fold::Data::F32(v) => Cow::Borrowed(v.as_slice()),
                _ => Cow::Owned(c.f32()),
            })
        }
        JobInput::Tensor(t) => t,
    };
    if let Some(v) = bitnet_model::tensor::f32_view(t) {
        return finish(Cow::Borrowed(v));
    }
    let count = rows.checked_mul(cols).ok_or("element count overflows")?;
    let dt = DataType::try_from(t.data_type.unwrap_or(0));
    let width = match dt {
        Ok(DataType::Float) => 4,
        Ok(DataType::Float16 | DataType::Bfloat16) => 2,
        _ => 0,
    };
    let raw = match &t.raw_data {
        Some(raw) if width > 0 && count.checked_mul(width) == Some(raw.len()) => raw,
        // Typed fields, other float types, or a length the checked decoder should explain.
        _ => {
            return finish(Cow::Owned(
                bitnet_model::tensor::to_f32(path, t).map_err(|e| e.to_string())?,
            ))
        }
    };
    let f16 = dt == Ok(DataType::Float16);
    let two = move |b: [u8; 2]| {
        if f16 {
            half::f16::from_le_bytes(b).to_f32()
        } else {
            half::bf16::from_le_bytes(b).to_f32()
        }
    };
    let (b4, b2) = (raw.as_chunks::<4>().0, raw.as_chunks::<2>().0);
    Ok(Cow::Owned(match (layout, width) {
        (Layout::KN, 4) => {
            let mut out = spare.take::<f32>(rows * cols);
            let done = |rs| raw_part(rs, 4);
            let f = f32::from_le_bytes;
            quant::transpose_map_rows_into(b4, rows, cols, band(4), f, done, &mut out);
            out
        }
        (Layout::KN, _) => {
            let mut out = spare.take::<f32>(rows * cols);
            let done = |rs| raw_part(rs, 2);
            quant::transpose_map_rows_into(b2, rows, cols, band(2), two, done, &mut out);
            out
        }
        (Layout::NK, 4) => b4
            .par_iter()
            .with_min_len(1 << 16)
            .map(|&b| f32::from_le_bytes(b))
            .collect(),
        (Layout::NK, _) => b2
            .par_iter()
            .with_min_len(1 << 16)
            .map(|&b| two(b))
            .collect(),
    }))
}

/// Removes the folded constant nodes that no longer feed anything, and the initializers that
/// only they or the converted layers read. Dead code the model already had is left alone.
/// Returns the number of nodes removed.
fn remove_dead(
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
