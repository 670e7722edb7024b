//! float16 and bfloat16 weights end to end.
//!
//! - float16 model (float16 activations and weights): every target converts it, scales stay
//!   float16, and ONNX Runtime's output matches the original's within float16 rounding.
//! - bfloat16 weights cast to float32 (`Cast(W_bf16) -> MatMul`, how bfloat16 checkpoints run
//!   on CPUs): every target folds the Cast, drops the bfloat16 copy and runs in ONNX Runtime.
//! - bfloat16 compute (MatMul on bfloat16 activations and weights): ONNX Runtime 1.32's CPU
//!   provider has no bfloat16 MatMul, Gemm or DequantizeLinear kernel, so neither the original
//!   nor any output can run there. `--target ort` (ONNX Runtime's MatMulNBits) and
//!   `--target tensorrt` (float32/float16 scales only) refuse with a clear message; `onnx` and
//!   `qdq-int8` convert (losslessly, checked by decoding the output) for runtimes that have
//!   bfloat16 kernels.

mod build_model;
mod common;

use build_model::*;
use common::*;

use bitnet_model::proto::{GraphProto, ModelProto, NodeProto, TensorProto};

const K: usize = 64;
const N: usize = 32;

/// `x[batch, K] -> MatMul fc1(W1[K, K]) -> Relu -> Gemm fc2(W2[N, K], C[N], transB=1) -> y`,
/// every tensor of type `dt`.
fn two_layers(dt: i32) -> ModelProto {
    let w1 = ternary(K, K, true, 31);
    let w2 = ternary(N, K, false, 32);
    let g = graph(
        "two_layers",
        vec![
            node("MatMul", "fc1", &["x", "W1"], &["h0"]),
            node("Relu", "relu", &["h0"], &["h"]),
            with(
                node("Gemm", "fc2", &["h", "W2", "C"], &["y"]),
                vec![attr_i("transB", 1)],
            ),
        ],
        vec![vi("x", dt, &format!("batch,{K}"))],
        vec![vi("y", dt, &format!("batch,{N}"))],
        vec![
            bitnet_model::tensor::from_f32_as("W1", dt, &[K as i64, K as i64], &w1),
            bitnet_model::tensor::from_f32_as("W2", dt, &[N as i64, K as i64], &w2),
            bitnet_model::tensor::from_f32_as("C", dt, &[N as i64], &[0.125; N]),
        ],
    );
    model(g, 17)
}

/// float32 compute on bfloat16 weights: each weight goes through `Cast(to=FLOAT)`.
fn bf16_cast() -> ModelProto {
    let w1 = ternary(K, K, true, 33);
    let w2 = ternary(N, K, false, 34);
    let cast = |name: &str, i: &str, o: &str| {
        with(
            node("Cast", name, &[i], &[o]),
            vec![attr_i("to", FLOAT as i64)],
        )
    };
    let g = graph(
        "bf16_cast",
        vec![
            cast("cast1", "W1_bf16", "W1"),
            node("MatMul", "fc1", &["x", "W1"], &["h0"]),
            node("Relu", "relu", &["h0"], &["h"]),
            cast("cast2", "W2_bf16", "W2"),
            with(
                node("Gemm", "fc2", &["h", "W2", "C"], &["y"]),
                vec![attr_i("transB", 1)],
            ),
        ],
        vec![vi("x", FLOAT, &format!("batch,{K}"))],
        vec![vi("y", FLOAT, &format!("batch,{N}"))],
        vec![
            bitnet_model::tensor::from_f32_as_bf16("W1_bf16", &[K as i64, K as i64], &w1),
            bitnet_model::tensor::from_f32_as_bf16("W2_bf16", &[N as i64, K as i64], &w2),
            bitnet_model::tensor::from_f32("C", &[N as i64], &[0.125; N]),
        ],
    );
    model(g, 17)
}

fn scale_types(g: &GraphProto) -> Vec<String> {
    // Scales: the second input of each DequantizeLinear, or MatMulNBits' third.
    let inits = |name: &str| {
        g.initializer
            .iter()
            .find(|t| t.name.as_deref() == Some(name))
            .map(|t| bitnet_model::dtype::name(t.data_type.unwrap_or(0)))
            .unwrap_or_default()
    };
    g.node
        .iter()
        .filter_map(|n| match n.op_type.as_deref() {
            Some("DequantizeLinear") => Some(inits(&n.input[1])),
            Some("MatMulNBits") => Some(inits(&n.input[2])),
            _ => None,
        })
        .collect()
}

