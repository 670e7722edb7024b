//! `convert` and `verify` on the dynamo exports of the ternary families other than BitNet's
//! own, `samples/hf/<family>/`, each the trained family sample of `samples/checkpoints/families`
//! as transformers computes with it, exported by `samples/generate_families.py`:
//!
//! * `llama_bitlinear` (Falcon3 / Llama3-8B-1.58: `LlamaForCausalLM`, packed `BitLinear`, SiLU,
//!   llama3 RoPE), `qwen3_autobitlinear` (codys12 Qwen3-BitNet: `AutoBitLinear` online with an
//!   RMSNorm on each linear's input) and `onebitllm` (1bitLLM: transformers'
//!   `BitNetForCausalLM` with SiLU on its weights, what its remote code computes): BitNet's
//!   per-token int8 activations in the graph, weights ternarised in the graph (per tensor).
//! * `trilm_unpacked` (TriLM: float weights, ternary codes times a scale per shard of rows) and
//!   `bonsai_unpacked` (Ternary-Bonsai: a scale per group of 128 inputs): float activations.
//!
//! Every BitNet layer must convert losslessly, with the default flags, to every target that
//! can carry the scales found, at the granularity expected, and `verify` must pass each output.
//! Where a target cannot carry them (Bonsai's group scales on `ort-int8` and TensorRT INT8) the
//! conversion must stop with exit 2 naming the weight and the flag, and `--lossless-group off`
//! must quantize per channel and say which layers are lossy. ONNX Runtime must reproduce
//! transformers' logits to float rounding on the export itself and on the conversion that keeps
//! the original's arithmetic: `ort-int8` where the graph has BitNet's integer activations (it
//! keeps their codes), `qdq-int8` where activations are float.

mod common;
use common::*;

/// 7 linear layers per decoder layer, 2 layers; the head stays float (`--head float`).
const LAYERS: usize = 14;
/// Bonsai's layers whose input is longer than its group of 128 (`o_proj`: 4 heads x 64,
/// `down_proj`: FFN 256), per decoder layer; the others' K is 128, one group: per channel.
const BONSAI_GROUPED: usize = 2 * 2;

/// How a family's weights are stored: the granularity lossless detection must find, per layer.
#[derive(Clone, Copy)]
enum Scales {
    /// Every layer one scale (ternarised per tensor in the graph).
    Tensor,
    /// One scale per row (TriLM's row shards), or per tensor where the shards' scales round to
    /// the same float16 (one layer of the sample), but not every layer.
    Channel,
    /// One scale per 128 inputs: `group(128)` where K > 128, per channel where K = 128.
    Group128,
}

fn check_family(sample: &str, scales: Scales, integer_activations: bool) {
    let dir = tempfile::tempdir().unwrap();
    let original = sample_path(sample);
    let c = ort_logits(&original, sample, "basic");
    assert!(
        c["rel_l2"].as_f64().unwrap() < 1e-5,
        "{sample} original: {c}"
    );
    for target in ALL_TARGETS {
        let out = dir.path().join(format!("{target}.onnx"));
        let report = dir.path().join(format!("{target}.json"));
        let mut cmd = convert(&original, &out, &report, target);
        if matches!(scales, Scales::Group128) && *target == "ort-int8" {
            group_scales_refused(sample, &mut cmd, &out, "--target ort");
            lossy_per_channel(sample, &original, &out, &report, target);
            continue;
        }
        run_ok(&mut cmd);
        let r = read_report(&report);
        let layers = r["layers"].as_array().unwrap();
        assert_eq!(layers.len(), LAYERS, "{sample} {target}: {r}");
        // Layers at the family's finer granularity (group(128) for Bonsai, per channel for
        // TriLM).
        let mut grouped = 0;
        for l in layers {
            assert_eq!(l["lossless"], true, "{sample} {target}: {l}");
            let g = l["granularity"].as_str().unwrap();
            let want = match scales {
                Scales::Tensor => g == "per-tensor",
                Scales::Channel => {
                    grouped += usize::from(g == "per-channel");
                    g == "per-channel" || g == "per-tensor"
                }
                Scales::Group128 => {
                    grouped += usize::from(g == "group(128)");
                    g == "group(128)" || g == "per-channel"
                }
            };
            assert!(want, "{sample} {target}: {l}");
        }
        match scales {
            Scales::Group128 => assert_eq!(grouped, BONSAI_GROUPED, "{sample} {target}: {r}"),
            // The shards' scales differ in all but one layer of the sample.
            Scales::Channel => assert!(grouped >= LAYERS - 1, "{sample} {target}: {r}"),
            Scales::Tensor => {}
        }
        verify_passes(sample, target, &original, &out);
        let exact = if integer_activations {
            "ort-int8"
        } else {
            "qdq-int8"
        };
        if *target == exact {
            let c = ort_logits(&out, sample, "basic");
            assert!(
                c["rel_l2"].as_f64().unwrap() < 1e-5,
                "{sample} {target}: {c}"
            );
        }
    }
    if matches!(scales, Scales::Group128) {
        // TensorRT's INT8 weights take per-channel scales only.
        let (out, report) = (dir.path().join("trt8.onnx"), dir.path().join("trt8.json"));
        let mut cmd = convert(&original, &out, &report, "tensorrt");
        cmd.arg("--tensorrt-int8");
        group_scales_refused(sample, &mut cmd, &out, "leave out --tensorrt-int8");
    }
}

