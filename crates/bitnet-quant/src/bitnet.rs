//! BitNet's layer around a linear node, recognised in the graph (plan stage, read-only): the
//! per-token int8 activation quantization feeding it and a constant scale applied to its
//! output. transformers' BitNet classes (and BitNet b1.58 generally) compute, per token over
//! the last axis:
//!
//! ```text
//! s = 127 / clamp(max(|x|), 1e-5)        Abs, ReduceMax(-1, keepdims), Clip or Max, Reciprocal*127 or Div
//! q = clip(round(x * s), -128, 127)      Mul, Round, Clip
//! AutoBitLinear: a = q / s ;  y = (a @ W) * weight_scale          (Div; Mul by a constant)
//! BitLinear:     a = float(int8(q)) ;  y = (a @ T) / (s * weight_scale)   (Cast, Cast; Div by Mul)
//! ```
//!
//! An emitter with an integer path can take `q` and `s` as they are instead of quantizing `a`
//! again, and every emitter can fold a constant output scale into its weight scales. A chain
//! that only looks like this one (another axis, another clip range, a scale that is not
//! 127 / max|x|) is not taken, and the reason is kept for the report.

use std::path::Path;

use bitnet_model::graph::GraphIndex;
use bitnet_model::proto::tensor_proto::DataType;
use bitnet_model::proto::NodeProto;

use crate::fold::{Const, Folder};

/// How the quantized activation reaches the linear node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `a = q / s` (AutoBitLinear's fake quantization): the product must be divided by `s`.
    Dequantized,
    /// `a = float(int8(q))` (BitLinear): the product is the integer product; the graph divides
    /// by `s` after it.
    Integer,
}

/// A recognised activation quantization feeding a linear node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActQuant {
    /// The unquantized activation.
    pub x: String,
    /// The per-token scale `127 / max|x|`, shape `[.., 1]`.
    pub scale: String,
    /// The codes, float values in [-128, 127] (`clip(round(x * s))`).
    pub codes: String,
    pub form: Form,
    /// Outputs of the nodes between `codes` and the linear node's input (the Div, or the two
    /// Casts), which become dead once every reader of the input takes `codes` instead.
    pub between: Vec<String>,
}

fn op<'g>(index: &GraphIndex<'g>, value: &str) -> Option<(&'g NodeProto, &'g str)> {
    let n = index.node(index.producer(value)?);
    bitnet_model::node::in_default_domain(n).then(|| (n, n.op_type.as_deref().unwrap_or("")))
}

use bitnet_model::node::{attr_i, attr_ints};

fn input(n: &NodeProto, i: usize) -> Option<&str> {
    n.input.get(i).map(String::as_str).filter(|s| !s.is_empty())
}

/// A constant scalar (one element) of the graph, if `value` is one.
fn scalar(folder: &mut Folder, value: &str) -> Option<f64> {
    folder
        .eval(value)
        .ok()
        .filter(|c| c.len() == 1)
        .map(|c: Const| c.f64()[0])
}

