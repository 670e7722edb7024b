//! `Q8Linear` (the 8-bit head): every path bit-identical to the reference over random shapes
//! (K not a multiple of the block, blocks of 32 to 256, M from 1 to 40, odd N, any code
//! bytes including 0, whose value -128 the AVX2 path handles apart), and the reference within
//! float rounding of a direct float64 evaluation of the formula.

use bitnet_ortops::kernel::Path;
use bitnet_ortops::op::serial;
use bitnet_ortops::q8::{self, Q8Linear};
use proptest::prelude::*;

mod common;
use common::Rng;

/// A random problem: the op, `x` `[m, k]`, codes `[n, nb * b]` and scales `[n, nb]`.
fn problem(
    k: usize,
    n: usize,
    m: usize,
    b: usize,
    seed: u64,
) -> (Q8Linear, Vec<f32>, Vec<u8>, Vec<f32>) {
    let mut rng = Rng(seed);
    let op = Q8Linear::new(k as i64, n as i64, b as i64).unwrap();
    let nb = op.blocks();
    let x: Vec<f32> = (0..m * k).map(|_| rng.float()).collect();
    let w: Vec<u8> = (0..n * nb * b).map(|_| rng.next() as u8).collect();
    let s: Vec<f32> = (0..n * nb).map(|_| rng.float().abs() / 100.0).collect();
    (op, x, w, s)
}

fn run(op: &Q8Linear, path: Path, x: &[f32], m: usize, w: &[u8], s: &[f32]) -> Vec<f32> {
    let mut y = vec![0f32; m * op.n];
    op.compute(path, x, m, w, s, &mut y, &serial).unwrap();
    y
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn paths_are_bit_identical(k in 1usize..700, n in 1usize..70, m in 1usize..=40, bi in 0usize..4, seed in 1u64..u64::MAX) {
        let b = [32, 64, 128, 256][bi];
        let (op, x, w, s) = problem(k, n, m, b, seed);
        let want = run(&op, Path::Reference, &x, m, &w, &s);
        for path in Path::available() {
            let got = run(&op, path, &x, m, &w, &s);
            let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
            prop_assert!(same, "path {} differs", path.name());
        }
    }

    #[test]
    fn reference_is_the_formula(k in 1usize..400, n in 1usize..20, m in 1usize..=8, bi in 0usize..3, seed in 1u64..u64::MAX) {
        let b = [32, 64, 128][bi];
        let (op, x, w, s) = problem(k, n, m, b, seed);
        let nb = op.blocks();
        let y = run(&op, Path::Reference, &x, m, &w, &s);
        for t in 0..m {
            let q = q8::quantize(&x[t * k..(t + 1) * k], b);
            let sa = q.scales.unwrap();
            for r in 0..n {
                let mut want = 0f64;
                let mut mag = 0f64;
                for j in 0..k {
                    let blk = j / b;
                    let v = (w[r * nb * b + j] as f64 - 128.0) * q.codes[j] as f64
                        * s[r * nb + blk] as f64 * sa[blk] as f64;
                    want += v;
                    mag += v.abs();
                }
                let got = y[t * n + r] as f64;
                prop_assert!((got - want).abs() <= 1e-5 * mag + 1e-30, "t {t} r {r}: {got} vs {want}");
            }
        }
    }
}

#[test]
fn refuses_bad_attributes_and_shapes() {
    assert!(Q8Linear::new(0, 4, 32).is_err());
    assert!(Q8Linear::new(64, 0, 32).is_err());
    assert!(Q8Linear::new(64, 4, 16).is_err());
    assert!(Q8Linear::new(64, 4, 48).is_err());
    assert!(Q8Linear::new(64, 4, 2048).is_err());
    let op = Q8Linear::new(70, 5, 32).unwrap();
    assert!(op.check(&[1, 70], &[5, 3, 32], &[5, 3]).is_ok());
    let e = op.check(&[1, 69], &[5, 3, 32], &[5, 3]).unwrap_err();
    assert!(e.to_string().contains("K = 70"), "{e}");
    let e = op.check(&[1, 70], &[5, 2, 32], &[5, 3]).unwrap_err();
    assert!(e.to_string().contains("input W"), "{e}");
    let e = op.check(&[1, 70], &[5, 3, 32], &[15]).unwrap_err();
    assert!(e.to_string().contains("input S"), "{e}");
    assert!(op.check(&[], &[5, 3, 32], &[5, 3]).is_err());
}

#[test]
fn non_finite_tokens_give_nan_rows_only() {
    let (op, mut x, w, s) = problem(100, 9, 3, 32, 7);
    x[100 + 5] = f32::INFINITY;
    for path in Path::available() {
        let y = run(&op, path, &x, 3, &w, &s);
        assert!(y[9..18].iter().all(|v| v.is_nan()));
        assert!(y[..9].iter().chain(&y[18..]).all(|v| v.is_finite()));
    }
}
