//! `--target ort`: ONNX Runtime's `com.microsoft::MatMulNBits` with bits = 2 (docs/formats.md 2.1).
//! `B` is uint8 `[N, ceil(K / block_size), block_size / 4]` (codes `t + 2`, four per byte, least
//! significant bits first, K padded with code 2), `scales` `[N, blocks]` in the activation type,
//! zero points omitted (default 2). Each MatMul/Gemm node is replaced in place by a
//! MatMulNBits node keeping its name and output. Gemm is converted whatever its attributes:
//! `transA` becomes a Transpose, `alpha` is folded into the scales, `beta * C` becomes the bias
//! input when C is a constant vector or scalar, else an Add after the node.
//!
//! The exact-activation layout (`crate::hf::pack_2bit_reserved`, the layout `build` writes):
//! at `accuracy_level` 4 MatMulNBits quantizes its input to int8 again, per block of
//! `block_size` values, with scale `max|a| / 127`. When the input is already BitNet's integer
//! codes (transformers' `BitLinear`: `bitnet::Form::Integer`, the graph divides by
//! `s * weight_scale` after the product) and every block also holds a 127, each block's scale
//! is exactly 1 and that re-quantization is the identity, so the int8 kernel computes the exact
//! integer dot product. For such a weight (unit ternary scales, every layer a plain product:
//! no alpha, bias or transA) each block holds `block_size - 1` codes and a reserved slot of
//! weight 0, the scales are 1, K is `blocks * block_size`, and the input is laid out in the
//! graph to match, `[.., blocks * block_size]` with a 127 per block (from opset 18 a Pad and a
//! Gather, before it Reshapes around two Pads; one laid-out input per value, shared by the
//! layers reading it). Otherwise the plain layout.

use bitnet_model::proto::tensor_proto::DataType;
use bitnet_model::proto::{GraphProto, NodeProto};
use bitnet_model::tensor;

use bitnet_model::node::{attr_f, attr_i};

use super::dq::int_attr;
use super::linear::{self, Bias};
use super::{Edit, EmitContext, EmitError, Emitted, Emitter, NameGen, Patch, WeightJob};
use crate::bitnet;
use crate::hf;
use crate::pack;

pub struct Ort {
    /// Block size along K; `None` picks [`default_block_size`] per weight.
    pub block_size: Option<usize>,
    /// 0: float activations (exact); 4: int8 activations (fast at M = 1).
    pub accuracy_level: i64,
}

/// The default block size: 128 (the fastest in `bench/ort_targets.py` at both M=1 and M=128),
/// but no larger than K rounded up to a power of two (at least 16), so small layers are not
/// padded to twice their size.
pub fn default_block_size(k: usize) -> usize {
    k.next_power_of_two().clamp(16, 128)
}

impl Ort {
    /// Whether `job`'s weight takes the exact-activation layout (module docs): accuracy_level
    /// 4, float32, an opset with Pad's and Slice's input forms (11), unit ternary scales, and
    /// every layer a plain product of BitNet's integer codes.
    fn exact_activations(&self, g: &GraphProto, job: &WeightJob) -> bool {
        self.accuracy_level == 4
            && job.dtype == DataType::Float as i32
            && job.opset >= 11
            && job.ternary.scales.iter().all(|&s| s == 1.0)
            && !job.layers.is_empty()
            && job.layers.iter().enumerate().all(|(i, layer)| {
                let integer = job
                    .activations
                    .get(i)
                    .and_then(Option::as_ref)
                    .is_some_and(|a| a.form == bitnet::Form::Integer);
                integer && plain_product(g, job, layer)
            })
    }
}

/// True when the layer's node is a MatMul, or a Gemm with alpha 1, no transA and no C.
fn plain_product(g: &GraphProto, job: &WeightJob, layer: &crate::analyse::LinearLayer) -> bool {
    let Some(pos) = super::patch::layer_position(g, &layer.output, job.weight) else {
        return false;
    };
    let node = &g.node[pos];
    if layer.op != "Gemm" {
        return true;
    }
    let no_c = node.input.get(2).is_none_or(String::is_empty)
        || attr_f(node, "beta").unwrap_or(1.0) == 0.0;
    attr_f(node, "alpha").unwrap_or(1.0) == 1.0 && attr_i(node, "transA").unwrap_or(0) == 0 && no_c
}