fn sample_path(name: &str) -> std::path::PathBuf {
    sample(&format!("hf/{name}/model.onnx"))
}

fn convert(
    original: &std::path::Path,
    out: &std::path::Path,
    report: &std::path::Path,
    target: &str,
) -> std::process::Command {
    let mut cmd = bin();
    cmd.arg("convert")
        .arg(original)
        .arg("-o")
        .arg(out)
        .arg("--report")
        .arg(report)
        .args(["--target", target, "-q"])
        .args(["--head", "float", "--embeddings", "float"]);
    cmd
}

fn read_report(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn verify_passes(sample: &str, target: &str, original: &std::path::Path, out: &std::path::Path) {
    let v = bin().arg("verify").arg(original).arg(out).output().unwrap();
    assert_eq!(
        v.status.code(),
        Some(0),
        "{sample} {target}: {}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
}

/// Exit 2, nothing written, and an error naming the weight, its scales, what keeps them exact
/// (`keep`) and the flag that quantizes instead.
fn group_scales_refused(
    sample: &str,
    cmd: &mut std::process::Command,
    out: &std::path::Path,
    keep: &str,
) {
    let o = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{sample}: {err}");
    assert!(!out.exists(), "{sample}: an output was written");
    for part in [
        "weight '",
        "read by '",
        "exactly ternary with one scale per 128 inputs",
        keep,
        "--lossless-group off",
    ] {
        assert!(err.contains(part), "{sample}: no {part:?} in {err}");
    }
}

/// `--lossless-group off` on a target without group scales: the layers with one group per
/// channel stay lossless (per channel), the others are quantized per channel and reported lossy.
fn lossy_per_channel(
    sample: &str,
    original: &std::path::Path,
    out: &std::path::Path,
    report: &std::path::Path,
    target: &str,
) {
    let mut cmd = convert(original, out, report, target);
    run_ok(cmd.args(["--lossless-group", "off"]));
    let r = read_report(report);
    let layers = r["layers"].as_array().unwrap();
    assert_eq!(layers.len(), LAYERS, "{sample} {target}: {r}");
    let lossy: Vec<&serde_json::Value> = layers.iter().filter(|l| l["lossless"] != true).collect();
    assert_eq!(lossy.len(), BONSAI_GROUPED, "{sample} {target}: {r}");
    for l in layers {
        assert_eq!(l["granularity"], "per-channel", "{sample} {target}: {l}");
    }
    for l in lossy {
        assert!(
            l["rel_error"].as_f64().unwrap() > 1e-3,
            "{sample} {target}: {l}"
        );
    }
}

#[test]
fn llama_bitlinear_export_converts_losslessly_and_verifies() {
    check_family("llama_bitlinear", Scales::Tensor, true);
}

#[test]
fn qwen3_autobitlinear_export_converts_losslessly_and_verifies() {
    check_family("qwen3_autobitlinear", Scales::Tensor, true);
}

#[test]
fn onebitllm_export_converts_losslessly_and_verifies() {
    check_family("onebitllm", Scales::Tensor, true);
}

#[test]
fn trilm_export_finds_row_shard_scales_and_verifies() {
    check_family("trilm_unpacked", Scales::Channel, false);
}

#[test]
fn bonsai_export_finds_group_scales_by_default_and_verifies() {
    check_family("bonsai_unpacked", Scales::Group128, false);
}

/// `--lossless-group` takes a group length or `off`; anything else is refused by clap with the
/// accepted values (exit 2, nothing written). An explicit length is recorded in the output's
/// flags; the default (the target's group) is not, being a function of the recorded target and
/// block flags.
#[test]
fn lossless_group_values() {
    let dir = tempfile::tempdir().unwrap();
    let original = sample_path("bonsai_unpacked");
    let out = dir.path().join("out.onnx");
    for bad in ["0", "x", "group:128"] {
        let o = bin()
            .arg("convert")
            .arg(&original)
            .arg("-o")
            .arg(&out)
            .args(["--lossless-group", bad])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains("G > 0 or off"), "{bad}: {err}");
        assert!(!out.exists());
    }
    // Groups of 64 are exact too (Bonsai's 128 are two of them), carried by blocks of 64; the
    // layers whose input is one group of 128 are found per channel first.
    let report = dir.path().join("r.json");
    let mut cmd = convert(&original, &out, &report, "ort");
    run_ok(cmd.args(["--lossless-group", "64", "--block-size", "64"]));
    let r = read_report(&report);
    let layers = r["layers"].as_array().unwrap();
    assert!(layers.iter().all(|l| l["lossless"] == true), "{r}");
    let grouped = layers
        .iter()
        .filter(|l| l["granularity"] == "group(64)")
        .count();
    assert_eq!(grouped, BONSAI_GROUPED, "{r}");
    let info = run_ok(bin().arg("inspect").arg(&out).arg("--json"));
    let j: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let flags = j["bitnet_onnx"]["flags"].as_str().unwrap_or_default();
    assert!(flags.contains("--lossless-group 64"), "{j}");
}
