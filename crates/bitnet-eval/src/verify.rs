//! Verification of a converted model against its original: both run in tract on the same
//! inputs; every graph output and every converted layer's output is compared, and, when the
//! converted weights are plain constant `DequantizeLinear`s, the converted model is also
//! compared with the original running on exactly the dequantized weights (which must agree
//! to float rounding).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use bitnet_model::graph::Dim;
use bitnet_model::proto::{ModelProto, NodeProto, TensorProto};
use bitnet_model::{tensor, Model};
use serde::Serialize;

use crate::error::{EvalError, Result};
use crate::inputs::{load_inputs, make_inputs, InputDescription, Inputs};
use crate::lower::{
    constant_dq_inputs, dequantize, gather_block_quantized_table, matmulnbits_weight,
};
use crate::metrics::{Accumulator, Metrics};
use crate::runner::{bind_shapes, graph_inputs, Output, Runner};

pub use bitnet_model::metadata::{
    LayerSpec, TableSpec, DEQUANTIZED_REFERENCE as DEQUANTIZED_KEY, LAYERS as LAYERS_KEY,
    TABLES as TABLES_KEY,
};
/// Largest rel_l2 between the converted model and the dequantized reference that counts as
/// float rounding.
pub const DEQUANTIZED_MAX_REL_L2: f64 = 1e-4;

/// What to run and how strict to be.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Values of symbolic input dims (others: 1 for names containing "batch", else 16).
    pub dims: BTreeMap<String, usize>,
    pub seed: u64,
    /// Number of random input sets (seeds `seed`, `seed + 1`, ...). Ignored with `inputs`.
    pub samples: usize,
    /// `.npz` file or ONNX test-data directory to read the inputs from.
    pub inputs: Option<PathBuf>,
    /// `[lo, hi)` for integer inputs, by input name.
    pub ranges: BTreeMap<String, (i64, i64)>,
    pub max_rel_error: f64,
    pub min_cosine: f64,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            dims: BTreeMap::new(),
            seed: 0,
            samples: 1,
            inputs: None,
            ranges: BTreeMap::new(),
            max_rel_error: 0.05,
            min_cosine: 0.99,
        }
    }
}

/// A quantized table as verify found it.
#[derive(Debug, Clone, Serialize)]
pub struct TableCheck {
    pub role: String,
    pub node: String,
    pub bits: String,
    pub block_size: usize,
    /// `|W - dequantized| / |W|` recomputed from the original's table and the converted
    /// model's codes.
    pub rel_error: f64,
}

/// Comparison of one graph output.
#[derive(Debug, Clone, Serialize)]
pub struct OutputReport {
    pub name: String,
    pub shape: Vec<usize>,
    #[serde(flatten)]
    pub metrics: Metrics,
    pub pass: bool,
}

/// Comparison of one converted layer's output.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    pub node: String,
    pub op: String,
    pub output: String,
    pub rel_l2: f64,
    pub cosine: f64,
    pub max_abs_error: f64,
    pub pass: bool,
}

