//! Tied embeddings: one float table `W[V, D]` read by a `Gather` (the embedding lookup) and by
//! the output projection, as PyTorch exports tied weights: `Gemm(h, W, transB=1)`, or
//! `MatMul(h, Transpose(W))`; and a `[K, N]` table read directly by a `MatMul`. For every
//! target, with `--embeddings float`, the Gather must still read the original float tensor bit for bit, the projection
//! must be converted, and ONNX Runtime must compute what the original computes (the table is
//! already ternary, so to float rounding: relative L2 < 1e-5 with ORT_ENABLE_BASIC).

mod build_model;
mod common;

use build_model::*;
use common::*;

use bitnet_model::proto::ModelProto;

const V: usize = 128; // ort_compare draws token ids in [0, 100)
const D: usize = 64;

/// `ids[batch] -> Gather(W) -> Tanh -> Gemm(., W, transB=1) -> logits[batch, V]`.
fn tied_gemm() -> ModelProto {
    let w = ternary(V, D, false, 1);
    let g = graph(
        "tied_gemm",
        vec![
            node("Gather", "embed", &["W", "ids"], &["emb"]),
            node("Tanh", "act", &["emb"], &["h"]),
            with(
                node("Gemm", "head", &["h", "W", "bias"], &["logits"]),
                vec![attr_i("transB", 1)],
            ),
        ],
        vec![vi("ids", INT64, "batch")],
        vec![vi("logits", FLOAT, &format!("batch,{V}"))],
        vec![
            bitnet_model::tensor::from_f32("W", &[V as i64, D as i64], &w),
            bitnet_model::tensor::from_f32("bias", &[V as i64], &vec![0.25; V]),
        ],
    );
    model(g, 17)
}

/// `ids[batch, seq] -> Gather(W) -> Tanh -> MatMul(., Transpose(W)) -> logits[batch, seq, V]`.
fn tied_matmul() -> ModelProto {
    let w = ternary(V, D, false, 2);
    let g = graph(
        "tied_matmul",
        vec![
            node("Gather", "embed", &["W", "ids"], &["emb"]),
            node("Tanh", "act", &["emb"], &["h"]),
            with(
                node("Transpose", "W_T", &["W"], &["W_transposed"]),
                vec![attr_ints("perm", &[1, 0])],
            ),
            node("MatMul", "head", &["h", "W_transposed"], &["logits"]),
        ],
        vec![vi("ids", INT64, "batch,seq")],
        vec![vi("logits", FLOAT, &format!("batch,seq,{V}"))],
        vec![bitnet_model::tensor::from_f32(
            "W",
            &[V as i64, D as i64],
            &w,
        )],
    );
    model(g, 17)
}

/// A `[K, N]` table read by a Gather (rows of N features) and directly as MatMul's B:
/// `Tanh(Gather(W, ids) + MatMul(x, W))`.
fn tied_direct() -> ModelProto {
    let w = ternary(V, D, true, 3);
    let g = graph(
        "tied_direct",
        vec![
            node("Gather", "embed", &["W", "ids"], &["emb"]),
            node("MatMul", "proj", &["x", "W"], &["p"]),
            node("Add", "sum", &["emb", "p"], &["s"]),
            node("Tanh", "act", &["s"], &["y"]),
        ],
        vec![
            vi("ids", INT64, "batch"),
            vi("x", FLOAT, &format!("batch,{V}")),
        ],
        vec![vi("y", FLOAT, &format!("batch,{D}"))],
        vec![bitnet_model::tensor::from_f32(
            "W",
            &[V as i64, D as i64],
            &w,
        )],
    );
    model(g, 17)
}