/// The activation quantization producing `a`, the input of a linear node. `Ok(None)` when
/// `a` is not produced by a round-and-clip chain at all; `Err(reason)` for a chain that looks
/// like BitNet's but is not (the reason says how it differs).
pub fn act_quant(index: &GraphIndex, path: &Path, a: &str) -> Result<Option<ActQuant>, String> {
    let mut folder = Folder::new(index, path);
    let Some((n, kind)) = op(index, a) else {
        return Ok(None);
    };
    let (form, codes, divisor, between) = match kind {
        "Div" => {
            let (Some(c), Some(d)) = (input(n, 0), input(n, 1)) else {
                return Ok(None);
            };
            (Form::Dequantized, c, Some(d), vec![a.to_string()])
        }
        "Cast" => {
            let float = matches!(
                attr_i(n, "to").and_then(|t| DataType::try_from(t as i32).ok()),
                Some(DataType::Float | DataType::Float16)
            );
            let Some((inner, "Cast")) = input(n, 0).and_then(|i| op(index, i)) else {
                return Ok(None);
            };
            let int8 = attr_i(inner, "to") == Some(DataType::Int8 as i32 as i64);
            let Some(c) = input(inner, 0) else {
                return Ok(None);
            };
            if !(float && int8) {
                return Ok(None);
            }
            let between = vec![a.to_string(), inner.output[0].clone()];
            (Form::Integer, c, None, between)
        }
        _ => return Ok(None),
    };
    // q = Clip(Round(x * s), -128, 127)
    let Some((clip, "Clip")) = op(index, codes) else {
        return Ok(None);
    };
    let Some((round, "Round")) = input(clip, 0).and_then(|i| op(index, i)) else {
        return Ok(None);
    };
    let bound = |f: &mut Folder, i: usize, attr: &str| match input(clip, i) {
        Some(v) => scalar(f, v),
        None => bitnet_model::node::attr_f(clip, attr).map(f64::from),
    };
    let (lo, hi) = (bound(&mut folder, 1, "min"), bound(&mut folder, 2, "max"));
    if lo != Some(-128.0) || hi != Some(127.0) {
        let show = |b: Option<f64>| b.map_or("none".to_string(), |v| v.to_string());
        return Err(format!(
            "activation rounding clipped to [{}, {}], not int8's [-128, 127]",
            show(lo),
            show(hi)
        ));
    }
    let Some((mul, "Mul")) = input(round, 0).and_then(|i| op(index, i)) else {
        return Ok(None);
    };
    let (Some(m0), Some(m1)) = (input(mul, 0), input(mul, 1)) else {
        return Ok(None);
    };
    // Which operand is the scale: the divisor for the dequantized form, else the one that is
    // computed as 127 / max|other|.
    let (x, s) = match divisor {
        Some(d) if d == m1 => (m0, m1),
        Some(d) if d == m0 => (m1, m0),
        Some(_) => {
            return Err(
                "the activation is divided by another value than it was multiplied by".into(),
            )
        }
        None if per_token_scale(index, &mut folder, m1, m0).is_ok() => (m0, m1),
        None => (m1, m0),
    };
    per_token_scale(index, &mut folder, s, x)?;
    Ok(Some(ActQuant {
        x: x.to_string(),
        scale: s.to_string(),
        codes: codes.to_string(),
        form,
        between,
    }))
}

/// Checks that `s` is `127 / clamp(ReduceMax(Abs(x), last axis, keepdims), eps)`.
fn per_token_scale(
    index: &GraphIndex,
    folder: &mut Folder,
    s: &str,
    x: &str,
) -> Result<(), String> {
    let not = |what: &str| {
        Err(format!(
            "the activation scale is not 127 / max|x| per token: {what}"
        ))
    };
    let Some((n, kind)) = op(index, s) else {
        return not("it is not computed in the graph");
    };
    // 127 / m, 127 * (1 / m) or (1 / m) * 127.
    let (k, clamped) = match kind {
        "Div" => (input(n, 0), input(n, 1)),
        "Mul" => {
            let (a, b) = (input(n, 0).unwrap_or(""), input(n, 1).unwrap_or(""));
            let recip = |v: &str| matches!(op(index, v), Some((_, "Reciprocal")));
            let (k, r) = if recip(b) { (a, b) } else { (b, a) };
            match op(index, r) {
                Some((rn, "Reciprocal")) => (Some(k), input(rn, 0)),
                _ => return not("a product without a reciprocal"),
            }
        }
        other => return not(&format!("computed by {other}")),
    };
    match k.and_then(|k| scalar(folder, k)) {
        Some(127.0) => {}
        Some(v) => return not(&format!("numerator {v}, not 127")),
        None => return not("the numerator is not a constant"),
    }
    let Some(clamped) = clamped else {
        return not("no denominator");
    };
    // clamp(m, eps): Clip(m, eps) or Max(m, eps).
    let m = match op(index, clamped) {
        Some((c, "Clip" | "Max")) => input(c, 0).unwrap_or(""),
        _ => clamped,
    };
    let Some((reduce, "ReduceMax")) = op(index, m) else {
        return not("the denominator is not a ReduceMax");
    };
    if attr_i(reduce, "keepdims").unwrap_or(1) != 1 {
        return not("ReduceMax without keepdims");
    }
    let axes = match input(reduce, 1) {
        Some(v) => folder.eval(v).ok().map(|c| c.i64()),
        None => attr_ints(reduce, "axes"),
    };
    let rank = index.shape(x).map(|s| s.len() as i64);
    let last = match axes.as_deref() {
        Some([-1]) => true,
        Some([a]) => rank == Some(a + 1),
        _ => false,
    };
    if !last {
        return not(&format!("ReduceMax over axes {axes:?}, not the last axis"));
    }
    match input(reduce, 0).and_then(|v| op(index, v)) {
        Some((abs, "Abs")) if input(abs, 0) == Some(x) => Ok(()),
        _ => not("the maximum is not taken over |x| of the quantized value"),
    }
}