/// Converted model vs the original running on the dequantized weights.
#[derive(Debug, Clone, Serialize)]
pub struct DequantizedReport {
    pub max_rel_l2: f64,
    pub agrees: bool,
    pub outputs: Vec<OutputReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Tolerances {
    pub max_rel_error: f64,
    pub min_cosine: f64,
    pub dequantized_max_rel_l2: f64,
}

/// Everything `verify` found. `pass` = every output and every converted layer within
/// `tolerances` (and, when the
/// dequantized reference exists, the converted model agrees with it to float rounding).
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub pass: bool,
    pub original: String,
    pub converted: String,
    pub samples: usize,
    pub outputs: Vec<OutputReport>,
    pub layers: Vec<LayerReport>,
    /// Why `layers` is empty or incomplete, if it is.
    pub layers_note: Option<String>,
    pub first_failing_layer: Option<String>,
    pub dequantized_reference: Option<DequantizedReport>,
    /// Why there is no dequantized reference, when there is none.
    pub dequantized_reference_note: Option<String>,
    /// The 4- and 8-bit embedding and head tables. When there are any, `outputs` and `layers`
    /// compare the converted model with the original running on those tables' dequantized
    /// values (what the conversion says it computes), and `against_original` gives what the
    /// tables cost against the float original (reported, not judged).
    pub tables: Vec<TableCheck>,
    pub against_original: Option<Vec<OutputReport>>,
    /// Inputs of the first sample (later samples differ only by seed).
    pub inputs: Vec<InputDescription>,
    /// Every symbolic dim and its value.
    pub dims: BTreeMap<String, usize>,
    /// The symbolic dims that took a default value.
    pub default_dims: BTreeMap<String, usize>,
    pub tolerances: Tolerances,
    pub elapsed_ms: u64,
    /// The inputs of the sample with the largest output error (to save for a replay).
    #[serde(skip)]
    pub worst_inputs: Inputs,
}

fn meta<'a>(p: &'a ModelProto, key: &str) -> Option<&'a str> {
    bitnet_model::metadata::get(p, key)
}

/// The layers listed in a converted model's metadata (`None` when the key is absent).
pub fn converted_layers(converted: &Model) -> Result<Option<Vec<LayerSpec>>> {
    bitnet_model::metadata::list(&converted.proto, LAYERS_KEY)
        .transpose()
        .map_err(|e| EvalError::Mismatch {
            model: converted.path.display().to_string(),
            reason: format!("metadata '{LAYERS_KEY}' is not a valid layer list: {e}"),
        })
}

/// The tables listed in a converted model's metadata (empty when the key is absent).
pub fn converted_tables(converted: &Model) -> Result<Vec<TableSpec>> {
    bitnet_model::metadata::list(&converted.proto, TABLES_KEY)
        .unwrap_or(Ok(Vec::new()))
        .map_err(|e| EvalError::Mismatch {
            model: converted.path.display().to_string(),
            reason: format!("metadata '{TABLES_KEY}' is not a valid table list: {e}"),
        })
}

/// `|a - b| / |a|` over two equally long value lists.
fn rel_error(a: &[f32], b: &[f32]) -> f64 {
    let (mut err, mut norm) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        err += (x as f64 - y as f64).powi(2);
        norm += (x as f64).powi(2);
    }
    if norm > 0.0 {
        (err / norm).sqrt()
    } else {
        err.sqrt()
    }
}

