//! Property tests of the ternary quantizer (`quant`) and the packed layouts (`pack`).

use bitnet_quant::pack::{
    codes_in_onnx_order, dq_scales, matmulnbits_b_shape, matmulnbits_scales, pack_int2, pack_int4,
    pack_matmulnbits, unpack_int2, unpack_int4, unpack_matmulnbits, unpack_matmulnbits_codes,
    PackError,
};
use bitnet_quant::quant::{
    quantize, rel_error, transpose, Granularity, Method, QuantConfig, Ternary, SCALE_EPS,
    TWN_DELTA_FACTOR,
};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Strategies and helpers

fn granularity() -> impl Strategy<Value = Granularity> {
    prop_oneof![
        Just(Granularity::Tensor),
        Just(Granularity::Channel),
        (1usize..24).prop_map(Granularity::Group),
    ]
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![Just(Method::AbsMean), Just(Method::Twn)]
}

/// Weights mixing continuous values, a coarse grid (so means and ties are often exact), zeros.
fn weight() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => -10.0f32..10.0,
        3 => (-8i32..=8).prop_map(|i| i as f32 * 0.25),
        1 => Just(0.0f32),
        1 => (-1.0f32..1.0).prop_map(|x| x * 1e-6),
    ]
}

/// `(n, k, w)` with `w` of `n * k` weights.
fn matrix(max_n: usize, max_k: usize) -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
    (1..=max_n, 1..=max_k)
        .prop_flat_map(|(n, k)| (Just(n), Just(k), prop::collection::vec(weight(), n * k)))
}

fn cfg(granularity: Granularity, method: Method) -> QuantConfig {
    QuantConfig {
        granularity,
        method,
        ..QuantConfig::default()
    }
}

/// The `(start, end)` column range of the group holding column `col`.
fn group_cols(gran: Granularity, k: usize, col: usize) -> (usize, usize) {
    match gran {
        Granularity::Tensor | Granularity::Channel => (0, k),
        Granularity::Group(g) => {
            let start = col / g * g;
            (start, (start + g).min(k))
        }
    }
}

/// All weights sharing the scale of `(row, col)`.
fn group_of(w: &[f32], n: usize, k: usize, gran: Granularity, row: usize, col: usize) -> Vec<f32> {
    match gran {
        Granularity::Tensor => w[..n * k].to_vec(),
        _ => {
            let (s, e) = group_cols(gran, k, col);
            w[row * k + s..row * k + e].to_vec()
        }
    }
}

/// torch: `(w * s).round().clamp(-1, 1)` with `s = 1 / a` (`round` = half to even).
fn torch_code(w: f32, a: f32) -> i8 {
    let s = 1.0f32 / a;
    (w * s).round_ties_even().clamp(-1.0, 1.0) as i8
}