/// The exact-activation rewrite of `job`'s weight (module docs), block size `block`.
fn exact_layout(
    g: &GraphProto,
    job: &WeightJob,
    block: usize,
    names: &mut EmitContext,
) -> Result<Emitted, EmitError> {
    let t = job.ternary;
    // The block sizes MatMulNBits takes (the same rule and error as the plain layout).
    pack::matmulnbits_b_shape(t.n, t.k, block, 2)?;
    let nb = hf::reserved_blocks(t.k, block);
    let b = hf::pack_2bit_reserved(&t.codes, t.n, t.k, block)
        .map_err(|e| EmitError::Layout(e.to_string()))?;
    let mut patch = Patch::default();
    let b_name = patch.weight(tensor::from_raw(
        &names.fresh(&format!("{}_MatMulNBits_B", job.weight)),
        DataType::Uint8,
        &[t.n as i64, nb as i64, (block / 4) as i64],
        b,
    ));
    let scales_name = names.fresh(&format!("{}_MatMulNBits_scales", job.weight));
    patch.weight(tensor::from_f32(
        &scales_name,
        &[t.n as i64, nb as i64],
        &vec![1.0; t.n * nb],
    ));
    for layer in job.layers {
        let lin = linear::take(g, job, layer, names, &mut patch)?;
        let key = (lin.a.clone(), block);
        let a = match names.reserved_inputs.get(&key) {
            Some(a) => a.clone(),
            None => {
                let (a, nodes) = if job.opset >= 18 {
                    gathered_input(&lin.a, t.k, block, &mut names.names, &mut patch)
                } else {
                    reserved_input(&lin.a, t.k, block, &mut names.names, &mut patch)
                };
                // Right after the input's producer, so it precedes every reader (at the
                // start for a graph input).
                patch.edit(Edit::After {
                    value: lin.a.clone(),
                    nodes,
                });
                names.reserved_inputs.insert(key, a.clone());
                a
            }
        };
        let nbits = NodeProto {
            name: lin.node.name.clone(),
            op_type: Some("MatMulNBits".into()),
            domain: Some("com.microsoft".into()),
            input: vec![a, b_name.clone(), scales_name.clone()],
            output: vec![layer.output.clone()],
            attribute: vec![
                int_attr("K", (nb * block) as i64),
                int_attr("N", t.n as i64),
                int_attr("bits", 2),
                int_attr("block_size", block as i64),
                int_attr("accuracy_level", 4),
            ],
            doc_string: lin.node.doc_string.clone(),
            ..Default::default()
        };
        patch.edit(Edit::Replace {
            output: layer.output.clone(),
            weight: job.weight.to_string(),
            nodes: vec![nbits],
        });
    }
    Ok(Emitted {
        patch,
        min_opset: 0,
        ..Default::default()
    })
}

/// `a` (`[.., k]`, any rank) laid out for the reserved blocks in two nodes (opset 18, Pad's
/// `axes`): Pad appends one 127 to the last axis, and Gather along it picks, per block,
/// `block - 1` values of `a` then the 127 (the tail after the last value gets 127 too: its
/// weights are 0, and BitNet's codes are within [-127, 127], so the block's absmax stays 127).
/// Gather copies values: the codes reach MatMulNBits as they are.
fn gathered_input(
    a: &str,
    k: usize,
    block: usize,
    names: &mut NameGen,
    patch: &mut Patch,
) -> (String, Vec<NodeProto>) {
    let base = format!("{a}_reserved{block}");
    let (per, nb) = (block - 1, hf::reserved_blocks(k, block));
    let pads = names.fresh(&format!("{base}_pads"));
    patch.constant(tensor::from_i64(&pads, &[2], &[0, 1]));
    let axes = names.fresh(&format!("{base}_axes"));
    patch.constant(tensor::from_i64(&axes, &[1], &[-1]));
    let c127 = names.fresh(&format!("{base}_127"));
    patch.constant(tensor::from_f32(&c127, &[], &[127.0]));
    let index: Vec<i64> = (0..nb * block)
        .map(|i| {
            let (blk, slot) = (i / block, i % block);
            let j = blk * per + slot;
            if slot == per || j >= k {
                k as i64
            } else {
                j as i64
            }
        })
        .collect();
    let indices = names.fresh(&format!("{base}_indices"));
    patch.constant(tensor::from_i64(&indices, &[index.len() as i64], &index));
    let padded = names.fresh(&format!("{base}_with_127"));
    let out = names.fresh(&format!("{base}_out"));
    let nodes = vec![
        NodeProto {
            name: Some(names.fresh(&format!("{base}_Pad"))),
            op_type: Some("Pad".into()),
            input: vec![a.into(), pads, c127, axes],
            output: vec![padded.clone()],
            ..Default::default()
        },
        NodeProto {
            name: Some(names.fresh(&format!("{base}_Gather"))),
            op_type: Some("Gather".into()),
            input: vec![padded, indices],
            output: vec![out.clone()],
            attribute: vec![int_attr("axis", -1)],
            ..Default::default()
        },
    ];
    (out, nodes)
}

/// Before opset 18 (Pad without `axes`, so the rank must be known): `a` (`[.., k]`, any rank)
/// laid out for the reserved blocks: `[.., nb * block]`, each block
/// `block - 1` values of `a` (the last one padded with 0) and 127. Reshape to `[-1, k]`, Pad
/// to `nb * (block - 1)`, Reshape to `[-1, nb, block - 1]`, Pad one 127 per block, and Reshape
/// to `a`'s leading dimensions (Shape, Slice) and `nb * block`. Every step moves or adds
/// values, none computes: the codes reach MatMulNBits as they are.
fn reserved_input(
    a: &str,
    k: usize,
    block: usize,
    names: &mut NameGen,
    patch: &mut Patch,
) -> (String, Vec<NodeProto>) {
    let base = format!("{a}_reserved{block}");
    let (per, nb) = (block - 1, hf::reserved_blocks(k, block));
    let mut nodes = Vec::new();
    let mut i64s = |names: &mut NameGen, what: &str, v: &[i64]| {
        let n = names.fresh(&format!("{base}_{what}"));
        patch.constant(tensor::from_i64(&n, &[v.len() as i64], v));
        n
    };
    let rows = i64s(names, "rows", &[-1, k as i64]);
    let k_pad = (nb * per > k).then(|| i64s(names, "k_pads", &[0, 0, 0, (nb * per - k) as i64]));
    let blocks = i64s(names, "blocks", &[-1, nb as i64, per as i64]);
    let slot = i64s(names, "slot_pads", &[0, 0, 0, 0, 0, 1]);
    let flat = i64s(names, "flat", &[-1, (nb * block) as i64]);
    let start = i64s(names, "start", &[0]);
    let end = i64s(names, "end", &[-1]);
    let k_new = i64s(names, "k", &[(nb * block) as i64]);
    let c127 = names.fresh(&format!("{base}_127"));
    patch.constant(tensor::from_f32(&c127, &[], &[127.0]));
    let mut step = |names: &mut NameGen, op: &str, what: &str, input: Vec<String>| {
        let out = names.fresh(&format!("{base}_{what}"));
        let attribute = if op == "Concat" {
            vec![int_attr("axis", 0)]
        } else {
            vec![]
        };
        nodes.push(NodeProto {
            name: Some(names.fresh(&format!("{base}_{op}"))),
            op_type: Some(op.into()),
            input,
            output: vec![out.clone()],
            attribute,
            ..Default::default()
        });
        out
    };
    let mut x = step(names, "Reshape", "rows", vec![a.into(), rows]);
    if let Some(k_pad) = k_pad {
        x = step(names, "Pad", "k_padded", vec![x, k_pad]);
    }
    let x = step(names, "Reshape", "blocks", vec![x, blocks]);
    let x = step(names, "Pad", "slots", vec![x, slot, c127]);
    let x = step(names, "Reshape", "flat", vec![x, flat]);
    let shape = step(names, "Shape", "shape", vec![a.into()]);
    let lead = step(names, "Slice", "lead", vec![shape, start, end]);
    let out_shape = step(names, "Concat", "out_shape", vec![lead, k_new]);
    let out = step(names, "Reshape", "out", vec![x, out_shape]);
    (out, nodes)
}

