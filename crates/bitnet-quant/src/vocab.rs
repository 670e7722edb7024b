//! The vocabulary tables of a language model, quantized for ONNX Runtime after the linear
//! layers: the LM head (a `MatMul` whose output reaches a graph output through pass-through
//! ops, reading a constant float weight) becomes `com.microsoft::MatMulNBits` with 4- or
//! 8-bit codes, and the token embedding (a `Gather` on axis 0 of a float initializer by
//! run-time indices) becomes `com.microsoft::GatherBlockQuantized`. Codes and scales are
//! [`crate::blockq`]'s.
//!
//! A tied embedding (the head reads `Transpose(E)` of the table `E` the `Gather` reads) is
//! quantized once when both use the same bits: `MatMulNBits` takes `B` as
//! `[V, blocks, block_size * bits / 8]` (ONNX Runtime 1.32 refuses any other shape for `B`),
//! and `GatherBlockQuantized` reads that same initializer with `quantize_axis = 2` and scales
//! shaped `[V, blocks, 1]`, so the lookup yields `[..., blocks, block_size]`, reshaped to
//! `[..., H]`. The two scale tensors cannot be one (`MatMulNBits` accepts scales shaped
//! `[V * blocks]` or `[V, blocks]` only), so the scales are stored twice. Checked in ONNX
//! Runtime 1.32 (tests/vocab_tables.rs): both ops read the shared table, and the lookup equals
//! the dequantized table exactly.
//!
//! The source table is read a band of rows at a time and its memory-mapped pages released
//! after each band, so quantizing a 1.3 GB table adds its codes to memory, not its floats.

use std::collections::HashSet;
use std::path::Path;

use bitnet_model::graph::{Dim, GraphIndex};
use bitnet_model::load::Mappings;
use bitnet_model::node::int_attr;
use bitnet_model::proto::tensor_proto::DataType;
use bitnet_model::proto::{GraphProto, NodeProto, TensorProto};
use bitnet_model::save::Writer;
use bitnet_model::tensor;
use serde::Serialize;

use crate::analyse::{feeds_graph_output, node_label};
use crate::blockq::{self, BlockTable, TableBits};
use crate::emit::patch::{self, Edit, Patch};
use crate::emit::NameGen;
use crate::error::ConvertError;
use crate::report::Skipped;

/// What to do with the vocabulary tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VocabOptions {
    /// The LM head's codes; `None` leaves it to the linear-layer stage (float or ternary).
    pub head: Option<TableBits>,
    /// The embedding's codes; `None` keeps it float.
    pub embeddings: Option<TableBits>,
    /// Values per block along the hidden axis (power of two, >= 16).
    pub block_size: usize,
    /// The head's `MatMulNBits` accuracy_level (4: int8 activations).
    pub accuracy_level: i64,
}

impl VocabOptions {
    /// Leaves both tables as they are.
    pub fn none() -> Self {
        VocabOptions {
            head: None,
            embeddings: None,
            block_size: DEFAULT_BLOCK_SIZE,
            accuracy_level: 4,
        }
    }

    pub fn any(&self) -> bool {
        self.head.is_some() || self.embeddings.is_some()
    }
}

/// Default block size of the tables: 32, the most accurate ONNX Runtime's kernels run fast.
pub const DEFAULT_BLOCK_SIZE: usize = 32;

/// One quantized table as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    /// `head` or `embedding`.
    pub role: String,
    pub node: String,
    /// The float initializer it was made from.
    pub weight: String,
    /// The value both the original and the converted model compute (the node's output).
    pub output: String,
    /// `[V, H]` for an embedding, `[N, K]` for a head.
    pub shape: [usize; 2],
    pub bits: TableBits,
    pub block_size: usize,
    /// The node of the other role reading the same quantized codes (a tied embedding).
    pub shares_codes_with: Option<String>,
    /// `|W - dequantized| / |W|`.
    pub rel_error: f64,
    pub bytes_before: u64,
    /// Bytes this node's new initializers take (shared codes are counted once, by the head).
    pub bytes_after: u64,
}

