//! Ternary quantization of weight matrices (docs/formats.md section 1).
//!
//! Everything here is pure math over `f32` slices; no ONNX types. A weight is always given
//! *channel-major*: `w` has shape `[N][K]` row-major, `N` output features (channels), `K` input
//! features. A `MatMul` weight `B` is `[K, N]`: [`transpose`] it first.
//!
//! # Decisions
//!
//! * **Rounding / ties.** BitNet's published code (Microsoft's training-tips code, Hugging Face
//!   `BitLinear`, BitNet's own converters) computes `s = 1 / mean(|W|).clamp(1e-5)` and then
//!   `(W * s).round().clamp(-1, 1)`: it multiplies by the `f32` reciprocal (for a tensor,
//!   `1 / t` is `t.reciprocal()`), and `round` rounds half to even. We do the same: with
//!   `s = 1.0_f32 / a` and `r = |w| * s` (one `f32` multiply), the code is `0` when
//!   `r <= threshold` and `sign(w)` otherwise. With `threshold = 0.5` this reproduces
//!   `clamp(round_half_even(w * s), -1, 1)` bit for bit *for the same `a`*: `r == 0.5` gives `0`
//!   (torch rounds the tie to even), `r == 1.5` gives `1` (rounds to 2, then clamps). The rule
//!   is often written "zero where `|W| < threshold * a`"; the two only differ on exact ties,
//!   where we follow torch. Dividing (`w / a`) instead of multiplying by `1 / a` can differ in
//!   the last bit, which moves codes near the tie, so we do not divide.
//! * **Scale precision.** Sums are accumulated in `f64` in a fixed order, the mean is rounded to
//!   `f32` once and then clamped below at [`SCALE_EPS`]. Torch sums in `f32` with its own order,
//!   so its `a` may differ from ours by an ulp; codes agree exactly whenever the `a` agree.
//! * **TWN.** `delta = 0.7 * mean|W|` (in `f64`); a weight is kept when it is non-zero and
//!   `|w| >= delta`; `a` is the mean of the kept magnitudes, or [`SCALE_EPS`] when none is kept.
//!   `threshold` is ignored.
//! * **Lossless detection** runs first whatever the method: per-tensor, then per-channel, then
//!   the configured `Group(G)` (only when the configuration asks for groups), then
//!   `lossless_group` (when set and different: the group length a target can carry, so that a
//!   weight stored as ternary codes times a scale per group of inputs is recovered without
//!   asking for groups; a quantized weight keeps the configured granularity). The first
//!   granularity for which *every* group holds only `{-a, 0, +a}` wins, even when it is finer
//!   than a configured `Tensor` (a per-channel exact model stays exact). Zeros must be exactly
//!   `±0.0`; every other magnitude must lie within `lossless_rel_tol * a` of `a`, where `a` is the
//!   most frequent magnitude (exact bit pattern; ties go to the smallest). Codes are `sign(W)`.
//! * **All-zero groups** get the scale [`SCALE_EPS`] (`1e-5`) and zero codes, both in lossless
//!   detection (an all-zero tensor is lossless per-tensor) and in quantization (BitNet's clamp).
//! * **Determinism.** Work is split over rows (channels) with rayon; per-tensor sums are per-row
//!   partial sums added sequentially in row order. Results are bit-identical for any thread count.

use rayon::prelude::*;

mod absmean;
mod config;
pub mod kn;
mod lanes;
mod lossless;
mod spare;
mod transpose;
mod twn;

use absmean::absmean;
use lanes::*;
use lossless::*;
use twn::twn;

pub use config::{
    count_codes, Granularity, Method, QuantConfig, QuantError, Ternary, MAX_LOSSLESS_REL_TOL,
    SCALE_EPS,
};
pub use lanes::ternary_code;
pub use spare::Spare;
pub use transpose::{transpose, transpose_map, transpose_map_rows, transpose_map_rows_into};
pub use twn::TWN_DELTA_FACTOR;

/// Each rayon task gets rows holding at least this many weights, so short rows are batched.
const MIN_TASK_ELEMS: usize = 1 << 14;

/// Quantizes a channel-major `[n][k]` weight. Lossless detection runs first (see module docs).
pub fn quantize(w: &[f32], n: usize, k: usize, cfg: &QuantConfig) -> Result<Ternary, QuantError> {
    quantize_measured(w, n, k, cfg).map(|(t, _)| t)
}

