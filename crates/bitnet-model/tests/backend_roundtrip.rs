//! Every model of the ONNX backend test suite survives `Model::load` + `save` unchanged.
//!
//! The models come from the pinned `onnx` Python package, dumped by
//! `tests/python/dump_backend_models.py` (run by `scripts/test.sh`) into
//! `$BITNET_ONNX_BACKEND_DIR`, by default `<workspace>/target/onnx-backend`:
//! `data/<set>/<test>/model.onnx` (plus the `light_*.onnx` models of the "light" set) and
//! `node/<case>/model.onnx`. Each file is decoded with prost (A), loaded and saved with the
//! default options, and the saved file decoded again (B); A and B must be equal, and the
//! saved file identical to the original byte for byte.

use std::path::{Path, PathBuf};

use bitnet_model::proto::ModelProto;
use bitnet_model::{save, Model, SaveOptions};
use prost::Message;

/// Fewer models than this means the dump is incomplete (onnx 1.23.2 has about 2000).
const MIN_MODELS: usize = 1500;

fn backend_dir() -> PathBuf {
    match std::env::var_os("BITNET_ONNX_BACKEND_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/onnx-backend"),
    }
}

/// Every `*.onnx` file under `dir`, sorted.
fn models(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            models(&p, out);
        } else if p.extension().is_some_and(|e| e == "onnx") {
            out.push(p);
        }
    }
}

/// The first line where the pretty Debug forms of `a` and `b` differ, with context.
fn first_difference(a: &ModelProto, b: &ModelProto) -> String {
    let (da, db) = (format!("{a:#?}"), format!("{b:#?}"));
    let (la, lb): (Vec<&str>, Vec<&str>) = (da.lines().collect(), db.lines().collect());
    let Some(i) = (0..la.len().max(lb.len())).find(|&i| la.get(i) != lb.get(i)) else {
        return "      the Debug forms are identical: the difference is in bits Debug does not \
                show (NaN payloads)\n"
            .into();
    };
    let from = i.saturating_sub(4);
    let mut out = String::new();
    for (k, line) in la.iter().enumerate().take(i).skip(from) {
        out.push_str(&format!("      {:>5}   {line}\n", k + 1));
    }
    out.push_str(&format!(
        "      {:>5} - {}\n",
        i + 1,
        la.get(i).copied().unwrap_or("<end>")
    ));
    out.push_str(&format!(
        "      {:>5} + {}\n",
        i + 1,
        lb.get(i).copied().unwrap_or("<end>")
    ));
    out
}

/// Round-trips one model; `Err` describes what went wrong.
fn round_trip(path: &Path, scratch: &Path) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("read: {e}"))?;
    let a = ModelProto::decode(bytes.as_slice()).map_err(|e| format!("prost decode: {e}"))?;
    let model = Model::load(path).map_err(|e| format!("Model::load: {e}"))?;
    let out = scratch.join("model.onnx");
    save(
        &model.proto,
        &out,
        &SaveOptions::default(),
        &model.source_files,
    )
    .map_err(|e| format!("save: {e}"))?;
    let saved = std::fs::read(&out).map_err(|e| format!("read saved: {e}"))?;
    let b = ModelProto::decode(saved.as_slice()).map_err(|e| format!("decode saved: {e}"))?;
    // Compared through their encodings, which are equal exactly when every field is equal bit
    // for bit (`PartialEq` on the protos would call a NaN weight unequal to itself).
    if a.encode_to_vec() != b.encode_to_vec() {
        return Err(format!(
            "saved model differs from the original:\n{}",
            first_difference(&a, &b)
        ));
    }
    // The dumped files are canonical encodings (protobuf's serializer writes fields in tag
    // order, as prost does), so the saved file must be the original byte for byte. A
    // difference here with equal protos means prost dropped fields unknown to the vendored
    // proto/onnx.proto (it keeps no unknown fields), or the original used a non-canonical
    // encoding.
    if saved != bytes {
        return Err(format!(
            "equal as protos but not byte for byte ({} bytes saved, {} in the original): \
             fields unknown to proto/onnx.proto were dropped, or the original is not \
             canonically encoded",
            saved.len(),
            bytes.len()
        ));
    }
    Ok(())
}

#[test]
fn backend_models_round_trip() {
    let dir = backend_dir();
    assert!(
        dir.is_dir(),
        "{} does not exist: run scripts/test.sh (it installs the pinned onnx package and dumps \
         the ONNX backend test models there), or set BITNET_ONNX_BACKEND_DIR to a directory \
         written by tests/python/dump_backend_models.py",
        dir.display()
    );
    let mut files = Vec::new();
    models(&dir, &mut files);
    assert!(
        files.len() >= MIN_MODELS,
        "{}: only {} models found, expected at least {MIN_MODELS}: the dump is incomplete, \
         rerun scripts/test.sh",
        dir.display(),
        files.len()
    );
    let scratch = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for path in &files {
        if let Err(e) = round_trip(path, scratch.path()) {
            let rel = path.strip_prefix(&dir).unwrap_or(path);
            failures.push(format!("  {}: {e}", rel.display()));
        }
    }
    let ok = files.len() - failures.len();
    eprintln!(
        "{}: {ok} models round-tripped, {} failed",
        dir.display(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{ok} models round-tripped, {} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