/// A head's codes, kept for a tied embedding to share.
struct Made {
    table: String,
    bits: TableBits,
    b_name: String,
    rows: usize,
    blocks: usize,
    scales: Vec<f32>,
    rel_error: f64,
}

/// A table found in the graph.
struct Found {
    node: usize,
    /// The float initializer holding the values.
    table: String,
    /// True when the rows of `table` are the quantized rows (`[V, H]` embedding, or a head
    /// reading `Transpose(table)`); false for a head reading `[K, N]` directly.
    rows: bool,
}

/// Quantizes the vocabulary tables of `g` as `opts` asks. New initializers go to `sink`.
/// Tables that cannot be quantized are reported in the second list with the reason.
pub fn quantize_tables(
    g: &mut GraphProto,
    path: &Path,
    opts: &VocabOptions,
    source: Option<&Mappings>,
    sink: Option<&Writer>,
) -> Result<(Vec<TableReport>, Vec<Skipped>), ConvertError> {
    let p = path.display().to_string();
    let err = |reason: String| ConvertError::Other {
        path: p.clone(),
        reason,
    };
    blockq_block_size(opts.block_size).map_err(&err)?;
    let mut skipped = Vec::new();
    let (mut heads, mut embeddings) = (Vec::new(), Vec::new());
    for (head, found) in find_tables(g) {
        match found {
            Ok(f) if head && opts.head.is_some() => heads.push(f),
            Ok(f) if !head && opts.embeddings.is_some() => embeddings.push(f),
            Err(s) if (head && opts.head.is_some()) || (!head && opts.embeddings.is_some()) => {
                skipped.push(s)
            }
            _ => {}
        }
    }
    let mut names = NameGen::new(g);
    let mut reports = Vec::new();
    // The rewrite, applied once every table is made.
    let mut patch = Patch::default();
    // Codes already made for a head reading a table's rows, which a tied embedding shares.
    let mut made: Vec<Made> = Vec::new();
    for h in &heads {
        let bits = opts.head.unwrap_or(TableBits::Int4);
        let node = g.node[h.node].clone();
        let label = node_label(&node, h.node);
        let t = table_tensor(g, &h.table).map_err(&err)?;
        let dtype = t.data_type.unwrap_or(0);
        if let Err(reason) = scale_type(dtype) {
            skipped.push(Skipped {
                node: label,
                reason,
            });
            continue;
        }
        let q = quantize(t, h.rows, bits, opts.block_size, path, source).map_err(&err)?;
        let (n, k, nb) = (q.rows, q.k, q.blocks());
        let bytes_after = (q.packed.len() + bytes_len(dtype, q.scales.len())) as u64;
        let b_name = names.fresh(&format!("{}_MatMulNBits_B", h.table));
        let s_name = names.fresh(&format!("{}_MatMulNBits_scales", h.table));
        let blob = blockq::blob_bytes(opts.block_size, bits);
        patch.weight(tensor::from_raw(
            &b_name,
            DataType::Uint8,
            &[n as i64, nb as i64, blob as i64],
            q.packed,
        ));
        patch.weight(tensor::from_f32_as(
            &s_name,
            dtype,
            &[n as i64, nb as i64],
            &q.scales,
        ));
        let mut attribute = vec![
            int_attr("K", k as i64),
            int_attr("N", n as i64),
            int_attr("bits", bits.bits() as i64),
            int_attr("block_size", opts.block_size as i64),
        ];
        if opts.accuracy_level != 0 {
            attribute.push(int_attr("accuracy_level", opts.accuracy_level));
        }
        let a = node.input.first().cloned().unwrap_or_default();
        patch.edit(Edit::ReplaceNode {
            output: node.output.first().cloned().unwrap_or_default(),
            nodes: vec![NodeProto {
                name: node.name.clone(),
                op_type: Some("MatMulNBits".into()),
                domain: Some("com.microsoft".into()),
                input: vec![a, b_name.clone(), s_name],
                output: node.output.clone(),
                attribute,
                doc_string: node.doc_string.clone(),
                ..Default::default()
            }],
        });
        reports.push(TableReport {
            role: "head".into(),
            node: label,
            weight: h.table.clone(),
            output: node.output.first().cloned().unwrap_or_default(),
            shape: [n, k],
            bits,
            block_size: opts.block_size,
            shares_codes_with: None,
            rel_error: q.rel_error,
            bytes_before: tensor::payload_len(t),
            bytes_after,
        });
        if h.rows {
            made.push(Made {
                table: h.table.clone(),
                bits,
                b_name,
                rows: n,
                blocks: nb,
                scales: q.scales,
                rel_error: q.rel_error,
            });
        }
    }
    for e in &embeddings {
        let bits = opts.embeddings.unwrap_or(TableBits::Int4);
        let node = g.node[e.node].clone();
        let label = node_label(&node, e.node);
        let t = table_tensor(g, &e.table).map_err(&err)?;
        let dtype = t.data_type.unwrap_or(0);
        let bytes_before = tensor::payload_len(t);
        let hidden = t.dims.get(1).copied().unwrap_or(0).max(0) as usize;
        let refusal = scale_type(dtype).err().or_else(|| {
            (!hidden.is_multiple_of(opts.block_size)).then(|| {
                format!(
                    "embedding width {hidden} is not a multiple of the block size {} \
                     (GatherBlockQuantized has no padding); stays float",
                    opts.block_size
                )
            })
        });
        if let Some(reason) = refusal {
            skipped.push(Skipped {
                node: label,
                reason,
            });
            continue;
        }
        let indices = node.input.get(1).cloned().unwrap_or_default();
        let output = node.output.first().cloned().unwrap_or_default();
        let shared = made.iter().find(|m| m.table == e.table && m.bits == bits);
        let (nodes, q_rel, rows, shares, bytes_after) = match shared {
            Some(q) => {
                let (b_name, nb) = (&q.b_name, q.blocks);
                let s_name = names.fresh(&format!("{}_GatherBlockQuantized_scales", e.table));
                patch.weight(tensor::from_f32_as(
                    &s_name,
                    dtype,
                    &[q.rows as i64, nb as i64, 1],
                    &q.scales,
                ));
                let blocked = names.fresh(&format!("{output}_blocks"));
                let mut nodes = vec![gbq(
                    &node,
                    &names.fresh(&format!("{label}_GatherBlockQuantized")),
                    [b_name.clone(), indices.clone(), s_name],
                    &blocked,
                    bits,
                    opts.block_size,
                    2,
                )];
                let (shape_nodes, shape) =
                    target_shape(g, &indices, hidden, &mut names, &mut patch);
                nodes.extend(shape_nodes);
                nodes.push(NodeProto {
                    name: node.name.clone(),
                    op_type: Some("Reshape".into()),
                    input: vec![blocked, shape],
                    output: vec![output.clone()],
                    ..Default::default()
                });
                let head = reports
                    .iter_mut()
                    .find(|r| r.role == "head" && r.weight == e.table);
                let head_node = head.map(|r| {
                    r.shares_codes_with = Some(label.clone());
                    r.node.clone()
                });
                let bytes = bytes_len(dtype, q.scales.len()) as u64;
                (nodes, q.rel_error, q.rows, head_node, bytes)
            }
            None => {
                let q = quantize(t, true, bits, opts.block_size, path, source).map_err(&err)?;
                let nb = q.blocks();
                let bytes = (q.packed.len() + bytes_len(dtype, q.scales.len())) as u64;
                let d_name = names.fresh(&format!("{}_GatherBlockQuantized_data", e.table));
                let s_name = names.fresh(&format!("{}_GatherBlockQuantized_scales", e.table));
                patch.weight(tensor::from_raw(
                    &d_name,
                    DataType::Uint8,
                    &[q.rows as i64, q.row_bytes() as i64],
                    q.packed,
                ));
                patch.weight(tensor::from_f32_as(
                    &s_name,
                    dtype,
                    &[q.rows as i64, nb as i64],
                    &q.scales,
                ));
                let nodes = vec![gbq(
                    &node,
                    &node.name.clone().unwrap_or_else(|| names.fresh(&label)),
                    [d_name, indices.clone(), s_name],
                    &output,
                    bits,
                    opts.block_size,
                    1,
                )];
                (nodes, q.rel_error, q.rows, None, bytes)
            }
        };
        patch.edit(Edit::ReplaceNode {
            output: output.clone(),
            nodes,
        });
        reports.push(TableReport {
            role: "embedding".into(),
            node: label,
            weight: e.table.clone(),
            output,
            shape: [rows, hidden],
            bits,
            block_size: opts.block_size,
            shares_codes_with: shares,
            rel_error: q_rel,
            bytes_before,
            bytes_after,
        });
    }
    drop(made);
    if reports.is_empty() {
        return Ok((reports, skipped));
    }
    let mut store = |t: &mut TensorProto| match sink {
        Some(sink) => sink.store(t).map_err(|e| e.to_string()),
        None => Ok(()),
    };
    patch::apply(g, patch, &mut store).map_err(|e| err(e.to_string()))?;
    // The Transposes that fed a quantized head, then the float tables nothing reads any more.
    let tables: HashSet<String> = reports.iter().map(|r| r.weight.clone()).collect();
    let transposes: HashSet<String> = g
        .node
        .iter()
        .filter(|n| {
            n.op_type.as_deref() == Some("Transpose")
                && n.input.first().is_some_and(|i| tables.contains(i))
        })
        .filter_map(|n| n.output.first().cloned())
        .collect();
    crate::cleanup::remove_dead(g, &transposes, &tables);
    Ok((reports, skipped))
}