#[test]
fn float16_model_converts_for_every_target_and_matches_in_ort() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("f16.onnx");
    save(&two_layers(FLOAT16), &src);
    for (target, flags) in TARGETS {
        let out = dir.path().join(format!("f16.{target}.onnx"));
        let mut args = flags.to_vec();
        args.push("--quantize-head");
        let r = convert(&src, &out, &args);
        let layers = r["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 2, "{target}: {r}");
        for l in layers {
            assert_eq!(l["dtype"], "float16", "{target}: {r}");
            assert_eq!(l["lossless"], true, "{target}: {r}");
        }
        let m = bitnet_model::Model::load(&out).unwrap().proto;
        let g = m.graph.as_ref().unwrap();
        let scales = scale_types(g);
        assert_eq!(scales, ["FLOAT16", "FLOAT16"], "{target}");
        if *target == "tensorrt" {
            run_ok(bin().args(["check", "--target", "tensorrt"]).arg(&out));
        }
        // Same float16 weights; differences come from float16 rounding of the activations and
        // of the accumulation (MatMulNBits accumulates in float32, ORT's float16 MatMul does
        // not everywhere): relative L2 within 1e-2.
        let cmp = ort_compare(&src, &out, "basic", &["batch=3"]);
        assert_close(&cmp, 1e-2, &format!("{target} basic"));
        let cmp = ort_compare(&src, &out, "all", &["batch=3"]);
        assert_close(&cmp, 5e-2, &format!("{target} all"));
    }
}

#[test]
fn bfloat16_weights_cast_to_float_convert_for_every_target_and_match_in_ort() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("bf16_cast.onnx");
    save(&bf16_cast(), &src);
    for (target, flags) in TARGETS {
        let out = dir.path().join(format!("bf16_cast.{target}.onnx"));
        let mut args = flags.to_vec();
        args.push("--quantize-head");
        let r = convert(&src, &out, &args);
        let layers = r["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 2, "{target}: {r}");
        for l in layers {
            assert_eq!(l["folded"], true, "{target}: {r}");
            assert_eq!(l["lossless"], true, "{target}: {r}");
        }
        let m = bitnet_model::Model::load(&out).unwrap().proto;
        let g = m.graph.as_ref().unwrap();
        assert!(
            !g.initializer.iter().any(|t| t.data_type == Some(BFLOAT16)),
            "{target}: a bfloat16 weight is left"
        );
        assert!(
            !g.node.iter().any(|n| n.op_type.as_deref() == Some("Cast")),
            "{target}: the weight Casts were not removed"
        );
        let cmp = ort_compare(&src, &out, "basic", &["batch=3"]);
        assert_close(&cmp, 1e-5, &format!("{target} basic"));
    }
}

/// `--target ort` (MatMulNBits has no bfloat16 kernel) and `--target tensorrt` (its
/// DequantizeLinear scales must be float32 or float16) refuse bfloat16 weights with a message
/// naming the file, the type and the targets that take them, and write nothing.
#[test]
fn ort_and_tensorrt_targets_refuse_bfloat16_weights_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("bf16.onnx");
    save(&two_layers(BFLOAT16), &src);
    for (target, names) in [("ort", "MatMulNBits"), ("tensorrt", "TensorRT")] {
        let out = dir.path().join(format!("bf16.{target}.onnx"));
        let res = bin()
            .arg("convert")
            .arg(&src)
            .arg("-o")
            .arg(&out)
            .args(["--target", target, "--quantize-head"])
            .output()
            .unwrap();
        assert_eq!(res.status.code(), Some(2), "{target}: {res:?}");
        let err = String::from_utf8_lossy(&res.stderr);
        assert!(!err.contains("panicked"), "{err}");
        for want in ["bf16.onnx", "bfloat16", names, "--target qdq-int8"] {
            assert!(err.contains(want), "{target}: missing '{want}' in: {err}");
        }
        assert!(!out.exists(), "{target}: a partial output was written");
    }
}

