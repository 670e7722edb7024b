//! `--target ort-int8`: BitNet b1.58 W1.58A8 as ONNX Runtime runs it fastest at every batch
//! size (docs/formats.md 1.5 and 2.4). Weights are INT8 ternary codes `[K, N]`; activations are
//! quantized per token exactly as BitNet defines it, `s = 127 / max(|x|)` over the last axis
//! (max clamped below at 1e-5), `x_q = clamp(round(x * s), -128, 127)`, and shifted by +128 into
//! uint8 so that `MatMulInteger` with `a_zero_point = 128` takes ONNX Runtime's fast u8s8
//! kernels. The int32 product is rescaled by the weight scales (Gemm's `alpha` folded in) and
//! divided by `s`:
//!
//! ```text
//! x --Abs--ReduceMax(-1)--Max(1e-5)--> m ;  s = 127 / m
//! x * s --Round--Add(128)--Clip(0, 255)--Cast(uint8)--> x_u8
//! y = Cast<float>(MatMulInteger(x_u8, codes, 128)) * scale / s  [+ beta * C]
//! ```
//!
//! One activation quantization is shared by every converted layer reading the same value
//! (attention's q/k/v projections). float16 activations are computed in float32 inside the
//! chain (int32 sums overflow float16) and cast back. Scales must be per tensor or per channel:
//! the int32 sum runs over all of K, so a per-group scale cannot be applied after it.
//! A model that already quantizes the layer's input as BitNet does (transformers'
//! `AutoBitLinear`: `a = q / s`; `BitLinear`: `a = float(int8(q))`, see `crate::bitnet`) is not
//! quantized a second time: its codes `q` are shifted into uint8 as they are, and the exact
//! int32 product is divided by the graph's `s` then multiplied by the weight scale
//! (AutoBitLinear's `linear(q / s, W)`, in that order), or left as the integer product that the
//! graph divides by `s * weight_scale` after (BitLinear; a unit weight scale is not multiplied).
//! The graph's constant output scale then stays where it is ([`Emitter::keeps_output_scale`]),
//! applied in the original's order rather than folded into the weight scale. Float32
//! activations only; other types get the own chain.

use bitnet_model::proto::attribute_proto::AttributeType;
use bitnet_model::proto::tensor_proto::DataType;
use bitnet_model::proto::{AttributeProto, GraphProto, NodeProto, TensorProto};
use bitnet_model::tensor;

use super::dq::int_attr;
use super::linear::{self, Bias};
use super::{
    Edit, EmitContext, EmitError, Emitted, Emitter, NameGen, Patch, SharedActivation, WeightJob,
};
use crate::bitnet;
use crate::pack;
use crate::quant::Granularity;

pub struct OrtInt8;

/// Opset the emitted nodes need: Round and Clip with min/max inputs (11).
const MIN_OPSET: i64 = 11;

fn node(
    names: &mut NameGen,
    base: &str,
    op: &str,
    input: Vec<String>,
    output: &str,
    attribute: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        name: Some(names.fresh(&format!("{base}_{op}"))),
        op_type: Some(op.into()),
        input,
        output: vec![output.to_string()],
        attribute,
        ..Default::default()
    }
}

/// The activation quantization of one value.
struct Activation {
    /// uint8 activation (codes shifted by 128).
    q: String,
    /// Per-token scale `s = 127 / max|x|`, float32 `[.., 1]`, that the integer product is
    /// divided by; `None` when the layer's input is the integer codes themselves (BitLinear,
    /// whose graph divides by `s` after the product).
    s: Option<String>,
    /// Nodes and initializers to add, when no earlier layer built them.
    new: Option<(Vec<NodeProto>, Vec<TensorProto>)>,
    /// The graph's own quantization, when it was taken as it is.
    taken: Option<bitnet::ActQuant>,
}

/// The quantization of activation `a`: the one an earlier layer built, or a new one.
fn quantize_activation(
    job: &WeightJob,
    a: &str,
    matched: Option<&bitnet::ActQuant>,
    cx: &mut EmitContext,
) -> Activation {
    // BitNet's own quantization already in the graph: its codes and scale are taken as they
    // are, shifted into uint8 (no second rounding, no float fake-quant beside the integer path).
    let matched = matched
        .filter(|_| job.dtype == DataType::Float as i32)
        .cloned();
    // One quantization per value: a later layer reading it takes the first one's.
    if let Some(shared) = cx.activations.get(a) {
        return Activation {
            q: shared.q.clone(),
            s: shared.s.clone(),
            new: None,
            taken: matched,
        };
    }
    let act = match matched {
        Some(m) => taken_activation(m, &mut cx.names),
        None => own_activation(job, a, &mut cx.names),
    };
    cx.activations.insert(
        a.to_string(),
        SharedActivation {
            q: act.q.clone(),
            s: act.s.clone(),
        },
    );
    act
}