/// [`quantize`] and [`rel_error`] of the result, equal to calling both. The absmean path
/// measures the error while each row is still in cache instead of reading the weight again
/// (the same sums in the same order, so the same bits).
pub fn quantize_measured(
    w: &[f32],
    n: usize,
    k: usize,
    cfg: &QuantConfig,
) -> Result<(Ternary, f64), QuantError> {
    check_shape(w, n, k)?;
    cfg.validate()?;
    let tol = f64::from(cfg.lossless_rel_tol);
    let mut order = vec![Granularity::Tensor, Granularity::Channel];
    order.extend(detection_groups(cfg, k).map(Granularity::Group));
    for gran in order {
        if let Some(t) = detect_at(w, n, k, gran, tol) {
            let e = rel_error(w, &t);
            return Ok((t, e));
        }
    }
    match cfg.method {
        Method::AbsMean => absmean(w, n, k, cfg.granularity, cfg.threshold),
        Method::Twn => twn(w, n, k, cfg.granularity).map(|t| {
            let e = rel_error(w, &t);
            (t, e)
        }),
    }
}

/// `||W - dequantize(T)||_2 / ||W||_2`, summed in `f64`. 0 when both are all zero; infinite
/// when `W` is all zero and `T` is not.
///
/// # Panics
/// When `w` and `t` have different lengths.
pub fn rel_error(w: &[f32], t: &Ternary) -> f64 {
    assert_eq!(
        w.len(),
        t.codes.len(),
        "rel_error: weight and ternary sizes differ"
    );
    if t.k == 0 || w.is_empty() {
        return 0.0;
    }
    let glen = group_len(t.granularity, t.k);
    let parts: Vec<(f64, f64)> = w
        .par_chunks(t.k)
        .zip(t.codes.par_chunks(t.k))
        .enumerate()
        .with_min_len(min_rows(t.k))
        .map(|(row, (wr, cr))| {
            let (mut err, mut norm) = (0f64, 0f64);
            for (g, (wg, cg)) in wr.chunks(glen).zip(cr.chunks(glen)).enumerate() {
                let (e, n) = sq_err(wg, cg, t.scale_at(row, g * glen));
                err += e;
                norm += n;
            }
            (err, norm)
        })
        .collect();
    finish_rel_error(&parts)
}

/// `sqrt(sum err / sum norm)` from per-row `(err, norm)` sums, in row order.
fn finish_rel_error(parts: &[(f64, f64)]) -> f64 {
    let (err, norm) = parts
        .iter()
        .fold((0f64, 0f64), |(e, n), &(pe, pn)| (e + pe, n + pn));
    if norm == 0.0 {
        if err == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        (err / norm).sqrt()
    }
}

/// Lossless detection alone: per-tensor, then per-channel. `None` when neither granularity
/// holds only `{-a, 0, +a}` per group (within `rel_tol` relative), or a weight is not finite.
/// [`quantize`] runs the same detection (plus its configured `Group(G)`) before quantizing.
///
/// # Panics
/// When `w.len() != n * k`.
pub fn detect_ternary(w: &[f32], n: usize, k: usize, rel_tol: f32) -> Option<Ternary> {
    detect_ternary_at(w, n, k, Granularity::Tensor, rel_tol)
        .or_else(|| detect_ternary_at(w, n, k, Granularity::Channel, rel_tol))
}

/// Lossless detection at one granularity. `rel_tol` is clamped into
/// `[0, MAX_LOSSLESS_REL_TOL]` (NaN counts as 0).
///
/// # Panics
/// When `w.len() != n * k`.
pub fn detect_ternary_at(
    w: &[f32],
    n: usize,
    k: usize,
    granularity: Granularity,
    rel_tol: f32,
) -> Option<Ternary> {
    assert_eq!(
        Some(w.len()),
        n.checked_mul(k),
        "detect_ternary: {} elements for shape [{n}, {k}]",
        w.len()
    );
    if n == 0 || k == 0 || matches!(granularity, Granularity::Group(0)) {
        return None;
    }
    let tol = if rel_tol.is_nan() {
        0.0
    } else {
        rel_tol.clamp(0.0, MAX_LOSSLESS_REL_TOL)
    };
    detect_at(w, n, k, granularity, f64::from(tol))
}