/// The original model with each quantized table replaced by the converted model's
/// dequantized table (the head's weight as `[K, N]`, the embedding's as `[V, H]`), and each
/// table's error against the original's float values.
fn table_reference(
    original: &Model,
    converted: &Model,
    tables: &[TableSpec],
) -> Result<(ModelProto, Vec<TableCheck>)> {
    let clabel = converted.path.display().to_string();
    let olabel = original.path.display().to_string();
    let cg = converted.graph();
    let mismatch = |reason: String| EvalError::Mismatch {
        model: clabel.clone(),
        reason,
    };
    let producer = |g: &'_ bitnet_model::proto::GraphProto, v: &str| {
        g.node
            .iter()
            .position(|n| n.output.first().map(String::as_str) == Some(v))
    };
    let mut reference = original.proto.clone();
    let mut checks = Vec::new();
    for t in tables {
        let Some(ci) = producer(cg, &t.output) else {
            return Err(mismatch(format!(
                "table '{}': no node produces '{}'",
                t.node, t.output
            )));
        };
        let mut cnode = &cg.node[ci];
        // A shared table's lookup is reshaped to [..., H] after GatherBlockQuantized.
        if cnode.op_type.as_deref() == Some("Reshape") {
            if let Some(p) = cnode.input.first().and_then(|i| producer(cg, i)) {
                cnode = &cg.node[p];
            }
        }
        let (values, dims) = match (t.role.as_str(), cnode.op_type.as_deref()) {
            ("head", Some("MatMulNBits")) => match matmulnbits_weight(&clabel, cg, cnode)? {
                Some(d) => (d.values, d.dims),
                None => {
                    return Err(mismatch(format!(
                        "head '{}': MatMulNBits without constant codes and scales",
                        t.node
                    )))
                }
            },
            ("embedding", Some("GatherBlockQuantized")) => {
                let d = gather_block_quantized_table(&clabel, cg, cnode)?;
                let rows = d.dims.first().copied().unwrap_or(0);
                let width = d.dims[1..].iter().product::<i64>();
                (d.values, vec![rows, width])
            }
            (role, op) => {
                return Err(mismatch(format!(
                    "table '{}' ({role}) is computed by {}, not by the op its role uses",
                    t.node,
                    op.unwrap_or("?")
                )))
            }
        };
        let rg = reference
            .graph
            .as_mut()
            .expect("loaded models have a graph");
        let Some(oi) = producer(rg, &t.output) else {
            return Err(EvalError::Mismatch {
                model: olabel.clone(),
                reason: format!("table '{}': no node produces '{}'", t.node, t.output),
            });
        };
        let slot = if t.role == "head" { 1 } else { 0 };
        // The original's float values, in the orientation of `values`.
        let source = rg.node[oi].input.get(slot).cloned().unwrap_or_default();
        let init = |g: &'_ bitnet_model::proto::GraphProto, name: &str| {
            g.initializer
                .iter()
                .find(|i| i.name.as_deref() == Some(name))
                .cloned()
        };
        let float = match init(rg, &source) {
            Some(i) => tensor::to_f32(&original.path, &i)?,
            // A tied head reads Transpose(table): transpose the table back.
            None => match producer(rg, &source)
                .map(|p| rg.node[p].input.first().cloned().unwrap_or_default())
                .and_then(|table| init(rg, &table))
            {
                Some(i) if i.dims.len() == 2 => transpose(
                    &tensor::to_f32(&original.path, &i)?,
                    i.dims[0].max(0) as usize,
                    i.dims[1].max(0) as usize,
                ),
                _ => {
                    return Err(EvalError::Mismatch {
                        model: olabel.clone(),
                        reason: format!(
                            "table '{}': the original's '{source}' is not a float table",
                            t.node
                        ),
                    })
                }
            },
        };
        if float.len() != values.len() {
            return Err(mismatch(format!(
                "table '{}' holds {} values, the original's {}",
                t.node,
                values.len(),
                float.len()
            )));
        }
        checks.push(TableCheck {
            role: t.role.clone(),
            node: t.node.clone(),
            bits: t.bits.clone(),
            block_size: t.block_size,
            rel_error: rel_error(&float, &values),
        });
        let name = format!("{}.bitnet_dequantized_{}", t.weight, t.role);
        rg.node[oi].input[slot] = name.clone();
        rg.initializer.push(tensor::from_f32(&name, &dims, &values));
    }
    Ok((reference, checks))
}

fn produced(p: &ModelProto) -> HashSet<String> {
    let g = p.graph.as_ref().expect("loaded models have a graph");
    g.node
        .iter()
        .flat_map(|n| n.output.iter().cloned())
        .collect()
}

fn trans_b(n: &NodeProto) -> bool {
    n.op_type.as_deref() == Some("Gemm") && bitnet_model::node::attr_i(n, "transB") == Some(1)
}

fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}

