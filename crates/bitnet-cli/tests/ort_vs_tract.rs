//! The two runtimes agree on what `convert` writes: every sample converted to every target is
//! run in ONNX Runtime (CPU, ORT_ENABLE_BASIC, so no fusion changes the numerics) and in tract
//! (through bitnet-eval, which lowers what tract cannot read) on the same inputs, output by
//! output.
//!
//! Tolerances (relative L2 of tract's output against ORT's): 1e-5 where activations stay float
//! (`onnx`, `tensorrt`, `qdq-int8`) and for `ort-int8`, whose integer path is spelled out in
//! standard ops; 2e-2 for `ort` (MatMulNBits accuracy_level 4), whose int8 activation
//! quantization per block of K is each runtime's own kernel.

mod common;
use common::*;

use std::collections::BTreeMap;

use bitnet_eval::inputs::read_npz;
use bitnet_eval::{compare, make_inputs, save_npz, Runner, TensorData};

#[test]
fn every_target_of_every_sample_agrees_between_ort_and_tract() {
    let dir = tempfile::tempdir().unwrap();
    let dims: BTreeMap<String, usize> = [("batch", 2), ("seq", 8)]
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    let mut worst: BTreeMap<&str, f64> = BTreeMap::new();
    for s in BITLINEAR_SAMPLES.iter().chain(FLOAT_SAMPLES) {
        let original = bitnet_model::Model::load(sample(s)).unwrap();
        let (inputs, _) = make_inputs(&original.proto, &dims, 7, &BTreeMap::new()).unwrap();
        let fin = dir.path().join("inputs.npz");
        save_npz(&fin, &inputs).unwrap();
        for (target, tol) in [
            ("ort", 2e-2),
            ("ort-int8", 1e-5),
            ("onnx", 1e-5),
            ("tensorrt", 1e-5),
            ("qdq-int8", 1e-5),
        ] {
            let out = dir
                .path()
                .join(format!("{}.{target}.onnx", s.replace('/', "_")));
            run_ok(
                bin()
                    .arg("convert")
                    .arg(sample(s))
                    .arg("-o")
                    .arg(&out)
                    .args(["--target", target, "--quantize-head", "-q"]),
            );
            let fout = dir.path().join("ort_outputs.npz");
            let status = std::process::Command::new(python())
                .arg(workspace().join("crates/bitnet-eval/tests/ort_run.py"))
                .arg(&out)
                .arg(&fin)
                .arg(&fout)
                .status()
                .unwrap();
            assert!(
                status.success(),
                "{s} {target}: ONNX Runtime could not run it"
            );
            let want = read_npz(&fout).unwrap();
            let converted = bitnet_model::Model::load(&out).unwrap();
            let runner = Runner::new(&converted.proto, &dims, &[]).unwrap();
            let got = runner.run(&inputs).unwrap();
            assert_eq!(got.len(), want.len(), "{s} {target}");
            for (name, values, shape) in &got {
                let (_, w) = want
                    .iter()
                    .find(|(n, _)| n == name)
                    .unwrap_or_else(|| panic!("{s} {target}: ORT has no output {name}"));
                assert_eq!(&w.shape, shape, "{s} {target} {name}");
                let TensorData::F32(w) = &w.data else {
                    panic!("{s} {target} {name}: not float32")
                };
                let m = compare(w, values, shape);
                assert!(m.rel_l2 < tol, "{s} {target} {name}: {m:?}");
                let e = worst.entry(target).or_default();
                *e = e.max(m.rel_l2);
            }
        }
    }
    // The largest differences seen, for the log (`cargo test -- --nocapture`).
    println!("largest relative L2, tract against ORT: {worst:?}");
}