/// A constant factor applied to a linear node's output `y`, absorbable into its weight scales.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputScale {
    /// `y` is multiplied by this.
    pub factor: f32,
    /// The node that applies it (its output becomes the layer's output).
    pub node_output: String,
    /// For `y / (s * c)` (BitLinear): the per-token scale `s` the node must still divide by,
    /// and the output of the `s * c` node that becomes dead.
    pub keep_divisor: Option<(String, String)>,
    /// How it was spelled, for the report.
    pub how: String,
}

/// The constant scale applied to `y` by its only consumer: `y * c`, `c * y`, `y / c`, or
/// `y / (s * c)` with `s` the activation scale `act_scale` (c a constant scalar).
pub fn output_scale(
    index: &GraphIndex,
    path: &Path,
    y: &str,
    act_scale: Option<&str>,
) -> Option<OutputScale> {
    if index.is_graph_output(y) || index.is_captured(y) {
        return None;
    }
    let [c] = index.consumers(y) else {
        return None;
    };
    let n = index.node(*c);
    if !bitnet_model::node::in_default_domain(n) || n.output.len() != 1 {
        return None;
    }
    let mut folder = Folder::new(index, path);
    let kind = n.op_type.as_deref().unwrap_or("");
    let (a, b) = (input(n, 0)?, input(n, 1)?);
    let out = n.output[0].clone();
    let finite = |v: f64| (v.is_finite() && v != 0.0).then_some(v as f32);
    match kind {
        "Mul" => {
            let other = if a == y { b } else { a };
            let c = finite(scalar(&mut folder, other)?)?;
            Some(OutputScale {
                factor: c,
                node_output: out,
                keep_divisor: None,
                how: format!("output * {c}"),
            })
        }
        "Div" if a == y => {
            if let Some(c) = scalar(&mut folder, b).and_then(finite) {
                return Some(OutputScale {
                    factor: 1.0 / c,
                    node_output: out,
                    keep_divisor: None,
                    how: format!("output / {c}"),
                });
            }
            // y / (s * c): the divisor node reads the activation scale and a constant.
            let s = act_scale?;
            let (d, "Mul") = op(index, b)? else {
                return None;
            };
            let (d0, d1) = (input(d, 0)?, input(d, 1)?);
            let other = if d0 == s {
                d1
            } else if d1 == s {
                d0
            } else {
                return None;
            };
            let c = scalar(&mut folder, other).and_then(finite)?;
            Some(OutputScale {
                factor: 1.0 / c,
                node_output: out,
                keep_divisor: Some((s.to_string(), b.to_string())),
                how: format!("output / (activation scale * {c})"),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitnet_model::proto::{AttributeProto, GraphProto, ValueInfoProto};
    use bitnet_model::tensor;

    fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
        NodeProto {
            op_type: Some(op.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            ..Default::default()
        }
    }

    fn with_int(mut n: NodeProto, name: &str, v: i64) -> NodeProto {
        n.attribute.push(AttributeProto {
            name: Some(name.into()),
            i: Some(v),
            ..Default::default()
        });
        n
    }

    /// transformers' AutoBitLinear chain as the dynamo exporter writes it, with the knobs a
    /// near miss turns: the reduced axis, the clip range and the scale's numerator.
    fn chain(axis: i64, lo: f32, hi: f32, numerator: f32) -> GraphProto {
        let scalar = |name: &str, v: f32| tensor::from_f32(name, &[], &[v]);
        GraphProto {
            node: vec![
                node("Abs", &["x"], "abs"),
                node("ReduceMax", &["abs", "axes"], "max"),
                node("Clip", &["max", "eps"], "clamped"),
                node("Reciprocal", &["clamped"], "recip"),
                node("Mul", &["recip", "k"], "s"),
                node("Mul", &["x", "s"], "xs"),
                node("Round", &["xs"], "r"),
                node("Clip", &["r", "lo", "hi"], "q"),
                node("Div", &["q", "s"], "a"),
                node("MatMul", &["a", "w"], "y"),
                node("Mul", &["y", "ws"], "out"),
            ],
            initializer: vec![
                tensor::from_i64("axes", &[1], &[axis]),
                scalar("eps", 1e-5),
                scalar("k", numerator),
                scalar("lo", lo),
                scalar("hi", hi),
                tensor::from_f32("w", &[4, 2], &[0.0; 8]),
                tensor::from_f32("ws", &[1], &[0.25]),
            ],
            input: vec![ValueInfoProto {
                name: Some("x".into()),
                ..Default::default()
            }],
            output: vec![ValueInfoProto {
                name: Some("out".into()),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn matched(g: &GraphProto) -> Result<Option<ActQuant>, String> {
        act_quant(&GraphIndex::new(g), Path::new("m"), "a")
    }

    #[test]
    fn autobitlinear_chain_and_output_scale_are_recognised() {
        let g = chain(-1, -128.0, 127.0, 127.0);
        let m = matched(&g).unwrap().unwrap();
        assert_eq!(
            (m.x.as_str(), m.scale.as_str(), m.codes.as_str()),
            ("x", "s", "q")
        );
        assert_eq!(m.form, Form::Dequantized);
        assert_eq!(m.between, ["a"]);
        let index = GraphIndex::new(&g);
        let os = output_scale(&index, Path::new("m"), "y", Some("s")).unwrap();
        assert_eq!((os.factor, os.node_output.as_str()), (0.25, "out"));
        assert!(os.keep_divisor.is_none());
    }

    #[test]
    fn near_misses_are_left_with_their_reason() {
        let reason = |g: GraphProto| matched(&g).unwrap_err();
        assert!(reason(chain(0, -128.0, 127.0, 127.0)).contains("not the last axis"));
        assert!(reason(chain(-1, -127.0, 127.0, 127.0)).contains("[-127, 127]"));
        assert!(reason(chain(-1, -128.0, 127.0, 100.0)).contains("numerator 100"));
        // Max over |x| of another value.
        let mut g = chain(-1, -128.0, 127.0, 127.0);
        g.node[0].input[0] = "other".into();
        assert!(reason(g).contains("|x|"));
        // No round-and-clip at all: not BitNet's, nothing to say.
        let mut g = chain(-1, -128.0, 127.0, 127.0);
        g.node[6].op_type = Some("Floor".into());
        assert_eq!(matched(&g), Ok(None));
    }

    #[test]
    fn bitlinear_integer_form_and_its_divisor_are_recognised() {
        let mut g = chain(-1, -128.0, 127.0, 127.0);
        // a = float(int8(q)); out = y / (s * ws)
        g.node[8] = with_int(
            node("Cast", &["q"], "q8"),
            "to",
            DataType::Int8 as i32 as i64,
        );
        g.node
            .insert(9, with_int(node("Cast", &["q8"], "a"), "to", 1));
        let last = g.node.len() - 1;
        g.node[last] = node("Div", &["y", "sw"], "out");
        g.node.push(node("Mul", &["s", "ws"], "sw"));
        let m = matched(&g).unwrap().unwrap();
        assert_eq!(m.form, Form::Integer);
        assert_eq!(m.between, ["a", "q8"]);
        let index = GraphIndex::new(&g);
        let os = output_scale(&index, Path::new("m"), "y", Some("s")).unwrap();
        assert_eq!(os.factor, 4.0);
        assert_eq!(os.keep_divisor, Some(("s".into(), "sw".into())));
        // A divisor that does not involve the activation scale is not taken.
        assert!(output_scale(&index, Path::new("m"), "y", Some("other")).is_none());
    }

    #[test]
    fn an_output_read_twice_or_a_graph_output_is_not_absorbed() {
        let mut g = chain(-1, -128.0, 127.0, 127.0);
        g.node.push(node("Relu", &["y"], "y2"));
        let index = GraphIndex::new(&g);
        assert!(output_scale(&index, Path::new("m"), "y", Some("s")).is_none());
        let mut g = chain(-1, -128.0, 127.0, 127.0);
        g.output[0].name = Some("y".into());
        let index = GraphIndex::new(&g);
        assert!(output_scale(&index, Path::new("m"), "y", Some("s")).is_none());
    }
}
