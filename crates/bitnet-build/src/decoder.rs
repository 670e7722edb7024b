//! The decoder graph, as onnxruntime-genai runs it (docs/formats.md section 4): token ids and
//! an attention mask in, logits and each layer's KV cache (`present.{i}.key/value`, from
//! `past_key_values.{i}.key/value`) out.
//!
//! One layer, as transformers' `BitNetDecoderLayer` computes it:
//! ```text
//! x  = RMSNorm(h)                                  input_layernorm (fused with the residual)
//! a  = GroupQueryAttention(BitLinear_qkv(x))       rotary inside, grouped KV heads, KV cache
//! h += BitLinear_o(RMSNorm(a))                     attn_sub_norm
//! x  = RMSNorm(h)                                  post_attention_layernorm
//! g, u = BitLinear_gate_up(x)
//! h += BitLinear_down(RMSNorm(relu(g)^2 * u))      ffn_sub_norm
//! ```
//! Every BitLinear is BitNet's per-token int8 activation quantization in standard ops
//! (`s = 127 / max(max|x|, 1e-5)`, `q = clamp(round(x * s), -128, 127)`), then a 2-bit
//! `MatMulNBits` (`accuracy_level` 4) on the exact-activation layout of `bitnet_math::hf`
//! (127 in each block's reserved slot, so ONNX Runtime's int8 kernels compute BitNet's integer
//! dot products exactly) whose block scales are all 1: its output is the integer product of the
//! codes itself, exact in float32 while below 2^24 (127 x 6912 is). The layer's scale comes
//! after it, in its transformers class's own order of float operations
//! ([`crate::checkpoint::Rescale`]): `y / (s * weight_scale)` for `BitLinear`, `(y / s) * c` for
//! `AutoBitLinear`, so the output rounds where transformers' rounds (a scale inside the block
//! scales landed 2-4 ulp from the exact product, and every such ulp is a chance for a later
//! activation code to round the other way). The projections that read one input share one
//! quantization and one `MatMulNBits` (q, k and v; gate and up), each output column scaled by
//! its own part's constant.
//!
//! Everything else rounds as transformers' float32 does where ONNX Runtime lets it: the
//! activation quantization is the same expression (`127 / max(|x|).clamp(1e-5)`, `round(x * s)`,
//! half to even), relu2 is `relu(g) * relu(g)` then `* u`, the residual adds are single
//! additions, the attention scale is `head_dim**-0.5` rounded once. What cannot be matched bit
//! for bit: RMSNorm (ONNX Runtime's fused norm sums the squares in its own order and divides by
//! the root where torch multiplies by `rsqrt`), attention inside GroupQueryAttention (its own
//! summation and softmax), the rotary tables (torch's vectorized `pow`, `cos` and `sin` are not
//! the C library's) and the float head's Gemm.

use bitnet_math::blockq::{self, BlockTable, TableBits};
use bitnet_math::hf;
use bitnet_math::pack;
use bitnet_math::quant::{Granularity, Ternary};
use bitnet_model::metadata::{LayerSpec, TableSpec};
use bitnet_model::proto::tensor_proto::DataType;
use bitnet_model::tensor;
use rayon::prelude::*;

use crate::checkpoint::{Checkpoint, Rescale};
use crate::config::LinearForm;
use crate::error::{BuildError, Result};
use crate::family::{Activation, Names, Proj};
use crate::graph::{Attr, DimSpec, Graph, MS};
use crate::{BuildOptions, Kernel, Layout, TableMode};
use bitnet_ortops::layout;

/// What the graph holds, for the report and the metadata.
#[derive(Default)]
pub struct Built {
    pub layers: Vec<LayerSpec>,
    pub tables: Vec<TableSpec>,
    /// Linear weights stored as codes (read exactly) and ternarised from master weights.
    pub stored_as_codes: usize,
    pub ternarised: usize,
    pub linear_params: u64,
    pub table_shared: bool,
    /// The float embedding table's initializer, which a tied float head reads too.
    pub float_embedding: Option<String>,
    /// Float-stored ternary weights by how their scales were found.
    pub float_granularity: std::collections::BTreeMap<String, usize>,
    /// The op computing the LM head: `Gemm` (float table), `MatMulNBits` or
    /// `bitnet.onnx::Q8Linear`.
    pub head_op: String,
    /// The attention op: `com.microsoft::GroupQueryAttention` or
    /// `bitnet.onnx::GroupQueryAttention`.
    pub attention_op: String,
}

/// Rows of a table read per band (each band's rows are quantized in parallel).
const TABLE_BAND_ROWS: usize = 4096;