// ---------------------------------------------------------------------------------------------
// Internals

fn check_shape(w: &[f32], n: usize, k: usize) -> Result<(), QuantError> {
    check_shape_len(w.len(), n, k)
}

fn check_shape_len(len: usize, n: usize, k: usize) -> Result<(), QuantError> {
    if n == 0 || k == 0 {
        return Err(QuantError::EmptyShape { n, k });
    }
    let expected = n.checked_mul(k).ok_or(QuantError::ShapeOverflow { n, k })?;
    if len != expected {
        return Err(QuantError::LengthMismatch {
            len,
            n,
            k,
            expected,
        });
    }
    Ok(())
}

/// Minimum rows per rayon task so a task holds at least `MIN_TASK_ELEMS` weights.
fn min_rows(k: usize) -> usize {
    (MIN_TASK_ELEMS / k.max(1)).max(1)
}

/// `mean |w|` of the whole `[n][k]` weight in `f64`: row sums in parallel, added in row order
/// (the same for any thread count). The first row holding a non-finite weight is an error.
fn tensor_mean_abs(w: &[f32], n: usize, k: usize) -> Result<f64, QuantError> {
    let sums: Vec<f64> = w
        .par_chunks(k)
        .with_min_len(min_rows(k))
        .map(sum_abs)
        .collect();
    let mut total = 0f64;
    for (row, &s) in sums.iter().enumerate() {
        if !s.is_finite() {
            return Err(non_finite(w, k, row));
        }
        total += s;
    }
    Ok(total / (n as f64 * k as f64))
}

/// The group lengths lossless detection tries after per-tensor and per-channel, in order: the
/// configured `Group(G)`, then `lossless_group` when it differs; each only when shorter than
/// the channel (a group as long as the channel is the channel, already tried).
pub(crate) fn detection_groups(cfg: &QuantConfig, k: usize) -> impl Iterator<Item = usize> {
    let configured = match cfg.granularity {
        Granularity::Group(g) => Some(g),
        _ => None,
    };
    let extra = cfg.lossless_group.filter(|&g| Some(g) != configured);
    configured.into_iter().chain(extra).filter(move |&g| g < k)
}