/// The original model with each layer's weight input replaced by the dequantized weight of
/// the converted model. `Err(reason)` when a layer's weight is not a constant
/// `DequantizeLinear` output.
fn dequantized_reference(
    original: &Model,
    converted: &Model,
    layers: &[LayerSpec],
) -> Result<std::result::Result<ModelProto, String>> {
    let clabel = converted.path.display().to_string();
    let cg = converted.graph();
    let cinits: std::collections::HashMap<&str, &TensorProto> = cg
        .initializer
        .iter()
        .filter_map(|t| t.name.as_deref().map(|n| (n, t)))
        .collect();
    let mut reference = original.proto.clone();
    let rg = reference.graph.as_mut().expect("loaded");
    for l in layers {
        // The converted node writes the layer's output, or the scaled output when it took over
        // the scale node after it.
        let cnode = cg
            .node
            .iter()
            .find(|n| n.output.first() == Some(&l.output))
            .or_else(|| {
                cg.node
                    .iter()
                    .find(|n| n.output.first().map(String::as_str) == Some(l.compared()))
            });
        let Some(cnode) = cnode else {
            return Ok(Err(format!(
                "layer '{}': no node produces '{}' in the converted model",
                l.node, l.output
            )));
        };
        let w = cnode.input.get(1).cloned().unwrap_or_default();
        let Some(dq) = cg.node.iter().find(|n| n.output.first() == Some(&w)) else {
            return Ok(Err(format!(
                "layer '{}': weight '{w}' is not computed by a DequantizeLinear",
                l.node
            )));
        };
        let Some((x, s, z)) = constant_dq_inputs(dq, &cinits) else {
            return Ok(Err(format!(
                "layer '{}': weight '{w}' comes from a {} node, not a DequantizeLinear with constant inputs",
                l.node,
                dq.op_type.as_deref().unwrap_or("?")
            )));
        };
        let d = dequantize(&clabel, dq, x, s, z)?;
        // Bring the weight to [K, N] (MatMul orientation), then to the original's. A scale the
        // converted weight took over is divided out: the original still applies it.
        let (mut kn, mut dims) = (d.values, d.dims);
        if let Some(f) = l.output_scale {
            // Written from an f32 factor: exact as f32.
            let f = f as f32;
            kn.iter_mut().for_each(|v| *v /= f);
        }
        if dims.len() == 2 && trans_b(cnode) {
            kn = transpose(&kn, dims[0] as usize, dims[1] as usize);
            dims = vec![dims[1], dims[0]];
        }
        let Some(onode) = rg
            .node
            .iter_mut()
            .find(|n| n.output.first() == Some(&l.output))
        else {
            return Ok(Err(format!(
                "layer '{}': no node produces '{}' in the original model",
                l.node, l.output
            )));
        };
        if dims.len() == 2 && trans_b(onode) {
            kn = transpose(&kn, dims[0] as usize, dims[1] as usize);
            dims = vec![dims[1], dims[0]];
        }
        let name = format!("{}.bitnet_dequantized", l.weight);
        if onode.input.len() < 2 {
            return Ok(Err(format!(
                "layer '{}': original node has no weight input",
                l.node
            )));
        }
        onode.input[1] = name.clone();
        rg.initializer.push(tensor::from_f32(&name, &dims, &kn));
    }
    Ok(Ok(reference))
}

/// Binds symbolic dims from the shapes of given inputs (explicit `dims` win).
fn dims_from_inputs(proto: &ModelProto, inputs: &Inputs, dims: &mut BTreeMap<String, usize>) {
    for spec in graph_inputs(proto) {
        let Some((_, t)) = inputs.iter().find(|(n, _)| *n == spec.name) else {
            continue;
        };
        for (ax, d) in spec.dims.iter().enumerate() {
            let sym = match d {
                Dim::Symbol(s) => s.clone(),
                Dim::Unknown => format!("{}[{ax}]", spec.name),
                Dim::Fixed(_) => continue,
            };
            if let Some(&v) = t.shape.get(ax) {
                dims.entry(sym).or_insert(v);
            }
        }
    }
}

fn find<'a>(outs: &'a [Output], name: &str) -> Option<&'a Output> {
    outs.iter().find(|(n, _, _)| n == name)
}