pub fn build(ck: &Checkpoint, opts: &BuildOptions, g: &mut Graph) -> Result<Built> {
    let c = &ck.config;
    // The KV cache holds heads at the attention's (possibly padded) size.
    let (kv, hd) = (c.num_kv_heads as i64, c.cache_head_dim as i64);
    let mut built = Built::default();

    g.input(
        "input_ids",
        DataType::Int64,
        &[
            DimSpec::Symbol("batch_size"),
            DimSpec::Symbol("sequence_length"),
        ],
    );
    g.input(
        "attention_mask",
        DataType::Int64,
        &[
            DimSpec::Symbol("batch_size"),
            DimSpec::Symbol("total_sequence_length"),
        ],
    );
    for i in 0..c.num_layers {
        for kind in ["key", "value"] {
            let past = [
                DimSpec::Symbol("batch_size"),
                DimSpec::Fixed(kv),
                DimSpec::Symbol("past_sequence_length"),
                DimSpec::Fixed(hd),
            ];
            g.input(
                &format!("past_key_values.{i}.{kind}"),
                DataType::Float,
                &past,
            );
        }
    }
    g.output(
        "logits",
        DataType::Float,
        &[
            DimSpec::Symbol("batch_size"),
            DimSpec::Symbol("sequence_length"),
            DimSpec::Fixed(c.vocab_size as i64),
        ],
    );
    for i in 0..c.num_layers {
        for kind in ["key", "value"] {
            let present = [
                DimSpec::Symbol("batch_size"),
                DimSpec::Fixed(kv),
                DimSpec::Symbol("total_sequence_length"),
                DimSpec::Fixed(hd),
            ];
            g.output(&format!("present.{i}.{kind}"), DataType::Float, &present);
        }
    }

    let (seqlens_k, total_len) = attention_lengths(g);
    let (cos, sin) = rotary_caches(ck, g)?;

    // The tables: one quantized table for a tied embedding and head of the same bits.
    let shared =
        c.tie_word_embeddings && opts.embeddings == opts.head && opts.head != TableMode::Float;
    built.table_shared = shared;
    let mut head_table = match opts.head.bits() {
        Some(bits) => Some(quantize_table(
            ck,
            ck.head_name(),
            bits,
            opts.table_block_size,
        )?),
        None => None,
    };
    let h0 = embedding(
        ck,
        opts,
        g,
        head_table.as_mut().filter(|_| shared),
        &mut built,
    )?;

    let mut h = h0;
    let mut pending: Option<String> = None;
    let n = ck.names();
    for l in 0..c.num_layers {
        let p = format!("/model/layers.{l}");
        let ln_in = norm_weight(ck, g, &Names::layer_weight(l, n.input_norm))?;
        let x = match pending.take() {
            None => rms_norm(
                g,
                &format!("{p}/input_layernorm"),
                &h,
                &ln_in,
                c.rms_norm_eps,
            ),
            Some(d) => {
                let (x, sum) = skip_rms_norm(
                    g,
                    &format!("{p}/input_layernorm"),
                    &h,
                    &d,
                    &ln_in,
                    c.rms_norm_eps,
                );
                h = sum;
                x
            }
        };
        // q, k and v packed into one input of GroupQueryAttention, or three when the queries
        // and keys are normalised per head (or each projection has its own input norm).
        let padded = c.cache_head_dim != c.head_dim;
        let separate = n.q_norm.is_some() || c.linear_norm_eps.is_some() || padded;
        let mut qkv = linears(
            ck,
            opts,
            g,
            &mut built,
            &format!("{p}/attn"),
            "qkv_proj",
            &x,
            l,
            &[Proj::Q, Proj::K, Proj::V],
            separate,
        )?;
        for (i, (rel, heads, what)) in [
            (n.q_norm, c.num_heads, "q_norm"),
            (n.k_norm, c.num_kv_heads, "k_norm"),
        ]
        .into_iter()
        .enumerate()
        {
            if let Some(rel) = rel {
                let w = norm_weight(ck, g, &Names::layer_weight(l, rel))?;
                qkv[i] = head_norm(
                    g,
                    &format!("{p}/attn/{what}"),
                    &qkv[i],
                    &w,
                    heads,
                    c.head_dim,
                    c.rms_norm_eps,
                );
            }
        }
        if padded {
            for (i, (heads, what)) in [
                (c.num_heads, "q_pad"),
                (c.num_kv_heads, "k_pad"),
                (c.num_kv_heads, "v_pad"),
            ]
            .into_iter()
            .enumerate()
            {
                qkv[i] = pad_heads(g, &format!("{p}/attn/{what}"), &qkv[i], heads, c);
            }
        }
        // One packed input, or q, k and v.
        let (q_in, k_in, v_in) = if qkv.len() == 3 {
            (qkv[0].clone(), qkv[1].clone(), qkv[2].clone())
        } else {
            (qkv[0].clone(), String::new(), String::new())
        };
        let gqa = format!("{p}/attn/GroupQueryAttention");
        let outputs = vec![
            format!("{gqa}/output_0"),
            format!("present.{l}.key"),
            format!("present.{l}.value"),
        ];
        let (pk, pv) = (
            format!("past_key_values.{l}.key"),
            format!("past_key_values.{l}.value"),
        );
        // transformers' `head_dim**-0.5`, a Python float (double) that the attention kernel
        // rounds to float32 once.
        let scale = (c.head_dim as f64).powf(-0.5) as f32;
        let (nh, nkv) = (c.num_heads as i64, c.num_kv_heads as i64);
        if attention_in_op(opts) && k_in.is_empty() {
            // Our op: ONNX Runtime's inputs without the separate key and value (packed q/k/v
            // only), rotary always, no local window or softcap (bitnet-ortops' `attention`).
            g.node_to(
                "GroupQueryAttention",
                crate::BITNET_DOMAIN,
                &gqa,
                &[&q_in, &pk, &pv, &seqlens_k, &total_len, &cos, &sin],
                &outputs,
                &[
                    ("num_heads", Attr::Int(nh)),
                    ("kv_num_heads", Attr::Int(nkv)),
                    ("scale", Attr::Float(scale)),
                    ("rotary_interleaved", Attr::Int(0)),
                ],
            );
            built.attention_op = "bitnet.onnx::GroupQueryAttention".into();
        } else {
            g.node_to(
                "GroupQueryAttention",
                MS,
                &gqa,
                &[
                    &q_in, &k_in, &v_in, &pk, &pv, &seqlens_k, &total_len, &cos, &sin,
                ],
                &outputs,
                &[
                    ("num_heads", Attr::Int(nh)),
                    ("kv_num_heads", Attr::Int(nkv)),
                    ("scale", Attr::Float(scale)),
                    ("do_rotary", Attr::Int(1)),
                    ("rotary_interleaved", Attr::Int(0)),
                    ("local_window_size", Attr::Int(-1)),
                    ("softcap", Attr::Float(0.0)),
                ],
            );
            built.attention_op = "com.microsoft::GroupQueryAttention".into();
        }
        let mut a = outputs[0].clone();
        if padded {
            a = unpad_heads(g, &format!("{p}/attn/unpad"), &a, c.num_heads, c);
        }
        if let Some(rel) = n.attn_sub_norm {
            let sub = norm_weight(ck, g, &Names::layer_weight(l, rel))?;
            a = rms_norm(
                g,
                &format!("{p}/attn/attn_sub_norm"),
                &a,
                &sub,
                c.rms_norm_eps,
            );
        }
        let o = linears(
            ck,
            opts,
            g,
            &mut built,
            &format!("{p}/attn"),
            "o_proj",
            &a,
            l,
            &[Proj::O],
            false,
        )?
        .remove(0);
        let ln_post = norm_weight(ck, g, &Names::layer_weight(l, n.post_attention_norm))?;
        let (x2, sum) = skip_rms_norm(
            g,
            &format!("{p}/post_attention_layernorm"),
            &h,
            &o,
            &ln_post,
            c.rms_norm_eps,
        );
        h = sum;
        let mut m = if glu_in_op(ck, opts) {
            // The op applies relu(gate)^2 * up itself: the same three float operations as the
            // nodes below, without the Split and three nodes per layer.
            bitlinear(
                ck,
                opts,
                g,
                &mut built,
                &format!("{p}/mlp/gate_up_proj"),
                &x2,
                l,
                &[Proj::Gate, Proj::Up],
                true,
            )?
        } else {
            let gu = linears(
                ck,
                opts,
                g,
                &mut built,
                &format!("{p}/mlp"),
                "gate_up_proj",
                &x2,
                l,
                &[Proj::Gate, Proj::Up],
                true,
            )?;
            let act = match c.activation {
                Activation::Relu2 => {
                    let r = g.op("Relu", &format!("{p}/mlp/act_fn/Relu"), &[&gu[0]]);
                    g.op("Mul", &format!("{p}/mlp/act_fn/Square"), &[&r, &r])
                }
                Activation::Silu => {
                    // torch's silu: `x * sigmoid(x)`.
                    let s = g.op("Sigmoid", &format!("{p}/mlp/act_fn/Sigmoid"), &[&gu[0]]);
                    g.op("Mul", &format!("{p}/mlp/act_fn/Mul"), &[&gu[0], &s])
                }
            };
            g.op("Mul", &format!("{p}/mlp/Mul"), &[&act, &gu[1]])
        };
        if let Some(rel) = n.ffn_sub_norm {
            let fsub = norm_weight(ck, g, &Names::layer_weight(l, rel))?;
            m = rms_norm(
                g,
                &format!("{p}/mlp/ffn_sub_norm"),
                &m,
                &fsub,
                c.rms_norm_eps,
            );
        }
        pending = Some(
            linears(
                ck,
                opts,
                g,
                &mut built,
                &format!("{p}/mlp"),
                "down_proj",
                &m,
                l,
                &[Proj::Down],
                false,
            )?
            .remove(0),
        );
    }
    let final_w = norm_weight(ck, g, n.final_norm)?;
    let xf = match pending {
        None => rms_norm(g, "/model/norm", &h, &final_w, c.rms_norm_eps),
        Some(d) => {
            let name = "/model/norm/SkipLayerNorm";
            let out = vec![format!("{name}/output_0")];
            g.node_to(
                "SkipSimplifiedLayerNormalization",
                MS,
                name,
                &[&h, &d, &final_w],
                &out,
                &[("epsilon", Attr::Float(c.rms_norm_eps))],
            );
            out[0].clone()
        }
    };
    if opts.last_logits {
        let (rows, idx, positions) = last_rows(ck, g, &xf);
        head(
            ck,
            opts,
            g,
            &rows,
            "/lm_head/last/output_0",
            head_table,
            &mut built,
        )?;
        scatter_last(g, "/lm_head/last/output_0", &idx, &positions);
    } else {
        head(ck, opts, g, &xf, "logits", head_table, &mut built)?;
    }
    Ok(built)
}

