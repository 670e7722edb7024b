//! Every kernel path against the reference, and the whole op against a direct evaluation of
//! the stock graph's formula, over random shapes: K not a multiple of the block, M from 1 to
//! 300, odd N, several column groups.

use bitnet_ortops::kernel::{self, Path};
use bitnet_ortops::layout;
use bitnet_ortops::op::{serial, BitLinear, Order};
use proptest::prelude::*;

mod common;
use common::Rng;

/// The stock graph's computation for one token and one column, from unpacked ternary codes.
fn expected(x: &[f32], t: &[i8], c: f32, order: Order) -> f32 {
    let m = x.iter().fold(0f32, |a, v| a.max(v.abs())).max(1e-5);
    let s = 127f32 / m;
    let y: i32 = x
        .iter()
        .zip(t)
        .map(|(&v, &w)| (v * s).round_ties_even().clamp(-128.0, 127.0) as i32 * w as i32)
        .sum();
    let y = y as f32;
    match order {
        Order::Divide => y / (s * c),
        Order::Multiply => (y / s) * c,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn paths_match_reference(k in 1usize..700, m in 1usize..=300, half_n in 0usize..20, seed in 1u64..u64::MAX) {
        let n = 2 * half_n + 1;
        let mut rng = Rng(seed);
        let codes: Vec<i8> = (0..n * k).map(|_| rng.ternary()).collect();
        let w = layout::pack(&codes, n, k).unwrap();
        let kp = layout::padded_k(k);
        // Any int8 activations (the kernels' bounds hold for -128 too), zero past K.
        let mut acts = vec![0i8; m * kp];
        for row in acts.chunks_mut(kp) {
            for a in &mut row[..k] {
                *a = rng.next() as i8;
            }
        }
        let mut want = vec![0i32; n * m];
        kernel::dots(Path::Reference, &w, kp, &acts, m, &mut want);
        // The reference itself against the unpacked codes.
        for r in 0..n {
            for t in 0..m {
                let direct: i32 = (0..k)
                    .map(|kk| (codes[r * k + kk] as i32 + 1) * acts[t * kp + kk] as i32)
                    .sum();
                prop_assert_eq!(want[r * m + t], direct);
            }
        }
        for path in Path::available() {
            let mut got = vec![0i32; n * m];
            kernel::dots(path, &w, kp, &acts, m, &mut got);
            prop_assert_eq!(&got, &want, "path {}", path.name());
        }
    }

    /// One token (decode) has its own AVX2 path (rows paired across the two halves of the
    /// slice, see `kernel/avx2.rs`), rarely drawn by the test above: every row count (odd ones
    /// leave a middle row unpaired) and any bytes, code 3 included (never written by `pack`,
    /// but a damaged tensor must give the same numbers on every path).
    #[test]
    fn decode_paths_match_reference(k in 1usize..3000, n in 1usize..700, seed in 1u64..u64::MAX) {
        let mut rng = Rng(seed);
        let kp = layout::padded_k(k);
        let w: Vec<u8> = (0..n * kp / 4).map(|_| rng.next() as u8).collect();
        let mut acts = vec![0i8; kp];
        for a in &mut acts[..k] {
            *a = rng.next() as i8;
        }
        let mut want = vec![0i32; n];
        kernel::dots(Path::Reference, &w, kp, &acts, 1, &mut want);
        for path in Path::available() {
            let mut got = vec![0i32; n];
            kernel::dots(path, &w, kp, &acts, 1, &mut got);
            prop_assert_eq!(&got, &want, "path {}", path.name());
        }
    }

    #[test]
    fn op_matches_the_graph_formula(k in 1usize..400, m in 1usize..=40, sizes in prop::collection::vec(1usize..12, 1..4), divide in 0i64..2, seed in 1u64..u64::MAX) {
        let n: usize = sizes.iter().sum();
        let mut rng = Rng(seed);
        let codes: Vec<i8> = (0..n * k).map(|_| rng.ternary()).collect();
        let w = layout::pack(&codes, n, k).unwrap();
        let c: Vec<f32> = sizes.iter().map(|_| 0.5 + (rng.next() % 1000) as f32 / 700.0).collect();
        let x: Vec<f32> = (0..m * k).map(|_| rng.float()).collect();
        let sizes_i: Vec<i64> = sizes.iter().map(|&s| s as i64).collect();
        let op = BitLinear::new(k as i64, n as i64, &sizes_i, divide).unwrap();
        let mut group = Vec::new();
        for (g, &s) in sizes.iter().enumerate() {
            group.extend(std::iter::repeat_n(g, s));
        }
        for path in Path::available() {
            let mut y = vec![0f32; m * n];
            op.compute(path, &x, m, &w, &c, &mut y, &serial).unwrap();
            for t in 0..m {
                for col in 0..n {
                    let e = expected(&x[t * k..(t + 1) * k], &codes[col * k..(col + 1) * k], c[group[col]], op.order);
                    prop_assert_eq!(y[t * n + col].to_bits(), e.to_bits(), "path {} token {} column {}", path.name(), t, col);
                }
            }
        }
    }
}

#[test]
fn avx2_is_detected_here() {
    // This project's development and CI machines have AVX2; if that changes, this says so
    // instead of the property test silently comparing the reference with itself.
    #[cfg(target_arch = "x86_64")]
    assert!(Path::available().contains(&Path::Avx2));
}

#[test]
fn refuses_bad_attributes_and_shapes() {
    assert!(BitLinear::new(0, 4, &[4], 1).is_err());
    assert!(BitLinear::new(200_000, 4, &[4], 1).is_err());
    assert!(BitLinear::new(8, 4, &[3], 1).is_err());
    assert!(BitLinear::new(8, 4, &[2, 3], 1).is_err());
    assert!(BitLinear::new(8, 4, &[0, 4], 1).is_err());
    assert!(BitLinear::new(8, 4, &[], 1).is_err());
    assert!(BitLinear::new(8, 4, &[4], 2).is_err());
    let op = BitLinear::new(130, 3, &[1, 2], 0).unwrap();
    assert_eq!(
        op.check(&[2, 5, 130], &[3, 64], &[2]).unwrap(),
        (10, vec![2, 5, 3])
    );
    assert!(op.check(&[2, 129], &[3, 64], &[2]).is_err());
    assert!(op.check(&[2, 130], &[3, 63], &[2]).is_err());
    assert!(op.check(&[2, 130], &[4, 64], &[2]).is_err());
    assert!(op.check(&[2, 130], &[3, 64], &[1]).is_err());
    assert!(op.check(&[], &[3, 64], &[2]).is_err());
    assert!(op.check(&[-1, 130], &[3, 64], &[2]).is_err());
}

#[test]
fn non_finite_tokens_give_nan_rows_only() {
    let (k, n) = (5, 3);
    let w = layout::pack(&[1i8; 15], n, k).unwrap();
    let op = BitLinear::new(5, 3, &[3], 1).unwrap();
    let x = [1.0, 2.0, f32::NAN, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0];
    let mut y = [0f32; 6];
    op.compute(Path::detect(), &x, 2, &w, &[1.0], &mut y, &serial)
        .unwrap();
    assert!(y[..3].iter().all(|v| v.is_nan()));
    assert!(y[3..].iter().all(|v| *v == 1.0));
}

/// `glu = 1`: the op's output is `relu(gate)^2 * up` of its own two groups, in the stock
/// graph's three float operations, bit for bit, on every path; `[..., N / 2]` out.
#[test]
fn relu2_glu_is_the_graph_s_three_nodes() {
    let (k, half, m) = (300, 37, 5);
    let n = 2 * half;
    let mut rng = Rng(11);
    let codes: Vec<i8> = (0..n * k).map(|_| rng.ternary()).collect();
    let w = layout::pack(&codes, n, k).unwrap();
    let c = [0.7f32, 1.3];
    let x: Vec<f32> = (0..m * k).map(|_| rng.float()).collect();
    let sizes = [half as i64, half as i64];
    let plain = BitLinear::new(k as i64, n as i64, &sizes, 1).unwrap();
    let glu = plain.clone().with_glu(1).unwrap();
    assert_eq!(glu.outputs(), half);
    assert_eq!(
        glu.check(&[1, m as i64, k as i64], &[n as i64, 96], &[2])
            .unwrap()
            .1,
        vec![1, m as i64, half as i64]
    );
    for path in Path::available() {
        let mut full = vec![0f32; m * n];
        plain
            .compute(path, &x, m, &w, &c, &mut full, &serial)
            .unwrap();
        let mut y = vec![0f32; m * half];
        glu.compute(path, &x, m, &w, &c, &mut y, &serial).unwrap();
        let mut zeros = 0;
        for t in 0..m {
            for j in 0..half {
                let (g, u) = (full[t * n + j], full[t * n + half + j]);
                let r = g.max(0.0);
                let want = (r * r) * u;
                zeros += (g <= 0.0) as usize;
                assert_eq!(
                    y[t * half + j].to_bits(),
                    want.to_bits(),
                    "{} {t} {j}",
                    path.name()
                );
            }
        }
        assert!(
            zeros > 0 && zeros < m * half,
            "both signs of the gate are exercised"
        );
    }
    // Two groups of equal size only, and 0 or 1.
    assert!(BitLinear::new(8, 5, &[2, 3], 1)
        .unwrap()
        .with_glu(1)
        .is_err());
    assert!(BitLinear::new(8, 4, &[4], 1).unwrap().with_glu(1).is_err());
    assert!(BitLinear::new(8, 6, &[2, 2, 2], 1)
        .unwrap()
        .with_glu(1)
        .is_err());
    assert!(BitLinear::new(8, 4, &[2, 2], 1)
        .unwrap()
        .with_glu(2)
        .is_err());
    assert!(BitLinear::new(8, 4, &[2, 2], 1)
        .unwrap()
        .with_glu(0)
        .is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The AVX2 activation quantization (what `quantize_row` runs here) is the scalar
    /// definition bit for bit: any length (tails past whole 32s), padding, half-way products
    /// (a row whose largest value is 127 has scale 1, so `k + 0.5` is an exact tie), NaN and
    /// infinities anywhere.
    #[test]
    fn activation_quantization_matches_the_scalar_definition(len in 0usize..300, pad in 0usize..40, ties in any::<bool>(), special in 0usize..4, seed in 1u64..u64::MAX) {
        let mut rng = Rng(seed);
        let mut x: Vec<f32> = (0..len).map(|_| {
            if ties {
                (rng.next() % 255) as f32 - 127.0 + 0.5
            } else {
                rng.float()
            }
        }).collect();
        if ties && len > 0 {
            x[0] = 127.0;
        }
        if len > 0 && special > 0 {
            let at = (rng.next() as usize) % len;
            x[at] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][special - 1];
        }
        let (mut a, mut b) = (vec![7i8; len + pad], vec![7i8; len + pad]);
        let want = bitnet_ortops::quant::quantize_row_scalar(&x, &mut a);
        let got = bitnet_ortops::quant::quantize_row(&x, &mut b);
        prop_assert_eq!(got.map(|(s, n)| (s.to_bits(), n)), want.map(|(s, n)| (s.to_bits(), n)));
        prop_assert_eq!(b, a);
    }
}

/// The extremes of the `i16` accumulators' bounds (see `kernel/avx2.rs`): every code 3 (the
/// largest field) against every activation -128 (the largest product) or 127, one token and
/// several, over rows long enough for many widening periods, with row counts that leave
/// unpaired rows. A sum that saturated or wrapped would differ from the reference.
#[test]
fn extreme_codes_and_activations_match_reference() {
    for kp in [128, 640, 2560, 6912, 13824] {
        for act in [-128i8, 127] {
            for (fill, n) in [(0xFFu8, 7usize), (0xAA, 5), (0x55, 3)] {
                let w = vec![fill; n * kp / 4];
                for m in [1usize, 3] {
                    let acts = vec![act; m * kp];
                    let mut want = vec![0i32; n * m];
                    kernel::dots(Path::Reference, &w, kp, &acts, m, &mut want);
                    let code = (fill & 3) as i32;
                    assert_eq!(want[0], code * act as i32 * kp as i32, "reference itself");
                    for path in Path::available() {
                        let mut got = vec![0i32; n * m];
                        kernel::dots(path, &w, kp, &acts, m, &mut got);
                        assert_eq!(
                            got,
                            want,
                            "path {} Kp {kp} a {act} byte {fill:#x} m {m}",
                            path.name()
                        );
                    }
                }
            }
        }
    }
}
