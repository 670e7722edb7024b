//! `bitnet-onnx build`: each sample checkpoint (samples/checkpoints: a small BitNet LM trained
//! with transformers' own classes, in the packed form of microsoft/bitnet-b1.58-2B-4T, the
//! master-weight form of its -bf16 release, and packed with an untied head) built and run by
//! the pinned onnxruntime-genai (`tests/python/genai_generate.py`), against transformers'
//! greedy continuations and first-step logits (samples/checkpoints/expected). Then the bad
//! checkpoints: exit 2, the file and tensor named, nothing written.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const FORMS: [&str; 3] = ["packed", "bf16", "packed_untied"];

fn checkpoint(form: &str) -> PathBuf {
    workspace().join("samples/checkpoints").join(form)
}

/// Builds every form with `flags` and generates with onnxruntime-genai: og.Tokenizer must
/// read transformers' ids, the first greedy token must be transformers', at least `min_same`
/// of the new tokens must agree from the start (`None`: all 40), and the first-step logits
/// must be within `max_rel` of the largest logit.
fn check(flags: &[&str], min_same: Option<usize>, max_rel: f64) {
    let dir = tempfile::tempdir().unwrap();
    for form in FORMS {
        let out = dir.path().join(form);
        let r = build(&checkpoint(form), &out, flags);
        assert!(
            r.status.success(),
            "{form}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        for p in genai_generate(&out, form) {
            let want = p["expected_new_tokens"].as_array().unwrap().len();
            assert!(want >= 32, "{form}: the reference has {want} new tokens");
            assert!(
                p["tokenizer_ids_match"].as_bool().unwrap(),
                "{form}: og.Tokenizer ids differ: {p}"
            );
            assert!(
                p["first_step_top1_same"].as_bool().unwrap(),
                "{form} {flags:?}: first token differs: {p}"
            );
            let same = p["same_prefix"].as_u64().unwrap() as usize;
            assert!(
                same >= min_same.unwrap_or(want),
                "{form} {flags:?}: {:?}: {same} tokens agree; onnxruntime-genai {} vs transformers {}",
                p["text"],
                p["new_tokens"],
                p["expected_new_tokens"]
            );
            let (diff, scale) = (
                p["first_step_max_abs"].as_f64().unwrap(),
                p["first_step_ref_max_abs"].as_f64().unwrap(),
            );
            assert!(
                diff <= max_rel * scale,
                "{form} {flags:?}: first-step logits differ by {diff} (largest {scale})"
            );
            // Every prompt has several tokens: the other rows are computed only with `all`.
            let others = p["other_rows_max_abs"].as_f64().unwrap();
            if flags.contains(&"all") {
                assert!(
                    others > 0.0,
                    "{form} {flags:?}: the prompt's other rows are 0"
                );
            } else {
                assert_eq!(
                    others, 0.0,
                    "{form} {flags:?}: rows other than the last were computed"
                );
            }
        }
    }
}

/// With float tables the folder computes what transformers computes: every one of the 40 new
/// tokens of every prompt, and first-step logits within 2e-6 of the largest (measured 5.8e-7
/// at most on every form: the layers' integer products are exact and their scales applied in
/// transformers' order, so what is left is the float rounding of the norms, attention and head,
/// and one flipped int8 activation code would cost about 1e-2). These are trained checkpoints
/// with clear margins; random weights would need a tolerance for near-ties.
#[test]
fn float_tables_generate_token_for_token() {
    check(&["--embeddings", "float", "--head", "float"], None, 2e-6);
    check(
        &[
            "--embeddings",
            "float",
            "--head",
            "float",
            "--logits",
            "all",
        ],
        None,
        2e-6,
    );
}

/// The default build (int8 embedding and head in blocks of 32, one shared table; the head for
/// the last position only), int4 tables, and every position's logits (`--logits all`): the
/// tables are the lossy part. Measured on these checkpoints: all 40 tokens agree on every
/// prompt and form; first-step logits within 0.013 (int8) and 0.10 (int4) of the largest
/// logit. Required: the 32 tokens, and 0.03 / 0.15.
#[test]
fn quantized_tables_generate_the_same_tokens() {
    check(&[], Some(32), 0.03);
    check(&["--logits", "all"], Some(32), 0.03);
    check(&["--embeddings", "int4", "--head", "int4"], Some(32), 0.15);
}