/// Every LM head (`true`) and token embedding (`false`) of `g`, or why one cannot be
/// quantized, in node order.
fn find_tables(g: &GraphProto) -> Vec<(bool, Result<Found, Skipped>)> {
    let index = GraphIndex::new(g);
    let mut out = Vec::new();
    for (i, n) in g.node.iter().enumerate() {
        if !bitnet_model::node::in_default_domain(n) {
            continue;
        }
        let skipped = |reason| Skipped {
            node: node_label(n, i),
            reason,
        };
        match n.op_type.as_deref().unwrap_or("") {
            "MatMul"
                if n.output
                    .first()
                    .is_some_and(|o| feeds_graph_output(&index, o)) =>
            {
                out.push((true, find_head(&index, n, i).map_err(skipped)));
            }
            "Gemm"
                if n.output
                    .first()
                    .is_some_and(|o| feeds_graph_output(&index, o)) =>
            {
                out.push((
                    true,
                    Err(skipped(
                        "LM head is a Gemm: --head int4/int8 take MatMul heads; it stays float \
                         (--head ternary converts it)"
                            .to_string(),
                    )),
                ));
            }
            "Gather" => match find_embedding(&index, n, i) {
                Ok(Some(f)) => out.push((false, Ok(f))),
                Ok(None) => {}
                Err(e) => out.push((false, Err(skipped(e)))),
            },
            _ => {}
        }
    }
    out
}

