//! Snapshots of the rewritten graph (`bitnet_model::text::to_text`) for every Gemm variant in
//! `samples/gemm` and the folded BitLinear chains (`samples/bitlinear_ts.onnx`,
//! `samples/bitlinear_dynamo.onnx`), for every target: one test per sample and target, so one
//! failure does not hide the others. Any change to what an emitter writes (node order, names,
//! attributes, initializer types and shapes) shows up as a snapshot diff; review it and accept
//! with `cargo insta review` (or `INSTA_UPDATE=always`).

mod common;
use common::*;

/// Converts `sample` (relative to `samples/`) with `--quantize-head` and `target` and compares
/// the graph with its snapshot `STEM__TARGET`.
fn check(s: &str, target: &str) {
    let dir = tempfile::tempdir().unwrap();
    let stem = s.trim_end_matches(".onnx").replace('/', "_");
    let out = dir.path().join(format!("{stem}.{target}.onnx"));
    run_ok(
        bin()
            .arg("convert")
            .arg(sample(s))
            .arg("-o")
            .arg(&out)
            .args(["--quantize-head", "-q", "--target", target]),
    );
    let m = bitnet_model::Model::load(&out).unwrap().proto;
    let text = bitnet_model::text::to_text(m.graph.as_ref().unwrap());
    let opsets: Vec<String> = m
        .opset_import
        .iter()
        .map(|o| {
            format!(
                "{}={}",
                o.domain
                    .as_deref()
                    .filter(|d| !d.is_empty())
                    .unwrap_or("ai.onnx"),
                o.version.unwrap_or(0)
            )
        })
        .collect();
    let header = format!(
        "{s} --target {target}\nir_version {}, opsets {}\n",
        m.ir_version.unwrap_or(0),
        opsets.join(", ")
    );
    insta::assert_snapshot!(format!("{stem}__{target}"), header + &text);
}

/// One test per target for `sample`, in a module named after it.
macro_rules! snapshots {
    ($module:ident, $sample:expr) => {
        mod $module {
            #[test]
            fn ort() {
                super::check($sample, "ort");
            }
            #[test]
            fn ort_int8() {
                super::check($sample, "ort-int8");
            }
            #[test]
            fn onnx() {
                super::check($sample, "onnx");
            }
            #[test]
            fn tensorrt() {
                super::check($sample, "tensorrt");
            }
            #[test]
            fn qdq_int8() {
                super::check($sample, "qdq-int8");
            }
        }
    };
}

snapshots!(gemm_alpha_beta, "gemm/alpha_beta.onnx");
snapshots!(gemm_both_trans, "gemm/both_trans.onnx");
snapshots!(gemm_no_bias, "gemm/no_bias.onnx");
snapshots!(gemm_scalar_bias, "gemm/scalar_bias.onnx");
snapshots!(gemm_trans_a, "gemm/transA.onnx");
snapshots!(gemm_trans_b, "gemm/transB.onnx");
snapshots!(bitlinear_ts, "bitlinear_ts.onnx");
snapshots!(bitlinear_dynamo, "bitlinear_dynamo.onnx");