/// transformers' validation figures on held-out rows of the trained checkpoints
/// (`samples/checkpoints/expected/val.json`, from `samples/generate_checkpoint_val.py`), against
/// the built folder run by ONNX Runtime (`tests/python/build_val.py`, every position's logits).
/// These models are trained, so their margins are clear and the figures are stable: float
/// tables must match transformers' validation loss to 0.01% (relative; transformers' own
/// float32 against float64 differ by 0.006% on the packed forms) with 99.5% argmax agreement,
/// and the default int8 tables must stay within 0.1%. Measured: float -0.0008% / +0.0000%,
/// 100% argmax; int8 -0.03% to -0.06%; int4 (not the default) +0.33% to +0.43%.
#[test]
fn validation_loss_matches_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let val = workspace().join("samples/checkpoints/expected/val.json");
    for form in ["packed", "packed_untied", "bf16"] {
        for (tables, max_delta, min_top1) in [("float", 1e-4, 0.995), ("int8", 1e-3, 0.99)] {
            let out = dir.path().join(format!("{form}-{tables}"));
            let flags = ["--embeddings", tables, "--head", tables, "--logits", "all"];
            let o = build(&checkpoint(form), &out, &flags);
            assert!(o.status.success(), "{form} {tables}: {o:?}");
            let o = Command::new(python())
                .arg(workspace().join("tests/python/build_val.py"))
                .arg(&out)
                .arg(&val)
                .arg(form)
                .output()
                .unwrap();
            assert!(o.status.success(), "{form} {tables}: {o:?}");
            let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            let delta = j["loss_delta_rel"].as_f64().unwrap();
            assert!(delta.abs() <= max_delta, "{form} {tables}: {j}");
            assert!(
                j["top1"].as_f64().unwrap() >= min_top1,
                "{form} {tables}: {j}"
            );
            // Where transformers' top two logits are 0.1 apart, no table setting changes the
            // choice on these models.
            assert_eq!(
                j["top1_clear"].as_f64().unwrap(),
                1.0,
                "{form} {tables}: {j}"
            );
        }
    }
}

/// The ends of the accepted `--block-size` range run in onnxruntime-genai (16 and 256 on
/// ONNX Runtime's dequantizing 2-bit path, not its int8 kernels) and generate transformers'
/// tokens: what `build` accepts, the runtime runs.
#[test]
fn edge_block_sizes_generate() {
    let dir = tempfile::tempdir().unwrap();
    for bs in ["16", "256"] {
        let out = dir.path().join(bs);
        let flags = [
            "--block-size",
            bs,
            "--embeddings",
            "float",
            "--head",
            "float",
        ];
        let r = build(&checkpoint("packed"), &out, &flags);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        for p in genai_generate(&out, "packed") {
            assert!(
                p["first_step_top1_same"].as_bool().unwrap(),
                "--block-size {bs}: {p}"
            );
            assert!(
                p["same_prefix"].as_u64().unwrap() >= 32,
                "--block-size {bs}: {p}"
            );
        }
    }
}

