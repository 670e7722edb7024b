//! `bitnet-onnx build --for web`: the folder layout Transformers.js reads (checked file by
//! file and key by key), the graph free of `GatherBlockQuantized` with its external data
//! named as Transformers.js fetches it, the same folder generating transformers' greedy tokens
//! in the pinned onnxruntime-genai (`tests/python/genai_generate.py`) with the same logits as
//! the genai layout, refusals, and determinism. Transformers.js itself, in Node and in
//! Chromium, is run by scripts/test_web.sh (npm and a browser are not cargo's).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const FORMS: [&str; 3] = ["packed", "bf16", "packed_untied"];

fn checkpoint(form: &str) -> PathBuf {
    workspace().join("samples/checkpoints").join(form)
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn build_ok(ck: &Path, out: &Path, flags: &[&str]) {
    let r = build(ck, out, flags);
    assert!(
        r.status.success(),
        "{} {flags:?}: {}",
        ck.display(),
        String::from_utf8_lossy(&r.stderr)
    );
}

/// Every file under `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy();
                out.push(rel.replace('\\', "/"));
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    v
}

/// The graph's op types and the external data locations of its tensors, read by the pinned
/// onnx package.
fn graph_facts(model: &Path) -> serde_json::Value {
    let script = r#"
import json, sys, onnx
m = onnx.load(sys.argv[1], load_external_data=False)
locs = sorted({e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"})
meta = {p.key: p.value for p in m.metadata_props}
print(json.dumps({"ops": sorted({n.op_type for n in m.graph.node}), "locations": locs,
                  "target": meta.get("bitnet_onnx.target"), "flags": meta.get("bitnet_onnx.flags")}))
"#;
    let out = Command::new(python())
        .args(["-c", script])
        .arg(model)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The layout, file by file: the graph under onnx/ with Transformers.js's names, config.json
/// as Transformers.js reads it (model_type llama, the KV-cache shape, the dtype and the
/// external data file), transformers' config beside it unchanged, BOS switched on for its
/// pipeline, genai_config.json pointing at the same graph, nothing else.
#[test]
fn web_folder_layout() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("web");
    let ck = checkpoint("packed");
    build_ok(&ck, &out, &["--for", "web"]);
    assert_eq!(
        files(&out),
        [
            "config.json",
            "genai_config.json",
            "generation_config.json",
            "onnx/model_q2.onnx",
            "onnx/model_q2.onnx_data",
            "special_tokens_map.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "transformers_config.json",
        ]
    );
    let src = json(&ck.join("config.json"));
    let c = json(&out.join("config.json"));
    assert_eq!(c["model_type"], "llama");
    assert_eq!(c["architectures"], serde_json::json!(["LlamaForCausalLM"]));
    for key in [
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "max_position_embeddings",
        "bos_token_id",
        "eos_token_id",
        "tie_word_embeddings",
    ] {
        assert_eq!(c[key], src[key], "config.json `{key}`");
    }
    let heads = src["num_attention_heads"].as_u64().unwrap();
    assert_eq!(
        c["head_dim"].as_u64().unwrap(),
        src["hidden_size"].as_u64().unwrap() / heads
    );
    assert_eq!(
        c["transformers.js_config"],
        serde_json::json!({"dtype": "q2", "use_external_data_format": {"model_q2.onnx": 1}})
    );
    assert_eq!(
        std::fs::read(out.join("transformers_config.json")).unwrap(),
        std::fs::read(ck.join("config.json")).unwrap()
    );
    for f in [
        "tokenizer.json",
        "special_tokens_map.json",
        "generation_config.json",
    ] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(ck.join(f)).unwrap(),
            "{f}"
        );
    }
    let mut tc = json(&ck.join("tokenizer_config.json"));
    assert!(tc.get("add_bos_token").is_none(), "the sample decides BOS");
    tc["add_bos_token"] = serde_json::json!(true);
    assert_eq!(json(&out.join("tokenizer_config.json")), tc);
    let g = json(&out.join("genai_config.json"));
    assert_eq!(g["model"]["decoder"]["filename"], "onnx/model_q2.onnx");

    let facts = graph_facts(&out.join("onnx/model_q2.onnx"));
    assert_eq!(
        facts["locations"],
        serde_json::json!(["model_q2.onnx_data"])
    );
    assert_eq!(facts["target"], "web");
    assert!(facts["flags"]
        .as_str()
        .unwrap()
        .starts_with("build --for web "));
    let ops: Vec<&str> = facts["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        !ops.contains(&"GatherBlockQuantized"),
        "the browser bundles have no GatherBlockQuantized: {ops:?}"
    );
    assert!(ops.contains(&"MatMulNBits"), "{ops:?}");

    // `--json` says which layout it wrote.
    let out2 = dir.path().join("web-json");
    let r = run_ok(
        bin()
            .arg("build")
            .arg(&ck)
            .arg("-o")
            .arg(&out2)
            .args(["--for", "web", "--json"]),
    );
    let report: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(report["layout"], "web");
    assert!(report["files"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("onnx/model_q2.onnx_data")));
}

