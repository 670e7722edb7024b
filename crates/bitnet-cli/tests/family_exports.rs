//! `convert` and `verify` on the dynamo export of another ternary family than BitNet's own:
//! `samples/hf/llama_bitlinear`, the trained Llama-architecture BitNet sample (Falcon3 /
//! Llama3-8B-1.58 form: `LlamaForCausalLM` with packed `BitLinear` layers, SiLU, no sub-norms,
//! llama3 RoPE) exported by `samples/generate_families.py`. Every BitNet layer must convert
//! losslessly to every target, `verify` must pass each output, and ONNX Runtime must reproduce
//! transformers' logits: the export itself and the `ort-int8` conversion (which keeps the
//! graph's own integer activation codes) to float rounding.

mod common;
use common::*;

const SAMPLE: &str = "llama_bitlinear";
/// 7 BitNet linear layers per decoder layer, 2 layers; the untied head stays float.
const BITNET_LAYERS: usize = 14;

#[test]
fn llama_bitnet_export_converts_losslessly_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let original = sample(&format!("hf/{SAMPLE}/model.onnx"));
    let c = ort_logits(&original, SAMPLE, "basic");
    assert!(c["rel_l2"].as_f64().unwrap() < 1e-5, "original: {c}");
    for target in ALL_TARGETS {
        let out = dir.path().join(format!("{target}.onnx"));
        let report = dir.path().join(format!("{target}.json"));
        run_ok(
            bin()
                .arg("convert")
                .arg(&original)
                .arg("-o")
                .arg(&out)
                .arg("--report")
                .arg(&report)
                .args(["--target", target, "-q"])
                .args(["--head", "float", "--embeddings", "float"]),
        );
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        let layers = r["layers"].as_array().unwrap();
        assert_eq!(layers.len(), BITNET_LAYERS, "{target}: {r}");
        for l in layers {
            assert_eq!(l["lossless"], true, "{target}: {l}");
        }
        let v = bin()
            .arg("verify")
            .arg(&original)
            .arg(&out)
            .output()
            .unwrap();
        assert_eq!(
            v.status.code(),
            Some(0),
            "{target}: {}{}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        );
        if *target == "ort-int8" {
            let c = ort_logits(&out, SAMPLE, "basic");
            assert!(c["rel_l2"].as_f64().unwrap() < 1e-5, "{target}: {c}");
        }
    }
}
