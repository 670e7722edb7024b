//! Every sample, damaged: a seeded, bounded set of bit flips, truncations and damaged external
//! data files per sample, through `inspect`, `convert` (default flags: the ternary layers and
//! the tables) and `verify`. Whatever the damage, a command must end with exit 0 (the damage
//! missed everything that matters), 1 (`verify` found a difference) or 2 (a clear error), never
//! a panic or a signal; and a failed `convert` must leave nothing behind in its output
//! directory.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// The samples, each with its external data file when it has one.
fn samples() -> Vec<(PathBuf, Option<PathBuf>)> {
    let mut out = Vec::new();
    for rel in [
        "bitlinear_ts.onnx",
        "bitlinear_dynamo.onnx",
        "mlp.onnx",
        "transformer.onnx",
        "transformer_dynamo.onnx",
        "gemm/alpha_beta.onnx",
        "gemm/transA.onnx",
        "transformer_ext/model.onnx",
        "hf/bitlinear/model.onnx",
        "hf/autobitlinear_offline/model.onnx",
        "hf/trained_lm/model.onnx",
    ] {
        let p = sample(rel);
        let data = PathBuf::from(format!("{}.data", p.display()));
        out.push((p, data.exists().then_some(data)));
    }
    out
}

/// xorshift64*: the same cases on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One way of damaging a file's bytes.
fn damage(bytes: &[u8], rng: &mut Rng, kind: usize) -> Vec<u8> {
    let mut b = bytes.to_vec();
    match kind {
        // Cut anywhere.
        0 => b.truncate(rng.below(b.len())),
        // Flip a few bits anywhere.
        1 => {
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(b.len());
                b[at] ^= 1 << rng.below(8);
            }
        }
        // Overwrite a run of bytes with 0xff (lengths and varints become huge).
        2 => {
            let at = rng.below(b.len());
            let end = (at + 1 + rng.below(8)).min(b.len());
            b[at..end].iter_mut().for_each(|x| *x = 0xff);
        }
        // Damage the first kilobyte only (the header, where shapes and types live).
        _ => {
            let n = b.len().min(1024);
            let at = rng.below(n);
            b[at] = b[at].wrapping_add(1 + rng.below(254) as u8);
        }
    }
    b
}

/// Runs `bitnet-onnx ARGS`; returns the exit code, failing the test on a panic or a signal.
fn run(args: &[&std::ffi::OsStr], what: &str) -> i32 {
    let o = bin().args(args).output().expect("run bitnet-onnx");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{what}: panic: {err}");
    let code = o
        .status
        .code()
        .unwrap_or_else(|| panic!("{what}: killed by a signal: {err}"));
    assert!(matches!(code, 0..=2), "{what}: exit {code}: {err}");
    if code == 2 {
        assert!(
            err.contains("error"),
            "{what}: exit 2 without an error message: {err}"
        );
    }
    code
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn damaged_samples_give_clear_errors_and_leave_nothing_behind() {
    let mut rng = Rng(0x5eed_5eed_5eed_5eed);
    let mut failures = 0usize;
    let mut cases = 0usize;
    for (model, data) in samples() {
        let bytes = std::fs::read(&model).unwrap();
        let data_bytes = data.as_ref().map(|d| std::fs::read(d).unwrap());
        // Eight cases on the model file, three on its data file.
        let plan: Vec<(bool, usize)> = (0..8)
            .map(|i| (false, i % 4))
            .chain(data_bytes.iter().flat_map(|_| (0..3).map(|i| (true, i))))
            .collect();
        for (on_data, kind) in plan {
            let dir = tempfile::tempdir().unwrap();
            let name = model.file_name().unwrap();
            let m = dir.path().join(name);
            let (mb, db) = if on_data {
                let d = data_bytes.as_ref().unwrap();
                (bytes.clone(), Some(damage(d, &mut rng, kind)))
            } else {
                (damage(&bytes, &mut rng, kind), data_bytes.clone())
            };
            std::fs::write(&m, &mb).unwrap();
            if let Some(db) = db {
                let data_name = data.as_ref().unwrap().file_name().unwrap();
                std::fs::write(dir.path().join(data_name), db).unwrap();
            }
            let what = format!(
                "{} ({} damaged, kind {kind})",
                model.display(),
                if on_data { "data" } else { "model" }
            );
            cases += 1;
            run(
                &["inspect".as_ref(), m.as_os_str()],
                &format!("inspect {what}"),
            );
            let out_dir = dir.path().join("out");
            std::fs::create_dir(&out_dir).unwrap();
            let out = out_dir.join("converted.onnx");
            let code = run(
                &[
                    "convert".as_ref(),
                    m.as_os_str(),
                    "-o".as_ref(),
                    out.as_os_str(),
                    "-q".as_ref(),
                ],
                &format!("convert {what}"),
            );
            if code != 0 {
                failures += 1;
                assert!(
                    entries(&out_dir).is_empty(),
                    "convert {what} failed and left {:?}",
                    entries(&out_dir)
                );
                // The input is never touched.
                assert_eq!(std::fs::read(&m).unwrap(), mb, "{what}: input changed");
                continue;
            }
            // Converted despite the damage: verify must still end cleanly (tract may find
            // the damaged weights disagree, or not run the model at all).
            run(
                &[
                    "verify".as_ref(),
                    m.as_os_str(),
                    out.as_os_str(),
                    "--dim".as_ref(),
                    "seq=4".as_ref(),
                ],
                &format!("verify {what}"),
            );
        }
    }
    // The damage must mostly be caught: a test whose cases all pass through proves nothing.
    assert!(cases >= 90, "{cases} cases");
    eprintln!("{failures} of {cases} damaged inputs refused");
    assert!(
        failures * 2 >= cases,
        "only {failures} of {cases} damaged inputs were refused"
    );
}
