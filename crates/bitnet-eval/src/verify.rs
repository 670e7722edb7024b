//! Verification of a converted model against its original, both run in tract on the same
//! inputs.
//!
//! The verdict is layer-local. Each converted layer runs alone on the original's own input to
//! it (the values at the boundary of its computation, as the original's run has them; see
//! `local`) and is compared with the original layer's output on that input: a layer the
//! conversion reports lossless must agree to float rounding, any other within the
//! tolerances. When the converted weights are constant `DequantizeLinear`s, each converted
//! layer must also agree to float rounding with the original layer running on the converted
//! model's dequantized weight (the converted graph computes its own weights). The converted
//! graph outside its layers runs with every layer's output given as the original computes it
//! and must reproduce the original's outputs to float rounding.
//!
//! The outputs end to end are compared too. BitNet rounds every activation to an int8 code
//! per token; where `x * s` lies at a half-integer, the float rounding of an exact layer
//! decides the code, and a flipped code changes what follows (more codes near half-integers
//! flip). So when every layer is lossless and checked, what differs end to end is reported,
//! with the codes that flipped at ties, not judged; otherwise the outputs are judged with the
//! tolerances (see `VerifyReport::outputs_rule`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use bitnet_model::graph::Dim;
use bitnet_model::proto::{ModelProto, NodeProto, TensorProto};
use bitnet_model::{tensor, Model};
use serde::Serialize;

use crate::error::{EvalError, Result};
use crate::inputs::{load_inputs, make_inputs, InputDescription, Inputs};
use crate::local;
use crate::lower::{
    constant_dq_inputs, dequantize, gather_block_quantized_table, lower_every_matmulnbits,
    matmulnbits_weight,
};
use crate::metrics::{Accumulator, Metrics};
use crate::runner::{bind_shapes, graph_inputs, HostTensor, Output, Runner};

pub use bitnet_model::metadata::{
    LayerSpec, TableSpec, DEQUANTIZED_REFERENCE as DEQUANTIZED_KEY, LAYERS as LAYERS_KEY,
    TABLES as TABLES_KEY,
};

/// Largest rel_l2 between a converted layer the conversion reports lossless and the original
/// layer, on the same input. Both compute the same sum of K products of the same values, in a
/// different order or exactly in integers and scaled once: each output differs by the float32
/// rounding of that sum, about 2^-24 * sqrt(K / 2) of it for sequential summation (6e-6 at
/// K = 16384; 2e-7..4e-7 measured on the transformers BitNet exports). One ternary code
/// changed in an N x K weight moves the output by about 2 / sqrt(N * K * density) relative
/// (5e-4 in a 2560 x 6912 layer), far above it.
pub const LOSSLESS_MAX_REL_L2: f64 = 1e-5;
/// Largest rel_l2 that counts as float rounding between two graphs computing the same float
/// operations: a converted layer and the original layer on the converted model's dequantized
/// weight; the converted graph outside its layers and the original's.
pub const DEQUANTIZED_MAX_REL_L2: f64 = 1e-4;
/// A code flipped at a tie when the original's `x * s` lies within this distance of a
/// half-integer. `x * s` is at most 127.5 in size, where a float32 ulp is 7.6e-6; the
/// converted model's value differs from the original's by the rounding of the exact layers
/// before it (relative 1e-5 at most, see `LOSSLESS_MAX_REL_L2`), so by 1.3e-3 at most.
pub const TIE_DISTANCE: f64 = 2e-3;

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