/// A vocabulary table as `inspect` describes it (read-only).
#[derive(Debug, Clone, Serialize)]
pub struct TableCandidate {
    /// `head` or `embedding`.
    pub role: String,
    pub node: String,
    /// The float table (for a head reading `Transpose(E)`, `E`).
    pub weight: String,
    /// `[rows, width]` of the quantized layout (`[V, H]`, or `[N, K]` for a head).
    pub shape: Vec<i64>,
    /// The node of the other role reading the same table (a tied embedding).
    pub tied_with: Option<String>,
    /// Why it cannot become a 4/8-bit table, if it cannot.
    pub reason: Option<String>,
}

/// The LM heads and token embeddings of `g` and whether `--head` / `--embeddings` can quantize
/// them (read-only; what `inspect` shows).
pub fn describe_tables(g: &GraphProto) -> Vec<TableCandidate> {
    let found = find_tables(g);
    let shape = |f: &Found| -> Vec<i64> {
        let dims = g
            .initializer
            .iter()
            .find(|t| t.name.as_deref() == Some(f.table.as_str()))
            .map(|t| t.dims.clone())
            .unwrap_or_default();
        if f.rows || dims.len() != 2 {
            dims
        } else {
            vec![dims[1], dims[0]]
        }
    };
    let mut out: Vec<TableCandidate> = found
        .iter()
        .map(|(head, r)| {
            let role = if *head { "head" } else { "embedding" }.to_string();
            match r {
                Ok(f) => TableCandidate {
                    role,
                    node: node_label(&g.node[f.node], f.node),
                    weight: f.table.clone(),
                    shape: shape(f),
                    tied_with: None,
                    reason: None,
                },
                Err(s) => TableCandidate {
                    role,
                    node: s.node.clone(),
                    weight: String::new(),
                    shape: Vec::new(),
                    tied_with: None,
                    reason: Some(s.reason.clone()),
                },
            }
        })
        .collect();
    let tied: Vec<(usize, String)> = out
        .iter()
        .enumerate()
        .filter(|(_, c)| c.reason.is_none())
        .flat_map(|(i, c)| {
            out.iter()
                .filter(move |o| o.role != c.role && o.reason.is_none() && o.weight == c.weight)
                .map(move |o| (i, o.node.clone()))
        })
        .collect();
    for (i, other) in tied {
        out[i].tied_with = Some(other);
    }
    out
}

