//! The rotary tables against transformers' own (samples/rope/reference.json, from
//! samples/generate_rope_reference.py): for each rope type and spelling of the config, the
//! config dict read by `Rope::read` must give transformers' type, inverse frequencies and
//! attention scaling, and the cos/sin the decoder bakes into its caches must be transformers'.

use std::path::Path;

use bitnet_build::rope::Rope;

fn reference() -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples/rope/reference.json");
    serde_json::from_slice(&std::fs::read(&p).expect("samples/rope/reference.json"))
        .expect("rope.json is JSON")
}

fn f32s(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Inverse frequencies: equal to transformers' float32 values bit for bit, or within 1 ulp
/// where torch's vectorized float32 `pow` (SLEEF's, 1-ulp accurate) rounds otherwise than the
/// C library's `powf` (counted and bounded). cos/sin, computed as the decoder computes them
/// from transformers' frequencies (so that a frequency an ulp off, whose angle drifts by up to
/// `pos` ulps, does not hide a wrong scaling): within 2e-6 absolute of transformers' over
/// positions up to 4095 (torch's vectorized cos/sin and the C library's differ by an ulp or
/// so).
#[test]
fn rotary_tables_match_transformers() {
    let r = reference();
    let cases = r["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    let mut types = std::collections::BTreeSet::new();
    let (mut total, mut off_by_ulp) = (0usize, 0usize);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let config = case["config"].as_object().unwrap();
        let default_theta = 10000.0;
        let max_pos = config["max_position_embeddings"].as_u64().unwrap() as usize;
        let rope = Rope::read(Path::new("config.json"), config, default_theta, max_pos)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            rope.kind.name(),
            case["rope_type"].as_str().unwrap(),
            "{name}"
        );
        types.insert(rope.kind.name());
        let head_dim = case["head_dim"].as_u64().unwrap() as usize;
        let (inv, scaling) = rope.inv_freq(head_dim, max_pos);
        let want = f32s(&case["inv_freq"]);
        assert_eq!(inv.len(), want.len(), "{name}");
        for (i, (a, b)) in inv.iter().zip(&want).enumerate() {
            total += 1;
            let ulps = (a.to_bits() as i64 - b.to_bits() as i64).abs();
            assert!(ulps <= 1, "{name}: inv_freq[{i}] {a} vs transformers {b}");
            off_by_ulp += (ulps == 1) as usize;
        }
        let want_scaling = case["attention_scaling"].as_f64().unwrap();
        assert!(
            (scaling - want_scaling).abs() <= 1e-15 * want_scaling,
            "{name}: attention scaling {scaling} vs {want_scaling}"
        );
        for (j, p) in case["positions"].as_array().unwrap().iter().enumerate() {
            let pos = p.as_u64().unwrap() as f32;
            let (wc, ws) = (f32s(&case["cos"][j]), f32s(&case["sin"][j]));
            for (i, f) in want.iter().enumerate() {
                let a = pos * f;
                let (c, s) = (a.cos() * scaling as f32, a.sin() * scaling as f32);
                assert!(
                    (c - wc[i]).abs() <= 2e-6 && (s - ws[i]).abs() <= 2e-6,
                    "{name}: position {pos} frequency {i}: cos {c} sin {s} vs transformers {} {}",
                    wc[i],
                    ws[i]
                );
            }
        }
    }
    for t in ["default", "linear", "dynamic", "llama3", "yarn"] {
        assert!(types.contains(t), "no {t} case in rope.json");
    }
    // At most a few frequencies an ulp apart (torch's pow), never more.
    assert!(
        off_by_ulp * 20 <= total,
        "{off_by_ulp} of {total} inverse frequencies are an ulp off transformers'"
    );
    eprintln!("{off_by_ulp} of {total} inverse frequencies an ulp from transformers'");
}