/// With `bitnet_onnx.logits = last` the converted heads compute the last position only: the
/// original's `[..., positions, vocab]` output is cut to its last position before comparing.
/// Any other output is returned as it is.
fn last_position(o: &Output, converted_shape: &[usize]) -> Output {
    let (name, v, shape) = o;
    let r = shape.len();
    let cut = r >= 2
        && converted_shape.len() == r
        && converted_shape[r - 2] == 1
        && shape[r - 2] > 1
        && shape[..r - 2] == converted_shape[..r - 2]
        && shape[r - 1] == converted_shape[r - 1];
    if !cut {
        return o.clone();
    }
    let (rows, width) = (shape[r - 2], shape[r - 1]);
    let values = v
        .chunks(rows * width)
        .flat_map(|m| m[(rows - 1) * width..].iter().copied())
        .collect();
    let mut s = shape.clone();
    s[r - 2] = 1;
    (name.clone(), values, s)
}

/// Runs `original` and `converted` on the same inputs and compares them (see the module docs).
pub fn verify(original: &Model, converted: &Model, opts: &VerifyOptions) -> Result<VerifyReport> {
    let start = Instant::now();
    let olabel = original.path.display().to_string();
    let clabel = converted.path.display().to_string();

    // Inputs and dims.
    let mut dims = opts.dims.clone();
    let mut sets: Vec<Inputs> = Vec::new();
    let descriptions;
    if let Some(path) = &opts.inputs {
        let (inputs, descs) = load_inputs(path, &original.proto)?;
        dims_from_inputs(&original.proto, &inputs, &mut dims);
        sets.push(inputs);
        descriptions = descs;
    } else {
        let mut first = None;
        for s in 0..opts.samples.max(1) as u64 {
            let (inputs, descs) = make_inputs(&original.proto, &dims, opts.seed + s, &opts.ranges)
                .map_err(|e| relabel(e, &olabel))?;
            first.get_or_insert(descs);
            sets.push(inputs);
        }
        descriptions = first.unwrap_or_default();
    }
    let (_, default_dims) = bind_shapes(&graph_inputs(&original.proto), &dims);
    dims.extend(default_dims.clone());

    let onames: Vec<String> = graph_inputs(&original.proto)
        .into_iter()
        .map(|s| s.name)
        .collect();
    let cnames: Vec<String> = graph_inputs(&converted.proto)
        .into_iter()
        .map(|s| s.name)
        .collect();
    let (os, cs): (HashSet<_>, HashSet<_>) = (onames.iter().collect(), cnames.iter().collect());
    if os != cs {
        return Err(EvalError::Mismatch {
            model: clabel,
            reason: format!("graph inputs {cnames:?} differ from the original's {onames:?}"),
        });
    }

    // Layers.
    let mut layers_note = None;
    let layers = match converted_layers(converted)? {
        None => {
            layers_note = Some(format!(
                "the converted model has no '{LAYERS_KEY}' metadata: no per-layer comparison"
            ));
            Vec::new()
        }
        Some(all) => {
            let (po, pc) = (produced(&original.proto), produced(&converted.proto));
            let (ok, missing): (Vec<_>, Vec<_>) = all
                .into_iter()
                .partition(|l| po.contains(l.compared()) && pc.contains(l.compared()));
            if !missing.is_empty() {
                layers_note = Some(format!(
                    "skipped layers whose output is not computed in both models: {}",
                    missing
                        .iter()
                        .map(|l| l.node.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            ok
        }
    };
    let extra: Vec<String> = layers.iter().map(|l| l.compared().to_string()).collect();

    // With quantized tables, the converted model is judged against the original running on
    // the tables' dequantized values; the float original is compared too, for the cost.
    let table_specs = converted_tables(converted)?;
    let (orun, true_run, table_checks) = if table_specs.is_empty() {
        let orun = Runner::new_named(&olabel, &original.proto, &dims, &extra)?;
        (orun, None, Vec::new())
    } else {
        let (reference, checks) = table_reference(original, converted, &table_specs)?;
        let orun = Runner::new_named(
            &format!("{olabel} (on the converted tables)"),
            &reference,
            &dims,
            &extra,
        )?;
        let true_run = Runner::new_named(&olabel, &original.proto, &dims, &[])?;
        (orun, Some(true_run), checks)
    };
    let crun = Runner::new_named(&clabel, &converted.proto, &dims, &extra)?;
    let out_names: Vec<String> = original
        .graph()
        .output
        .iter()
        .map(|v| v.name.clone().unwrap_or_default())
        .collect();
    for n in &out_names {
        if !crun.output_names().contains(n) {
            return Err(EvalError::Mismatch {
                model: clabel,
                reason: format!("the converted model has no output '{n}'"),
            });
        }
    }

    // Dequantized reference.
    let mut deq_note = None;
    let deq_run = match meta(&converted.proto, DEQUANTIZED_KEY) {
        Some("available") if !layers.is_empty() => {
            match dequantized_reference(original, converted, &layers)? {
                Ok(p) => Some(Runner::new_named(
                    &format!("{olabel} (dequantized reference)"),
                    &p,
                    &dims,
                    &[],
                )?),
                Err(reason) => {
                    deq_note = Some(reason);
                    None
                }
            }
        }
        Some("available") => {
            deq_note = Some("no converted layers are listed".into());
            None
        }
        Some(other) => {
            deq_note = Some(format!("'{DEQUANTIZED_KEY}' is '{other}'"));
            None
        }
        None => {
            deq_note = Some(format!(
                "the converted model has no '{DEQUANTIZED_KEY}' metadata (a weight does not reach its layer through a constant DequantizeLinear)"
            ));
            None
        }
    };

    let mut out_acc = vec![Accumulator::default(); out_names.len()];
    let mut shapes = vec![Vec::new(); out_names.len()];
    let mut layer_acc = vec![Accumulator::default(); layers.len()];
    let mut deq_acc = vec![Accumulator::default(); out_names.len()];
    let mut true_acc = vec![Accumulator::default(); out_names.len()];
    let mut worst = (0usize, -1.0f64);
    let last_logits = meta(&converted.proto, bitnet_model::metadata::LOGITS) == Some("last");
    // The original's outputs as the converted model computes them (see `last_position`).
    let as_converted = |o: Vec<Output>, c: &[Output]| -> Vec<Output> {
        if !last_logits {
            return o;
        }
        o.iter()
            .map(|x| match find(c, &x.0) {
                Some(y) => last_position(x, &y.2),
                None => x.clone(),
            })
            .collect()
    };
    for (si, inputs) in sets.iter().enumerate() {
        let c = crun.run(inputs)?;
        let o = as_converted(orun.run(inputs)?, &c);
        let mut sample_worst = 0.0f64;
        for (i, name) in out_names.iter().enumerate() {
            let (a, b) = (
                find(&o, name).expect("graph output"),
                find(&c, name).expect("checked"),
            );
            if a.2 != b.2 {
                return Err(EvalError::Mismatch {
                    model: clabel,
                    reason: format!(
                        "output '{name}' has shape {:?}, the original {:?}",
                        b.2, a.2
                    ),
                });
            }
            let last = a.2.last().copied().unwrap_or(1);
            out_acc[i].add(&a.1, &b.1, last);
            let mut one = Accumulator::default();
            one.add(&a.1, &b.1, last);
            sample_worst = sample_worst.max(one.finish().rel_l2);
            shapes[i] = a.2.clone();
        }
        if sample_worst > worst.1 {
            worst = (si, sample_worst);
        }
        for (i, l) in layers.iter().enumerate() {
            let (a, b) = (
                find(&o, l.compared()).expect("extra"),
                find(&c, l.compared()).expect("extra"),
            );
            layer_acc[i].add(&a.1, &b.1, a.2.last().copied().unwrap_or(1));
        }
        if let Some(r) = &true_run {
            let t = as_converted(r.run(inputs)?, &c);
            for (i, name) in out_names.iter().enumerate() {
                let (a, b) = (
                    find(&t, name).expect("graph output"),
                    find(&c, name).expect("checked"),
                );
                true_acc[i].add(&a.1, &b.1, a.2.last().copied().unwrap_or(1));
            }
        }
        if let Some(r) = &deq_run {
            let d = as_converted(r.run(inputs)?, &c);
            for (i, name) in out_names.iter().enumerate() {
                let (a, b) = (
                    find(&d, name).expect("graph output"),
                    find(&c, name).expect("checked"),
                );
                deq_acc[i].add(&a.1, &b.1, a.2.last().copied().unwrap_or(1));
            }
        }
    }

    let within = |m: &Metrics| m.rel_l2 <= opts.max_rel_error && m.cosine >= opts.min_cosine;
    // One report per graph output, judged by `pass`.
    let output_reports =
        |accs: &[Accumulator], pass: &dyn Fn(&Metrics) -> bool| -> Vec<OutputReport> {
            out_names
                .iter()
                .zip(accs)
                .zip(&shapes)
                .map(|((name, acc), shape)| {
                    let metrics = acc.finish();
                    OutputReport {
                        name: name.clone(),
                        shape: shape.clone(),
                        pass: pass(&metrics),
                        metrics,
                    }
                })
                .collect()
        };
    let outputs = output_reports(&out_acc, &within);
    let layer_reports: Vec<LayerReport> = layers
        .iter()
        .zip(&layer_acc)
        .map(|(l, acc)| {
            let m = acc.finish();
            LayerReport {
                node: l.node.clone(),
                op: l.op.clone(),
                output: l.compared().to_string(),
                rel_l2: m.rel_l2,
                cosine: m.cosine,
                max_abs_error: m.max_abs_error,
                pass: within(&m),
            }
        })
        .collect();
    let against_original = true_run
        .as_ref()
        .map(|_| output_reports(&true_acc, &within));
    let first_failing_layer = layer_reports
        .iter()
        .find(|l| !l.pass)
        .map(|l| l.node.clone());
    let dequantized_reference = deq_run.as_ref().map(|_| {
        let outputs = output_reports(&deq_acc, &|m: &Metrics| m.rel_l2 <= DEQUANTIZED_MAX_REL_L2);
        let max_rel_l2 = outputs.iter().map(|o| o.metrics.rel_l2).fold(0.0, f64::max);
        DequantizedReport {
            max_rel_l2,
            agrees: max_rel_l2 <= DEQUANTIZED_MAX_REL_L2,
            outputs,
        }
    });
    // A layer outside the tolerances fails the check even when a later normalisation hides it
    // from the outputs (a wrong scale in front of a LayerNorm, say).
    let pass = outputs.iter().all(|o| o.pass)
        && layer_reports.iter().all(|l| l.pass)
        && dequantized_reference.as_ref().is_none_or(|d| d.agrees);
    Ok(VerifyReport {
        pass,
        original: olabel,
        converted: clabel,
        samples: sets.len(),
        outputs,
        layers: layer_reports,
        layers_note,
        first_failing_layer,
        dequantized_reference,
        dequantized_reference_note: deq_note,
        tables: table_checks,
        against_original,
        inputs: descriptions,
        dims,
        default_dims,
        tolerances: Tolerances {
            max_rel_error: opts.max_rel_error,
            min_cosine: opts.min_cosine,
            dequantized_max_rel_l2: DEQUANTIZED_MAX_REL_L2,
        },
        elapsed_ms: start.elapsed().as_millis() as u64,
        worst_inputs: sets.swap_remove(worst.0),
    })
}

fn relabel(e: EvalError, label: &str) -> EvalError {
    match e {
        EvalError::Input { input, reason, .. } => EvalError::Input {
            model: label.to_string(),
            input,
            reason,
        },
        other => other,
    }
}

/// Convenience: loads both models and verifies.
pub fn verify_paths(
    original: &Path,
    converted: &Path,
    opts: &VerifyOptions,
) -> Result<VerifyReport> {
    let o = Model::load(original)?;
    let c = Model::load(converted)?;
    verify(&o, &c, opts)
}