/// Heads whose size is not a multiple of 16 (ONNX Runtime's GroupQueryAttention needs one;
/// 1bitLLM's bitnet_b1_58-3B has 100) run zero-padded, which must compute what the unpadded
/// heads compute. The packed sample's heads of 32 need no padding; built with the library's
/// `head_dim_multiple` 48 they run padded to 48 and must give transformers' tokens and the
/// unpadded build's tokens and first-step logits (up to float rounding: the attention sums
/// zeros in other places). Then the same weights read as heads of 8 (a model with no
/// reference, padded to 16 by default) must build and generate what the same model padded to
/// 32 generates.
#[test]
fn padded_heads_compute_what_unpadded_heads_do() {
    let dir = tempfile::tempdir().unwrap();
    let ck = checkpoint("packed");
    let plain = dir.path().join("plain");
    let r = build(&ck, &plain, &[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let padded = dir.path().join("padded");
    let opts = bitnet_build::BuildOptions {
        head_dim_multiple: 48,
        ..Default::default()
    };
    bitnet_build::build(&ck, &padded, &opts).expect("padded build");
    let head_size = |d: &Path| -> u64 {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.join("genai_config.json")).unwrap()).unwrap();
        v["model"]["decoder"]["head_size"].as_u64().unwrap()
    };
    assert_eq!((head_size(&plain), head_size(&padded)), (32, 48));
    let (a, b) = (
        genai_generate(&plain, "packed"),
        genai_generate(&padded, "packed"),
    );
    for (pa, pb) in a.iter().zip(&b) {
        assert_eq!(pa["new_tokens"], pb["new_tokens"], "{pb}");
        assert_eq!(pb["same_prefix"].as_u64(), Some(40), "{pb}");
        let (da, db) = (
            pa["first_step_max_abs"].as_f64().unwrap(),
            pb["first_step_max_abs"].as_f64().unwrap(),
        );
        let scale = pa["first_step_ref_max_abs"].as_f64().unwrap();
        assert!((da - db).abs() <= 1e-5 * scale, "{da} vs {db}: {pb}");
    }

    // 16 query and 8 key/value heads of 8: padded to 16 by default and to 32 by the option;
    // same tokens.
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    for e in std::fs::read_dir(&ck).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), small.join(e.file_name())).unwrap();
    }
    edit_config(&small, |c| {
        c["num_attention_heads"] = 16.into();
        c["num_key_value_heads"] = 8.into();
    });
    let (s16, s32) = (dir.path().join("s16"), dir.path().join("s32"));
    let r = build(&small, &s16, &[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let opts = bitnet_build::BuildOptions {
        head_dim_multiple: 32,
        ..Default::default()
    };
    bitnet_build::build(&small, &s32, &opts).expect("build padded to 32");
    assert_eq!((head_size(&s16), head_size(&s32)), (16, 32));
    let (a, b) = (
        genai_generate(&s16, "packed"),
        genai_generate(&s32, "packed"),
    );
    for (pa, pb) in a.iter().zip(&b) {
        assert_eq!(pa["new_tokens"], pb["new_tokens"], "{pa} {pb}");
        assert!(!pa["new_tokens"].as_array().unwrap().is_empty(), "{pa}");
    }
    // Bad multiples are refused by name.
    let opts = bitnet_build::BuildOptions {
        head_dim_multiple: 24,
        ..Default::default()
    };
    let e = bitnet_build::build(&ck, &dir.path().join("bad"), &opts).unwrap_err();
    assert!(e.to_string().contains("head_dim_multiple"), "{e}");
    assert!(!dir.path().join("bad").exists());
}

/// Two builds of one checkpoint are byte-identical, wherever they are written.
#[test]
fn output_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("sub/b"));
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    for out in [&a, &b] {
        let r = build(&checkpoint("packed"), out, &[]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }
    let mut names: Vec<_> = std::fs::read_dir(&a)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert!(
        names.iter().any(|n| n == "model.onnx.data")
            && names.iter().any(|n| n == "genai_config.json")
    );
    for n in names {
        assert_eq!(
            std::fs::read(a.join(&n)).unwrap(),
            std::fs::read(b.join(&n)).unwrap(),
            "{n:?} differs between two builds"
        );
    }
}

/// A copy of the packed checkpoint in a temporary directory.
fn copy_checkpoint(dir: &Path) -> PathBuf {
    let ck = dir.join("ck");
    std::fs::create_dir(&ck).unwrap();
    for e in std::fs::read_dir(checkpoint("packed")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), ck.join(e.file_name())).unwrap();
    }
    ck
}

type Header = serde_json::Map<String, serde_json::Value>;

/// A safetensors file's header and data section.
fn read_safetensors(p: &Path) -> (Header, Vec<u8>) {
    let bytes = std::fs::read(p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header, bytes[8 + n..].to_vec())
}