/// The head's table, or why it cannot be quantized.
fn find_head(index: &GraphIndex, n: &NodeProto, i: usize) -> Result<Found, String> {
    let w = n.input.get(1).map(String::as_str).unwrap_or("");
    let float2d = |t: &TensorProto| {
        t.dims.len() == 2
            && matches!(
                DataType::try_from(t.data_type.unwrap_or(0)),
                Ok(DataType::Float | DataType::Float16 | DataType::Bfloat16)
            )
    };
    if let Some(t) = index.initializer(w) {
        if index.is_overridable_initializer(w) || !float2d(t) {
            return Err(
                "LM head weight is not a constant 2-D float initializer; stays float".into(),
            );
        }
        return Ok(Found {
            node: i,
            table: w.to_string(),
            rows: false,
        });
    }
    let transposed = index.producer(w).and_then(|at| {
        let t = index.node(at);
        let plain = t.op_type.as_deref() == Some("Transpose")
            && bitnet_model::node::in_default_domain(t)
            && bitnet_model::node::attr(t, "perm")
                .is_none_or(|a| a.ints.is_empty() || a.ints == [1, 0]);
        let table = t.input.first()?;
        let init = index.initializer(table)?;
        (plain && float2d(init) && !index.is_overridable_initializer(table)).then(|| table.clone())
    });
    match transposed {
        Some(table) => Ok(Found {
            node: i,
            table,
            rows: true,
        }),
        None => Err(
            "LM head weight is neither a float initializer nor a Transpose of one; stays float"
                .into(),
        ),
    }
}

/// The embedding's table: `Ok(None)` for a Gather that is not a token lookup (constant
/// indices, another axis, an integer table), `Err` for a lookup that stays float.
fn find_embedding(index: &GraphIndex, n: &NodeProto, i: usize) -> Result<Option<Found>, String> {
    let (Some(data), Some(indices)) = (n.input.first(), n.input.get(1)) else {
        return Ok(None);
    };
    let axis = crate::analyse::attr_i(n, "axis").unwrap_or(0);
    let Some(t) = index.initializer(data) else {
        return Ok(None);
    };
    let float = matches!(
        DataType::try_from(t.data_type.unwrap_or(0)),
        Ok(DataType::Float | DataType::Float16 | DataType::Bfloat16)
    );
    if axis != 0 || !float || t.dims.len() != 2 || index.initializer(indices).is_some() {
        return Ok(None);
    }
    if index.is_overridable_initializer(data) {
        return Err("embedding table is a graph input with a default; stays float".into());
    }
    Ok(Some(Found {
        node: i,
        table: data.clone(),
        rows: true,
    }))
}

