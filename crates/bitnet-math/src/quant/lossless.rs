//! Lossless detection: a weight that already holds only `{-a, 0, +a}` per group (to a small
//! relative tolerance, docs/formats.md 1.4) is recovered exactly.

use super::*;

/// Marker: the data is not ternary at the granularity being tried.
pub(super) struct NotTernary;

/// Necessary condition for all magnitudes in `[lo, hi]` to lie within `tol * a` of one `a`:
/// `a >= lo / (1 + tol)` … and `a <= lo / (1 - tol)`, so `hi - lo <= 2 tol a <= 2 tol lo / (1 - tol)`.
/// Slightly generous (rounding slack); the exact check follows once `a` is known.
#[inline]
pub(super) fn band_ok(lo: f32, hi: f32, tol: f64) -> bool {
    let (lo, hi) = (f64::from(lo), f64::from(hi));
    hi - lo <= 2.0 * tol * lo / (1.0 - tol) * (1.0 + 1e-9)
}

/// Smallest and largest non-zero magnitude of `xs`, failing fast when they cannot share one `a`
/// or a value is not finite. `None` when every value is ±0.
pub(super) fn scan_band(xs: &[f32], tol: f64) -> Result<Option<(f32, f32)>, NotTernary> {
    let mut lo = f32::INFINITY;
    let mut hi = 0f32;
    for &x in xs {
        if x == 0.0 {
            continue;
        }
        let m = x.abs();
        if !m.is_finite() {
            return Err(NotTernary);
        }
        if m < lo || m > hi {
            lo = lo.min(m);
            hi = hi.max(m);
            if !band_ok(lo, hi, tol) {
                return Err(NotTernary);
            }
        }
    }
    Ok((hi > 0.0).then_some((lo, hi)))
}

/// `a` within tolerance of both ends of the band (hence of every magnitude, as they are ordered).
pub(super) fn within_tol(a: f32, lo: f32, hi: f32, tol: f64) -> bool {
    let a64 = f64::from(a);
    let lim = tol * a64;
    (f64::from(lo) - a64).abs() <= lim && (f64::from(hi) - a64).abs() <= lim
}

/// Most frequent value of ascending-sortable bit patterns (ties: the smallest). `bits` non-empty.
pub(super) fn mode_of_sorted(bits: &mut [u32]) -> u32 {
    bits.sort_unstable();
    let (mut best, mut best_count) = (bits[0], 0usize);
    let mut i = 0;
    while i < bits.len() {
        let v = bits[i];
        let mut j = i + 1;
        while j < bits.len() && bits[j] == v {
            j += 1;
        }
        if j - i > best_count {
            best = v;
            best_count = j - i;
        }
        i = j;
    }
    best
}

/// Lossless scale of one group, or `NotTernary`. `scratch` is reused between groups.
pub(super) fn detect_group(
    xs: &[f32],
    tol: f64,
    scratch: &mut Vec<u32>,
) -> Result<f32, NotTernary> {
    let Some((lo, hi)) = scan_band(xs, tol)? else {
        return Ok(SCALE_EPS);
    };
    let a = if lo == hi {
        lo
    } else {
        scratch.clear();
        scratch.extend(xs.iter().filter(|x| **x != 0.0).map(|x| x.abs().to_bits()));
        f32::from_bits(mode_of_sorted(scratch))
    };
    if within_tol(a, lo, hi, tol) {
        Ok(a)
    } else {
        Err(NotTernary)
    }
}

pub(super) fn detect_at(
    w: &[f32],
    n: usize,
    k: usize,
    gran: Granularity,
    tol: f64,
) -> Option<Ternary> {
    match gran {
        Granularity::Tensor => detect_tensor(w, n, k, tol),
        Granularity::Channel | Granularity::Group(_) => detect_grouped(w, n, k, gran, tol),
    }
}

/// The band holding both `a` and `b` (`None` is the band of no non-zero value).
pub(super) fn merge_band(a: Option<(f32, f32)>, b: Option<(f32, f32)>) -> Option<(f32, f32)> {
    match (a, b) {
        (None, b) => b,
        (a, None) => a,
        (Some((l, h)), Some((lo, hi))) => Some((l.min(lo), h.max(hi))),
    }
}