/// Writes a safetensors file: `header` then `data` as they are.
fn write_safetensors(p: &Path, header: &Header, data: &[u8]) {
    let h = serde_json::to_vec(header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    std::fs::write(p, out).unwrap();
}

/// Writes the tensors `names` of (`header`, `data`), in that order, as a valid safetensors
/// file of their own (offsets renumbered, nothing else).
fn write_tensors(p: &Path, header: &Header, data: &[u8], names: &[&str]) {
    let (mut h, mut payload) = (Header::new(), Vec::new());
    for &name in names {
        let e = &header[name];
        let (b, end) = (
            e["data_offsets"][0].as_u64().unwrap() as usize,
            e["data_offsets"][1].as_u64().unwrap() as usize,
        );
        let begin = payload.len();
        payload.extend_from_slice(&data[b..end]);
        let mut e = e.clone();
        e["data_offsets"] = serde_json::json!([begin, payload.len()]);
        h.insert(name.to_string(), e);
    }
    write_safetensors(p, &h, &payload);
}

/// Rewrites `model.safetensors` with its header edited by `edit` (payloads kept).
fn edit_header(ck: &Path, edit: impl FnOnce(&mut Header)) {
    let p = ck.join("model.safetensors");
    let (mut header, data) = read_safetensors(&p);
    edit(&mut header);
    write_safetensors(&p, &header, &data);
}

/// Rewrites `model.safetensors` without tensor `name` (its entry and its bytes: the file stays
/// valid safetensors).
fn remove_tensor(ck: &Path, name: &str) {
    let p = ck.join("model.safetensors");
    let (header, data) = read_safetensors(&p);
    let mut names: Vec<&str> = header
        .keys()
        .map(String::as_str)
        .filter(|k| *k != "__metadata__" && *k != name)
        .collect();
    names.sort_by_key(|k| header[*k]["data_offsets"][0].as_u64().unwrap());
    write_tensors(&p, &header, &data, &names);
}

fn edit_config(ck: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let p = ck.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// Each bad checkpoint: exit 2, the message names the file and what is wrong, and neither the
/// output folder nor any temporary file is left.
#[test]
fn bad_checkpoints_exit_2_and_write_nothing() {
    type Damage = Box<dyn Fn(&Path)>;
    let q = "model.layers.1.self_attn.q_proj.weight";
    let cases: Vec<(&str, Damage, Vec<&str>)> = vec![
        (
            "missing tensor",
            Box::new(move |ck| remove_tensor(ck, q)),
            vec!["model.safetensors", q, "missing"],
        ),
        (
            "wrong shape",
            Box::new(|ck| {
                edit_header(ck, |h| {
                    h["model.layers.0.mlp.down_proj.weight"]["shape"] =
                        serde_json::json!([16, 688]);
                })
            }),
            vec![
                "model.safetensors",
                "model.layers.0.mlp.down_proj.weight",
                "expected",
            ],
        ),
        (
            "unknown model_type",
            Box::new(|ck| edit_config(ck, |c| c["model_type"] = "llama".into())),
            vec!["config.json", "model_type", "\"llama\""],
        ),
        (
            "unsupported rope scaling",
            Box::new(|ck| {
                edit_config(ck, |c| {
                    c["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0})
                })
            }),
            vec!["config.json", "rope_scaling.rope_type", "llama3"],
        ),
        (
            "unsupported activation",
            Box::new(|ck| edit_config(ck, |c| c["hidden_act"] = "silu".into())),
            vec!["config.json", "hidden_act", "silu"],
        ),
        (
            "truncated weights",
            Box::new(|ck| {
                let p = ck.join("model.safetensors");
                let b = std::fs::read(&p).unwrap();
                std::fs::write(&p, &b[..b.len() - 100]).unwrap();
            }),
            vec!["model.safetensors", "not fully covered"],
        ),
        (
            "not json",
            Box::new(|ck| std::fs::write(ck.join("config.json"), "{\"model_type\": ").unwrap()),
            vec!["config.json", "not valid JSON"],
        ),
    ];
    for (what, damage, needles) in cases {
        let dir = tempfile::tempdir().unwrap();
        let ck = copy_checkpoint(dir.path());
        damage(&ck);
        let out = dir.path().join("out");
        let r = build(&ck, &out, &[]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{what}: {err}");
        for n in needles {
            assert!(err.contains(n), "{what}: {n:?} not in {err}");
        }
        assert!(!out.exists(), "{what}: the output folder was written");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "ck")
            .collect();
        assert!(left.is_empty(), "{what}: left behind {left:?}");
    }
}

/// Values the runtime cannot run are refused by name before anything is written: a head_dim
/// GroupQueryAttention refuses, a context beyond the bound, block sizes ONNX Runtime refuses or
/// that do not fit in a u64; a megabyte value is quoted by a short prefix; an I/O error shows
/// its OS error once; an output name of 255 bytes (the file-name limit) builds.
#[test]
fn refuses_what_the_runtime_cannot_run_and_says_so_briefly() {
    let dir = tempfile::tempdir().unwrap();
    let ck = copy_checkpoint(dir.path());
    let out = dir.path().join("out");
    let refused = |ck: &Path, flags: &[&str], needles: &[&str]| {
        let r = build(ck, &out, flags);
        let err = String::from_utf8_lossy(&r.stderr).into_owned();
        assert_eq!(r.status.code(), Some(2), "{flags:?}: {err}");
        for n in needles {
            assert!(err.contains(n), "{flags:?}: {n:?} not in {err}");
        }
        assert!(err.len() < 1000, "{} bytes of error", err.len());
        assert!(!out.exists());
        err
    };
    for bs in ["8", "24", "512", "65536", "9223372036854775808"] {
        refused(&ck, &["--block-size", bs], &["--block-size", bs]);
    }
    refused(
        &ck,
        &["--block-size", "18446744073709551616"],
        &["--block-size"],
    );
    refused(&ck, &["--table-block-size", "12"], &["--table-block-size"]);
    // 128 heads of 1: rotary embedding needs two halves per head.
    edit_config(&ck, |c| c["num_attention_heads"] = 128.into());
    refused(&ck, &[], &["config.json", "head_dim", "even"]);
    edit_config(&ck, |c| {
        c["num_attention_heads"] = 4.into();
        c["max_position_embeddings"] = (1u64 << 63).into();
    });
    refused(
        &ck,
        &[],
        &["config.json", "max_position_embeddings", "131072"],
    );
    edit_config(&ck, |c| {
        c["max_position_embeddings"] = 512.into();
        c["hidden_act"] = "x".repeat(1 << 19).into();
    });
    let err = refused(&ck, &[], &["config.json", "hidden_act", "xxx..."]);
    assert!(err.len() < 500, "{err}");
    // A legal 255-byte output name (the file-name limit): the staging name stays short.
    let long = dir.path().join("m".repeat(255));
    let r = build(&checkpoint("packed"), &long, &[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(long.join("model.onnx").is_file());
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "ck" && *n != *long.file_name().unwrap())
        .collect();
    assert!(left.is_empty(), "left behind {left:?}");
}

/// An I/O error names the file and prints its OS error once (not again as the error's source).
#[test]
fn io_errors_print_the_os_error_once() {
    // /proc takes no new directories, root or not: creating the staging folder fails.
    let r = build(
        &checkpoint("packed"),
        Path::new("/proc/bitnet-onnx-test-out"),
        &[],
    );
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{err}");
    assert!(err.contains("/proc/.bitnet-onnx-test"), "{err}");
    assert_eq!(err.matches("(os error").count(), 1, "{err}");
}

/// A non-empty output folder is refused and left as it was; so is writing into the checkpoint.
#[test]
fn never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let r = build(&checkpoint("packed"), &out, &[]);
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("not an empty directory"));
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "mine"
    );
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
    let ck = copy_checkpoint(dir.path());
    let r = build(&ck, &ck.join("model"), &[]);
    assert_eq!(r.status.code(), Some(2));
    assert!(!ck.join("model").exists());
}

/// `inspect` reads a built model; its metadata lists every fused layer and the tables.
#[test]
fn inspect_reads_the_built_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    let r = build(&checkpoint("packed"), &out, &[]);
    assert!(r.status.success());
    let v = run_ok(
        bin()
            .arg("inspect")
            .arg(out.join("model.onnx"))
            .arg("--json"),
    );
    let j: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    let ops = &j["ops"];
    assert_eq!(ops["com.microsoft::GroupQueryAttention"], 2, "{ops}");
    assert_eq!(ops["com.microsoft::MatMulNBits"], 9, "{ops}");
    assert_eq!(ops["com.microsoft::GatherBlockQuantized"], 1, "{ops}");
    assert_eq!(j["bitnet_onnx"]["target"], "ort-genai");
    assert_eq!(j["bitnet_onnx"]["layers"], 8);
    assert_eq!(j["bitnet_onnx"]["tables"], 2);
    let model = bitnet_model::Model::load(out.join("model.onnx")).unwrap();
    let layers: Vec<bitnet_model::metadata::LayerSpec> =
        bitnet_model::metadata::list(&model.proto, bitnet_model::metadata::LAYERS)
            .unwrap()
            .unwrap();
    assert_eq!(layers.len(), 8);
    assert!(layers[0].weight.contains("q_proj") && layers[0].weight.contains("v_proj"));
    // verify has no ONNX original to compare with, and says so.
    let m = out.join("model.onnx");
    let r = bin().arg("verify").arg(&m).arg(&m).output().unwrap();
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("written by `bitnet-onnx build`"));
}