/// Moves `x` by `ulps` units in the last place, keeping its sign.
fn nudge(x: f32, ulps: i32) -> f32 {
    let m = f32::from_bits((x.abs().to_bits() as i64 + ulps as i64) as u32);
    if x < 0.0 {
        -m
    } else {
        m
    }
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn same_bits(a: &Ternary, b: &Ternary) -> bool {
    a.n == b.n
        && a.k == b.k
        && a.codes == b.codes
        && a.granularity == b.granularity
        && a.lossless == b.lossless
        && a.scales.len() == b.scales.len()
        && a.scales
            .iter()
            .zip(&b.scales)
            .all(|(x, y)| x.to_bits() == y.to_bits())
}

/// A lossless input: `W = a * T` per group (+ optional ulp noise on the non-zeros).
#[derive(Debug, Clone)]
struct LosslessCase {
    n: usize,
    k: usize,
    gran: Granularity,
    codes: Vec<i8>,
    /// The true scale of every element.
    a: Vec<f32>,
    w: Vec<f32>,
}

fn lossless_case() -> impl Strategy<Value = LosslessCase> {
    (1usize..8, 1usize..60, granularity(), any::<bool>()).prop_flat_map(|(n, k, gran, noisy)| {
        let groups = gran.scale_count(n, k);
        (
            prop::collection::vec(-1i8..=1, n * k),
            prop::collection::vec(1e-3f32..10.0, groups),
            prop::collection::vec(prop_oneof![2 => Just(0i32), 3 => -3i32..=3], n * k),
            prop::collection::vec(any::<bool>(), n * k),
        )
            .prop_map(move |(codes, scales, noise, neg_zero)| {
                let t = Ternary {
                    n,
                    k,
                    codes: codes.clone(),
                    granularity: gran,
                    scales,
                    lossless: true,
                };
                let mut a = Vec::with_capacity(n * k);
                let mut w = Vec::with_capacity(n * k);
                for row in 0..n {
                    for col in 0..k {
                        let i = row * k + col;
                        let s = t.scale_at(row, col);
                        a.push(s);
                        w.push(match codes[i] {
                            0 if neg_zero[i] => -0.0,
                            0 => 0.0,
                            c => nudge(f32::from(c) * s, if noisy { noise[i] } else { 0 }),
                        });
                    }
                }
                LosslessCase {
                    n,
                    k,
                    gran,
                    codes,
                    a,
                    w,
                }
            })
    })
}

/// A reference ONNX `DequantizeLinear` of a 2-D `x` with the given scale layout.
fn dequantize_linear(
    x: &[i8],
    dims: [usize; 2],
    scale: &[f32],
    sdims: &[i64],
    axis: Option<i64>,
    block: Option<i64>,
) -> Vec<f32> {
    let mut y = Vec::with_capacity(x.len());
    for i in 0..dims[0] {
        for j in 0..dims[1] {
            let s = match (sdims.len(), axis, block) {
                (0, None, None) => scale[0],
                (1, Some(0), None) => scale[i],
                (1, Some(1), None) => scale[j],
                (2, Some(ax), Some(b)) => {
                    let b = b as usize;
                    let s1 = sdims[1] as usize;
                    if ax == 0 {
                        scale[(i / b) * s1 + j]
                    } else {
                        scale[i * s1 + j / b]
                    }
                }
                other => panic!("unexpected scale layout {other:?}"),
            };
            y.push(f32::from(x[i * dims[1] + j]) * s);
        }
    }
    y
}

// ---------------------------------------------------------------------------------------------
// Quantizer properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn codes_are_ternary_and_shapes_hold(
        (n, k, w) in matrix(9, 70),
        gran in granularity(),
        m in method(),
    ) {
        let t = quantize(&w, n, k, &cfg(gran, m)).unwrap();
        prop_assert_eq!(t.n, n);
        prop_assert_eq!(t.k, k);
        prop_assert_eq!(t.codes.len(), n * k);
        prop_assert!(t.codes.iter().all(|c| (-1..=1).contains(c)));
        prop_assert_eq!(t.scales.len(), t.granularity.scale_count(n, k));
        prop_assert!(t.scales.iter().all(|s| s.is_finite() && *s > 0.0));
        if !t.lossless {
            prop_assert_eq!(t.granularity, gran);
        }
        // A zero weight never gets a non-zero code; codes carry the weight's sign.
        for (x, c) in w.iter().zip(&t.codes) {
            prop_assert!(*c == 0 || (*c > 0) == (*x > 0.0));
        }
        let counts = t.counts();
        prop_assert_eq!(counts.iter().sum::<u64>(), (n * k) as u64);
        let (lo, hi) = t.scale_range();
        prop_assert!(lo <= hi);
        let deq = t.dequantize();
        for row in 0..n {
            for col in 0..k {
                let i = row * k + col;
                prop_assert_eq!(deq[i], f32::from(t.codes[i]) * t.scale_at(row, col));
            }
        }
        prop_assert!(rel_error(&w, &t).is_finite());
    }

    #[test]
    fn lossless_inputs_are_recovered_exactly(case in lossless_case(), m in method()) {
        let LosslessCase { n, k, gran, codes, a, w } = case;
        let t = quantize(&w, n, k, &cfg(gran, m)).unwrap();
        prop_assert!(t.lossless, "not detected as lossless: {:?}", t);
        prop_assert_eq!(&t.codes, &codes);
        let allowed: &[Granularity] = match gran {
            Granularity::Tensor => &[Granularity::Tensor],
            Granularity::Channel => &[Granularity::Tensor, Granularity::Channel],
            Granularity::Group(_) => &[Granularity::Tensor, Granularity::Channel, gran],
        };
        prop_assert!(allowed.contains(&t.granularity), "{} from {}", t.granularity, gran);
        for row in 0..n {
            for col in 0..k {
                let i = row * k + col;
                if codes[i] != 0 {
                    let s = t.scale_at(row, col);
                    prop_assert!(
                        (f64::from(s) - f64::from(a[i])).abs() <= 1e-6 * f64::from(a[i]),
                        "scale {} for true {}", s, a[i]
                    );
                }
            }
        }
        prop_assert!(rel_error(&w, &t) <= 1e-6);
    }

    #[test]
    fn noise_free_lossless_is_bit_exact(case in lossless_case()) {
        // Without noise every non-zero magnitude is exactly its scale.
        let LosslessCase { n, k, gran, codes, a, .. } = case;
        let w: Vec<f32> = codes.iter().zip(&a).map(|(&c, &s)| f32::from(c) * s).collect();
        let t = quantize(&w, n, k, &cfg(gran, Method::AbsMean)).unwrap();
        prop_assert!(t.lossless);
        prop_assert_eq!(t.dequantize(), w.clone());
        prop_assert_eq!(rel_error(&w, &t), 0.0);
    }

    #[test]
    fn absmean_threshold_semantics(
        (n, k, w) in matrix(6, 50),
        gran in granularity(),
        thr in prop_oneof![Just(0.5f32), 0.05f32..=1.0, Just(1.0f32)],
    ) {
        let c = QuantConfig { threshold: thr, ..cfg(gran, Method::AbsMean) };
        let t = quantize(&w, n, k, &c).unwrap();
        prop_assume!(!t.lossless);
        for row in 0..n {
            for col in 0..k {
                let i = row * k + col;
                let (x, a) = (w[i], t.scale_at(row, col));
                // The exact rule: zero iff |w| * (1/a) <= threshold, else sign(w).
                let expected = if x.abs() * (1.0 / a) <= thr { 0 } else if x < 0.0 { -1 } else { 1 };
                prop_assert_eq!(t.codes[i], expected, "w {} a {} thr {}", x, a, thr);
                // The rule "zero where |W| < threshold * a" (docs/formats.md 1.2), away from ties.
                let lim = f64::from(thr) * f64::from(a);
                let m = f64::from(x.abs());
                if m < lim * (1.0 - 1e-6) {
                    prop_assert_eq!(t.codes[i], 0);
                } else if m > lim * (1.0 + 1e-6) {
                    prop_assert_eq!(t.codes[i], if x < 0.0 { -1 } else { 1 });
                }
            }
        }
    }

    #[test]
    fn absmean_matches_torch_rounding((n, k, w) in matrix(6, 50), gran in granularity()) {
        // threshold 0.5 is torch's `(w * (1/a)).round().clamp(-1, 1)`, ties included.
        let t = quantize(&w, n, k, &cfg(gran, Method::AbsMean)).unwrap();
        prop_assume!(!t.lossless);
        for row in 0..n {
            for col in 0..k {
                let i = row * k + col;
                prop_assert_eq!(t.codes[i], torch_code(w[i], t.scale_at(row, col)));
            }
        }
    }

    #[test]
    fn absmean_scale_is_group_mean((n, k, w) in matrix(6, 50), gran in granularity()) {
        let t = quantize(&w, n, k, &cfg(gran, Method::AbsMean)).unwrap();
        prop_assume!(!t.lossless);
        for row in 0..n {
            for col in 0..k {
                let g = group_of(&w, n, k, gran, row, col);
                let mean = g.iter().map(|x| f64::from(x.abs())).sum::<f64>() / g.len() as f64;
                let expected = (mean as f32).max(SCALE_EPS);
                let s = t.scale_at(row, col);
                prop_assert!(
                    (f64::from(s) - f64::from(expected)).abs() <= 1e-6 * f64::from(expected),
                    "scale {} expected {}", s, expected
                );
            }
        }
    }

    #[test]
    fn twn_scale_is_mean_of_kept((n, k, w) in matrix(6, 50), gran in granularity()) {
        let t = quantize(&w, n, k, &cfg(gran, Method::Twn)).unwrap();
        prop_assume!(!t.lossless);
        for row in 0..n {
            for col in 0..k {
                let i = row * k + col;
                let g = group_of(&w, n, k, gran, row, col);
                let mean = g.iter().map(|x| f64::from(x.abs())).sum::<f64>() / g.len() as f64;
                let delta = TWN_DELTA_FACTOR * mean;
                let m = f64::from(w[i].abs());
                if w[i] == 0.0 || m < delta * (1.0 - 1e-9) {
                    prop_assert_eq!(t.codes[i], 0);
                } else if m > delta * (1.0 + 1e-9) {
                    prop_assert_eq!(t.codes[i], if w[i] < 0.0 { -1 } else { 1 });
                }
                // The scale is the mean |w| over the weights of the group that were kept.
                let (s, e) = group_cols(gran, k, col);
                let (rows, cols) = match gran {
                    Granularity::Tensor => (0..n, 0..k),
                    _ => (row..row + 1, s..e),
                };
                let (mut sum, mut cnt) = (0f64, 0u32);
                for r in rows {
                    for c in cols.clone() {
                        if t.codes[r * k + c] != 0 {
                            sum += f64::from(w[r * k + c].abs());
                            cnt += 1;
                        }
                    }
                }
                let expected = if cnt == 0 { SCALE_EPS } else { (sum / f64::from(cnt)) as f32 };
                let got = t.scale_at(row, col);
                prop_assert!(
                    (f64::from(got) - f64::from(expected)).abs() <= 1e-6 * f64::from(expected),
                    "twn scale {} expected {}", got, expected
                );
            }
        }
    }

    #[test]
    fn rel_error_matches_definition((n, k, w) in matrix(5, 30), gran in granularity(), m in method()) {
        let t = quantize(&w, n, k, &cfg(gran, m)).unwrap();
        let deq = t.dequantize();
        let err: f64 = w.iter().zip(&deq).map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2)).sum();
        let norm: f64 = w.iter().map(|x| f64::from(*x).powi(2)).sum();
        let got = rel_error(&w, &t);
        if norm == 0.0 {
            prop_assert_eq!(got, 0.0);
        } else {
            prop_assert!((got - (err / norm).sqrt()).abs() <= 1e-9 * (1.0 + got));
        }
    }

    #[test]
    fn quantize_measured_equals_quantize_then_rel_error((n, k, w) in matrix(5, 30), gran in granularity(), m in method()) {
        let c = cfg(gran, m);
        let (t, e) = bitnet_quant::quant::quantize_measured(&w, n, k, &c).unwrap();
        let t2 = quantize(&w, n, k, &c).unwrap();
        prop_assert_eq!(&t, &t2);
        prop_assert_eq!(e.to_bits(), rel_error(&w, &t2).to_bits());
    }

    #[test]
    fn transpose_round_trips(rows in 1usize..80, cols in 1usize..80, seed in any::<u64>()) {
        let mut s = seed | 1;
        let m: Vec<u64> = (0..rows * cols).map(|_| xorshift(&mut s)).collect();
        let t = transpose(&m, rows, cols);
        for i in 0..rows {
            for j in 0..cols {
                prop_assert_eq!(t[j * rows + i], m[i * cols + j]);
            }
        }
        prop_assert_eq!(transpose(&t, cols, rows), m);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn deterministic_across_thread_counts(
        n in 40usize..160,
        k in 60usize..400,
        seed in any::<u64>(),
        gran in prop_oneof![
            Just(Granularity::Tensor),
            Just(Granularity::Channel),
            Just(Granularity::Group(32)),
            Just(Granularity::Group(50)),
        ],
        m in method(),
        lossless in any::<bool>(),
    ) {
        let mut s = seed | 1;
        let a = 0.0123f32;
        let w: Vec<f32> = (0..n * k)
            .map(|_| {
                let r = xorshift(&mut s);
                if lossless {
                    // ternary with a few ulps of noise: exercises the histogram mode path
                    match (r % 3) as i32 - 1 {
                        0 => 0.0,
                        c => nudge(c as f32 * a, ((r >> 8) % 7) as i32 - 3),
                    }
                } else {
                    ((r >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
                }
            })
            .collect();
        let c = cfg(gran, m);
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| quantize(&w, n, k, &c).unwrap())
        };
        let one = run(1);
        let four = run(4);
        prop_assert_eq!(one.lossless, lossless);
        prop_assert!(same_bits(&one, &four), "1 thread and 4 threads differ");
        let err1 = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap()
            .install(|| rel_error(&w, &one));
        let err4 = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap()
            .install(|| rel_error(&w, &four));
        prop_assert_eq!(err1.to_bits(), err4.to_bits());
    }
}