/// The Gather of `out` reads an initializer `W` bit-identical to the original's, and no other
/// float copy of the table exists.
fn assert_table_untouched(orig: &ModelProto, out: &ModelProto, what: &str) {
    let og = orig.graph.as_ref().unwrap();
    let g = out.graph.as_ref().unwrap();
    let gather = find_node(g, "embed");
    assert_eq!(gather.input[0], "W", "{what}: the Gather was rewired");
    let find = |g: &bitnet_model::proto::GraphProto| {
        g.initializer
            .iter()
            .find(|t| t.name.as_deref() == Some("W"))
            .cloned()
            .unwrap_or_else(|| panic!("{what}: initializer W is gone"))
    };
    let (a, b) = (find(og), find(g));
    assert_eq!(a.data_type, b.data_type, "{what}");
    assert_eq!(a.dims, b.dims, "{what}");
    let p = std::path::Path::new("");
    assert_eq!(
        bitnet_model::tensor::raw_bytes(p, &a).unwrap(),
        bitnet_model::tensor::raw_bytes(p, &b).unwrap(),
        "{what}: the embedding table changed"
    );
    let tables = g
        .initializer
        .iter()
        .filter(|t| t.data_type == Some(FLOAT) && t.dims.iter().product::<i64>() == (V * D) as i64)
        .count();
    assert_eq!(tables, 1, "{what}: the float table was duplicated");
}

/// The projection node `name` is converted: a MatMulNBits (ort) or fed by a DequantizeLinear.
fn assert_converted(out: &ModelProto, name: &str, target: &str) {
    let g = out.graph.as_ref().unwrap();
    let n = find_node(g, name);
    if target == "ort" {
        assert_eq!(n.op_type.as_deref(), Some("MatMulNBits"), "{target}: {n:?}");
        assert_eq!(n.domain.as_deref(), Some("com.microsoft"));
    } else {
        assert_eq!(
            producer_op(g, &n.input[1]),
            Some("DequantizeLinear"),
            "{target}: {n:?}"
        );
    }
}

fn run_case(name: &str, m: &ModelProto, head: &str, weight: &str, folded: bool, dims: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join(format!("{name}.onnx"));
    save(m, &src);
    for (target, flags) in TARGETS {
        let out = dir.path().join(format!("{name}.{target}.onnx"));
        let mut args = flags.to_vec();
        // The projection ternary like the other layers, the embedding float (the ort targets
        // quantize it by default).
        args.extend(["--quantize-head", "--embeddings", "float"]);
        let r = convert(&src, &out, &args);
        let what = format!("{name} {target}");
        let layers = r["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1, "{what}: {r}");
        assert_eq!(layers[0]["node"], head, "{what}: {r}");
        assert_eq!(layers[0]["weight"], weight, "{what}: {r}");
        assert_eq!(layers[0]["folded"], folded, "{what}: {r}");
        assert_eq!(layers[0]["lossless"], true, "{what}: {r}");
        let converted = bitnet_model::Model::load(&out).unwrap().proto;
        assert_table_untouched(m, &converted, &what);
        assert_converted(&converted, head, target);
        if folded {
            // The Transpose existed only to feed the projection: folded and removed.
            assert!(
                !all_nodes(&converted)
                    .iter()
                    .any(|n| n.op_type.as_deref() == Some("Transpose")),
                "{what}: Transpose left behind"
            );
        }
        if *target == "tensorrt" {
            run_ok(bin().args(["check", "--target", "tensorrt"]).arg(&out));
        }
        let cmp = ort_compare(&src, &out, "basic", dims);
        assert_close(&cmp, 1e-5, &what);
    }
}

#[test]
fn tied_gemm_trans_b_head_is_converted_and_the_embedding_kept() {
    run_case("tied_gemm", &tied_gemm(), "head", "W", false, &["batch=3"]);
}

#[test]
fn tied_matmul_on_transposed_table_is_converted_and_the_embedding_kept() {
    run_case(
        "tied_matmul",
        &tied_matmul(),
        "head",
        "W_transposed",
        true,
        &["batch=2", "seq=5"],
    );
}

#[test]
fn table_read_by_gather_and_directly_by_matmul() {
    run_case(
        "tied_direct",
        &tied_direct(),
        "proj",
        "W",
        false,
        &["batch=3"],
    );
}
