//! Helpers shared by the CLI's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// The bundled samples with float (not yet ternary) weights.
pub const FLOAT_SAMPLES: &[&str] = &[
    "mlp.onnx",
    "transformer.onnx",
    "transformer_dynamo.onnx",
    "transformer_ext/model.onnx",
    "gemm/transB.onnx",
    "gemm/transA.onnx",
    "gemm/alpha_beta.onnx",
    "gemm/scalar_bias.onnx",
    "gemm/no_bias.onnx",
    "gemm/both_trans.onnx",
];

/// The BitLinear exports (weight fake-quant chain in the graph), one per torch.onnx exporter.
pub const BITLINEAR_SAMPLES: &[&str] = &["bitlinear_ts.onnx", "bitlinear_dynamo.onnx"];

/// The Hugging Face BitNet exports (`samples/generate_hf.py`): one per transformers linear
/// class, each a directory with model.onnx (+ .data), input_ids.pb and transformers' logits.pb.
pub const HF_SAMPLES: &[&str] = &["bitlinear", "autobitlinear_offline", "autobitlinear_online"];

/// Every conversion target.
pub const ALL_TARGETS: &[&str] = &["ort", "ort-int8", "onnx", "tensorrt", "qdq-int8"];

pub fn sample(rel: &str) -> PathBuf {
    workspace().join("samples").join(rel)
}

/// The binary under test: cargo's, or `BITNET_ONNX_BIN` (a copy that a concurrent build in a
/// shared target directory cannot replace mid-run).
pub fn bin() -> Command {
    match std::env::var_os("BITNET_ONNX_BIN") {
        Some(p) => Command::new(p),
        None => Command::new(env!("CARGO_BIN_EXE_bitnet-onnx")),
    }
}

/// `bitnet-onnx build CHECKPOINT -o OUT FLAGS -q`, its output whatever the exit status.
pub fn build(ck: &Path, out: &Path, flags: &[&str]) -> Output {
    bin()
        .arg("build")
        .arg(ck)
        .arg("-o")
        .arg(out)
        .args(flags)
        .arg("-q")
        .output()
        .expect("run bitnet-onnx build")
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run bitnet-onnx");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The Python interpreter with the pinned onnxruntime (created by scripts/test.sh).
pub fn python() -> PathBuf {
    let p = std::env::var_os("BITNET_ONNX_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".venv/bin/python"));
    assert!(
        p.exists(),
        "{} not found: run scripts/test.sh, which installs the pinned onnxruntime used as the test oracle",
        p.display()
    );
    p
}

/// Runs tests/python/ort_compare.py and returns its JSON.
pub fn ort_compare(
    reference: &Path,
    candidate: &Path,
    level: &str,
    dims: &[&str],
) -> serde_json::Value {
    let mut cmd = Command::new(python());
    cmd.arg(workspace().join("tests/python/ort_compare.py"))
        .arg(reference)
        .arg(candidate)
        .args(["--level", level]);
    for d in dims {
        cmd.args(["--dim", d]);
    }
    let out = cmd.output().expect("run python");
    assert!(
        out.status.success(),
        "ONNX Runtime could not run {} / {}: {}",
        reference.display(),
        candidate.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ort_compare JSON")
}

/// Runs tests/python/ort_logits.py: `model` on a Hugging Face sample's input_ids, compared with
/// the logits transformers computed.
pub fn ort_logits(model: &Path, hf_sample: &str, level: &str) -> serde_json::Value {
    let dir = sample(&format!("hf/{hf_sample}"));
    let out = Command::new(python())
        .arg(workspace().join("tests/python/ort_logits.py"))
        .arg(model)
        .arg("--input")
        .arg(format!("input_ids={}", dir.join("input_ids.pb").display()))
        .arg("--reference")
        .arg(dir.join("logits.pb"))
        .args(["--level", level])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "ONNX Runtime could not run {}: {}",
        model.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ort_logits JSON")
}

/// `tests/python/genai_generate.py MODEL EXPECTED` on the sample checkpoint `form`'s
/// references: its per-prompt JSON records.
pub fn genai_generate(model: &Path, form: &str) -> Vec<serde_json::Value> {
    let out = Command::new(python())
        .arg(workspace().join("tests/python/genai_generate.py"))
        .arg(model)
        .arg(
            workspace()
                .join("samples/checkpoints/expected")
                .join(format!("{form}.json")),
        )
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "onnxruntime-genai could not run {}: {}",
        model.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("genai_generate JSON");
    v["prompts"].as_array().expect("prompts").clone()
}
