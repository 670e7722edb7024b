//! Snapshots of the rewritten graph (`bitnet_model::text::to_text`) for every Gemm variant in
//! `samples/gemm` and the folded BitLinear chains (`samples/bitlinear_ts.onnx`,
//! `samples/bitlinear_dynamo.onnx`), for every target. Any change to what an emitter writes
//! (node order, names, attributes, initializer types and shapes) shows up as a snapshot diff;
//! review it and accept with `cargo insta review` (or `INSTA_UPDATE=always`).

mod common;
use common::*;

const SAMPLES: &[&str] = &[
    "gemm/alpha_beta.onnx",
    "gemm/both_trans.onnx",
    "gemm/no_bias.onnx",
    "gemm/scalar_bias.onnx",
    "gemm/transA.onnx",
    "gemm/transB.onnx",
    "bitlinear_ts.onnx",
    "bitlinear_dynamo.onnx",
];

const TARGETS: &[&str] = &["ort", "ort-int8", "onnx", "tensorrt", "qdq-int8"];

#[test]
fn rewritten_graphs_match_their_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    for s in SAMPLES {
        for target in TARGETS {
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
    }
}