/// GroupQueryAttention's `seqlens_k` (tokens seen per sequence, minus one) and
/// `total_sequence_length`, from the attention mask as onnxruntime-genai feeds it.
fn attention_lengths(g: &mut Graph) -> (String, String) {
    let p = "/model/attn_mask_reformat";
    let one = g.i64s(&[1]);
    let sum = g.op_with(
        "ReduceSum",
        &format!("{p}/ReduceSum"),
        &["attention_mask", &one],
        &[("keepdims", Attr::Int(0))],
    );
    let sub = g.op("Sub", &format!("{p}/Sub"), &[&sum, &one]);
    let seqlens = g.op_with(
        "Cast",
        &format!("{p}/Sub/Cast"),
        &[&sub],
        &[("to", Attr::Int(DataType::Int32 as i64))],
    );
    let shape = g.op("Shape", &format!("{p}/Shape"), &["attention_mask"]);
    let idx = g.i64_scalar(1);
    let total = g.op_with(
        "Gather",
        &format!("{p}/Gather"),
        &[&shape, &idx],
        &[("axis", Attr::Int(0))],
    );
    let total = g.op_with(
        "Cast",
        &format!("{p}/Gather/Cast"),
        &[&total],
        &[("to", Attr::Int(DataType::Int32 as i64))],
    );
    (seqlens, total)
}

/// Heads of `head_dim` padded to `cache_head_dim` for GroupQueryAttention: `x`
/// `[batch, seq, heads * head_dim]` seen as `[batch, seq, heads, 2, head_dim / 2]` (the two
/// halves that rotary embedding pairs, element `i` with `i + head_dim / 2`), each half
/// zero-padded at its end to `cache_head_dim / 2`. The padded head's halves are then the first
/// and second half GroupQueryAttention pairs (element `i` with `i + cache_head_dim / 2`), so
/// rotary rotates exactly the original pairs and the padding stays zero (the rotary tables'
/// extra columns are cos 1, sin 0); a zero adds nothing to a query-key dot product, and a zero
/// value column gives a zero output column, which [`unpad_heads`] drops. The attention scale
/// stays `head_dim**-0.5`. Exact: the same float operations on the same values.
fn pad_heads(
    g: &mut Graph,
    name: &str,
    x: &str,
    heads: usize,
    c: &crate::config::Config,
) -> String {
    let (half, padded_half) = (c.head_dim / 2, c.cache_head_dim / 2);
    let split = g.i64s(&[0, 0, heads as i64, 2, half as i64]);
    let halves = g.op("Reshape", &format!("{name}/Reshape"), &[x, &split]);
    let mut pads = vec![0i64; 10];
    pads[9] = (padded_half - half) as i64;
    let pads = g.i64s(&pads);
    let padded = g.op("Pad", &format!("{name}/Pad"), &[&halves, &pads]);
    let flat = g.i64s(&[0, 0, (heads * c.cache_head_dim) as i64]);
    g.op("Reshape", &format!("{name}/Reshape_1"), &[&padded, &flat])
}

/// The inverse of [`pad_heads`] on the attention output: the padding columns dropped.
fn unpad_heads(
    g: &mut Graph,
    name: &str,
    x: &str,
    heads: usize,
    c: &crate::config::Config,
) -> String {
    let (half, padded_half) = (c.head_dim / 2, c.cache_head_dim / 2);
    let split = g.i64s(&[0, 0, heads as i64, 2, padded_half as i64]);
    let halves = g.op("Reshape", &format!("{name}/Reshape"), &[x, &split]);
    let (starts, ends, axes) = (g.i64s(&[0]), g.i64s(&[half as i64]), g.i64s(&[4]));
    let kept = g.op(
        "Slice",
        &format!("{name}/Slice"),
        &[&halves, &starts, &ends, &axes],
    );
    let flat = g.i64s(&[0, 0, (heads * c.head_dim) as i64]);
    g.op("Reshape", &format!("{name}/Reshape_1"), &[&kept, &flat])
}

/// The rotary tables `[max_position_embeddings, head_dim / 2]`, computed in float32 the way
/// transformers' rotary embedding does: the inverse frequencies of the config's rope type
/// ([`crate::rope`]), angle `pos * inv_freq`, then `cos` and `sin` each multiplied by the
/// type's attention scaling (1 except for yarn), which scales the rotated queries and keys as
/// transformers' does.
fn rotary_caches(ck: &Checkpoint, g: &mut Graph) -> Result<(String, String)> {
    let c = &ck.config;
    // Padded heads ([`pad_heads`]) get identity columns (cos 1, sin 0) for their zero padding.
    let half = c.cache_head_dim / 2;
    let (inv, attention_scaling) = c.rope.inv_freq(c.head_dim, c.max_position_embeddings);
    let scale = attention_scaling as f32;
    let n = c.max_position_embeddings;
    let (mut cos, mut sin) = (Vec::with_capacity(n * half), Vec::with_capacity(n * half));
    for pos in 0..n {
        for &f in &inv {
            let a = pos as f32 * f;
            cos.push(a.cos() * scale);
            sin.push(a.sin() * scale);
        }
        for _ in inv.len()..half {
            cos.push(1.0);
            sin.push(0.0);
        }
    }
    let dims = [n as i64, half as i64];
    let cos = g.initializer(tensor::from_f32("cos_cache", &dims, &cos))?;
    let sin = g.initializer(tensor::from_f32("sin_cache", &dims, &sin))?;
    Ok((cos, sin))
}

fn norm_weight(ck: &Checkpoint, g: &mut Graph, name: &str) -> Result<String> {
    let info = ck.info(name)?;
    let v = ck.tensors.read_f32(name, info)?;
    g.initializer(tensor::from_f32(name, &[v.len() as i64], &v))
}