// ---------------------------------------------------------------------------------------------
// Packing properties

/// A random ternary weight with positive scales.
fn ternary(max_n: usize, max_k: usize, gran: Granularity) -> impl Strategy<Value = Ternary> {
    (1..=max_n, 1..=max_k).prop_flat_map(move |(n, k)| {
        (
            prop::collection::vec(-1i8..=1, n * k),
            prop::collection::vec(1e-4f32..4.0, gran.scale_count(n, k)),
        )
            .prop_map(move |(codes, scales)| Ternary {
                n,
                k,
                codes,
                granularity: gran,
                scales,
                lossless: false,
            })
    })
}

fn block_size() -> impl Strategy<Value = usize> {
    prop_oneof![Just(16usize), Just(32), Just(64), Just(128)]
}

/// A block size and a granularity that MatMulNBits accepts with it.
fn nbits_case() -> impl Strategy<Value = (usize, Ternary)> {
    (block_size(), 0usize..4).prop_flat_map(|(bs, which)| {
        let gran = match which {
            0 => Granularity::Tensor,
            1 => Granularity::Channel,
            2 => Granularity::Group(bs),
            _ => Granularity::Group(bs * 3),
        };
        (Just(bs), ternary(5, 300, gran))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn matmulnbits_round_trips((bs, t) in nbits_case(), bits in prop_oneof![Just(2u32), Just(4), Just(8)]) {
        let b = pack_matmulnbits(&t, bs, bits).unwrap();
        let [n, nb, blob] = matmulnbits_b_shape(t.n, t.k, bs, bits).unwrap();
        prop_assert_eq!(b.len(), n * nb * blob);
        prop_assert_eq!(nb, t.k.div_ceil(bs));
        prop_assert_eq!(blob, bs * bits as usize / 8);
        prop_assert_eq!(unpack_matmulnbits_codes(&b, t.n, t.k, bs, bits).unwrap(), t.codes.clone());
        // Padding (K up to a whole block) holds the zero point.
        let per_byte = 8 / bits as usize;
        let zp = 1u8 << (bits - 1);
        let mask = ((1u16 << bits) - 1) as u8;
        for row in 0..t.n {
            for kk in t.k..nb * bs {
                let byte = b[row * nb * blob + kk / per_byte];
                prop_assert_eq!((byte >> ((kk % per_byte) * bits as usize)) & mask, zp);
            }
        }
        let scales = matmulnbits_scales(&t, bs).unwrap();
        prop_assert_eq!(scales.len(), t.n * nb);
        let deq = unpack_matmulnbits(&b, &scales, t.n, t.k, bs, bits).unwrap();
        prop_assert_eq!(deq, t.dequantize());
    }

    #[test]
    fn matmulnbits_group_must_cover_blocks(bs in block_size(), g in 1usize..300, t0 in ternary(3, 100, Granularity::Tensor)) {
        let t = Ternary {
            granularity: Granularity::Group(g),
            scales: vec![1.0; Granularity::Group(g).scale_count(t0.n, t0.k)],
            ..t0
        };
        let r = matmulnbits_scales(&t, bs);
        if g % bs == 0 {
            prop_assert!(r.is_ok());
        } else {
            prop_assert_eq!(r, Err(PackError::GroupNotMultipleOfBlock { group: g, block_size: bs }));
        }
    }

    #[test]
    fn int2_round_trips(v in prop::collection::vec(-2i8..=1, 0..200)) {
        let b = pack_int2(&v);
        prop_assert_eq!(b.len(), v.len().div_ceil(4));
        prop_assert_eq!(unpack_int2(&b, v.len()), v.clone());
        // Unused high bits of the last byte are zero.
        if v.len() % 4 != 0 {
            prop_assert_eq!(b[b.len() - 1] >> (2 * (v.len() % 4)), 0);
        }
    }

    #[test]
    fn int4_round_trips(v in prop::collection::vec(-8i8..=7, 0..200)) {
        let b = pack_int4(&v);
        prop_assert_eq!(b.len(), v.len().div_ceil(2));
        prop_assert_eq!(unpack_int4(&b, v.len()), v.clone());
        if v.len() % 2 == 1 {
            prop_assert_eq!(b[b.len() - 1] >> 4, 0);
        }
    }

    #[test]
    fn dq_scales_reproduce_dequantize(
        (gran, t) in granularity().prop_flat_map(|g| (Just(g), ternary(6, 40, g))),
        transposed in any::<bool>(),
    ) {
        prop_assert_eq!(t.granularity, gran);
        let x = codes_in_onnx_order(&t, transposed);
        let dims = if transposed { [t.n, t.k] } else { [t.k, t.n] };
        let (scale, sdims, axis, block) = dq_scales(&t, transposed);
        prop_assert_eq!(scale.len(), sdims.iter().product::<i64>() as usize);
        if let (Some(ax), Some(b)) = (axis, block) {
            // Blocked: scale shape = x shape with the blocked axis divided by b (rounded up),
            // and b within the accepted range [ceil(D/S), ceil(D/(S-1)) - 1].
            let ax = ax as usize;
            let d = dims[ax] as i64;
            for (i, (&sd, &xd)) in sdims.iter().zip(&dims).enumerate() {
                if i == ax {
                    prop_assert_eq!(sd, (d + b - 1) / b);
                } else {
                    prop_assert_eq!(sd, xd as i64);
                }
            }
            let s = sdims[ax];
            prop_assert!((d + s - 1) / s <= b);
            if s > 1 {
                // b <= ceil(D / (S - 1)) - 1
                prop_assert!(b < (d + s - 2) / (s - 1));
            }
        }
        let y = dequantize_linear(&x, dims, &scale, &sdims, axis, block);
        let deq = t.dequantize();
        let expected = if transposed { deq } else { transpose(&deq, t.n, t.k) };
        prop_assert_eq!(y, expected);
    }
}

// ---------------------------------------------------------------------------------------------
// torch compatibility at the rounding ties

#[test]
fn torch_ties_with_exact_means() {
    // Groups whose mean |W| is exact: the 0.5 tie rounds to 0 (half to even), 1.5 rounds to 2
    // and clamps to 1, as `(w * (1/a)).round().clamp(-1, 1)` does.
    for a in [1.0f32, 0.25, 3.0, 0.75, 6.0, 0.6875, 1.9] {
        // [a/2, -a/2, 3a/2, -3a/2, a, -a, 0, 2a]: sum |.| = 8a
        let w = [a * 0.5, -a * 0.5, a * 1.5, -a * 1.5, a, -a, 0.0, 2.0 * a];
        let t = quantize(&w, 1, 8, &QuantConfig::bitnet_b158()).unwrap();
        assert!(!t.lossless);
        assert_eq!(t.scales, vec![a]);
        let torch: Vec<i8> = w.iter().map(|&x| torch_code(x, a)).collect();
        assert_eq!(t.codes, torch, "a = {a}");
        assert_eq!(t.codes, vec![0, 0, 1, -1, 1, -1, 0, 1], "a = {a}");
    }
}

#[test]
fn torch_multiplies_by_the_reciprocal() {
    // torch computes `w * (1 / a)`, not `w / a`; the two round differently next to the 0.5 tie.
    // Find such weights and check that the quantizer follows torch.
    let mut found = 0;
    let mut a_bits = 1.9f32.to_bits();
    while found < 20 && a_bits < 2.0f32.to_bits() {
        a_bits += 97;
        let a = f32::from_bits(a_bits);
        for ulps in [-2, -1, 1, 2] {
            let x = nudge(a * 0.5, ulps);
            let mul = torch_code(x, a);
            let div = (x / a).round_ties_even().clamp(-1.0, 1.0) as i8;
            if mul == div {
                continue;
            }
            // A second weight making the group's mean |W| equal to `a` (checked below).
            let y = 2.0 * a - x;
            let t = quantize(&[x, y], 1, 2, &cfg(Granularity::Channel, Method::AbsMean)).unwrap();
            if t.scales[0] != a {
                continue;
            }
            assert!(!t.lossless);
            assert_eq!(t.codes[0], mul, "a = {a:e}, w = {x:e}");
            found += 1;
        }
    }
    assert!(
        found > 0,
        "no weight found where w * (1/a) and w / a round apart"
    );
}

#[test]
fn default_configs() {
    let d = QuantConfig::default();
    assert_eq!(d.granularity, Granularity::Channel);
    assert_eq!(d.method, Method::AbsMean);
    assert_eq!(d.threshold, 0.5);
    assert_eq!(d.lossless_rel_tol, 1e-6);
    let b = QuantConfig::bitnet_b158();
    assert_eq!(b.granularity, Granularity::Tensor);
    assert_eq!(b.method, Method::AbsMean);
    assert_eq!(b.threshold, 0.5);
}

#[test]
fn torch_export_noise_is_lossless() {
    // docs/formats.md 1.4: real exports carry relative deviations up to 4e-7 around `a`.
    let a = 0.037f32;
    let mut s = 12345u64;
    let (n, k) = (16, 96);
    let mut codes = Vec::with_capacity(n * k);
    let w: Vec<f32> = (0..n * k)
        .map(|_| {
            let r = xorshift(&mut s);
            let c = (r % 3) as i8 - 1;
            codes.push(c);
            let rel = ((r >> 16) % 801) as f64 * 1e-9 - 4e-7;
            (f64::from(f32::from(c) * a) * (1.0 + rel)) as f32
        })
        .collect();
    let t = quantize(&w, n, k, &QuantConfig::bitnet_b158()).unwrap();
    assert!(t.lossless);
    assert_eq!(t.granularity, Granularity::Tensor);
    assert_eq!(t.codes, codes);
    assert!((t.scales[0] - a).abs() <= 1e-6 * a);
    assert!(rel_error(&w, &t) < 1e-6);
}
