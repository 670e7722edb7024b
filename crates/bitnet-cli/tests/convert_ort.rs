//! End-to-end: `bitnet-onnx convert` on every sample, the output loaded and run by the pinned
//! ONNX Runtime (CPU) next to the original on the same inputs.

mod common;
use common::*;

fn convert(
    sample_rel: &str,
    dir: &std::path::Path,
    extra: &[&str],
) -> (std::path::PathBuf, serde_json::Value) {
    let out = dir.join(sample_rel.replace('/', "_"));
    let report = dir.join(format!("{}.json", sample_rel.replace('/', "_")));
    run_ok(
        bin()
            .arg("convert")
            .arg(sample(sample_rel))
            .arg("-o")
            .arg(&out)
            .arg("--report")
            .arg(&report)
            .args(extra),
    );
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    (out, r)
}

/// BitLinear exports are already ternary once their fake-quant chain is folded: the converted
/// model must compute the same thing to float rounding, with the chain gone.
#[test]
fn bitlinear_samples_convert_losslessly_and_match_in_ort() {
    let dir = tempfile::tempdir().unwrap();
    for s in ["bitlinear_ts.onnx", "bitlinear_dynamo.onnx"] {
        let (out, r) = convert(s, dir.path(), &["--quantize-head", "--target", "qdq-int8"]);
        let layers = r["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 3, "{s}: {r}");
        assert!(layers.iter().all(|l| l["lossless"] == true), "{s}: {r}");
        // INT8 codes and a float32 scale per output channel (a per-tensor scale written per
        // axis, so ONNX Runtime's ConstantSharing cannot merge it): just under 4x here.
        assert!(
            r["totals"]["weight_compression"].as_f64().unwrap() > 3.75,
            "{r}"
        );
        // ORT_ENABLE_BASIC keeps DequantizeLinear -> MatMul exact (no int8-activation fusion).
        let cmp = ort_compare(&sample(s), &out, "basic", &["batch=4"]);
        for o in cmp["outputs"].as_array().unwrap() {
            assert!(o["rel_l2"].as_f64().unwrap() < 1e-5, "{s}: {cmp}");
        }
        // Default optimisations may fuse into int8-activation kernels: about 1e-2 relative.
        let cmp = ort_compare(&sample(s), &out, "all", &["batch=4"]);
        for o in cmp["outputs"].as_array().unwrap() {
            assert!(o["rel_l2"].as_f64().unwrap() < 5e-2, "{s}: {cmp}");
        }
        // The weight fake-quant chain is gone: no ReduceMean (absmean) is left.
        let inspect = run_ok(bin().arg("inspect").arg("--json").arg(&out));
        let j: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
        assert!(j["ops"].get("ReduceMean").is_none(), "{s}: {}", j["ops"]);
        assert_eq!(j["ops"]["DequantizeLinear"], 3);
    }
}

/// Every sample converts and ONNX Runtime loads and runs the result at both optimisation levels.
#[test]
fn every_sample_converts_and_runs_in_ort() {
    let dir = tempfile::tempdir().unwrap();
    for s in FLOAT_SAMPLES {
        for target in ["qdq-int8", "ort", "onnx", "tensorrt"] {
            let (out, r) = convert(s, dir.path(), &["--quantize-head", "--target", target]);
            assert!(r["totals"]["converted"].as_u64().unwrap() >= 1, "{s}: {r}");
            for level in ["basic", "all"] {
                let cmp = ort_compare(&sample(s), &out, level, &["batch=2", "seq=8"]);
                for o in cmp["outputs"].as_array().unwrap() {
                    assert_eq!(o["finite"], true, "{s}: {cmp}");
                    // Random float weights lose information when made ternary (rel. weight error
                    // about 0.4); the outputs must still be clearly correlated with the original.
                    assert!(
                        o["cosine"].as_f64().unwrap() > 0.7,
                        "{s} {target} {level}: {cmp}"
                    );
                }
            }
        }
    }
}

/// The standard-ONNX INT2 and TensorRT INT4 outputs of the BitLinear samples are lossless too:
/// ONNX Runtime runs them (opset raised to 25 / 21, Reduce axes rewritten as inputs) and matches
/// the fake-quant original to float rounding.
#[test]
fn bitlinear_onnx_and_tensorrt_targets_are_lossless() {
    let dir = tempfile::tempdir().unwrap();
    for s in ["bitlinear_ts.onnx", "bitlinear_dynamo.onnx"] {
        for (target, opset, code) in [("onnx", 25, "INT2"), ("tensorrt", 21, "INT4")] {
            let (out, r) = convert(s, dir.path(), &["--quantize-head", "--target", target]);
            assert!(
                r["layers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|l| l["lossless"] == true),
                "{r}"
            );
            assert_eq!(r["totals"]["opset_after"], opset, "{s} {target}: {r}");
            let cmp = ort_compare(&sample(s), &out, "basic", &["batch=4"]);
            for o in cmp["outputs"].as_array().unwrap() {
                assert!(o["rel_l2"].as_f64().unwrap() < 1e-5, "{s} {target}: {cmp}");
            }
            let m = bitnet_model::Model::load(&out).unwrap();
            let n = m
                .graph()
                .initializer
                .iter()
                .filter(|t| t.data_type.map(bitnet_model::dtype::name).as_deref() == Some(code))
                .count();
            assert_eq!(n, 3, "{s} {target}");
        }
    }
}

/// The 2-bit ONNX Runtime target: at least 12x smaller linear weights than float32; with float
/// activations (`--accuracy-level 0`) it matches the fake-quant original to float rounding, with
/// the default int8 activations (accuracy_level 4) within 2% relative L2.
#[test]
fn bitlinear_ort_target_is_small_and_exact_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    for s in ["bitlinear_ts.onnx", "bitlinear_dynamo.onnx"] {
        let (exact, r) = convert(s, dir.path(), &["--quantize-head", "--accuracy-level", "0"]);
        assert!(
            r["totals"]["weight_compression"].as_f64().unwrap() >= 12.0,
            "{s}: {r}"
        );
        // 2-bit codes plus one float32 scale per block (K padded to the block).
        let bits = r["totals"]["bits_per_weight"].as_f64().unwrap();
        assert!(bits > 2.0 && bits < 2.7, "{s}: {bits}");
        for level in ["basic", "all"] {
            let cmp = ort_compare(&sample(s), &exact, level, &["batch=4"]);
            for o in cmp["outputs"].as_array().unwrap() {
                assert!(o["rel_l2"].as_f64().unwrap() < 1e-5, "{s} {level}: {cmp}");
            }
        }
        let (fast, _) = convert(s, dir.path(), &["--quantize-head"]);
        let cmp = ort_compare(&sample(s), &fast, "all", &["batch=4"]);
        for o in cmp["outputs"].as_array().unwrap() {
            assert!(o["rel_l2"].as_f64().unwrap() < 2e-2, "{s}: {cmp}");
        }
        let inspect = run_ok(bin().arg("inspect").arg("--json").arg(&fast));
        let j: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
        assert_eq!(j["ops"]["com.microsoft::MatMulNBits"], 3, "{}", j["ops"]);
        assert!(j["ops"].get("MatMul").is_none() && j["ops"].get("Gemm").is_none());
    }
}

#[test]
fn transformer_attention_products_are_not_candidates() {
    let out = run_ok(
        bin()
            .arg("inspect")
            .arg("--json")
            .arg(sample("transformer_ext/model.onnx")),
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let layers = j["linear_layers"].as_array().unwrap();
    assert_eq!(layers.len(), 17);
    let cands: Vec<_> = layers.iter().filter(|l| l["candidate"] == true).collect();
    assert_eq!(cands.len(), 13);
    for l in layers.iter().filter(|l| l["candidate"] == false) {
        assert_eq!(l["reason"], "both operands computed at run time", "{l}");
    }
    // Parameters add up to the initializers' sizes, external data included.
    let by_dtype = j["parameters"]["by_dtype"].as_object().unwrap();
    let sum: u64 = by_dtype
        .values()
        .map(|v| v["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, j["parameters"]["bytes"].as_u64().unwrap());
    assert!(j["external_data"]["tensors"].as_u64().unwrap() > 0);
    assert!(sum >= j["external_data"]["bytes"].as_u64().unwrap());
}

#[test]
fn conversion_is_deterministic_and_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.onnx");
    // Same input and flags, different thread counts, output names and report paths:
    // byte-identical output (the recorded flags leave out what does not change it).
    let mut runs = Vec::new();
    for (threads, name) in [("1", "a.onnx"), ("2", "elsewhere.onnx")] {
        let out = dir.path().join(name);
        run_ok(
            bin()
                .arg("convert")
                .arg(sample("transformer.onnx"))
                .arg("-o")
                .arg(&out)
                .arg("--report")
                .arg(dir.path().join(format!("{name}.json")))
                .args(["--threads", threads, "-q"]),
        );
        runs.push(std::fs::read(&out).unwrap());
    }
    assert!(
        runs[0] == runs[1],
        "output depends on its path or the thread count"
    );
    let c = dir.path().join("c.onnx");
    let out = run_ok(bin().arg("convert").arg(&a).arg("-o").arg(&c));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("already converted"), "{text}");
}

/// A model with external data written to two directories: the same model and data bytes.
#[test]
fn external_data_output_does_not_depend_on_where_it_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for sub in ["one", "two/deeper"] {
        let d = dir.path().join(sub);
        std::fs::create_dir_all(&d).unwrap();
        let out = d.join("model.onnx");
        run_ok(
            bin()
                .arg("convert")
                .arg(sample("hf/bitlinear/model.onnx"))
                .arg("-o")
                .arg(&out)
                .args(["--target", "ort-int8", "-q"]),
        );
        files.push((
            std::fs::read(&out).unwrap(),
            std::fs::read(d.join("model.onnx.data")).unwrap(),
        ));
    }
    assert!(files[0].0 == files[1].0, "model.onnx differs");
    assert!(files[0].1 == files[1].1, "model.onnx.data differs");
}

/// The streaming path (new weights written to the output's data file as they are made, input
/// pages released): byte-identical model and data files whatever the thread count, and the
/// same tensors as the in-memory path.
#[test]
fn external_data_conversion_is_deterministic_across_threads() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ext.onnx");
    let data = dir.path().join("ext.onnx.data");
    let mut runs = Vec::new();
    for threads in ["1", "2", "3"] {
        let o = run_ok(
            bin()
                .arg("convert")
                .arg(sample("transformer_ext/model.onnx"))
                .arg("-o")
                .arg(&out)
                .args([
                    "--external-data",
                    "--quantize-head",
                    "-q",
                    "--threads",
                    threads,
                ]),
        );
        // --quiet: no report, no progress.
        assert!(o.stdout.is_empty() && o.stderr.is_empty(), "{o:?}");
        let model = String::from_utf8_lossy(&std::fs::read(&out).unwrap())
            .replace(&format!("--threads {threads}"), "--threads N");
        runs.push((model, std::fs::read(&data).unwrap()));
    }
    assert!(runs.windows(2).all(|w| w[0] == w[1]));
    // Without a flag, an external-data input gives an external-data output: the same files.
    let dflt = dir.path().join("dflt.onnx");
    run_ok(
        bin()
            .arg("convert")
            .arg(sample("transformer_ext/model.onnx"))
            .arg("-o")
            .arg(&dflt)
            .args(["--quantize-head", "-q"]),
    );
    assert_eq!(
        std::fs::read(dir.path().join("dflt.onnx.data")).unwrap(),
        runs[0].1
    );
    // The single-file output of the same conversion holds the same tensors.
    let emb = dir.path().join("emb.onnx");
    run_ok(
        bin()
            .arg("convert")
            .arg(sample("transformer_ext/model.onnx"))
            .arg("-o")
            .arg(&emb)
            .args(["--quantize-head", "-q", "--single-file"]),
    );
    assert!(!dir.path().join("emb.onnx.data").exists());
    let tensors = |p: &std::path::Path| {
        let m = bitnet_model::Model::load(p).unwrap();
        let mut v: Vec<(String, Vec<u8>)> = m
            .graph()
            .initializer
            .iter()
            .map(|t| {
                let raw = bitnet_model::tensor::raw_bytes(p, t).unwrap().into_owned();
                (t.name.clone().unwrap(), raw)
            })
            .collect();
        v.sort();
        v
    };
    assert!(tensors(&out) == tensors(&emb));
    assert!(!dir.path().read_dir().unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains(".tmp-")));
}

#[test]
fn convert_refuses_to_overwrite_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.onnx");
    std::fs::copy(sample("mlp.onnx"), &m).unwrap();
    let before = std::fs::read(&m).unwrap();
    let out = bin()
        .arg("convert")
        .arg(&m)
        .arg("-o")
        .arg(&m)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("m.onnx"));
    assert_eq!(std::fs::read(&m).unwrap(), before);
}

#[test]
fn bad_model_gives_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("bad.onnx");
    std::fs::write(&m, b"this is not a model").unwrap();
    let out = bin().arg("inspect").arg(&m).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.onnx") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn tensorrt_int8_variant_passes_check_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (out, _) = convert(
        "bitlinear_ts.onnx",
        dir.path(),
        &["--quantize-head", "--target", "tensorrt", "--tensorrt-int8"],
    );
    run_ok(bin().args(["check", "--target", "tensorrt"]).arg(&out));
    let cmp = ort_compare(&sample("bitlinear_ts.onnx"), &out, "basic", &["batch=4"]);
    for o in cmp["outputs"].as_array().unwrap() {
        assert!(o["rel_l2"].as_f64().unwrap() < 1e-5, "{cmp}");
    }
}