fn rms_norm(g: &mut Graph, name: &str, x: &str, w: &str, eps: f32) -> String {
    g.op_with(
        "SimplifiedLayerNormalization",
        &format!("{name}/LayerNorm"),
        &[x, w],
        &[
            ("axis", Attr::Int(-1)),
            ("epsilon", Attr::Float(eps)),
            ("stash_type", Attr::Int(1)),
        ],
    )
}

/// `RMSNorm(h + d)` and `h + d`.
fn skip_rms_norm(
    g: &mut Graph,
    name: &str,
    h: &str,
    d: &str,
    w: &str,
    eps: f32,
) -> (String, String) {
    let node = format!("{name}/SkipLayerNorm");
    let out = vec![
        format!("{node}/output_0"),
        String::new(),
        String::new(),
        format!("{node}/output_3"),
    ];
    g.node_to(
        "SkipSimplifiedLayerNormalization",
        MS,
        &node,
        &[h, d, w],
        &out,
        &[("epsilon", Attr::Float(eps))],
    );
    (out[0].clone(), out[3].clone())
}

/// RMSNorm over each head of `x` `[batch, seq, heads * head_dim]` with one `head_dim` weight
/// (Qwen3's q_norm / k_norm on the projected queries and keys, before rotary).
fn head_norm(
    g: &mut Graph,
    name: &str,
    x: &str,
    w: &str,
    heads: usize,
    head_dim: usize,
    eps: f32,
) -> String {
    let per_head = g.i64s(&[0, 0, heads as i64, head_dim as i64]);
    let xh = g.op("Reshape", &format!("{name}/Heads"), &[x, &per_head]);
    let y = rms_norm(g, name, &xh, w, eps);
    let flat = g.i64s(&[0, 0, (heads * head_dim) as i64]);
    g.op("Reshape", &format!("{name}/Flatten"), &[&y, &flat])
}

/// Whether attention is `bitnet.onnx::GroupQueryAttention` (with `--kernel bitnet`, when q, k
/// and v are one packed input): ONNX Runtime's semantics, each cached key and value row read
/// once for the query heads that share it; the float sums in another order, so its outputs
/// differ from ONNX Runtime's by float rounding.
fn attention_in_op(opts: &BuildOptions) -> bool {
    matches!(opts.kernel, Kernel::Bitnet { .. }) && !opts.ort_attention
}

/// Whether the gate/up `BitLinear` computes the MLP's activation itself (its `glu` attribute):
/// with `--kernel bitnet`, a squared-ReLU MLP (the op computes exactly the stock nodes' float
/// operations; SiLU's `Sigmoid` is ONNX Runtime's own approximation, which the op does not
/// reproduce), and gate and up fused into one node (no per-projection input norm).
fn glu_in_op(ck: &Checkpoint, opts: &BuildOptions) -> bool {
    matches!(opts.kernel, Kernel::Bitnet { .. })
        && ck.config.activation == Activation::Relu2
        && ck.config.linear_norm_eps.is_none()
        && ck.config.linear != LinearForm::FloatTernary
}

/// The projections `parts` of layer `layer` reading `x`. Without a norm inside each linear
/// layer they share one activation quantization and one `MatMulNBits` (`{prefix}/{fused}`),
/// whose output is returned whole, or split into one output per part with `split`. With the
/// config's `use_rms_norm`, each part normalises `x` with its own `rms_norm` weight before its
/// own activation quantization (transformers' `BitLinear` / `AutoBitLinear` with
/// `use_rms_norm`), so each is its own layer: one output per part.
#[allow(clippy::too_many_arguments)]
fn linears(
    ck: &Checkpoint,
    opts: &BuildOptions,
    g: &mut Graph,
    built: &mut Built,
    prefix: &str,
    fused: &str,
    x: &str,
    layer: usize,
    parts: &[Proj],
    split: bool,
) -> Result<Vec<String>> {
    let c = &ck.config;
    if let Some(eps) = c.linear_norm_eps {
        let mut outs = Vec::with_capacity(parts.len());
        for &part in parts {
            let lname = ck.linear_name(layer, part);
            let short = ck.names().proj(part).1;
            let w = norm_weight(ck, g, &format!("{lname}.rms_norm.weight"))?;
            let xn = rms_norm(g, &format!("{prefix}/{short}/rms_norm"), x, &w, eps);
            outs.push(bitlinear(
                ck,
                opts,
                g,
                built,
                &format!("{prefix}/{short}"),
                &xn,
                layer,
                &[part],
                false,
            )?);
        }
        return Ok(outs);
    }
    let y = bitlinear(
        ck,
        opts,
        g,
        built,
        &format!("{prefix}/{fused}"),
        x,
        layer,
        parts,
        false,
    )?;
    if !split || parts.len() == 1 {
        return Ok(vec![y]);
    }
    let sizes: Vec<i64> = parts.iter().map(|&p| ck.linear_shape(p).0 as i64).collect();
    let sizes = g.i64s(&sizes);
    Ok(g.node(
        "Split",
        "",
        &format!("{prefix}/Split"),
        &[&y, &sizes],
        parts.len(),
        &[("axis", Attr::Int(-1))],
    ))
}