/// ONNX Runtime's CPU provider cannot run bfloat16 MatMul or DequantizeLinear: when this
/// changes, the bfloat16 outputs below should be compared in ONNX Runtime too.
#[test]
fn ort_cpu_has_no_bfloat16_kernels() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("bf16.onnx");
    save(&two_layers(BFLOAT16), &src);
    let out = dir.path().join("bf16.qdq.onnx");
    convert(&src, &out, &["--target", "qdq-int8", "--quantize-head"]);
    for (path, op) in [(&src, "MatMul"), (&out, "DequantizeLinear")] {
        let res = std::process::Command::new(python())
            .arg("-c")
            .arg(
                "import sys, onnxruntime as ort\n\
                 try:\n    ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n\
                 except Exception as e:\n    print(e)\n    sys.exit(3)\n",
            )
            .arg(path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&res.stdout);
        assert_eq!(
            res.status.code(),
            Some(3),
            "ONNX Runtime now loads {path:?}"
        );
        assert!(
            text.contains("NOT_IMPLEMENTED") && text.contains(op),
            "{path:?}: {text}"
        );
    }
}

/// Decodes the weight a DequantizeLinear computes from constant codes and scales (2-D codes,
/// per-tensor, per-axis or blocked scales) into row-major f32.
fn dequantize(g: &GraphProto, dq: &NodeProto) -> (Vec<i64>, Vec<f32>) {
    let init = |name: &str| -> &TensorProto {
        g.initializer
            .iter()
            .find(|t| t.name.as_deref() == Some(name))
            .unwrap()
    };
    let p = std::path::Path::new("");
    let codes_t = init(&dq.input[0]);
    let scale_t = init(&dq.input[1]);
    let dims = codes_t.dims.clone();
    let count = (dims[0] * dims[1]) as usize;
    let raw = bitnet_model::tensor::raw_bytes(p, codes_t).unwrap();
    let codes: Vec<i8> = match bitnet_model::dtype::name(codes_t.data_type.unwrap()).as_str() {
        "INT8" => raw.iter().map(|&b| b as i8).collect(),
        "INT4" => bitnet_quant::pack::unpack_int4(&raw, count),
        "INT2" => bitnet_quant::pack::unpack_int2(&raw, count),
        other => panic!("codes of type {other}"),
    };
    let scales = bitnet_model::tensor::to_f32(p, scale_t).unwrap();
    let get = |name: &str| {
        dq.attribute
            .iter()
            .find(|a| a.name.as_deref() == Some(name))
            .and_then(|a| a.i)
    };
    let axis = get("axis").unwrap_or(1);
    let block = get("block_size").unwrap_or(0);
    let cols = dims[1] as usize;
    let values = (0..count)
        .map(|i| {
            let (r, c) = (i / cols, i % cols);
            let s = if scales.len() == 1 {
                scales[0]
            } else if block > 0 {
                let sc = scale_t.dims[1] as usize;
                if axis == 0 {
                    scales[(r / block as usize) * sc + c]
                } else {
                    scales[r * sc + c / block as usize]
                }
            } else if axis == 0 {
                scales[r]
            } else {
                scales[c]
            };
            codes[i] as f32 * s
        })
        .collect();
    (dims, values)
}

#[test]
fn bfloat16_weights_convert_losslessly_for_dequantize_linear_targets() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("bf16.onnx");
    let orig = two_layers(BFLOAT16);
    save(&orig, &src);
    let og = orig.graph.as_ref().unwrap();
    for (target, flags) in TARGETS
        .iter()
        .filter(|(t, _)| *t == "onnx" || *t == "qdq-int8")
    {
        let out = dir.path().join(format!("bf16.{target}.onnx"));
        let mut args = flags.to_vec();
        args.push("--quantize-head");
        let r = convert(&src, &out, &args);
        let layers = r["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 2, "{target}: {r}");
        for l in layers {
            assert_eq!(l["dtype"], "bfloat16", "{target}: {r}");
            assert_eq!(l["lossless"], true, "{target}: {r}");
        }
        let m = bitnet_model::Model::load(&out).unwrap().proto;
        let g = m.graph.as_ref().unwrap();
        assert_eq!(scale_types(g), ["BFLOAT16", "BFLOAT16"], "{target}");
        for (layer, weight) in [("fc1", "W1"), ("fc2", "W2")] {
            let n = find_node(g, layer);
            let dq = g
                .node
                .iter()
                .find(|d| d.output.first() == Some(&n.input[1]))
                .unwrap();
            assert_eq!(dq.op_type.as_deref(), Some("DequantizeLinear"));
            let (dims, got) = dequantize(g, dq);
            let w = og
                .initializer
                .iter()
                .find(|t| t.name.as_deref() == Some(weight))
                .unwrap();
            assert_eq!(dims, w.dims, "{target} {layer}");
            let want = bitnet_model::tensor::to_f32(std::path::Path::new(""), w).unwrap();
            assert_eq!(got, want, "{target} {layer}: dequantized weight differs");
        }
    }
}