fn table_tensor<'g>(g: &'g GraphProto, name: &str) -> Result<&'g TensorProto, String> {
    g.initializer
        .iter()
        .find(|t| t.name.as_deref() == Some(name))
        .ok_or_else(|| format!("table '{name}' is not an initializer"))
}

/// The element type of the scales (and of the op's output): the table's.
fn scale_type(dtype: i32) -> Result<(), String> {
    match DataType::try_from(dtype) {
        Ok(DataType::Float | DataType::Float16) => Ok(()),
        _ => Err(format!(
            "table is {}: ONNX Runtime's MatMulNBits and GatherBlockQuantized produce float32 \
             or float16 only; stays float",
            bitnet_model::dtype::name(dtype)
        )),
    }
}

fn bytes_len(dtype: i32, count: usize) -> usize {
    bitnet_model::dtype::byte_len(dtype, count as u64).unwrap_or(0) as usize
}

fn blockq_block_size(bs: usize) -> Result<(), String> {
    if bs >= 16 && bs.is_power_of_two() {
        Ok(())
    } else {
        Err(format!(
            "table block size {bs} is not a power of two of at least 16"
        ))
    }
}

/// Rows of a source band held at a time: about 16 MiB of float32.
const BAND_BYTES: usize = 16 << 20;

/// Quantizes the initializer `t` (`[R, C]`): its rows when `rows`, else its columns (a
/// `[K, N]` head weight). Reads raw payloads where they lie; memory-mapped pages are released
/// band by band.
fn quantize(
    t: &TensorProto,
    rows: bool,
    bits: TableBits,
    block_size: usize,
    path: &Path,
    source: Option<&Mappings>,
) -> Result<BlockTable, String> {
    let name = t.name.clone().unwrap_or_default();
    let [r, c] = t.dims[..] else {
        return Err(format!("table '{name}' is not 2-D"));
    };
    let (r, c) = (r.max(0) as usize, c.max(0) as usize);
    let dtype = DataType::try_from(t.data_type.unwrap_or(0));
    let width = match dtype {
        Ok(DataType::Float) => 4,
        Ok(DataType::Float16 | DataType::Bfloat16) => 2,
        _ => return Err(format!("table '{name}' is not float")),
    };
    let decoded;
    let elem: Box<dyn Fn(usize) -> f32 + Sync> = match &t.raw_data {
        Some(raw) if raw.len() == r * c * width => {
            let raw: &[u8] = raw;
            match dtype {
                Ok(DataType::Float) => Box::new(move |i| {
                    f32::from_le_bytes([raw[4 * i], raw[4 * i + 1], raw[4 * i + 2], raw[4 * i + 3]])
                }),
                Ok(DataType::Float16) => Box::new(move |i| {
                    half::f16::from_le_bytes([raw[2 * i], raw[2 * i + 1]]).to_f32()
                }),
                _ => Box::new(move |i| {
                    half::bf16::from_le_bytes([raw[2 * i], raw[2 * i + 1]]).to_f32()
                }),
            }
        }
        _ => {
            decoded = tensor::to_f32(path, t).map_err(|e| e.to_string())?;
            if decoded.len() != r * c {
                return Err(format!(
                    "table '{name}' holds {} values, not {r} x {c}",
                    decoded.len()
                ));
            }
            let d = &decoded;
            Box::new(move |i| d[i])
        }
    };
    let release = |from: usize, to: usize| {
        if let (Some(src), Some(raw)) = (source, &t.raw_data) {
            if let Some(part) = raw.get(from * width..to * width) {
                if src.contains(part) {
                    src.release(part);
                }
            }
        }
    };
    let q = if rows {
        let band = (BAND_BYTES / (c * 4).max(1)).max(1);
        blockq::quantize_rows(
            r,
            c,
            bits,
            block_size,
            band,
            |row, out| {
                for (j, o) in out.iter_mut().enumerate() {
                    *o = elem(row * c + j);
                }
            },
            |done| release(done.start * c, done.end * c),
        )
    } else {
        // Column n of a [K, N] weight is head row n: strided reads; pages released at the end.
        let band = (BAND_BYTES / (r * 4).max(1)).max(1);
        let q = blockq::quantize_rows(
            c,
            r,
            bits,
            block_size,
            band,
            |n, out| {
                for (kk, o) in out.iter_mut().enumerate() {
                    *o = elem(kk * c + n);
                }
            },
            |_| {},
        );
        release(0, r * c);
        q
    };
    Ok(q)
}