/// Elements per group along K (`k` for Tensor and Channel).
fn group_len(gran: Granularity, k: usize) -> usize {
    match gran {
        Granularity::Tensor | Granularity::Channel => k,
        Granularity::Group(g) => g.min(k),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(granularity: Granularity, method: Method) -> QuantConfig {
        QuantConfig {
            granularity,
            method,
            ..QuantConfig::default()
        }
    }

    #[test]
    fn spare_gives_the_best_fit_of_its_type_within_its_limit() {
        let s = Spare::new(100);
        s.give(Vec::<u8>::with_capacity(10));
        s.give(Vec::<u8>::with_capacity(40));
        s.give(Vec::<f32>::with_capacity(25)); // 100 bytes of another type: its own limit
        s.give(Vec::<u8>::with_capacity(31)); // 81 kept
        s.give(Vec::<u8>::with_capacity(30)); // frees the 10, yet 101 > 100: not kept
        s.give(Vec::<u8>::with_capacity(101)); // larger than the limit
        s.give(Vec::<u8>::new()); // nothing to keep
        assert_eq!(s.take::<i8>(1).capacity(), 0, "no buffer of another type");
        assert_eq!(
            s.take::<u8>(5).capacity(),
            31,
            "the smallest that holds 5 (10 was freed)"
        );
        s.give(Vec::<u8>::with_capacity(35));
        assert_eq!(
            s.take::<u8>(50).capacity(),
            40,
            "none holds 50: the largest"
        );
        assert_eq!(s.take::<u8>(0).capacity(), 35);
        assert_eq!(s.take::<u8>(0).capacity(), 0);
        assert_eq!(s.take::<f32>(1).capacity(), 25);
        // Nothing kept: the whole limit is free again.
        s.give(Vec::<u8>::with_capacity(100));
        assert_eq!(s.take::<u8>(0).capacity(), 100);
    }

    #[test]
    fn transpose_small() {
        let m = [1, 2, 3, 4, 5, 6]; // [2][3]
        assert_eq!(transpose(&m, 2, 3), vec![1, 4, 2, 5, 3, 6]);
        assert_eq!(transpose(&transpose(&m, 2, 3), 3, 2), m.to_vec());
        let empty: [f32; 0] = [];
        assert!(transpose(&empty, 0, 5).is_empty());
    }

    #[test]
    fn transpose_larger_than_tile() {
        let (r, c) = (37, 70);
        let m: Vec<u32> = (0..r * c).map(|i| i as u32).collect();
        let t = transpose(&m, r, c);
        for i in 0..r {
            for j in 0..c {
                assert_eq!(t[j * r + i], m[i * c + j]);
            }
        }
    }

    #[test]
    fn transpose_in_bands_matches_and_reports_every_row() {
        for (r, c) in [(37, 70), (64, 32), (1, 5), (100, 1), (48, 96)] {
            let m: Vec<u32> = (0..r * c).map(|i| i as u32 * 7 + 1).collect();
            let want = transpose(&m, r, c);
            for band in [1, 16, 17, 33, 1000] {
                let mut seen = Vec::new();
                let got = transpose_map_rows(&m, r, c, band, |x| x, |rs| seen.push(rs));
                assert_eq!(got, want, "{r}x{c} band {band}");
                assert_eq!(seen.first().map(|s| s.start), Some(0));
                assert_eq!(seen.last().map(|s| s.end), Some(r));
                assert!(seen.windows(2).all(|w| w[0].end == w[1].start));
            }
            let f = transpose_map(&m, r, c, |x| x as u64 * 2);
            assert!(f.iter().zip(&want).all(|(&a, &b)| a == b as u64 * 2));
        }
    }

    #[test]
    fn absmean_per_tensor_ties_follow_torch() {
        // mean |W| = (0.5 + 0.5 + 1.5 + 1.5 + 1 + 1 + 0 + 2) / 8 = 1
        let w = [0.5, -0.5, 1.5, -1.5, 1.0, -1.0, 0.0, 2.0];
        let t = quantize(&w, 2, 4, &QuantConfig::bitnet_b158()).unwrap();
        assert!(!t.lossless);
        assert_eq!(t.granularity, Granularity::Tensor);
        assert_eq!(t.scales, vec![1.0]);
        assert_eq!(t.codes, vec![0, 0, 1, -1, 1, -1, 0, 1]);
        assert_eq!(t.counts(), [2, 3, 3]);
    }

    #[test]
    fn absmean_per_channel_and_group() {
        // row 0: mean 2 ; row 1: mean 0.25 (groups of 2: [0.5, 0] -> 0.25, [0.25, 0.25] -> 0.25)
        let w = [1.0, -3.0, 2.0, 2.0, 0.5, 0.0, -0.25, 0.25];
        let t = quantize(&w, 2, 4, &cfg(Granularity::Channel, Method::AbsMean)).unwrap();
        assert_eq!(t.scales, vec![2.0, 0.25]);
        // row 0: |w|/2 = .5 .. 1.5 1 1 ; row 1: 2 0 1 1
        assert_eq!(t.codes, vec![0, -1, 1, 1, 1, 0, -1, 1]);
        let t = quantize(&w, 2, 4, &cfg(Granularity::Group(3), Method::AbsMean)).unwrap();
        // groups: [1,-3,2] mean 2, [2] mean 2, [0.5,0,-0.25] mean 0.25, [0.25] mean .25
        assert_eq!(t.scales, vec![2.0, 2.0, 0.25, 0.25]);
        assert_eq!(t.groups_per_channel(), 2);
        assert_eq!(t.scale_at(1, 2), 0.25);
        assert_eq!(t.scale_at(0, 3), 2.0);
        assert_eq!(t.scale_range(), (0.25, 2.0));
    }

    #[test]
    fn twn_small() {
        // mean |W| = (4 + 0.1 + 1 + 3) / 4 = 2.025, delta = 1.4175: keeps 4 and -3.
        let w = [4.0, 0.1, -1.0, -3.0];
        let t = quantize(&w, 1, 4, &cfg(Granularity::Tensor, Method::Twn)).unwrap();
        assert_eq!(t.codes, vec![1, 0, 0, -1]);
        assert_eq!(t.scales, vec![3.5]);
    }

    #[test]
    fn all_zero_is_lossless_with_eps_scale() {
        let w = [0.0f32, -0.0, 0.0, 0.0, 0.0, 0.0];
        for m in [Method::AbsMean, Method::Twn] {
            let t = quantize(&w, 2, 3, &cfg(Granularity::Group(2), m)).unwrap();
            assert!(t.lossless);
            assert_eq!(t.granularity, Granularity::Tensor);
            assert_eq!(t.scales, vec![SCALE_EPS]);
            assert_eq!(t.codes, vec![0; 6]);
            assert_eq!(rel_error(&w, &t), 0.0);
        }
    }

    #[test]
    fn zero_channel_in_per_channel_lossless() {
        // row 0 is ternary with a = 0.5, row 1 all zero, row 2 ternary with a = 3.
        let w = [0.5, -0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, -3.0];
        let t = quantize(&w, 3, 3, &QuantConfig::default()).unwrap();
        assert!(t.lossless);
        assert_eq!(t.granularity, Granularity::Channel);
        assert_eq!(t.scales, vec![0.5, SCALE_EPS, 3.0]);
        assert_eq!(t.codes, vec![1, -1, 0, 0, 0, 0, 0, 1, -1]);
    }

    #[test]
    fn lossless_group_is_tried_after_tensor_and_channel() {
        // Two channels of K = 8, one scale per 4 inputs: 0.5 then 2 (row 0), 3 then 0.25.
        let w = [
            0.5, -0.5, 0.0, 0.5, 2.0, 0.0, -2.0, 2.0, //
            3.0, 0.0, 0.0, -3.0, -0.25, 0.25, 0.0, 0.25,
        ];
        let with = |lossless_group| QuantConfig {
            lossless_group,
            ..QuantConfig::default()
        };
        // Not asked for: quantized per channel.
        let t = quantize(&w, 2, 8, &with(None)).unwrap();
        assert!(!t.lossless);
        assert_eq!(t.granularity, Granularity::Channel);
        // Groups of 4 (or of 2, nested in them) found exactly, whatever the configured
        // granularity; codes are the signs.
        for g in [4, 2] {
            let (t, e) = quantize_measured(&w, 2, 8, &with(Some(g))).unwrap();
            assert!(t.lossless);
            assert_eq!(t.granularity, Granularity::Group(g));
            assert_eq!(
                t.codes,
                vec![1, -1, 0, 1, 1, 0, -1, 1, 1, 0, 0, -1, -1, 1, 0, 1]
            );
            assert_eq!(t.scale_at(0, 5), 2.0);
            assert_eq!(t.scale_at(1, 7), 0.25);
            assert_eq!(e, 0.0);
        }
        // Groups of 8 are the channel (already tried), groups of 3 straddle two scales.
        for g in [8, 16, 3] {
            let t = quantize(&w, 2, 8, &with(Some(g))).unwrap();
            assert!(!t.lossless, "group {g}");
            assert_eq!(t.granularity, Granularity::Channel);
        }
        // A configured group is tried first (groups of 2 are exact too).
        let cfg_g = QuantConfig {
            granularity: Granularity::Group(2),
            lossless_group: Some(4),
            ..QuantConfig::default()
        };
        assert_eq!(
            quantize(&w, 2, 8, &cfg_g).unwrap().granularity,
            Granularity::Group(2)
        );
        // Exact per channel stays per channel (tried first).
        let per_channel = [0.5, -0.5, 0.0, 0.5, 3.0, 0.0, 0.0, -3.0];
        let t = quantize(&per_channel, 2, 4, &with(Some(2))).unwrap();
        assert_eq!((t.granularity, t.lossless), (Granularity::Channel, true));
        assert_eq!(
            with(Some(0)).validate(),
            Err(QuantError::ZeroGroupSize),
            "a zero group length is refused"
        );
    }

    #[test]
    fn lossless_mode_and_tolerance() {
        let a = 0.125f32;
        let up = f32::from_bits(a.to_bits() + 2);
        let down = f32::from_bits(a.to_bits() - 1);
        // mode is `a` (3 times) even though `up` comes first.
        let w = [up, -a, a, 0.0, -down, a];
        let t = detect_ternary(&w, 2, 3, 1e-6).unwrap();
        assert_eq!(t.granularity, Granularity::Tensor);
        assert_eq!(t.scales, vec![a]);
        assert_eq!(t.codes, vec![1, -1, 1, 0, -1, 1]);
        // zero tolerance: not lossless any more
        assert!(detect_ternary(&w, 2, 3, 0.0).is_none());
        // tie in the mode goes to the smallest magnitude
        let w = [up, up, down, down];
        let t = detect_ternary(&w, 1, 4, 1e-6).unwrap();
        assert_eq!(t.scales, vec![down]);
        // A band narrow enough to pass the quick check whose far end is off tolerance from the
        // mode (`a`, at the near end): 16 ulps is within 2 tol a but not within tol a.
        let far = f32::from_bits(a.to_bits() + 16);
        assert!(f64::from(far - a) > 1e-6 * f64::from(a) && f64::from(far - a) < 2e-6 * 0.125);
        let w = [a, -a, a, 0.0, -a, far];
        assert!(detect_ternary(&w, 2, 3, 1e-6).is_none(), "per tensor");
        assert!(detect_ternary(&w, 1, 6, 1e-6).is_none(), "per channel");
        assert!(detect_ternary(&w, 2, 3, 2e-6).is_some());
    }

    #[test]
    fn lossless_group_only_when_configured() {
        // each half-row has its own a: group(2) lossless, channel not.
        let w = [1.0, -1.0, 0.0, 4.0, 2.0, 0.0, -8.0, 8.0];
        let t = quantize(&w, 2, 4, &cfg(Granularity::Group(2), Method::AbsMean)).unwrap();
        assert!(t.lossless);
        assert_eq!(t.granularity, Granularity::Group(2));
        assert_eq!(t.scales, vec![1.0, 4.0, 2.0, 8.0]);
        let t = quantize(&w, 2, 4, &cfg(Granularity::Channel, Method::AbsMean)).unwrap();
        assert!(!t.lossless);
        assert_eq!(t.granularity, Granularity::Channel);
    }

    #[test]
    fn errors() {
        let c = QuantConfig::default();
        assert_eq!(
            quantize(&[], 0, 3, &c),
            Err(QuantError::EmptyShape { n: 0, k: 3 })
        );
        assert!(matches!(
            quantize(&[1.0; 5], 2, 3, &c),
            Err(QuantError::LengthMismatch { len: 5, .. })
        ));
        assert_eq!(
            quantize(
                &[1.0; 6],
                2,
                3,
                &cfg(Granularity::Group(0), Method::AbsMean)
            ),
            Err(QuantError::ZeroGroupSize)
        );
        for thr in [0.0, -0.5, 1.5, f32::NAN] {
            let c = QuantConfig {
                threshold: thr,
                ..c
            };
            assert!(matches!(
                quantize(&[1.0; 6], 2, 3, &c),
                Err(QuantError::InvalidThreshold(_))
            ));
        }
        let bad_tol = QuantConfig {
            lossless_rel_tol: 0.5,
            ..c
        };
        assert!(matches!(
            quantize(&[1.0; 6], 2, 3, &bad_tol),
            Err(QuantError::InvalidTolerance(_))
        ));
        let w = [0.1, 0.2, 0.3, 0.4, f32::NAN, f32::INFINITY];
        for gran in [
            Granularity::Tensor,
            Granularity::Channel,
            Granularity::Group(2),
        ] {
            for m in [Method::AbsMean, Method::Twn] {
                match quantize(&w, 2, 3, &cfg(gran, m)) {
                    Err(QuantError::NonFinite {
                        index: 4,
                        row: 1,
                        col: 1,
                        value,
                    }) => assert!(value.is_nan()),
                    other => panic!("{gran} {m}: {other:?}"),
                }
            }
        }
        let msg = quantize(&w, 2, 3, &c).unwrap_err().to_string();
        assert!(msg.contains("element 4"), "{msg}");
    }

    #[test]
    fn rel_error_zero_weight() {
        let t = Ternary {
            n: 1,
            k: 2,
            codes: vec![1, 0],
            granularity: Granularity::Tensor,
            scales: vec![1.0],
            lossless: false,
        };
        assert_eq!(rel_error(&[0.0, 0.0], &t), f64::INFINITY);
        assert_eq!(rel_error(&[1.0, 0.0], &t), 0.0);
        assert!((rel_error(&[2.0, 0.0], &t) - 0.5).abs() < 1e-12);
    }
}
