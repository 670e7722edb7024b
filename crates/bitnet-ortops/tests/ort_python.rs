//! The built library in the pinned ONNX Runtime (`tests/python/ortops_check.py`): registered
//! through `SessionOptions.register_custom_ops_library`, bit-identical to numpy's evaluation
//! of the stock graph's formula over several shapes and thread counts, and an ONNX Runtime
//! error (not a crash) for each malformed model: a wrong K, a truncated weight, missing or bad
//! attributes, a wrong element type, a wrong scale count; and `GroupQueryAttention` within
//! float rounding of ONNX Runtime's own on the same inputs.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

fn python() -> PathBuf {
    let p = std::env::var_os("BITNET_ONNX_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".venv/bin/python"));
    assert!(
        p.exists(),
        "{} not found: run scripts/test.sh, which installs the pinned onnxruntime",
        p.display()
    );
    p
}

/// The cdylib cargo built for this test: in `deps/`, beside the test binary.
fn library() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let name = format!(
        "{}bitnet_ortops{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let dir = exe.parent().expect("deps folder");
    [dir.join(&name), dir.join("..").join(&name)]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not built beside {}", exe.display()))
}

#[test]
fn loads_in_onnxruntime_and_refuses_malformed_models() {
    let out = Command::new(python())
        .arg(workspace().join("tests/python/ortops_check.py"))
        .arg(library())
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "ortops_check.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let cases = v["cases"].as_array().expect("cases");
    let (mut correct, mut malformed, mut q8, mut gqa) = (0, 0, 0, 0);
    for c in cases {
        match c["kind"].as_str() {
            Some("correct") => {
                correct += 1;
                assert_eq!(c["shape_ok"], true, "{c}");
                assert_eq!(c["bit_identical"], true, "{c}");
            }
            Some("q8") => {
                q8 += 1;
                assert_eq!(c["shape_ok"], true, "{c}");
                assert_eq!(c["within_rounding"], true, "{c}");
                assert_eq!(c["threads_identical"], true, "{c}");
            }
            Some("gqa") => {
                gqa += 1;
                assert_eq!(c["shapes_ok"], true, "{c}");
                assert_eq!(c["output_within_rounding"], true, "{c}");
                assert_eq!(c["keys_within_rounding"], true, "{c}");
                assert_eq!(c["values_identical"], true, "{c}");
                assert_eq!(c["threads_identical"], true, "{c}");
            }
            Some("malformed") => {
                malformed += 1;
                let e = c["error"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no error: {c}"));
                assert!(
                    e.contains("ONNXRuntimeError"),
                    "not an ONNX Runtime error: {c}"
                );
            }
            _ => panic!("unknown case {c}"),
        }
    }
    assert_eq!((correct, malformed, q8, gqa), (7, 25, 4, 8), "{v}");
    // Our own messages, naming the input or attribute, reach the caller.
    let msg = |name: &str| {
        cases
            .iter()
            .find(|c| c["case"] == name)
            .and_then(|c| c["error"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    assert!(msg("wrong K at run").contains("input X has last dimension 129"));
    assert!(msg("truncated weight").contains("input W has shape [8, 63]"));
    assert!(msg("missing attribute divide").contains("attribute divide"));
    assert!(msg("glu over unequal groups").contains("two groups of equal size"));
    assert!(msg("Q8Linear wrong K at run").contains("Q8Linear: input X has last dimension 69"));
    assert!(msg("Q8Linear truncated weight").contains("input W has shape [9, 3, 31]"));
    assert!(msg("Q8Linear missing attribute block_size").contains("attribute block_size"));
    assert!(msg("Q8Linear scale count").contains("input S has shape [9, 2]"));
    let gqa_msg = |name: &str| msg(&format!("GroupQueryAttention {name}"));
    assert!(gqa_msg("query width").contains("width 760 is not (num_heads + 2 kv_num_heads)"));
    assert!(gqa_msg("past shapes").contains("past_value [1, 2, 15, 64]"));
    assert!(gqa_msg("seqlens_k out of range").contains("seqlens_k[0] = 10"));
    assert!(gqa_msg("seqlens_k count").contains("input seqlens_k has shape [2]"));
    assert!(gqa_msg("missing attribute num_heads").contains("attribute num_heads: missing"));
    assert!(gqa_msg("rotary rows").contains("rotary position 9, the tables have 8 rows"));
}