/// One converted layer, run alone on the original's own input to it (layer-local: the
/// values at the boundary of its computation are the original's, so nothing upstream reaches
/// it), against the original layer's output on that input.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    pub node: String,
    pub op: String,
    pub output: String,
    /// Whether the conversion reports the layer lossless (`bitnet_onnx.layers`).
    pub lossless: bool,
    /// Whether it is held to float rounding (`LOSSLESS_MAX_REL_L2`): lossless and computing
    /// in float32 or float64. Other layers are held to the tolerances.
    pub exact: bool,
    /// The rel_l2 limit the layer was held to.
    pub max_rel_l2: f64,
    pub rel_l2: f64,
    pub cosine: f64,
    pub max_abs_error: f64,
    /// Against the original layer on the converted model's dequantized weight, on the same
    /// input (must be float rounding), when the converted weights are DequantizeLinears.
    pub dequantized_rel_l2: Option<f64>,
    pub pass: bool,
}

/// Every converted layer against the original layer running on the converted model's
/// dequantized weight, layer-local: whether the converted graph computes its own weights.
#[derive(Debug, Clone, Serialize)]
pub struct DequantizedReport {
    pub max_rel_l2: f64,
    pub agrees: bool,
}

/// The converted graph outside its converted layers: run with every converted layer's output
/// given as the original computes it, against the original's outputs (must be float
/// rounding: everything else is the original's own computation, or the tables' exact
/// dequantized values).
#[derive(Debug, Clone, Serialize)]
pub struct RestReport {
    pub max_rel_l2: f64,
    pub agrees: bool,
    /// False when some converted layers could not be checked on their own (inside a
    /// subgraph): they are still in this graph, so it is reported, not judged.
    pub judged: bool,
    pub outputs: Vec<OutputReport>,
}

