//! `bitnet-onnx verify` on the real outputs of every target, and on a deliberately broken one.

mod common;
use common::*;

#[test]
fn every_target_of_the_bitlinear_samples_verifies() {
    let dir = tempfile::tempdir().unwrap();
    for s in ["bitlinear_ts.onnx", "bitlinear_dynamo.onnx"] {
        for target in ["ort", "ort-int8", "onnx", "tensorrt", "qdq-int8"] {
            let out = dir.path().join(format!("{target}.onnx"));
            run_ok(
                bin()
                    .arg("convert")
                    .arg(sample(s))
                    .arg("-o")
                    .arg(&out)
                    .args(["--quantize-head", "--target", target, "-q"]),
            );
            let json = dir.path().join(format!("{target}.json"));
            let o = bin()
                .arg("verify")
                .arg(sample(s))
                .arg(&out)
                .args(["--dim", "batch=3", "--samples", "2", "--json"])
                .arg(&json)
                .output()
                .unwrap();
            assert_eq!(
                o.status.code(),
                Some(0),
                "{s} {target}: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            let r: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
            assert_eq!(r["pass"], true);
            assert_eq!(r["layers"].as_array().unwrap().len(), 3, "{r}");
            // ort's default accuracy_level 4 quantizes activations to int8 per block of K
            // (tract follows it); ort-int8 quantizes them per token as the samples' BitLinear
            // chain already does, so it is exact.
            let tol = if target == "ort" { 1e-2 } else { 1e-5 };
            for o in r["outputs"].as_array().unwrap() {
                assert!(o["rel_l2"].as_f64().unwrap() < tol, "{s} {target}: {o}");
            }
        }
    }
}

/// A converted model with a wrong scale on one layer fails, names that layer, exits 1.
#[test]
fn a_wrong_scale_fails_and_names_the_layer() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.onnx");
    run_ok(
        bin()
            .arg("convert")
            .arg(sample("bitlinear_ts.onnx"))
            .arg("-o")
            .arg(&good)
            .args(["--target", "qdq-int8", "--quantize-head", "-q"]),
    );
    let mut m = bitnet_model::Model::load(&good).unwrap();
    let g = m.proto.graph.as_mut().unwrap();
    let scale = g
        .initializer
        .iter_mut()
        .find(|t| t.name.as_deref() == Some("/fc2/Transpose_output_0_scale"))
        .expect("fc2 scale initializer");
    let v: Vec<f32> = bitnet_model::tensor::to_f32(std::path::Path::new("good.onnx"), scale)
        .unwrap()
        .iter()
        .map(|x| x * 1.5)
        .collect();
    let dims = scale.dims.clone();
    *scale = bitnet_model::tensor::from_f32("/fc2/Transpose_output_0_scale", &dims, &v);
    let bad = dir.path().join("bad.onnx");
    bitnet_model::save(&m.proto, &bad, &Default::default(), &[]).unwrap();
    let json = dir.path().join("bad.json");
    let o = bin()
        .arg("verify")
        .arg(sample("bitlinear_ts.onnx"))
        .arg(&bad)
        .args(["--dim", "batch=4", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["first_failing_layer"], "/fc2/MatMul", "{r}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("/fc2/MatMul"));
}

#[test]
fn an_unrunnable_model_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("garbage.onnx");
    std::fs::write(&bad, [0xffu8; 64]).unwrap();
    let o = bin()
        .arg("verify")
        .arg(sample("mlp.onnx"))
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("garbage.onnx"));
}

/// `convert --verify` gates on the same check: the lossless BitLinear sample passes (exit 0);
/// the float MLP made ternary does not (exit 1), and the output file is still written.
#[test]
fn convert_with_verify_sets_the_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let ok = dir.path().join("ok.onnx");
    run_ok(
        bin()
            .arg("convert")
            .arg(sample("bitlinear_ts.onnx"))
            .arg("-o")
            .arg(&ok)
            .args(["--quantize-head", "--verify", "-q"]),
    );
    let bad = dir.path().join("lossy.onnx");
    let o = bin()
        .arg("convert")
        .arg(sample("mlp.onnx"))
        .arg("-o")
        .arg(&bad)
        .args(["--quantize-head", "--verify"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("FAIL"));
    assert!(bad.exists());
}
