//! Snapshots of the rewritten graph (`bitnet_model::text::to_text`) for every Gemm variant in
//! `samples/gemm` and the folded BitLinear chains (`samples/bitlinear_ts.onnx`,
//! `samples/bitlinear_dynamo.onnx`), for every target with its default settings, converted by
//! the library itself: one test per sample and target, so one failure does not hide the
//! others. Any change to what an emitter writes (node order, names, attributes, initializer
//! types and shapes) shows up as a snapshot diff; review it and accept with `cargo insta
//! review` (or `INSTA_UPDATE=always`).

use std::path::PathBuf;

use bitnet_model::Model;
use bitnet_quant::convert::{self, ConvertOptions, Selection};
use bitnet_quant::emit::Emitter;
use bitnet_quant::quant::QuantConfig;
use bitnet_quant::targets::{self, Id};

fn sample(s: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../samples")
        .join(s)
}

/// The emitter `bitnet-onnx convert --target NAME` uses with its default flags.
fn emitter(target: &str) -> Box<dyn Emitter> {
    match targets::by_name(target).map(|t| t.id) {
        Some(Id::Ort) => Box::new(bitnet_quant::emit::ort::Ort {
            block_size: None,
            accuracy_level: 4,
        }),
        Some(Id::OrtInt8) => Box::new(bitnet_quant::emit::ort_int8::OrtInt8),
        Some(Id::Onnx) => Box::new(bitnet_quant::emit::onnx_int2::OnnxInt2),
        Some(Id::Tensorrt) => Box::new(bitnet_quant::emit::tensorrt::TensorRt {
            block_size: 128,
            int8: false,
        }),
        Some(Id::QdqInt8) => Box::new(bitnet_quant::emit::qdq_int8::QdqInt8),
        None => panic!("no target {target}"),
    }
}

/// Converts `s` (relative to `samples/`) for `target` with the head made ternary like the
/// other layers, and compares the graph with its snapshot `STEM__TARGET`.
fn check(s: &str, target: &str) {
    let path = sample(s);
    let mut model = Model::load(&path).unwrap();
    let emitter = emitter(target);
    let opts = ConvertOptions {
        quant: QuantConfig::default(),
        selection: Selection {
            quantize_head: true,
            ..Default::default()
        },
        emitter: emitter.as_ref(),
        vocab: bitnet_quant::vocab::VocabOptions::none(),
        last_logits: false,
        flags: String::new(),
        progress: None,
        source: Some(&model.mappings),
        sink: None,
        batch_bytes: None,
    };
    let report = convert::convert(&mut model.proto, &path, &opts).unwrap();
    assert!(!report.layers.is_empty(), "{s}: nothing converted");
    let m = &model.proto;
    let stem = s.trim_end_matches(".onnx").replace('/', "_");
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