/// BitNet linear layers reading `x`, as one 2-bit `MatMulNBits` with BitNet's exact int8
/// activations (see the module docs). Returns the output (the parts' outputs concatenated; with
/// `glu`, only for `--kernel bitnet` on gate and up, `relu(gate)^2 * up`).
#[allow(clippy::too_many_arguments)]
fn bitlinear(
    ck: &Checkpoint,
    opts: &BuildOptions,
    g: &mut Graph,
    built: &mut Built,
    name: &str,
    x: &str,
    layer: usize,
    parts: &[Proj],
    glu: bool,
) -> Result<String> {
    if ck.config.linear == LinearForm::FloatTernary {
        return float_linear(ck, opts, g, built, name, x, layer, parts);
    }
    let bs = opts.block_size;
    let mut codes: Vec<i8> = Vec::new();
    // Each output column's constant and how its class applies it (one kind per config).
    let mut col_scales: Vec<f32> = Vec::new();
    let mut kind: Option<Rescale> = None;
    let mut k = 0;
    let mut weights = Vec::new();
    // Each part's output count and constant (the op's column groups).
    let mut groups: Vec<(usize, f32)> = Vec::new();
    for &part in parts {
        let lname = ck.linear_name(layer, part);
        let lin = ck.linear(&lname, ck.linear_shape(part))?;
        k = lin.k;
        if lin.stored_as_codes {
            built.stored_as_codes += 1;
        } else {
            built.ternarised += 1;
        }
        built.linear_params += (lin.out * lin.k) as u64;
        let same_kind = match (kind, lin.scale) {
            (None, _) => true,
            (Some(a), b) => std::mem::discriminant(&a) == std::mem::discriminant(&b),
        };
        if !same_kind {
            return Err(BuildError::tensor(
                &ck.dir,
                &format!("{lname}.weight"),
                "the fused projections' layers are of different linear classes",
            ));
        }
        kind = Some(lin.scale);
        col_scales.extend(std::iter::repeat_n(lin.scale.value(), lin.out));
        groups.push((lin.out, lin.scale.value()));
        codes.extend_from_slice(&lin.codes);
        weights.push(format!("{lname}.weight"));
    }
    let n = col_scales.len();
    if let Kernel::Bitnet { .. } = opts.kernel {
        let divide = matches!(kind, Some(Rescale::Divide(_)));
        return bitlinear_op(
            ck, g, built, name, x, k, &codes, &groups, divide, glu, &weights,
        );
    }
    let nb = hf::reserved_blocks(k, bs);
    let packed = hf::pack_2bit_reserved(&codes, n, k, bs)
        .map_err(|e| BuildError::tensor(&ck.dir, &weights.join(", "), e.to_string()))?;
    drop(codes);
    let wname = format!("{}.qweight", weights.join("+").replace(".weight", ""));
    let prefix = wname.trim_end_matches(".qweight").to_string();
    let b = g.initializer(tensor::from_raw(
        &wname,
        DataType::Uint8,
        &[n as i64, nb as i64, (bs / 4) as i64],
        packed,
    ))?;
    // Unit block scales: the product is the exact integer dot product of the codes (see the
    // module docs); the layer's scale comes after it. Layers of one shape share one tensor.
    let s_name = g.ones(&[n as i64, nb as i64])?;
    // The layer's constant: a scalar when every part has the same, else one per column.
    let c_name = if col_scales
        .iter()
        .all(|c| c.to_bits() == col_scales[0].to_bits())
    {
        g.f32_scalar(col_scales[0])
    } else {
        g.initializer(tensor::from_f32(
            &format!("{prefix}.weight_scale"),
            &[n as i64],
            &col_scales,
        ))?
    };

    // BitNet's per-token activation quantization.
    let q = format!("{name}/act_quant");
    let axes = g.i64s(&[-1]);
    let (eps, q_max, lo) = (
        g.f32_scalar(1e-5),
        g.f32_scalar(127.0),
        g.f32_scalar(-128.0),
    );
    let abs = g.op("Abs", &format!("{q}/Abs"), &[x]);
    let max = g.op_with(
        "ReduceMax",
        &format!("{q}/ReduceMax"),
        &[&abs, &axes],
        &[("keepdims", Attr::Int(1))],
    );
    let max = g.op("Max", &format!("{q}/Clamp"), &[&max, &eps]);
    let s = g.op("Div", &format!("{q}/Scale"), &[&q_max, &max]);
    let xs = g.op("Mul", &format!("{q}/Mul"), &[x, &s]);
    let r = g.op("Round", &format!("{q}/Round"), &[&xs]);
    let codes_in = g.op("Clip", &format!("{q}/Clip"), &[&r, &lo, &q_max]);
    // The exact-activation layout: `bs - 1` values and 127 per block.
    let per = bs - 1;
    let mut a = codes_in;
    if nb * per > k {
        let pads = g.i64s(&[0, 0, 0, 0, 0, (nb * per - k) as i64]);
        a = g.op("Pad", &format!("{q}/PadK"), &[&a, &pads]);
    }
    let blocks = g.i64s(&[0, 0, nb as i64, per as i64]);
    a = g.op("Reshape", &format!("{q}/Blocks"), &[&a, &blocks]);
    let slot = g.i64s(&[0, 0, 0, 0, 0, 0, 0, 1]);
    a = g.op("Pad", &format!("{q}/Reserved"), &[&a, &slot, &q_max]);
    let flat = g.i64s(&[0, 0, (nb * bs) as i64]);
    a = g.op("Reshape", &format!("{q}/Flatten"), &[&a, &flat]);
    let mm = format!("{name}/MatMulNBits");
    let y = g
        .node(
            "MatMulNBits",
            MS,
            &mm,
            &[&a, &b, &s_name],
            1,
            &[
                ("K", Attr::Int((nb * bs) as i64)),
                ("N", Attr::Int(n as i64)),
                ("bits", Attr::Int(2)),
                ("block_size", Attr::Int(bs as i64)),
                ("accuracy_level", Attr::Int(4)),
            ],
        )
        .remove(0);
    // The layer's scale, in its class's order (checkpoint::Rescale).
    let out = match kind {
        Some(Rescale::Divide(_)) => {
            let d = g.op("Mul", &format!("{name}/ScaleProduct"), &[&s, &c_name]);
            g.op("Div", &format!("{name}/Rescale"), &[&y, &d])
        }
        _ => {
            let a = g.op("Div", &format!("{name}/Rescale"), &[&y, &s]);
            g.op("Mul", &format!("{name}/WeightScale"), &[&a, &c_name])
        }
    };
    built.layers.push(LayerSpec {
        lossless: None,
        node: mm,
        op: "MatMulNBits".into(),
        output: out.clone(),
        output_scale: None,
        scaled_output: None,
        weight: weights.join(","),
    });
    Ok(out)
}

/// Linear layers whose float weights already are ternary codes times scales (no
/// `quantization_config`): transformers computes `x @ W^T` on float activations, and so does
/// this, exactly but for float summation order: one 2-bit `MatMulNBits` (default
/// `accuracy_level`, float32 compute) on the recovered codes with the recovered scales as its
/// block scales (a scale per tensor or row repeated over the row's blocks, a scale per group
/// of `block_size` one per block).
#[allow(clippy::too_many_arguments)]
fn float_linear(
    ck: &Checkpoint,
    opts: &BuildOptions,
    g: &mut Graph,
    built: &mut Built,
    name: &str,
    x: &str,
    layer: usize,
    parts: &[Proj],
) -> Result<String> {
    let bs = opts.block_size;
    let (mut codes, mut scales) = (Vec::new(), Vec::new());
    let (mut n, mut k) = (0, 0);
    let mut weights = Vec::new();
    for &part in parts {
        let lname = ck.linear_name(layer, part);
        let shape = ck.linear_shape(part);
        let t = ck.float_ternary(&lname, shape, bs)?;
        let wname = format!("{lname}.weight");
        let block_scales = pack::matmulnbits_scales(&t, bs)
            .map_err(|e| BuildError::tensor(&ck.dir, &wname, e.to_string()))?;
        *built
            .float_granularity
            .entry(granularity_name(t.granularity))
            .or_insert(0) += 1;
        built.stored_as_codes += 1;
        built.linear_params += (t.n * t.k) as u64;
        n += t.n;
        k = t.k;
        codes.extend_from_slice(&t.codes);
        scales.extend_from_slice(&block_scales);
        weights.push(wname);
    }
    let nb = k.div_ceil(bs);
    let all = Ternary {
        n,
        k,
        codes,
        granularity: Granularity::Group(bs),
        scales,
        lossless: true,
    };
    let packed = pack::pack_matmulnbits_2bit(&all, bs)
        .map_err(|e| BuildError::tensor(&ck.dir, &weights.join(", "), e.to_string()))?;
    let prefix = weights.join("+").replace(".weight", "");
    let b = g.initializer(tensor::from_raw(
        &format!("{prefix}.qweight"),
        DataType::Uint8,
        &[n as i64, nb as i64, (bs / 4) as i64],
        packed,
    ))?;
    let s = g.initializer(tensor::from_f32(
        &format!("{prefix}.scales"),
        &[n as i64, nb as i64],
        &all.scales,
    ))?;
    let mm = format!("{name}/MatMulNBits");
    let y = g
        .node(
            "MatMulNBits",
            MS,
            &mm,
            &[x, &b, &s],
            1,
            &[
                ("K", Attr::Int(k as i64)),
                ("N", Attr::Int(n as i64)),
                ("bits", Attr::Int(2)),
                ("block_size", Attr::Int(bs as i64)),
            ],
        )
        .remove(0);
    built.layers.push(LayerSpec {
        lossless: Some(true),
        node: mm,
        op: "MatMulNBits".into(),
        output: y.clone(),
        output_scale: None,
        scaled_output: None,
        weight: weights.join(","),
    });
    Ok(y)
}