/// The tokenizer files copied into the folder: og.Tokenizer gives transformers' ids for every
/// prompt and for the tricky strings of `expected/tokenizer_cases.json` (digits, whitespace,
/// non-ASCII, special-token text), and decodes them back
/// (`tests/python/genai_tokenizer_check.py`).
#[test]
fn tokenizer_reads_transformers_ids() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    let r = build(&checkpoint("packed"), &out, &[]);
    assert!(r.status.success());
    let check = Command::new(python())
        .arg(workspace().join("tests/python/genai_tokenizer_check.py"))
        .arg(&out)
        .output()
        .expect("run python");
    let v: serde_json::Value = serde_json::from_slice(&check.stdout).expect("tokenizer check JSON");
    assert!(check.status.success() && v["ok"] == true, "{v}");
    assert!(v["checked"].as_u64().unwrap() >= 10, "{v}");
}

/// The fact the exact activations rest on, checked in the pinned ONNX Runtime
/// (`tests/python/matmulnbits_int8_exact.py`): fed BitNet's int8 codes, 2-bit MatMulNBits at
/// accuracy_level 4 is off by 0.6% of its largest output in the plain layout (measured) and
/// exact to float rounding (4e-7, 1.7e-6) with the reserved 127 slot per block, and exactly
/// the integer product with unit block scales (what `build` writes: the layer's scale is
/// applied after the node, in transformers' order).
#[test]
fn reserved_slot_makes_int8_kernels_exact() {
    for (k, bs) in [("2560", "128"), ("6912", "64")] {
        let out = Command::new(python())
            .arg(workspace().join("tests/python/matmulnbits_int8_exact.py"))
            .args(["--k", k, "--block-size", bs])
            .output()
            .expect("run python");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(v["reserved_slot"].as_f64().unwrap() < 1e-5, "{v}");
        assert_eq!(
            v["reserved_slot_unit_scale_max_abs"].as_f64(),
            Some(0.0),
            "{v}"
        );
        assert!(v["plain"].as_f64().unwrap() > 1e-3, "{v}");
    }
}