/// BitNet's per-token int8 quantization of `a`, built in the graph.
fn own_activation(job: &WeightJob, a: &str, names: &mut NameGen) -> Activation {
    let base = format!("{a}_int8");
    let f = |names: &mut NameGen, what: &str| names.fresh(&format!("{base}_{what}"));
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    let mut x = a.to_string();
    if job.dtype != DataType::Float as i32 {
        let x32 = f(names, "f32");
        let to = vec![int_attr("to", DataType::Float as i64)];
        nodes.push(node(names, &base, "Cast", vec![x], &x32, to));
        x = x32;
    }
    let abs = f(names, "abs");
    nodes.push(node(names, &base, "Abs", vec![x.clone()], &abs, vec![]));
    let max = f(names, "absmax");
    let keepdims = int_attr("keepdims", 1);
    if job.opset.max(MIN_OPSET) >= 18 {
        let axes = f(names, "axes");
        inits.push(tensor::from_i64(&axes, &[1], &[-1]));
        let input = vec![abs, axes];
        nodes.push(node(names, &base, "ReduceMax", input, &max, vec![keepdims]));
    } else {
        let axes = AttributeProto {
            name: Some("axes".into()),
            ints: vec![-1],
            r#type: Some(AttributeType::Ints as i32),
            ..Default::default()
        };
        let attrs = vec![axes, keepdims];
        nodes.push(node(names, &base, "ReduceMax", vec![abs], &max, attrs));
    }
    let mut constant = |names: &mut NameGen, what: &str, v: f32| {
        let n = f(names, what);
        inits.push(tensor::from_f32(&n, &[], &[v]));
        n
    };
    let eps = constant(names, "eps", 1e-5);
    let c127 = constant(names, "127", 127.0);
    let c128 = constant(names, "128", 128.0);
    let c0 = constant(names, "0", 0.0);
    let c255 = constant(names, "255", 255.0);
    let clamped = f(names, "absmax_clamped");
    nodes.push(node(names, &base, "Max", vec![max, eps], &clamped, vec![]));
    let s = f(names, "scale");
    nodes.push(node(names, &base, "Div", vec![c127, clamped], &s, vec![]));
    let xs = f(names, "scaled");
    nodes.push(node(names, &base, "Mul", vec![x, s.clone()], &xs, vec![]));
    let r = f(names, "rounded");
    nodes.push(node(names, &base, "Round", vec![xs], &r, vec![]));
    let shifted = f(names, "shifted");
    nodes.push(node(names, &base, "Add", vec![r, c128], &shifted, vec![]));
    let clipped = f(names, "clipped");
    let input = vec![shifted, c0, c255];
    nodes.push(node(names, &base, "Clip", input, &clipped, vec![]));
    let q = f(names, "u8");
    let to = vec![int_attr("to", DataType::Uint8 as i64)];
    nodes.push(node(names, &base, "Cast", vec![clipped], &q, to));
    Activation {
        q,
        s: Some(s),
        new: Some((nodes, inits)),
        taken: None,
    }
}

/// The uint8 activation of BitNet codes `m.codes` (float values in [-128, 127]): `codes + 128`
/// cast to uint8, built once per value.
fn taken_activation(m: bitnet::ActQuant, names: &mut NameGen) -> Activation {
    let s = match m.form {
        bitnet::Form::Dequantized => Some(m.scale.clone()),
        bitnet::Form::Integer => None,
    };
    let base = format!("{}_int8", m.codes);
    let c128 = names.fresh(&format!("{base}_128"));
    let shifted = names.fresh(&format!("{base}_shifted"));
    let q = names.fresh(&format!("{base}_u8"));
    let add = node(
        names,
        &base,
        "Add",
        vec![m.codes.clone(), c128.clone()],
        &shifted,
        vec![],
    );
    let to = vec![int_attr("to", DataType::Uint8 as i64)];
    let cast = node(names, &base, "Cast", vec![shifted], &q, to);
    let inits = vec![tensor::from_f32(&c128, &[], &[128.0])];
    Activation {
        q,
        s,
        new: Some((vec![add, cast], inits)),
        taken: Some(m),
    }
}