/// `GatherBlockQuantized(data, indices, scales)` writing `output`.
fn gbq(
    original: &NodeProto,
    name: &str,
    inputs: [String; 3],
    output: &str,
    bits: TableBits,
    block_size: usize,
    quantize_axis: i64,
) -> NodeProto {
    NodeProto {
        name: Some(name.to_string()),
        op_type: Some("GatherBlockQuantized".into()),
        domain: Some("com.microsoft".into()),
        input: inputs.to_vec(),
        output: vec![output.to_string()],
        attribute: vec![
            int_attr("bits", bits.bits() as i64),
            int_attr("block_size", block_size as i64),
            int_attr("gather_axis", 0),
            int_attr("quantize_axis", quantize_axis),
        ],
        doc_string: original.doc_string.clone(),
        ..Default::default()
    }
}

/// The shape `[indices dims..., hidden]` for the Reshape after a shared-table lookup: a
/// constant `[0, ..., 0, hidden]` when the indices' rank is known, else `Shape(indices)`
/// concatenated with `[hidden]`.
fn target_shape(
    g: &GraphProto,
    indices: &str,
    hidden: usize,
    names: &mut NameGen,
    patch: &mut Patch,
) -> (Vec<NodeProto>, String) {
    let rank = GraphIndex::new(g).shape(indices).map(|s: Vec<Dim>| s.len());
    match rank {
        Some(r) => {
            let name = names.fresh(&format!("{indices}_embedding_shape"));
            let mut v = vec![0i64; r];
            v.push(hidden as i64);
            patch.constant(tensor::from_i64(&name, &[v.len() as i64], &v));
            (Vec::new(), name)
        }
        None => {
            let shape = names.fresh(&format!("{indices}_shape"));
            let h = names.fresh(&format!("{indices}_hidden"));
            let out = names.fresh(&format!("{indices}_embedding_shape"));
            patch.constant(tensor::from_i64(&h, &[1], &[hidden as i64]));
            let nodes = vec![
                NodeProto {
                    name: Some(names.fresh(&format!("{indices}_Shape"))),
                    op_type: Some("Shape".into()),
                    input: vec![indices.to_string()],
                    output: vec![shape.clone()],
                    ..Default::default()
                },
                NodeProto {
                    name: Some(names.fresh(&format!("{indices}_Concat"))),
                    op_type: Some("Concat".into()),
                    input: vec![shape, h],
                    output: vec![out.clone()],
                    attribute: vec![int_attr("axis", 0)],
                    ..Default::default()
                },
            ];
            (nodes, out)
        }
    }
}