impl Emitter for Ort {
    fn target(&self) -> &'static crate::targets::Target {
        crate::targets::get(crate::targets::Id::Ort)
    }

    fn dequantize_linear_weights(&self) -> bool {
        false
    }

    fn activations(&self) -> String {
        if self.accuracy_level == 4 {
            "int8, quantized by MatMulNBits per block of K (accuracy_level 4)".to_string()
        } else {
            format!("float (MatMulNBits accuracy_level {})", self.accuracy_level)
        }
    }

    fn emit(
        &self,
        g: &GraphProto,
        job: &WeightJob,
        names: &mut EmitContext,
    ) -> Result<Emitted, EmitError> {
        let t = job.ternary;
        if job.dtype == DataType::Bfloat16 as i32 {
            return Err(EmitError::ElementType {
                dtype: "bfloat16",
                why: "ONNX Runtime's CPU MatMulNBits has no bfloat16 kernel; use --target qdq-int8",
            });
        }
        let block = self.block_size.unwrap_or_else(|| default_block_size(t.k));
        if self.exact_activations(g, job) {
            return exact_layout(g, job, block, names);
        }
        let b = pack::pack_matmulnbits_2bit(t, block)?;
        let b_shape = pack::matmulnbits_b_shape(t.n, t.k, block, 2)?;
        let base_scales = pack::matmulnbits_scales(t, block)?;
        let s_shape = pack::matmulnbits_scales_shape(t.n, t.k, block)?;
        let mut patch = Patch::default();
        let b_name = patch.weight(tensor::from_raw(
            &names.fresh(&format!("{}_MatMulNBits_B", job.weight)),
            DataType::Uint8,
            &b_shape.map(|d| d as i64),
            b,
        ));
        let mut scale_names: Vec<(u32, String)> = Vec::new();
        for layer in job.layers {
            let lin = linear::take(g, job, layer, names, &mut patch)?;
            // Scales (alpha folded in), shared by layers with the same alpha.
            let key = lin.alpha.to_bits();
            let scales_name = match scale_names.iter().find(|(k, _)| *k == key) {
                Some((_, n)) => n.clone(),
                None => {
                    let n = names.fresh(&format!("{}_MatMulNBits_scales", job.weight));
                    let vals: Vec<f32> = base_scales.iter().map(|s| s * lin.alpha).collect();
                    patch.weight(tensor::from_f32_as(
                        &n,
                        job.dtype,
                        &s_shape.map(|d| d as i64),
                        &vals,
                    ));
                    scale_names.push((key, n.clone()));
                    n
                }
            };
            let mut inputs = vec![lin.a.clone(), b_name.clone(), scales_name];
            let mut output = layer.output.clone();
            let mut after = Vec::new();
            match &lin.bias {
                Bias::None => {}
                // The bias input (index 5), after the absent zero points and g_idx.
                Bias::Vector(v) => {
                    let bn = names.fresh(&format!("{}_bias", lin.node.input[2]));
                    patch.constant(tensor::from_f32_as(&bn, job.dtype, &[t.n as i64], v));
                    inputs.extend([String::new(), String::new(), bn]);
                }
                // Matrix or run-time C: Y = MatMulNBits(...) + beta * C.
                Bias::Value(c) => {
                    let mm_out = names.fresh(&format!("{}_matmul", layer.output));
                    after.push(NodeProto {
                        name: Some(names.fresh(&format!("{}_AddC", layer.node))),
                        op_type: Some("Add".into()),
                        input: vec![mm_out.clone(), c.clone()],
                        output: vec![layer.output.clone()],
                        ..Default::default()
                    });
                    output = mm_out;
                }
            }
            let mut attribute = vec![
                int_attr("K", t.k as i64),
                int_attr("N", t.n as i64),
                int_attr("bits", 2),
                int_attr("block_size", block as i64),
            ];
            if self.accuracy_level != 0 {
                attribute.push(int_attr("accuracy_level", self.accuracy_level));
            }
            let nbits = NodeProto {
                name: lin.node.name.clone(),
                op_type: Some("MatMulNBits".into()),
                domain: Some("com.microsoft".into()),
                input: inputs,
                output: vec![output],
                attribute,
                doc_string: lin.node.doc_string.clone(),
                ..Default::default()
            };
            let mut replacement = lin.before;
            replacement.push(nbits);
            replacement.extend(after);
            patch.edit(Edit::Replace {
                output: layer.output.clone(),
                weight: job.weight.to_string(),
                nodes: replacement,
            });
        }
        Ok(Emitted {
            patch,
            min_opset: 0,
            ..Default::default()
        })
    }

    /// transformers' `BitLinear` hands the matmul the int8 codes as floats and divides the
    /// product by `s * weight_scale` after it: with that graph's weight (unit ternary codes)
    /// the MatMulNBits product is the codes' integer product (exact in float32 at
    /// accuracy_level 0; re-quantized per block at 4), and the graph's own division stays, so
    /// the scale is applied in the original's order instead of rounding inside the kernel.
    fn keeps_output_scale(&self, dtype: i32, activations: &[Option<bitnet::ActQuant>]) -> bool {
        dtype == DataType::Float as i32
            && !activations.is_empty()
            && activations
                .iter()
                .all(|a| a.as_ref().is_some_and(|a| a.form == bitnet::Form::Integer))
    }

    fn domains(&self) -> &'static [(&'static str, i64)] {
        &[("com.microsoft", 1)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emit::patch::Role;
    use crate::emit::testing::{
        emit_err, f16s, f32s, float_attr, gemm, init, inputs, int_attrs, matmul,
        matmulnbits_2bit_ref, node, ops, raw, run, run_in, shared, ternary, two_weights, Gemm, Job,
        C,
    };
    use crate::quant::Granularity;

    const ORT: Ort = Ort {
        block_size: None,
        accuracy_level: 0,
    };

    fn nbits_attrs(k: i64, n: i64, block: i64) -> Vec<(&'static str, Option<i64>)> {
        vec![
            ("K", Some(k)),
            ("N", Some(n)),
            ("bits", Some(2)),
            ("block_size", Some(block)),
        ]
    }

    #[test]
    fn bitlinears_output_scale_stays_and_autobitlinears_is_folded() {
        let act = |form| {
            Some(bitnet::ActQuant {
                x: "x".into(),
                scale: "s".into(),
                codes: "q".into(),
                form,
                between: vec![],
            })
        };
        let f32 = DataType::Float as i32;
        // BitLinear: the integer codes reach MatMulNBits, the graph's `/ (s * c)` stays.
        assert!(ORT.keeps_output_scale(f32, &[act(bitnet::Form::Integer)]));
        // AutoBitLinear (`q / s` is what MatMulNBits reads), a layer without BitNet's
        // quantization, float16: folded as before.
        assert!(!ORT.keeps_output_scale(f32, &[act(bitnet::Form::Dequantized)]));
        assert!(!ORT.keeps_output_scale(f32, &[act(bitnet::Form::Integer), None]));
        assert!(!ORT.keeps_output_scale(DataType::Float16 as i32, &[act(bitnet::Form::Integer)]));
        assert!(!ORT.keeps_output_scale(f32, &[]));
    }

    /// BitLinear's activation (the graph's integer codes) for every layer of `job`.
    fn integer_activations(job: &mut Job) {
        job.activations = vec![
            Some(bitnet::ActQuant {
                x: "x0".into(),
                scale: "s".into(),
                codes: "x".into(),
                form: bitnet::Form::Integer,
                between: vec![],
            });
            job.layers.len()
        ];
    }

    /// A ternary weight with unit scales (BitLinear's codes), codes `-1, 0, 1, ..`.
    fn unit(n: usize, k: usize) -> crate::quant::Ternary {
        crate::quant::Ternary {
            scales: vec![1.0],
            ..ternary(n, k, Granularity::Tensor)
        }
    }

    const EXACT: Ort = Ort {
        block_size: Some(16),
        accuracy_level: 4,
    };

    #[test]
    fn bitlinears_codes_get_the_exact_activation_layout() {
        let g = matmul(40, 3);
        let t = unit(3, 40);
        let mut job = Job::new(&g, "W", t.clone());
        integer_activations(&mut job);
        let (out, bytes, _) = run(&EXACT, &g, &job).unwrap();
        // 15 weights per block of 16: K = 40 in 3 blocks. B [3, 3, 4] (36 bytes), unit
        // scales [3, 3] (36 bytes).
        assert_eq!(bytes, 36 + 36);
        let b = init(&out, "W_MatMulNBits_B");
        assert_eq!(b.dims, [3, 3, 4]);
        // Written from the layout's description: block j holds weights 15j..15j+15, then
        // the reserved slot and the tail are weight 0 (code 2).
        let mut want = Vec::new();
        for row in t.codes.chunks(40) {
            let q: Vec<u8> = (0..48)
                .map(|i| {
                    let (blk, slot) = (i / 16, i % 16);
                    let j = blk * 15 + slot;
                    if slot == 15 || j >= 40 {
                        2
                    } else {
                        (row[j] + 2) as u8
                    }
                })
                .collect();
            want.extend(
                q.chunks(4)
                    .map(|b| b[0] | b[1] << 2 | b[2] << 4 | b[3] << 6),
            );
        }
        assert_eq!(raw(b), want);
        let s = init(&out, "W_MatMulNBits_scales");
        assert_eq!((s.dims.clone(), f32s(s)), (vec![3, 3], vec![1.0; 9]));
        assert_eq!(
            ops(&out),
            [
                "Reshape",
                "Pad",
                "Reshape",
                "Pad",
                "Reshape",
                "Shape",
                "Slice",
                "Concat",
                "Reshape",
                "MatMulNBits"
            ]
        );
        let mm = out.node.last().unwrap();
        assert_eq!(mm.name.as_deref(), Some("mm"));
        assert_eq!(mm.output, ["y"]);
        assert_eq!(inputs(mm)[1..], ["W_MatMulNBits_B", "W_MatMulNBits_scales"]);
        let mut attrs = nbits_attrs(48, 3, 16);
        attrs.push(("accuracy_level", Some(4)));
        assert_eq!(int_attrs(mm), attrs);

        // The padded input, evaluated on a rank-3 x: [2, 3, 40] -> [2, 3, 48], each block 15
        // values of x (then zeros) and 127.
        let (x, got) = padded_input_on_rank_3_x(&out, mm);
        let want: Vec<f32> = x
            .chunks(40)
            .flat_map(|row| {
                (0..48).map(move |i| {
                    let (blk, slot) = (i / 16, i % 16);
                    let j = blk * 15 + slot;
                    match () {
                        _ if slot == 15 => 127.0,
                        _ if j >= 40 => 0.0,
                        _ => row[j],
                    }
                })
            })
            .collect();
        assert_eq!(got, want);
    }

    /// The MatMulNBits `mm`'s input in `out`, evaluated by the constant folder with `x` a
    /// rank-3 `[2, 3, 40]` initializer; returns `x` and the `[2, 3, 48]` result.
    fn padded_input_on_rank_3_x(out: &GraphProto, mm: &NodeProto) -> (Vec<f32>, Vec<f32>) {
        let padded = inputs(mm)[0].to_string();
        let mut with_x = out.clone();
        with_x.input.clear();
        let x: Vec<f32> = (0..240).map(|i| (i % 255) as f32 - 127.0).collect();
        with_x
            .initializer
            .push(tensor::from_f32("x", &[2, 3, 40], &x));
        let index = bitnet_model::graph::GraphIndex::new(&with_x);
        let got = crate::fold::Folder::new(&index, std::path::Path::new(""))
            .eval(&padded)
            .unwrap();
        assert_eq!(got.dims, [2, 3, 48]);
        (x, got.f32())
    }

    #[test]
    fn from_opset_18_the_input_is_padded_and_gathered() {
        let g = matmul(40, 3);
        let mut job = Job::new(&g, "W", unit(3, 40));
        integer_activations(&mut job);
        job.opset = 18;
        let (out, _, _) = run(&EXACT, &g, &job).unwrap();
        assert_eq!(ops(&out), ["Pad", "Gather", "MatMulNBits"]);
        let mm = out.node.last().unwrap();
        let mut attrs = nbits_attrs(48, 3, 16);
        attrs.push(("accuracy_level", Some(4)));
        assert_eq!(int_attrs(mm), attrs);
        // On a rank-3 x: each block 15 values of x and 127 (127 in the tail too).
        let (x, got) = padded_input_on_rank_3_x(&out, mm);
        let want: Vec<f32> = x
            .chunks(40)
            .flat_map(|row| {
                (0..48).map(move |i| {
                    let j = i / 16 * 15 + i % 16;
                    if i % 16 == 15 || j >= 40 {
                        127.0
                    } else {
                        row[j]
                    }
                })
            })
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn layers_reading_one_value_share_its_padded_input() {
        // Two layers of one weight, then a second weight reading the same value.
        let g = shared(30, 3);
        let mut job = Job::new(&g, "W", unit(3, 30));
        integer_activations(&mut job);
        let (out, _, _) = run(&EXACT, &g, &job).unwrap();
        let nbits: Vec<_> = out
            .node
            .iter()
            .filter(|n| n.op_type.as_deref() == Some("MatMulNBits"))
            .collect();
        assert_eq!(nbits.len(), 2);
        assert_eq!(inputs(nbits[0])[0], inputs(nbits[1])[0]);
        // K = 30 is two whole blocks of 15: no padding of K.
        assert_eq!(ops(&out).iter().filter(|o| **o == "Pad").count(), 1);

        let g = two_weights(30, 3);
        let mut cx = EmitContext::new(&g);
        let mut q = Job::new(&g, "Wq", unit(3, 30));
        integer_activations(&mut q);
        let (g, _, _) = run_in(&EXACT, &g, &q, &mut cx).unwrap();
        let mut k = Job::new(&g, "Wk", unit(3, 30));
        integer_activations(&mut k);
        let (out, _, _) = run_in(&EXACT, &g, &k, &mut cx).unwrap();
        let reading: Vec<_> = out
            .node
            .iter()
            .filter(|n| n.op_type.as_deref() == Some("MatMulNBits"))
            .map(|n| inputs(n)[0].to_string())
            .collect();
        assert_eq!(reading.len(), 2);
        assert_eq!(reading[0], reading[1]);
        assert_eq!(ops(&out).iter().filter(|o| **o == "Shape").count(), 1);
    }

    #[test]
    fn other_layers_keep_the_plain_layout() {
        let plain = |out: &GraphProto| {
            ops(out) == ["MatMulNBits"]
                && inputs(&out.node[0])[0] == "x"
                && int_attrs(&out.node[0])[0] == ("K", Some(40))
        };
        let g = matmul(40, 3);
        let exact = |job: &Job, ort: &Ort| !plain(&run(ort, &g, job).unwrap().0);
        let mut job = Job::new(&g, "W", unit(3, 40));
        integer_activations(&mut job);
        assert!(exact(&job, &EXACT));
        // accuracy_level 0 computes in float: exact already.
        let level0 = Ort {
            block_size: Some(16),
            accuracy_level: 0,
        };
        assert!(!exact(&job, &level0));
        // Scales other than 1 (the graph's codes are not the weight's integers).
        let mut scaled = Job::new(&g, "W", ternary(3, 40, Granularity::Tensor));
        scaled.activations = job.activations.clone();
        assert!(!exact(&scaled, &EXACT));
        // AutoBitLinear's `q / s`, or no BitNet quantization found.
        let mut deq = Job::new(&g, "W", unit(3, 40));
        integer_activations(&mut deq);
        if let Some(a) = deq.activations[0].as_mut() {
            a.form = bitnet::Form::Dequantized;
        }
        assert!(!exact(&deq, &EXACT));
        assert!(!exact(&Job::new(&g, "W", unit(3, 40)), &EXACT));
        // An opset without Pad's input form, float16.
        let mut old = Job::new(&g, "W", unit(3, 40));
        integer_activations(&mut old);
        old.opset = 10;
        assert!(!exact(&old, &EXACT));
        let mut half = Job::new(&g, "W", unit(3, 40));
        integer_activations(&mut half);
        half.dtype = DataType::Float16 as i32;
        assert!(!exact(&half, &EXACT));
        // Gemm with alpha, transA or a bias.
        for spec in [
            Gemm {
                alpha: Some(2.0),
                ..Gemm::default()
            },
            Gemm {
                trans_a: true,
                ..Gemm::default()
            },
            Gemm {
                c: C::Const(vec![3], vec![1.0, 2.0, 3.0]),
                ..Gemm::default()
            },
        ] {
            let g = gemm(40, 3, &spec);
            let mut job = Job::new(&g, "W", unit(3, 40));
            integer_activations(&mut job);
            let out = run(&EXACT, &g, &job).unwrap().0;
            assert!(!ops(&out).contains(&"Reshape"), "{spec:?}: {:?}", ops(&out));
        }
        let g = gemm(40, 3, &Gemm::default());
        let mut job = Job::new(&g, "W", unit(3, 40));
        integer_activations(&mut job);
        let out = run(&EXACT, &g, &job).unwrap().0;
        assert_eq!(ops(&out).last(), Some(&"MatMulNBits"));
        assert!(ops(&out).contains(&"Reshape"));
    }

    #[test]
    fn default_block_size_is_k_rounded_up_within_16_and_128() {
        assert_eq!(default_block_size(1), 16);
        assert_eq!(default_block_size(8), 16);
        assert_eq!(default_block_size(40), 64);
        assert_eq!(default_block_size(64), 64);
        assert_eq!(default_block_size(2560), 128);
    }

    #[test]
    fn matmul_is_replaced_by_matmulnbits_with_its_name_and_output() {
        let g = matmul(8, 3);
        let t = ternary(3, 8, Granularity::Channel);
        let (out, bytes, em) = run(&ORT, &g, &Job::new(&g, "W", t.clone())).unwrap();
        // B: uint8 [N, ceil(K / 16), 16 / 4] = [3, 1, 4]; scales [N, blocks] = [3, 1].
        let roles: Vec<_> = em
            .patch
            .tensors
            .iter()
            .map(|t| {
                (
                    t.tensor.name.as_deref().unwrap(),
                    t.role,
                    t.tensor.dims.clone(),
                )
            })
            .collect();
        assert_eq!(
            roles,
            [
                ("W_MatMulNBits_B", Role::Weight, vec![3, 1, 4]),
                ("W_MatMulNBits_scales", Role::Weight, vec![3, 1]),
            ]
        );
        assert_eq!(bytes, 12 + 12);
        let b = init(&out, "W_MatMulNBits_B");
        assert_eq!(b.data_type, Some(DataType::Uint8 as i32));
        // Row 0 holds codes -1 0 1 -1 0 1 -1 0, stored t + 2 low bits first, padded with 2.
        assert_eq!(raw(b)[..4], [0x79, 0x9E, 0xAA, 0xAA]);
        assert_eq!(raw(b), matmulnbits_2bit_ref(&t, 16));
        assert_eq!(f32s(init(&out, "W_MatMulNBits_scales")), [1.0, 2.0, 3.0]);
        assert_eq!(em.patch.edits.len(), 1);
        assert!(matches!(
            &em.patch.edits[0],
            Edit::Replace { output, weight, nodes } if output == "y" && weight == "W" && nodes.len() == 1
        ));
        assert_eq!(out.node.len(), 1);
        let n = &out.node[0];
        assert_eq!(n.name.as_deref(), Some("mm"));
        assert_eq!(n.op_type.as_deref(), Some("MatMulNBits"));
        assert_eq!(n.domain.as_deref(), Some("com.microsoft"));
        assert_eq!(inputs(n), ["x", "W_MatMulNBits_B", "W_MatMulNBits_scales"]);
        assert_eq!(n.output, ["y"]);
        assert_eq!(int_attrs(n), nbits_attrs(8, 3, 16));
        assert_eq!(em.min_opset, 0);
        assert!(em.absorbed.is_empty() && em.removable.is_empty());
    }

    #[test]
    fn block_size_and_accuracy_level_are_written() {
        let g = matmul(40, 3);
        let t = ternary(3, 40, Granularity::Tensor);
        let ort = Ort {
            block_size: Some(32),
            accuracy_level: 4,
        };
        let (out, bytes, _) = run(&ort, &g, &Job::new(&g, "W", t.clone())).unwrap();
        // K = 40 in two blocks of 32: B [3, 2, 8] (48 bytes), scales [3, 2] (24 bytes).
        assert_eq!(bytes, 48 + 24);
        let b = init(&out, "W_MatMulNBits_B");
        assert_eq!(b.dims, [3, 2, 8]);
        assert_eq!(raw(b), matmulnbits_2bit_ref(&t, 32));
        // Bytes 10..16 of each row are padding only (K positions 40..64).
        assert!(raw(b)[10..16].iter().all(|&x| x == 0xAA));
        let s = init(&out, "W_MatMulNBits_scales");
        assert_eq!(s.dims, [3, 2]);
        assert_eq!(f32s(s), [0.5; 6]);
        let mut want = nbits_attrs(40, 3, 32);
        want.push(("accuracy_level", Some(4)));
        assert_eq!(int_attrs(&out.node[0]), want);
    }

    #[test]
    fn a_block_size_matmulnbits_cannot_take_is_refused() {
        let g = matmul(8, 3);
        let ort = Ort {
            block_size: Some(24),
            accuracy_level: 0,
        };
        let e = emit_err(
            &ort,
            &g,
            &Job::new(&g, "W", ternary(3, 8, Granularity::Channel)),
        );
        assert!(
            matches!(e, EmitError::Pack(pack::PackError::InvalidBlockSize(24))),
            "{e:?}"
        );
    }

    #[test]
    fn gemm_alpha_is_folded_into_the_scales() {
        let spec = Gemm {
            alpha: Some(2.0),
            ..Gemm::default()
        };
        let g = gemm(8, 3, &spec);
        let t = ternary(3, 8, Granularity::Channel);
        let (out, bytes, _) = run(&ORT, &g, &Job::new(&g, "W", t.clone())).unwrap();
        assert_eq!(bytes, 24);
        assert_eq!(f32s(init(&out, "W_MatMulNBits_scales")), [2.0, 4.0, 6.0]);
        // transB = 1 stores the codes [N, K] as they are: B is the same as for MatMul.
        assert_eq!(
            raw(init(&out, "W_MatMulNBits_B")),
            matmulnbits_2bit_ref(&t, 16)
        );
        assert_eq!(ops(&out), ["MatMulNBits"]);
        let n = &out.node[0];
        assert_eq!(n.name.as_deref(), Some("gemm"));
        assert_eq!(inputs(n), ["x", "W_MatMulNBits_B", "W_MatMulNBits_scales"]);
        assert_eq!(int_attrs(n), nbits_attrs(8, 3, 16));
    }

    #[test]
    fn layers_sharing_a_weight_share_b_and_scales_per_alpha() {
        let g = shared(8, 3);
        let (out, bytes, em) = run(
            &ORT,
            &g,
            &Job::new(&g, "W", ternary(3, 8, Granularity::Channel)),
        )
        .unwrap();
        assert_eq!(em.patch.tensors.len(), 2);
        assert_eq!(em.patch.edits.len(), 2);
        assert_eq!(bytes, 24);
        for (n, y) in out.node.iter().zip(["y0", "y1"]) {
            assert_eq!(n.op_type.as_deref(), Some("MatMulNBits"));
            assert_eq!(inputs(n), ["x", "W_MatMulNBits_B", "W_MatMulNBits_scales"]);
            assert_eq!(n.output, [y]);
        }
        // A second Gemm on the same weight with another alpha gets its own scales.
        let mut g = gemm(8, 3, &Gemm::default());
        let mut g2 = node("gemm2", "Gemm", &["x", "W"], &["y2"]);
        g2.attribute = vec![int_attr("transB", 1), float_attr("alpha", 3.0)];
        g.node.push(g2);
        let (out, bytes, _) = run(
            &ORT,
            &g,
            &Job::new(&g, "W", ternary(3, 8, Granularity::Channel)),
        )
        .unwrap();
        assert_eq!(bytes, 12 + 12 + 12);
        assert_eq!(f32s(init(&out, "W_MatMulNBits_scales")), [1.0, 2.0, 3.0]);
        assert_eq!(f32s(init(&out, "W_MatMulNBits_scales_2")), [3.0, 6.0, 9.0]);
        assert_eq!(inputs(&out.node[1])[2], "W_MatMulNBits_scales_2");
    }

    #[test]
    fn a_bias_vector_goes_to_input_5() {
        let spec = Gemm {
            beta: Some(0.5),
            c: C::Const(vec![3], vec![1.0, 2.0, 3.0]),
            ..Gemm::default()
        };
        let g = gemm(8, 3, &spec);
        let (out, bytes, em) = run(
            &ORT,
            &g,
            &Job::new(&g, "W", ternary(3, 8, Granularity::Tensor)),
        )
        .unwrap();
        // The bias is not the weight's.
        assert_eq!(bytes, 12 + 12);
        assert_eq!(
            em.patch.tensor("C_bias").map(|t| t.role),
            Some(Role::Constant)
        );
        assert_eq!(f32s(init(&out, "C_bias")), [0.5, 1.0, 1.5]);
        assert_eq!(init(&out, "C_bias").dims, [3]);
        assert_eq!(ops(&out), ["MatMulNBits"]);
        assert_eq!(
            inputs(&out.node[0]),
            [
                "x",
                "W_MatMulNBits_B",
                "W_MatMulNBits_scales",
                "",
                "",
                "C_bias"
            ]
        );
        assert_eq!(out.node[0].output, ["y"]);
    }

    #[test]
    fn a_scalar_or_row_c_is_broadcast_to_a_bias_vector() {
        for (dims, values, want) in [
            (vec![], vec![4.0], [4.0, 4.0, 4.0]),
            (vec![1, 3], vec![1.0, -1.0, 2.0], [1.0, -1.0, 2.0]),
        ] {
            let spec = Gemm {
                c: C::Const(dims.clone(), values),
                ..Gemm::default()
            };
            let g = gemm(8, 3, &spec);
            let (out, _, _) = run(
                &ORT,
                &g,
                &Job::new(&g, "W", ternary(3, 8, Granularity::Tensor)),
            )
            .unwrap();
            assert_eq!(f32s(init(&out, "C_bias")), want, "C {dims:?}");
            assert_eq!(inputs(&out.node[0])[5], "C_bias");
        }
    }

    #[test]
    fn a_matrix_c_becomes_an_add_after() {
        let spec = Gemm {
            c: C::Const(vec![2, 3], vec![1.0; 6]),
            ..Gemm::default()
        };
        let g = gemm(8, 3, &spec);
        let (out, bytes, em) = run(
            &ORT,
            &g,
            &Job::new(&g, "W", ternary(3, 8, Granularity::Tensor)),
        )
        .unwrap();
        assert_eq!(bytes, 24);
        assert_eq!(em.patch.tensors.len(), 2);
        assert_eq!(ops(&out), ["MatMulNBits", "Add"]);
        assert_eq!(out.node[0].name.as_deref(), Some("gemm"));
        assert_eq!(inputs(&out.node[0]).len(), 3);
        assert_eq!(out.node[0].output, ["y_matmul"]);
        assert_eq!(out.node[1].name.as_deref(), Some("gemm_AddC"));
        assert_eq!(inputs(&out.node[1]), ["y_matmul", "C"]);
        assert_eq!(out.node[1].output, ["y"]);
    }

    #[test]
    fn a_run_time_c_with_beta_is_scaled_before_and_added_after() {
        let spec = Gemm {
            beta: Some(2.0),
            c: C::Input,
            ..Gemm::default()
        };
        let g = gemm(8, 3, &spec);
        let (out, bytes, em) = run(
            &ORT,
            &g,
            &Job::new(&g, "W", ternary(3, 8, Granularity::Tensor)),
        )
        .unwrap();
        assert_eq!(bytes, 24);
        assert_eq!(
            em.patch.tensor("gemm_beta").map(|t| t.role),
            Some(Role::Constant)
        );
        assert_eq!(f32s(init(&out, "gemm_beta")), [2.0]);
        assert_eq!(ops(&out), ["Mul", "MatMulNBits", "Add"]);
        assert_eq!(out.node[0].name.as_deref(), Some("gemm_MulBeta"));
        assert_eq!(inputs(&out.node[0]), ["C", "gemm_beta"]);
        assert_eq!(out.node[0].output, ["C_scaled"]);
        assert_eq!(out.node[1].output, ["y_matmul"]);
        assert_eq!(inputs(&out.node[2]), ["y_matmul", "C_scaled"]);
        assert_eq!(out.node[2].output, ["y"]);
    }

    #[test]
    fn trans_a_becomes_a_transpose_before() {
        let spec = Gemm {
            trans_a: true,
            ..Gemm::default()
        };
        let g = gemm(8, 3, &spec);
        let (out, _, _) = run(
            &ORT,
            &g,
            &Job::new(&g, "W", ternary(3, 8, Granularity::Tensor)),
        )
        .unwrap();
        assert_eq!(ops(&out), ["Transpose", "MatMulNBits"]);
        let tr = &out.node[0];
        assert_eq!(tr.name.as_deref(), Some("gemm_TransposeA"));
        assert_eq!(
            (inputs(tr), tr.output.clone()),
            (vec!["x"], vec!["x_transposed".to_string()])
        );
        assert!(tr.attribute.is_empty(), "default perm reverses the 2-D A");
        assert_eq!(inputs(&out.node[1])[0], "x_transposed");
        assert_eq!(out.node[1].output, ["y"]);
    }

    #[test]
    fn float16_scales_and_bias_are_float16() {
        let spec = Gemm {
            c: C::Const(vec![3], vec![1.0, 2.0, 3.0]),
            ..Gemm::default()
        };
        let g = gemm(8, 3, &spec);
        let mut job = Job::new(&g, "W", ternary(3, 8, Granularity::Channel));
        job.dtype = DataType::Float16 as i32;
        let (out, bytes, _) = run(&ORT, &g, &job).unwrap();
        // B 12 bytes, scales [3, 1] float16 6 bytes.
        assert_eq!(bytes, 12 + 6);
        assert_eq!(f16s(init(&out, "W_MatMulNBits_scales")), [1.0, 2.0, 3.0]);
        assert_eq!(f16s(init(&out, "C_bias")), [1.0, 2.0, 3.0]);
    }

    #[test]
    fn bfloat16_is_refused() {
        let g = matmul(8, 3);
        let mut job = Job::new(&g, "W", ternary(3, 8, Granularity::Channel));
        job.dtype = DataType::Bfloat16 as i32;
        let e = emit_err(&ORT, &g, &job);
        assert!(
            matches!(
                e,
                EmitError::ElementType {
                    dtype: "bfloat16",
                    ..
                }
            ),
            "{e:?}"
        );
    }
}