/// The one scale of a lossless per-tensor detection from the bands of its parts, or `None`
/// when they cannot share one: `SCALE_EPS` for an all-zero tensor, the only magnitude when
/// there is one, else `mode(lo, hi)` (the most frequent magnitude) if every magnitude is within
/// tolerance of it.
pub(super) fn tensor_scale(
    bands: &[Option<(f32, f32)>],
    tol: f64,
    mode: impl FnOnce(f32, f32) -> f32,
) -> Option<f32> {
    match bands.iter().copied().fold(None, merge_band) {
        None => Some(SCALE_EPS),
        Some((lo, hi)) if lo == hi => Some(lo),
        Some((lo, hi)) => {
            if !band_ok(lo, hi, tol) {
                return None;
            }
            let a = mode(lo, hi);
            within_tol(a, lo, hi, tol).then_some(a)
        }
    }
}

pub(super) fn detect_tensor(w: &[f32], n: usize, k: usize, tol: f64) -> Option<Ternary> {
    let bands: Vec<Option<(f32, f32)>> = w
        .par_chunks(k)
        .with_min_len(min_rows(k))
        .map(|row| scan_band(row, tol))
        .collect::<Result<_, _>>()
        .ok()?;
    // Positive floats order like their bit patterns, and the band is narrow
    // (at most ~2 * tol * 2^24 patterns): count them in a histogram.
    let a = tensor_scale(&bands, tol, |lo, hi| {
        band_mode(w, k * min_rows(k), &|x| x, lo, hi)
    })?;
    let mut codes = vec![0i8; n * k];
    codes
        .par_chunks_mut(k)
        .zip(w.par_chunks(k))
        .with_min_len(min_rows(k))
        .for_each(|(c, x)| sign_slice(x, c));
    Some(Ternary {
        n,
        k,
        codes,
        granularity: Granularity::Tensor,
        scales: vec![a],
        lossless: true,
    })
}

/// The most frequent non-zero magnitude of `src` (ties: the smallest), all of whose non-zero
/// magnitudes lie in `[lo, hi]`: a histogram of their bit patterns, counted in parallel over
/// chunks of `chunk` elements. Integer counts make the result independent of the order.
pub(super) fn band_mode<S: Copy + Sync>(
    src: &[S],
    chunk: usize,
    f: &(impl Fn(S) -> f32 + Sync),
    lo: f32,
    hi: f32,
) -> f32 {
    hist_mode(&band_hist(src, chunk, f, lo, hi), lo)
}

/// The histogram [`band_mode`] counts: entry `i` is how many magnitudes of `src` have the bit
/// pattern `lo.to_bits() + i`. Histograms of parts add up to the histogram of the whole.
pub(super) fn band_hist<S: Copy + Sync>(
    src: &[S],
    chunk: usize,
    f: &(impl Fn(S) -> f32 + Sync),
    lo: f32,
    hi: f32,
) -> Vec<u64> {
    let base = lo.to_bits();
    let len = (hi.to_bits() - base) as usize + 1;
    src.par_chunks(chunk.max(1))
        .fold(
            || vec![0u64; len],
            |mut h, part| {
                for &x in part {
                    let x = f(x);
                    if x != 0.0 {
                        h[(x.abs().to_bits() - base) as usize] += 1;
                    }
                }
                h
            },
        )
        .reduce(|| vec![0u64; len], add_hist)
}

/// `a + b`, entry by entry (same lengths).
pub(super) fn add_hist(mut a: Vec<u64>, b: Vec<u64>) -> Vec<u64> {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
    a
}

/// The most frequent magnitude of a [`band_hist`] histogram starting at `lo` (ties: the
/// smallest).
pub(super) fn hist_mode(hist: &[u64], lo: f32) -> f32 {
    let mut best = 0usize;
    for (i, &c) in hist.iter().enumerate() {
        if c > hist[best] {
            best = i;
        }
    }
    f32::from_bits(lo.to_bits() + best as u32)
}

pub(super) fn detect_grouped(
    w: &[f32],
    n: usize,
    k: usize,
    gran: Granularity,
    tol: f64,
) -> Option<Ternary> {
    let g = group_len(gran, k);
    let gpc = k.div_ceil(g);
    let mut codes = vec![0i8; n * k];
    let mut scales = vec![0f32; n * gpc];
    codes
        .par_chunks_mut(k)
        .zip(scales.par_chunks_mut(gpc))
        .zip(w.par_chunks(k))
        .with_min_len(min_rows(k))
        .try_for_each_init(Vec::new, |scratch, ((c, s), x)| {
            for ((cg, xg), sg) in c.chunks_mut(g).zip(x.chunks(g)).zip(s.iter_mut()) {
                *sg = detect_group(xg, tol, scratch)?;
                sign_slice(xg, cg);
            }
            Ok::<(), NotTernary>(())
        })
        .ok()?;
    Some(Ternary {
        n,
        k,
        codes,
        granularity: gran,
        scales,
        lossless: true,
    })
}
