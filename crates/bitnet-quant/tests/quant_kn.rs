//! `quant::kn` (quantizing a `[K, N]` weight in place) gives the same bits as transposing it
//! and using the channel-major quantizer: codes, scales, granularity, lossless flag, relative
//! error, and the same error for a non-finite weight. Any band height and tile width gives the
//! same result, and every band is reported read.

use std::sync::Mutex;

use bitnet_quant::quant::kn::{quantize_measured_kn, quantize_measured_kn_tiled, Rows, Tiling};
use bitnet_quant::quant::{
    quantize_measured, transpose, Granularity, Method, QuantConfig, QuantError, Spare,
};
use proptest::prelude::*;

fn granularity() -> impl Strategy<Value = Granularity> {
    prop_oneof![
        Just(Granularity::Tensor),
        Just(Granularity::Channel),
        (1usize..24).prop_map(Granularity::Group),
    ]
}

fn cfg(granularity: Granularity, threshold: f32, tol: f32) -> QuantConfig {
    QuantConfig {
        granularity,
        method: Method::AbsMean,
        threshold,
        lossless_rel_tol: tol,
        lossless_group: None,
    }
}

/// The `lossless_group` a case tries: none, the kind's own group (so a group-exact weight is
/// found whatever the configured granularity), or another length.
fn lossless_group(sel: u8, kind: Kind, other: usize) -> Option<usize> {
    match (sel, kind) {
        (0, _) => None,
        (1, Kind::TernaryGroup(g)) => Some(g),
        _ => Some(other),
    }
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// What a `[K, N]` weight looks like: continuous, already ternary at some granularity (with
/// jitter inside or outside the lossless tolerance), with zero columns, or holding a NaN/inf.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Normal,
    Grid,
    TernaryTensor,
    TernaryChannel,
    TernaryGroup(usize),
    Jitter(usize),
    NonFinite,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        3 => Just(Kind::Normal),
        1 => Just(Kind::Grid),
        2 => Just(Kind::TernaryTensor),
        2 => Just(Kind::TernaryChannel),
        2 => (1usize..12).prop_map(Kind::TernaryGroup),
        2 => (0usize..5).prop_map(Kind::Jitter),
        1 => Just(Kind::NonFinite),
    ]
}

/// A row-major `[k][n]` weight of the given kind.
fn make(kind: Kind, k: usize, n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    let mut unit = move || (xorshift(&mut s) >> 11) as f64 / (1u64 << 53) as f64;
    let mut w = vec![0f32; k * n];
    let code = |u: f64| -> f32 {
        if u < 0.3 {
            -1.0
        } else if u < 0.6 {
            0.0
        } else {
            1.0
        }
    };
    let col_scale: Vec<f32> = (0..n).map(|_| 0.01 + unit() as f32).collect();
    for r in 0..k {
        for c in 0..n {
            let u = unit();
            w[r * n + c] = match kind {
                Kind::Normal | Kind::NonFinite => ((u - 0.5) * 4.0) as f32,
                Kind::Grid => ((u * 17.0).floor() - 8.0) as f32 * 0.25,
                Kind::TernaryTensor => code(u) * 0.37,
                Kind::TernaryChannel => code(u) * col_scale[c],
                Kind::TernaryGroup(g) => code(u) * col_scale[c] * (1 + r / g) as f32,
                Kind::Jitter(4) => code(u) * 0.37,
                Kind::Jitter(_) => code(u) * col_scale[c],
            };
        }
    }
    match kind {
        Kind::Jitter(how) => {
            // Nudge one weight by a relative 1e-7 (inside the default 1e-6 tolerance), 1e-3
            // (outside), 1.9e-6 (passes the quick band check, off tolerance from the mode; per
            // channel, or per tensor for 4), or zero a whole column.
            let i = (unit() * (k * n) as f64) as usize % (k * n);
            match how {
                0 => w[i] *= 1.0 + 1e-7,
                1 => w[i] *= 1.0 + 1e-3,
                3 | 4 => w[i] *= 1.0 + 1.9e-6,
                _ => {
                    let c = i % n;
                    for r in 0..k {
                        w[r * n + c] = 0.0;
                    }
                }
            }
        }
        Kind::NonFinite => {
            for _ in 0..2 {
                let i = (unit() * (k * n) as f64) as usize % (k * n);
                w[i] = if unit() < 0.5 {
                    f32::NAN
                } else {
                    f32::INFINITY
                };
            }
        }
        _ => {}
    }
    w
}

/// `quantize_measured_kn` on rows read where they lie, with a fresh `Spare`.
fn kn_in_place<S, F>(
    src: &[S],
    k: usize,
    n: usize,
    f: F,
    c: &QuantConfig,
) -> Option<Result<(bitnet_quant::quant::Ternary, f64), QuantError>>
where
    S: Copy + Default + Send + Sync + 'static,
    F: Fn(S) -> f32 + Sync,
{
    quantize_measured_kn(src, k, n, f, c, Rows::InPlace(&|_| {}), &Spare::default())
}