impl Emitter for OrtInt8 {
    fn target(&self) -> &'static crate::targets::Target {
        crate::targets::get(crate::targets::Id::OrtInt8)
    }

    fn dequantize_linear_weights(&self) -> bool {
        false
    }

    fn activations(&self) -> String {
        "int8 per token (BitNet absmax: 127 / max|x| over the last axis), MatMulInteger on \
         uint8 activations shifted by 128 and INT8 ternary weights"
            .to_string()
    }

    /// Its own chain, unless the graph already quantizes the layer's input as BitNet does
    /// (float32 only; see `quantize_activation`).
    fn quantizes_activations(&self, job: &WeightJob, layer: usize) -> bool {
        job.dtype != DataType::Float as i32
            || job
                .activations
                .get(layer)
                .and_then(Option::as_ref)
                .is_none()
    }

    /// The graph's own codes reach MatMulInteger (float32 activations, see
    /// [`quantize_activation`]): the int32 product is exact, and the graph's output scale
    /// stays to be applied after it in the original's order.
    fn keeps_output_scale(&self, dtype: i32, activations: &[Option<bitnet::ActQuant>]) -> bool {
        dtype == DataType::Float as i32
            && !activations.is_empty()
            && activations.iter().all(Option::is_some)
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
                why: "ONNX Runtime's CPU provider has no bfloat16 kernels for the activation quantization; use --target qdq-int8",
            });
        }
        if let Granularity::Group(gs) = t.granularity {
            return Err(EmitError::Layout(if t.lossless {
                format!(
                    "lossless detection found it exactly ternary with one scale per {gs} inputs, which --target ort-int8 cannot carry (it applies one scale per output channel after the integer matmul over all of K): use --target ort, qdq-int8, onnx or tensorrt to keep it exact, or --lossless-group off to quantize it per channel (lossy)"
                )
            } else {
                format!(
                    "--target ort-int8 applies the weight scale after the integer matmul over all of K, so it needs per-tensor or per-channel scales, not group:{gs}; use --scale channel or another target"
                )
            }));
        }
        pack::check_ternary(t)?;
        let codes = pack::pack_int8(&pack::codes_in_onnx_order(t, false));
        let dims = [t.k as i64, t.n as i64];
        let mut patch = Patch::default();
        let codes_name = patch.weight(tensor::from_raw(
            &names.fresh(&format!("{}_ternary_int8", job.weight)),
            DataType::Int8,
            &dims,
            codes,
        ));
        let zp = patch.constant(tensor::from_raw(
            &names.fresh(&format!("{}_activation_zero_point", job.weight)),
            DataType::Uint8,
            &[],
            vec![128],
        ));
        let scale_dims: Vec<i64> = if t.scales.len() == 1 {
            vec![]
        } else {
            vec![t.n as i64]
        };
        let mut scale_names: Vec<(u32, String)> = Vec::new();
        let mut absorbed = Vec::new();
        let mut removable = Vec::new();
        for (i, layer) in job.layers.iter().enumerate() {
            let lin = linear::take(g, job, layer, names, &mut patch)?;
            let matched = job.activations.get(i).and_then(Option::as_ref);
            let act = quantize_activation(job, &lin.a, matched, names);
            // On the graph's own codes a unit scale (BitLinear's codes) is not multiplied.
            let unit = act.taken.is_some() && t.scales.iter().all(|s| s * lin.alpha == 1.0);
            let key = lin.alpha.to_bits();
            let scale = match scale_names.iter().find(|(k, _)| *k == key) {
                _ if unit => None,
                Some((_, n)) => Some(n.clone()),
                None => {
                    let n = names.fresh(&format!("{}_scale", job.weight));
                    let vals: Vec<f32> = t.scales.iter().map(|s| s * lin.alpha).collect();
                    patch.weight(tensor::from_f32(&n, &scale_dims, &vals));
                    scale_names.push((key, n.clone()));
                    Some(n)
                }
            };
            if let Some(m) = &act.taken {
                absorbed.push(format!(
                    "activation quantization ({}): the graph's int8 codes and per-token scale",
                    match m.form {
                        bitnet::Form::Dequantized => "q / s",
                        bitnet::Form::Integer => "int8 q",
                    }
                ));
                removable.extend(m.between.iter().cloned());
            }
            // y = Cast<float>(MatMulInteger(q, codes, 128)) * scale [/ s] [+ bias] [Cast] [+ C]
            let mut steps: Vec<(&str, Option<String>, Vec<AttributeProto>)> =
                vec![("Cast", None, vec![int_attr("to", DataType::Float as i64)])];
            if act.taken.is_some() {
                // The graph's own codes: its order, `(y / s) * w` for AutoBitLinear's
                // `linear(q / s, w)`, and the exact integer product alone for BitLinear (its
                // graph divides by `s * weight_scale` after).
                if let Some(s) = &act.s {
                    steps.push(("Div", Some(s.clone()), vec![]));
                }
                if let Some(scale) = scale {
                    steps.push(("Mul", Some(scale), vec![]));
                }
            } else {
                steps.push(("Mul", scale, vec![]));
                if let Some(s) = &act.s {
                    steps.push(("Div", Some(s.clone()), vec![]));
                }
            }
            if let Bias::Vector(v) = &lin.bias {
                let bn = names.fresh(&format!("{}_bias", lin.node.input[2]));
                patch.constant(tensor::from_f32(&bn, &[t.n as i64], v));
                steps.push(("Add", Some(bn), vec![]));
            }
            if job.dtype != DataType::Float as i32 {
                steps.push(("Cast", None, vec![int_attr("to", job.dtype as i64)]));
            }
            if let Bias::Value(c) = &lin.bias {
                steps.push(("Add", Some(c.clone()), vec![]));
            }
            let mut y = names.fresh(&format!("{}_int32", layer.output));
            let mut replacement = lin.before;
            replacement.push(NodeProto {
                name: lin.node.name.clone(),
                op_type: Some("MatMulInteger".into()),
                input: vec![act.q, codes_name.clone(), zp.clone()],
                output: vec![y.clone()],
                doc_string: lin.node.doc_string.clone(),
                ..Default::default()
            });
            let count = steps.len();
            for (i, (op, operand, attrs)) in steps.into_iter().enumerate() {
                let out = if i + 1 == count {
                    layer.output.clone()
                } else {
                    names.fresh(&format!("{}_{}", layer.output, op.to_ascii_lowercase()))
                };
                let input: Vec<String> = std::iter::once(y).chain(operand).collect();
                replacement.push(node(names, &layer.node, op, input, &out, attrs));
                y = out;
            }
            patch.edit(Edit::Replace {
                output: layer.output.clone(),
                weight: job.weight.to_string(),
                nodes: replacement,
            });
            // A new activation quantization goes right after the producer of its input (the
            // Transpose just added for transA, or any earlier node), so that it precedes every
            // reader; at the start when the input is a graph input or an outer-scope value.
            // One built on the graph's own codes goes after the codes' producer.
            if let Some((nodes, inits)) = act.new {
                let after = act.taken.as_ref().map_or(&lin.a, |m| &m.codes);
                for t in inits {
                    patch.constant(t);
                }
                patch.edit(Edit::After {
                    value: after.clone(),
                    nodes,
                });
            }
        }
        absorbed.dedup();
        Ok(Emitted {
            patch,
            min_opset: MIN_OPSET,
            absorbed,
            removable,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emit::patch::Role;
    use crate::emit::testing::{
        emit_err, f32s, gemm, init, inputs, int_attrs, matmul, node, onnx_codes, ops, position,
        raw, run, run_in, shared, ternary, two_weights, value, writer, Gemm, Job, C,
    };
    use crate::quant::Granularity;

    /// The ops of BitNet's per-token quantization built for a float32 input below opset 18.
    const CHAIN: [&str; 9] = [
        "Abs",
        "ReduceMax",
        "Max",
        "Div",
        "Mul",
        "Round",
        "Add",
        "Clip",
        "Cast",
    ];

    fn names(g: &GraphProto) -> Vec<&str> {
        g.node
            .iter()
            .map(|n| n.name.as_deref().unwrap_or(""))
            .collect()
    }

    #[test]
    fn matmul_becomes_matmulinteger_then_cast_mul_div() {
        let g = matmul(8, 3);
        let t = ternary(3, 8, Granularity::Channel);
        let (out, bytes, em) = run(&OrtInt8, &g, &Job::new(&g, "W", t.clone())).unwrap();
        // Codes int8 [K, N] (24 bytes) and scales float32 [N] (12 bytes); the zero point and the
        // activation chain's constants are not the weight's.
        assert_eq!(bytes, 24 + 12);
        let codes = init(&out, "W_ternary_int8");
        assert_eq!(
            (codes.data_type, codes.dims.clone()),
            (Some(DataType::Int8 as i32), vec![8, 3])
        );
        let want: Vec<u8> = onnx_codes(&t, false).iter().map(|&c| c as u8).collect();
        assert_eq!(raw(codes), want);
        let scale = init(&out, "W_scale");
        assert_eq!(scale.dims, [3]);
        assert_eq!(f32s(scale), [1.0, 2.0, 3.0]);
        let zp = init(&out, "W_activation_zero_point");
        assert_eq!(
            (zp.data_type, zp.dims.len(), raw(zp)),
            (Some(DataType::Uint8 as i32), 0, &[128u8][..])
        );
        let weights: Vec<_> = em
            .patch
            .tensors
            .iter()
            .filter(|t| t.role == Role::Weight)
            .map(|t| t.tensor.name.as_deref().unwrap())
            .collect();
        assert_eq!(weights, ["W_ternary_int8", "W_scale"]);
        // The chain goes first (x is a graph input), the layer where the MatMul stood.
        let mut want_ops = CHAIN.to_vec();
        want_ops.extend(["MatMulInteger", "Cast", "Mul", "Div"]);
        assert_eq!(ops(&out), want_ops);
        let mm = &out.node[9];
        assert_eq!(mm.name.as_deref(), Some("mm"));
        assert_eq!(
            inputs(mm),
            ["x_int8_u8", "W_ternary_int8", "W_activation_zero_point"]
        );
        assert_eq!(mm.output, ["y_int32"]);
        let cast = &out.node[10];
        assert_eq!(inputs(cast), ["y_int32"]);
        assert_eq!(int_attrs(cast), [("to", Some(DataType::Float as i64))]);
        assert_eq!(inputs(&out.node[11]), ["y_cast", "W_scale"]);
        assert_eq!(inputs(&out.node[12]), ["y_mul", "x_int8_scale"]);
        assert_eq!(out.node[12].output, ["y"]);
        assert_eq!(em.min_opset, 11);
        assert!(em.absorbed.is_empty() && em.removable.is_empty());
    }

    #[test]
    fn the_activation_chain_is_bitnets_absmax_quantization() {
        let g = matmul(8, 3);
        let (out, _, _) = run(
            &OrtInt8,
            &g,
            &Job::new(&g, "W", ternary(3, 8, Granularity::Tensor)),
        )
        .unwrap();
        let scalar = |name: &str| {
            let t = init(&out, name);
            assert!(t.dims.is_empty(), "{name} is a scalar");
            f32s(t)[0]
        };
        let reduce = writer(&out, "x_int8_absmax");
        assert_eq!(inputs(reduce), ["x_int8_abs"]);
        assert_eq!(reduce.attribute[0].ints, [-1]);
        assert_eq!(int_attrs(reduce)[1], ("keepdims", Some(1)));
        let max = writer(&out, "x_int8_absmax_clamped");
        assert_eq!(inputs(max), ["x_int8_absmax", "x_int8_eps"]);
        assert_eq!(scalar("x_int8_eps"), 1e-5);
        let s = writer(&out, "x_int8_scale");
        assert_eq!(s.op_type.as_deref(), Some("Div"));
        assert_eq!(inputs(s), ["x_int8_127", "x_int8_absmax_clamped"]);
        assert_eq!(scalar("x_int8_127"), 127.0);
        assert_eq!(inputs(writer(&out, "x_int8_scaled")), ["x", "x_int8_scale"]);
        let shifted = writer(&out, "x_int8_shifted");
        assert_eq!(inputs(shifted), ["x_int8_rounded", "x_int8_128"]);
        assert_eq!(scalar("x_int8_128"), 128.0);
        let clip = writer(&out, "x_int8_clipped");
        assert_eq!(inputs(clip), ["x_int8_shifted", "x_int8_0", "x_int8_255"]);
        assert_eq!((scalar("x_int8_0"), scalar("x_int8_255")), (0.0, 255.0));
        let cast = writer(&out, "x_int8_u8");
        assert_eq!(int_attrs(cast), [("to", Some(DataType::Uint8 as i64))]);
        // Per-tensor weight scale: a scalar.
        assert!(init(&out, "W_scale").dims.is_empty());
        assert_eq!(f32s(init(&out, "W_scale")), [0.5]);
    }

    #[test]
    fn from_opset_18_reducemax_takes_its_axes_as_an_input() {
        let g = matmul(8, 3);
        let mut job = Job::new(&g, "W", ternary(3, 8, Granularity::Tensor));
        job.opset = 18;
        let (out, _, _) = run(&OrtInt8, &g, &job).unwrap();
        let reduce = writer(&out, "x_int8_absmax");
        assert_eq!(inputs(reduce), ["x_int8_abs", "x_int8_axes"]);
        assert_eq!(int_attrs(reduce), [("keepdims", Some(1))]);
        let axes = init(&out, "x_int8_axes");
        assert_eq!(
            (axes.data_type, axes.dims.clone()),
            (Some(DataType::Int64 as i32), vec![1])
        );
        assert_eq!(raw(axes), (-1i64).to_le_bytes());
    }

    #[test]
    fn the_chain_goes_right_after_the_producer_of_the_input() {
        let g = two_weights(8, 3);
        let (out, _, _) = run(
            &OrtInt8,
            &g,
            &Job::new(&g, "Wq", ternary(3, 8, Granularity::Channel)),
        )
        .unwrap();
        let mut want = vec!["Relu"];
        want.extend(CHAIN);
        want.extend(["MatMulInteger", "Cast", "Mul", "Div", "MatMul"]);
        assert_eq!(ops(&out), want);
        assert_eq!(inputs(&out.node[1]), ["x"]);
        assert_eq!(position(&out, "mm_q"), 10);
    }

    #[test]
    fn layers_reading_one_value_share_one_activation_quantization() {
        let g = two_weights(8, 3);
        let mut cx = EmitContext::new(&g);
        let t = ternary(3, 8, Granularity::Channel);
        let (g1, bytes1, _) =
            run_in(&OrtInt8, &g, &Job::new(&g, "Wq", t.clone()), &mut cx).unwrap();
        assert_eq!(bytes1, 36);
        let shared = &cx.activations["x"];
        assert_eq!(
            (shared.q.as_str(), shared.s.as_deref()),
            ("x_int8_u8", Some("x_int8_scale"))
        );
        let (g2, bytes2, em2) = run_in(&OrtInt8, &g1, &Job::new(&g1, "Wk", t), &mut cx).unwrap();
        assert_eq!(bytes2, 36);
        // The second weight adds its codes, zero point and scale, no chain.
        let added: Vec<_> = em2
            .patch
            .tensors
            .iter()
            .map(|t| t.tensor.name.as_deref().unwrap())
            .collect();
        assert_eq!(
            added,
            ["Wk_ternary_int8", "Wk_activation_zero_point", "Wk_scale"]
        );
        assert!(!em2
            .patch
            .edits
            .iter()
            .any(|e| matches!(e, Edit::After { .. })));
        assert_eq!(ops(&g2).iter().filter(|&&o| o == "Abs").count(), 1);
        let mm_k = &g2.node[position(&g2, "mm_k")];
        assert_eq!(
            inputs(mm_k),
            ["x_int8_u8", "Wk_ternary_int8", "Wk_activation_zero_point"]
        );
        assert_eq!(inputs(writer(&g2, "k")), ["k_mul", "x_int8_scale"]);
        assert_eq!(g2.node.len(), 1 + 9 + 4 + 4);
    }

    #[test]
    fn layers_sharing_a_weight_share_codes_scale_and_chain() {
        let g = shared(8, 3);
        let (out, bytes, em) = run(
            &OrtInt8,
            &g,
            &Job::new(&g, "W", ternary(3, 8, Granularity::Channel)),
        )
        .unwrap();
        assert_eq!(bytes, 36);
        // codes, zero point, scale and the five constants of one chain.
        assert_eq!(em.patch.tensors.len(), 8);
        assert_eq!(ops(&out).iter().filter(|&&o| o == "Abs").count(), 1);
        for name in ["mm0", "mm1"] {
            let n = &out.node[position(&out, name)];
            assert_eq!(
                inputs(n),
                ["x_int8_u8", "W_ternary_int8", "W_activation_zero_point"]
            );
        }
        assert_eq!(inputs(writer(&out, "y1_mul")), ["y1_cast", "W_scale"]);
    }

    #[test]
    fn gemm_alpha_goes_into_the_scale_and_a_bias_vector_is_added() {
        let spec = Gemm {
            alpha: Some(2.0),
            beta: Some(0.5),
            c: C::Const(vec![3], vec![2.0, 4.0, 6.0]),
            ..Gemm::default()
        };
        let g = gemm(8, 3, &spec);
        let t = ternary(3, 8, Granularity::Channel);
        let (out, bytes, em) = run(&OrtInt8, &g, &Job::new(&g, "W", t.clone())).unwrap();
        assert_eq!(bytes, 36);
        assert_eq!(f32s(init(&out, "W_scale")), [2.0, 4.0, 6.0]);
        // Codes are [K, N] whatever the Gemm's transB (MatMulInteger has none).
        let want: Vec<u8> = onnx_codes(&t, false).iter().map(|&c| c as u8).collect();
        assert_eq!(raw(init(&out, "W_ternary_int8")), want);
        assert_eq!(init(&out, "W_ternary_int8").dims, [8, 3]);
        assert_eq!(
            em.patch.tensor("C_bias").map(|t| t.role),
            Some(Role::Constant)
        );
        assert_eq!(f32s(init(&out, "C_bias")), [1.0, 2.0, 3.0]);
        let tail: Vec<_> = ops(&out)[9..].to_vec();
        assert_eq!(tail, ["MatMulInteger", "Cast", "Mul", "Div", "Add"]);
        let add = writer(&out, "y");
        assert_eq!(inputs(add), ["y_div", "C_bias"]);
        assert_eq!(add.name.as_deref(), Some("gemm_Add"));
    }

    #[test]
    fn trans_a_quantizes_the_transposed_activation_after_its_transpose() {
        let spec = Gemm {
            trans_a: true,
            ..Gemm::default()
        };
        let g = gemm(8, 3, &spec);
        let (out, _, _) = run(
            &OrtInt8,
            &g,
            &Job::new(&g, "W", ternary(3, 8, Granularity::Channel)),
        )
        .unwrap();
        assert_eq!(ops(&out)[..2], ["Transpose", "Abs"]);
        assert_eq!(out.node[0].output, ["x_transposed"]);
        assert_eq!(inputs(&out.node[1]), ["x_transposed"]);
        assert_eq!(position(&out, "gemm"), 10);
    }

    #[test]
    fn float16_is_quantized_in_float32_and_cast_back() {
        let spec = Gemm {
            c: C::Input,
            ..Gemm::default()
        };
        let g = gemm(8, 3, &spec);
        let mut job = Job::new(&g, "W", ternary(3, 8, Granularity::Channel));
        job.dtype = DataType::Float16 as i32;
        let (out, bytes, _) = run(&OrtInt8, &g, &job).unwrap();
        // Weight scales stay float32: the product is rescaled in float32.
        assert_eq!(bytes, 24 + 12);
        assert_eq!(
            init(&out, "W_scale").data_type,
            Some(DataType::Float as i32)
        );
        let first = &out.node[0];
        assert_eq!(first.op_type.as_deref(), Some("Cast"));
        assert_eq!(inputs(first), ["x"]);
        assert_eq!(int_attrs(first), [("to", Some(DataType::Float as i64))]);
        assert_eq!(inputs(writer(&out, "x_int8_abs")), ["x_int8_f32"]);
        let tail: Vec<_> = ops(&out)[10..].to_vec();
        assert_eq!(tail, ["MatMulInteger", "Cast", "Mul", "Div", "Cast", "Add"]);
        let back = writer(&out, "y_cast_2");
        assert_eq!(int_attrs(back), [("to", Some(DataType::Float16 as i64))]);
        assert_eq!(inputs(writer(&out, "y")), ["y_cast_2", "C"]);
    }

    /// transformers' AutoBitLinear around `mm`: `a = q / s` with `q` written by `round`.
    fn autobitlinear() -> (GraphProto, bitnet::ActQuant) {
        let mut g = matmul(8, 3);
        g.node.splice(
            0..0,
            [
                node("round", "Round", &["xs"], &["q"]),
                node("div", "Div", &["q", "s"], &["a"]),
            ],
        );
        g.node[2].input[0] = "a".into();
        g.input = vec![value("xs"), value("s")];
        let m = bitnet::ActQuant {
            x: "x".into(),
            scale: "s".into(),
            codes: "q".into(),
            form: bitnet::Form::Dequantized,
            between: vec!["a".into()],
        };
        (g, m)
    }

    #[test]
    fn bitnets_own_quantization_is_taken_as_it_is() {
        let (g, m) = autobitlinear();
        let mut job = Job::new(&g, "W", ternary(3, 8, Granularity::Channel));
        job.activations = vec![Some(m)];
        let (out, bytes, em) = run(&OrtInt8, &g, &job).unwrap();
        assert_eq!(bytes, 36);
        // codes + 128 cast to uint8, right after the codes' producer; the Div stays for the
        // caller to remove once dead.
        assert_eq!(
            names(&out),
            [
                "round",
                "q_int8_Add",
                "q_int8_Cast",
                "div",
                "mm",
                "mm_Cast",
                "mm_Div",
                "mm_Mul"
            ]
        );
        assert_eq!(inputs(&out.node[1]), ["q", "q_int8_128"]);
        assert_eq!(f32s(init(&out, "q_int8_128")), [128.0]);
        assert_eq!(
            int_attrs(&out.node[2]),
            [("to", Some(DataType::Uint8 as i64))]
        );
        assert_eq!(inputs(&out.node[4])[0], "q_int8_u8");
        // AutoBitLinear's order: the exact product divided by `s`, then the weight scale.
        assert_eq!(inputs(writer(&out, "y_div")), ["y_cast", "s"]);
        assert_eq!(inputs(writer(&out, "y")), ["y_div", "W_scale"]);
        assert_eq!(em.removable, ["a"]);
        assert_eq!(em.absorbed.len(), 1);
        assert!(em.absorbed[0].contains("q / s"), "{:?}", em.absorbed);
    }

    #[test]
    fn bitlinears_integer_codes_need_no_division() {
        let (g, mut m) = autobitlinear();
        m.form = bitnet::Form::Integer;
        let mut job = Job::new(&g, "W", ternary(3, 8, Granularity::Channel));
        job.activations = vec![Some(m)];
        let (out, _, em) = run(&OrtInt8, &g, &job).unwrap();
        let tail: Vec<_> = ops(&out)[4..].to_vec();
        assert_eq!(tail, ["MatMulInteger", "Cast", "Mul"]);
        assert_eq!(inputs(writer(&out, "y")), ["y_cast", "W_scale"]);
        assert!(em.absorbed[0].contains("int8 q"), "{:?}", em.absorbed);
        // BitLinear's unit codes: the exact integer product alone, no scale tensor (the
        // graph's own `/ (s * weight_scale)` follows).
        let mut t = ternary(3, 8, Granularity::Channel);
        t.scales = vec![1.0; 3];
        job.ternary = t;
        let (out, bytes, _) = run(&OrtInt8, &g, &job).unwrap();
        assert_eq!(ops(&out)[4..], ["MatMulInteger", "Cast"]);
        assert_eq!(inputs(writer(&out, "y")), ["y_int32"]);
        assert_eq!(bytes, 24);
    }

    #[test]
    fn the_graphs_output_scale_stays_when_its_codes_are_taken() {
        let (_, m) = autobitlinear();
        let f32 = DataType::Float as i32;
        assert!(OrtInt8.keeps_output_scale(f32, &[Some(m.clone())]));
        assert!(!OrtInt8.keeps_output_scale(f32, &[Some(m.clone()), None]));
        assert!(!OrtInt8.keeps_output_scale(DataType::Float16 as i32, &[Some(m)]));
        assert!(!OrtInt8.keeps_output_scale(f32, &[]));
    }

    /// What convert records as the layer's `lossless` (with an exact weight): only the graph's
    /// own float32 codes keep the layer exact; its own chain quantizes the activations.
    #[test]
    fn only_the_graphs_own_codes_leave_activations_unquantized() {
        let g = matmul(8, 3);
        let plain = Job::new(&g, "W", ternary(3, 8, Granularity::Tensor));
        assert!(plain.with(|j| OrtInt8.quantizes_activations(j, 0)));
        assert!(!plain.with(|j| super::super::qdq_int8::QdqInt8.quantizes_activations(j, 0)));
        let (g, m) = autobitlinear();
        let mut taken = Job::new(&g, "W", ternary(3, 8, Granularity::Channel));
        taken.activations = vec![Some(m)];
        assert!(!taken.with(|j| OrtInt8.quantizes_activations(j, 0)));
        taken.dtype = DataType::Float16 as i32;
        assert!(taken.with(|j| OrtInt8.quantizes_activations(j, 0)));
    }

    #[test]
    fn group_scales_are_refused() {
        let g = matmul(8, 3);
        let e = emit_err(
            &OrtInt8,
            &g,
            &Job::new(&g, "W", ternary(3, 8, Granularity::Group(4))),
        );
        assert!(
            matches!(&e, EmitError::Layout(m) if m.contains("group:4")),
            "{e:?}"
        );
        // Exact group scales found by lossless detection: the error says so and names the
        // targets that keep them and the flag that quantizes instead.
        let exact = crate::quant::Ternary {
            lossless: true,
            ..ternary(3, 8, Granularity::Group(4))
        };
        let e = emit_err(&OrtInt8, &g, &Job::new(&g, "W", exact));
        assert!(
            matches!(&e, EmitError::Layout(m) if m.contains("one scale per 4 inputs")
                && m.contains("--target ort, qdq-int8, onnx or tensorrt")
                && m.contains("--lossless-group off")),
            "{e:?}"
        );
    }

    #[test]
    fn bfloat16_is_refused() {
        let g = matmul(8, 3);
        let mut job = Job::new(&g, "W", ternary(3, 8, Granularity::Channel));
        job.dtype = DataType::Bfloat16 as i32;
        let e = emit_err(&OrtInt8, &g, &job);
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