/// All prompts of a form as one batch (`tests/python/genai_batch.py`: og.Tokenizer pads them
/// on the right with the pad token): each sequence must generate what transformers generated
/// for it alone, with both `--logits` (measured: all 40 tokens of all 4 prompts).
#[test]
fn batched_prompts_generate_what_each_does_alone() {
    let dir = tempfile::tempdir().unwrap();
    for logits in ["last", "all"] {
        let out = dir.path().join(logits);
        let r = build(&checkpoint("packed"), &out, &["--logits", logits]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let run = Command::new(python())
            .arg(workspace().join("tests/python/genai_batch.py"))
            .arg(&out)
            .arg(workspace().join("samples/checkpoints/expected/packed.json"))
            .output()
            .expect("run python");
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
        assert!(v["batch"].as_u64().unwrap() >= 2, "{v}");
        for p in v["prompts"].as_array().unwrap() {
            assert!(p["prompt_ids_match"].as_bool().unwrap(), "{p}");
            assert!(
                p["same_prefix"].as_u64().unwrap() >= 32,
                "--logits {logits}: {p}"
            );
        }
    }
}

/// A sharded checkpoint (`model-0000N-of-00002.safetensors` and the index transformers writes)
/// builds the same folder as the single file.
#[test]
fn sharded_checkpoint_builds_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let ck = copy_checkpoint(dir.path());
    let p = ck.join("model.safetensors");
    let (header, data) = read_safetensors(&p);
    let names: Vec<&str> = header
        .keys()
        .map(String::as_str)
        .filter(|k| *k != "__metadata__")
        .collect();
    let mut weight_map = serde_json::Map::new();
    for (i, part) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        for name in part {
            weight_map.insert(name.to_string(), file.clone().into());
        }
        write_tensors(&ck.join(&file), &header, &data, part);
    }
    std::fs::remove_file(&p).unwrap();
    std::fs::write(
        ck.join("model.safetensors.index.json"),
        serde_json::to_vec(&serde_json::json!({"metadata": {}, "weight_map": weight_map})).unwrap(),
    )
    .unwrap();
    let (a, b) = (dir.path().join("single"), dir.path().join("sharded"));
    assert!(build(&checkpoint("packed"), &a, &[]).status.success());
    let r = build(&ck, &b, &[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    for f in ["model.onnx", "model.onnx.data", "genai_config.json"] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f}"
        );
    }
    // An index naming a missing shard is refused by name.
    std::fs::remove_file(ck.join("model-00002-of-00002.safetensors")).unwrap();
    let r = build(&ck, &dir.path().join("broken"), &[]);
    assert_eq!(r.status.code(), Some(2));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("model-00002-of-00002.safetensors") && err.contains("does not exist"),
        "{err}"
    );
}