/// Results as comparable bits (NaN in an error compares by its debug text).
fn same(
    a: &Result<(bitnet_quant::quant::Ternary, f64), bitnet_quant::quant::QuantError>,
    b: &Result<(bitnet_quant::quant::Ternary, f64), bitnet_quant::quant::QuantError>,
) -> Result<(), TestCaseError> {
    match (a, b) {
        (Ok((ta, ea)), Ok((tb, eb))) => {
            prop_assert_eq!(ta, tb);
            prop_assert_eq!(ea.to_bits(), eb.to_bits());
        }
        (Err(x), Err(y)) => prop_assert_eq!(format!("{x:?}"), format!("{y:?}")),
        _ => prop_assert!(false, "one failed, one did not: {a:?} vs {b:?}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn kn_equals_transpose_then_quantize(
        k in 1usize..70,
        n in 1usize..70,
        kind in kind(),
        gran in granularity(),
        thr in prop_oneof![Just(0.5f32), 0.05f32..1.0],
        rows in 1usize..80,
        width in 1usize..80,
        seed in any::<u64>(),
        lg_sel in 0u8..3,
        lg_other in 1usize..24,
    ) {
        let w = make(kind, k, n, seed);
        let c = QuantConfig {
            lossless_group: lossless_group(lg_sel, kind, lg_other),
            ..cfg(gran, thr, 1e-6)
        };
        let want = quantize_measured(&transpose(&w, k, n), n, k, &c);
        let read = Mutex::new(vec![0usize; k]);
        let done = |r: std::ops::Range<usize>| {
            for x in &mut read.lock().unwrap()[r] {
                *x += 1;
            }
        };
        let tiling = Tiling { rows, width };
        let got = quantize_measured_kn_tiled(&w, k, n, |x| x, &c, Rows::InPlace(&done), &Spare::default(), tiling);
        same(&got.unwrap(), &want)?;
        // Each pass reports every row once: two passes, or more for a jittered lossless scale.
        // The `lossless_group` pass may stop early, after its first band.
        let read = read.into_inner().unwrap();
        let even = |r: &[usize]| r[0] >= 2 && r.iter().all(|&x| x == r[0]);
        let each = |r: &[usize]| r.iter().all(|&x| x >= 2);
        let check = |r: &[usize]| if c.lossless_group.is_some() { each(r) } else { even(r) };
        if want.is_ok() {
            prop_assert!(check(&read), "{read:?}");
        }
        // Rows read through a reader (as from a file): `src` is then only for reporting a
        // non-finite weight, so zeros elsewhere prove the reader's rows are the ones used.
        let src = if matches!(kind, Kind::NonFinite) { w.clone() } else { vec![0.0; k * n] };
        let fetched = Mutex::new(vec![0usize; k]);
        let reader = |at: std::ops::Range<usize>, buf: &mut [f32]| {
            assert_eq!(at.start % n, 0, "a band starts on a row");
            buf.copy_from_slice(&w[at.clone()]);
            for x in &mut fetched.lock().unwrap()[at.start / n..at.end / n] {
                *x += 1;
            }
            Ok(())
        };
        // Kept buffers are reused as they were left: start from one full of NaN (as long as
        // a band or more) and codes full of 7, and run twice so the second run reuses the first
        // run's buffers and codes.
        let spare = Spare::default();
        spare.give(vec![f32::NAN; (seed as usize % 3 + 1) * rows.min(k) * n + 4096]);
        spare.give(vec![7i8; (seed as usize % 3) * k * n / 2 + 1]);
        for _ in 0..2 {
            let got = quantize_measured_kn_tiled(&src, k, n, |x| x, &c, Rows::Read { read: &reader, page_offset: seed as usize % 4096 }, &spare, tiling).unwrap();
            same(&got, &want)?;
            if let Ok((t, _)) = got {
                spare.give(t.codes);
            }
        }
        let fetched = fetched.into_inner().unwrap();
        prop_assert!(check(&fetched), "{fetched:?}");
        let auto = kn_in_place(&w, k, n, |x| x, &c).unwrap();
        same(&auto, &want)?;
    }

    #[test]
    fn kn_from_bytes_and_half_floats(
        k in 1usize..40,
        n in 1usize..40,
        kind in kind(),
        gran in granularity(),
        seed in any::<u64>(),
        lg_sel in 0u8..3,
        lg_other in 1usize..24,
    ) {
        let w = make(kind, k, n, seed);
        let c = QuantConfig {
            lossless_group: lossless_group(lg_sel, kind, lg_other),
            ..cfg(gran, 0.5, 1e-6)
        };
        let bytes: Vec<[u8; 4]> = w.iter().map(|x| x.to_le_bytes()).collect();
        let want = quantize_measured(&transpose(&w, k, n), n, k, &c);
        same(&kn_in_place(&bytes, k, n, f32::from_le_bytes, &c).unwrap(), &want)?;
        let halves: Vec<half::f16> = w.iter().map(|&x| half::f16::from_f32(x)).collect();
        let wide: Vec<f32> = halves.iter().map(|h| h.to_f32()).collect();
        let want = quantize_measured(&transpose(&wide, k, n), n, k, &c);
        same(&kn_in_place(&halves, k, n, |h| h.to_f32(), &c).unwrap(), &want)?;
    }
}

#[test]
fn kn_leaves_twn_to_the_caller() {
    let c = QuantConfig {
        method: Method::Twn,
        ..QuantConfig::default()
    };
    assert!(kn_in_place(&[1.0f32; 4], 2, 2, |x| x, &c).is_none());
}

#[test]
fn kn_large_matrices_match_across_tilings() {
    // Many bands and tiles, with K not a multiple of 4.
    for (kind, gran, lossless_group) in [
        (Kind::Normal, Granularity::Channel, None),
        (Kind::Normal, Granularity::Tensor, None),
        (Kind::Normal, Granularity::Group(64), None),
        (Kind::TernaryChannel, Granularity::Channel, None),
        (Kind::TernaryGroup(32), Granularity::Group(32), None),
        // Groups tried by `lossless_group` alone: found exact, or a pass stopped after a band.
        (Kind::TernaryGroup(32), Granularity::Channel, Some(32)),
        (Kind::TernaryGroup(32), Granularity::Tensor, Some(16)),
        (Kind::Normal, Granularity::Channel, Some(32)),
        (Kind::TernaryChannel, Granularity::Channel, Some(32)),
    ] {
        let (k, n) = (301, 1037);
        let w = make(kind, k, n, 7);
        let c = QuantConfig {
            lossless_group,
            ..cfg(gran, 0.5, 1e-6)
        };
        let want = quantize_measured(&transpose(&w, k, n), n, k, &c);
        if let Some(lg) = lossless_group {
            let found = want.as_ref().map(|(t, _)| (t.granularity, t.lossless));
            let expect = match kind {
                Kind::TernaryGroup(_) => (Granularity::Group(lg), true),
                Kind::TernaryChannel => (Granularity::Channel, true),
                _ => (gran, false),
            };
            assert_eq!(found, Ok(expect), "{kind:?} {gran:?}");
        }
        for (rows, width) in [(1, 1), (4, 16), (64, 100), (128, 512), (300, n), (k, n)] {
            let tiling = Tiling { rows, width };
            let got = quantize_measured_kn_tiled(
                &w,
                k,
                n,
                |x| x,
                &c,
                Rows::InPlace(&|_| {}),
                &Spare::default(),
                tiling,
            )
            .unwrap();
            same(&got, &want).unwrap();
        }
    }
}

#[test]
fn kn_read_errors_are_reported() {
    let c = QuantConfig::default();
    let fail = |_: std::ops::Range<usize>, _: &mut [f32]| Err("disk gone".to_string());
    let e = quantize_measured_kn(
        &[1.0f32; 6],
        2,
        3,
        |x| x,
        &c,
        Rows::Read {
            read: &fail,
            page_offset: 0,
        },
        &Spare::default(),
    )
    .unwrap();
    assert_eq!(e, Err(QuantError::Read("disk gone".to_string())));
}

#[test]
fn kn_shape_errors() {
    let c = QuantConfig::default();
    let e = kn_in_place(&[1.0f32; 5], 2, 3, |x| x, &c).unwrap();
    assert!(e.is_err());
    let e = kn_in_place(&[0.0f32; 0], 0, 3, |x| x, &c).unwrap();
    assert!(e.is_err());
}

#[test]
fn kn_lossless_group_costs_a_pass_only_for_weights_exact_per_group() {
    // Rows reported read per pass: statistics and codes (2) for a float weight and for one
    // exact per channel, as without `lossless_group` (pass 1's probe rules the group pass out
    // for the float weight; the channel one is found first); statistics, groups and codes (3)
    // for a weight exact per group.
    let (k, n) = (301, 300);
    for (kind, reads, gran) in [
        (Kind::Normal, 2, Granularity::Channel),
        (Kind::TernaryChannel, 2, Granularity::Channel),
        (Kind::TernaryGroup(32), 3, Granularity::Group(32)),
    ] {
        let w = make(kind, k, n, 11);
        let c = QuantConfig {
            lossless_group: Some(32),
            ..cfg(Granularity::Channel, 0.5, 1e-6)
        };
        let read = Mutex::new(vec![0usize; k]);
        let done = |r: std::ops::Range<usize>| {
            for x in &mut read.lock().unwrap()[r] {
                *x += 1;
            }
        };
        let tiling = Tiling {
            rows: 64,
            width: 32,
        };
        let (t, _) = quantize_measured_kn_tiled(
            &w,
            k,
            n,
            |x| x,
            &c,
            Rows::InPlace(&done),
            &Spare::default(),
            tiling,
        )
        .unwrap()
        .unwrap();
        assert_eq!(t.granularity, gran, "{kind:?}");
        let read = read.into_inner().unwrap();
        assert!(read.iter().all(|&x| x == reads), "{kind:?}: {read:?}");
    }
}