/// `--kernel bitnet`: the layers reading `x` as one `bitnet.onnx::BitLinear` node, which
/// quantizes the activations itself (the same float operations as the chain above), takes
/// the exact integer product with the weights in `bitnet_ortops::layout` and applies each
/// part's constant in its class's order (`divide`: `y / (s * c)`, else `(y / s) * c`).
#[allow(clippy::too_many_arguments)]
fn bitlinear_op(
    ck: &Checkpoint,
    g: &mut Graph,
    built: &mut Built,
    name: &str,
    x: &str,
    k: usize,
    codes: &[i8],
    groups: &[(usize, f32)],
    divide: bool,
    glu: bool,
    weights: &[String],
) -> Result<String> {
    let n: usize = groups.iter().map(|(c, _)| c).sum();
    let packed = layout::pack(codes, n, k)
        .map_err(|e| BuildError::tensor(&ck.dir, &weights.join(", "), e.to_string()))?;
    let prefix = weights.join("+").replace(".weight", "");
    let w = g.initializer(tensor::from_raw(
        &format!("{prefix}.bitnet_weight"),
        DataType::Uint8,
        &[n as i64, layout::row_bytes(k) as i64],
        packed,
    ))?;
    let scales: Vec<f32> = groups.iter().map(|&(_, c)| c).collect();
    let c = g.initializer(tensor::from_f32(
        &format!("{prefix}.weight_scale"),
        &[groups.len() as i64],
        &scales,
    ))?;
    let node = format!("{name}/BitLinear");
    let out = g
        .node(
            "BitLinear",
            crate::BITNET_DOMAIN,
            &node,
            &[x, &w, &c],
            1,
            &[
                ("K", Attr::Int(k as i64)),
                ("N", Attr::Int(n as i64)),
                (
                    "group_sizes",
                    Attr::Ints(groups.iter().map(|&(c, _)| c as i64).collect()),
                ),
                ("divide", Attr::Int(divide as i64)),
                ("glu", Attr::Int(glu as i64)),
            ],
        )
        .remove(0);
    built.layers.push(LayerSpec {
        lossless: None,
        node,
        op: "BitLinear".into(),
        output: out.clone(),
        output_scale: None,
        scaled_output: None,
        weight: weights.join(","),
    });
    Ok(out)
}

/// How a float-stored ternary weight's scales were found, for the report.
fn granularity_name(g: Granularity) -> String {
    match g {
        Granularity::Tensor => "per tensor".into(),
        Granularity::Channel => "per row".into(),
        Granularity::Group(n) => format!("per group of {n} along the input"),
    }
}

/// Quantizes a `[V, H]` table in blocks along H, reading it a band of rows at a time.
fn quantize_table(
    ck: &Checkpoint,
    name: &str,
    bits: TableBits,
    block_size: usize,
) -> Result<BlockTable> {
    let info = ck.info(name)?.clone();
    let (rows, k) = (info.shape[0], info.shape[1]);
    let failed = std::sync::Mutex::new(None);
    let esize = info.dtype.size();
    let row_info = |r: usize| {
        let mut ri = info.clone();
        ri.shape = vec![k];
        ri.offset = info.offset + (r * k * esize) as u64;
        ri.len = k * esize;
        ri
    };
    let table = blockq::quantize_rows(
        rows,
        k,
        bits,
        block_size,
        TABLE_BAND_ROWS,
        |r, out| match ck.tensors.read_f32(name, &row_info(r)) {
            Ok(v) => out.copy_from_slice(&v),
            Err(e) => {
                let mut f = failed.lock().unwrap_or_else(|p| p.into_inner());
                f.get_or_insert(e);
            }
        },
        |_| {},
    );
    if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    ternary_blocks_exact(ck, name, table, &row_info)
}

/// Rows read to decide whether a table is ternary per block (see [`ternary_blocks_exact`]).
const TERNARY_PROBE_ROWS: usize = 8;

/// A block holding only `{-a, 0, +a}` (a float-stored ternary table, such as Ternary-Bonsai's
/// embedding and tied head) is stored exactly: codes -1/0/+1 with scale `a`, where the table
/// rule's `d = -m / 2^(bits-1)` would round the values of the other sign to
/// `(2^(bits-1) - 1) / 2^(bits-1)` of theirs (measured +0.076% validation loss on the
/// bonsai_unpacked sample with int8 tables). Other blocks keep the table rule. The table is
/// read a second time only when its first rows are ternary in every block; the relative error
/// is recomputed over the whole table.
fn ternary_blocks_exact(
    ck: &Checkpoint,
    name: &str,
    mut t: BlockTable,
    row_info: &(dyn Fn(usize) -> crate::safetensors::TensorInfo + Sync),
) -> Result<BlockTable> {
    let (bs, nb) = (t.block_size, t.blocks());
    // The magnitude of a block that is `{-a, 0, +a}` (`Some(0)` when all zero), else `None`.
    let ternary = |x: &[f32]| -> Option<f32> {
        let mut a = 0f32;
        for &v in x {
            let m = v.abs();
            if m != 0.0 {
                if a == 0.0 {
                    a = m;
                } else if m != a {
                    return None;
                }
            }
        }
        a.is_finite().then_some(a)
    };
    let read = |r: usize| ck.tensors.read_f32(name, &row_info(r));
    for r in 0..t.rows.min(TERNARY_PROBE_ROWS) {
        let row = read(r)?;
        if row.chunks(bs).any(|b| ternary(b).is_none()) {
            return Ok(t);
        }
    }
    let (blob, zp) = (blockq::blob_bytes(bs, t.bits), t.bits.zero_point() as i32);
    let row_bytes = t.row_bytes();
    let bits = t.bits;
    let sums: Vec<Result<(f64, f64)>> = t
        .packed
        .par_chunks_mut(row_bytes)
        .zip(t.scales.par_chunks_mut(nb))
        .enumerate()
        .map(|(r, (p, s))| {
            let row = read(r)?;
            let (mut err, mut norm) = (0f64, 0f64);
            for (b, x) in row.chunks(bs).enumerate() {
                let out = &mut p[b * blob..(b + 1) * blob];
                if let Some(a) = ternary(x).filter(|&a| a > 0.0) {
                    s[b] = a;
                    let code = |v: f32| (zp + (v > 0.0) as i32 - (v < 0.0) as i32) as u8;
                    match bits {
                        TableBits::Int4 => {
                            for (i, o) in out.iter_mut().enumerate() {
                                let at = |j: usize| x.get(j).copied().unwrap_or(0.0);
                                *o = code(at(2 * i)) | (code(at(2 * i + 1)) << 4);
                            }
                        }
                        TableBits::Int8 => {
                            for (i, o) in out.iter_mut().enumerate() {
                                *o = code(x.get(i).copied().unwrap_or(0.0));
                            }
                        }
                    }
                }
                // The block's error as stored (0 for a rewritten block).
                for (i, &v) in x.iter().enumerate() {
                    let code = match bits {
                        TableBits::Int4 => (out[i / 2] >> (4 * (i % 2))) & 0x0f,
                        TableBits::Int8 => out[i],
                    };
                    let e = (v - (code as i32 - zp) as f32 * s[b]) as f64;
                    err += e * e;
                    norm += (v as f64) * (v as f64);
                }
            }
            Ok((err, norm))
        })
        .collect();
    let (mut err, mut norm) = (0f64, 0f64);
    for x in sums {
        let (e, n) = x?;
        err += e;
        norm += n;
    }
    t.rel_error = if norm > 0.0 { (err / norm).sqrt() } else { 0.0 };
    Ok(t)
}