/// BitNet's activation codes end to end: at every `Round` both models compute alike, the
/// codes of the converted model's run against the original's. A code "flipped at a tie" when
/// the original's value before rounding lies within `tie_distance` of a half-integer: the
/// float rounding of an exact layer decides it, and the flip then changes later values a
/// little, which flips later codes that were near a half-integer too (the rest of `flipped`).
#[derive(Debug, Clone, Serialize)]
pub struct ActivationCodes {
    pub rounding_points: usize,
    pub codes: u64,
    pub flipped: u64,
    pub flipped_at_ties: u64,
    /// The first rounding point, in graph order, where a code flipped (at a tie).
    pub first_flip: Option<String>,
    pub first_at_tie: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Tolerances {
    pub max_rel_error: f64,
    pub min_cosine: f64,
    pub lossless_max_rel_l2: f64,
    pub dequantized_max_rel_l2: f64,
    pub tie_distance: f64,
}

/// Everything `verify` found. `pass` = every converted layer within its limit on its own
/// input (and agreeing with its dequantized weight), the rest of the graph agreeing to float
/// rounding, and, when `outputs_judged`, every output within `tolerances`.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub pass: bool,
    pub original: String,
    pub converted: String,
    pub samples: usize,
    /// The outputs end to end (converted model against the original, both whole).
    pub outputs: Vec<OutputReport>,
    /// Whether `outputs` count towards `pass`, and why (`outputs_rule`).
    pub outputs_judged: bool,
    pub outputs_rule: String,
    /// The activation codes end to end, when both models round the same values.
    pub activation_codes: Option<ActivationCodes>,
    /// Whether the converted model has a `MatMulNBits` with `accuracy_level` 4, whose int8
    /// activations (ONNX Runtime's, and tract's kernel's) show end to end only.
    pub runtime_int8_activations: bool,
    pub layers: Vec<LayerReport>,
    /// Why `layers` is empty or incomplete, if it is.
    pub layers_note: Option<String>,
    pub first_failing_layer: Option<String>,
    pub dequantized_reference: Option<DequantizedReport>,
    /// Why there is no dequantized reference, when there is none.
    pub dequantized_reference_note: Option<String>,
    /// The converted graph outside its layers (absent when no layer is listed).
    pub rest: Option<RestReport>,
    /// The 4- and 8-bit embedding and head tables. When there are any, the original runs on
    /// those tables' dequantized values (what the conversion says it computes), and
    /// `against_original` gives what the tables cost against the float original (reported,
    /// not judged).
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
        // DequantizeLinear's output has its scale's type: the weight is written in it, so a
        // float16 layer keeps float16 inputs.
        let dtype = s.data_type.unwrap_or(1);
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
        rg.initializer
            .push(tensor::from_f32_as(&name, dtype, &dims, &kn));
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

/// `find` for a value a run was built to produce: its absence is an error naming the run.
fn need<'a>(outs: &'a [Output], name: &str, run: &str) -> Result<&'a Output, EvalError> {
    find(outs, name).ok_or_else(|| EvalError::Mismatch {
        model: run.to_string(),
        reason: format!("the run did not produce value '{name}'"),
    })
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

    let ispecs = graph_inputs(&original.proto);
    let onames: Vec<String> = ispecs.iter().map(|s| s.name.clone()).collect();
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
    let mut skipped = false;
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
                skipped = true;
                layers_note = Some(format!(
                    "skipped layers whose output is not computed in both main graphs: {}",
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
    let compared: Vec<String> = layers.iter().map(|l| l.compared().to_string()).collect();

    // With quantized tables, the converted model is judged against the original running on
    // the tables' dequantized values; the float original is compared too, for the cost.
    let table_specs = converted_tables(converted)?;
    let (oproto, true_run, table_checks) = if table_specs.is_empty() {
        (
            std::borrow::Cow::Borrowed(&original.proto),
            None,
            Vec::new(),
        )
    } else {
        let (reference, checks) = table_reference(original, converted, &table_specs)?;
        let true_run = Runner::new_named(&olabel, &original.proto, &dims, &[])?;
        (std::borrow::Cow::Owned(reference), Some(true_run), checks)
    };
    let oname = if table_specs.is_empty() {
        olabel.clone()
    } else {
        format!("{olabel} (on the converted tables)")
    };

    // Layer-local cuts: each converted layer, and the original layer on the converted
    // model's dequantized weight, between values both models compute alike.
    let claimed: HashSet<String> = compared.iter().cloned().collect();
    let same = local::same_values(
        &original.path,
        &original.proto,
        &converted.path,
        &converted.proto,
        &claimed,
    )?;
    let cg = converted.graph();
    let cprod = local::producers(cg);
    let cderivable = local::derivable(cg);
    let mut ccut = local::Cut::default();
    for l in &layers {
        ccut.add(cg, &cprod, l.compared(), &same, &cderivable)
            .map_err(|r| local::cut_error(&clabel, format!("layer '{}': {r}", l.node)))?;
    }
    let mut deq_note = None;
    let deq = match meta(&converted.proto, DEQUANTIZED_KEY) {
        Some("available") if !layers.is_empty() => {
            match dequantized_reference(original, converted, &layers)? {
                Ok(p) => {
                    let g = p.graph.as_ref().ok_or_else(|| EvalError::Mismatch {
                        model: olabel.clone(),
                        reason: "the dequantized reference has no graph".into(),
                    })?;
                    let prod = local::producers(g);
                    let derivable = local::derivable(g);
                    let mut cut = local::Cut::default();
                    for l in &layers {
                        cut.add(g, &prod, l.compared(), &same, &derivable)
                            .map_err(|r| {
                                local::cut_error(
                                    &format!("{olabel} (dequantized reference)"),
                                    format!("layer '{}': {r}", l.node),
                                )
                            })?;
                    }
                    Some((p, cut))
                }
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

    // BitNet's activation codes, where both models round the same value: the original's value
    // before rounding and both models' codes, to count the codes that flipped at a tie.
    let rounds = rounding_points(&original.proto, &converted.proto);

    // The original's run exposes every value the checks need.
    let mut extra: Vec<String> = compared.clone();
    let add = |v: &String, extra: &mut Vec<String>| {
        if !os.contains(v) && !extra.contains(v) {
            extra.push(v.clone());
        }
    };
    for v in ccut
        .boundary
        .iter()
        .chain(deq.iter().flat_map(|(_, c)| c.boundary.iter()))
    {
        add(v, &mut extra);
    }
    for r in &rounds {
        add(&r.input, &mut extra);
        add(&r.output, &mut extra);
    }
    let orun = Runner::new_named(&oname, &oproto, &dims, &extra)?;
    let round_outputs: Vec<String> = rounds.iter().map(|r| r.output.clone()).collect();
    let crun = Runner::new_named(&clabel, &converted.proto, &dims, &round_outputs)?;
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

    let mut out_acc = vec![Accumulator::default(); out_names.len()];
    let mut shapes = vec![Vec::new(); out_names.len()];
    let mut layer_acc = vec![Accumulator::default(); layers.len()];
    let mut deq_acc = vec![Accumulator::default(); layers.len()];
    let mut rest_acc = vec![Accumulator::default(); out_names.len()];
    let mut true_acc = vec![Accumulator::default(); out_names.len()];
    let mut ties = TieCount::default();
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
    // Built on the first sample, once the shapes of the values they read are known.
    let mut local_runs: Option<LocalRuns> = None;
    // Each layer's output element type (float32 until the first sample says otherwise).
    let mut layer_types = vec![1i32; layers.len()];
    for (si, inputs) in sets.iter().enumerate() {
        let c = crun.run(inputs)?;
        let typed = orun.run_typed(inputs)?;
        let mut values: HashMap<String, (HostTensor, i32)> =
            typed.into_iter().map(|(n, t, e)| (n, (t, e))).collect();
        for (name, t) in inputs {
            let elem = ispecs
                .iter()
                .find(|s| &s.name == name)
                .map_or(1, |s| s.elem_type);
            values.insert(name.clone(), (t.clone(), elem));
        }
        let as_output = |name: &String| -> Output {
            let (t, _) = &values[name];
            (name.clone(), t.to_f32(), t.shape.clone())
        };
        let o = as_converted(out_names.iter().map(as_output).collect(), &c);
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
        for (ri, r) in rounds.iter().enumerate() {
            let (x, q) = (values[&r.input].0.to_f32(), values[&r.output].0.to_f32());
            let cq = &need(&c, &r.output, &clabel)?.1;
            ties.add(ri, &r.node, &x, &q, cq);
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
        if layers.is_empty() {
            continue;
        }
        if local_runs.is_none() {
            for (t, l) in layer_types.iter_mut().zip(&layers) {
                *t = values[l.compared()].1;
            }
            let types: HashMap<String, (i32, Vec<usize>)> = values
                .iter()
                .map(|(n, (t, e))| (n.clone(), (*e, t.shape.clone())))
                .collect();
            local_runs = Some(LocalRuns::new(
                &clabel,
                converted,
                &ccut,
                deq.as_ref()
                    .map(|(p, cut)| (format!("{olabel} (dequantized reference)"), p, cut)),
                &compared,
                &types,
                &dims,
            )?);
        }
        let runs = local_runs.as_ref().expect("built above");
        let given = |names: &[(String, String)]| -> Vec<(String, HostTensor)> {
            names
                .iter()
                .map(|(input, v)| (input.clone(), values[v].0.clone()))
                .collect()
        };
        let lc = runs.layers.run(&given(&runs.layer_inputs))?;
        let ld = match &runs.dequantized {
            Some((r, names)) => Some(r.run(&given(names))?),
            None => None,
        };
        for (i, l) in layers.iter().enumerate() {
            let a = values[l.compared()].0.to_f32();
            let b = &need(&lc, l.compared(), &clabel)?.1;
            layer_acc[i].add(&a, b, 1);
            if let Some(d) = &ld {
                deq_acc[i].add(&need(d, l.compared(), &olabel)?.1, b, 1);
            }
        }
        // The converted graph outside its layers, given the original's layer outputs.
        let mut rest_inputs: Vec<(String, HostTensor)> = inputs.clone();
        rest_inputs.extend(compared.iter().map(|v| (v.clone(), values[v].0.clone())));
        let r = runs.rest.run(&rest_inputs)?;
        let o = as_converted(out_names.iter().map(as_output).collect(), &r);
        for (i, name) in out_names.iter().enumerate() {
            let (a, b) = (need(&o, name, &olabel)?, need(&r, name, &clabel)?);
            rest_acc[i].add(&a.1, &b.1, a.2.last().copied().unwrap_or(1));
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
    let have_deq = deq.is_some();
    let layer_reports: Vec<LayerReport> = layers
        .iter()
        .zip(layer_acc.iter().zip(&deq_acc).zip(&layer_types))
        .map(|(l, ((acc, dacc), &elem))| {
            let m = acc.finish();
            let lossless = l.lossless == Some(true);
            // Float rounding is the limit in float32 (and float64) only: a float16 or
            // bfloat16 layer rounds every value to 2^-11 or 2^-8 and its sums more, as much as
            // a quantization error, so it is held to the tolerances.
            let exact = lossless && matches!(elem, 1 | 11);
            let dequantized_rel_l2 = have_deq.then(|| dacc.finish().rel_l2);
            let dequantized_limit = if matches!(elem, 1 | 11) {
                DEQUANTIZED_MAX_REL_L2
            } else {
                opts.max_rel_error
            };
            let against_original = if exact {
                m.rel_l2 <= LOSSLESS_MAX_REL_L2
            } else {
                within(&m)
            };
            LayerReport {
                node: l.node.clone(),
                op: l.op.clone(),
                output: l.compared().to_string(),
                lossless,
                exact,
                max_rel_l2: if exact {
                    LOSSLESS_MAX_REL_L2
                } else {
                    opts.max_rel_error
                },
                rel_l2: m.rel_l2,
                cosine: m.cosine,
                max_abs_error: m.max_abs_error,
                dequantized_rel_l2,
                pass: against_original && dequantized_rel_l2.is_none_or(|d| d <= dequantized_limit),
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
    let dequantized_reference = have_deq.then(|| {
        let max_rel_l2 = layer_reports
            .iter()
            .filter_map(|l| l.dequantized_rel_l2)
            .fold(0.0, f64::max);
        DequantizedReport {
            max_rel_l2,
            agrees: layer_reports.iter().zip(&layer_types).all(|(l, &elem)| {
                let limit = if matches!(elem, 1 | 11) {
                    DEQUANTIZED_MAX_REL_L2
                } else {
                    opts.max_rel_error
                };
                l.dequantized_rel_l2.is_none_or(|d| d <= limit)
            }),
        }
    });
    let rest = (!layers.is_empty()).then(|| {
        let outputs = output_reports(&rest_acc, &|m: &Metrics| m.rel_l2 <= DEQUANTIZED_MAX_REL_L2);
        let max_rel_l2 = outputs.iter().map(|o| o.metrics.rel_l2).fold(0.0, f64::max);
        RestReport {
            max_rel_l2,
            agrees: max_rel_l2 <= DEQUANTIZED_MAX_REL_L2,
            judged: !skipped,
            outputs,
        }
    });
    // The rule of README's verify section: the outputs end to end are judged (with the
    // tolerances) unless every converted layer was checked on its own input and is exact,
    // and the rest of the graph was checked: then they differ from the original only by
    // rounding and the cascades of codes it flips at ties, which are reported.
    let lossy: Vec<&str> = layer_reports
        .iter()
        .filter(|l| !l.exact)
        .map(|l| l.node.as_str())
        .collect();
    let (outputs_judged, outputs_rule) = if layers.is_empty() {
        (
            true,
            "judged: no converted layer could be checked on its own".to_string(),
        )
    } else if skipped {
        (
            true,
            "judged: some converted layers could not be checked on their own".to_string(),
        )
    } else if !lossy.is_empty() {
        (
            true,
            format!(
                "judged: {} of {} converted layers are not lossless in float32 (first: {}), so the outputs carry their quantization or half-precision error",
                lossy.len(),
                layer_reports.len(),
                lossy[0]
            ),
        )
    } else {
        (
            false,
            "reported, not judged: every converted layer is lossless and was checked on the original's input to it, and the rest of the graph on the original's layer outputs; what differs end to end is rounding and the activation codes it flips at ties".to_string(),
        )
    };
    let pass = layer_reports.iter().all(|l| l.pass)
        && dequantized_reference.as_ref().is_none_or(|d| d.agrees)
        && rest.as_ref().is_none_or(|r| !r.judged || r.agrees)
        && (!outputs_judged || outputs.iter().all(|o| o.pass));
    Ok(VerifyReport {
        pass,
        original: olabel,
        converted: clabel,
        samples: sets.len(),
        outputs,
        outputs_judged,
        outputs_rule,
        activation_codes: (!rounds.is_empty()).then(|| ties.finish(rounds.len())),
        runtime_int8_activations: converted.graph().node.iter().any(|n| {
            n.op_type.as_deref() == Some("MatMulNBits")
                && bitnet_model::node::attr_i(n, "accuracy_level") == Some(4)
        }),
        layers: layer_reports,
        layers_note,
        first_failing_layer,
        dequantized_reference,
        dequantized_reference_note: deq_note,
        rest,
        tables: table_checks,
        against_original,
        inputs: descriptions,
        dims,
        default_dims,
        tolerances: Tolerances {
            max_rel_error: opts.max_rel_error,
            min_cosine: opts.min_cosine,
            lossless_max_rel_l2: LOSSLESS_MAX_REL_L2,
            dequantized_max_rel_l2: DEQUANTIZED_MAX_REL_L2,
            tie_distance: TIE_DISTANCE,
        },
        elapsed_ms: start.elapsed().as_millis() as u64,
        worst_inputs: sets.swap_remove(worst.0),
    })
}

/// The runners of the layer-local checks and of the rest of the graph.
struct LocalRuns {
    /// Every converted layer's cut, in one graph.
    layers: Runner,
    /// Its graph inputs and the original's values they take.
    layer_inputs: Vec<(String, String)>,
    /// The original layers on the dequantized weights, in one graph, and their inputs.
    dequantized: Option<(Runner, Vec<(String, String)>)>,
    /// The converted graph without its layers, which read the original's layer outputs.
    rest: Runner,
}

impl LocalRuns {
    fn new(
        clabel: &str,
        converted: &Model,
        ccut: &local::Cut,
        deq: Option<(String, &ModelProto, &local::Cut)>,
        compared: &[String],
        types: &HashMap<String, (i32, Vec<usize>)>,
        dims: &BTreeMap<String, usize>,
    ) -> Result<LocalRuns> {
        // MatMulNBits is computed as the exact float product of its weights here: the int8
        // activations of its accuracy_level 4 (ONNX Runtime's, which tract's kernel follows)
        // are the runtime's, not the conversion's, and show in the outputs end to end.
        let exact = |mut p: ModelProto, label: &str| -> Result<ModelProto> {
            if let Some(g) = p.graph.as_mut() {
                lower_every_matmulnbits(g, label)?;
            }
            Ok(p)
        };
        let label = format!("{clabel} (converted layers alone)");
        let (p, layer_inputs) = local::cut_model(&converted.proto, ccut, compared, types)
            .map_err(|r| local::cut_error(clabel, r))?;
        let layers = Runner::new_named(&label, &exact(p, &label)?, &BTreeMap::new(), &[])?;
        let dequantized = match deq {
            Some((dlabel, proto, cut)) => {
                let (p, names) = local::cut_model(proto, cut, compared, types)
                    .map_err(|r| local::cut_error(&dlabel, r))?;
                let label = format!("{dlabel} (layers alone)");
                Some((Runner::new_named(&label, &p, &BTreeMap::new(), &[])?, names))
            }
            None => None,
        };
        let label = format!("{clabel} (without its converted layers)");
        let mut p = converted.proto.clone();
        let g = p.graph.as_mut().ok_or_else(|| EvalError::Mismatch {
            model: clabel.to_string(),
            reason: "the model has no graph".into(),
        })?;
        let cut: HashSet<&str> = compared.iter().map(String::as_str).collect();
        g.node
            .retain(|n| !n.output.iter().any(|o| cut.contains(o.as_str())));
        g.value_info
            .retain(|v| !v.name.as_deref().is_some_and(|n| cut.contains(n)));
        for v in compared {
            let (elem, shape) = types
                .get(v)
                .ok_or_else(|| local::cut_error(clabel, format!("no value '{v}'")))?;
            g.input.push(local::value_info(v, *elem, shape));
        }
        let rest = Runner::new_named(&label, &exact(p, &label)?, dims, &[])?;
        Ok(LocalRuns {
            layers,
            layer_inputs,
            dequantized,
            rest,
        })
    }
}

/// A `Round` both models compute alike: BitNet's activation codes `round(x * s)`.
struct RoundingPoint {
    node: String,
    input: String,
    output: String,
}

fn rounding_points(original: &ModelProto, converted: &ModelProto) -> Vec<RoundingPoint> {
    let (Some(og), Some(cg)) = (original.graph.as_ref(), converted.graph.as_ref()) else {
        return Vec::new();
    };
    let is_round = |n: &NodeProto| {
        n.op_type.as_deref() == Some("Round")
            && bitnet_model::node::in_default_domain(n)
            && n.input.len() == 1
            && n.output.len() == 1
    };
    let crounds: HashSet<(&str, &str)> = cg
        .node
        .iter()
        .filter(|n| is_round(n))
        .map(|n| (n.input[0].as_str(), n.output[0].as_str()))
        .collect();
    og.node
        .iter()
        .filter(|n| is_round(n) && crounds.contains(&(n.input[0].as_str(), n.output[0].as_str())))
        .map(|n| RoundingPoint {
            node: n.name.clone().unwrap_or_else(|| n.output[0].clone()),
            input: n.input[0].clone(),
            output: n.output[0].clone(),
        })
        .collect()
}

/// Counts of activation codes that differ between the two models' runs.
#[derive(Debug, Clone, Default)]
struct TieCount {
    codes: u64,
    flipped: u64,
    at_ties: u64,
    /// (rounding point index, node) of the first flip and of the first flip at a tie.
    first_at_tie: Option<(usize, String)>,
    first_flip: Option<(usize, String)>,
}

impl TieCount {
    /// `x`: the original's value before rounding; `q`, `cq`: both models' codes.
    fn add(&mut self, point: usize, node: &str, x: &[f32], q: &[f32], cq: &[f32]) {
        let earliest = |f: &mut Option<(usize, String)>| {
            if f.as_ref().is_none_or(|(i, _)| point < *i) {
                *f = Some((point, node.to_string()));
            }
        };
        for ((&x, &q), &cq) in x.iter().zip(q).zip(cq) {
            self.codes += 1;
            if q == cq {
                continue;
            }
            self.flipped += 1;
            earliest(&mut self.first_flip);
            let x = x as f64;
            if (x - x.floor() - 0.5).abs() <= TIE_DISTANCE {
                self.at_ties += 1;
                earliest(&mut self.first_at_tie);
            }
        }
    }

    fn finish(&self, points: usize) -> ActivationCodes {
        ActivationCodes {
            rounding_points: points,
            codes: self.codes,
            flipped: self.flipped,
            flipped_at_ties: self.at_ties,
            first_flip: self.first_flip.as_ref().map(|f| f.1.clone()),
            first_at_tie: self.first_at_tie.as_ref().map(|f| f.1.clone()),
        }
    }
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
