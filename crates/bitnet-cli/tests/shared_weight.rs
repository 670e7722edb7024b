//! One weight initializer read by several linear layers: it is quantized once (one set of
//! codes in the output, the report's `shared_with` naming the other layers), every layer is
//! rewired to it, and ONNX Runtime computes what the original computes (the weight is already
//! ternary: relative L2 < 1e-5 with ORT_ENABLE_BASIC).

mod build_model;
mod common;

use build_model::*;
use common::*;

use bitnet_model::proto::ModelProto;

const K: usize = 64;

/// `x -> MatMul fc_a(W) -> Relu -> {MatMul fc_b(W) -> Relu -> y, Gemm fc_c(W, C) -> Relu -> z}`:
/// three layers of the same `[K, N]` layout reading `W`.
fn shared() -> ModelProto {
    let w = ternary(K, K, true, 11);
    let g = graph(
        "shared",
        vec![
            node("MatMul", "fc_a", &["x", "W"], &["a0"]),
            node("Relu", "relu_a", &["a0"], &["a"]),
            node("MatMul", "fc_b", &["a", "W"], &["b0"]),
            node("Relu", "relu_b", &["b0"], &["y"]),
            node("Gemm", "fc_c", &["a", "W", "C"], &["c0"]),
            node("Relu", "relu_c", &["c0"], &["z"]),
        ],
        vec![vi("x", FLOAT, &format!("batch,{K}"))],
        vec![
            vi("y", FLOAT, &format!("batch,{K}")),
            vi("z", FLOAT, &format!("batch,{K}")),
        ],
        vec![
            bitnet_model::tensor::from_f32("W", &[K as i64, K as i64], &w),
            bitnet_model::tensor::from_f32("C", &[K as i64], &vec![0.5; K]),
        ],
    );
    model(g, 17)
}

/// Code initializers (packed ternary weights) of the main graph.
fn code_initializers(m: &ModelProto, target: &str) -> Vec<String> {
    let g = m.graph.as_ref().unwrap();
    g.initializer
        .iter()
        .filter(|t| {
            let dt = bitnet_model::dtype::name(t.data_type.unwrap_or(0));
            match target {
                "ort" => t
                    .name
                    .as_deref()
                    .is_some_and(|n| n.ends_with("_MatMulNBits_B")),
                _ => matches!(dt.as_str(), "INT8" | "INT4" | "INT2"),
            }
        })
        .filter_map(|t| t.name.clone())
        .collect()
}

#[test]
fn shared_weight_is_quantized_once_and_every_layer_rewired() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("shared.onnx");
    save(&shared(), &src);
    for (target, flags) in TARGETS {
        let out = dir.path().join(format!("shared.{target}.onnx"));
        let r = convert(&src, &out, flags);
        let layers = r["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1, "{target}: one weight, one entry: {r}");
        let l = &layers[0];
        assert_eq!(l["node"], "fc_a", "{target}: {r}");
        assert_eq!(l["weight"], "W", "{target}: {r}");
        assert_eq!(
            l["shared_with"],
            serde_json::json!(["fc_b", "fc_c"]),
            "{target}: {r}"
        );
        assert_eq!(l["lossless"], true, "{target}: {r}");
        assert_eq!(r["totals"]["converted"], 3, "{target}: {r}");
        assert_eq!(
            r["totals"]["weight_bytes_before"],
            (K * K * 4) as u64,
            "{target}: the shared weight is counted once: {r}"
        );

        let m = bitnet_model::Model::load(&out).unwrap().proto;
        let g = m.graph.as_ref().unwrap();
        let codes = code_initializers(&m, target);
        assert_eq!(codes.len(), 1, "{target}: codes stored once: {codes:?}");
        assert!(
            !g.initializer.iter().any(|t| t.name.as_deref() == Some("W")),
            "{target}: the float weight is still there"
        );
        let dq: Vec<_> = g
            .node
            .iter()
            .filter(|n| n.op_type.as_deref() == Some("DequantizeLinear"))
            .collect();
        for name in ["fc_a", "fc_b", "fc_c"] {
            let n = find_node(g, name);
            if *target == "ort" {
                assert_eq!(n.op_type.as_deref(), Some("MatMulNBits"), "{target}: {n:?}");
                assert_eq!(n.input[1], codes[0], "{target}: {n:?}");
            } else {
                assert_eq!(dq.len(), 1, "{target}: one DequantizeLinear: {dq:?}");
                assert_eq!(n.input[1], dq[0].output[0], "{target}: {n:?}");
                assert_eq!(dq[0].input[0], codes[0], "{target}");
            }
        }
        if *target == "tensorrt" {
            run_ok(bin().args(["check", "--target", "tensorrt"]).arg(&out));
        }
        let cmp = ort_compare(&src, &out, "basic", &["batch=3"]);
        assert_close(&cmp, 1e-5, target);
    }
}

/// A weight read as `[K, N]` by a MatMul and as `[N, K]` by a Gemm with transB=1 cannot share
/// one set of codes: the first layout is converted, the other layer keeps the float weight and
/// the report says why.
#[test]
fn weight_shared_across_layouts_converts_one_and_keeps_the_float_for_the_other() {
    let w = ternary(K, K, true, 12);
    let g = graph(
        "shared_layouts",
        vec![
            node("MatMul", "fc_kn", &["x", "W"], &["a0"]),
            node("Relu", "relu_a", &["a0"], &["y"]),
            with(
                node("Gemm", "fc_nk", &["x", "W"], &["b0"]),
                vec![attr_i("transB", 1)],
            ),
            node("Relu", "relu_b", &["b0"], &["z"]),
        ],
        vec![vi("x", FLOAT, &format!("batch,{K}"))],
        vec![
            vi("y", FLOAT, &format!("batch,{K}")),
            vi("z", FLOAT, &format!("batch,{K}")),
        ],
        vec![bitnet_model::tensor::from_f32(
            "W",
            &[K as i64, K as i64],
            &w,
        )],
    );
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("layouts.onnx");
    save(&model(g, 17), &src);
    for (target, flags) in TARGETS {
        let out = dir.path().join(format!("layouts.{target}.onnx"));
        let r = convert(&src, &out, flags);
        let layers = r["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1, "{target}: {r}");
        assert_eq!(layers[0]["node"], "fc_kn", "{target}: {r}");
        assert_eq!(layers[0]["shared_with"], serde_json::json!([]), "{r}");
        let skipped = r["totals"]["skipped"].as_array().unwrap();
        assert!(
            skipped
                .iter()
                .any(|s| s["node"] == "fc_nk"
                    && s["reason"].as_str().unwrap().contains("transposed")),
            "{target}: {r}"
        );
        let m = bitnet_model::Model::load(&out).unwrap().proto;
        let g = m.graph.as_ref().unwrap();
        assert_eq!(find_node(g, "fc_nk").input[1], "W", "{target}");
        assert!(
            g.initializer.iter().any(|t| t.name.as_deref() == Some("W")),
            "{target}: the float weight the Gemm still reads was removed"
        );
        let cmp = ort_compare(&src, &out, "basic", &["batch=3"]);
        assert_close(&cmp, 1e-5, target);
    }
}