/// Writes a table's codes `[V, blocks, blob]` and scales `[V, blocks]`.
/// The payloads move to the output: `t` keeps its shape and error only.
fn table_tensors(g: &mut Graph, name: &str, t: &mut BlockTable) -> Result<(String, String)> {
    let blob = blockq::blob_bytes(t.block_size, t.bits);
    let nb = t.blocks();
    let q = g.initializer(tensor::from_raw(
        &format!("{name}.{}", t.bits.name()),
        DataType::Uint8,
        &[t.rows as i64, nb as i64, blob as i64],
        std::mem::take(&mut t.packed),
    ))?;
    let scales = std::mem::take(&mut t.scales);
    let s = g.initializer(tensor::from_f32(
        &format!("{name}.{}.scales", t.bits.name()),
        &[t.rows as i64, nb as i64],
        &scales,
    ))?;
    Ok((q, s))
}

fn table_spec(role: &str, node: &str, output: &str, weight: &str, t: &BlockTable) -> TableSpec {
    TableSpec {
        bits: t.bits.name().into(),
        block_size: t.block_size,
        node: node.into(),
        output: output.into(),
        rel_error: t.rel_error,
        role: role.into(),
        weight: weight.into(),
    }
}

/// The embedding lookup: `GatherBlockQuantized` on a 4/8-bit table (the head's when shared),
/// or `Gather` on the float table.
fn embedding(
    ck: &Checkpoint,
    opts: &BuildOptions,
    g: &mut Graph,
    shared: Option<&mut BlockTable>,
    built: &mut Built,
) -> Result<String> {
    let c = &ck.config;
    let wname = ck.embed_name();
    let node = "/model/embed_tokens/GatherBlockQuantized";
    let mut own;
    let table = match (shared, opts.embeddings.bits()) {
        (Some(t), _) => Some(t),
        (None, Some(bits)) => {
            own = quantize_table(ck, wname, bits, opts.table_block_size)?;
            Some(&mut own)
        }
        (None, None) => None,
    };
    let Some(t) = table else {
        let info = ck.info(wname)?;
        let v = ck.tensors.read_f32(wname, info)?;
        let w = g.initializer(tensor::from_f32(
            wname,
            &[c.vocab_size as i64, c.hidden_size as i64],
            &v,
        ))?;
        built.float_embedding = Some(w.clone());
        return Ok(g.op_with(
            "Gather",
            "/model/embed_tokens/Gather",
            &[&w, "input_ids"],
            &[("axis", Attr::Int(0))],
        ));
    };
    let (q, s) = table_tensors(g, wname, t)?;
    if opts.layout == Layout::Web {
        return Ok(web_embedding(g, built, t, &q, &s, c.hidden_size));
    }
    let row_bytes = t.row_bytes() as i64;
    let shape = g.i64s(&[c.vocab_size as i64, row_bytes]);
    let data = g.op("Reshape", "/model/embed_tokens/Reshape", &[&q, &shape]);
    let out = g
        .node(
            "GatherBlockQuantized",
            MS,
            node,
            &[&data, "input_ids", &s],
            1,
            &[
                ("bits", Attr::Int(t.bits.bits() as i64)),
                ("block_size", Attr::Int(t.block_size as i64)),
                ("gather_axis", Attr::Int(0)),
                ("quantize_axis", Attr::Int(1)),
            ],
        )
        .remove(0);
    built
        .tables
        .push(table_spec("embedding", node, &out, wname, t));
    Ok(out)
}

/// The 8-bit embedding of a `--for web` folder in standard ops, since onnxruntime-web's
/// `/webgpu` and `/jspi` bundles (the ones Transformers.js loads in a browser, on either
/// device) have no CPU kernel for `GatherBlockQuantized`: the rows' codes `[B, S, blocks,
/// block]` and their scales `[B, S, blocks]` gathered from the same `[V, blocks, block]`
/// initializer the head's `MatMulNBits` reads, then `(code - 128) * scale`, which is what
/// `GatherBlockQuantized` computes with its default zero point, in the same float32
/// operations. 4-bit codes (two per byte) are refused for web folders by the flag check.
fn web_embedding(
    g: &mut Graph,
    built: &mut Built,
    t: &BlockTable,
    q: &str,
    s: &str,
    hidden: usize,
) -> String {
    let p = "/model/embed_tokens";
    let axis0 = [("axis", Attr::Int(0))];
    let codes = g.op_with(
        "Gather",
        &format!("{p}/GatherCodes"),
        &[q, "input_ids"],
        &axis0,
    );
    let f = g.op_with(
        "Cast",
        &format!("{p}/CastCodes"),
        &[&codes],
        &[("to", Attr::Int(DataType::Float as i64))],
    );
    let zp = g.f32_scalar(f32::from(t.bits.zero_point()));
    let centred = g.op("Sub", &format!("{p}/SubZeroPoint"), &[&f, &zp]);
    let scales = g.op_with(
        "Gather",
        &format!("{p}/GatherScales"),
        &[s, "input_ids"],
        &axis0,
    );
    let last = g.i64s(&[-1]);
    let scales = g.op(
        "Unsqueeze",
        &format!("{p}/UnsqueezeScales"),
        &[&scales, &last],
    );
    let node = format!("{p}/Dequantize");
    let values = g.op("Mul", &node, &[&centred, &scales]);
    let shape = g.i64s(&[0, 0, hidden as i64]);
    let out = g.op("Reshape", &format!("{p}/Reshape"), &[&values, &shape]);
    built.tables.push(table_spec(
        "embedding",
        &node,
        &out,
        "model.embed_tokens.weight",
        t,
    ));
    out
}

