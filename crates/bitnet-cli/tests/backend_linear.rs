//! Every Gemm and MatMul case of the ONNX backend node tests (from the pinned onnx package,
//! dumped by scripts/test.sh) with its weight made constant from the test data: it converts
//! (or is skipped with a reason), and the converted model computes exactly what the original
//! computes with the dequantized ternary weight (verify's dequantized reference, in tract).

mod common;
use common::*;

use bitnet_model::proto::TensorProto;
use prost::Message;

fn backend_dir() -> std::path::PathBuf {
    let d = std::env::var_os("BITNET_ONNX_BACKEND_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/onnx-backend"));
    assert!(
        d.join("node").is_dir(),
        "{} missing: run scripts/test.sh",
        d.display()
    );
    d
}

#[test]
fn backend_gemm_and_matmul_cases_convert_and_match_the_dequantized_weights() {
    let root = backend_dir().join("node");
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| {
            (n.starts_with("test_gemm_") || n.starts_with("test_matmul_"))
                && n != "test_matmulinteger"
        })
        .collect();
    cases.sort();
    assert!(cases.len() >= 18, "{cases:?}");
    let dir = tempfile::tempdir().unwrap();
    let mut converted = 0;
    for case in &cases {
        let src = root.join(case);
        let mut m = bitnet_model::Model::load(src.join("model.onnx"))
            .unwrap()
            .proto;
        let g = m.graph.as_mut().unwrap();
        // Inputs 1.. (B and C) become initializers holding the test data.
        let names: Vec<String> = g
            .input
            .iter()
            .skip(1)
            .filter_map(|v| v.name.clone())
            .collect();
        for (i, name) in names.iter().enumerate() {
            let bytes = std::fs::read(src.join(format!("input_{}.pb", i + 1))).unwrap();
            let mut t = TensorProto::decode(&bytes[..]).unwrap();
            t.name = Some(name.clone());
            g.initializer.push(t);
        }
        g.input.truncate(1);
        let orig = dir.path().join(format!("{case}.onnx"));
        bitnet_model::save(&m, &orig, &Default::default(), &[]).unwrap();
        let out = dir.path().join(format!("{case}.q.onnx"));
        let report = dir.path().join(format!("{case}.json"));
        run_ok(
            bin()
                .arg("convert")
                .arg(&orig)
                .arg("-o")
                .arg(&out)
                .args(["--quantize-head", "--target", "qdq-int8", "-q", "--report"])
                .arg(&report),
        );
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        let n = r["layers"].as_array().unwrap().len();
        if n == 0 {
            // Only weights that are not 2-D may be skipped, and the report must say so.
            let skipped = r["totals"]["skipped"].as_array().unwrap();
            assert!(
                !skipped.is_empty(),
                "{case}: neither converted nor skipped: {r}"
            );
            for s in skipped {
                assert!(
                    s["reason"].as_str().unwrap().contains("not 2-D"),
                    "{case}: {s}"
                );
            }
            continue;
        }
        converted += 1;
        let json = dir.path().join(format!("{case}.verify.json"));
        let _ = bin()
            .arg("verify")
            .arg(&orig)
            .arg(&out)
            .arg("--json")
            .arg(&json)
            .output()
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).unwrap_or_default())
                .unwrap_or_else(|e| panic!("{case}: no verify report: {e}"));
        assert_eq!(v["dequantized_reference"]["agrees"], true, "{case}: {v}");
    }
    // All 11 Gemm cases and test_matmul_2d; the other MatMul cases have 1-, 3- or 4-D weights.
    assert!(
        converted >= 12,
        "only {converted} of {} cases converted",
        cases.len()
    );
}