/// `--logits last`: each LM head computes the last position only. A generation runtime's
/// prompt step needs the next token's logits, not one row per prompt token, and at 2B width
/// the head over every position costs more than the whole ternary model (a 128-token prompt:
/// 128 x 2560 x 128256 multiply-adds). Before each head (a MatMul or Gemm feeding a graph
/// output, reading an activation of rank 3 or more), `Slice(x, [-1], [i64::MAX], [-2])` keeps
/// the last position; the graph outputs it reaches get 1 at that axis, and the intermediate
/// value infos between the head and them are dropped (their shapes changed). Returns the
/// heads' node labels. Run before the other stages, so they see the sliced activation.
pub fn last_position_logits(g: &mut GraphProto, opset: i64) -> Result<Vec<String>, String> {
    let heads: Vec<(usize, String, String)> = {
        let index = GraphIndex::new(g);
        let mut heads = Vec::new();
        for (i, n) in g.node.iter().enumerate() {
            let default_domain = bitnet_model::node::in_default_domain(n);
            let op = n.op_type.as_deref().unwrap_or("");
            let Some(out) = n.output.first() else {
                continue;
            };
            if !default_domain || !(op == "MatMul" || op == "Gemm") {
                continue;
            }
            if !feeds_graph_output(&index, out) {
                continue;
            }
            let a = n.input.first().cloned().unwrap_or_default();
            let rank = index.shape(&a).map(|s| s.len());
            match rank {
                Some(r) if r >= 3 && op == "MatMul" => heads.push((i, a, out.clone())),
                _ => {
                    return Err(format!(
                        "--logits last: the head '{}' reads '{a}' of {} rank; it needs a MatMul \
                         on a [batch, positions, hidden] activation",
                        node_label(n, i),
                        rank.map_or("unknown".to_string(), |r| r.to_string())
                    ))
                }
            }
        }
        heads
    };
    if heads.is_empty() {
        return Err("--logits last: no MatMul feeds a graph output".into());
    }
    if opset < 10 {
        return Err(format!(
            "--logits last needs Slice with inputs (opset 10 or newer); the model imports {opset}"
        ));
    }
    let mut names = NameGen::new(g);
    let mut labels = Vec::new();
    let starts = names.fresh("last_position_starts");
    let ends = names.fresh("last_position_ends");
    let axes = names.fresh("last_position_axes");
    let mut patch = Patch::default();
    patch.constant(tensor::from_i64(&starts, &[1], &[-1]));
    patch.constant(tensor::from_i64(&ends, &[1], &[i64::MAX]));
    patch.constant(tensor::from_i64(&axes, &[1], &[-2]));
    // Names are given back to front (the order the outputs have always been named in).
    for (at, a, out) in heads.iter().rev() {
        let label = node_label(&g.node[*at], *at);
        let sliced = names.fresh(&format!("{a}_last_position"));
        patch.edit(Edit::Rewire {
            output: out.clone(),
            input: 0,
            from: a.clone(),
            to: sliced.clone(),
        });
        patch.edit(Edit::Before {
            output: out.clone(),
            nodes: vec![NodeProto {
                name: Some(names.fresh(&format!("{label}_last_position"))),
                op_type: Some("Slice".into()),
                input: vec![a.clone(), starts.clone(), ends.clone(), axes.clone()],
                output: vec![sliced],
                ..Default::default()
            }],
        });
        labels.push(label);
    }
    labels.reverse();
    patch::apply(g, patch, &mut |_| Ok(())).map_err(|e| format!("--logits last: {e}"))?;
    // Values downstream of the heads changed shape: drop their value infos, and give the graph
    // outputs 1 at the position axis.
    let mut downstream: HashSet<String> = HashSet::new();
    {
        let index = GraphIndex::new(g);
        let mut stack: Vec<String> = heads.iter().map(|(_, _, out)| out.clone()).collect();
        while let Some(v) = stack.pop() {
            if !downstream.insert(v.clone()) {
                continue;
            }
            for &c in index.consumers(&v) {
                stack.extend(index.node(c).output.iter().cloned());
            }
        }
    }
    g.value_info
        .retain(|v| !v.name.as_ref().is_some_and(|n| downstream.contains(n)));
    for o in &mut g.output {
        if !o.name.as_ref().is_some_and(|n| downstream.contains(n)) {
            continue;
        }
        use bitnet_model::proto::tensor_shape_proto::{dimension::Value as D, Dimension};
        use bitnet_model::proto::type_proto::Value;
        if let Some(Value::TensorType(t)) = o.r#type.as_mut().and_then(|t| t.value.as_mut()) {
            if let Some(shape) = t.shape.as_mut() {
                let r = shape.dim.len();
                if r >= 2 {
                    shape.dim[r - 2] = Dimension {
                        value: Some(D::DimValue(1)),
                        ..Default::default()
                    };
                }
            }
        }
    }
    Ok(labels)
}