/// Whether the head runs as `bitnet.onnx::Q8Linear`: with `--kernel bitnet`, on an 8-bit table
/// in blocks the op takes (multiples of 32 up to its largest). It reads the same codes and
/// scales `MatMulNBits` would (the table the embedding shares) and computes what
/// `MatMulNBits` computes at `accuracy_level` 4 (per-block int8 activations, integer block
/// products) but for the order of its float sums: logits within float rounding of the stock
/// head's. Other tables keep `MatMulNBits`.
fn head_runs_q8(opts: &BuildOptions, t: &BlockTable) -> bool {
    matches!(opts.kernel, Kernel::Bitnet { .. })
        && t.bits == TableBits::Int8
        && t.block_size.is_multiple_of(32)
        && t.block_size <= bitnet_ortops::q8::MAX_BLOCK
}

/// The LM head: 4/8-bit `MatMulNBits` (or `bitnet.onnx::Q8Linear`, see [`head_runs_q8`]), or a
/// float `Gemm` on the `[V, H]` table (no transposed copy of a tied table).
#[allow(clippy::too_many_arguments)]
fn head(
    ck: &Checkpoint,
    opts: &BuildOptions,
    g: &mut Graph,
    x: &str,
    output: &str,
    table: Option<BlockTable>,
    built: &mut Built,
) -> Result<()> {
    let c = &ck.config;
    let wname = ck.head_name();
    let logits = vec![output.to_string()];
    let Some(mut t) = table else {
        built.head_op = "Gemm".into();
        let w = match built
            .float_embedding
            .clone()
            .filter(|_| c.tie_word_embeddings)
        {
            Some(w) => w,
            None => {
                let v = ck.tensors.read_f32(wname, ck.info(wname)?)?;
                g.initializer(tensor::from_f32(
                    wname,
                    &[c.vocab_size as i64, c.hidden_size as i64],
                    &v,
                ))?
            }
        };
        let flat = g.i64s(&[-1, c.hidden_size as i64]);
        let x2 = g.op("Reshape", "/lm_head/Flatten", &[x, &flat]);
        let y = g.op_with(
            "Gemm",
            "/lm_head/Gemm",
            &[&x2, &w],
            &[("transB", Attr::Int(1))],
        );
        let shape = g.op("Shape", "/lm_head/Shape", &[x]);
        let (zero, two) = (g.i64s(&[0]), g.i64s(&[2]));
        let bs = g.op("Slice", "/lm_head/BatchSeq", &[&shape, &zero, &two]);
        let v = g.i64s(&[c.vocab_size as i64]);
        let out_shape = g.op_with(
            "Concat",
            "/lm_head/OutShape",
            &[&bs, &v],
            &[("axis", Attr::Int(0))],
        );
        g.node_to(
            "Reshape",
            "",
            "/lm_head/Reshape",
            &[&y, &out_shape],
            &logits,
            &[],
        );
        return Ok(());
    };
    let (q, s) = if built.table_shared {
        (
            format!("{}.{}", ck.embed_name(), t.bits.name()),
            format!("{}.{}.scales", ck.embed_name(), t.bits.name()),
        )
    } else {
        table_tensors(g, wname, &mut t)?
    };
    let node = if head_runs_q8(opts, &t) {
        let node = "/lm_head/Q8Linear";
        g.node_to(
            "Q8Linear",
            crate::BITNET_DOMAIN,
            node,
            &[x, &q, &s],
            &logits,
            &[
                ("K", Attr::Int(c.hidden_size as i64)),
                ("N", Attr::Int(c.vocab_size as i64)),
                ("block_size", Attr::Int(t.block_size as i64)),
            ],
        );
        built.head_op = "bitnet.onnx::Q8Linear".into();
        node
    } else {
        let node = "/lm_head/MatMulNBits";
        g.node_to(
            "MatMulNBits",
            MS,
            node,
            &[x, &q, &s],
            &logits,
            &[
                ("K", Attr::Int(c.hidden_size as i64)),
                ("N", Attr::Int(c.vocab_size as i64)),
                ("bits", Attr::Int(t.bits.bits() as i64)),
                ("block_size", Attr::Int(t.block_size as i64)),
                ("accuracy_level", Attr::Int(4)),
            ],
        );
        built.head_op = "com.microsoft::MatMulNBits".into();
        node
    };
    built
        .tables
        .push(table_spec("head", node, output, wname, &t));
    Ok(())
}

/// `--logits last`: the hidden state of the one position per sequence whose logits
/// onnxruntime-genai reads, `[batch, 1, hidden]`, and that position `[batch, 1, 1]`. It picks
/// the last token that is not the pad token (docs/formats.md section 4), and so does this:
/// `max(where(input_ids != pad, position, -1), 0)`.
fn last_rows(ck: &Checkpoint, g: &mut Graph, x: &str) -> (String, String, String) {
    let c = &ck.config;
    let p = "/lm_head/last";
    let pad = g.i64_scalar(crate::genai::pad_token_id(c));
    let eq = g.op("Equal", &format!("{p}/IsPad"), &["input_ids", &pad]);
    let real = g.op("Not", &format!("{p}/IsReal"), &[&eq]);
    let shape = g.op("Shape", &format!("{p}/IdsShape"), &["input_ids"]);
    let one = g.i64_scalar(1);
    let zero = g.i64_scalar(0);
    let len = g.op_with(
        "Gather",
        &format!("{p}/SeqLen"),
        &[&shape, &one],
        &[("axis", Attr::Int(0))],
    );
    let pos = g.op("Range", &format!("{p}/Positions"), &[&zero, &len, &one]);
    let none = g.i64_scalar(-1);
    let cand = g.op(
        "Where",
        &format!("{p}/RealPositions"),
        &[&real, &pos, &none],
    );
    let axes = g.i64s(&[1]);
    let last = g.op_with(
        "ReduceMax",
        &format!("{p}/Last"),
        &[&cand, &axes],
        &[("keepdims", Attr::Int(1))],
    );
    let last = g.op("Max", &format!("{p}/AtLeast0"), &[&last, &zero]);
    let two = g.i64s(&[2]);
    let idx = g.op("Unsqueeze", &format!("{p}/Index"), &[&last, &two]);
    let h = g.i64s(&[1, 1, c.hidden_size as i64]);
    let idx_h = g.op("Expand", &format!("{p}/IndexH"), &[&idx, &h]);
    let rows = g.op_with(
        "GatherElements",
        &format!("{p}/Rows"),
        &[x, &idx_h],
        &[("axis", Attr::Int(1))],
    );
    (rows, idx, pos)
}

/// `logits` `[batch, seq, vocab]`: the picked position's row, zeros elsewhere (onnxruntime-genai
/// allocates the output at that shape): `where(position == index, row, 0)`, one pass over
/// the output.
fn scatter_last(g: &mut Graph, rows: &str, idx: &str, positions: &str) {
    let p = "/lm_head/last";
    let shape = g.i64s(&[1, -1, 1]);
    let pos = g.op(
        "Reshape",
        &format!("{p}/PositionsColumn"),
        &[positions, &shape],
    );
    let at = g.op("Equal", &format!("{p}/AtIndex"), &[&pos, idx]);
    let zero = g.f32_scalar(0.0);
    g.node_to(
        "Where",
        "",
        &format!("{p}/Place"),
        &[&at, rows, &zero],
        &["logits".to_string()],
        &[],
    );
}