/// The web folder in onnxruntime-genai: transformers' 40 greedy tokens on every prompt of
/// every sample form, and the first step's logits equal to the genai layout's (the standard-op
/// int8 embedding computes what GatherBlockQuantized computes; the rest of the graph is the
/// same), with the default int8 tables and with float ones.
#[test]
fn web_folder_generates_in_genai_like_the_genai_layout() {
    let dir = tempfile::tempdir().unwrap();
    for form in FORMS {
        for flags in [&[][..], &["--embeddings", "float", "--head", "float"][..]] {
            let tag = if flags.is_empty() { "int8" } else { "float" };
            let web = dir.path().join(format!("{form}-{tag}-web"));
            let gen = dir.path().join(format!("{form}-{tag}-genai"));
            let mut wf = vec!["--for", "web"];
            wf.extend_from_slice(flags);
            build_ok(&checkpoint(form), &web, &wf);
            build_ok(&checkpoint(form), &gen, flags);
            let (w, g) = (genai_generate(&web, form), genai_generate(&gen, form));
            assert_eq!(w.len(), g.len());
            for (pw, pg) in w.iter().zip(&g) {
                let want = pw["expected_new_tokens"].as_array().unwrap().len();
                assert!(
                    pw["tokenizer_ids_match"].as_bool().unwrap(),
                    "{form} {tag}: {pw}"
                );
                assert_eq!(
                    pw["same_prefix"].as_u64().unwrap() as usize,
                    want,
                    "{form} {tag}: web folder in onnxruntime-genai: {} vs transformers {}",
                    pw["new_tokens"],
                    pw["expected_new_tokens"]
                );
                assert_eq!(pw["new_tokens"], pg["new_tokens"], "{form} {tag}");
                let (a, b) = (
                    pw["first_step_max_abs"].as_f64().unwrap(),
                    pg["first_step_max_abs"].as_f64().unwrap(),
                );
                assert!(
                    (a - b).abs() <= 1e-5,
                    "{form} {tag}: first-step logits differ from transformers by {a} (web) and {b} (genai)"
                );
            }
        }
    }
}

/// What a browser cannot run is refused before anything is written: 4-bit embedding codes
/// (the standard-op embedding reads whole bytes).
#[test]
fn web_refuses_int4_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("web");
    let r = build(
        &checkpoint("packed"),
        &out,
        &["--for", "web", "--embeddings", "int4"],
    );
    assert_eq!(r.status.code(), Some(2));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("--embeddings") && err.contains("GatherBlockQuantized"),
        "{err}"
    );
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // A 4-bit head is fine (MatMulNBits runs on every backend).
    build_ok(
        &checkpoint("packed"),
        &out,
        &["--for", "web", "--head", "int4", "--embeddings", "int8"],
    );
}

/// A checkpoint without generation_config.json or tokenizer_config.json still gets both (its
/// special tokens; `add_bos_token`), and the output is the same bytes every time.
#[test]
fn web_folder_fills_in_missing_files_and_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    std::fs::create_dir(&ck).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "special_tokens_map.json",
    ] {
        std::fs::copy(checkpoint("packed").join(f), ck.join(f)).unwrap();
    }
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    build_ok(&ck, &a, &["--for", "web"]);
    build_ok(&ck, &b, &["--for", "web"]);
    assert_eq!(files(&a), files(&b));
    for f in files(&a) {
        assert_eq!(
            std::fs::read(a.join(&f)).unwrap(),
            std::fs::read(b.join(&f)).unwrap(),
            "{f} differs between two builds"
        );
    }
    assert_eq!(
        json(&a.join("tokenizer_config.json")),
        serde_json::json!({"add_bos_token": true})
    );
    assert_eq!(
        json(&a.join("generation_config.json")),
        serde_json::json!({"bos_token_id": 510, "eos_token_id": 511})
    );
}

/// transformers' validation figures on held-out rows (`samples/checkpoints/expected/val.json`,
/// scored by `tests/python/build_val.py` on every position's logits, in ONNX Runtime): a web
/// folder with the default int8 tables keeps what the genai layout keeps (within 0.1% of
/// transformers' validation loss, 99% argmax agreement, every clear-margin position the same).
#[test]
fn web_folder_validation_loss_matches_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let val = workspace().join("samples/checkpoints/expected/val.json");
    for form in FORMS {
        let out = dir.path().join(form);
        build_ok(
            &checkpoint(form),
            &out,
            &["--for", "web", "--logits", "all"],
        );
        let o = Command::new(python())
            .arg(workspace().join("tests/python/build_val.py"))
            .arg(&out)
            .arg(&val)
            .arg(form)
            .output()
            .unwrap();
        assert!(o.status.success(), "{form}: {o:?}");
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(
            j["loss_delta_rel"].as_f64().unwrap().abs() <= 1e-3,
            "{form}: {j}"
        );
        assert!(j["top1"].as_f64().unwrap() >= 0.99, "{form}: {j}");
        assert_eq!(j["top1_clear"].as_f64().unwrap(), 1.0, "{form}: {j}");
    }
}
